//! What readers see: one immutable, verified [`Snapshot`] of the vault (records
//! still sealed until `get`, the agent table, the generation), and the value-free
//! [`RecordMeta`] every listing and API response is made of.
//!
//! Records live in a persistent map (`imbl::OrdMap` of `Arc`s), so the next
//! snapshot after a change is a clone (O(1)) plus the changed records (O(log n)
//! each): a write or a reload of another process's append costs what it changed,
//! not the size of the vault.

use super::crypto::{Key, Sealed};
use super::error::{ferr, VaultError};
use super::format::{decode_sealed, open_record, AgentRecord, FileBody, StoredRecord};
use super::kind::SecretKind;
use super::validate::{format_period, valid_scope, MAX_RECORDS};
use crate::config::valid_secret_name;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A decrypted value, for the duration of one request.
#[derive(Debug, Clone)]
pub struct Opened {
    pub value: Secret,
    pub version: u32,
    /// Extra host restriction set with `--hosts` (empty = the provider's hosts).
    pub hosts: Vec<String>,
    pub kind: SecretKind,
}

/// Everything about a record except its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordMeta {
    pub scope: String,
    pub name: String,
    pub version: u32,
    pub hint: String,
    pub description: Option<String>,
    pub hosts: Vec<String>,
    /// RFC 3339 timestamps.
    pub created: String,
    pub updated: String,
    pub rotate_every: Option<String>,
    pub rotation_due: Option<String>,
    /// When the current value was set (RFC 3339); the rotation clock starts here.
    #[serde(default)]
    pub last_rotated: String,
    /// `api_key`, `oauth2`, `hmac` or `aws`.
    #[serde(default)]
    pub kind: SecretKind,
    /// Non-secret fields of multi-field kinds (client_id, token_url, access_key_id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl RecordMeta {
    /// `rotation_due` parsed, if the record has a rotation period.
    pub fn due_at(&self) -> Option<OffsetDateTime> {
        self.rotation_due
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    }

    /// The metadata of a stored record (never its value).
    pub(super) fn of(rec: &StoredRecord) -> RecordMeta {
        let due = rec.rotate_every_secs.and_then(|secs| {
            let last = OffsetDateTime::parse(&rec.last_rotated, &Rfc3339).ok()?;
            let due = last.checked_add(time::Duration::seconds(i64::try_from(secs).ok()?))?;
            due.format(&Rfc3339).ok()
        });
        RecordMeta {
            scope: rec.scope.clone(),
            name: rec.name.clone(),
            version: rec.version,
            hint: rec.hint.clone(),
            description: rec.description.clone(),
            hosts: rec.hosts.clone(),
            created: rec.created.clone(),
            updated: rec.updated.clone(),
            rotate_every: rec.rotate_every_secs.map(format_period),
            rotation_due: due,
            last_rotated: rec.last_rotated.clone(),
            kind: rec.kind,
            fields: rec.public.clone(),
        }
    }
}

/// The map key: (scope, name).
type RecordKey = (String, String);

struct SnapRecord {
    stored: StoredRecord,
    sealed: Sealed,
    /// The value, opened on first use and kept for this snapshot's lifetime.
    opened: std::sync::OnceLock<Secret>,
}

/// By identity: a record is replaced (never changed in place), so two snapshots
/// hold the same record exactly when they share its `Arc` (what lets
/// [`Snapshot::changed_names`] skip every shared subtree).
impl PartialEq for SnapRecord {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// The records of one snapshot (shared with it, O(1) to take), kept to tell a
/// later snapshot what changed since: see [`Snapshot::changed_names`].
#[derive(Clone)]
pub struct RecordsView(imbl::OrdMap<RecordKey, Arc<SnapRecord>>);

/// One immutable, verified view of the vault. Values stay sealed until `get`.
pub struct Snapshot {
    path: PathBuf,
    records: imbl::OrdMap<RecordKey, Arc<SnapRecord>>,
    agents: Arc<Vec<AgentRecord>>,
    generation: u64,
    data_key: Option<Arc<Key>>,
}

impl Snapshot {
    pub(super) fn empty(path: &Path, generation: u64) -> Snapshot {
        Snapshot {
            path: path.to_path_buf(),
            records: imbl::OrdMap::new(),
            agents: Arc::new(Vec::new()),
            generation,
            data_key: None,
        }
    }

