//! The append-only writer, [`AuditLog`]: chains each event off the head of the
//! log, writes whole lines under `PATH.lock`, rotates a full file, and, on the
//! request path, writes the lines of concurrent requests in one group
//! ([`AuditLog::commit`]), keeping `PATH.lock` across back-to-back group
//! commits (see [`LOCK_HOLD_MAX`]).

use super::encode::{render, GENESIS_HASH};
use super::error::{corrupt, io_err, AuditError};
use super::event::Event;
use super::files::{
    file_id, lock_path, rotated_files, rotated_path, FileId, LockGuard, STDOUT_PATH,
};
use super::read::chain_head;
use crate::clock::now_rfc3339;
use crate::config::AuditConfig;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Room reserved per line of a batch: a typical request line is 300–400 bytes.
const LINE_BYTES_HINT: usize = 512;
/// The batch buffer is kept for the next batch up to this capacity.
const KEPT_BUFFER_BYTES: usize = 256 * 1024;
/// The request path's writer keeps `PATH.lock` across group commits for at most
/// this long, then lets it go so another writer (`keyward secret set`, a second
/// proxy) gets in: such a writer waits at most about this long plus
/// [`LOCK_REST`]. While the lock was never let go nobody else can have written,
/// so commits skip the catch-up `stat` and the two `flock` calls.
pub const LOCK_HOLD_MAX: Duration = Duration::from_millis(50);
/// A held lock is let go once no commit came for this long.
pub const LOCK_HOLD_IDLE: Duration = Duration::from_millis(5);
/// After a hold of [`LOCK_HOLD_MAX`], commits take and release the lock one by
/// one for this long (as `record` always does), so a waiting writer gets a turn.
pub const LOCK_REST: Duration = Duration::from_millis(5);
/// Audit files are created private to the proxy's user.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

struct FileSink {
    /// The live log, opened for append.
    file: File,
    /// Length of `file` right after our last write (or when we last looked).
    len: u64,
    id: Option<FileId>,
}

enum Sink {
    File(FileSink),
    Stdout,
}

struct Inner {
    sink: Sink,
    /// `PATH.lock`: held exclusively around read-last-hash + append (+ rotate),
    /// and across group commits while `hold` is set.
    lock: Option<File>,
    prev_hash: String,
    /// The batch buffer, kept between batches (cleared, its capacity reused).
    buf: Vec<u8>,
    hold: Hold,
}

/// The state of a lock kept across group commits.
#[derive(Default)]
struct Hold {
    /// Since when `lock` has been held without a break (None: not held now).
    since: Option<Instant>,
    /// When a commit last wrote under the hold.
    last_write: Option<Instant>,
    /// Until then commits lock one by one (a full hold just ended).
    rest_until: Option<Instant>,
    /// The thread that lets the lock go is running.
    releaser: bool,
    /// The log is being dropped: the releaser ends.
    closed: bool,
}

/// What the writer and its lock releaser share.
struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the releaser when a hold starts or the log closes.
    wake: Condvar,
}

impl Inner {
    fn new(sink: Sink, lock: Option<File>, prev_hash: String) -> Inner {
        Inner {
            sink,
            lock,
            prev_hash,
            buf: Vec::new(),
            hold: Hold::default(),
        }
    }

    /// Lets a held lock go; the next append catches up from the disk.
    fn release_hold(&mut self) {
        if self.hold.since.take().is_some() {
            if let Some(lock) = &self.lock {
                // Closing the lock file would release it too; an unlock error
                // leaves nothing to clean up.
                let _ = lock.unlock();
            }
        }
    }
}

