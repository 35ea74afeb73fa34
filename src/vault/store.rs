//! The vault file and its live snapshot. API contract used by the proxy, CLI and
//! admin API; see docs/vault.md for the format.
//!
//! Layout on disk (one file, text):
//! ```text
//! keyward-vault 1            ← magic and format version
//! { …JSON body… }            ← header (counter, master key id, KDF, wrapped data key,
//!                              seal epoch/count), records (each value sealed), agents
//! mac <64 hex>               ← HMAC-SHA256 (data-key sub-key) over everything above
//! ```
//! Beside it: `<file>.lock` (writer lock) and `<file>.counter` (last seen counter + MAC,
//! for rollback detection).

use super::crypto::{self, Key, Sealed};
use super::kind::SecretKind;
use crate::config::{valid_agent_id, valid_secret_name, VaultConfig};
use crate::secret::Secret;
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// First line of a vault file: magic and format version.
pub const FILE_MAGIC: &str = "keyward-vault";
pub const FILE_FORMAT: u32 = 2;
/// Format 1 (no secret kinds) is still read, and still written while every record
/// is an `api_key`, so older keywards keep reading such files.
pub const FILE_FORMAT_V1: u32 = 1;
/// Prefix of the last line, which carries the whole-file MAC.
const MAC_LINE_PREFIX: &[u8] = b"mac ";
/// A vault file larger than this is refused (it is not one of ours).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_VALUE_BYTES: usize = 64 << 10;
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_HOSTS: usize = 64;
pub const MAX_HOST_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SCOPE_LEN: usize = 160;
pub const MAX_RECORDS: usize = 100_000;
const MAX_MASTER_KEY_FILE_BYTES: u64 = 4096;
const MAX_COUNTER_FILE_BYTES: u64 = 256;
/// Encryptions under one record-sealing key before the next HKDF epoch key takes over:
/// NIST SP 800-38D allows 2^32 with random 96-bit nonces; we stay 16x below.
pub const SEAL_LIMIT_PER_KEY: u64 = 1 << 28;
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(60);
pub const MAX_ROTATE_EVERY: Duration = Duration::from_secs(100 * 365 * 86_400);
const RECORD_ID_BYTES: usize = 16;
/// Temp files older than this, left by a killed writer, are removed by the next writer.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// How long a writer waits for the lock, and how often it retries.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(10);
/// Reads of a file that keeps changing under a reader before giving up.
const LOAD_ATTEMPTS: u32 = 5;
/// Accepted Argon2id parameter ranges read from a vault header (bounds the work a
/// crafted header can ask for).
const ARGON2_MAX_T: u32 = 16;
const ARGON2_MIN_M_KIB: u32 = 8 * 1024;
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_P: u32 = 16;

pub const ENV_MASTER_KEY: &str = "KEYWARD_MASTER_KEY";
pub const ENV_MASTER_PASSPHRASE: &str = "KEYWARD_MASTER_PASSPHRASE";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("secret {name} not found in scope {scope}")]
    NotFound { scope: String, name: String },
    #[error("secret {name} already exists in scope {scope}")]
    Exists { scope: String, name: String },
    #[error("agent {0} already exists")]
    AgentExists(String),
}

fn ferr(path: &Path, message: impl Into<String>) -> VaultError {
    VaultError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn ioerr(path: &Path, what: &str, e: io::Error) -> VaultError {
    ferr(path, format!("{what}: {e}"))
}

/// A decrypted value, for the duration of one request.
#[derive(Debug, Clone)]
pub struct Opened {
    pub value: Secret,
    pub version: u32,
    /// Extra host restriction set with `--hosts` (empty = the provider's hosts).
    pub hosts: Vec<String>,
    pub kind: SecretKind,
}

/// Everything about a record except its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordMeta {
    pub scope: String,
    pub name: String,
    pub version: u32,
    pub hint: String,
    pub description: Option<String>,
    pub hosts: Vec<String>,
    /// RFC 3339 timestamps.
    pub created: String,
    pub updated: String,
    pub rotate_every: Option<String>,
    pub rotation_due: Option<String>,
    /// When the current value was set (RFC 3339); the rotation clock starts here.
    #[serde(default)]
    pub last_rotated: String,
    /// `api_key`, `oauth2`, `hmac` or `aws`.
    #[serde(default)]
    pub kind: SecretKind,
    /// Non-secret fields of multi-field kinds (client_id, token_url, access_key_id).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl RecordMeta {
    /// `rotation_due` parsed, if the record has a rotation period.
    pub fn due_at(&self) -> Option<OffsetDateTime> {
        self.rotation_due
            .as_deref()
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
    }
}

#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    pub description: Option<String>,
    pub hosts: Vec<String>,
    pub rotate_every: Option<Duration>,
}

/// An agent registered with `keyward agent add` (stored in the vault so that it
/// works without a config file and reloads like secrets do).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub token_sha256: String,
    pub chain: Option<String>,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub created: String,
}

// ---------------------------------------------------------------------------
// Validation

/// `platform`, or `kind:name` with kind in agent|chain|owner|builder and name made of
/// letters, digits, `-`, `_`, `.`.
pub fn valid_scope(scope: &str) -> bool {
    if scope == "platform" {
        return true;
    }
    if scope.len() > MAX_SCOPE_LEN {
        return false;
    }
    let Some((kind, name)) = scope.split_once(':') else {
        return false;
    };
    matches!(kind, "agent" | "chain" | "owner" | "builder")
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_scope(scope: &str) -> Result<(), VaultError> {
    // SECURITY: scopes select whose key an agent gets; a malformed one could alias
    // another tier (`owner:acme:x`) or smuggle separators into audit lines.
    if valid_scope(scope) {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid scope {scope:?}: use `platform` or `owner:NAME`, `builder:NAME`, `chain:NAME`, `agent:NAME`"
        )))
    }
}