    /// Builds (and, with `verify`, opens every record once to prove it authentic).
    pub(super) fn build(
        body: &FileBody,
        data_key: &Arc<Key>,
        path: &Path,
        verify: bool,
    ) -> Result<Snapshot, VaultError> {
        if body.records.len() > MAX_RECORDS {
            return Err(ferr(path, format!("more than {MAX_RECORDS} records")));
        }
        let mut records = imbl::OrdMap::new();
        for rec in &body.records {
            let key = (rec.scope.clone(), rec.name.clone());
            let r = admit(rec.clone(), data_key, path, verify)?;
            // SECURITY: two records for one (scope, name) would make which value is
            // injected depend on map order.
            if records.insert(key, r).is_some() {
                return Err(ferr(
                    path,
                    format!("record {}/{} appears twice", rec.scope, rec.name),
                ));
            }
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            records,
            agents: Arc::new(body.agents.clone()),
            generation: body.counter,
            data_key: Some(data_key.clone()),
        })
    }

    /// The next snapshot: this one (shared, O(1)) with `edits` applied in order and
    /// `generation`. With `verify`, each new record is opened once to prove it
    /// authentic (a record read from another process's append).
    pub(super) fn edited(
        &self,
        edits: Vec<Edit>,
        data_key: &Arc<Key>,
        generation: u64,
        verify: bool,
    ) -> Result<Snapshot, VaultError> {
        let mut records = self.records.clone();
        let mut agents: Option<Vec<AgentRecord>> = None;
        for e in edits {
            match e {
                Edit::Put(rec) => {
                    let key = (rec.scope.clone(), rec.name.clone());
                    let r = admit(rec, data_key, &self.path, verify)?;
                    records.insert(key, r);
                }
                Edit::Remove { scope, name } => {
                    records.remove(&(scope, name));
                }
                Edit::PutAgent(a) => {
                    let list = agents.get_or_insert_with(|| self.agents.as_ref().clone());
                    list.retain(|x| x.id != a.id);
                    list.push(a);
                }
                Edit::RemoveAgent { id } => {
                    let list = agents.get_or_insert_with(|| self.agents.as_ref().clone());
                    list.retain(|x| x.id != id);
                }
            }
        }
        if records.len() > MAX_RECORDS {
            return Err(ferr(&self.path, format!("more than {MAX_RECORDS} records")));
        }
        Ok(Snapshot {
            path: self.path.clone(),
            records,
            agents: agents.map_or_else(|| self.agents.clone(), Arc::new),
            generation,
            data_key: Some(data_key.clone()),
        })
    }

    /// The stored (sealed) record `scope/name`, for a backend building a change.
    pub(super) fn stored(&self, scope: &str, name: &str) -> Option<&StoredRecord> {
        self.records
            .get(&(scope.to_string(), name.to_string()))
            .map(|r| &r.stored)
    }

