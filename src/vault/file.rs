//! The file backend: one vault file (format in `format.rs`) beside its `.lock` and
//! `.counter` files. Opens and reloads it (rollback and deletion detection), and
//! writes every change as read-verify-modify-write under the process mutex and the
//! exclusive file lock, through an atomic rename. Implements [`Store`].

use super::change::{Applied, Change, Undo};
use super::crypto::{self, Key};
use super::error::{ferr, ioerr, VaultError};
use super::format::{self, Draft, MasterHeader, MAX_FILE_BYTES, SEAL_LIMIT_PER_KEY};
use super::master::{KdfParams, MasterKey};
use super::snapshot::Snapshot;
use super::store::Store;
use crate::config::VaultConfig;
use crate::secret::Secret;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MAX_COUNTER_FILE_BYTES: u64 = 256;
/// Temp files older than this, left by a killed writer, are removed by the next writer.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// How long a writer waits for the lock, and how often it retries.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// Reads of a file that keeps changing under a reader before giving up.
const LOAD_ATTEMPTS: u32 = 5;

/// Identity of the file at the path (symlinks followed): a Kubernetes `..data` swap
/// or an atomic rename changes the inode, an in-place edit changes len/mtime/ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
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
    /// Stamp of the file the current snapshot came from (`None`: no file).
    stamp: Option<FileStamp>,
    /// The highest counter seen (file, counter file or our own writes).
    seen: Option<Seen>,
    /// A stamp that failed to load and its error, so polling does not redo the work.
    failed: Option<(Option<FileStamp>, String)>,
}

pub struct Vault {
    path: PathBuf,
    lock_path: PathBuf,
    counter_path: PathBuf,
    master: RwLock<Arc<MasterKey>>,
    session: RwLock<Key>,
    current: ArcSwap<Snapshot>,
    watch: Mutex<WatchState>,
    /// Serializes writers inside this process (the file lock does it across processes).
    writer: Mutex<()>,
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

impl Vault {
    /// Opens (creating if absent: master key file 0600, empty vault) the vault `cfg` names.
    pub fn open(cfg: &VaultConfig) -> Result<Vault, VaultError> {
        Vault::open_with(cfg, MasterKey::from_env_or_file(cfg)?)
    }

