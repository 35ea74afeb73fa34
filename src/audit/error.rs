//! What can go wrong reading or writing the audit log.

use std::io;
use std::path::Path;

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
    /// The PostgreSQL audit store (`pg.rs`).
    #[error("audit store {what}: {message}")]
    Db { what: String, message: String },
}

impl AuditError {
    /// The same error for another waiter of a failed batch (`io::Error` is not `Clone`).
    pub(super) fn duplicate(&self) -> AuditError {
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
            AuditError::Db { what, message } => AuditError::Db {
                what: what.clone(),
                message: message.clone(),
            },
        }
    }
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(super) fn corrupt(path: &Path, message: impl Into<String>) -> AuditError {
    AuditError::Corrupt {
        path: path.display().to_string(),
        message: message.into(),
    }
}
