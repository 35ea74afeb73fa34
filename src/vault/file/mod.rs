//! The file backend: one vault file beside its `.lock` and `.counter` files.
//! Opens and reloads it (rollback and deletion detection; a reload of another
//! process's appends reads only the new entries), and writes every change as one
//! appended, MAC-chained entry under the process mutex and the exclusive file
//! lock (`log.rs` the format 3 log, `write.rs` batches and the file writes,
//! `compact.rs` the background rewrite). Formats 1 and 2 (one whole file) are
//! read, and replaced by format 3 on the first write. Implements [`Store`].

mod compact;
mod log;
#[cfg(test)]
mod tests;
mod write;

use self::compact::{Compactor, Moved, Pos};
use self::log::{State, MAX_LOG_FILE_BYTES};
pub use self::write::LOCK_TIMEOUT;
use self::write::{append, atomic_write, clean_stale_temps, take_lock, Batch};
use super::change::{Applied, Change, Undo};
use super::crypto::{self, Key};
use super::error::{ferr, ioerr, VaultError};
use super::format::{self, Draft, FileBody, MasterHeader, MAX_FILE_BYTES, SEAL_LIMIT_PER_KEY};
use super::master::{KdfParams, MasterKey};
use super::snapshot::Snapshot;
use super::store::Store;
use crate::config::VaultConfig;
use crate::secret::Secret;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const MAX_COUNTER_FILE_BYTES: u64 = 256;
/// Reads of a file that keeps changing under a reader before giving up.
const LOAD_ATTEMPTS: u32 = 5;

/// Identity of the file at the path (symlinks followed): a Kubernetes `..data` swap
/// or an atomic rename changes the inode, an in-place edit changes len/mtime/ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(md: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// The last file version this process (or the counter file) has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    counter: u64,
    mac: String,
}

struct WatchState {
    /// The highest counter seen (file, counter file or our own writes).
    seen: Option<Seen>,
    /// A stamp that failed to load and its error, so polling does not redo the work.
    failed: Option<(Option<FileStamp>, String)>,
}

/// Where the current state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// No file.
    Nothing,
    /// A format-1/2 file (replaced by a format-3 file on the next write).
    Whole(FileStamp),
    /// A format-3 file, verified up to `Pos::len`.
    Log(Pos),
}

impl At {
    fn stamp(&self) -> Option<FileStamp> {
        match self {
            At::Nothing => None,
            At::Whole(s) => Some(*s),
            At::Log(p) => Some(p.stamp),
        }
    }
}

/// The verified state and where in the file it ends. Its mutex serializes the
/// writers (and reloads) of this process; the file lock does it across processes.
struct Head {
    state: Option<State>,
    at: At,
}

/// The sealed contents of a vault file of any format (a log is replayed onto
/// its base), authenticated under `master`, for copying into another store
/// (`keyward store import`). No rollback check: the file is not this vault's.
pub(super) fn read_any(
    bytes: &[u8],
    master: &MasterKey,
    path: &Path,
) -> Result<(FileBody, Arc<Key>), VaultError> {
    if log::is_log(bytes) {
        let (base, base_len) = log::decode_base(bytes, master, path, true)?;
        let tail = log::apply_entries(base, &bytes[base_len..], base_len as u64, path, true)?;
        let key = tail.state.data_key.clone();
        Ok((tail.state.body(), key))
    } else {
        let (draft, _) = format::decode(bytes, master, path)?;
        Ok((draft.body, draft.data_key))
    }
}

pub struct Vault {
    path: PathBuf,
    lock_path: PathBuf,
    counter_path: PathBuf,
    master: RwLock<Arc<MasterKey>>,
    session: RwLock<Key>,
    current: ArcSwap<Snapshot>,
    watch: Mutex<WatchState>,
    head: Mutex<Head>,
    compactor: Compactor,
    seal_limit: u64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn stat(path: &Path) -> Result<Option<FileStamp>, VaultError> {
    match fs::metadata(path) {
        Ok(md) => Ok(Some(FileStamp::of(&md))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ioerr(path, "cannot stat the vault", e)),
    }
}

impl Vault {
    /// Opens (creating if absent: master key file 0600, empty vault) the vault `cfg` names.
    pub fn open(cfg: &VaultConfig) -> Result<Vault, VaultError> {
        Vault::open_with(cfg, MasterKey::from_env_or_file(cfg)?)
    }

