//! `audit verify`: recomputes the hash chain over the whole file set from the
//! bytes on disk and names the first line that breaks it.

use super::encode::{chain_hash, split_hash, GENESIS_HASH};
use super::error::AuditError;
use super::read::{LogSet, RawLine};
use std::path::{Path, PathBuf};

/// The first line that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    pub file: PathBuf,
    /// 1-based, within `file`.
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The files checked, in chain order.
    pub files: Vec<PathBuf>,
    /// Lines that verified before the first problem (all of them when ok).
    pub lines: u64,
    /// The hash of the last good line: record it elsewhere to detect a later
    /// truncation of the tail, which a hash chain alone cannot see.
    pub head: String,
    pub problem: Option<Tamper>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Recomputes the chain over `PATH.1 … PATH.N, PATH` from the bytes on disk,
/// starting at the genesis hash.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    verify_from(path, GENESIS_HASH)
}

/// Like `verify`, for a log whose older files were deleted: the first remaining
/// line must follow `anchor` (the head hash of the deleted part).
pub fn verify_from(path: &Path, anchor: &str) -> Result<VerifyReport, AuditError> {
    verify_set(LogSet::open(path)?, anchor)
}

/// Recomputes the chain over an opened log; its first line must follow `anchor`
/// ([`GENESIS_HASH`] for a complete log).
pub fn verify_set(set: LogSet, anchor: &str) -> Result<VerifyReport, AuditError> {
    let files = set.paths();
    let mut expected = anchor.to_string();
    let mut lines = 0u64;
    for raw in set.lines() {
        let raw = raw?;
        let first = lines == 0;
        match check_line(&raw, &expected, first) {
            Ok(hash) => {
                expected = hash;
                lines += 1;
            }
            Err(reason) => {
                let problem = Some(Tamper {
                    file: raw.file,
                    line: raw.line,
                    reason,
                });
                return Ok(VerifyReport {
                    files,
                    lines,
                    head: expected,
                    problem,
                });
            }
        }
    }
    Ok(VerifyReport {
        files,
        lines,
        head: expected,
        problem: None,
    })
}

