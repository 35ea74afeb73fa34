//! Every way the vault can change, as one value: a [`Change`] is checked, then
//! applied to a verified [`Draft`] inside the backend's locked write, and yields
//! what it changed ([`Applied`]) and how to take it back ([`Undo`]). Backends
//! call [`Change::check`] before taking the lock and [`Change::apply_to`] under it.

use super::error::{not_found, VaultError};
use super::format::{describe_value, random_id, AgentRecord, Draft, StoredRecord};
use super::kind::SecretKind;
use super::snapshot::RecordMeta;
use super::validate::{
    check_agent, check_description, check_name, check_scope, check_value, normalize_hosts,
    rotate_secs,
};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Metadata given with `secret set` (absent fields keep an existing record's).
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    pub description: Option<String>,
    pub hosts: Vec<String>,
    pub rotate_every: Option<Duration>,
}

/// One change to the vault. Values stay in [`Secret`]s (`Debug` shows `***`).
#[derive(Debug, Clone)]
pub enum Change {
    /// Creates `scope/name`, or stores a new version of it. `kind: None` keeps an
    /// existing record's kind (`api_key` for a new one); multi-field kinds are
    /// checked before anything is written.
    SetSecret {
        scope: String,
        name: String,
        value: Secret,
        kind: Option<SecretKind>,
        options: SetOptions,
    },
    /// New value, version + 1; the old value is dropped. The record must exist.
    RotateSecret {
        scope: String,
        name: String,
        value: Secret,
    },
    RemoveSecret {
        scope: String,
        name: String,
    },
    /// Copies `name` from scope `from` into scope `to` (which must not have it): a
    /// new record (version 1) with the same value, metadata and rotation clock.
    CloneSecret {
        name: String,
        from: String,
        to: String,
    },
    /// Changes only the description of `scope/name` (`None` clears it): no new
    /// value, same version, the rotation clock keeps running. The record must exist.
    DescribeSecret {
        scope: String,
        name: String,
        description: Option<String>,
    },
    /// Registers an agent; an id already in the table is refused inside the same
    /// locked write, so two concurrent creations cannot both succeed.
    AddAgent(AgentRecord),
    /// Removes an agent (nothing, if there is no agent with that id).
    RemoveAgent {
        id: String,
    },
}

/// What a change changed.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The secret after the change (for a removal: as it was).
    Secret(RecordMeta),
    /// The agent added or removed; `None`: there was no agent with that id.
    Agent(Option<AgentRecord>),
}

impl Applied {
    /// The metadata of the secret a secret change touched.
    pub fn into_meta(self) -> Result<RecordMeta, VaultError> {
        match self {
            Applied::Secret(meta) => Ok(meta),
            Applied::Agent(_) => Err(VaultError::Invalid(
                "the change touched an agent, not a secret".into(),
            )),
        }
    }
}

/// How to take back one change that could not be audited: the record as it was
/// (still sealed: no plaintext is kept) and what the change left, so that an undo
/// never overwrites a later change.
pub struct Undo(Target);

enum Target {
    Secret {
        scope: String,
        name: String,
        before: Option<StoredRecord>,
        /// id, version and description: a description-only change keeps the version.
        after: Option<(String, u32, Option<String>)>,
    },
    Agent {
        id: String,
        before: Option<AgentRecord>,
        after: Option<AgentRecord>,
    },
}

impl Undo {
    fn secret(
        scope: &str,
        name: &str,
        before: Option<StoredRecord>,
        after: Option<&StoredRecord>,
    ) -> Undo {
        Undo(Target::Secret {
            scope: scope.to_string(),
            name: name.to_string(),
            before,
            after: after.map(|r| (r.id.clone(), r.version, r.description.clone())),
        })
    }

    /// The change replaced (or removed) a record that existed before it.
    pub fn replaced(&self) -> bool {
        match &self.0 {
            Target::Secret { before, .. } => before.is_some(),
            Target::Agent { before, .. } => before.is_some(),
        }
    }

    /// The change left everything as it was (nothing to undo).
    pub(super) fn is_noop(&self) -> bool {
        matches!(
            &self.0,
            Target::Agent {
                before: None,
                after: None,
                ..
            }
        )
    }

