//! `VaultError`: the one error type of the vault, a leaf every vault file uses
//! (messages name paths, scopes, names and limits, never values).

use std::io;
use std::path::Path;

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

pub(super) fn ferr(path: &Path, message: impl Into<String>) -> VaultError {
    VaultError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub(super) fn ioerr(path: &Path, what: &str, e: io::Error) -> VaultError {
    ferr(path, format!("{what}: {e}"))
}

pub(super) fn not_found(scope: &str, name: &str) -> VaultError {
    VaultError::NotFound {
        scope: scope.to_string(),
        name: name.to_string(),
    }
}