fn check_name(name: &str) -> Result<(), VaultError> {
    if valid_secret_name(name) && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid secret name {name:?}: must match ^[A-Z_][A-Z0-9_]*$"
        )))
    }
}

/// Refuses values that cannot be injected safely. The message never contains the value.
pub fn check_value(value: &Secret) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::Invalid("secret value is empty".into()));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(VaultError::Invalid(format!(
            "secret value is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    // SECURITY: values end up in header lines, URLs and paths; CR/LF would let a stored
    // value split a header or smuggle a second one, NUL truncates in C clients.
    if value
        .expose()
        .iter()
        .any(|&b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(VaultError::Invalid(
            "secret value contains CR, LF or NUL".into(),
        ));
    }
    Ok(())
}

/// Lowercases, validates, sorts and dedups a host list (`api.example.com`, `*.example.com`).
pub fn normalize_hosts(hosts: &[String]) -> Result<Vec<String>, VaultError> {
    if hosts.len() > MAX_HOSTS {
        return Err(VaultError::Invalid(format!(
            "at most {MAX_HOSTS} hosts per secret"
        )));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        // SECURITY: the host list restricts where a value may be sent; anything that is
        // not a plain DNS name (ports, paths, wildcards in the middle) is refused rather
        // than matched loosely.
        let ok = !bare.is_empty()
            && h.len() <= MAX_HOST_LEN
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= MAX_DNS_LABEL_LEN
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(VaultError::Invalid(format!(
                "invalid host {h:?}: expected a DNS name like api.example.com"
            )));
        }
        out.push(h);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn check_description(d: &Option<String>) -> Result<(), VaultError> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION_BYTES => Err(VaultError::Invalid(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        ))),
        Some(d) if d.chars().any(char::is_control) => Err(VaultError::Invalid(
            "description contains control characters".into(),
        )),
        _ => Ok(()),
    }
}

fn rotate_secs(d: Option<Duration>) -> Result<Option<u64>, VaultError> {
    match d {
        None => Ok(None),
        Some(d) if d < MIN_ROTATE_EVERY || d > MAX_ROTATE_EVERY => Err(VaultError::Invalid(
            "rotation period must be between 1 minute and 100 years (e.g. 90d)".into(),
        )),
        Some(d) => Ok(Some(d.as_secs())),
    }
}