    /// Opens with an explicit master key (tests, `vault rotate-master-key`).
    pub fn open_with(cfg: &VaultConfig, master: MasterKey) -> Result<Vault, VaultError> {
        let path = cfg.path.clone();
        let lock_path = sibling(&path, ".lock");
        let vault = Vault {
            counter_path: sibling(&path, ".counter"),
            session: RwLock::new(Key::random()),
            current: ArcSwap::from_pointee(Snapshot::empty(&path, 0)),
            watch: Mutex::new(WatchState {
                seen: None,
                failed: None,
            }),
            head: Mutex::new(Head {
                state: None,
                at: At::Nothing,
            }),
            compactor: Compactor {
                path: path.clone(),
                lock_path: lock_path.clone(),
                moved: Arc::new(Mutex::new(None)),
                busy: Arc::new(AtomicBool::new(false)),
            },
            seal_limit: SEAL_LIMIT_PER_KEY,
            master: RwLock::new(Arc::new(master)),
            lock_path,
            path,
        };
        let seen = vault.read_counter_file()?;
        vault.watch.lock().seen = seen;
        let kdf = match vault.load_current()? {
            Some((state, at)) => {
                let kdf = state.master.kdf.clone();
                vault.current.store(state.snap.clone());
                *vault.head.lock() = Head {
                    state: Some(state),
                    at,
                };
                kdf
            }
            None => {
                vault.check_missing_allowed()?;
                let generation = vault.watch.lock().seen.as_ref().map_or(0, |s| s.counter);
                vault
                    .current
                    .store(Arc::new(Snapshot::empty(&vault.path, generation)));
                None
            }
        };
        let master = vault.master.read().clone();
        let (mk, _) = master.resolve(kdf.as_ref(), &vault.path)?;
        *vault.session.write() = mk.derive(crypto::LABEL_SESSION);
        Ok(vault)
    }