/// Checks one line against the expected previous hash; returns its hash.
fn check_line(raw: &RawLine, expected_prev: &str, first: bool) -> Result<String, String> {
    if !raw.terminated {
        return Err("unfinished line (no newline): the log was cut here".into());
    }
    if raw.bytes.is_empty() {
        return Err("blank line".into());
    }
    let text = std::str::from_utf8(&raw.bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let (body, hash) =
        split_hash(text).ok_or("no trailing \"hash\" field: the line was cut or rewritten")?;
    let mut object = String::with_capacity(body.len() + 1);
    object.push_str(body);
    object.push('}');
    let value: serde_json::Value = serde_json::from_str(&object)
        .map_err(|_| "not a JSON object: the line was cut or edited".to_string())?;
    let prev = value
        .get("prev_hash")
        .and_then(|v| v.as_str())
        .ok_or("no \"prev_hash\" field")?;
    if prev != expected_prev {
        return Err(if first && expected_prev == GENESIS_HASH {
            "prev_hash is not the genesis hash: the start of the log is missing \
             (pass --anchor HASH if older files were deleted on purpose)"
                .into()
        } else if first {
            "prev_hash does not match the anchor".into()
        } else {
            "prev_hash does not match the previous line's hash: \
             a line was deleted, inserted or reordered before this one"
                .into()
        });
    }
    let recomputed = chain_hash(expected_prev, body);
    if recomputed != hash {
        return Err("hash does not match the line's contents: the line was edited".into());
    }
    Ok(recomputed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::encode::{HASH_FIELD_CLOSE, HASH_FIELD_OPEN};
    use crate::audit::testkit::{ev, log_with, rewrite_lines};
    use crate::audit::{rotated_files, AuditLog, Event};

    fn problem(path: &Path) -> Tamper {
        verify(path)
            .unwrap()
            .problem
            .expect("tamper should be detected")
    }

    #[test]
    fn clean_log_verifies_with_head_and_count() {
        let (_d, path) = log_with(5);
        let r = verify(&path).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 5);
        let last: Event = serde_json::from_str(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.head, last.hash);
    }

    #[test]
    fn empty_log_verifies_and_missing_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        assert!(matches!(verify(&path), Err(AuditError::Io { .. })));
        AuditLog::open_path(&path).unwrap();
        assert_eq!(verify(&path).unwrap().lines, 0);
    }

    #[test]
    fn edited_field_is_reported_at_its_line() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| l[2] = l[2].replace("agent-2", "agent-X"));
        let p = problem(&path);
        assert_eq!(p.line, 3);
        assert!(p.reason.contains("edited"), "{}", p.reason);
    }

    #[test]
    fn edited_line_with_recomputed_own_hash_breaks_the_next_line() {
        let (_d, path) = log_with(4);
        rewrite_lines(&path, |l| {
            let (body, _) = split_hash(&l[1]).unwrap();
            let body = body.replace("agent-1", "agent-X");
            let prev: Event = serde_json::from_str(&l[0]).unwrap();
            let h = chain_hash(&prev.hash, &body);
            l[1] = format!("{body}{HASH_FIELD_OPEN}{h}{HASH_FIELD_CLOSE}");
        });
        assert_eq!(problem(&path).line, 3);
    }

    #[test]
    fn deleted_line_is_reported_at_the_line_after_the_gap() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| {
            l.remove(1);
        });
        let p = problem(&path);
        assert_eq!(p.line, 2);
        assert!(p.reason.contains("deleted"), "{}", p.reason);
    }

    #[test]
    fn reordered_lines_are_reported() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| l.swap(2, 3));
        assert_eq!(problem(&path).line, 3);
    }

    #[test]
    fn inserted_copy_of_a_line_is_reported() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| {
            let dup = l[1].clone();
            l.insert(3, dup);
        });
        assert_eq!(problem(&path).line, 4);
    }

    #[test]
    fn line_cut_in_the_middle_is_reported() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| {
            let half = l[1].len() / 2;
            l[1].truncate(half);
        });
        let p = problem(&path);
        assert_eq!(p.line, 2);
        assert!(p.reason.contains("cut"), "{}", p.reason);
    }

    #[test]
    fn two_lines_spliced_together_are_reported() {
        let (_d, path) = log_with(5);
        rewrite_lines(&path, |l| {
            let head = l[1][..l[1].len() / 2].to_string();
            let tail = l[2][l[2].len() / 2..].to_string();
            l[1] = head + &tail;
            l.remove(2);
        });
        assert_eq!(problem(&path).line, 2);
    }

    #[test]
    fn unfinished_last_line_is_reported_and_refused_by_the_writer() {
        let (_d, path) = log_with(3);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.truncate(text.len() - 10);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(problem(&path).line, 3);
        assert!(matches!(
            AuditLog::open_path(&path),
            Err(AuditError::Corrupt { .. })
        ));
    }

    #[test]
    fn missing_start_needs_an_anchor() {
        let (_d, path) = log_with(5);
        let second: Event = serde_json::from_str(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .nth(1)
                .unwrap(),
        )
        .unwrap();
        rewrite_lines(&path, |l| {
            l.drain(..2);
        });
        let p = problem(&path);
        assert_eq!(p.line, 1);
        assert!(p.reason.contains("genesis"), "{}", p.reason);
        let r = verify_from(&path, &second.hash).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 3);
    }

    #[test]
    fn deleted_rotated_file_in_the_middle_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_rotating(&path, 600).unwrap();
        for i in 0..20 {
            log.record(ev("inject", "allowed", &format!("a{i}"), None))
                .unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        assert!(rotated.len() >= 3);
        std::fs::remove_file(&rotated[1].1).unwrap();
        let p = problem(&path);
        assert_eq!(p.file, rotated[2].1);
        assert_eq!(p.line, 1);
    }

    #[test]
    fn stdout_log_refuses_reads() {
        assert!(matches!(verify(Path::new("-")), Err(AuditError::Stdout)));
        assert!(AuditLog::open_path(Path::new("-")).is_ok());
    }
}
