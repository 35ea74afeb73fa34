//! The tamper-evident audit log (SPEC §8): one JSONL object per decision, each
//! carrying `prev_hash` and `hash = sha256(prev_hash || canonical line)`.
//!
//! The canonical line is the exact JSON text written, up to (not including) the
//! trailing `,"hash":"…"}`; `verify` recomputes it from the bytes on disk.
//!
//! Files: the live log is `PATH`; with `rotate_bytes` set, a full log is renamed to
//! `PATH.1`, `PATH.2`, … (the number only grows, a rotated file is never renamed
//! again) and the chain continues in a fresh `PATH`. Writers in several processes
//! (the proxy, `keyward secret set`) serialise on an advisory lock on `PATH.lock`,
//! so the chain never forks. See `docs/audit.md`.

use crate::clock::now_rfc3339;
use crate::config::AuditConfig;
use crate::ids::hex_string;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `prev_hash` of the first line of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How far back from the end we read to find the last line (longer lines are refused).
const MAX_LINE_BYTES: u64 = 1024 * 1024;
/// Chunk size for reading a file backwards.
const TAIL_CHUNK_BYTES: u64 = 64 * 1024;
/// Length of a hex SHA-256.
const HASH_HEX_LEN: usize = 64;
/// What precedes the hash at the end of every line.
const HASH_FIELD_OPEN: &str = ",\"hash\":\"";
/// What follows the hash at the end of every line (before the newline).
const HASH_FIELD_CLOSE: &str = "\"}";
/// Room reserved per line of a batch: a typical request line is 300–400 bytes.
const LINE_BYTES_HINT: usize = 512;
/// The advisory lock file next to the log: `PATH.lock`.
const LOCK_SUFFIX: &str = ".lock";
/// The path that means "write to stdout".
const STDOUT_PATH: &str = "-";
/// Audit files are created private to the proxy's user.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log {path}: {message}")]
    Corrupt { path: String, message: String },
    /// A query filter that does not parse (`--since yesterday`).
    #[error("{0}")]
    Filter(String),
    /// Reading commands need a file; `path = "-"` streams to stdout.
    #[error("the audit log goes to stdout (path = \"-\"); point at a collected file instead")]
    Stdout,
}

impl AuditError {
    /// The same error for another waiter of a failed batch (`io::Error` is not `Clone`).
    fn duplicate(&self) -> AuditError {
        match self {
            AuditError::Io { path, source } => AuditError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            AuditError::Corrupt { path, message } => AuditError::Corrupt {
                path: path.clone(),
                message: message.clone(),
            },
            AuditError::Filter(f) => AuditError::Filter(f.clone()),
            AuditError::Stdout => AuditError::Stdout,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, message: impl Into<String>) -> AuditError {
    AuditError::Corrupt {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// What a line records. The text on disk is [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EventKind {
    /// A credential was written into a request and sent upstream.
    #[default]
    Inject,
    /// A blind tunnel (egress allow list) was opened.
    Tunnel,
    /// A request or CONNECT was refused by policy.
    Deny,
    /// Proxy authentication failed (407).
    AuthFail,
    /// A request was injected, then failed upstream.
    UpstreamError,
    /// An upstream echoed an in-scope secret and it was redacted.
    Redact,
    SecretSet,
    SecretRotate,
    SecretRm,
    SecretClone,
    AgentAdd,
    AgentRm,
    SessionCreate,
    /// An admin API or console request without a valid token.
    AdminAuthFail,
    /// An admin token without the permission a request needs.
    AdminForbidden,
    VaultRotateMasterKey,
    /// The jail refused a packet or connection that was not for keyward.
    JailBlock,
}

impl EventKind {
    /// Every kind, for parsing and for docs tests.
    pub const ALL: [EventKind; 17] = [
        EventKind::Inject,
        EventKind::Tunnel,
        EventKind::Deny,
        EventKind::AuthFail,
        EventKind::UpstreamError,
        EventKind::Redact,
        EventKind::SecretSet,
        EventKind::SecretRotate,
        EventKind::SecretRm,
        EventKind::SecretClone,
        EventKind::AgentAdd,
        EventKind::AgentRm,
        EventKind::SessionCreate,
        EventKind::AdminAuthFail,
        EventKind::AdminForbidden,
        EventKind::VaultRotateMasterKey,
        EventKind::JailBlock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Inject => "inject",
            EventKind::Tunnel => "tunnel",
            EventKind::Deny => "deny",
            EventKind::AuthFail => "auth_fail",
            EventKind::UpstreamError => "upstream_error",
            EventKind::Redact => "redact",
            EventKind::SecretSet => "secret_set",
            EventKind::SecretRotate => "secret_rotate",
            EventKind::SecretRm => "secret_rm",
            EventKind::SecretClone => "secret_clone",
            EventKind::AgentAdd => "agent_add",
            EventKind::AgentRm => "agent_rm",
            EventKind::SessionCreate => "session_create",
            EventKind::AdminAuthFail => "admin_auth_fail",
            EventKind::AdminForbidden => "admin_forbidden",
            EventKind::VaultRotateMasterKey => "vault_rotate_master_key",
            EventKind::JailBlock => "jail_block",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A change to the vault's secrets or agents (CEF severity, console).
    pub fn is_admin_change(self) -> bool {
        matches!(
            self,
            EventKind::SecretSet
                | EventKind::SecretRotate
                | EventKind::SecretRm
                | EventKind::SecretClone
                | EventKind::AgentAdd
                | EventKind::AgentRm
        )
    }
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Outcome {
    #[default]
    Allowed,
    Denied,
    /// keyward or the upstream failed (5xx).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Allowed, Outcome::Denied, Outcome::Error]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// Both enums are written as their text and read back from it.
macro_rules! serde_as_str {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                <$t>::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!("unknown ", $what, " {:?}"), text))
                })
            }
        }
    };
}
serde_as_str!(EventKind, "event");
impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
serde_as_str!(Outcome, "outcome");