/// The append-only writer. `record` returns only once the line is handed to the
/// kernel, so a caller can fail closed when it errors.
pub struct AuditLog {
    path: PathBuf,
    /// Rotate when a line would take the live file past this many bytes (0 = never).
    rotate_bytes: u64,
    shared: Arc<Shared>,
    /// Lines waiting for a group write (see [`AuditLog::commit`]), one queue per
    /// lane: requests on one serving thread share a lane, so a leader only ever
    /// completes lines of its own thread and never has to wake another one.
    lanes: Vec<Mutex<Queue>>,
    /// With `[store] backend = "postgres"`: every batch also goes to the
    /// database (`pg.rs`); the file is then the mirror.
    db: Option<super::sink::PgSink>,
}

/// Group-commit queues: threads are spread over this many (by thread id).
const LANES: usize = 16;

fn lanes() -> Vec<Mutex<Queue>> {
    (0..LANES).map(|_| Mutex::default()).collect()
}

/// Spreads threads over lanes by their `ThreadId`, which hashes as one counter
/// value: taken as it is (consecutive threads, consecutive lanes) instead of
/// SipHash on every commit.
#[derive(Default)]
struct ThreadIdHasher(u64);

impl std::hash::Hasher for ThreadIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// The task that writes a lane's queue; it does so when dropped, so even a
/// leader cancelled while it waits for followers leaves no line behind.
struct Leader<'a>(&'a AuditLog, &'a Mutex<Queue>);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.0.drain(self.1);
    }
}

/// Where a waiting request learns that its line was written (and gets its event back).
type Done = tokio::sync::oneshot::Sender<(Event, Result<String, AuditError>)>;

/// A line waiting to be written, and where to say it was.
type Waiting = (Event, Done);

#[derive(Default)]
struct Queue {
    pending: Vec<Waiting>,
    /// A task is writing (and will also write whatever is pending).
    writing: bool,
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(path)
}

fn open_lock(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(false).write(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(FILE_MODE);
    }
    opts.open(lock_path(path))
}

impl AuditLog {
    pub fn open(cfg: &AuditConfig) -> Result<AuditLog, AuditError> {
        AuditLog::open_rotating(&cfg.path, cfg.rotate_bytes.0)
    }

    pub fn open_path(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_rotating(path, 0)
    }

    /// Opens `path` for appending; when a line would take the live file past
    /// `rotate_bytes` (0 = never), the file is rotated first.
    pub fn open_rotating(path: &Path, rotate_bytes: u64) -> Result<AuditLog, AuditError> {
        if path == Path::new(STDOUT_PATH) {
            return Ok(AuditLog::new(
                path,
                0,
                Inner::new(Sink::Stdout, None, GENESIS_HASH.to_string()),
            ));
        }
        let io = io_err(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(&io)?;
        }
        let lock = open_lock(path).map_err(io_err(&lock_path(path)))?;
        let guard = LockGuard::exclusive(&lock).map_err(&io)?;
        let file = open_append(path).map_err(&io)?;
        let meta = file.metadata().map_err(&io)?;
        let prev_hash =
            chain_head(path, &file, meta.len())?.unwrap_or_else(|| GENESIS_HASH.to_string());
        drop(guard);
        let sink = FileSink {
            file,
            len: meta.len(),
            id: file_id(&meta),
        };
        Ok(AuditLog::new(
            path,
            rotate_bytes,
            Inner::new(Sink::File(sink), Some(lock), prev_hash),
        ))
    }

