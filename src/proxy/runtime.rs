//! `Runtime`: the hot-reloadable part of `State` (config, compiled policy, agent
//! directory), rebuilt on a config reload or a vault change and swapped
//! atomically, so open tunnels keep working (they read it per request).

use crate::config::Config;
use crate::policy::Policy;
use crate::resolve::Directory;
use crate::vault::Store;
use std::sync::Arc;

/// The reloadable view of the configuration and the vault's agent table.
pub struct Runtime {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub directory: Directory,
    /// The vault generation the directory was built from.
    pub vault_generation: u64,
}

impl Runtime {
    pub fn build(config: Arc<Config>, vault: &dyn Store) -> Runtime {
        let snapshot = vault.snapshot();
        Runtime {
            policy: Policy::from_config(&config),
            directory: Directory::build(&config, snapshot.agents(), Some(vault.session_key())),
            vault_generation: snapshot.generation(),
            config,
        }
    }
}
