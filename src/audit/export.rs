//! `audit export`: the matching events for a SIEM, as the JSONL lines on disk
//! (still verifiable) or as ArcSight CEF.

use super::error::AuditError;
use super::event::{Event, EventKind, Outcome};
use super::query::{query_set, Filter};
use super::read::LogSet;
use std::io::Write;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The lines exactly as on disk (hashes stay verifiable).
    Jsonl,
    /// ArcSight Common Event Format, one event per line.
    Cef,
}

/// CEF severities (0–10).
const SEVERITY_ROUTINE: u8 = 3;
const SEVERITY_ADMIN_CHANGE: u8 = 5;
const SEVERITY_DENIED: u8 = 6;
const SEVERITY_ERROR: u8 = 7;
const SEVERITY_AUTH_FAIL: u8 = 8;
/// The CEF format version we emit.
const CEF_VERSION: u8 = 0;
const CEF_VENDOR: &str = "keyward";
const CEF_PRODUCT: &str = "keyward";

fn cef_severity(ev: &Event) -> u8 {
    match (ev.event, ev.outcome) {
        (EventKind::AuthFail, _) => SEVERITY_AUTH_FAIL,
        (_, Outcome::Error) => SEVERITY_ERROR,
        (_, Outcome::Denied) => SEVERITY_DENIED,
        (e, _) if e.is_admin_change() => SEVERITY_ADMIN_CHANGE,
        _ => SEVERITY_ROUTINE,
    }
}

/// Escapes a CEF header field: `\` and `|`; line breaks become spaces (the header
/// must stay on one line).
pub fn cef_escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a CEF extension value: `\`, `=`, and line breaks as `\n` / `\r`.
pub fn cef_escape_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// One event as a CEF line (no newline).
pub fn to_cef(ev: &Event) -> String {
    let mut ext: Vec<(&str, String)> = Vec::new();
    if let Ok(t) = OffsetDateTime::parse(&ev.ts, &Rfc3339) {
        ext.push(("rt", (t.unix_timestamp_nanos() / 1_000_000).to_string()));
    }
    let plain: [(&str, &Option<String>); 6] = [
        ("suser", &ev.agent),
        ("dhost", &ev.host),
        ("request", &ev.path),
        ("requestMethod", &ev.method),
        ("externalId", &ev.request_id),
        ("destinationServiceName", &ev.provider),
    ];
    for (key, value) in plain {
        if let Some(v) = value {
            ext.push((key, v.clone()));
        }
    }
    ext.push(("outcome", ev.outcome.as_str().to_string()));
    if let Some(reason) = &ev.reason {
        ext.push(("reason", reason.clone()));
    }
    let labelled: [(&str, &str, &str, &Option<String>); 8] = [
        ("cs1Label", "chain", "cs1", &ev.chain),
        ("cs2Label", "secret", "cs2", &ev.secret),
        ("cs3Label", "scope", "cs3", &ev.scope),
        ("cs4Label", "tier", "cs4", &ev.tier),
        ("cs5Label", "run_id", "cs5", &ev.run_id),
        ("cs6Label", "connection_id", "cs6", &ev.connection_id),
        ("flexString1Label", "owner", "flexString1", &ev.owner),
        ("flexString2Label", "builder", "flexString2", &ev.builder),
    ];
    for (label_key, label, key, value) in labelled {
        if let Some(v) = value {
            ext.push((label_key, label.to_string()));
            ext.push((key, v.clone()));
        }
    }
    if let Some(status) = ev.status {
        ext.push(("cn1Label", "status".into()));
        ext.push(("cn1", status.to_string()));
    }
    if let Some(version) = ev.version {
        ext.push(("cn2Label", "secret_version".into()));
        ext.push(("cn2", version.to_string()));
    }
    let name = format!("{} {}", ev.event.as_str(), ev.outcome.as_str());
    let mut line = format!(
        "CEF:{CEF_VERSION}|{CEF_VENDOR}|{CEF_PRODUCT}|{}|{}|{}|{}|",
        cef_escape_header(env!("CARGO_PKG_VERSION")),
        cef_escape_header(ev.event.as_str()),
        cef_escape_header(&name),
        cef_severity(ev),
    );
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_escape_value(&v)))
        .collect();
    line.push_str(&ext.join(" "));
    line
}

/// Writes the matching events of the file set to `out`; returns how many.
pub fn export(
    path: &Path,
    filter: &Filter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    export_set(LogSet::open(path)?, filter, format, out)
}

/// [`export`] of an opened log.
pub fn export_set(
    set: LogSet,
    filter: &Filter,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let stdout_err = |source| AuditError::Io {
        path: "<output>".into(),
        source,
    };
    let mut n = 0u64;
    for rec in query_set(set, filter) {
        let rec = rec?;
        match format {
            ExportFormat::Jsonl => writeln!(out, "{}", rec.line),
            ExportFormat::Cef => writeln!(out, "{}", to_cef(&rec.event)),
        }
        .map_err(stdout_err)?;
        n += 1;
    }
    out.flush().map_err(stdout_err)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::{ev, log_with};

    #[test]
    fn cef_escapes_header_and_extension() {
        assert_eq!(cef_escape_header(r"a|b\c"), r"a\|b\\c");
        assert_eq!(cef_escape_header("a\nb"), "a b");
        assert_eq!(cef_escape_value(r"k=v\x"), r"k\=v\\x");
        assert_eq!(cef_escape_value("a\r\nb|c"), r"a\r\nb|c");
        let mut e = ev("deny", "denied", "agent=1", Some("OPENAI_API_KEY"));
        e.ts = "2024-05-01T10:00:00.000Z".into();
        e.reason = Some("host_not_allowed\nnext".into());
        e.status = Some(403);
        let line = to_cef(&e);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            line.starts_with(&format!(
                r"CEF:0|keyward|keyward|{version}|deny|deny denied|{SEVERITY_DENIED}|"
            )),
            "{line}"
        );
        assert!(line.contains(r"suser=agent\=1 "), "{line}");
        assert!(line.contains(r"reason=host_not_allowed\nnext"), "{line}");
        assert!(line.contains("rt=1714557600000 "), "{line}");
        assert!(line.contains("cs1Label=chain cs1=support"), "{line}");
        assert!(
            line.contains("cs2Label=secret cs2=OPENAI_API_KEY"),
            "{line}"
        );
        assert!(line.contains("request=/v1/chat"), "{line}");
        assert!(line.contains("cn1Label=status cn1=403"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn jsonl_export_is_byte_identical() {
        let (_d, path) = log_with(3);
        let mut out = Vec::new();
        let n = export(&path, &Filter::default(), ExportFormat::Jsonl, &mut out).unwrap();
        assert_eq!(n, 3);
        assert_eq!(out, std::fs::read(&path).unwrap());
    }
}