/// One decision. Field order here is the order on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub ts: String,
    pub event: EventKind,
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
    pub outcome: Outcome,
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
    pub fn new(event: EventKind, outcome: Outcome) -> Event {
        Event {
            event,
            outcome,
            ..Event::default()
        }
    }

    /// Appends the canonical line of this event without its closing brace (the
    /// bytes the chain hash covers) to `out`. The bytes are exactly those of
    /// `serde_json::to_string(self)` minus the final `}`: every reader parses the
    /// lines with serde, and a log must not change shape with this writer. Written
    /// by hand because it runs for every proxied request and serde's generic map
    /// path costs several times more; `tests::hand_written_json_is_serde_json`
    /// holds the two together.
    fn write_canonical_body(&self, out: &mut Vec<u8>) {
        // Destructured, not read field by field, so that a field added to `Event`
        // fails to compile here instead of silently missing from the log.
        let Event {
            ts,
            event,
            request_id,
            agent,
            owner,
            builder,
            chain,
            run_id,
            connection_id,
            provider,
            host,
            method,
            path,
            secret,
            scope,
            tier,
            version,
            outcome,
            reason,
            status,
            prev_hash,
            hash: _,
        } = self;
        // `"{key}":` after a comma; the keys are the field names (no renames).
        macro_rules! key {
            ($field:ident) => {
                concat!(",\"", stringify!($field), "\":").as_bytes()
            };
        }
        out.extend_from_slice(b"{\"ts\":");
        push_json_str(out, ts);
        out.extend_from_slice(key!(event));
        push_json_str(out, event.as_str());
        // Same order as the struct: `skip_serializing_if = "Option::is_none"`.
        let optional = [
            (key!(request_id), request_id),
            (key!(agent), agent),
            (key!(owner), owner),
            (key!(builder), builder),
            (key!(chain), chain),
            (key!(run_id), run_id),
            (key!(connection_id), connection_id),
            (key!(provider), provider),
            (key!(host), host),
            (key!(method), method),
            (key!(path), path),
            (key!(secret), secret),
            (key!(scope), scope),
            (key!(tier), tier),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.extend_from_slice(key);
                push_json_str(out, value);
            }
        }
        if let Some(version) = version {
            out.extend_from_slice(key!(version));
            push_decimal(out, *version);
        }
        out.extend_from_slice(key!(outcome));
        push_json_str(out, outcome.as_str());
        if let Some(reason) = reason {
            out.extend_from_slice(key!(reason));
            push_json_str(out, reason);
        }
        if let Some(status) = status {
            out.extend_from_slice(key!(status));
            push_decimal(out, u32::from(*status));
        }
        out.extend_from_slice(key!(prev_hash));
        push_json_str(out, prev_hash);
    }
}

/// Lower-case hex digits, by value.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Marks a byte that JSON writes as `\u00XX` in [`JSON_ESCAPE`].
const ESCAPE_UNICODE: u8 = b'u';