    fn new(path: &Path, rotate_bytes: u64, inner: Inner) -> AuditLog {
        AuditLog {
            path: path.to_path_buf(),
            rotate_bytes,
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                wake: Condvar::new(),
            }),
            lanes: lanes(),
            db: None,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.inner.lock()
    }

    /// Also writes every batch to the database through `sink` (after the file).
    pub fn with_db(mut self, sink: super::sink::PgSink) -> AuditLog {
        self.db = Some(sink);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chains, writes and returns the written line's hash.
    pub fn record(&self, mut ev: Event) -> Result<String, AuditError> {
        let mut inner = self.inner();
        let mut hashes = self.append(&mut inner, std::slice::from_mut(&mut ev), false)?;
        hashes
            .pop()
            .ok_or_else(|| corrupt(&self.path, "no line was written"))
    }

    /// Like [`AuditLog::record`], for the request path: lines that arrive while
    /// another task of the same thread is writing are written together by that
    /// task (group commit: one `write` for the batch, under `PATH.lock`, which is
    /// kept across back-to-back batches, so the lock and the catch-up `stat` are
    /// paid once per hold, not per batch; lanes of other threads take turns). Returns, like
    /// `record`, only once this line is in the kernel, or with the error that
    /// kept its batch from being written. The event comes back as it was (its
    /// `ts` cleared again), for the caller's later lines about the same request.
    pub async fn commit(&self, ev_slot: &mut Event) -> Result<String, AuditError> {
        let ev = std::mem::take(ev_slot);
        let (done, written) = tokio::sync::oneshot::channel();
        let lane = self.lane();
        let lead = {
            let mut q = lane.lock();
            q.pending.push((ev, done));
            !std::mem::replace(&mut q.writing, true)
        };
        if lead {
            // Let the requests that are ready on this worker reach this point too,
            // so they join the batch. Dropped here (client gone), the guard still
            // writes the queue.
            let leader = Leader(self, lane);
            tokio::task::yield_now().await;
            drop(leader);
        }
        let Ok((back, result)) = written.await else {
            return Err(corrupt(&self.path, "the audit writer stopped"));
        };
        *ev_slot = back;
        ev_slot.ts.clear();
        result
    }

    /// This thread's group-commit queue.
    fn lane(&self) -> &Mutex<Queue> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hasher = BuildHasherDefault::<ThreadIdHasher>::default();
        let i = hasher.hash_one(std::thread::current().id()) as usize % self.lanes.len();
        &self.lanes[i]
    }

    /// The leader's loop: writes every pending line of its lane, batch by batch,
    /// until none is left. Synchronous, so a cancelled request can never strand
    /// the queue.
    fn drain(&self, lane: &Mutex<Queue>) {
        // Hands leadership back even if a write panics; the dropped senders then
        // fail their requests closed.
        struct Release<'a>(&'a Mutex<Queue>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.lock().writing = false;
            }
        }
        let _release = Release(lane);
        loop {
            let batch = std::mem::take(&mut lane.lock().pending);
            if batch.is_empty() {
                return;
            }
            let (mut events, senders): (Vec<Event>, Vec<_>) = batch.into_iter().unzip();
            let written = {
                let mut inner = self.inner();
                let written = self.append_file_or_release(&mut inner, &mut events, true);
                match (written, &self.db) {
                    (Ok(hashes), Some(db)) => {
                        // SECURITY: the batch's requests are released only once the
                        // database (or the fsync'd spool) has their lines; an error
                        // there fails them closed. Submitted under the lock, so the
                        // database chain takes batches in file order; not waited
                        // for here, so the next batch forms meanwhile.
                        db.submit(
                            events,
                            Box::new(move |events, stored| {
                                let rows = senders.into_iter().zip(events).zip(hashes);
                                for ((done, ev), hash) in rows {
                                    let r = match &stored {
                                        Ok(()) => Ok(hash),
                                        Err(e) => Err(e.duplicate()),
                                    };
                                    let _ = done.send((ev, r));
                                }
                            }),
                        );
                        continue;
                    }
                    (written, _) => written,
                }
            };
            // The file alone: the requests are told outside the writer's lock.
            match written {
                Ok(hashes) => {
                    for ((done, ev), hash) in senders.into_iter().zip(events).zip(hashes) {
                        let _ = done.send((ev, Ok(hash)));
                    }
                }
                Err(e) => {
                    for (done, ev) in senders.into_iter().zip(events) {
                        let _ = done.send((ev, Err(e.duplicate())));
                    }
                }
            }
        }
    }

    /// [`Self::append_file`]; after an error the next append starts from the disk.
    fn append_file_or_release(
        &self,
        inner: &mut Inner,
        events: &mut [Event],
        hold: bool,
    ) -> Result<Vec<String>, AuditError> {
        self.append_file(inner, events, hold)
            .inspect_err(|_| inner.release_hold())
    }

    /// Chains and writes `events` in order (one lock, one catch-up and, unless a
    /// rotation falls inside the batch, one `write`); returns their hashes.
    /// `hold`: keep the lock afterwards (group commits; see [`LOCK_HOLD_MAX`]).
    fn append(
        &self,
        inner: &mut Inner,
        events: &mut [Event],
        hold: bool,
    ) -> Result<Vec<String>, AuditError> {
        let hashes = self.append_file_or_release(inner, events, hold)?;
        if let Some(db) = &self.db {
            // SECURITY: the caller waits for the database (or the fsync'd
            // spool); an error here fails it closed (it undoes its change).
            db.append(events)?;
        }
        Ok(hashes)
    }

    fn append_file(
        &self,
        inner: &mut Inner,
        events: &mut [Event],
        hold: bool,
    ) -> Result<Vec<String>, AuditError> {
        let mut buf = std::mem::take(&mut inner.buf);
        buf.clear();
        buf.reserve(events.len() * LINE_BYTES_HINT);
        let written = self.append_into(inner, events, &mut buf, hold);
        // Kept for the next batch unless one unusually large batch grew it.
        if buf.capacity() <= KEPT_BUFFER_BYTES {
            inner.buf = buf;
        }
        written
    }

    fn append_into(
        &self,
        inner: &mut Inner,
        events: &mut [Event],
        buf: &mut Vec<u8>,
        hold: bool,
    ) -> Result<Vec<String>, AuditError> {
        let ts = now_rfc3339();
        for ev in events.iter_mut().filter(|ev| ev.ts.is_empty()) {
            ev.ts.clone_from(&ts);
        }
        let mut hashes: Vec<String> = Vec::with_capacity(events.len());
        // The whole batch is rendered into this one buffer; each line chains off
        // the hash of the line before it in the batch (or the chain head).
        match &mut inner.sink {
            Sink::Stdout => {
                for ev in events.iter_mut() {
                    let prev = hashes.last().unwrap_or(&inner.prev_hash);
                    let hash = render(ev, prev, buf);
                    hashes.push(hash);
                }
                let mut out = std::io::stdout().lock();
                out.write_all(buf)
                    .and_then(|_| out.flush())
                    .map_err(io_err(&self.path))?;
                if let Some(head) = hashes.last() {
                    inner.prev_hash.clone_from(head);
                }
                Ok(hashes)
            }
            Sink::File(sink) => {
                // SECURITY: another process (`keyward secret set`) may append to the
                // same file; without the lock the two could chain off the same
                // previous line and fork the chain.
                let lock = inner
                    .lock
                    .as_ref()
                    .ok_or_else(|| corrupt(&self.path, "no lock file"))?;
                // Held since our last append (never let go in between): nobody
                // else can have written, so there is nothing to catch up on.
                let mut _held = None;
                if inner.hold.since.is_none() {
                    let guard = LockGuard::exclusive(lock).map_err(io_err(&self.path))?;
                    self.catch_up(sink, &mut inner.prev_hash)?;
                    let now = Instant::now();
                    if hold
                        && inner.hold.rest_until.is_none_or(|t| now >= t)
                        && self.start_releaser(&mut inner.hold)
                    {
                        // Kept past this append; the releaser lets it go.
                        std::mem::forget(guard);
                        inner.hold.since = Some(now);
                        inner.hold.rest_until = None;
                        self.shared.wake.notify_one();
                    } else {
                        _held = Some(guard);
                    }
                }
                if inner.hold.since.is_some() {
                    inner.hold.last_write = Some(Instant::now());
                }
                for ev in events.iter_mut() {
                    let prev = hashes.last().unwrap_or(&inner.prev_hash);
                    let start = buf.len();
                    let hash = render(ev, prev, buf);
                    let line_len = (buf.len() - start) as u64;
                    let len = sink.len + start as u64;
                    if self.rotate_bytes > 0 && len > 0 && len + line_len > self.rotate_bytes {
                        // This line starts the next file: the lines before it
                        // finish this one.
                        self.write_out(sink, &buf[..start])?;
                        if let Some(head) = hashes.last() {
                            inner.prev_hash.clone_from(head);
                        }
                        buf.drain(..start);
                        self.rotate(sink)?;
                    }
                    hashes.push(hash);
                }
                self.write_out(sink, buf)?;
                if let Some(head) = hashes.last() {
                    inner.prev_hash.clone_from(head);
                }
                Ok(hashes)
            }
        }
    }

    /// Starts the thread that lets a held lock go (once); false if it cannot run,
    /// and then the lock is taken per append.
    fn start_releaser(&self, hold: &mut Hold) -> bool {
        if hold.releaser {
            return true;
        }
        let shared = Arc::downgrade(&self.shared);
        let started = std::thread::Builder::new()
            .name("keyward-audit-lock".into())
            .spawn(move || release_when_due(shared));
        hold.releaser = started.is_ok();
        hold.releaser
    }

    /// Appends whole lines; a failed write is taken back so no partial line stays.
    fn write_out(&self, sink: &mut FileSink, buf: &[u8]) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(source) = sink.file.write_all(buf) {
            // A partial line would break every later line's parse; take it back.
            let _ = sink.file.set_len(sink.len);
            return Err(AuditError::Io {
                path: self.path.display().to_string(),
                source,
            });
        }
        sink.len += buf.len() as u64;
        Ok(())
    }

    /// Under the lock: if another process appended, rotated or replaced the live
    /// file since our last write, reopen it and re-read the chain head, so our
    /// next line follows theirs. Cheap when nothing changed: two `stat`s.
    fn catch_up(&self, sink: &mut FileSink, prev_hash: &mut String) -> Result<(), AuditError> {
        let io = io_err(&self.path);
        let on_disk_meta = match std::fs::metadata(&self.path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let on_disk = on_disk_meta.as_ref().and_then(file_id);
        let mut moved = on_disk.is_none() && sink.id.is_some();
        if let (Some(ours), Some(theirs)) = (sink.id, on_disk) {
            moved = ours != theirs;
        }
        if moved {
            sink.file = open_append(&self.path).map_err(&io)?;
            sink.id = file_id(&sink.file.metadata().map_err(&io)?);
            sink.len = u64::MAX;
        }
        // Same file at the path: its stat already gives the length (one syscall
        // fewer on every request); otherwise ask the handle we just opened.
        let len = match (&on_disk_meta, moved) {
            (Some(m), false) if on_disk.is_some() && on_disk == sink.id => m.len(),
            _ => sink.file.metadata().map_err(&io)?.len(),
        };
        if len != sink.len {
            if let Some(head) = chain_head(&self.path, &sink.file, len)? {
                *prev_hash = head;
            }
            sink.len = len;
        }
        Ok(())
    }

    /// Renames the live file to `PATH.N` (N = highest + 1) and opens a fresh one.
    /// The chain continues: the caller's `prev_hash` is the renamed file's head.
    fn rotate(&self, sink: &mut FileSink) -> Result<(), AuditError> {
        let io = io_err(&self.path);
        let next = rotated_files(&self.path)?
            .last()
            .map(|(n, _)| n + 1)
            .unwrap_or(1);
        let target = rotated_path(&self.path, next);
        std::fs::rename(&self.path, &target).map_err(&io)?;
        sink.file = open_append(&self.path).map_err(&io)?;
        let meta = sink.file.metadata().map_err(&io)?;
        sink.id = file_id(&meta);
        sink.len = meta.len();
        tracing::info!(rotated_to = %target.display(), "audit log rotated");
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let mut inner = self.inner();
        inner.hold.closed = true;
        inner.release_hold();
        drop(inner);
        self.shared.wake.notify_all();
    }
}

