//! Writing the vault file: a [`Batch`] of changes made on the touched records only
//! (turned into one log entry), the append with its `fsync`, the atomic replace
//! (temp file, `fsync`, rename, directory `fsync`), the writer lock and the
//! clean-up of temp files a killed writer left behind.

use super::log::{Entry, State};
use crate::vault::change::Touched;
use crate::vault::error::{ferr, ioerr, VaultError};
use crate::vault::format::{AgentRecord, Draft, FileBody, SealState, StoredRecord};
use crate::vault::snapshot::Edit;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// Temp files older than this, left by a killed writer, are removed by the next writer.
pub(super) const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// How long a writer waits for the lock, and how often it retries.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(10);

/// Changes being made on top of one verified [`State`]: each change sees a
/// [`Draft`] holding only the records and agents it touches (as left by the
/// changes before it in the batch), so a change costs O(log n), not O(n).
pub(super) struct Batch<'a> {
    state: &'a State,
    seal: SealState,
    seal_limit: u64,
    secrets: BTreeMap<(String, String), Option<StoredRecord>>,
    agents: BTreeMap<String, Option<AgentRecord>>,
}

impl<'a> Batch<'a> {
    pub(super) fn new(state: &'a State, seal_limit: u64) -> Batch<'a> {
        Batch {
            state,
            seal: state.seal.clone(),
            seal_limit,
            secrets: BTreeMap::new(),
            agents: BTreeMap::new(),
        }
    }

    fn secret(&self, key: &(String, String)) -> Option<StoredRecord> {
        match self.secrets.get(key) {
            Some(r) => r.clone(),
            None => self.state.snap.stored(&key.0, &key.1).cloned(),
        }
    }

    fn agent(&self, id: &str) -> Option<AgentRecord> {
        match self.agents.get(id) {
            Some(a) => a.clone(),
            None => self
                .state
                .snap
                .agents()
                .iter()
                .find(|a| a.id == id)
                .cloned(),
        }
    }

    /// Runs one change on a draft of what it touches and keeps the result.
    pub(super) fn run<T>(
        &mut self,
        (secrets, agents): Touched,
        f: impl FnOnce(&mut Draft) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut d = Draft {
            body: FileBody {
                counter: self.state.counter,
                master: self.state.master.clone(),
                data_key: self.state.wrapped.clone(),
                seal: self.seal.clone(),
                records: secrets.iter().filter_map(|k| self.secret(k)).collect(),
                agents: agents.iter().filter_map(|id| self.agent(id)).collect(),
            },
            data_key: self.state.data_key.clone(),
            seal_limit: self.seal_limit,
        };
        let out = f(&mut d)?;
        // SECURITY: a change that wrote outside what it declared would be lost
        // silently (or clobber a record it never read); refuse it instead.
        let stray_record = d
            .body
            .records
            .iter()
            .any(|r| !secrets.iter().any(|(s, n)| *s == r.scope && *n == r.name));
        let stray_agent = d.body.agents.iter().any(|a| !agents.contains(&a.id));
        if stray_record || stray_agent {
            return Err(VaultError::Invalid(
                "internal error: a change touched a record it did not declare".into(),
            ));
        }
        for key in secrets {
            let after = d.find(&key.0, &key.1).map(|i| d.body.records[i].clone());
            self.secrets.insert(key, after);
        }
        for id in agents {
            let after = d.body.agents.iter().find(|a| a.id == id).cloned();
            self.agents.insert(id, after);
        }
        self.seal = d.body.seal;
        Ok(out)
    }

    /// The log entry for version `counter`: what differs from the state.
    pub(super) fn finish(self, counter: u64) -> Entry {
        let mut edits = Vec::new();
        for ((scope, name), after) in self.secrets {
            let before = self.state.snap.stored(&scope, &name);
            match (before, after) {
                (Some(_), None) => edits.push(Edit::Remove { scope, name }),
                // A description-only change keeps id and sealed value: compare
                // the metadata too, or it would never reach the log.
                (b, Some(a))
                    if b.is_none_or(|b| {
                        b.id != a.id
                            || b.sealed != a.sealed
                            || b.description != a.description
                            || b.updated != a.updated
                    }) =>
                {
                    edits.push(Edit::Put(a))
                }
                _ => {}
            }
        }
        for (id, after) in self.agents {
            let before = self.state.snap.agents().iter().find(|a| a.id == id);
            match (before, after) {
                (Some(_), None) => edits.push(Edit::RemoveAgent { id }),
                (b, Some(a)) if b != Some(&a) => edits.push(Edit::PutAgent(a)),
                _ => {}
            }
        }
        Entry {
            counter,
            seal: self.seal,
            edits,
        }
    }
}

/// Appends `line` at `at` (cutting off a torn append after it) and syncs it to
/// disk. Returns the new end of the log.
pub(super) fn append(path: &Path, at: u64, line: &[u8]) -> Result<u64, VaultError> {
    let err = |e| ioerr(path, "cannot append to the vault", e);
    let file = fs::OpenOptions::new().write(true).open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len != at {
        // A torn append (a writer killed mid-write, never acknowledged) is dropped.
        file.set_len(at).map_err(err)?;
    }
    file.write_all_at(line, at).map_err(err)?;
    // SECURITY: the change is acknowledged only once it is on disk.
    file.sync_data().map_err(err)?;
    Ok(at + line.len() as u64)
}

pub(super) fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A temp file beside `path` (0600), named so that [`clean_stale_temps`] finds it.
pub(super) fn temp_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let prefix = format!(
        ".{}.",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("vault")
    );
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir_of(path))
}

/// Puts a synced temp file in place of `path` and syncs the directory.
pub(super) fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir_of(path))?.sync_all()
}

/// A crash at any point leaves the old or the new file, never a mix.
pub(super) fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    persist(tmp, path)
}

/// Takes the exclusive writer lock, waiting at most `LOCK_TIMEOUT`.
pub(super) fn lock_with_timeout(lock: &File, path: &Path) -> Result<(), VaultError> {
    let deadline = std::time::Instant::now() + LOCK_TIMEOUT;
    loop {
        match fs4::fs_std::FileExt::try_lock_exclusive(lock) {
            Ok(true) => return Ok(()),
            Ok(false) if std::time::Instant::now() < deadline => std::thread::sleep(LOCK_POLL),
            Ok(false) => {
                return Err(ferr(
                    path,
                    format!(
                        "another writer has held the vault lock for {}s",
                        LOCK_TIMEOUT.as_secs()
                    ),
                ))
            }
            Err(e) => return Err(ioerr(path, "cannot lock the vault", e)),
        }
    }
}

/// Opens (creating it 0600) and takes the writer lock file.
pub(super) fn take_lock(lock_path: &Path) -> Result<File, VaultError> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock_path)
        .map_err(|e| ioerr(lock_path, "cannot open the vault lock", e))?;
    lock_with_timeout(&lock, lock_path)?;
    Ok(lock)
}

/// Removes temp files a killed writer left behind (called under the writer lock).
pub(super) fn clean_stale_temps(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let counter_prefix = format!(".{name}.counter.");
    let Ok(entries) = fs::read_dir(dir_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(n) = file_name.to_str() else {
            continue;
        };
        if !n.starts_with(&prefix) || n.starts_with(&counter_prefix) || !n.ends_with(".tmp") {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_TEMP_AGE);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}