/// `90d`, `12h`, `30m` or `45s`: the shortest exact form.
pub fn format_period(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn now() -> String {
    crate::clock::now_rfc3339()
}

fn random_id() -> String {
    let mut b = [0u8; RECORD_ID_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

// ---------------------------------------------------------------------------
// Master key

/// Where the master key came from (for messages; never the key itself).
#[derive(Debug, Clone)]
pub enum MasterSource {
    EnvKey,
    EnvPassphrase,
    File(PathBuf),
    Given(String),
}

impl MasterSource {
    fn describe(&self) -> String {
        match self {
            MasterSource::EnvKey => format!("${ENV_MASTER_KEY}"),
            MasterSource::EnvPassphrase => format!("${ENV_MASTER_PASSPHRASE}"),
            MasterSource::File(p) => format!("master key file {}", p.display()),
            MasterSource::Given(s) => s.clone(),
        }
    }
}

/// Argon2id parameters and salt, stored in the vault header when the master key is
/// derived from a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub alg: String,
    pub salt: String,
    pub t: u32,
    pub m_kib: u32,
    pub p: u32,
}

impl KdfParams {
    fn fresh() -> KdfParams {
        let mut salt = [0u8; crypto::ARGON2_SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        KdfParams {
            alg: "argon2id".into(),
            salt: B64.encode(salt),
            t: crypto::ARGON2_T_COST,
            m_kib: crypto::ARGON2_M_COST_KIB,
            p: crypto::ARGON2_P_COST,
        }
    }
}

enum MasterSecret {
    Key(Key),
    Passphrase {
        pass: Zeroizing<Vec<u8>>,
        cache: Mutex<Option<(KdfParams, Key)>>,
    },
}

/// The master key, or the passphrase it is derived from.
pub struct MasterKey {
    source: MasterSource,
    secret: MasterSecret,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, ***)", self.source.describe())
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8], source: MasterSource) -> Result<MasterKey, VaultError> {
        let key = Key::from_bytes(bytes).ok_or_else(|| {
            VaultError::Invalid(format!(
                "{}: a master key is exactly 32 bytes",
                source.describe()
            ))
        })?;
        Ok(MasterKey {
            source,
            secret: MasterSecret::Key(key),
        })
    }

    /// Base64 (standard alphabet) of 32 bytes.
    pub fn from_base64(text: &str, source: MasterSource) -> Result<MasterKey, VaultError> {
        let raw = Zeroizing::new(B64.decode(text.trim().as_bytes()).map_err(|_| {
            VaultError::Invalid(format!("{}: not base64 of 32 bytes", source.describe()))
        })?);
        MasterKey::from_bytes(&raw, source)
    }

    pub fn from_passphrase(pass: &[u8], source: MasterSource) -> Result<MasterKey, VaultError> {
        if pass.is_empty() {
            return Err(VaultError::Invalid(format!(
                "{}: empty passphrase",
                source.describe()
            )));
        }
        Ok(MasterKey {
            source,
            secret: MasterSecret::Passphrase {
                pass: Zeroizing::new(pass.to_vec()),
                cache: Mutex::new(None),
            },
        })
    }

    /// A new random master key (not persisted).
    pub fn generate() -> MasterKey {
        MasterKey {
            source: MasterSource::Given("generated key".into()),
            secret: MasterSecret::Key(Key::random()),
        }
    }

    /// `$KEYWARD_MASTER_KEY`, else `$KEYWARD_MASTER_PASSPHRASE`, else the key file
    /// (created 0600 with a random key if absent).
    pub fn from_env_or_file(cfg: &VaultConfig) -> Result<MasterKey, VaultError> {
        if let Some(v) = std::env::var_os(ENV_MASTER_KEY).filter(|v| !v.is_empty()) {
            let v = Zeroizing::new(v.into_string().map_err(|_| {
                VaultError::Invalid(format!("${ENV_MASTER_KEY}: not base64 of 32 bytes"))
            })?);
            return MasterKey::from_base64(&v, MasterSource::EnvKey);
        }
        if let Some(v) = std::env::var_os(ENV_MASTER_PASSPHRASE).filter(|v| !v.is_empty()) {
            use std::os::unix::ffi::OsStringExt;
            let pass = Zeroizing::new(v.into_vec());
            return MasterKey::from_passphrase(&pass, MasterSource::EnvPassphrase);
        }
        // SECURITY: a vault without its key file must not get a fresh random key: the
        // vault would look "wrong key" forever and the new key invite a silent reset.
        if !cfg.master_key_file.exists() && cfg.path.exists() {
            return Err(ferr(
                &cfg.master_key_file,
                format!(
                    "master key file is missing but the vault {} exists; restore the key file \
                     or set ${ENV_MASTER_KEY} / ${ENV_MASTER_PASSPHRASE}",
                    cfg.path.display()
                ),
            ));
        }
        MasterKey::load_or_create_file(&cfg.master_key_file)
    }

    /// Reads a key file (base64 of 32 bytes, or the 32 raw bytes); creates it with a
    /// fresh random key, mode 0600, parent directories 0700, if it does not exist.
    pub fn load_or_create_file(path: &Path) -> Result<MasterKey, VaultError> {
        match MasterKey::create_file(path) {
            Ok(key) => return Ok(key),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ioerr(path, "cannot create the master key file", e)),
        }
        MasterKey::load_file(path)
    }

    pub fn load_file(path: &Path) -> Result<MasterKey, VaultError> {
        let file =
            File::open(path).map_err(|e| ioerr(path, "cannot read the master key file", e))?;
        let md = file
            .metadata()
            .map_err(|e| ioerr(path, "cannot read the master key file", e))?;
        // SECURITY: the master key opens every secret; say so if others can read it
        // (a warning, not a refusal: Kubernetes mounts Secrets 0644 by default).
        if md.permissions().mode() & 0o077 != 0 && md.file_type().is_file() {
            tracing::warn!(path = %path.display(), "master key file is readable by group or others; chmod 600 it");
        }
        let mut raw = Zeroizing::new(Vec::new());
        file.take(MAX_MASTER_KEY_FILE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|e| ioerr(path, "cannot read the master key file", e))?;
        let source = MasterSource::File(path.to_path_buf());
        if let Some(k) = std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| MasterKey::from_base64(t, source.clone()).ok())
        {
            return Ok(k);
        }
        if raw.len() == crypto::KEY_LEN {
            return MasterKey::from_bytes(&raw, source);
        }
        Err(ferr(path, "not a master key (expected base64 of 32 bytes)"))
    }

    /// Writes a new random key to `path` (must not exist): `create_new`, mode 0600.
    pub fn create_file(path: &Path) -> io::Result<MasterKey> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let key = Key::random();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let text = Zeroizing::new(format!("{}\n", B64.encode(key.expose())));
        let res = f.write_all(text.as_bytes()).and_then(|_| f.sync_all());
        if let Err(e) = res {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(MasterKey {
            source: MasterSource::File(path.to_path_buf()),
            secret: MasterSecret::Key(key),
        })
    }

    pub fn source(&self) -> &MasterSource {
        &self.source
    }

    fn is_passphrase(&self) -> bool {
        matches!(self.secret, MasterSecret::Passphrase { .. })
    }

    /// The concrete key for a vault whose header carries `kdf` (`None`: a raw key, or
    /// a new vault). Returns the KDF parameters to store in the header.
    fn resolve(
        &self,
        kdf: Option<&KdfParams>,
        path: &Path,
    ) -> Result<(Key, Option<KdfParams>), VaultError> {
        match &self.secret {
            MasterSecret::Key(k) => Ok((k.clone(), None)),
            MasterSecret::Passphrase { pass, cache } => {
                let mut cache = cache.lock();
                // A new vault reuses the salt already derived in this process.
                let params = match kdf {
                    Some(k) => k.clone(),
                    None => cache
                        .as_ref()
                        .map(|(p, _)| p.clone())
                        .unwrap_or_else(KdfParams::fresh),
                };
                if let Some((p, k)) = cache.as_ref() {
                    if *p == params {
                        return Ok((k.clone(), Some(params)));
                    }
                }
                // SECURITY: the header is read before it is authenticated; bound the work
                // (memory, passes) a crafted header can make us spend.
                if params.alg != "argon2id"
                    || !(1..=ARGON2_MAX_T).contains(&params.t)
                    || !(ARGON2_MIN_M_KIB..=ARGON2_MAX_M_KIB).contains(&params.m_kib)
                    || !(1..=ARGON2_MAX_P).contains(&params.p)
                {
                    return Err(ferr(
                        path,
                        "unsupported key-derivation parameters in the header",
                    ));
                }
                let salt = B64
                    .decode(&params.salt)
                    .map_err(|_| ferr(path, "bad key-derivation salt in the header"))?;
                let key = crypto::passphrase_key(pass, &salt, params.t, params.m_kib, params.p)?;
                *cache = Some((params.clone(), key.clone()));
                Ok((key, Some(params)))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// File body

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    /// Monotonic file version: +1 on every write.
    counter: u64,
    master: MasterHeader,
    /// The data key, sealed under the master key's wrapping sub-key (base64 blob).
    data_key: String,
    seal: SealState,
    records: Vec<StoredRecord>,
    #[serde(default)]
    agents: Vec<AgentRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterHeader {
    key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
}

/// Current record-sealing epoch and how many encryptions it has done.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealState {
    epoch: u64,
    count: u64,
}

/// How to take back one secret change that could not be audited: the record as
/// it was (still sealed: no plaintext is kept) and the id/version the change left,
/// so that [`Vault::undo`] never overwrites a later change.
pub struct Undo {
    scope: String,
    name: String,
    before: Option<StoredRecord>,
    after: Option<(String, u32)>,
}

impl Undo {
    fn of(
        scope: &str,
        name: &str,
        before: Option<StoredRecord>,
        after: Option<&StoredRecord>,
    ) -> Undo {
        Undo {
            scope: scope.to_string(),
            name: name.to_string(),
            before,
            after: after.map(|r| (r.id.clone(), r.version)),
        }
    }

    /// The change replaced (or removed) a record that existed before it.
    pub fn replaced(&self) -> bool {
        self.before.is_some()
    }
}

impl fmt::Debug for Undo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Undo({}/{})", self.scope, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    id: String,
    scope: String,
    name: String,
    version: u32,
    hint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    created: String,
    updated: String,
    last_rotated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotate_every_secs: Option<u64>,
    /// Absent (format 1) = `api_key`.
    #[serde(default, skip_serializing_if = "SecretKind::is_api_key")]
    kind: SecretKind,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    public: BTreeMap<String, String>,
    /// `"KWS" | format | epoch | nonce | ciphertext+tag`, base64.
    sealed: String,
}

impl StoredRecord {
    fn aad(&self) -> Vec<u8> {
        let mut aad =
            crypto::record_aad(&self.id, &self.scope, &self.name, self.version, &self.hosts);
        // SECURITY: the kind and public fields (an OAuth2 token URL, where the client
        // secret is sent) are authenticated with the value.
        if !self.kind.is_api_key() || !self.public.is_empty() {
            crypto::extend_record_aad(&mut aad, self.kind.as_str(), &self.public);
        }
        aad
    }

    fn meta(&self) -> RecordMeta {
        let due = self.rotate_every_secs.and_then(|secs| {
            let last = OffsetDateTime::parse(&self.last_rotated, &Rfc3339).ok()?;
            let due = last.checked_add(time::Duration::seconds(i64::try_from(secs).ok()?))?;
            due.format(&Rfc3339).ok()
        });
        RecordMeta {
            scope: self.scope.clone(),
            name: self.name.clone(),
            version: self.version,
            hint: self.hint.clone(),
            description: self.description.clone(),
            hosts: self.hosts.clone(),
            created: self.created.clone(),
            updated: self.updated.clone(),
            rotate_every: self.rotate_every_secs.map(format_period),
            rotation_due: due,
            last_rotated: self.last_rotated.clone(),
            kind: self.kind,
            fields: self.public.clone(),
        }
    }
}

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

/// A verified file, ready to read or modify.
struct Draft {
    body: FileBody,
    data_key: Arc<Key>,
    seal_limit: u64,
}

impl Draft {
    fn fresh(master: &MasterKey, path: &Path) -> Result<Draft, VaultError> {
        let (mk, kdf) = master.resolve(None, path)?;
        let data_key = Key::random();
        let wrapped = crypto::wrap_data_key(&mk, &data_key)?;
        Ok(Draft {
            body: FileBody {
                counter: 0,
                master: MasterHeader {
                    key_id: hex::encode(mk.key_id()),
                    kdf,
                },
                data_key: B64.encode(wrapped.encode()),
                seal: SealState { epoch: 0, count: 0 },
                records: Vec::new(),
                agents: Vec::new(),
            },
            data_key: Arc::new(data_key),
            seal_limit: SEAL_LIMIT_PER_KEY,
        })
    }

    fn find(&self, scope: &str, name: &str) -> Option<usize> {
        self.body
            .records
            .iter()
            .position(|r| r.scope == scope && r.name == name)
    }

    /// Seals `value` for `rec` (whose id/scope/name/version/hosts are final).
    fn seal_into(&mut self, rec: &mut StoredRecord, value: &[u8]) -> Result<(), VaultError> {
        // SECURITY: random 96-bit nonces collide with non-negligible probability after
        // ~2^32 encryptions under one key; move to a fresh HKDF epoch key well before.
        if self.body.seal.count >= self.seal_limit {
            self.body.seal.epoch =
                self.body.seal.epoch.checked_add(1).ok_or_else(|| {
                    VaultError::Invalid("record-sealing key epochs exhausted".into())
                })?;
            self.body.seal.count = 0;
        }
        self.body.seal.count += 1;
        let epoch = self.body.seal.epoch;
        let key = crypto::record_key(&self.data_key, epoch);
        let sealed = crypto::seal(&key, epoch.to_be_bytes(), &rec.aad(), value)?;
        rec.sealed = B64.encode(sealed.encode());
        Ok(())
    }

    /// Opens `rec` with the current data key.
    fn open(&self, rec: &StoredRecord, path: &Path) -> Result<Secret, VaultError> {
        open_record(&self.data_key, rec, &decode_sealed(rec, path)?, path)
    }

    /// The file bytes and the MAC (hex).
    fn encode(&self) -> Result<(Vec<u8>, String), VaultError> {
        let format = if self.body.records.iter().all(|r| r.kind.is_api_key()) {
            FILE_FORMAT_V1
        } else {
            FILE_FORMAT
        };
        let mut out = format!("{FILE_MAGIC} {format}\n").into_bytes();
        serde_json::to_writer_pretty(&mut out, &self.body)
            .map_err(|e| VaultError::Invalid(format!("cannot encode the vault: {e}")))?;
        out.push(b'\n');
        let mac = hex::encode(crypto::file_mac(&self.data_key, &out));
        out.extend_from_slice(MAC_LINE_PREFIX);
        out.extend_from_slice(mac.as_bytes());
        out.push(b'\n');
        Ok((out, mac))
    }
}

fn describe_value(
    kind: SecretKind,
    value: &Secret,
) -> Result<(BTreeMap<String, String>, String), VaultError> {
    super::kind::describe(kind, value).map_err(VaultError::Invalid)
}

fn decode_sealed(rec: &StoredRecord, path: &Path) -> Result<Sealed, VaultError> {
    let raw = B64.decode(&rec.sealed).map_err(|_| {
        ferr(
            path,
            format!("record {}/{} is not valid base64", rec.scope, rec.name),
        )
    })?;
    Sealed::decode(&raw).map_err(|m| ferr(path, format!("record {}/{}: {m}", rec.scope, rec.name)))
}

fn open_record(
    data_key: &Key,
    rec: &StoredRecord,
    sealed: &Sealed,
    path: &Path,
) -> Result<Secret, VaultError> {
    let key = crypto::record_key(data_key, sealed.epoch());
    // SECURITY: the AAD binds id, scope, name, version and hosts: a sealed value copied
    // to another record, or a record whose host list was edited, fails here.
    match crypto::open(&key, sealed, &rec.aad()) {
        Some(mut plain) => Ok(Secret::new(std::mem::take(&mut *plain))),
        None => Err(ferr(
            path,
            format!(
                "record {}/{} fails authentication (moved, edited or corrupted)",
                rec.scope, rec.name
            ),
        )),
    }
}

/// The parts of a vault file: (bytes the MAC covers, JSON body, MAC hex).
type FileParts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits `magic line | body | mac line`.
fn split_file<'a>(bytes: &'a [u8], path: &Path) -> Result<FileParts<'a>, VaultError> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| ferr(path, "not a keyward vault file"))?;
    let first =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| ferr(path, "not a keyward vault file"))?;
    match first.split_once(' ') {
        Some((FILE_MAGIC, v))
            if v == FILE_FORMAT.to_string() || v == FILE_FORMAT_V1.to_string() => {}
        Some((FILE_MAGIC, v)) => {
            return Err(ferr(
                path,
                format!("vault format {v} is not supported (this keyward reads {FILE_FORMAT})"),
            ))
        }
        _ => return Err(ferr(path, "not a keyward vault file")),
    }
    // The MAC line is the last line; anything cut off before it is a truncation.
    let trimmed = bytes
        .strip_suffix(b"\n")
        .ok_or_else(|| ferr(path, "truncated (no final newline)"))?;
    let last_nl = trimmed
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or_else(|| ferr(path, "truncated (no MAC line)"))?;
    let mac_line = &trimmed[last_nl + 1..];
    let mac_hex = mac_line
        .strip_prefix(MAC_LINE_PREFIX)
        .ok_or_else(|| ferr(path, "truncated (no MAC line)"))?;
    if last_nl < nl {
        return Err(ferr(path, "truncated (no body)"));
    }
    let signed = &bytes[..last_nl + 1];
    Ok((signed, &bytes[nl + 1..last_nl + 1], mac_hex))
}

