//! The tamper-evident audit log (SPEC §8): one JSONL object per decision, each
//! carrying `prev_hash` and `hash = sha256(prev_hash || canonical line)`.
//!
//! The canonical line is the exact JSON text written, up to (not including) the
//! trailing `,"hash":"…"}`; `verify` recomputes it from the bytes on disk.

use crate::config::AuditConfig;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `prev_hash` of the first line of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How far from the end `open` looks for the last line (longer lines are refused).
const TAIL_SCAN_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log {path}: {message}")]
    Corrupt { path: String, message: String },
}

/// One decision. Field order here is the order on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub ts: String,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path only: the query string is never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Set by the writer.
    #[serde(default)]
    pub prev_hash: String,
    /// Set by the writer; never serialized as part of the canonical line.
    #[serde(default, skip_serializing)]
    pub hash: String,
}

impl Event {
    pub fn new(event: &str, outcome: &str) -> Event {
        Event {
            event: event.to_string(),
            outcome: outcome.to_string(),
            ..Event::default()
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

enum Sink {
    File(File),
    Stdout,
}

struct Inner {
    sink: Sink,
    prev_hash: String,
}

/// The append-only writer. `record` returns only once the line is handed to the
/// kernel, so a caller can fail closed when it errors.
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl AuditLog {
    pub fn open(cfg: &AuditConfig) -> Result<AuditLog, AuditError> {
        AuditLog::open_path(&cfg.path)
    }

    pub fn open_path(path: &Path) -> Result<AuditLog, AuditError> {
        if path == Path::new("-") {
            return Ok(AuditLog {
                path: path.to_path_buf(),
                inner: Mutex::new(Inner {
                    sink: Sink::Stdout,
                    prev_hash: GENESIS_HASH.to_string(),
                }),
            });
        }
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(io)?;
        let prev_hash = last_hash(&mut file)
            .map_err(io)?
            .unwrap_or_else(|| GENESIS_HASH.to_string());
        Ok(AuditLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                sink: Sink::File(file),
                prev_hash,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chains, writes and returns the written line's hash.
    pub fn record(&self, mut ev: Event) -> Result<String, AuditError> {
        if ev.ts.is_empty() {
            ev.ts = now_rfc3339();
        }
        let mut inner = self.inner.lock();
        ev.prev_hash = inner.prev_hash.clone();
        let canonical = serde_json::to_string(&ev).map_err(|e| AuditError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        let hash = chain_hash(&ev.prev_hash, canonical_body(&canonical));
        let mut line = String::with_capacity(canonical.len() + 80);
        line.push_str(&canonical[..canonical.len() - 1]);
        line.push_str(",\"hash\":\"");
        line.push_str(&hash);
        line.push_str("\"}\n");
        let res = match &mut inner.sink {
            Sink::File(f) => f.write_all(line.as_bytes()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).and_then(|_| out.flush())
            }
        };
        res.map_err(|source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        inner.prev_hash = hash.clone();
        Ok(hash)
    }
}

/// The bytes the hash covers: the canonical JSON without its closing brace.
fn canonical_body(canonical: &str) -> &str {
    &canonical[..canonical.len().saturating_sub(1)]
}

pub fn chain_hash(prev_hash: &str, body: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(body.as_bytes());
    hex::encode(h.finalize())
}

fn last_hash(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(TAIL_SCAN_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = String::new();
    file.read_to_string(&mut buf)?;
    let last = buf.lines().rev().find(|l| !l.trim().is_empty());
    Ok(last
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("hash").and_then(|h| h.as_str()).map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_chain_and_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let h1 = log.record(Event::new("tunnel", "allowed")).unwrap();
        drop(log);
        let log = AuditLog::open_path(&path).unwrap();
        log.record(Event::new("deny", "denied")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["prev_hash"], GENESIS_HASH);
        assert_eq!(lines[1]["prev_hash"], h1.as_str());
    }
}
