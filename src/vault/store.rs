//! The vault file and its live snapshot. API contract used by the proxy, CLI and
//! admin API; see docs/vault.md for the format.

use crate::config::VaultConfig;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("secret {name} not found in scope {scope}")]
    NotFound { scope: String, name: String },
}

/// A decrypted value, for the duration of one request.
#[derive(Debug, Clone)]
pub struct Opened {
    pub value: Secret,
    pub version: u32,
    /// Extra host restriction set with `--hosts` (empty = the provider's hosts).
    pub hosts: Vec<String>,
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

pub struct Vault {}

pub struct Snapshot {}

impl Vault {
    /// Opens (creating if absent: master key file 0600, empty vault) the vault `cfg` names.
    pub fn open(_cfg: &VaultConfig) -> Result<Vault, VaultError> {
        todo!()
    }
    /// The current contents; cheap (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        todo!()
    }
    /// Re-reads the file if it changed on disk. `Ok(true)` if a new snapshot was loaded;
    /// on error the last good snapshot stays.
    pub fn reload(&self) -> Result<bool, VaultError> {
        todo!()
    }
    pub fn set(
        &self,
        _scope: &str,
        _name: &str,
        _value: Secret,
        _opts: SetOptions,
    ) -> Result<RecordMeta, VaultError> {
        todo!()
    }
    pub fn rotate(
        &self,
        _scope: &str,
        _name: &str,
        _value: Secret,
    ) -> Result<RecordMeta, VaultError> {
        todo!()
    }
    pub fn remove(&self, _scope: &str, _name: &str) -> Result<(), VaultError> {
        todo!()
    }
    pub fn clone_secret(
        &self,
        _name: &str,
        _from: &str,
        _to: &str,
    ) -> Result<RecordMeta, VaultError> {
        todo!()
    }
    pub fn list(&self, _scope: Option<&str>) -> Vec<RecordMeta> {
        todo!()
    }
    pub fn put_agent(&self, _agent: AgentRecord) -> Result<(), VaultError> {
        todo!()
    }
    pub fn remove_agent(&self, _id: &str) -> Result<bool, VaultError> {
        todo!()
    }
    /// A 32-byte key derived (HKDF, its own label) from the master key, for signing
    /// session tokens; identical on every replica that shares the master key.
    pub fn session_key(&self) -> Secret {
        todo!()
    }
}

impl Snapshot {
    /// Opens the record `name` in `scope`, if present.
    pub fn get(&self, _scope: &str, _name: &str) -> Result<Option<Opened>, VaultError> {
        todo!()
    }
    pub fn agents(&self) -> &[AgentRecord] {
        todo!()
    }
    /// Monotonic file version counter of this snapshot.
    pub fn generation(&self) -> u64 {
        todo!()
    }
}
