//! `keyward secret …` and `keyward vault …`.
//!
//! Values come from stdin only (never argv, which other users can read in `ps`), and
//! no command ever prints a value: only its hint (`sk-p…9xQz`).

use super::CliError;
use crate::audit::{AuditLog, Event, EventKind, Outcome};
use crate::config::Config;
use crate::secret::Secret;
use crate::vault::{
    Change, MasterKey, MasterSource, RecordMeta, SecretKind, SetOptions, Store, Undo, Vault,
    VaultError, MAX_VALUE_BYTES,
};
use clap::Subcommand;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// `secret due` lists secrets due within this window as `due_soon`.
pub const DUE_SOON: time::Duration = time::Duration::days(14);
/// Env variables read by `vault rotate-master-key --new-from-env`.
pub const ENV_NEW_MASTER_KEY: &str = "KEYWARD_NEW_MASTER_KEY";
pub const ENV_NEW_MASTER_PASSPHRASE: &str = "KEYWARD_NEW_MASTER_PASSPHRASE";

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Store a secret; the value is read from stdin (one trailing newline is stripped).
    Set {
        name: String,
        #[arg(long, default_value = "platform")]
        scope: String,
        #[arg(long)]
        description: Option<String>,
        /// Restrict the secret to these hosts (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "H1,H2")]
        hosts: Vec<String>,
        /// Rotation period, e.g. 90d; `secret due` reports when it is up.
        #[arg(long, value_name = "PERIOD")]
        rotate_every: Option<String>,
        /// What the value is: api_key (default for new secrets), hmac, or JSON for
        /// oauth2 {"client_id","client_secret","token_url","refresh_token"?,"scope"?}
        /// and aws {"access_key_id","secret_access_key","session_token"?}.
        #[arg(long, value_name = "api_key|oauth2|hmac|aws")]
        kind: Option<String>,
    },
    /// List secrets (metadata and hints only).
    List {
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one secret's metadata and hint (never the value).
    Show {
        name: String,
        /// The scope holding NAME; without it, the one scope that does.
        #[arg(long)]
        scope: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace a secret's value (read from stdin); its version goes up by one.
    Rotate {
        name: String,
        /// The scope holding NAME; without it, the one scope that does.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Delete a secret.
    Rm {
        name: String,
        /// The scope holding NAME; without it, the one scope that does.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Copy a secret into another scope.
    Clone {
        name: String,
        #[arg(long)]
        from_scope: String,
        #[arg(long)]
        to_scope: String,
    },
    /// Store many secrets at once from JSON Lines on stdin, one object per line:
    /// {"scope"?,"name","value","kind"?,"description"?,"hosts"?,"rotate_every"?}.
    /// All lines are checked first; then one write stores them all.
    Import,
    /// Secrets due or overdue for rotation; exit 1 if any is overdue.
    Due {
        #[arg(long)]
        json: bool,
        /// Report as of this RFC 3339 time instead of now (plan ahead).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VaultCmd {
    /// Re-wrap the data key under a new master key (records are not rewritten).
    RotateMasterKey {
        /// The new master key file (created 0600 with a random key if absent).
        #[arg(long, value_name = "PATH", conflicts_with = "new_from_env")]
        new_key_file: Option<PathBuf>,
        /// Take the new key from $KEYWARD_NEW_MASTER_KEY (base64) or
        /// $KEYWARD_NEW_MASTER_PASSPHRASE.
        #[arg(long)]
        new_from_env: bool,
    },
}

pub fn run(cmd: SecretCmd, cfg: &Config) -> Result<u8, CliError> {
    let stdin = std::io::stdin();
    if matches!(cmd, SecretCmd::Set { .. } | SecretCmd::Rotate { .. }) && stdin.is_terminal() {
        eprintln!("keyward: reading the value from stdin (end with Ctrl-D); prefer piping it in");
    }
    run_with(cmd, cfg, &mut stdin.lock(), &mut std::io::stdout().lock())
}

/// `run` with explicit stdin/stdout (for tests).
pub fn run_with(
    cmd: SecretCmd,
    cfg: &Config,
    input: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let vault = crate::vault::open_store(cfg).map_err(vault_err)?;
    match cmd {
        SecretCmd::Import => {
            return super::import::run(cfg, &*vault, &mut std::io::BufReader::new(input), out)
        }
        SecretCmd::Set {
            name,
            scope,
            description,
            hosts,
            rotate_every,
            kind,
        } => {
            let rotate_every = rotate_every.as_deref().map(parse_period).transpose()?;
            let kind = kind
                .as_deref()
                .map(|k| {
                    SecretKind::parse(k).ok_or_else(|| {
                        CliError::User(format!(
                            "invalid --kind {k:?}: use api_key, oauth2, hmac or aws"
                        ))
                    })
                })
                .transpose()?;
            let value = read_value(input)?;
            let audit = open_audit(cfg)?;
            let opts = SetOptions {
                description,
                hosts,
                rotate_every,
            };
            let (meta, undo) = apply(
                &*vault,
                Change::SetSecret {
                    scope,
                    name,
                    value,
                    kind,
                    options: opts,
                },
            )?;
            // The same names as the admin API's PUT: a new version of an existing
            // secret is a rotation, whichever command made it.
            let event = if undo.replaced() {
                EventKind::SecretRotate
            } else {
                EventKind::SecretSet
            };
            audit_or_undo(&*vault, &audit, event, &meta, None, undo)?;
            say(
                out,
                &format!(
                    "set {}/{} v{}  {}",
                    meta.scope, meta.name, meta.version, meta.hint
                ),
            )?;
        }
        SecretCmd::Rotate { name, scope } => {
            let scope = scope_of(&*vault, scope, &name)?;
            let value = read_value(input)?;
            let audit = open_audit(cfg)?;
            let (meta, undo) = apply(&*vault, Change::RotateSecret { scope, name, value })?;
            audit_or_undo(&*vault, &audit, EventKind::SecretRotate, &meta, None, undo)?;
            say(
                out,
                &format!(
                    "rotated {}/{} v{}  {}",
                    meta.scope, meta.name, meta.version, meta.hint
                ),
            )?;
        }
        SecretCmd::Rm { name, scope } => {
            let scope = scope_of(&*vault, scope, &name)?;
            let audit = open_audit(cfg)?;
            let (meta, undo) = apply(&*vault, Change::RemoveSecret { scope, name })?;
            audit_or_undo(&*vault, &audit, EventKind::SecretRm, &meta, None, undo)?;
            say(
                out,
                &format!(
                    "removed {}/{} (was v{})",
                    meta.scope, meta.name, meta.version
                ),
            )?;
        }
        SecretCmd::Clone {
            name,
            from_scope,
            to_scope,
        } => {
            let audit = open_audit(cfg)?;
            let change = Change::CloneSecret {
                name: name.clone(),
                from: from_scope.clone(),
                to: to_scope.clone(),
            };
            let (meta, undo) = apply(&*vault, change)?;
            audit_or_undo(
                &*vault,
                &audit,
                EventKind::SecretClone,
                &meta,
                Some(format!("cloned from {from_scope}")),
                undo,
            )?;
            say(
                out,
                &format!(
                    "cloned {name} from {from_scope} to {to_scope}  {}",
                    meta.hint
                ),
            )?;
        }
        SecretCmd::List { scope, json } => {
            if let Some(s) = &scope {
                if !crate::vault::valid_scope(s) {
                    return Err(CliError::User(format!("invalid scope {s:?}")));
                }
            }
            let list = vault.list(scope.as_deref());
            if json {
                say(out, &to_json(&list)?)?;
            } else if list.is_empty() {
                say(out, "no secrets")?;
            } else {
                let rows = list
                    .iter()
                    .map(|m| {
                        vec![
                            m.scope.clone(),
                            m.name.clone(),
                            m.version.to_string(),
                            m.hint.clone(),
                            m.created.clone(),
                            m.updated.clone(),
                            m.rotation_due.clone().unwrap_or_else(|| "-".into()),
                            m.description.clone().unwrap_or_default(),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(
                    out,
                    &[
                        "SCOPE",
                        "NAME",
                        "VER",
                        "HINT",
                        "CREATED",
                        "UPDATED",
                        "ROTATION DUE",
                        "DESCRIPTION",
                    ],
                    &rows,
                )?;
            }
        }
        SecretCmd::Show { name, scope, json } => {
            let scope = scope_of(&*vault, scope, &name)?;
            let meta = vault.snapshot().meta(&scope, &name).ok_or_else(|| {
                vault_err(VaultError::NotFound {
                    scope: scope.clone(),
                    name: name.clone(),
                })
            })?;
            if json {
                say(out, &to_json(&meta)?)?;
            } else {
                let hosts = if meta.hosts.is_empty() {
                    "(provider hosts)".to_string()
                } else {
                    meta.hosts.join(",")
                };
                let mut rows = vec![
                    ("name".to_string(), meta.name.clone()),
                    ("scope".to_string(), meta.scope.clone()),
                    ("kind".to_string(), meta.kind.to_string()),
                    ("version".to_string(), meta.version.to_string()),
                    ("hint".to_string(), meta.hint.clone()),
                ];
                // Only the non-secret fields of multi-field kinds are stored outside
                // the sealed value; nothing else can be printed.
                rows.extend(
                    meta.fields
                        .iter()
                        .map(|(k, v)| (k.replace('_', " "), v.clone())),
                );
                let rest = [
                    ("description", meta.description.clone().unwrap_or_default()),
                    ("hosts", hosts),
                    ("created", meta.created.clone()),
                    ("updated", meta.updated.clone()),
                    ("last rotated", meta.last_rotated.clone()),
                    (
                        "rotate every",
                        meta.rotate_every.clone().unwrap_or_else(|| "-".into()),
                    ),
                    (
                        "rotation due",
                        meta.rotation_due.clone().unwrap_or_else(|| "-".into()),
                    ),
                ];
                rows.extend(rest.into_iter().map(|(k, v)| (k.to_string(), v)));
                for (k, v) in rows {
                    say(out, &format!("{k:<13} {v}"))?;
                }
            }
        }
        SecretCmd::Due { json, at } => {
            let now = match at {
                Some(t) => {
                    OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            CliError::User(format!(
                                "invalid --at {t:?}: use RFC 3339, e.g. 2030-01-01T00:00:00Z"
                            ))
                        })?
                }
                None => OffsetDateTime::now_utc(),
            };
            return due(&*vault, now, json, out);
        }
    }
    Ok(0)
}

pub fn run_vault(cmd: VaultCmd, cfg: &Config) -> Result<u8, CliError> {
    match cmd {
        VaultCmd::RotateMasterKey {
            new_key_file,
            new_from_env,
        } => {
            let new = match (new_key_file, new_from_env) {
                (Some(p), false) => MasterKey::load_or_create_file(&p).map_err(vault_err)?,
                (None, true) => new_key_from_env()?,
                _ => {
                    return Err(CliError::User(
                        "give the new master key: --new-key-file PATH or --new-from-env".into(),
                    ))
                }
            };
            if cfg.store.backend != crate::config::Backend::File {
                return Err(CliError::User(
                    "vault rotate-master-key works on the vault file only; with store.backend = \"postgres\" export the store (keyward store export), rotate the file's key, and import it into an empty schema".into(),
                ));
            }
            let vault = Vault::open(&cfg.vault).map_err(vault_err)?;
            let old_id = vault.master_key_id().map_err(vault_err)?;
            let audit = open_audit(cfg)?;
            let new_id = vault.rotate_master_key(new).map_err(vault_err)?;
            if new_id == old_id {
                eprintln!("keyward: note: the new master key is the same as the current one");
            }
            let mut ev = Event::new(EventKind::VaultRotateMasterKey, Outcome::Allowed);
            ev.reason = Some(format!("master key id {old_id} -> {new_id}"));
            audit.record(ev).map_err(|e| {
                CliError::Internal(format!(
                    "master key rotated, but the audit line could not be written: {e}"
                ))
            })?;
            println!(
                "re-wrapped the data key of {} under master key id {new_id} (was {old_id});\n\
                 point vault.master_key_file (or $KEYWARD_MASTER_KEY / $KEYWARD_MASTER_PASSPHRASE) at the new key \
                 and restart every keyward that reads this vault",
                cfg.vault.path.display()
            );
            Ok(0)
        }
    }
}

fn new_key_from_env() -> Result<MasterKey, CliError> {
    if let Some(v) = std::env::var_os(ENV_NEW_MASTER_KEY).filter(|v| !v.is_empty()) {
        let v = Zeroizing::new(v.into_string().map_err(|_| {
            CliError::User(format!("${ENV_NEW_MASTER_KEY}: not base64 of 32 bytes"))
        })?);
        return MasterKey::from_base64(&v, MasterSource::Given(format!("${ENV_NEW_MASTER_KEY}")))
            .map_err(vault_err);
    }
    if let Some(v) = std::env::var_os(ENV_NEW_MASTER_PASSPHRASE).filter(|v| !v.is_empty()) {
        use std::os::unix::ffi::OsStringExt;
        let pass = Zeroizing::new(v.into_vec());
        return MasterKey::from_passphrase(
            &pass,
            MasterSource::Given(format!("${ENV_NEW_MASTER_PASSPHRASE}")),
        )
        .map_err(vault_err);
    }
    Err(CliError::User(format!(
        "--new-from-env: set ${ENV_NEW_MASTER_KEY} or ${ENV_NEW_MASTER_PASSPHRASE}"
    )))
}

fn due(
    vault: &dyn Store,
    now: OffsetDateTime,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let mut rows: Vec<(&'static str, RecordMeta)> = Vec::new();
    for m in vault.list(None) {
        let Some(at) = m.due_at() else { continue };
        if at <= now {
            rows.push(("overdue", m));
        } else if at - now <= DUE_SOON {
            rows.push(("due_soon", m));
        }
    }
    let overdue = rows.iter().any(|(s, _)| *s == "overdue");
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(status, m)| {
                serde_json::json!({
                    "status": status, "scope": m.scope, "name": m.name, "version": m.version,
                    "rotation_due": m.rotation_due, "rotate_every": m.rotate_every, "hint": m.hint,
                })
            })
            .collect();
        say(out, &to_json(&v)?)?;
    } else if rows.is_empty() {
        say(out, "no secrets due for rotation")?;
    } else {
        let rows = rows
            .iter()
            .map(|(s, m)| {
                vec![
                    s.to_string(),
                    m.scope.clone(),
                    m.name.clone(),
                    m.rotation_due.clone().unwrap_or_default(),
                    m.rotate_every.clone().unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>();
        table(out, &["STATUS", "SCOPE", "NAME", "DUE", "EVERY"], &rows)?;
    }
    Ok(u8::from(overdue))
}

/// Reads a value from `input`: at most `MAX_VALUE_BYTES` (plus a newline), one trailing
/// `\n` stripped; empty values and values containing CR, LF or NUL are refused. The
/// buffer is zeroized; no message ever contains the value.
pub fn read_value(input: &mut dyn Read) -> Result<Secret, CliError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    input
        .take(MAX_VALUE_BYTES as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::User(format!("cannot read the value from stdin: {e}")))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.len() > MAX_VALUE_BYTES {
        return Err(CliError::User(format!(
            "the value is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    if buf.is_empty() {
        return Err(CliError::User(
            "empty value: pipe the secret into stdin, e.g. `pbpaste | keyward secret set NAME`"
                .into(),
        ));
    }
    // SECURITY: a value with CR/LF/NUL could split or smuggle headers when injected;
    // refuse it here with an actionable message (the vault refuses it too).
    if buf.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(CliError::User(
            "the value contains CR, LF or NUL (only one trailing newline is stripped)".into(),
        ));
    }
    Ok(Secret::new(std::mem::take(&mut *buf)))
}

/// The scope a `show`/`rotate`/`rm` acts on: `--scope` if given, else the one
/// scope that holds `name`; none or several is a user error naming them.
fn scope_of(vault: &dyn Store, scope: Option<String>, name: &str) -> Result<String, CliError> {
    if let Some(scope) = scope {
        return Ok(scope);
    }
    let mut scopes: Vec<String> = vault
        .list(None)
        .into_iter()
        .filter(|m| m.name == name)
        .map(|m| m.scope)
        .collect();
    match scopes.len() {
        0 => Err(CliError::User(format!(
            "secret {name} not found in any scope (`keyward secret list` shows what is stored)"
        ))),
        1 => Ok(scopes.remove(0)),
        n => Err(CliError::User(format!(
            "secret {name} is in {n} scopes ({}): name one with --scope",
            scopes.join(", ")
        ))),
    }
}

fn parse_period(s: &str) -> Result<std::time::Duration, CliError> {
    humantime::parse_duration(s).map_err(|_| {
        CliError::User(format!(
            "invalid --rotate-every {s:?}: use e.g. 90d, 12w, 24h"
        ))
    })
}

fn open_audit(cfg: &Config) -> Result<AuditLog, CliError> {
    super::audit::open_writer(cfg)
        .map_err(|e| CliError::User(format!("{e} (every vault change is audited)")))
}

/// Records the audit line for a change just made, or takes the change back.
fn audit_or_undo(
    vault: &dyn Store,
    audit: &AuditLog,
    event: EventKind,
    meta: &RecordMeta,
    reason: Option<String>,
    undo: Undo,
) -> Result<(), CliError> {
    let mut ev = Event::new(event, Outcome::Allowed);
    ev.secret = Some(meta.name.clone());
    ev.scope = Some(meta.scope.clone());
    ev.version = Some(meta.version);
    ev.reason = reason;
    let Err(e) = audit.record(ev) else {
        return Ok(());
    };
    // SECURITY: fail closed: a vault change that is not on record is undone (the
    // previous record goes back, still sealed).
    Err(match vault.undo(undo) {
        Ok(()) => CliError::Internal(format!(
            "the audit line could not be written ({e}); the change was undone, nothing changed"
        )),
        Err(u) => CliError::Internal(format!(
            "the audit line could not be written ({e}) and undoing the change failed ({u}); check the vault"
        )),
    })
}

/// Makes a secret change; its metadata and how to take it back.
fn apply(vault: &dyn Store, change: Change) -> Result<(RecordMeta, Undo), CliError> {
    let (applied, undo) = vault.apply(change).map_err(vault_err)?;
    Ok((applied.into_meta().map_err(vault_err)?, undo))
}

fn vault_err(e: VaultError) -> CliError {
    CliError::User(e.to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Internal(format!("cannot encode JSON: {e}")))
}

fn say(out: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(out, "{line}").map_err(|e| CliError::Internal(format!("cannot write output: {e}")))
}

fn table(out: &mut dyn Write, head: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    say(out, &line(head.to_vec()))?;
    for r in rows {
        say(out, &line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_value_strips_one_newline_and_refuses_bad_input() {
        let v = read_value(&mut &b"sk-abc-1234567890\n"[..]).unwrap();
        assert_eq!(v.expose(), b"sk-abc-1234567890");
        let v = read_value(&mut &b"no-newline"[..]).unwrap();
        assert_eq!(v.expose(), b"no-newline");
        for bad in [
            &b""[..],
            b"\n",
            b"a\n\n",
            b"a\r\n",
            b"a\rb",
            b"a\0b",
            b"a\nb",
        ] {
            let e = read_value(&mut &bad[..]).unwrap_err();
            assert_eq!(e.exit_code(), 1);
        }
        let long = vec![b'a'; MAX_VALUE_BYTES + 1];
        assert!(read_value(&mut &long[..]).is_err());
        let max = vec![b'a'; MAX_VALUE_BYTES];
        assert!(read_value(&mut &max[..]).is_ok());
    }

    #[test]
    fn errors_never_echo_the_value() {
        let e = read_value(&mut &b"canary-XYZZY\r\n"[..]).unwrap_err();
        assert!(!e.to_string().contains("XYZZY"));
    }

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period("90d").unwrap().as_secs(), 90 * 86_400);
        assert!(parse_period("soon").is_err());
    }
}
