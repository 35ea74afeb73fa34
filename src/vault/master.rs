//! The master key: where it comes from (`$KEYWARD_MASTER_KEY`, a passphrase through
//! Argon2id, or a 0600 key file), and how it resolves to the concrete key that
//! wraps a vault's data key. Never printed: `Debug` names only the source.

use super::crypto::{self, Key};
use super::error::{ferr, ioerr, VaultError};
use crate::config::VaultConfig;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const MAX_MASTER_KEY_FILE_BYTES: u64 = 4096;
/// Accepted Argon2id parameter ranges read from a vault header (bounds the work a
/// crafted header can ask for).
const ARGON2_MAX_T: u32 = 16;
const ARGON2_MIN_M_KIB: u32 = 8 * 1024;
const ARGON2_MAX_M_KIB: u32 = 1024 * 1024;
const ARGON2_MAX_P: u32 = 16;

pub const ENV_MASTER_KEY: &str = "KEYWARD_MASTER_KEY";
pub const ENV_MASTER_PASSPHRASE: &str = "KEYWARD_MASTER_PASSPHRASE";

/// Where the master key came from (for messages; never the key itself).
#[derive(Debug, Clone)]
pub enum MasterSource {
    EnvKey,
    EnvPassphrase,
    File(PathBuf),
    Given(String),
}

impl MasterSource {
    pub(super) fn describe(&self) -> String {
        match self {
            MasterSource::EnvKey => format!("${ENV_MASTER_KEY}"),
            MasterSource::EnvPassphrase => format!("${ENV_MASTER_PASSPHRASE}"),
            MasterSource::File(p) => format!("master key file {}", p.display()),
            MasterSource::Given(s) => s.clone(),
        }
    }
}

/// Why the master key file at `path` could not be opened: a permission problem
/// says so and names who keyward runs as and what to change; other errors as is.
fn unreadable(path: &Path, e: io::Error) -> VaultError {
    if e.kind() != io::ErrorKind::PermissionDenied {
        return ioerr(path, "cannot read the master key file", e);
    }
    // SAFETY: geteuid only reads the process's credentials.
    let euid = unsafe { libc::geteuid() };
    ferr(
        path,
        format!(
            "permission denied: keyward (uid {euid}) cannot read the master key file; make it \
             and its directories readable by that user (chown, chmod 600 the file) or set \
             ${ENV_MASTER_KEY} / ${ENV_MASTER_PASSPHRASE}"
        ),
    )
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
        // A file this user may not even look at is a permission problem, not a
        // missing file (`exists()` says false for both).
        let exists = cfg
            .master_key_file
            .try_exists()
            .map_err(|e| unreadable(&cfg.master_key_file, e))?;
        // SECURITY: a vault without its key file must not get a fresh random key: the
        // vault would look "wrong key" forever and the new key invite a silent reset.
        if !exists && cfg.path.exists() {
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
        let file = File::open(path).map_err(|e| unreadable(path, e))?;
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

    pub(super) fn is_passphrase(&self) -> bool {
        matches!(self.secret, MasterSecret::Passphrase { .. })
    }

    /// The concrete key for a vault whose header carries `kdf` (`None`: a raw key, or
    /// a new vault). Returns the KDF parameters to store in the header.
    pub(super) fn resolve(
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
