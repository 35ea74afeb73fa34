//! `open_store`: the store `[store]` names, as the `Store` every command and the
//! proxy use: the vault file (`file.rs`) or PostgreSQL (`postgres/`).

use super::error::VaultError;
use super::file::Vault;
use super::master::MasterKey;
use super::postgres::PgStore;
use super::store::Store;
use crate::config::{Backend, Config};
use std::sync::Arc;

/// Opens the configured store (the master key from the environment or
/// `vault.master_key_file`, as for the file). PostgreSQL: migrates the schema
/// under its advisory lock first, so `serve` replicas may start together.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, VaultError> {
    match cfg.store.backend {
        Backend::File => Ok(Arc::new(Vault::open(&cfg.vault)?)),
        Backend::Postgres => Ok(Arc::new(open_postgres(cfg)?.0)),
    }
}

/// The PostgreSQL store itself (for `keyward store …`).
pub fn open_postgres(cfg: &Config) -> Result<(PgStore, super::postgres::Opened), VaultError> {
    let master = MasterKey::from_env_or_file(&cfg.vault)?;
    PgStore::open(&cfg.store, master)
}

/// The configured store if it already exists, creating and changing nothing
/// (`keyward check`): the file only if present, PostgreSQL only if initialised.
pub fn open_existing_store(cfg: &Config) -> Result<Arc<dyn Store>, VaultError> {
    match cfg.store.backend {
        Backend::File => Ok(Arc::new(Vault::open(&cfg.vault)?)),
        Backend::Postgres => {
            // No key file is created here (check creates nothing).
            let from_env = [super::ENV_MASTER_KEY, super::ENV_MASTER_PASSPHRASE]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
            let master = if from_env || cfg.vault.master_key_file.exists() {
                MasterKey::from_env_or_file(&cfg.vault)?
            } else {
                return Err(VaultError::Invalid(format!(
                    "no master key: set ${} or ${}, or create {}",
                    super::ENV_MASTER_KEY,
                    super::ENV_MASTER_PASSPHRASE,
                    cfg.vault.master_key_file.display()
                )));
            };
            Ok(Arc::new(PgStore::open_existing(&cfg.store, master)?.0))
        }
    }
}