    /// Puts the record back as it was before the change. Refused when it has
    /// changed again since, so a later change is never lost.
    pub(super) fn apply_to(self, d: &mut Draft) -> Result<(), VaultError> {
        match self.0 {
            Target::Secret {
                scope,
                name,
                before,
                after,
            } => {
                let current = d.find(&scope, &name);
                let now = current.map(|i| {
                    let r = &d.body.records[i];
                    (r.id.clone(), r.version, r.description.clone())
                });
                if now != after {
                    return Err(VaultError::Invalid(format!(
                        "secret {name} in scope {scope} changed again since; not undone"
                    )));
                }
                if let Some(i) = current {
                    d.body.records.remove(i);
                }
                // The record goes back exactly as it was stored (sealed under the same
                // data key, same AAD), so it opens as before.
                if let Some(rec) = before {
                    d.body.records.push(rec);
                }
            }
            Target::Agent { id, before, after } => {
                let current = d.body.agents.iter().position(|a| a.id == id);
                if current.map(|i| &d.body.agents[i]) != after.as_ref() {
                    return Err(VaultError::Invalid(format!(
                        "agent {id} changed again since; not undone"
                    )));
                }
                if let Some(i) = current {
                    d.body.agents.remove(i);
                }
                if let Some(a) = before {
                    d.body.agents.push(a);
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Target::Secret { scope, name, .. } => write!(f, "Undo({scope}/{name})"),
            Target::Agent { id, .. } => write!(f, "Undo(agent {id})"),
        }
    }
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

fn next_version(version: u32) -> Result<u32, VaultError> {
    version
        .checked_add(1)
        .ok_or_else(|| VaultError::Invalid("version counter exhausted".into()))
}

impl Change {
    /// Validates everything that does not need the file (before the lock is taken),
    /// normalizing the host list in place.
    pub fn check(&mut self) -> Result<(), VaultError> {
        match self {
            Change::SetSecret {
                scope,
                name,
                value,
                options,
                ..
            } => {
                check_scope(scope)?;
                check_name(name)?;
                check_value(value)?;
                check_description(&options.description)?;
                options.hosts = normalize_hosts(&options.hosts)?;
                rotate_secs(options.rotate_every)?;
            }
            Change::RotateSecret { scope, name, value } => {
                check_scope(scope)?;
                check_name(name)?;
                check_value(value)?;
            }
            Change::RemoveSecret { scope, name } => {
                check_scope(scope)?;
                check_name(name)?;
            }
            Change::CloneSecret { name, from, to } => {
                check_scope(from)?;
                check_scope(to)?;
                check_name(name)?;
                if from == to {
                    return Err(VaultError::Invalid(
                        "--from-scope and --to-scope are the same".into(),
                    ));
                }
            }
            Change::DescribeSecret {
                scope,
                name,
                description,
            } => {
                check_scope(scope)?;
                check_name(name)?;
                check_description(description)?;
            }
            Change::AddAgent(agent) => check_agent(agent)?,
            Change::RemoveAgent { .. } => {}
        }
        Ok(())
    }

    /// Applies a checked change to `d` (the backend writes it out afterwards).
    /// `path` names the vault in error messages.
    pub(super) fn apply_to(
        self,
        d: &mut Draft,
        path: &Path,
    ) -> Result<(Applied, Undo), VaultError> {
        match self {
            Change::SetSecret {
                scope,
                name,
                value,
                kind,
                options,
            } => set(d, &scope, &name, &value, kind, options),
            Change::RotateSecret { scope, name, value } => {
                let i = d
                    .find(&scope, &name)
                    .ok_or_else(|| not_found(&scope, &name))?;
                let mut rec = d.body.records.remove(i);
                let before = Some(rec.clone());
                rec.version = next_version(rec.version)?;
                store_value(d, rec, &value, before, now())
            }
            Change::RemoveSecret { scope, name } => {
                let i = d
                    .find(&scope, &name)
                    .ok_or_else(|| not_found(&scope, &name))?;
                let rec = d.body.records.remove(i);
                let meta = RecordMeta::of(&rec);
                Ok((
                    Applied::Secret(meta),
                    Undo::secret(&scope, &name, Some(rec), None),
                ))
            }
            Change::CloneSecret { name, from, to } => {
                let i = d
                    .find(&from, &name)
                    .ok_or_else(|| not_found(&from, &name))?;
                let src = d.body.records[i].clone();
                if d.find(&to, &name).is_some() {
                    return Err(VaultError::Exists { scope: to, name });
                }
                let value = d.open(&src, path)?;
                let ts = now();
                let mut rec = StoredRecord {
                    id: random_id(),
                    scope: to.clone(),
                    version: 1,
                    created: ts.clone(),
                    updated: ts,
                    sealed: String::new(),
                    ..src
                };
                d.seal_into(&mut rec, value.expose())?;
                let meta = RecordMeta::of(&rec);
                let undo = Undo::secret(&to, &name, None, Some(&rec));
                d.body.records.push(rec);
                Ok((Applied::Secret(meta), undo))
            }
            Change::DescribeSecret {
                scope,
                name,
                description,
            } => {
                let i = d
                    .find(&scope, &name)
                    .ok_or_else(|| not_found(&scope, &name))?;
                let mut rec = d.body.records.remove(i);
                let before = Some(rec.clone());
                // Metadata only: the sealed value, its version and `last_rotated`
                // stay as they are (the record is not re-sealed).
                rec.description = description;
                rec.updated = now();
                let meta = RecordMeta::of(&rec);
                let undo = Undo::secret(&scope, &name, before, Some(&rec));
                d.body.records.push(rec);
                Ok((Applied::Secret(meta), undo))
            }
            Change::AddAgent(agent) => {
                // SECURITY: replacing an existing id would swap its token (and take
                // over its identity in the audit trail).
                if d.body.agents.iter().any(|a| a.id == agent.id) {
                    return Err(VaultError::AgentExists(agent.id.clone()));
                }
                let undo = Undo(Target::Agent {
                    id: agent.id.clone(),
                    before: None,
                    after: Some(agent.clone()),
                });
                d.body.agents.push(agent.clone());
                Ok((Applied::Agent(Some(agent)), undo))
            }
            Change::RemoveAgent { id } => {
                let removed = d
                    .body
                    .agents
                    .iter()
                    .position(|a| a.id == id)
                    .map(|i| d.body.agents.remove(i));
                let undo = Undo(Target::Agent {
                    id,
                    before: removed.clone(),
                    after: None,
                });
                Ok((Applied::Agent(removed), undo))
            }
        }
    }
}

/// `SetSecret` on a checked change: a new record, or the next version of one.
fn set(
    d: &mut Draft,
    scope: &str,
    name: &str,
    value: &Secret,
    kind: Option<SecretKind>,
    opts: SetOptions,
) -> Result<(Applied, Undo), VaultError> {
    let every = rotate_secs(opts.rotate_every)?;
    let hosts = opts.hosts;
    let ts = now();
    let (rec, before) = match d.find(scope, name) {
        Some(i) => {
            let mut r = d.body.records.remove(i);
            let before = Some(r.clone());
            r.version = next_version(r.version)?;
            if opts.description.is_some() {
                r.description = opts.description;
            }
            if !hosts.is_empty() {
                r.hosts = hosts;
            }
            if every.is_some() {
                r.rotate_every_secs = every;
            }
            if let Some(k) = kind {
                r.kind = k;
            }
            (r, before)
        }
        None => (
            StoredRecord {
                id: random_id(),
                scope: scope.to_string(),
                name: name.to_string(),
                version: 1,
                hint: String::new(),
                description: opts.description,
                hosts,
                created: ts.clone(),
                updated: String::new(),
                last_rotated: String::new(),
                rotate_every_secs: every,
                kind: kind.unwrap_or_default(),
                public: BTreeMap::new(),
                sealed: String::new(),
            },
            None,
        ),
    };
    store_value(d, rec, value, before, ts)
}

/// Seals `value` into `rec` (whose identity and version are final), stamps it with
/// `ts` and puts it in the draft.
fn store_value(
    d: &mut Draft,
    mut rec: StoredRecord,
    value: &Secret,
    before: Option<StoredRecord>,
    ts: String,
) -> Result<(Applied, Undo), VaultError> {
    let (public, hint) = describe_value(rec.kind, value)?;
    rec.public = public;
    rec.hint = hint;
    rec.updated = ts.clone();
    rec.last_rotated = ts;
    d.seal_into(&mut rec, value.expose())?;
    let meta = RecordMeta::of(&rec);
    let undo = Undo::secret(&rec.scope, &rec.name, before, Some(&rec));
    d.body.records.push(rec);
    Ok((Applied::Secret(meta), undo))
}

/// The records and agents one change reads or writes: secrets by (scope, name),
/// agents by id. A backend that keeps its state in memory gives the change only
/// these (a write costs what it touches, not the size of the vault).
pub(super) type Touched = (Vec<(String, String)>, Vec<String>);

impl Change {
    /// What this change reads or writes.
    pub(super) fn touches(&self) -> Touched {
        let key = |s: &str, n: &str| (s.to_string(), n.to_string());
        match self {
            Change::SetSecret { scope, name, .. }
            | Change::RotateSecret { scope, name, .. }
            | Change::RemoveSecret { scope, name }
            | Change::DescribeSecret { scope, name, .. } => (vec![key(scope, name)], vec![]),
            Change::CloneSecret { name, from, to } => {
                (vec![key(from, name), key(to, name)], vec![])
            }
            Change::AddAgent(a) => (vec![], vec![a.id.clone()]),
            Change::RemoveAgent { id } => (vec![], vec![id.clone()]),
        }
    }
}

impl Undo {
    /// What taking the change back reads or writes.
    pub(super) fn touches(&self) -> Touched {
        match &self.0 {
            Target::Secret { scope, name, .. } => (vec![(scope.clone(), name.clone())], vec![]),
            Target::Agent { id, .. } => (vec![], vec![id.clone()]),
        }
    }
}
