//! The names and the lock of a log's file set: `PATH`, the rotated `PATH.N`,
//! the advisory lock `PATH.lock`, `-` for stdout, and the identity of an open
//! file (to notice that `PATH` now names another one).

use super::error::{io_err, AuditError};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The advisory lock file next to the log: `PATH.lock`.
const LOCK_SUFFIX: &str = ".lock";
/// The path that means "write to stdout".
pub(super) const STDOUT_PATH: &str = "-";

/// Identity of an open file, to notice that `PATH` now names another file
/// (rotated or replaced by another process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId(u64, u64);

#[cfg(unix)]
pub(super) fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some(FileId(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
pub(super) fn file_id(_meta: &std::fs::Metadata) -> Option<FileId> {
    None
}

/// Holds an advisory lock until dropped.
pub(super) struct LockGuard<'a>(&'a File);

impl<'a> LockGuard<'a> {
    pub(super) fn exclusive(f: &'a File) -> io::Result<LockGuard<'a>> {
        f.lock()?;
        Ok(LockGuard(f))
    }
    pub(super) fn shared(f: &'a File) -> io::Result<LockGuard<'a>> {
        f.lock_shared()?;
        Ok(LockGuard(f))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // Closing the lock file would release it too; an unlock error leaves
        // nothing to clean up.
        let _ = self.0.unlock();
    }
}

/// `PATH.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(LOCK_SUFFIX);
    PathBuf::from(s)
}

/// `PATH.N`.
pub fn rotated_path(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The rotated files of `path`, oldest first: `(N, PATH.N)`.
pub fn rotated_files(path: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = rest.parse::<u64>() {
            out.push((n, rotated_path(path, n)));
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}