// ---------------------------------------------------------------------------
// Snapshot

struct SnapRecord {
    stored: StoredRecord,
    sealed: Sealed,
    /// The value, opened on first use and kept for this snapshot's lifetime.
    opened: std::sync::OnceLock<Secret>,
}

/// One immutable, verified view of the vault. Values stay sealed until `get`.
pub struct Snapshot {
    path: PathBuf,
    records: BTreeMap<(String, String), SnapRecord>,
    agents: Vec<AgentRecord>,
    generation: u64,
    data_key: Option<Arc<Key>>,
}

impl Snapshot {
    fn empty(path: &Path, generation: u64) -> Snapshot {
        Snapshot {
            path: path.to_path_buf(),
            records: BTreeMap::new(),
            agents: Vec::new(),
            generation,
            data_key: None,
        }
    }

    /// Builds (and, with `verify`, opens every record once to prove it authentic).
    fn build(
        body: &FileBody,
        data_key: &Arc<Key>,
        path: &Path,
        verify: bool,
    ) -> Result<Snapshot, VaultError> {
        if body.records.len() > MAX_RECORDS {
            return Err(ferr(path, format!("more than {MAX_RECORDS} records")));
        }
        let mut records = BTreeMap::new();
        for rec in &body.records {
            // SECURITY: even an authenticated file must not carry names or scopes the
            // rest of keyward would interpret differently.
            if !valid_scope(&rec.scope) || !valid_secret_name(&rec.name) {
                return Err(ferr(
                    path,
                    format!(
                        "record {:?}/{:?} has an invalid scope or name",
                        rec.scope, rec.name
                    ),
                ));
            }
            let sealed = decode_sealed(rec, path)?;
            if verify {
                drop(open_record(data_key, rec, &sealed, path)?);
            }
            let key = (rec.scope.clone(), rec.name.clone());
            // SECURITY: two records for one (scope, name) would make which value is
            // injected depend on map order.
            if records
                .insert(
                    key,
                    SnapRecord {
                        stored: rec.clone(),
                        sealed,
                        opened: std::sync::OnceLock::new(),
                    },
                )
                .is_some()
            {
                return Err(ferr(
                    path,
                    format!("record {}/{} appears twice", rec.scope, rec.name),
                ));
            }
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            records,
            agents: body.agents.clone(),
            generation: body.counter,
            data_key: Some(data_key.clone()),
        })
    }

    /// Opens the record `name` in `scope`, if present.
    pub fn get(&self, scope: &str, name: &str) -> Result<Option<Opened>, VaultError> {
        let Some(rec) = self.records.get(&(scope.to_string(), name.to_string())) else {
            return Ok(None);
        };
        let Some(dk) = &self.data_key else {
            return Ok(None);
        };
        // SECURITY: the opened value is cached in this (immutable) snapshot so the
        // request path does not derive a key and run AES-GCM per request. It adds no
        // exposure: the process already holds the data key that opens every record.
        // It is zeroized when the snapshot is replaced (any vault change) and
        // dropped by the last request using it.
        let value = match rec.opened.get() {
            Some(v) => v.clone(),
            None => {
                let v = open_record(dk, &rec.stored, &rec.sealed, &self.path)?;
                rec.opened.get_or_init(|| v).clone()
            }
        };
        Ok(Some(Opened {
            value,
            version: rec.stored.version,
            hosts: rec.stored.hosts.clone(),
            kind: rec.stored.kind,
        }))
    }

    /// Metadata of one record (never the value).
    pub fn meta(&self, scope: &str, name: &str) -> Option<RecordMeta> {
        self.records
            .get(&(scope.to_string(), name.to_string()))
            .map(|r| r.stored.meta())
    }

    /// All records (of `scope` if given), sorted by scope then name.
    pub fn list(&self, scope: Option<&str>) -> Vec<RecordMeta> {
        self.records
            .values()
            .filter(|r| scope.is_none_or(|s| r.stored.scope == s))
            .map(|r| r.stored.meta())
            .collect()
    }

    pub fn agents(&self) -> &[AgentRecord] {
        &self.agents
    }

    /// Monotonic file version counter of this snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Vault

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

    /// The current contents; cheap (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Re-reads the file if it changed on disk. `Ok(true)` if a new snapshot was loaded;
    /// on error the last good snapshot stays.
    pub fn reload(&self) -> Result<bool, VaultError> {
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

    /// Polls `reload()` every `every`; logs failures (never values) once per distinct
    /// error. Stops when the vault is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Vault> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                let Some(vault) = weak.upgrade() else { break };
                let res = tokio::task::spawn_blocking(move || {
                    let r = vault.reload();
                    (r, vault.snapshot().generation())
                })
                .await;
                match res {
                    Ok((Ok(true), generation)) => {
                        tracing::info!(generation, "vault reloaded");
                        last_error = None;
                    }
                    Ok((Ok(false), _)) => {}
                    Ok((Err(e), generation)) => {
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(error = %msg, generation, "vault reload failed; keeping the last good snapshot");
                        }
                        last_error = Some(msg);
                    }
                    Err(e) => tracing::warn!(error = %e, "vault reload task failed"),
                }
            }
        })
    }

    pub fn set(
        &self,
        scope: &str,
        name: &str,
        value: Secret,
        opts: SetOptions,
    ) -> Result<RecordMeta, VaultError> {
        self.set_with_kind(scope, name, value, None, opts)
    }

    /// `set` with a kind: `None` keeps an existing record's kind (`api_key` for a
    /// new one). Multi-field kinds are checked before anything is written.
    pub fn set_with_kind(
        &self,
        scope: &str,
        name: &str,
        value: Secret,
        kind: Option<SecretKind>,
        opts: SetOptions,
    ) -> Result<RecordMeta, VaultError> {
        self.set_undoable(scope, name, value, kind, opts)
            .map(|(meta, _)| meta)
    }

    /// [`Vault::set_with_kind`], also returning how to take the change back
    /// (for a caller that must fail closed when it cannot audit the change).
    pub fn set_undoable(
        &self,
        scope: &str,
        name: &str,
        value: Secret,
        kind: Option<SecretKind>,
        opts: SetOptions,
    ) -> Result<(RecordMeta, Undo), VaultError> {
        check_scope(scope)?;
        check_name(name)?;
        check_value(&value)?;
        check_description(&opts.description)?;
        let hosts = normalize_hosts(&opts.hosts)?;
        let every = rotate_secs(opts.rotate_every)?;
        self.mutate(|d| {
            let before = d.find(scope, name).map(|i| d.body.records[i].clone());
            let ts = now();
            let mut rec = match d.find(scope, name) {
                Some(i) => {
                    let mut r = d.body.records.remove(i);
                    r.version = r
                        .version
                        .checked_add(1)
                        .ok_or_else(|| VaultError::Invalid("version counter exhausted".into()))?;
                    if opts.description.is_some() {
                        r.description = opts.description.clone();
                    }
                    if !hosts.is_empty() {
                        r.hosts = hosts.clone();
                    }
                    if every.is_some() {
                        r.rotate_every_secs = every;
                    }
                    if let Some(k) = kind {
                        r.kind = k;
                    }
                    r
                }
                None => StoredRecord {
                    id: random_id(),
                    scope: scope.to_string(),
                    name: name.to_string(),
                    version: 1,
                    hint: String::new(),
                    description: opts.description.clone(),
                    hosts: hosts.clone(),
                    created: ts.clone(),
                    updated: String::new(),
                    last_rotated: String::new(),
                    rotate_every_secs: every,
                    kind: kind.unwrap_or_default(),
                    public: BTreeMap::new(),
                    sealed: String::new(),
                },
            };
            let (public, hint) = describe_value(rec.kind, &value)?;
            rec.public = public;
            rec.hint = hint;
            rec.updated = ts.clone();
            rec.last_rotated = ts;
            d.seal_into(&mut rec, value.expose())?;
            let meta = rec.meta();
            let undo = Undo::of(scope, name, before, Some(&rec));
            d.body.records.push(rec);
            Ok((meta, undo))
        })
    }

    /// New value, version + 1; the old value is dropped.
    pub fn rotate(&self, scope: &str, name: &str, value: Secret) -> Result<RecordMeta, VaultError> {
        self.rotate_undoable(scope, name, value)
            .map(|(meta, _)| meta)
    }

    /// [`Vault::rotate`], also returning how to take the change back.
    pub fn rotate_undoable(
        &self,
        scope: &str,
        name: &str,
        value: Secret,
    ) -> Result<(RecordMeta, Undo), VaultError> {
        check_scope(scope)?;
        check_name(name)?;
        check_value(&value)?;
        self.mutate(|d| {
            let i = d.find(scope, name).ok_or_else(|| not_found(scope, name))?;
            let mut rec = d.body.records.remove(i);
            let before = Some(rec.clone());
            rec.version = rec
                .version
                .checked_add(1)
                .ok_or_else(|| VaultError::Invalid("version counter exhausted".into()))?;
            let ts = now();
            let (public, hint) = describe_value(rec.kind, &value)?;
            rec.public = public;
            rec.hint = hint;
            rec.updated = ts.clone();
            rec.last_rotated = ts;
            d.seal_into(&mut rec, value.expose())?;
            let meta = rec.meta();
            let undo = Undo::of(scope, name, before, Some(&rec));
            d.body.records.push(rec);
            Ok((meta, undo))
        })
    }

    pub fn remove(&self, scope: &str, name: &str) -> Result<(), VaultError> {
        self.remove_returning(scope, name).map(|_| ())
    }

    /// Removes and returns the removed record's metadata.
    pub fn remove_returning(&self, scope: &str, name: &str) -> Result<RecordMeta, VaultError> {
        self.remove_undoable(scope, name).map(|(meta, _)| meta)
    }

    /// [`Vault::remove_returning`], also returning how to take the change back.
    pub fn remove_undoable(
        &self,
        scope: &str,
        name: &str,
    ) -> Result<(RecordMeta, Undo), VaultError> {
        check_scope(scope)?;
        check_name(name)?;
        self.mutate(|d| {
            let i = d.find(scope, name).ok_or_else(|| not_found(scope, name))?;
            let rec = d.body.records.remove(i);
            let meta = rec.meta();
            Ok((meta, Undo::of(scope, name, Some(rec), None)))
        })
    }

    /// Puts a record back as it was before the change `undo` came from. Refused
    /// when the record has changed again since, so a later change is never lost.
    pub fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        self.mutate(|d| {
            let current = d.find(&undo.scope, &undo.name);
            let now = current.map(|i| {
                let r = &d.body.records[i];
                (r.id.clone(), r.version)
            });
            if now != undo.after {
                return Err(VaultError::Invalid(format!(
                    "secret {} in scope {} changed again since; not undone",
                    undo.name, undo.scope
                )));
            }
            if let Some(i) = current {
                d.body.records.remove(i);
            }
            // The record goes back exactly as it was stored (sealed under the same
            // data key, same AAD), so it opens as before.
            if let Some(rec) = undo.before {
                d.body.records.push(rec);
            }
            Ok(())
        })
    }

    /// Copies `name` from scope `from` into scope `to` (which must not have it): a new
    /// record (version 1) with the same value, metadata and rotation clock.
    pub fn clone_secret(&self, name: &str, from: &str, to: &str) -> Result<RecordMeta, VaultError> {
        self.clone_undoable(name, from, to).map(|(meta, _)| meta)
    }

    /// [`Vault::clone_secret`], also returning how to take the change back.
    pub fn clone_undoable(
        &self,
        name: &str,
        from: &str,
        to: &str,
    ) -> Result<(RecordMeta, Undo), VaultError> {
        check_scope(from)?;
        check_scope(to)?;
        check_name(name)?;
        if from == to {
            return Err(VaultError::Invalid(
                "--from-scope and --to-scope are the same".into(),
            ));
        }
        let path = self.path.clone();
        self.mutate(|d| {
            let src =
                d.body.records[d.find(from, name).ok_or_else(|| not_found(from, name))?].clone();
            if d.find(to, name).is_some() {
                return Err(VaultError::Exists {
                    scope: to.to_string(),
                    name: name.to_string(),
                });
            }
            let value = d.open(&src, &path)?;
            let ts = now();
            let mut rec = StoredRecord {
                id: random_id(),
                scope: to.to_string(),
                version: 1,
                created: ts.clone(),
                updated: ts,
                sealed: String::new(),
                ..src
            };
            d.seal_into(&mut rec, value.expose())?;
            let meta = rec.meta();
            let undo = Undo::of(to, name, None, Some(&rec));
            d.body.records.push(rec);
            Ok((meta, undo))
        })
    }

    pub fn list(&self, scope: Option<&str>) -> Vec<RecordMeta> {
        self.snapshot().list(scope)
    }

    /// Inserts or replaces (by id).
    pub fn put_agent(&self, agent: AgentRecord) -> Result<(), VaultError> {
        check_agent(&agent)?;
        self.mutate(|d| {
            match d.body.agents.iter_mut().find(|a| a.id == agent.id) {
                Some(a) => *a = agent,
                None => d.body.agents.push(agent),
            }
            Ok(())
        })
    }

    /// Inserts a new agent; an id already in the table is refused inside the
    /// same locked write, so two concurrent creations cannot both succeed.
    pub fn add_agent(&self, agent: AgentRecord) -> Result<(), VaultError> {
        check_agent(&agent)?;
        self.mutate(|d| {
            // SECURITY: replacing an existing id would swap its token (and take
            // over its identity in the audit trail).
            if d.body.agents.iter().any(|a| a.id == agent.id) {
                return Err(VaultError::AgentExists(agent.id.clone()));
            }
            d.body.agents.push(agent);
            Ok(())
        })
    }

    pub fn remove_agent(&self, id: &str) -> Result<bool, VaultError> {
        self.mutate(|d| {
            let before = d.body.agents.len();
            d.body.agents.retain(|a| a.id != id);
            Ok(d.body.agents.len() != before)
        })
    }

    /// A 32-byte key derived (HKDF, its own label) from the master key, for signing
    /// session tokens; identical on every replica that shares the master key.
    pub fn session_key(&self) -> Secret {
        Secret::new(self.session.read().expose().to_vec())
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
        let (_, body, _) = split_file(&bytes, &self.path)?;
        let body: FileBody =
            serde_json::from_slice(body).map_err(|e| ferr(&self.path, format!("corrupt: {e}")))?;
        Ok(body.master.kdf)
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
        let path = &self.path;
        let (signed, body, mac_hex) = split_file(bytes, path)?;
        let body: FileBody = serde_json::from_slice(body)
            .map_err(|e| ferr(path, format!("corrupt vault body: {e}")))?;
        let master = self.master.read().clone();
        let (mk, _) = master.resolve(body.master.kdf.as_ref(), path)?;
        let ours = hex::encode(mk.key_id());
        // SECURITY: a wrong key must be refused before anything is written with it,
        // or the next write would re-seal the vault under a key nobody else has.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            ours.as_bytes(),
            body.master.key_id.as_bytes(),
        )) {
            let hint = match (body.master.kdf.is_some(), master.is_passphrase()) {
                (true, false) => {
                    format!(" (it was sealed with a passphrase: set ${ENV_MASTER_PASSPHRASE})")
                }
                (false, true) => format!(
                    " (it was sealed with a key, not a passphrase: unset ${ENV_MASTER_PASSPHRASE})"
                ),
                _ => String::new(),
            };
            return Err(ferr(
                path,
                format!(
                    "wrong master key: the vault is sealed under key id {}, {} has id {ours}{hint}",
                    body.master.key_id,
                    master.source.describe()
                ),
            ));
        }
        let wrapped = B64
            .decode(&body.data_key)
            .ok()
            .and_then(|raw| Sealed::decode(&raw).ok())
            .ok_or_else(|| ferr(path, "corrupt wrapped data key"))?;
        let data_key = crypto::unwrap_data_key(&mk, &wrapped).ok_or_else(|| {
            ferr(
                path,
                "cannot unwrap the data key: wrong master key or corrupted header",
            )
        })?;
        let tag = hex::decode(mac_hex).map_err(|_| ferr(path, "corrupt MAC line"))?;
        // SECURITY: the whole-file MAC catches edits, truncation and deleted records
        // before any of the content is trusted.
        if !crypto::verify_file_mac(&data_key, signed, &tag) {
            return Err(ferr(
                path,
                "integrity check failed: the file was modified, truncated or corrupted",
            ));
        }
        let mac = hex::encode(&tag);
        self.check_not_rolled_back(body.counter, &mac)?;
        Ok(Draft {
            body,
            data_key: Arc::new(data_key),
            seal_limit: self.seal_limit,
        })
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

