//! Compaction: rewrites a log-structured vault file as one base (the state at a
//! version already on disk) plus the entries appended since that version, so the
//! file stays proportional to the live vault. The long part (serializing every
//! record) runs without the writer lock; the lock is held only to copy the few
//! entries appended meanwhile and to rename the new file into place.
//!
//! The new base carries the chain value of the version it was made at, and the
//! copied entries chain from it unchanged: the file's identity (what the
//! `.counter` file records) is the same before and after.

use super::log::{encode_base, State};
use super::write::{dir_of, persist, take_lock, temp_beside};
use super::FileStamp;
use crate::vault::error::{ferr, ioerr, VaultError};
use parking_lot::Mutex;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Compact when the entries exceed this fraction of the base (and `COMPACT_MIN_LOG_BYTES`).
pub(super) const COMPACT_LOG_RATIO: f64 = 0.5;
/// Below this many bytes of entries a log is never compacted (small vaults).
pub(super) const COMPACT_MIN_LOG_BYTES: u64 = 64 << 10;

/// How often [`Compactor::wait`] looks again.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Where the log of one file is: the file (as last seen), the end of its last
/// verified entry and the end of its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pos {
    pub(super) stamp: FileStamp,
    pub(super) len: u64,
    pub(super) base_len: u64,
}

impl Pos {
    /// Bytes of entries after the base.
    pub(super) fn log_bytes(&self) -> u64 {
        self.len.saturating_sub(self.base_len)
    }

    pub(super) fn wants_compaction(&self) -> bool {
        let log = self.log_bytes();
        log >= COMPACT_MIN_LOG_BYTES && log as f64 > COMPACT_LOG_RATIO * self.base_len as f64
    }
}

/// A compaction this process did: offsets in the old file map to the new one by
/// `delta` (the entries after the compaction point were copied verbatim).
#[derive(Debug, Clone, Copy)]
pub(super) struct Moved {
    pub(super) from: (u64, u64),
    pub(super) to: FileStamp,
    pub(super) delta: i64,
    pub(super) base_len: u64,
}

impl Moved {
    /// `pos` translated into the new file, if it is a position in the old one.
    pub(super) fn translate(&self, pos: Pos) -> Option<Pos> {
        if (pos.stamp.dev, pos.stamp.ino) != self.from {
            return None;
        }
        let len = u64::try_from(i64::try_from(pos.len).ok()? + self.delta).ok()?;
        Some(Pos {
            stamp: self.to,
            len,
            base_len: self.base_len,
        })
    }
}

/// What a compaction needs besides the state: the paths and where to report.
#[derive(Debug, Clone)]
pub(super) struct Compactor {
    pub(super) path: PathBuf,
    pub(super) lock_path: PathBuf,
    pub(super) moved: Arc<Mutex<Option<Moved>>>,
    pub(super) busy: Arc<AtomicBool>,
}

impl Compactor {
    /// Starts a background compaction of `state` (at `pos`) unless one is running.
    pub(super) fn spawn(&self, state: State, pos: Pos) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("vault-compact".into())
            .spawn(move || {
                if let Err(e) = me.run(&state, pos) {
                    tracing::warn!(error = %e, "vault compaction failed; the log keeps growing until the next try");
                }
                me.busy.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Waits until a background compaction (if any) has finished.
    pub(super) fn wait(&self) {
        while self.busy.load(Ordering::Acquire) {
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// Compacts now: `state` must be the state at `pos` (both from the writer).
    /// Returns false if the file was replaced by someone else meanwhile.
    pub(super) fn run(&self, state: &State, pos: Pos) -> Result<bool, VaultError> {
        let path = &self.path;
        let base = encode_base(state)?;
        let err = |e| ioerr(path, "cannot compact the vault", e);
        let mut tmp = temp_beside(path).map_err(err)?;
        tmp.write_all(&base).map_err(err)?;
        let lock = take_lock(&self.lock_path)?;
        let md = match fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(err(e)),
        };
        let now = FileStamp::of(&md);
        if (now.dev, now.ino) != (pos.stamp.dev, pos.stamp.ino) || now.len < pos.len {
            return Ok(false);
        }
        // The entries appended since `pos` (by writers that held the lock), without
        // a torn last line.
        let mut tail = Vec::new();
        let mut f = File::open(path).map_err(err)?;
        f.seek(SeekFrom::Start(pos.len)).map_err(err)?;
        f.take(now.len - pos.len)
            .read_to_end(&mut tail)
            .map_err(err)?;
        let keep = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tmp.write_all(&tail[..keep]).map_err(err)?;
        persist(tmp, path).map_err(err)?;
        let to = fs::metadata(path).map_err(err)?;
        let delta = base.len() as i64 - pos.len as i64;
        *self.moved.lock() = Some(Moved {
            from: (pos.stamp.dev, pos.stamp.ino),
            to: FileStamp::of(&to),
            delta,
            base_len: base.len() as u64,
        });
        drop(lock);
        if to.len() != base.len() as u64 + keep as u64 {
            return Err(ferr(
                dir_of(path),
                "the compacted vault has an unexpected size",
            ));
        }
        Ok(true)
    }
}