/// How serde_json writes each byte inside a string (its `ESCAPE` table): 0 = as
/// it is, [`ESCAPE_UNICODE`] = `\u00XX` (lower-case hex), any other value `c` =
/// backslash then `c`. Only `"`, `\` and control bytes below 0x20 are escaped;
/// `/`, DEL (0x7f) and non-ASCII UTF-8 stay as they are.
const JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    // The C0 control bytes, 0x00 to 0x1f; five of them have short forms.
    let mut b = 0;
    while b < 0x20 {
        table[b] = ESCAPE_UNICODE;
        b += 1;
    }
    table[b'\x08' as usize] = b'b';
    table[b'\t' as usize] = b't';
    table[b'\n' as usize] = b'n';
    table[b'\x0c' as usize] = b'f';
    table[b'\r' as usize] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a quoted JSON string, escaped exactly as serde_json does.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Start of the run of bytes that need no escape: copied in one go.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = JSON_ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if escape == ESCAPE_UNICODE {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_DIGITS[usize::from(b >> 4)],
                HEX_DIGITS[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends `n` in decimal, as serde_json writes integers.
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    // u32::MAX has 10 digits.
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// Identity of an open file, to notice that `PATH` now names another file
/// (rotated or replaced by another process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some(FileId(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<FileId> {
    None
}

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
    /// `PATH.lock`: held exclusively around read-last-hash + append (+ rotate).
    lock: Option<File>,
    prev_hash: String,
}

/// The append-only writer. `record` returns only once the line is handed to the
/// kernel, so a caller can fail closed when it errors.
pub struct AuditLog {
    path: PathBuf,
    /// Rotate when a line would take the live file past this many bytes (0 = never).
    rotate_bytes: u64,
    inner: Mutex<Inner>,
    /// Lines waiting for a group write (see [`AuditLog::commit`]), one queue per
    /// lane: requests on one serving thread share a lane, so a leader only ever
    /// completes lines of its own thread and never has to wake another one.
    lanes: Vec<Mutex<Queue>>,
}

/// Group-commit queues: threads are spread over this many (by thread id).
const LANES: usize = 16;

fn lanes() -> Vec<Mutex<Queue>> {
    (0..LANES).map(|_| Mutex::default()).collect()
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

/// Holds an advisory lock until dropped.
struct LockGuard<'a>(&'a File);