fn not_found(scope: &str, name: &str) -> VaultError {
    VaultError::NotFound {
        scope: scope.to_string(),
        name: name.to_string(),
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory:
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

/// What every stored agent must satisfy.
fn check_agent(agent: &AgentRecord) -> Result<(), VaultError> {
    if !valid_agent_id(&agent.id) {
        return Err(VaultError::Invalid(format!(
            "invalid agent id {:?}",
            agent.id
        )));
    }
    // SECURITY: only a digest is stored; refuse anything that looks like a raw token.
    if agent.token_sha256.len() != 64
        || !agent
            .token_sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(VaultError::Invalid(
            "token_sha256 must be 64 lowercase hex digits".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        v.set(
            "platform",
            "A",
            Secret::from_str("value-of-a-123456"),
            hosts,
        )
        .unwrap();
        v.set(
            "platform",
            "B",
            Secret::from_str("value-of-b-123456"),
            SetOptions::default(),
        )
        .unwrap();
        v.set(
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
        v.set(
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

    #[test]
    fn period_formatting() {
        assert_eq!(format_period(90 * 86_400), "90d");
        assert_eq!(format_period(7_200), "2h");
        assert_eq!(format_period(120), "2m");
        assert_eq!(format_period(61), "61s");
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
            v.set_with_kind(
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
        let meta = v
            .set_with_kind(
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
        again
            .set(
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
        assert!(again
            .set(
                "platform",
                "O",
                Secret::from_str("plain"),
                SetOptions::default()
            )
            .is_err());
        assert!(again
            .rotate("platform", "O", Secret::from_str("plain"))
            .is_err());
    }
}
