//! The on-disk vault file: its layout, the JSON body and records, and the checks
//! that turn file bytes into a verified [`Draft`] (magic, master key id, data key,
//! whole-file MAC) and back. See docs/vault.md for the format.
//!
//! Layout on disk (one file, text):
//! ```text
//! keyward-vault 1            ← magic and format version
//! { …JSON body… }            ← header (counter, master key id, KDF, wrapped data key,
//!                              seal epoch/count), records (each value sealed), agents
//! mac <64 hex>               ← HMAC-SHA256 (data-key sub-key) over everything above
//! ```
//! Beside it: `<file>.lock` (writer lock) and `<file>.counter` (last seen counter + MAC,
//! for rollback detection); those belong to the file backend (`file.rs`).

use super::crypto::{self, Key, Sealed};
use super::error::{ferr, VaultError};
use super::kind::SecretKind;
use super::master::{KdfParams, MasterKey, ENV_MASTER_PASSPHRASE};
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
/// Encryptions under one record-sealing key before the next HKDF epoch key takes over:
/// NIST SP 800-38D allows 2^32 with random 96-bit nonces; we stay 16x below.
pub const SEAL_LIMIT_PER_KEY: u64 = 1 << 28;
pub(super) const RECORD_ID_BYTES: usize = 16;

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBody {
    /// Monotonic file version: +1 on every write.
    pub(super) counter: u64,
    pub(super) master: MasterHeader,
    /// The data key, sealed under the master key's wrapping sub-key (base64 blob).
    pub(super) data_key: String,
    pub(super) seal: SealState,
    pub(super) records: Vec<StoredRecord>,
    #[serde(default)]
    pub(super) agents: Vec<AgentRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MasterHeader {
    pub(super) key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) kdf: Option<KdfParams>,
}

/// Current record-sealing epoch and how many encryptions it has done.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SealState {
    pub(super) epoch: u64,
    pub(super) count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredRecord {
    pub(super) id: String,
    pub(super) scope: String,
    pub(super) name: String,
    pub(super) version: u32,
    pub(super) hint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) created: String,
    pub(super) updated: String,
    pub(super) last_rotated: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rotate_every_secs: Option<u64>,
    /// Absent (format 1) = `api_key`.
    #[serde(default, skip_serializing_if = "SecretKind::is_api_key")]
    pub(super) kind: SecretKind,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) public: BTreeMap<String, String>,
    /// `"KWS" | format | epoch | nonce | ciphertext+tag`, base64.
    pub(super) sealed: String,
}

impl StoredRecord {
    pub(super) fn aad(&self) -> Vec<u8> {
        let mut aad =
            crypto::record_aad(&self.id, &self.scope, &self.name, self.version, &self.hosts);
        // SECURITY: the kind and public fields (an OAuth2 token URL, where the client
        // secret is sent) are authenticated with the value.
        if !self.kind.is_api_key() || !self.public.is_empty() {
            crypto::extend_record_aad(&mut aad, self.kind.as_str(), &self.public);
        }
        aad
    }
}

/// A verified file, ready to read or modify.
pub(super) struct Draft {
    pub(super) body: FileBody,
    pub(super) data_key: Arc<Key>,
    pub(super) seal_limit: u64,
}

