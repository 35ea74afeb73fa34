//! The tamper-evident audit log (SPEC §8): one JSONL object per decision, each
//! carrying `prev_hash` and `hash = sha256(prev_hash || canonical line)`.
//!
//! **The chain.** The canonical line is the exact JSON text written, up to (not
//! including) the trailing `,"hash":"…"}`; [`verify`] recomputes it from the
//! bytes on disk, so an edited, deleted, inserted, reordered or cut line breaks
//! the chain at that line. The first line of a log follows [`GENESIS_HASH`].
//!
//! **The files.** The live log is `PATH`; with `rotate_bytes` set, a full log is
//! renamed to `PATH.1`, `PATH.2`, … (the number only grows, a rotated file is
//! never renamed again) and the chain continues in a fresh `PATH`. Readers take
//! the whole set, oldest first, as one history ([`LogSet`]).
//!
//! **Locking.** Writers in several processes (the proxy, `keyward secret set`)
//! serialise on an advisory lock on `PATH.lock` around read-last-hash + append
//! (+ rotate), so the chain never forks; readers open the set under the shared
//! lock, so a concurrent rotation cannot make them skip or repeat a file. Within
//! the proxy, lines of concurrent requests are written in groups
//! ([`AuditLog::commit`]). See `docs/audit.md`.
//!
//! The files, one concept each, arrows pointing down:
//! ```text
//! export.rs  JSONL / CEF            → query
//! query.rs   Filter, parse_time     → read, event
//! verify.rs  the chain check        → read, encode
//! writer.rs  AuditLog, group commit → read, encode, files, event
//! read.rs    LogSet, RawLines, tail, follow, last line → encode, files
//! encode.rs  canonical line, chain hash → event
//! pg.rs      PgAudit: per-replica chains in PostgreSQL, verify_pg, tail_pg → read, encode, event
//! sink.rs    PgSink: the writer's ordered, non-blocking hand-off to PgAudit (+ spool) → pg, event
//! files.rs   names (PATH.N, PATH.lock), file identity, advisory lock
//! event.rs   Event, EventKind, Outcome
//! error.rs   AuditError
//! ```
//! The readers take a [`LogSet`] (`verify_set`, `query_set`, `export_set`,
//! `LogSet::tail`, `LogSet::follow`); the `path` forms open one first.

mod encode;
mod error;
mod event;
mod export;
mod files;
mod pg;
mod query;
mod read;
mod sink;
mod verify;
mod writer;

pub use encode::{chain_hash, GENESIS_HASH};
pub use error::AuditError;
pub use event::{Event, EventKind, Outcome};
pub use export::{cef_escape_header, cef_escape_value, export, export_set, to_cef, ExportFormat};
pub use files::{lock_path, rotated_files, rotated_path};
pub use pg::{
    import_file_chain, lines_pg, tail_pg, verify_pg, ChainReport, PgAudit, PgFollower, PgLine,
};
pub use query::{parse_time, query, query_iter, query_set, Filter, Record};
pub use read::{tail, tail_and_follow, Follower, LogSet, RawLine, RawLines};
pub use sink::{PgSink, DB_APPEND_TIMEOUT, DB_RETRY_AFTER};
pub use verify::{verify, verify_from, verify_set, Tamper, VerifyReport};
pub use writer::AuditLog;

/// Helpers shared by the tests of the files above.
#[cfg(test)]
mod testkit {
    use super::{AuditLog, Event, EventKind, Outcome};
    use std::path::{Path, PathBuf};

    pub(super) fn ev(event: &str, outcome: &str, agent: &str, secret: Option<&str>) -> Event {
        let (event, outcome) = (
            EventKind::parse(event).expect("a known event kind"),
            Outcome::parse(outcome).expect("a known outcome"),
        );
        Event {
            agent: Some(agent.into()),
            chain: Some("support".into()),
            secret: secret.map(String::from),
            host: Some("api.openai.com".into()),
            path: Some("/v1/chat".into()),
            ..Event::new(event, outcome)
        }
    }

    /// A log of `n` lines in a fresh temp dir.
    pub(super) fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        for i in 0..n {
            log.record(ev(
                "inject",
                "allowed",
                &format!("agent-{i}"),
                Some("OPENAI_API_KEY"),
            ))
            .unwrap();
        }
        (dir, path)
    }

    pub(super) fn rewrite_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        f(&mut lines);
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(path, out).unwrap();
    }
}