impl<'a> LockGuard<'a> {
    fn exclusive(f: &'a File) -> io::Result<LockGuard<'a>> {
        f.lock()?;
        Ok(LockGuard(f))
    }
    fn shared(f: &'a File) -> io::Result<LockGuard<'a>> {
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
            return Ok(AuditLog {
                path: path.to_path_buf(),
                rotate_bytes: 0,
                inner: Mutex::new(Inner {
                    sink: Sink::Stdout,
                    lock: None,
                    prev_hash: GENESIS_HASH.to_string(),
                }),
                lanes: lanes(),
            });
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
        Ok(AuditLog {
            path: path.to_path_buf(),
            rotate_bytes,
            inner: Mutex::new(Inner {
                sink: Sink::File(sink),
                lock: Some(lock),
                prev_hash,
            }),
            lanes: lanes(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chains, writes and returns the written line's hash.
    pub fn record(&self, mut ev: Event) -> Result<String, AuditError> {
        let mut inner = self.inner.lock();
        let mut hashes = self.append(&mut inner, std::slice::from_mut(&mut ev))?;
        hashes
            .pop()
            .ok_or_else(|| corrupt(&self.path, "no line was written"))
    }

    /// Like [`AuditLog::record`], for the request path: lines that arrive while
    /// another task of the same thread is writing are written together by that
    /// task (group commit: one lock, one `stat` and one `write` for the batch;
    /// lanes of other threads take the lock in turn). Returns, like
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
        let hasher = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
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
            let written = self.append(&mut self.inner.lock(), &mut events);
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

    /// Chains and writes `events` in order (one lock, one catch-up and, unless a
    /// rotation falls inside the batch, one `write`); returns their hashes.
    fn append(&self, inner: &mut Inner, events: &mut [Event]) -> Result<Vec<String>, AuditError> {
        let ts = now_rfc3339();
        for ev in events.iter_mut().filter(|ev| ev.ts.is_empty()) {
            ev.ts.clone_from(&ts);
        }
        let mut hashes: Vec<String> = Vec::with_capacity(events.len());
        // The whole batch is rendered into this one buffer; each line chains off
        // the hash of the line before it in the batch (or the chain head).
        let mut buf = Vec::with_capacity(events.len() * LINE_BYTES_HINT);
        match &mut inner.sink {
            Sink::Stdout => {
                for ev in events.iter_mut() {
                    let prev = hashes.last().unwrap_or(&inner.prev_hash);
                    let hash = render(ev, prev, &mut buf);
                    hashes.push(hash);
                }
                let mut out = std::io::stdout().lock();
                out.write_all(&buf)
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
                let _held = LockGuard::exclusive(lock).map_err(io_err(&self.path))?;
                self.catch_up(sink, &mut inner.prev_hash)?;
                for ev in events.iter_mut() {
                    let prev = hashes.last().unwrap_or(&inner.prev_hash);
                    let start = buf.len();
                    let hash = render(ev, prev, &mut buf);
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
                self.write_out(sink, &buf)?;
                if let Some(head) = hashes.last() {
                    inner.prev_hash.clone_from(head);
                }
                Ok(hashes)
            }
        }
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

/// Sets `ev.prev_hash`, appends the event's full line (canonical body, hash
/// field, newline) to `buf` and returns the line's hash.
fn render(ev: &mut Event, prev_hash: &str, buf: &mut Vec<u8>) -> String {
    // Refilled rather than replaced: the event keeps its string's capacity (a
    // request's later lines reuse the same event).
    ev.prev_hash.clear();
    ev.prev_hash.push_str(prev_hash);
    let start = buf.len();
    ev.write_canonical_body(buf);
    let hash = chain_hash_bytes(prev_hash, &buf[start..]);
    buf.extend_from_slice(HASH_FIELD_OPEN.as_bytes());
    buf.extend_from_slice(hash.as_bytes());
    buf.extend_from_slice(HASH_FIELD_CLOSE.as_bytes());
    buf.push(b'\n');
    hash
}

pub fn chain_hash(prev_hash: &str, body: &str) -> String {
    chain_hash_bytes(prev_hash, body.as_bytes())
}

/// [`chain_hash`] of a body still in the writer's byte buffer.
fn chain_hash_bytes(prev_hash: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(body);
    hex_string(&h.finalize())
}

fn is_hash(s: &str) -> bool {
    s.len() == HASH_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits a line (without its newline) into the hashed body and the hash.
fn split_hash(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_suffix(HASH_FIELD_CLOSE)?;
    let cut = rest.len().checked_sub(HASH_HEX_LEN)?;
    let hash = rest.get(cut..)?;
    let body = rest.get(..cut)?.strip_suffix(HASH_FIELD_OPEN)?;
    is_hash(hash).then_some((body, hash))
}

/// The hash of the last line of the live file, or of the newest rotated file
/// when the live one is empty; `None` for a log with no lines at all.
fn chain_head(path: &Path, live: &File, live_len: u64) -> Result<Option<String>, AuditError> {
    if live_len > 0 {
        return last_hash(path, live, live_len).map(Some);
    }
    for (_, rotated) in rotated_files(path)?.iter().rev() {
        let f = File::open(rotated).map_err(io_err(rotated))?;
        let len = f.metadata().map_err(io_err(rotated))?.len();
        if len > 0 {
            return last_hash(rotated, &f, len).map(Some);
        }
    }
    Ok(None)
}

fn last_hash(path: &Path, file: &File, len: u64) -> Result<String, AuditError> {
    let lines = tail_lines(file, len, 1).map_err(io_err(path))?;
    let unfinished = "ends with an unfinished line; run `keyward audit verify`";
    let Some(last) = lines.last() else {
        return Err(corrupt(path, unfinished));
    };
    if lines.partial_end {
        return Err(corrupt(path, unfinished));
    }
    let text = std::str::from_utf8(last).map_err(|_| corrupt(path, "last line is not UTF-8"))?;
    split_hash(text).map(|(_, h)| h.to_string()).ok_or_else(|| {
        corrupt(
            path,
            "last line has no trailing hash; run `keyward audit verify`",
        )
    })
}

/// The last complete lines of a file, read backwards from `len`.
struct TailLines {
    lines: Vec<Vec<u8>>,
    /// The file does not end with a newline (an unfinished write).
    partial_end: bool,
}

impl TailLines {
    fn last(&self) -> Option<&Vec<u8>> {
        self.lines.last()
    }
}

/// Reads backwards until `n` complete lines (without their newline) are in hand,
/// the start of the file, or `MAX_LINE_BYTES` per wanted line.
fn tail_lines(mut file: &File, len: u64, n: usize) -> io::Result<TailLines> {
    let budget = MAX_LINE_BYTES.saturating_mul(n.max(1) as u64);
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    while pos > 0 && bytecount(&buf, b'\n') <= n && (buf.len() as u64) < budget {
        let step = TAIL_CHUNK_BYTES.min(pos);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let end = buf
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let partial_end = end != buf.len();
    let mut lines: Vec<Vec<u8>> = buf[..end]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.pop(); // the empty piece after the final newline
    if pos > 0 && !lines.is_empty() {
        lines.remove(0); // may start mid-line
    }
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    Ok(TailLines { lines, partial_end })
}

fn bytecount(buf: &[u8], b: u8) -> usize {
    buf.iter().filter(|&&x| x == b).count()
}

// ---------------------------------------------------------------------------
// Reading: a consistent snapshot of the file set
// ---------------------------------------------------------------------------

/// The rotated files and the live file, opened together under a shared lock so
/// that a concurrent rotation cannot make us skip or repeat a file. Each file is
/// read only up to the length it had then: later appends are not part of the
/// snapshot.
pub struct LogSet {
    files: Vec<(PathBuf, File, u64)>,
}

impl LogSet {
    pub fn open(path: &Path) -> Result<LogSet, AuditError> {
        if path == Path::new(STDOUT_PATH) {
            return Err(AuditError::Stdout);
        }
        // Readers never create the lock file (the log may be on a read-only copy).
        let lock = File::open(lock_path(path)).ok();
        let _held = match &lock {
            Some(l) => LockGuard::shared(l).ok(),
            None => None,
        };
        let mut files = Vec::new();
        let mut names: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, p)| p).collect();
        names.push(path.to_path_buf());
        for name in names {
            let file = File::open(&name).map_err(io_err(&name))?;
            let len = file.metadata().map_err(io_err(&name))?.len();
            files.push((name, file, len));
        }
        Ok(LogSet { files })
    }

    /// The files in chain order (oldest rotated first, live file last).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _, _)| p.clone()).collect()
    }

    /// Every line of the snapshot, in order.
    pub fn lines(self) -> RawLines {
        RawLines {
            files: self.files.into(),
            current: None,
        }
    }
}

/// One line as it is on disk.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub file: PathBuf,
    /// 1-based, within `file`.
    pub line: u64,
    /// The bytes without the newline.
    pub bytes: Vec<u8>,
    /// False for a final line with no newline (an unfinished write).
    pub terminated: bool,
}

pub struct RawLines {
    files: VecDeque<(PathBuf, File, u64)>,
    current: Option<(PathBuf, BufReader<io::Take<File>>, u64)>,
}

impl Iterator for RawLines {
    type Item = Result<RawLine, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let (path, file, len) = self.files.pop_front()?;
                self.current = Some((path, BufReader::new(file.take(len)), 0));
            }
            let (path, reader, line_no) = self.current.as_mut()?;
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Err(e) => {
                    let err = io_err(path)(e);
                    self.current = None;
                    return Some(Err(err));
                }
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {
                    *line_no += 1;
                    let terminated = bytes.last() == Some(&b'\n');
                    if terminated {
                        bytes.pop();
                    }
                    return Some(Ok(RawLine {
                        file: path.clone(),
                        line: *line_no,
                        bytes,
                        terminated,
                    }));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Verify
// ---------------------------------------------------------------------------

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
    let set = LogSet::open(path)?;
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

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

/// Which events to return. Every set field must match; `since` is inclusive,
/// `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub secret: Option<String>,
    pub agent: Option<String>,
    pub chain: Option<String>,
    pub outcome: Option<String>,
    pub event: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        if !(eq(&self.secret, ev.secret.as_deref())
            && eq(&self.agent, ev.agent.as_deref())
            && eq(&self.chain, ev.chain.as_deref())
            && eq(&self.outcome, Some(ev.outcome.as_str()))
            && eq(&self.event, Some(ev.event.as_str())))
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(ts) = OffsetDateTime::parse(&ev.ts, &Rfc3339) else {
            return false;
        };
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
    }
}

/// `2024-05-01T12:00:00Z` (RFC 3339), or a duration before `now`: `90s`, `15m`,
/// `1h`, `2d`, `1w`.
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, AuditError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let bad = || {
        AuditError::Filter(format!(
            "invalid time {s:?}: use RFC 3339 (2024-05-01T12:00:00Z) or an age like 1h, 2d"
        ))
    };
    let ago = humantime::parse_duration(s).map_err(|_| bad())?;
    let ago = time::Duration::try_from(ago).map_err(|_| bad())?;
    now.checked_sub(ago).ok_or_else(bad)
}

/// An event with the line it was read from.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: String,
    pub event: Event,
}

/// Matching records of the whole file set, oldest first. A line that is not an
/// event yields an `Err` naming it; iteration can continue past it.
pub fn query_iter(
    path: &Path,
    filter: &Filter,
) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    let filter = filter.clone();
    let lines = LogSet::open(path)?.lines();
    Ok(lines.filter_map(move |raw| {
        let raw = match raw {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let where_ = || format!("{}:{}", raw.file.display(), raw.line);
        let Ok(line) = String::from_utf8(raw.bytes.clone()) else {
            return Some(Err(corrupt(
                &raw.file,
                format!("line {}: not UTF-8", raw.line),
            )));
        };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) if filter.matches(&event) => Some(Ok(Record { line, event })),
            Ok(_) => None,
            Err(e) => Some(Err(AuditError::Corrupt {
                path: where_(),
                message: format!("not an audit event: {e}"),
            })),
        }
    }))
}

/// Matching events, oldest first; fails on the first unreadable line.
pub fn query(path: &Path, filter: &Filter) -> Result<Vec<Event>, AuditError> {
    query_iter(path, filter)?
        .map(|r| r.map(|rec| rec.event))
        .collect()
}

/// The last `n` lines of the file set (newest last), as they are on disk.
pub fn tail(path: &Path, n: usize) -> Result<Vec<String>, AuditError> {
    tail_of(&LogSet::open(path)?, n)
}

/// `tail`, plus a `Follower` that continues exactly where the tail ended.
pub fn tail_and_follow(path: &Path, n: usize) -> Result<(Vec<String>, Follower), AuditError> {
    let set = LogSet::open(path)?;
    let lines = tail_of(&set, n)?;
    let mut follower = Follower::empty(path);
    if let Some((name, file, len)) = set.files.last() {
        let meta = file.metadata().map_err(io_err(name))?;
        follower.id = file_id(&meta);
        follower.file = Some(file.try_clone().map_err(io_err(name))?);
        follower.offset = *len;
    }
    Ok((lines, follower))
}

fn tail_of(set: &LogSet, n: usize) -> Result<Vec<String>, AuditError> {
    let mut out: VecDeque<String> = VecDeque::new();
    for (name, file, len) in set.files.iter().rev() {
        if out.len() >= n {
            break;
        }
        let got = tail_lines(file, *len, n - out.len()).map_err(io_err(name))?;
        for line in got.lines.into_iter().rev() {
            out.push_front(String::from_utf8_lossy(&line).into_owned());
        }
    }
    Ok(out.into())
}

/// Follows the live file like `tail -f`, across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    id: Option<FileId>,
    offset: u64,
    pending: Vec<u8>,
}

impl Follower {
    fn empty(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            file: None,
            id: None,
            offset: 0,
            pending: Vec::new(),
        }
    }