impl Draft {
    pub(super) fn fresh(master: &MasterKey, path: &Path) -> Result<Draft, VaultError> {
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

    pub(super) fn find(&self, scope: &str, name: &str) -> Option<usize> {
        self.body
            .records
            .iter()
            .position(|r| r.scope == scope && r.name == name)
    }

    /// Seals `value` for `rec` (whose id/scope/name/version/hosts are final).
    pub(super) fn seal_into(
        &mut self,
        rec: &mut StoredRecord,
        value: &[u8],
    ) -> Result<(), VaultError> {
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
    pub(super) fn open(&self, rec: &StoredRecord, path: &Path) -> Result<Secret, VaultError> {
        open_record(&self.data_key, rec, &decode_sealed(rec, path)?, path)
    }

    /// The file bytes and the MAC (hex) of a format-1/2 file (the file backend
    /// now writes format 3; tests forge old files with this).
    #[allow(dead_code)]
    pub(super) fn encode(&self) -> Result<(Vec<u8>, String), VaultError> {
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

pub(super) fn describe_value(
    kind: SecretKind,
    value: &Secret,
) -> Result<(BTreeMap<String, String>, String), VaultError> {
    super::kind::describe(kind, value).map_err(VaultError::Invalid)
}

pub(super) fn decode_sealed(rec: &StoredRecord, path: &Path) -> Result<Sealed, VaultError> {
    let raw = B64.decode(&rec.sealed).map_err(|_| {
        ferr(
            path,
            format!("record {}/{} is not valid base64", rec.scope, rec.name),
        )
    })?;
    Sealed::decode(&raw).map_err(|m| ferr(path, format!("record {}/{}: {m}", rec.scope, rec.name)))
}

pub(super) fn open_record(
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
pub(super) type FileParts<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Splits `magic line | body | mac line`.
pub(super) fn split_file<'a>(bytes: &'a [u8], path: &Path) -> Result<FileParts<'a>, VaultError> {
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

/// Parses and authenticates file bytes under `master`: the key id must match, the
/// data key must unwrap and the whole-file MAC must verify. Returns the draft and
/// the MAC (hex); the rollback check is the backend's (it knows what was seen).
pub(super) fn decode(
    bytes: &[u8],
    master: &MasterKey,
    path: &Path,
) -> Result<(Draft, String), VaultError> {
    let (signed, body, mac_hex) = split_file(bytes, path)?;
    let body: FileBody =
        serde_json::from_slice(body).map_err(|e| ferr(path, format!("corrupt vault body: {e}")))?;
    let data_key = unlock_data_key(&body.master, &body.data_key, master, path)?;
    let tag = hex::decode(mac_hex).map_err(|_| ferr(path, "corrupt MAC line"))?;
    // SECURITY: the whole-file MAC catches edits, truncation and deleted records
    // before any of the content is trusted.
    if !crypto::verify_file_mac(&data_key, signed, &tag) {
        return Err(ferr(
            path,
            "integrity check failed: the file was modified, truncated or corrupted",
        ));
    }
    let draft = Draft {
        body,
        data_key: Arc::new(data_key),
        seal_limit: SEAL_LIMIT_PER_KEY,
    };
    Ok((draft, hex::encode(&tag)))
}

/// Checks that `master` is the key the header names and unwraps the data key.
pub(super) fn unlock_data_key(
    header: &MasterHeader,
    wrapped_data_key: &str,
    master: &MasterKey,
    path: &Path,
) -> Result<Key, VaultError> {
    let (mk, _) = master.resolve(header.kdf.as_ref(), path)?;
    let ours = hex::encode(mk.key_id());
    // SECURITY: a wrong key must be refused before anything is written with it,
    // or the next write would re-seal the vault under a key nobody else has.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        ours.as_bytes(),
        header.key_id.as_bytes(),
    )) {
        let hint = match (header.kdf.is_some(), master.is_passphrase()) {
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
                header.key_id,
                master.source().describe()
            ),
        ));
    }
    let wrapped = B64
        .decode(wrapped_data_key)
        .ok()
        .and_then(|raw| Sealed::decode(&raw).ok())
        .ok_or_else(|| ferr(path, "corrupt wrapped data key"))?;
    let data_key = crypto::unwrap_data_key(&mk, &wrapped).ok_or_else(|| {
        ferr(
            path,
            "cannot unwrap the data key: wrong master key or corrupted header",
        )
    })?;
    Ok(data_key)
}

/// The KDF parameters in a file's header, read without authenticating it (to
/// resolve a passphrase before the file can be verified).
pub(super) fn header_kdf(bytes: &[u8], path: &Path) -> Result<Option<KdfParams>, VaultError> {
    let (_, body, _) = split_file(bytes, path)?;
    let body: FileBody =
        serde_json::from_slice(body).map_err(|e| ferr(path, format!("corrupt: {e}")))?;
    Ok(body.master.kdf)
}

/// A fresh random record id (hex).
pub(super) fn random_id() -> String {
    let mut b = [0u8; RECORD_ID_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}
