//! `keyward store init|import|export` (SPEC §10): the PostgreSQL store's schema,
//! and copies between it and a vault file. Records are copied still sealed (same
//! data key, same AAD): no value is decrypted on the way, none is printed. An
//! audit log is copied in as a chain of its own (`cli/audit.rs::import_chain`).

use super::CliError;
use crate::config::{Backend, Config};
use crate::vault::open::open_postgres;
use clap::Subcommand;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Create or upgrade the schema (also done by `serve`, under a lock).
    Init,
    /// Copy a vault file (secrets and agents) into an empty store, and/or an
    /// audit log (checked first) in as a chain of its own.
    Import {
        #[arg(long, value_name = "FILE", required_unless_present = "audit")]
        vault: Option<PathBuf>,
        /// An audit log (`FILE.N` rotated next to it included) whose chain
        /// verifies from the genesis hash.
        #[arg(long, value_name = "FILE")]
        audit: Option<PathBuf>,
    },
    /// Write the store out as a vault file (refuses an existing FILE).
    Export {
        #[arg(long, value_name = "FILE")]
        vault: PathBuf,
    },
}

fn user(e: impl std::fmt::Display) -> CliError {
    CliError::User(e.to_string())
}

pub fn run(cmd: StoreCmd, cfg: &Config) -> Result<u8, CliError> {
    if cfg.store.backend != Backend::Postgres {
        return Err(CliError::User(
            "keyward store needs [store] backend = \"postgres\" in the config".into(),
        ));
    }
    let (store, opened) = open_postgres(cfg).map_err(user)?;
    match cmd {
        StoreCmd::Init => {
            println!(
                "{} {} at schema version {} (generation {})",
                if opened.created { "created" } else { "ok     " },
                store.describe(),
                opened.schema_version,
                opened.generation
            );
        }
        StoreCmd::Import { vault, audit } => {
            if let Some(vault) = vault {
                let bytes = read_vault(&vault)?;
                let (records, agents) = store.import_file(bytes, vault.clone()).map_err(user)?;
                println!(
                    "imported {records} secrets and {agents} agents from {} into {}",
                    vault.display(),
                    store.describe()
                );
            }
            if let Some(audit) = audit {
                println!("{}", super::audit::import_chain(cfg, &audit)?);
            }
        }
        StoreCmd::Export { vault } => {
            let (bytes, records, agents) = store.export_file().map_err(user)?;
            write_new(&vault, &bytes)?;
            println!(
                "exported {records} secrets and {agents} agents from {} to {}",
                store.describe(),
                vault.display()
            );
        }
    }
    Ok(0)
}

fn read_vault(path: &Path) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| user(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    // SECURITY: bounded like the file backend's own read (the file is parsed first).
    f.take(crate::vault::format::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| user(format!("{}: {e}", path.display())))?;
    if bytes.len() as u64 > crate::vault::format::MAX_FILE_BYTES {
        return Err(user(format!(
            "{}: too large for a vault file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Creates `path` (0600, never overwriting), writes and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let err = |e: std::io::Error| user(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => user(format!(
                "{} already exists; export writes a new file only",
                path.display()
            )),
            _ => err(e),
        })?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(())
}
