//! `keyward secret import`: many secrets from JSON Lines on stdin, one object per
//! line (`{"scope","name","value","kind"?,"description"?,"hosts"?,"rotate_every"?}`,
//! `scope` defaulting to `platform`). Every line is checked before anything is
//! written (an error names the line and field, never a value); then all of them
//! are stored as one vault write (one log entry, one `fsync`) and audited one
//! line per secret, like `secret set`. Values are read from stdin only.

use super::CliError;
use crate::audit::{Event, EventKind, Outcome};
use crate::config::Config;
use crate::secret::Secret;
use crate::vault::{
    kind, Change, RecordMeta, SecretKind, SetOptions, Store, Undo, MAX_VALUE_BYTES,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use zeroize::Zeroizing;

/// The longest line read: a maximal value, escaped, plus metadata.
const MAX_LINE_BYTES: usize = 8 * MAX_VALUE_BYTES;
/// At most this many secrets per import (the vault's own limit).
pub const MAX_IMPORT: usize = crate::vault::validate::MAX_RECORDS;
const FIELDS: &[&str] = &[
    "scope",
    "name",
    "value",
    "kind",
    "description",
    "hosts",
    "rotate_every",
];

/// Reads, checks and imports. Returns the exit code (0).
pub fn run(
    cfg: &Config,
    vault: &dyn Store,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<u8, CliError> {
    let changes = read_all(vault, input)?;
    if changes.is_empty() {
        return Err(CliError::User(
            "nothing to import: stdin has no lines (one JSON object per secret)".into(),
        ));
    }
    let audit = super::audit::open_writer(cfg)
        .map_err(|e| CliError::User(format!("{e} (every vault change is audited)")))?;
    let n = changes.len();
    let applied = vault
        .apply_batch(changes)
        .map_err(|e| CliError::User(format!("nothing imported: {e}")))?;
    let (mut set, mut rotated) = (0usize, 0usize);
    let mut undos: Vec<Undo> = Vec::with_capacity(n);
    let mut metas: Vec<(RecordMeta, bool)> = Vec::with_capacity(n);
    for (a, u) in applied {
        let meta = a
            .into_meta()
            .map_err(|e| CliError::Internal(e.to_string()))?;
        metas.push((meta, u.replaced()));
        undos.push(u);
    }
    for (i, (meta, replaced)) in metas.iter().enumerate() {
        let event = if *replaced {
            EventKind::SecretRotate
        } else {
            EventKind::SecretSet
        };
        let mut ev = Event::new(event, Outcome::Allowed);
        ev.secret = Some(meta.name.clone());
        ev.scope = Some(meta.scope.clone());
        ev.version = Some(meta.version);
        if let Err(e) = audit.record(ev) {
            // SECURITY: fail closed: the secrets not on record are taken back (one
            // write); those already audited stay, as their lines say.
            let rest = undos.split_off(i);
            return Err(match vault.undo_all(rest) {
                Ok(()) => CliError::Internal(format!(
                    "the audit line for line {} could not be written ({e}); it and the {} after it were undone",
                    i + 1,
                    n - i - 1
                )),
                Err(u) => CliError::Internal(format!(
                    "the audit line for line {} could not be written ({e}) and undoing failed ({u}); check the vault",
                    i + 1
                )),
            });
        }
        if *replaced {
            rotated += 1;
        } else {
            set += 1;
        }
    }
    vault.settle();
    writeln!(
        out,
        "imported {n} secrets ({set} new, {rotated} new versions) in one write"
    )
    .map_err(|e| CliError::Internal(format!("cannot write output: {e}")))?;
    Ok(0)
}

/// Every line as a checked change; the first bad line is the error.
fn read_all(vault: &dyn Store, input: &mut dyn BufRead) -> Result<Vec<Change>, CliError> {
    let snap = vault.snapshot();
    let mut changes = Vec::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut line = Zeroizing::new(Vec::new());
    for n in 1.. {
        line.clear();
        let read = std::io::Read::take(&mut *input, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| CliError::User(format!("cannot read stdin: {e}")))?;
        if read == 0 {
            break;
        }
        let at = |m: String| CliError::User(format!("line {n}: {m}; nothing was imported"));
        if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            return Err(at(format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if changes.len() >= MAX_IMPORT {
            return Err(at(format!("more than {MAX_IMPORT} secrets in one import")));
        }
        let mut change = parse_line(&line).map_err(at)?;
        change.check().map_err(|e| at(e.to_string()))?;
        if let Change::SetSecret {
            scope,
            name,
            value,
            kind: k,
            ..
        } = &change
        {
            let effective = k
                .or_else(|| snap.meta(scope, name).map(|m| m.kind))
                .unwrap_or_default();
            kind::describe(effective, value).map_err(at)?;
            if let Some(first) = seen.insert((scope.clone(), name.clone()), n) {
                return Err(at(format!(
                    "{scope}/{name} is already on line {first} (one line per secret)"
                )));
            }
        }
        changes.push(change);
    }
    Ok(changes)
}

/// One JSON object → a `SetSecret`. Messages name fields, never their contents.
fn parse_line(line: &[u8]) -> Result<Change, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        // Syntax errors carry a position only; never echo the line.
        format!(
            "not a JSON object (column {}): expected {{\"scope\",\"name\",\"value\",…}}",
            e.column()
        )
    })?;
    let Value::Object(mut obj) = v else {
        return Err("not a JSON object: expected {\"scope\",\"name\",\"value\",…}".into());
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        let k = if k.len() <= 32 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            k.clone()
        } else {
            "(unprintable)".into()
        };
        return Err(format!(
            "unknown field {k:?} (fields: {})",
            FIELDS.join(", ")
        ));
    }
    let value = match obj.remove("value") {
        Some(Value::String(s)) => Secret::new(s.into_bytes()),
        Some(_) => return Err("\"value\" must be a string".into()),
        None => return Err("\"value\" is missing".into()),
    };
    let name = string(&mut obj, "name")?.ok_or("\"name\" is missing")?;
    let scope = string(&mut obj, "scope")?.unwrap_or_else(|| "platform".into());
    let kind = match string(&mut obj, "kind")? {
        None => None,
        Some(k) => Some(
            SecretKind::parse(&k)
                .ok_or("invalid \"kind\": use api_key, oauth2, hmac or aws".to_string())?,
        ),
    };
    let description = string(&mut obj, "description")?;
    let hosts = match obj.remove("hosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|h| match h {
                Value::String(s) => Ok(s),
                _ => Err("\"hosts\" must be a list of strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"hosts\" must be a list of strings".into()),
    };
    let rotate_every = match string(&mut obj, "rotate_every")? {
        None => None,
        Some(p) => Some(
            humantime::parse_duration(&p)
                .map_err(|_| "invalid \"rotate_every\": use e.g. 90d, 12w, 24h".to_string())?,
        ),
    };
    Ok(Change::SetSecret {
        scope,
        name,
        value,
        kind,
        options: SetOptions {
            description,
            hosts,
            rotate_every,
        },
    })
}

fn string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{key:?} must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_errors_never_quote_the_value() {
        let ok = parse_line(br#"{"name":"A","value":"v-123456789","hosts":["x.test"]}"#);
        assert!(matches!(ok, Ok(Change::SetSecret { ref scope, .. }) if scope == "platform"));
        let canary = "canary-7f3a9c";
        for bad in [
            format!(r#"{{"name":"A","valeu":"{canary}"}}"#),
            format!(r#"{{"name":"A","value":"{canary}","hosts":"{canary}"}}"#),
            format!(r#"{{"name":"A","value":"{canary}","kind":"{canary}"}}"#),
            format!(r#"{{"name":"A","value":"{canary}"#),
            format!(r#"["{canary}"]"#),
            format!(r#"{{"name":"A","{canary}":1}}"#),
        ] {
            let err = parse_line(bad.as_bytes()).map(|_| ()).unwrap_err();
            assert!(!err.contains(canary), "{err}");
        }
    }
}