    /// Test hook: a lower per-key encryption limit, to exercise epoch rotation.
    #[doc(hidden)]
    pub fn with_seal_limit(mut self, limit: u64) -> Vault {
        self.seal_limit = limit.max(1);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex id of the master key in use (one-way; safe to print).
    pub fn master_key_id(&self) -> Result<String, VaultError> {
        let kdf = self.header_kdf()?;
        let master = self.master.read().clone();
        let (mk, _) = master.resolve(kdf.as_ref(), &self.path)?;
        Ok(hex::encode(mk.key_id()))
    }

    /// Rewrites the file as one base now (what the background compaction does when
    /// the log outgrows `COMPACT_LOG_RATIO` of the base). Tests and `secret import`.
    pub fn compact_now(&self) -> Result<(), VaultError> {
        let mut head = self.head.lock();
        let lock = take_lock(&self.lock_path)?;
        self.catch_up(&mut head)?;
        drop(lock);
        if let (Some(state), At::Log(pos)) = (&head.state, head.at) {
            let state = state.clone();
            drop(head);
            self.compactor.run(&state, pos)?;
            let mut head = self.head.lock();
            self.catch_up(&mut head)?;
        }
        Ok(())
    }

    /// Waits for a background compaction this handle started (a short-lived
    /// process, such as `secret import`, calls it before exiting so that the
    /// next open reads one compact base).
    pub fn wait_for_compaction(&self) {
        self.compactor.wait();
    }

    /// Bytes of log entries after the base (0 for a whole-file vault).
    #[doc(hidden)]
    pub fn log_bytes(&self) -> u64 {
        match self.head.lock().at {
            At::Log(pos) => pos.log_bytes(),
            _ => 0,
        }
    }

    /// Makes every change in `changes` as one write (one entry, one `fsync`): all
    /// of them or, if one fails, none.
    pub fn apply_all(&self, changes: Vec<Change>) -> Result<Vec<(Applied, Undo)>, VaultError> {
        let mut checked = Vec::with_capacity(changes.len());
        for (i, mut c) in changes.into_iter().enumerate() {
            c.check().map_err(|e| in_batch(i, e))?;
            checked.push(c);
        }
        let path = self.path.clone();
        self.write(|b| {
            let mut out = Vec::with_capacity(checked.len());
            for (i, c) in checked.into_iter().enumerate() {
                let touched = c.touches();
                out.push(
                    b.run(touched, |d| c.apply_to(d, &path))
                        .map_err(|e| in_batch(i, e))?,
                );
            }
            Ok(out)
        })
    }

    /// Takes back several changes (in reverse order) as one write; like
    /// [`Store::undo`], refused if one of them changed again since.
    pub fn undo_all(&self, undos: Vec<Undo>) -> Result<(), VaultError> {
        self.write(|b| {
            for u in undos.into_iter().rev().filter(|u| !u.is_noop()) {
                let touched = u.touches();
                b.run(touched, |d| u.apply_to(d))?;
            }
            Ok(())
        })
    }

    /// Picks up the file's changes if its stamp differs from what the state came
    /// from. A stamp that failed before fails again without the work being redone.
    fn reload_if_changed(&self) -> Result<bool, VaultError> {
        let stamp = stat(&self.path)?;
        let mut head = self.head.lock();
        if head.at.stamp() == stamp {
            return Ok(false);
        }
        if let Some((failed, msg)) = &self.watch.lock().failed {
            if *failed == stamp {
                return Err(VaultError::File {
                    path: self.path.display().to_string(),
                    message: msg.clone(),
                });
            }
        }
        let res = self.catch_up(&mut head);
        match &res {
            Ok(_) => self.watch.lock().failed = None,
            Err(e) => {
                let msg = match e {
                    VaultError::File { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                self.watch.lock().failed = Some((stamp, msg));
            }
        }
        res
    }

    /// Brings `head` up to the file: nothing if it is unchanged, only the new
    /// entries if it grew (another process appended), a full load otherwise.
    /// Returns true if the state changed.
    fn catch_up(&self, head: &mut Head) -> Result<bool, VaultError> {
        let Some(stamp) = stat(&self.path)? else {
            // SECURITY: a vault that disappears is not an empty vault; keep serving
            // the last good snapshot rather than silently dropping every secret.
            if head.at != At::Nothing || self.check_missing_allowed().is_err() {
                return Err(ferr(
                    &self.path,
                    "the vault file disappeared; keeping the last loaded version",
                ));
            }
            return Ok(false);
        };
        if head.at.stamp() == Some(stamp) {
            return Ok(false);
        }
        if let At::Log(pos) = head.at {
            let moved: Option<Moved> = self.compactor.moved.lock().take();
            if let Some(to) = moved.and_then(|m| m.translate(pos)) {
                head.at = At::Log(to);
            }
        }
        if let (At::Log(pos), Some(state)) = (head.at, &head.state) {
            if head.at.stamp() == Some(stamp) {
                return Ok(false);
            }
            let same_file = (pos.stamp.dev, pos.stamp.ino) == (stamp.dev, stamp.ino);
            // Only a file that grew is read from where we stopped (appends); an
            // in-place edit (same or smaller size) is verified in full.
            if same_file && stamp.len > pos.len && stamp.len <= MAX_LOG_FILE_BYTES {
                if let Ok(Some((next, used))) = self.read_tail(state, pos, stamp) {
                    let changed = next.counter != state.counter;
                    self.current.store(next.snap.clone());
                    head.state = Some(next);
                    head.at = At::Log(Pos {
                        stamp,
                        len: pos.len + used,
                        base_len: pos.base_len,
                    });
                    return Ok(changed);
                }
                // Anything odd in the tail: a full load tells exactly what is wrong.
            }
        }
        match self.load_current()? {
            None => Err(ferr(
                &self.path,
                "the vault file disappeared while reading it",
            )),
            Some((state, at)) => {
                self.current.store(state.snap.clone());
                head.state = Some(state);
                head.at = at;
                Ok(true)
            }
        }
    }

    /// Reads and verifies the entries after `pos` (up to `stamp.len`), with the
    /// rollback check. `None`/error: the caller does a full load instead.
    fn read_tail(
        &self,
        state: &State,
        pos: Pos,
        stamp: FileStamp,
    ) -> Result<Option<(State, u64)>, VaultError> {
        let err = |e| ioerr(&self.path, "cannot read the vault", e);
        let mut f = File::open(&self.path).map_err(err)?;
        let md = f.metadata().map_err(err)?;
        if (md.dev(), md.ino()) != (stamp.dev, stamp.ino) {
            return Ok(None);
        }
        f.seek(SeekFrom::Start(pos.len)).map_err(err)?;
        let mut bytes = Vec::new();
        f.take(stamp.len - pos.len)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        let tail = log::apply_entries(state.clone(), &bytes, pos.len, &self.path, true)?;
        if tail.entries > 0 {
            self.check_not_rolled_back(tail.state.counter, &tail.state.chain)?;
        }
        Ok(Some((tail.state, tail.used as u64)))
    }

    /// Re-wraps the data key under `new` (records are not touched) and switches this
    /// handle to it. Other processes need the new key to read the vault afterwards.
    pub fn rotate_master_key(&self, new: MasterKey) -> Result<String, VaultError> {
        let (mk, kdf) = new.resolve(None, &self.path)?;
        let id = hex::encode(mk.key_id());
        let mut head = self.lock_for_write()?;
        let lock = take_lock(&self.lock_path)?;
        clean_stale_temps(&self.path);
        self.catch_up(&mut head)?;
        let state = self.state_or_fresh(&head)?;
        let wrapped = crypto::wrap_data_key(&mk, &state.data_key)?;
        let counter = next_counter(state.counter)?;
        let next = State {
            master: MasterHeader {
                key_id: id.clone(),
                kdf,
            },
            wrapped: B64.encode(wrapped.encode()),
            counter,
            chain: state.rewrite_chain(counter),
            snap: Arc::new(
                state
                    .snap
                    .edited(Vec::new(), &state.data_key, counter, false)?,
            ),
            ..state
        };
        let bytes = log::encode_base(&next)?;
        atomic_write(&self.path, &bytes)
            .map_err(|e| ioerr(&self.path, "cannot write the vault", e))?;
        let len = bytes.len() as u64;
        self.wrote(&mut head, next, len, Some(len))?;
        drop(lock);
        *self.master.write() = Arc::new(new);
        *self.session.write() = mk.derive(crypto::LABEL_SESSION);
        Ok(id)
    }

    // -- internals --------------------------------------------------------

    /// KDF parameters of the file on disk, if any (for resolving a passphrase).
    fn header_kdf(&self) -> Result<Option<KdfParams>, VaultError> {
        let Some((bytes, _)) = self.read_file()? else {
            return Ok(None);
        };
        if log::is_log(&bytes) {
            return log::header_kdf(&bytes, &self.path);
        }
        format::header_kdf(&bytes, &self.path)
    }

    /// Reads the file (if any) and the stamp of exactly what was read.
    fn read_file(&self) -> Result<Option<(Vec<u8>, FileStamp)>, VaultError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ioerr(&self.path, "cannot read the vault", e)),
        };
        let md = file
            .metadata()
            .map_err(|e| ioerr(&self.path, "cannot read the vault", e))?;
        if !md.is_file() {
            return Err(ferr(&self.path, "not a regular file"));
        }
        // SECURITY: the file is parsed before it is authenticated; bound what we read.
        if md.len() > MAX_LOG_FILE_BYTES {
            return Err(ferr(
                &self.path,
                format!("larger than {MAX_LOG_FILE_BYTES} bytes; not a keyward vault"),
            ));
        }
        let mut bytes = Vec::with_capacity(md.len() as usize);
        file.take(MAX_LOG_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ioerr(&self.path, "cannot read the vault", e))?;
        if !log::is_log(&bytes) && bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ferr(
                &self.path,
                format!("larger than {MAX_FILE_BYTES} bytes; not a keyward vault"),
            ));
        }
        Ok(Some((bytes, FileStamp::of(&md))))
    }

    /// Reads and verifies the file. A reader is not under the writer lock, so a writer
    /// may replace the file (and advance the counter file) between our read and our
    /// checks: if verification fails and the file changed meanwhile, read again.
    fn load_current(&self) -> Result<Option<(State, At)>, VaultError> {
        let mut attempt = 0;
        loop {
            let Some((bytes, stamp)) = self.read_file()? else {
                return Ok(None);
            };
            match self.verify(&bytes, stamp) {
                Ok(d) => return Ok(Some(d)),
                Err(e) => {
                    attempt += 1;
                    let now = fs::metadata(&self.path).ok().map(|m| FileStamp::of(&m));
                    if attempt >= LOAD_ATTEMPTS || now == Some(stamp) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Parses, authenticates and rollback-checks file bytes (any format).
    fn verify(&self, bytes: &[u8], stamp: FileStamp) -> Result<(State, At), VaultError> {
        let master = self.master.read().clone();
        let (state, at) = if log::is_log(bytes) {
            let (base, base_len) = log::decode_base(bytes, &master, &self.path, true)?;
            let tail =
                log::apply_entries(base, &bytes[base_len..], base_len as u64, &self.path, true)?;
            if tail.torn > 0 {
                tracing::info!(
                    bytes = tail.torn,
                    "the vault ends in a torn append (a writer was killed before acknowledging it); ignoring it"
                );
            }
            let pos = Pos {
                stamp,
                len: (base_len + tail.used) as u64,
                base_len: base_len as u64,
            };
            (tail.state, At::Log(pos))
        } else {
            let (draft, mac) = format::decode(bytes, &master, &self.path)?;
            let state = State::of_body(draft.body, draft.data_key, mac, &self.path, true)?;
            (state, At::Whole(stamp))
        };
        self.check_not_rolled_back(state.counter, &state.chain)?;
        Ok((state, at))
    }

    /// Refuses a file older than one already seen; records the new high-water mark.
    fn check_not_rolled_back(&self, counter: u64, mac: &str) -> Result<(), VaultError> {
        let on_disk = self.read_counter_file()?;
        let mut w = self.watch.lock();
        let seen = match (w.seen.clone(), on_disk) {
            (Some(a), Some(b)) => Some(if b.counter > a.counter { b } else { a }),
            (a, b) => a.or(b),
        };
        if let Some(s) = &seen {
            // SECURITY: a valid but older file (restored backup, replayed copy) would
            // resurrect revoked or rotated secrets; the counter only moves forward.
            if counter < s.counter {
                return Err(ferr(
                    &self.path,
                    format!(
                        "rollback detected: file version {counter} is older than version {} already seen (see {})",
                        s.counter,
                        self.counter_path.display()
                    ),
                ));
            }
            if counter == s.counter && !s.mac.is_empty() && s.mac != mac {
                return Err(ferr(
                    &self.path,
                    format!("file version {counter} differs from the version {counter} already seen (forked or replaced)"),
                ));
            }
        }
        let newer = seen.as_ref().is_none_or(|s| counter > s.counter);
        w.seen = Some(Seen {
            counter,
            mac: mac.to_string(),
        });
        drop(w);
        if newer {
            self.write_counter_file(counter, mac);
        }
        Ok(())
    }

    /// A missing vault file is an empty vault, unless a version was already seen.
    fn check_missing_allowed(&self) -> Result<(), VaultError> {
        let seen = self.watch.lock().seen.clone();
        match seen {
            // SECURITY: deleting the file must not silently reset the vault to empty.
            Some(s) if s.counter > 0 => Err(ferr(
                &self.path,
                format!(
                    "vault file is missing but version {} was seen; restore it, or delete {} to start over deliberately",
                    s.counter,
                    self.counter_path.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn read_counter_file(&self) -> Result<Option<Seen>, VaultError> {
        let p = &self.counter_path;
        let file = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ioerr(p, "cannot read the vault counter file", e)),
        };
        let mut text = String::new();
        file.take(MAX_COUNTER_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| ioerr(p, "cannot read the vault counter file", e))?;
        let mut parts = text.split_whitespace();
        let counter = parts.next().and_then(|c| c.parse::<u64>().ok());
        let mac = parts.next().unwrap_or("").to_string();
        match counter {
            Some(counter) => Ok(Some(Seen { counter, mac })),
            None => Err(ferr(
                p,
                "corrupt vault counter file (expected `<counter> <mac>`)",
            )),
        }
    }

    /// Best effort: a read-only replica cannot write it and keeps the counter in memory.
    fn write_counter_file(&self, counter: u64, mac: &str) {
        let text = format!("{counter} {mac}\n");
        if let Err(e) = atomic_write(&self.counter_path, text.as_bytes()) {
            tracing::debug!(error = %e, "cannot update the vault counter file; keeping the counter in memory");
        }
    }

    /// The process mutex, after refusing a symlinked vault and creating its directory.
    fn lock_for_write(&self) -> Result<parking_lot::MutexGuard<'_, Head>, VaultError> {
        let head = self.head.lock();
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            // SECURITY: a symlinked vault is a mounted Secret (read-only replica);
            // replacing the link with a file would silently fork it from its source.
            if md.file_type().is_symlink() {
                return Err(ferr(
                    &self.path,
                    "is a symlink (a mounted Secret?); write the source vault instead",
                ));
            }
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| ioerr(dir, "cannot create the vault directory", e))?;
        }
        Ok(head)
    }

    /// One write: under the process mutex and the file lock, brings the state up
    /// to the file, runs `f` on a [`Batch`] over it and appends the result as one
    /// entry (on a format-1/2 file or none: writes a format-3 file).
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Batch) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut head = self.lock_for_write()?;
        let lock = take_lock(&self.lock_path)?;
        clean_stale_temps(&self.path);
        // Always catch up under the lock: another writer may have changed the file.
        self.catch_up(&mut head)?;
        let state = self.state_or_fresh(&head)?;
        let mut batch = Batch::new(&state, self.seal_limit);
        let out = f(&mut batch)?;
        let entry = batch.finish(next_counter(state.counter)?);
        let (line, chain) = log::encode_entry(&entry, &state.data_key, &state.chain)?;
        let next = state.apply(entry, chain, &self.path, false)?;
        let (len, base_len) = match head.at {
            At::Log(pos) => (append(&self.path, pos.len, &line)?, None),
            At::Nothing | At::Whole(_) => {
                let mut bytes = log::encode_base(&state)?;
                let base_len = bytes.len() as u64;
                bytes.extend_from_slice(&line);
                atomic_write(&self.path, &bytes)
                    .map_err(|e| ioerr(&self.path, "cannot write the vault", e))?;
                (bytes.len() as u64, Some(base_len))
            }
        };
        self.wrote(&mut head, next, len, base_len)?;
        drop(lock);
        if let (At::Log(pos), Some(state)) = (head.at, &head.state) {
            if pos.wants_compaction() {
                self.compactor.spawn(state.clone(), pos);
            }
        }
        Ok(out)
    }

    /// The current state, or a fresh empty vault (version 0) if there is no file.
    fn state_or_fresh(&self, head: &Head) -> Result<State, VaultError> {
        if let Some(s) = &head.state {
            return Ok(s.clone());
        }
        self.check_missing_allowed()?;
        let master = self.master.read().clone();
        let fresh = Draft::fresh(&master, &self.path)?;
        Ok(State::genesis(fresh.body, fresh.data_key, &self.path))
    }

    /// Records a write of ours: the new state, where the file now ends, the
    /// counter (in memory and in the counter file) and the snapshot readers get.
    fn wrote(
        &self,
        head: &mut Head,
        next: State,
        len: u64,
        new_base: Option<u64>,
    ) -> Result<(), VaultError> {
        let md =
            fs::metadata(&self.path).map_err(|e| ioerr(&self.path, "cannot stat the vault", e))?;
        let base_len = match (new_base, head.at) {
            (Some(b), _) => b,
            (None, At::Log(pos)) => pos.base_len,
            (None, _) => 0,
        };
        head.at = At::Log(Pos {
            stamp: FileStamp::of(&md),
            len,
            base_len,
        });
        {
            let mut w = self.watch.lock();
            w.failed = None;
            w.seen = Some(Seen {
                counter: next.counter,
                mac: next.chain.clone(),
            });
        }
        self.write_counter_file(next.counter, &next.chain);
        self.current.store(next.snap.clone());
        head.state = Some(next);
        Ok(())
    }

    /// The whole current vault as a draft (tests: forge format-1/2 files).
    #[cfg(test)]
    fn draft(&self) -> Draft {
        let head = self.head.lock();
        let Some(state) = head.state.as_ref() else {
            panic!("no vault yet");
        };
        Draft {
            body: state.body(),
            data_key: state.data_key.clone(),
            seal_limit: self.seal_limit,
        }
    }
}

fn next_counter(counter: u64) -> Result<u64, VaultError> {
    counter
        .checked_add(1)
        .ok_or_else(|| VaultError::Invalid("vault counter exhausted".into()))
}

/// Names the change of a batch an error came from (1-based).
fn in_batch(i: usize, e: VaultError) -> VaultError {
    VaultError::Invalid(format!("change {}: {e}", i + 1))
}

impl Store for Vault {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn apply(&self, mut change: Change) -> Result<(Applied, Undo), VaultError> {
        change.check()?;
        let path = self.path.clone();
        let touched = change.touches();
        self.write(|b| b.run(touched, |d| change.apply_to(d, &path)))
    }

    fn apply_batch(&self, changes: Vec<Change>) -> Result<Vec<(Applied, Undo)>, VaultError> {
        self.apply_all(changes)
    }

    fn undo_all(&self, undos: Vec<Undo>) -> Result<(), VaultError> {
        Vault::undo_all(self, undos)
    }

    fn settle(&self) {
        self.wait_for_compaction();
    }

    fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        if undo.is_noop() {
            return Ok(());
        }
        let touched = undo.touches();
        self.write(|b| b.run(touched, |d| undo.apply_to(d)))
    }

    fn reload(&self) -> Result<bool, VaultError> {
        self.reload_if_changed()
    }

    /// Derived with its own HKDF label from the master key.
    fn session_key(&self) -> Secret {
        Secret::new(self.session.read().expose().to_vec())
    }
}