    /// Opens with an explicit master key (tests, `vault rotate-master-key`).
    pub fn open_with(cfg: &VaultConfig, master: MasterKey) -> Result<Vault, VaultError> {
        let path = cfg.path.clone();
        let vault = Vault {
            lock_path: sibling(&path, ".lock"),
            counter_path: sibling(&path, ".counter"),
            session: RwLock::new(Key::random()),
            current: ArcSwap::from_pointee(Snapshot::empty(&path, 0)),
            watch: Mutex::new(WatchState {
                stamp: None,
                seen: None,
                failed: None,
            }),
            writer: Mutex::new(()),
            seal_limit: SEAL_LIMIT_PER_KEY,
            master: RwLock::new(Arc::new(master)),
            path,
        };
        let seen = vault.read_counter_file()?;
        vault.watch.lock().seen = seen;
        let kdf = match vault.load_current()? {
            Some((draft, stamp)) => {
                let snap = Snapshot::build(&draft.body, &draft.data_key, &vault.path, true)?;
                let mut w = vault.watch.lock();
                w.stamp = Some(stamp);
                drop(w);
                vault.current.store(Arc::new(snap));
                draft.body.master.kdf
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

    /// Re-reads the file if it changed on disk (its stamp differs). A stamp that
    /// failed before fails again without the work being redone.
    fn reload_if_changed(&self) -> Result<bool, VaultError> {
        let stamp = match fs::metadata(&self.path) {
            Ok(md) => Some(FileStamp::of(&md)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ioerr(&self.path, "cannot stat the vault", e)),
        };
        {
            let w = self.watch.lock();
            if w.stamp == stamp {
                return Ok(false);
            }
            if let Some((failed, msg)) = &w.failed {
                if *failed == stamp {
                    return Err(VaultError::File {
                        path: self.path.display().to_string(),
                        message: msg.clone(),
                    });
                }
            }
        }
        let res = self.reload_now();
        if let Err(e) = &res {
            let msg = match e {
                VaultError::File { message, .. } => message.clone(),
                other => other.to_string(),
            };
            self.watch.lock().failed = Some((stamp, msg));
        }
        res
    }

    fn reload_now(&self) -> Result<bool, VaultError> {
        match self.load_current()? {
            None => {
                // SECURITY: a vault that disappears is not an empty vault; keep serving
                // the last good snapshot rather than silently dropping every secret.
                if self.watch.lock().stamp.is_some() || self.check_missing_allowed().is_err() {
                    return Err(ferr(
                        &self.path,
                        "the vault file disappeared; keeping the last loaded version",
                    ));
                }
                Ok(false)
            }
            Some((draft, stamp)) => {
                let snap = Snapshot::build(&draft.body, &draft.data_key, &self.path, true)?;
                let mut w = self.watch.lock();
                w.stamp = Some(stamp);
                w.failed = None;
                drop(w);
                self.current.store(Arc::new(snap));
                Ok(true)
            }
        }
    }

    /// Re-wraps the data key under `new` (records are not touched) and switches this
    /// handle to it. Other processes need the new key to read the vault afterwards.
    pub fn rotate_master_key(&self, new: MasterKey) -> Result<String, VaultError> {
        let path = self.path.clone();
        let (id, session) = self.mutate(|d| {
            let (mk, kdf) = new.resolve(None, &path)?;
            let wrapped = crypto::wrap_data_key(&mk, &d.data_key)?;
            d.body.master = MasterHeader {
                key_id: hex::encode(mk.key_id()),
                kdf,
            };
            d.body.data_key = B64.encode(wrapped.encode());
            Ok((hex::encode(mk.key_id()), mk.derive(crypto::LABEL_SESSION)))
        })?;
        *self.master.write() = Arc::new(new);
        *self.session.write() = session;
        Ok(id)
    }

    // -- internals --------------------------------------------------------

    /// KDF parameters of the file on disk, if any (for resolving a passphrase).
    fn header_kdf(&self) -> Result<Option<KdfParams>, VaultError> {
        let Some((bytes, _)) = self.read_file()? else {
            return Ok(None);
        };
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
        if md.len() > MAX_FILE_BYTES {
            return Err(ferr(
                &self.path,
                format!("larger than {MAX_FILE_BYTES} bytes; not a keyward vault"),
            ));
        }
        let mut bytes = Vec::with_capacity(md.len() as usize);
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ioerr(&self.path, "cannot read the vault", e))?;
        Ok(Some((bytes, FileStamp::of(&md))))
    }

    /// Reads and verifies the file. A reader is not under the writer lock, so a writer
    /// may replace the file (and advance the counter file) between our read and our
    /// checks: if verification fails and the file changed meanwhile, read again.
    fn load_current(&self) -> Result<Option<(Draft, FileStamp)>, VaultError> {
        let mut attempt = 0;
        loop {
            let Some((bytes, stamp)) = self.read_file()? else {
                return Ok(None);
            };
            match self.verify(&bytes) {
                Ok(d) => return Ok(Some((d, stamp))),
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

    /// Parses, authenticates and rollback-checks file bytes.
    fn verify(&self, bytes: &[u8]) -> Result<Draft, VaultError> {
        let master = self.master.read().clone();
        let (mut draft, mac) = format::decode(bytes, &master, &self.path)?;
        self.check_not_rolled_back(draft.body.counter, &mac)?;
        draft.seal_limit = self.seal_limit;
        Ok(draft)
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

    /// Read-modify-write under the process mutex and the exclusive file lock.
    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Draft) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let _inproc = self.writer.lock();
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
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| ioerr(&self.lock_path, "cannot open the vault lock", e))?;
        lock_with_timeout(&lock, &self.lock_path)?;

        clean_stale_temps(&self.path);
        // Always re-read under the lock: another writer may have changed the file.
        let mut draft = match self.read_file()? {
            Some((bytes, _)) => self.verify(&bytes)?,
            None => {
                self.check_missing_allowed()?;
                let master = self.master.read().clone();
                Draft::fresh(&master, &self.path)?
            }
        };
        draft.seal_limit = self.seal_limit;
        let out = f(&mut draft)?;
        draft.body.counter = draft
            .body
            .counter
            .checked_add(1)
            .ok_or_else(|| VaultError::Invalid("vault counter exhausted".into()))?;
        let snap = Snapshot::build(&draft.body, &draft.data_key, &self.path, false)?;
        let (bytes, mac) = draft.encode()?;
        atomic_write(&self.path, &bytes)
            .map_err(|e| ioerr(&self.path, "cannot write the vault", e))?;
        let stamp = fs::metadata(&self.path).ok().map(|m| FileStamp::of(&m));
        {
            let mut w = self.watch.lock();
            w.stamp = stamp;
            w.failed = None;
            w.seen = Some(Seen {
                counter: draft.body.counter,
                mac: mac.clone(),
            });
        }
        self.write_counter_file(draft.body.counter, &mac);
        self.current.store(Arc::new(snap));
        drop(lock);
        Ok(out)
    }
}

/// a crash at any point leaves the old or the new file, never a mix.
fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(
        ".{}.",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("vault")
    );
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Takes the exclusive writer lock, waiting at most `LOCK_TIMEOUT`.
fn lock_with_timeout(lock: &File, path: &Path) -> Result<(), VaultError> {
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

/// Removes temp files a killed writer left behind (called under the writer lock).
fn clean_stale_temps(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(".{name}.");
    let counter_prefix = format!(".{name}.counter.");
    let Ok(entries) = fs::read_dir(dir) else {
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

impl Store for Vault {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn apply(&self, mut change: Change) -> Result<(Applied, Undo), VaultError> {
        change.check()?;
        let path = self.path.clone();
        self.mutate(|d| change.apply_to(d, &path))
    }

    fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        if undo.is_noop() {
            return Ok(());
        }
        self.mutate(|d| undo.apply_to(d))
    }

    fn reload(&self) -> Result<bool, VaultError> {
        self.reload_if_changed()
    }

    /// Derived with its own HKDF label from the master key.
    fn session_key(&self) -> Secret {
        Secret::new(self.session.read().expose().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::change::SetOptions;
    use crate::vault::format::{
        FileBody, FILE_FORMAT, FILE_FORMAT_V1, FILE_MAGIC, RECORD_ID_BYTES,
    };
    use crate::vault::kind::SecretKind;
    use crate::vault::snapshot::RecordMeta;

    /// `SetSecret` through the one entry point.
    fn set_kind(
        v: &Vault,
        scope: &str,
        name: &str,
        value: Secret,
        kind: Option<SecretKind>,
        options: SetOptions,
    ) -> Result<RecordMeta, VaultError> {
        let change = Change::SetSecret {
            scope: scope.into(),
            name: name.into(),
            value,
            kind,
            options,
        };
        v.apply(change).and_then(|(a, _)| a.into_meta())
    }

    fn set(
        v: &Vault,
        scope: &str,
        name: &str,
        value: Secret,
        options: SetOptions,
    ) -> Result<RecordMeta, VaultError> {
        set_kind(v, scope, name, value, None, options)
    }

    fn setup() -> (tempfile::TempDir, VaultConfig, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VaultConfig {
            path: dir.path().join("vault.kw"),
            master_key_file: dir.path().join("master.key"),
        };
        let v = Vault::open_with(
            &cfg,
            MasterKey::load_or_create_file(&cfg.master_key_file).unwrap(),
        )
        .unwrap();
        let hosts = SetOptions {
            hosts: vec!["api.a.com".into()],
            ..SetOptions::default()
        };
        set(
            &v,
            "platform",
            "A",
            Secret::from_str("value-of-a-123456"),
            hosts,
        )
        .unwrap();
        set(
            &v,
            "platform",
            "B",
            Secret::from_str("value-of-b-123456"),
            SetOptions::default(),
        )
        .unwrap();
        set(
            &v,
            "owner:acme",
            "A",
            Secret::from_str("value-acme-123456"),
            SetOptions::default(),
        )
        .unwrap();
        (dir, cfg, v)
    }

    /// Edits the body and re-signs it with the real data key (what an attacker who
    /// could forge the file MAC could do): only the per-record AAD stands in the way.
    fn forge(v: &Vault, edit: impl FnOnce(&mut FileBody)) {
        let (bytes, _) = v.read_file().unwrap().unwrap();
        let mut d = v.verify(&bytes).unwrap();
        edit(&mut d.body);
        d.body.counter += 1;
        let (bytes, _) = d.encode().unwrap();
        fs::write(&v.path, bytes).unwrap();
    }

    fn idx(body: &FileBody, scope: &str, name: &str) -> usize {
        body.records
            .iter()
            .position(|r| r.scope == scope && r.name == name)
            .unwrap()
    }

    #[test]
    fn swapped_moved_or_edited_records_fail_to_open() {
        type Edit = Box<dyn Fn(&mut FileBody)>;
        let cases: Vec<(&str, &str, &str, Edit)> = vec![
            (
                "sealed values swapped between names",
                "platform",
                "A",
                Box::new(|b| {
                    let (a, bb) = (idx(b, "platform", "A"), idx(b, "platform", "B"));
                    let tmp = b.records[a].sealed.clone();
                    b.records[a].sealed = b.records[bb].sealed.clone();
                    b.records[bb].sealed = tmp;
                }),
            ),
            (
                "record moved to another scope",
                "platform",
                "A",
                Box::new(|b| {
                    b.records
                        .retain(|r| !(r.scope == "platform" && r.name == "A"));
                    let acme = idx(b, "owner:acme", "A");
                    b.records[acme].scope = "platform".into();
                }),
            ),
            (
                "record renamed",
                "platform",
                "C",
                Box::new(|b| {
                    let i = idx(b, "platform", "B");
                    b.records[i].name = "C".into();
                }),
            ),
            (
                "host list edited",
                "platform",
                "A",
                Box::new(|b| {
                    let i = idx(b, "platform", "A");
                    b.records[i].hosts = vec!["evil.example".into()];
                }),
            ),
            (
                "host list removed",
                "platform",
                "A",
                Box::new(|b| {
                    let i = idx(b, "platform", "A");
                    b.records[i].hosts.clear();
                }),
            ),
            (
                "version edited",
                "platform",
                "B",
                Box::new(|b| {
                    let i = idx(b, "platform", "B");
                    b.records[i].version = 7;
                }),
            ),
            (
                "record id changed",
                "platform",
                "B",
                Box::new(|b| {
                    let i = idx(b, "platform", "B");
                    b.records[i].id = "00".repeat(RECORD_ID_BYTES);
                }),
            ),
        ];
        for (what, scope, name, edit) in cases {
            let (_dir, cfg, v) = setup();
            forge(&v, edit);
            let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
            let err = Vault::open_with(&cfg, key).expect_err(what).to_string();
            assert!(err.contains("fails authentication"), "{what}: {err}");
            // The on-demand path refuses it too (a snapshot built without the load check).
            let (bytes, _) = v.read_file().unwrap().unwrap();
            let d = v.verify(&bytes).unwrap();
            let snap = Snapshot::build(&d.body, &d.data_key, &v.path, false).unwrap();
            let err = snap.get(scope, name).expect_err(what).to_string();
            assert!(
                err.contains(&format!("record {scope}/{name} fails authentication")),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn a_forged_file_without_the_data_key_fails_the_mac() {
        let (_dir, cfg, v) = setup();
        let (bytes, _) = v.read_file().unwrap().unwrap();
        let mut d = v.verify(&bytes).unwrap();
        d.body.records.retain(|r| r.name != "B");
        d.body.counter += 1;
        d.data_key = Arc::new(Key::random());
        let (forged, _) = d.encode().unwrap();
        fs::write(&cfg.path, forged).unwrap();
        let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
        let err = Vault::open_with(&cfg, key).unwrap_err().to_string();
        assert!(err.contains("integrity check failed"), "{err}");
    }

    #[test]
    fn same_counter_with_different_content_is_refused() {
        let (_dir, _cfg, v) = setup();
        let (bytes, _) = v.read_file().unwrap().unwrap();
        let mut d = v.verify(&bytes).unwrap();
        d.body.records.retain(|r| r.name != "B");
        let (forged, _) = d.encode().unwrap();
        fs::write(&v.path, forged).unwrap();
        let err = v.reload().unwrap_err().to_string();
        assert!(err.contains("forked or replaced"), "{err}");
    }

    #[test]
    fn stale_temp_files_are_cleaned_under_the_lock() {
        let (dir, _cfg, v) = setup();
        let stale = dir.path().join(".vault.kw.abc123.tmp");
        let fresh = dir.path().join(".vault.kw.def456.tmp");
        let counter_tmp = dir.path().join(".vault.kw.counter.x.tmp");
        for p in [&stale, &fresh, &counter_tmp] {
            fs::write(p, b"partial").unwrap();
        }
        let old = std::time::SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(5);
        for p in [&stale, &counter_tmp] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        set(
            &v,
            "platform",
            "D",
            Secret::from_str("value-of-d-123456"),
            SetOptions::default(),
        )
        .unwrap();
        assert!(!stale.exists());
        assert!(
            fresh.exists(),
            "a young temp file may belong to a live writer"
        );
        assert!(
            counter_tmp.exists(),
            "counter temp files are written without the lock"
        );
    }

    fn oauth_value(url: &str) -> Secret {
        Secret::from_str(&format!(
            r#"{{"client_id":"cid","client_secret":"cs-123456789","token_url":"{url}"}}"#
        ))
    }

    #[test]
    fn kind_and_public_fields_are_bound_to_the_value() {
        type Edit = Box<dyn Fn(&mut FileBody)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "kind downgraded to api_key",
                Box::new(|b| {
                    let i = idx(b, "platform", "O");
                    b.records[i].kind = SecretKind::ApiKey;
                    b.records[i].public.clear();
                }),
            ),
            (
                "token_url pointed elsewhere",
                Box::new(|b| {
                    let i = idx(b, "platform", "O");
                    b.records[i]
                        .public
                        .insert("token_url".into(), "https://evil.example/t".into());
                }),
            ),
            (
                "api_key upgraded to hmac",
                Box::new(|b| {
                    let i = idx(b, "platform", "B");
                    b.records[i].kind = SecretKind::Hmac;
                }),
            ),
        ];
        for (what, edit) in cases {
            let (_dir, cfg, v) = setup();
            set_kind(
                &v,
                "platform",
                "O",
                oauth_value("https://auth.example/token"),
                Some(SecretKind::Oauth2),
                SetOptions::default(),
            )
            .unwrap();
            forge(&v, edit);
            let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
            let err = Vault::open_with(&cfg, key).expect_err(what).to_string();
            assert!(err.contains("fails authentication"), "{what}: {err}");
        }
    }

    #[test]
    fn format_1_is_kept_until_a_kind_is_used_and_read_back() {
        let (_dir, cfg, v) = setup();
        let head = |p: &Path| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} {FILE_FORMAT_V1}"));
        let text = fs::read_to_string(&cfg.path).unwrap();
        assert!(!text.contains("\"kind\""), "format-1 records carry no kind");
        let meta = set_kind(
            &v,
            "platform",
            "O",
            oauth_value("https://auth.example/token"),
            Some(SecretKind::Oauth2),
            SetOptions::default(),
        )
        .unwrap();
        assert_eq!(meta.kind, SecretKind::Oauth2);
        assert_eq!(meta.fields["client_id"], "cid");
        assert!(!format!("{meta:?}").contains("cs-123456789"));
        assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} {FILE_FORMAT}"));
        // a fresh open reads both old (api_key) and new records
        let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
        let again = Vault::open_with(&cfg, key).unwrap();
        let snap = again.snapshot();
        assert_eq!(
            snap.get("platform", "B").unwrap().unwrap().kind,
            SecretKind::ApiKey
        );
        let o = snap.get("platform", "O").unwrap().unwrap();
        assert_eq!(o.kind, SecretKind::Oauth2);
        // `set` without a kind keeps it; a bad value for the kind is refused
        set(
            &again,
            "platform",
            "O",
            oauth_value("https://auth.example/t2"),
            SetOptions::default(),
        )
        .unwrap();
        assert_eq!(
            again.snapshot().meta("platform", "O").unwrap().kind,
            SecretKind::Oauth2
        );
        assert!(set(
            &again,
            "platform",
            "O",
            Secret::from_str("plain"),
            SetOptions::default()
        )
        .is_err());
        let rotate = Change::RotateSecret {
            scope: "platform".into(),
            name: "O".into(),
            value: Secret::from_str("plain"),
        };
        assert!(again.apply(rotate).is_err());
    }
}