    /// Starts at the current end of the live file.
    pub fn at_end(path: &Path) -> Result<Follower, AuditError> {
        if path == Path::new(STDOUT_PATH) {
            return Err(AuditError::Stdout);
        }
        let mut f = Follower::empty(path);
        if let Ok(file) = File::open(path) {
            let meta = file.metadata().map_err(io_err(path))?;
            f.offset = meta.len();
            f.id = file_id(&meta);
            f.file = Some(file);
        }
        Ok(f)
    }

    /// Complete lines appended since the last call.
    pub fn poll(&mut self) -> Result<Vec<String>, AuditError> {
        let mut out = self.drain()?;
        let on_disk = std::fs::metadata(&self.path).ok();
        let replaced = match (&on_disk, self.file.is_some()) {
            (Some(m), true) => file_id(m) != self.id,
            (Some(_), false) => true,
            (None, _) => false,
        };
        if replaced {
            // Our file was rotated away (we drained it above). Several rotations
            // may have happened since the last poll: read every file that came
            // after ours, then stay on the live one. The set is opened under the
            // shared lock, so no rotation slips between listing and opening.
            let set = match LogSet::open(&self.path) {
                Ok(set) => set,
                Err(AuditError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            let mut files = set.files;
            let ours = files.iter().position(|(_, f, _)| {
                self.id.is_some() && f.metadata().ok().and_then(|m| file_id(&m)) == self.id
            });
            let skip = ours.map(|i| i + 1).unwrap_or(files.len().saturating_sub(1));
            for (_, file, _) in files.drain(..).skip(skip) {
                self.id = file.metadata().ok().and_then(|m| file_id(&m));
                self.file = Some(file);
                self.offset = 0;
                self.pending.clear();
                out.extend(self.drain()?);
            }
        }
        Ok(out)
    }

    fn drain(&mut self) -> Result<Vec<String>, AuditError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.path))?;
        let mut buf = Vec::new();
        let n = file.read_to_end(&mut buf).map_err(io_err(&self.path))?;
        self.offset += n as u64;
        self.pending.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

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
    let stdout_err = |source| AuditError::Io {
        path: "<output>".into(),
        source,
    };
    let mut n = 0u64;
    for rec in query_iter(path, filter)? {
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
    use crate::clock::{rfc3339_millis, RFC3339_MILLIS_FORMAT, RFC3339_MILLIS_TEMPLATE};
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

    fn ev(event: &str, outcome: &str, agent: &str, secret: Option<&str>) -> Event {
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
    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
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

    fn rewrite_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        f(&mut lines);
        let mut out = lines.join("\n");
        out.push('\n');
        std::fs::write(path, out).unwrap();
    }

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

    #[test]
    fn query_filters_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let at = |ts: &str, mut e: Event| {
            e.ts = ts.into();
            e
        };
        log.record(at(
            "2024-05-01T10:00:00.000Z",
            ev("inject", "allowed", "a1", Some("OPENAI_API_KEY")),
        ))
        .unwrap();
        log.record(at(
            "2024-05-01T11:00:00.000Z",
            ev("deny", "denied", "a1", Some("SLACK_BOT_TOKEN")),
        ))
        .unwrap();
        let mut other_chain = ev("inject", "allowed", "a2", Some("OPENAI_API_KEY"));
        other_chain.chain = Some("billing".into());
        log.record(at("2024-05-01T12:00:00.000Z", other_chain))
            .unwrap();

        let count = |f: Filter| query(&path, &f).unwrap().len();
        assert_eq!(count(Filter::default()), 3);
        assert_eq!(
            count(Filter {
                secret: Some("OPENAI_API_KEY".into()),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                agent: Some("a1".into()),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                chain: Some("billing".into()),
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                outcome: Some("denied".into()),
                ..Filter::default()
            }),
            1
        );
        let now = OffsetDateTime::now_utc();
        let since = parse_time("2024-05-01T11:00:00Z", now).unwrap();
        let until = parse_time("2024-05-01T12:00:00Z", now).unwrap();
        assert_eq!(
            count(Filter {
                since: Some(since),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                since: Some(since),
                until: Some(until),
                ..Filter::default()
            }),
            1
        );
        let recent = parse_time("1h", now).unwrap();
        assert_eq!(
            count(Filter {
                since: Some(recent),
                ..Filter::default()
            }),
            0
        );
        let events = query(
            &path,
            &Filter {
                agent: Some("a1".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(events[1].secret.as_deref(), Some("SLACK_BOT_TOKEN"));
        assert!(!events[1].hash.is_empty());
    }

    #[test]
    fn relative_and_absolute_times_parse() {
        let now = OffsetDateTime::parse("2024-05-02T00:00:00Z", &Rfc3339).unwrap();
        let t = parse_time("2d", now).unwrap();
        assert_eq!(
            t,
            OffsetDateTime::parse("2024-04-30T00:00:00Z", &Rfc3339).unwrap()
        );
        assert_eq!(
            parse_time("90m", now).unwrap(),
            now - time::Duration::minutes(90)
        );
        assert!(parse_time("2024-05-01T12:00:00+02:00", now).is_ok());
        assert!(matches!(
            parse_time("yesterday", now),
            Err(AuditError::Filter(_))
        ));
    }

    #[test]
    fn tail_spans_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_rotating(&path, 700).unwrap();
        for i in 0..12 {
            log.record(ev("inject", "allowed", &format!("agent-{i}"), None))
                .unwrap();
        }
        assert!(!rotated_files(&path).unwrap().is_empty());
        let lines = tail(&path, 5).unwrap();
        assert_eq!(lines.len(), 5);
        for (k, line) in lines.iter().enumerate() {
            let e: Event = serde_json::from_str(line).unwrap();
            assert_eq!(e.agent.unwrap(), format!("agent-{}", 7 + k));
        }
        assert_eq!(tail(&path, 100).unwrap().len(), 12);
    }

    #[test]
    fn follower_sees_appends_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_rotating(&path, 500).unwrap();
        log.record(ev("inject", "allowed", "before", None)).unwrap();
        let mut f = Follower::at_end(&path).unwrap();
        assert!(f.poll().unwrap().is_empty());
        let mut seen = Vec::new();
        for i in 0..10 {
            log.record(ev("inject", "allowed", &format!("n{i}"), None))
                .unwrap();
            seen.extend(f.poll().unwrap());
        }
        // Several rotations between two polls lose nothing.
        let before = rotated_files(&path).unwrap().len();
        for i in 10..30 {
            log.record(ev("inject", "allowed", &format!("n{i}"), None))
                .unwrap();
        }
        assert!(rotated_files(&path).unwrap().len() >= before + 3);
        seen.extend(f.poll().unwrap());
        let agents: Vec<String> = seen
            .iter()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().agent.unwrap())
            .collect();
        assert_eq!(agents, (0..30).map(|i| format!("n{i}")).collect::<Vec<_>>());
    }

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