    /// Every stored record, sorted by scope then name (for writing a compacted file).
    pub(super) fn stored_records(&self) -> impl Iterator<Item = &StoredRecord> + '_ {
        self.records.values().map(|r| &r.stored)
    }

    /// Opens the record `name` in `scope`, if present.
    pub fn get(&self, scope: &str, name: &str) -> Result<Option<Opened>, VaultError> {
        let Some(rec) = self.records.get(&(scope.to_string(), name.to_string())) else {
            return Ok(None);
        };
        let Some(dk) = &self.data_key else {
            return Ok(None);
        };
        // SECURITY: the opened value is cached in this (immutable) snapshot so the
        // request path does not derive a key and run AES-GCM per request. It adds no
        // exposure: the process already holds the data key that opens every record.
        // It is zeroized when the record is replaced or removed and no snapshot
        // or request uses it any more (snapshots share unchanged records).
        let value = match rec.opened.get() {
            Some(v) => v.clone(),
            None => {
                let v = open_record(dk, &rec.stored, &rec.sealed, &self.path)?;
                rec.opened.get_or_init(|| v).clone()
            }
        };
        Ok(Some(Opened {
            value,
            version: rec.stored.version,
            hosts: rec.stored.hosts.clone(),
            kind: rec.stored.kind,
        }))
    }

    /// This snapshot's records, to diff a later snapshot against.
    pub fn view(&self) -> RecordsView {
        RecordsView(self.records.clone())
    }

    /// The names (in any scope) of the records added, removed or replaced
    /// between `other` and this snapshot (either may be the newer). Costs the
    /// changes, not the vault: subtrees both share are skipped unvisited.
    pub fn changed_names(&self, other: &RecordsView) -> BTreeSet<String> {
        other
            .0
            .diff(&self.records)
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add((_, n), _)
                | imbl::ordmap::DiffItem::Remove((_, n), _)
                | imbl::ordmap::DiffItem::Update {
                    new: ((_, n), _), ..
                } => n.clone(),
            })
            .collect()
    }

    /// The names of the records stored in `scope`, sorted (O(log n + found)).
    pub fn names_in(&self, scope: &str) -> Vec<String> {
        self.in_scope(scope).map(|((_, n), _)| n.clone()).collect()
    }

    fn in_scope<'a>(
        &'a self,
        scope: &'a str,
    ) -> impl Iterator<Item = (&'a RecordKey, &'a Arc<SnapRecord>)> + 'a {
        self.records
            .range((scope.to_string(), String::new())..)
            .take_while(move |((s, _), _)| s == scope)
    }

    /// Metadata of one record (never the value).
    pub fn meta(&self, scope: &str, name: &str) -> Option<RecordMeta> {
        self.records
            .get(&(scope.to_string(), name.to_string()))
            .map(|r| RecordMeta::of(&r.stored))
    }

    /// All records (of `scope` if given), sorted by scope then name.
    pub fn list(&self, scope: Option<&str>) -> Vec<RecordMeta> {
        match scope {
            Some(s) => self
                .in_scope(s)
                .map(|(_, r)| RecordMeta::of(&r.stored))
                .collect(),
            None => self
                .records
                .values()
                .map(|r| RecordMeta::of(&r.stored))
                .collect(),
        }
    }

    pub fn agents(&self) -> &[AgentRecord] {
        &self.agents
    }

    /// The agent table, shared: unchanged (the same `Arc`) across snapshots
    /// whose edits touched only secrets.
    pub fn shared_agents(&self) -> Arc<Vec<AgentRecord>> {
        self.agents.clone()
    }

    /// Monotonic file version counter of this snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// One change to a snapshot's contents (what a log entry records).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Edit {
    Put(StoredRecord),
    Remove { scope: String, name: String },
    PutAgent(AgentRecord),
    RemoveAgent { id: String },
}

/// Checks one record for a snapshot (and, with `verify`, opens it once).
fn admit(
    rec: StoredRecord,
    data_key: &Key,
    path: &Path,
    verify: bool,
) -> Result<Arc<SnapRecord>, VaultError> {
    // SECURITY: even an authenticated file must not carry names or scopes the
    // rest of keyward would interpret differently.
    if !valid_scope(&rec.scope) || !valid_secret_name(&rec.name) {
        return Err(ferr(
            path,
            format!(
                "record {:?}/{:?} has an invalid scope or name",
                rec.scope, rec.name
            ),
        ));
    }
    let sealed = decode_sealed(&rec, path)?;
    if verify {
        drop(open_record(data_key, &rec, &sealed, path)?);
    }
    Ok(Arc::new(SnapRecord {
        stored: rec,
        sealed,
        opened: std::sync::OnceLock::new(),
    }))
}