/// The releaser: lets a held `PATH.lock` go after [`LOCK_HOLD_IDLE`] without a
/// commit or [`LOCK_HOLD_MAX`] in all (then [`LOCK_REST`] of per-append locking
/// follows). Ends when the log is dropped.
fn release_when_due(shared: std::sync::Weak<Shared>) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut inner = shared.inner.lock();
    loop {
        if inner.hold.closed {
            inner.release_hold();
            return;
        }
        let Some(since) = inner.hold.since else {
            shared.wake.wait(&mut inner);
            continue;
        };
        let now = Instant::now();
        let full = since + LOCK_HOLD_MAX;
        let idle = inner.hold.last_write.unwrap_or(since) + LOCK_HOLD_IDLE;
        if now >= full {
            inner.release_hold();
            inner.hold.rest_until = Some(now + LOCK_REST);
        } else if now >= idle {
            inner.release_hold();
        } else {
            shared.wake.wait_until(&mut inner, full.min(idle));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::encode::{chain_hash, split_hash};
    use crate::audit::testkit::{ev, log_with};
    use crate::audit::{rotated_files, verify, EventKind, Outcome};
    use std::sync::Arc;

    #[test]
    fn lines_chain_and_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let h1 = log
            .record(Event::new(EventKind::Tunnel, Outcome::Allowed))
            .unwrap();
        drop(log);
        let log = AuditLog::open_path(&path).unwrap();
        log.record(Event::new(EventKind::Deny, Outcome::Denied))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["prev_hash"], GENESIS_HASH);
        assert_eq!(lines[1]["prev_hash"], h1.as_str());
    }

    /// Group commit: tasks on several workers and a synchronous writer interleave;
    /// every line lands once, in one unbroken chain, and each caller gets its hash.
    #[test]
    fn concurrent_commits_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // Small rotation size, so batches also cross rotations.
        let log = Arc::new(AuditLog::open_rotating(&path, 4096).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let sync_log = log.clone();
        let sync_writer = std::thread::spawn(move || {
            (0..50)
                .map(|i| {
                    let mut e = Event::new(EventKind::SecretSet, Outcome::Allowed);
                    e.request_id = Some(format!("sync-{i}"));
                    sync_log.record(e).unwrap()
                })
                .collect::<Vec<_>>()
        });
        let hashes: Vec<String> = rt.block_on(async {
            let tasks: Vec<_> = (0..400)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
                        e.request_id = Some(format!("task-{i}"));
                        let asked = e.clone();
                        let hash = log.commit(&mut e).await.unwrap();
                        // The caller gets its event back as it was.
                        assert_eq!(e.request_id, asked.request_id);
                        assert!(e.ts.is_empty());
                        hash
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let sync_hashes = sync_writer.join().unwrap();
        let report = verify(&path).unwrap();
        assert!(report.is_ok(), "{:?}", report.problem);
        assert_eq!(report.lines, 450);
        assert!(
            rotated_files(&path).unwrap().len() > 1,
            "batches crossed rotations"
        );
        let mut on_disk = std::collections::HashSet::new();
        for (_, f) in rotated_files(&path).unwrap() {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                on_disk.insert(split_hash(line).unwrap().1.to_string());
            }
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            on_disk.insert(split_hash(line).unwrap().1.to_string());
        }
        for h in hashes.iter().chain(&sync_hashes) {
            assert!(on_disk.contains(h), "returned hash {h} is on disk");
        }
    }

    /// A request dropped while it leads a batch (client gone) still writes the
    /// batch: neither its line nor its followers' lines are stranded.
    #[test]
    fn a_cancelled_leader_still_writes_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            use std::future::Future;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let (mut first, mut second, mut third) = (
                Event::new(EventKind::Inject, Outcome::Allowed),
                Event::new(EventKind::Inject, Outcome::Allowed),
                Event::new(EventKind::Inject, Outcome::Allowed),
            );
            let mut leader = Box::pin(log.commit(&mut first));
            // First poll: it queues its line, becomes the leader and yields.
            assert!(leader.as_mut().poll(&mut cx).is_pending());
            // A second request queues behind it and waits.
            let mut follower = Box::pin(log.commit(&mut second));
            assert!(follower.as_mut().poll(&mut cx).is_pending());
            drop(leader);
            follower.await.unwrap();
            // The queue is free again for the next request.
            log.commit(&mut third).await.unwrap();
        });
        let report = verify(&path).unwrap();
        assert!(report.is_ok());
        assert_eq!(report.lines, 3);
    }

    /// The request path keeps `PATH.lock` across commits; another writer on the
    /// same chain (a CLI `secret set`: its own `AuditLog`, blocking `record`s)
    /// still gets in, and the commits after its lines chain off them.
    #[test]
    fn held_lock_lets_another_writer_in_and_keeps_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open_rotating(&path, 4096).unwrap());
        let cli_path = path.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let cli = rt.block_on(async {
            let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
            log.commit(&mut e).await.unwrap();
            // The lock is held now (until idle or LOCK_HOLD_MAX): the CLI waits
            // for the releaser, then writes.
            let cli = std::thread::spawn(move || {
                let other = AuditLog::open_rotating(&cli_path, 4096).unwrap();
                for i in 0..20 {
                    let mut e = Event::new(EventKind::SecretSet, Outcome::Allowed);
                    e.request_id = Some(format!("cli-{i}"));
                    other.record(e).unwrap();
                }
            });
            let mut tasks = Vec::new();
            for i in 0..200 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
                    e.request_id = Some(format!("task-{i}"));
                    log.commit(&mut e).await.unwrap();
                }));
                if i % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            cli
        });
        cli.join().unwrap();
        // And the proxy writes again after the CLI's last line.
        rt.block_on(async {
            let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
            log.commit(&mut e).await.unwrap();
        });
        let report = verify(&path).unwrap();
        assert!(report.is_ok(), "{:?}", report.problem);
        assert_eq!(report.lines, 1 + 20 + 200 + 1);
    }

    /// A log dropped while it holds the lock lets it go at once.
    #[test]
    fn dropping_a_log_that_holds_the_lock_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
            log.commit(&mut e).await.unwrap();
        });
        drop(log);
        let lock = File::open(lock_path(&path)).unwrap();
        lock.try_lock().unwrap();
    }

    #[test]
    fn rotation_continues_the_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let limit = 1024;
        let log = AuditLog::open_rotating(&path, limit).unwrap();
        for i in 0..30 {
            log.record(ev("inject", "allowed", &format!("a{i}"), None))
                .unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        assert!(rotated.len() >= 3, "{rotated:?}");
        assert_eq!(rotated[0].0, 1);
        for (_, p) in &rotated {
            assert!(std::fs::metadata(p).unwrap().len() <= limit);
        }
        let r = verify(&path).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 30);
        assert_eq!(r.files.len(), rotated.len() + 1);
        // The first line of the live file follows the last line of the newest rotated one.
        let last_rotated = std::fs::read_to_string(&rotated.last().unwrap().1).unwrap();
        let last: Event = serde_json::from_str(last_rotated.lines().last().unwrap()).unwrap();
        let live = std::fs::read_to_string(&path).unwrap();
        let first: Event = serde_json::from_str(live.lines().next().unwrap()).unwrap();
        assert_eq!(first.prev_hash, last.hash);
    }

    #[test]
    fn reopen_after_rotation_with_empty_live_file_chains_off_the_rotated_one() {
        let (_d, path) = log_with(3);
        std::fs::rename(&path, rotated_path(&path, 1)).unwrap();
        let log = AuditLog::open_path(&path).unwrap();
        log.record(ev("deny", "denied", "x", None)).unwrap();
        let r = verify(&path).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 4);
    }

    #[test]
    fn two_writers_interleaving_keep_one_chain() {
        let (_d, path) = log_with(0);
        let a = AuditLog::open_path(&path).unwrap();
        let b = AuditLog::open_path(&path).unwrap();
        a.record(ev("inject", "allowed", "a", None)).unwrap();
        b.record(ev("secret_set", "allowed", "cli", None)).unwrap();
        a.record(ev("inject", "allowed", "a", None)).unwrap();
        b.record(ev("secret_rm", "allowed", "cli", None)).unwrap();
        let r = verify(&path).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 4);
    }

    #[test]
    fn concurrent_writers_with_rotation_keep_one_chain() {
        let (_d, path) = log_with(0);
        let per_thread = 150;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let log = AuditLog::open_rotating(&path, 4096).unwrap();
                    for i in 0..per_thread {
                        log.record(ev("inject", "allowed", &format!("t{t}-{i}"), None))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let r = verify(&path).unwrap();
        assert!(r.is_ok(), "{:?}", r.problem);
        assert_eq!(r.lines, 4 * per_thread);
        assert!(r.files.len() > 2);
    }

    /// What the writer put on disk is what the serde-based writer wrote before
    /// it: each line is `serde_json::to_string` of its event without the closing
    /// brace, then the hash of that body chained off the line before, also
    /// across the lines of one batch.
    #[test]
    fn written_lines_are_serde_json_of_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let mut tricky = ev("inject", "allowed", "a\"g\\e/n\u{7f}t\n", Some("K€Y"));
        tricky.reason = Some("\u{0}\u{1f}\t\r\u{8}\u{c} 😀".into());
        tricky.status = Some(502);
        tricky.version = Some(0);
        log.record(tricky.clone()).unwrap();
        let mut batch = vec![tricky.clone(), ev("deny", "denied", "b", None), tricky];
        log.append(&mut log.inner(), &mut batch, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut prev = GENESIS_HASH.to_string();
        for line in text.lines() {
            let (body, hash) = split_hash(line).unwrap();
            let mut event: Event = serde_json::from_str(line).unwrap();
            assert_eq!(event.prev_hash, prev);
            event.hash.clear();
            let canonical = serde_json::to_string(&event).unwrap();
            assert_eq!(format!("{body}}}"), canonical);
            assert_eq!(chain_hash(&prev, body), hash);
            prev = hash.to_string();
        }
        assert_eq!(text.lines().count(), 4);
    }

    /// Lines written by [`write_cost_probe`].
    const PROBE_LINES: usize = 10_000;

    /// Not a check: a fixed workload of typical request lines for counting the
    /// writer's cost per line, e.g. `valgrind --tool=callgrind
    /// --toggle-collect='*AuditLog::append*' <lib test binary> --ignored
    /// write_cost_probe` and divide by `PROBE_LINES`.
    #[test]
    #[ignore]
    fn write_cost_probe() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open_path(&dir.path().join("audit.jsonl")).unwrap();
        let mut e = Event::new(EventKind::Inject, Outcome::Allowed);
        e.agent = Some("agent-7".into());
        e.host = Some("api.openai.com".into());
        e.method = Some("POST".into());
        e.path = Some("/v1/chat/completions".into());
        e.provider = Some("openai".into());
        e.secret = Some("OPENAI_API_KEY".into());
        e.scope = Some("default".into());
        e.tier = Some("standard".into());
        e.version = Some(3);
        for i in 0..PROBE_LINES {
            e.request_id = Some(format!("{i:016x}"));
            e.ts.clear();
            log.record(e.clone()).unwrap();
        }
    }
}
