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