    /// Text that exercises every escaping rule: quotes, backslashes, all C0
    /// control bytes, DEL, `/`, and multi-byte UTF-8, mixed with plain runs.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let tricky = prop::sample::select(vec!['"', '\\', '/', '\u{7f}', 'é', '€', '😀', 'a']);
        let piece = prop_oneof![(0u8..0x80).prop_map(char::from), tricky, any::<char>(),];
        prop::collection::vec(piece, 0..24).prop_map(String::from_iter)
    }

    /// Any event, with each optional field present or absent at random.
    fn any_event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        // One per `Option<String>` field of `Event`.
        const OPTIONAL_STRINGS: usize = 15;
        (
            prop::collection::vec(json_text(), 3),
            prop::collection::vec(proptest::option::of(json_text()), OPTIONAL_STRINGS),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u16>()),
            prop::sample::select(EventKind::ALL.to_vec()),
            prop::sample::select(vec![Outcome::Allowed, Outcome::Denied, Outcome::Error]),
        )
            .prop_map(|(always, optional, version, status, kind, outcome)| {
                let mut always = always.into_iter();
                let mut optional = optional.into_iter();
                let mut text = || always.next().unwrap();
                let (ts, prev_hash, hash) = (text(), text(), text());
                let (event, outcome) = (kind, outcome);
                let mut opt = || optional.next().unwrap();
                Event {
                    ts,
                    event,
                    request_id: opt(),
                    agent: opt(),
                    owner: opt(),
                    builder: opt(),
                    chain: opt(),
                    run_id: opt(),
                    connection_id: opt(),
                    provider: opt(),
                    host: opt(),
                    method: opt(),
                    path: opt(),
                    secret: opt(),
                    scope: opt(),
                    tier: opt(),
                    version,
                    outcome,
                    reason: opt(),
                    status,
                    prev_hash,
                    hash,
                }
            })
    }

    proptest::proptest! {
        /// The line on disk must not depend on which writer produced it: the
        /// hand-written serializer is serde_json's output, byte for byte.
        #[test]
        fn hand_written_json_is_serde_json(ev in any_event()) {
            let mut body = Vec::new();
            ev.write_canonical_body(&mut body);
            body.push(b'}');
            proptest::prop_assert_eq!(
                String::from_utf8(body).unwrap(),
                serde_json::to_string(&ev).unwrap()
            );
        }

        /// Any instant from year 0 to 9999 formats as `time` formats it.
        #[test]
        fn hand_written_timestamp_is_time_formatting(
            secs in -62_167_219_200i64..=253_402_300_799,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap();
            let by_time = t.format(RFC3339_MILLIS_FORMAT).unwrap();
            proptest::prop_assert_eq!(rfc3339_millis(t), by_time);
        }
    }

    #[test]
    fn hand_written_json_escapes_every_control_byte_like_serde() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let mut e = Event::new(EventKind::Deny, Outcome::Allowed);
        e.reason = Some(all_ascii);
        e.status = Some(u16::MAX);
        e.version = Some(u32::MAX);
        let mut body = Vec::new();
        e.write_canonical_body(&mut body);
        body.push(b'}');
        assert_eq!(body, serde_json::to_vec(&e).unwrap());
    }

    #[test]
    fn hand_written_timestamp_matches_time_formatting() {
        let instants = [
            time::macros::datetime!(2024-02-29 23:59:59.999 UTC), // leap day
            time::macros::datetime!(2023-12-31 23:59:59.999_999_999 UTC), // end of year
            time::macros::datetime!(2024-01-01 00:00:00 UTC),
            time::macros::datetime!(1970-01-01 00:00:00.001 UTC),
            time::macros::datetime!(2000-02-29 12:34:56.078 UTC), // leap century
            time::macros::datetime!(0001-01-01 00:00:00 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.999 UTC),
            time::macros::datetime!(2024-06-30 10:00:00.5 +02:00), // fields as given
        ];
        for t in instants {
            assert_eq!(
                rfc3339_millis(t),
                t.format(RFC3339_MILLIS_FORMAT).unwrap(),
                "{t}"
            );
        }
        // The cases `time` still formats.
        for t in [
            time::macros::datetime!(-0001-12-31 23:00:00 UTC),
            time::macros::datetime!(-9999-01-01 00:00:00 UTC),
        ] {
            assert_eq!(
                rfc3339_millis(t),
                t.format(RFC3339_MILLIS_FORMAT).unwrap(),
                "{t}"
            );
        }
        // Truncated, not rounded, like `time`.
        assert_eq!(
            rfc3339_millis(time::macros::datetime!(2023-12-31 23:59:59.999_999_999 UTC)),
            "2023-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(time::macros::datetime!(2024-02-29 01:02:03.04 UTC)),
            "2024-02-29T01:02:03.040Z"
        );
        let now = now_rfc3339();
        assert_eq!(now.len(), RFC3339_MILLIS_TEMPLATE.len());
        assert!(OffsetDateTime::parse(&now, &Rfc3339).is_ok(), "{now}");
    }

    #[test]
    fn hex_string_is_lower_case_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_string(&bytes), hex::encode(&bytes));
        assert_eq!(hex_string(&[]), "");
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
        log.append(&mut log.inner.lock(), &mut batch).unwrap();
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

    #[test]
    fn stdout_log_refuses_reads() {
        assert!(matches!(verify(Path::new("-")), Err(AuditError::Stdout)));
        assert!(AuditLog::open_path(Path::new("-")).is_ok());
    }
}
