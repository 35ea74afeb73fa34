//! `Runtime`: the hot-reloadable part of `State` (config, compiled policy, agent
//! directory), rebuilt on a config reload or a vault change and swapped
//! atomically, so open tunnels keep working (they read it per request).

use crate::config::Config;
use crate::policy::Policy;
use crate::resolve::Directory;
use crate::secret::Secret;
use crate::vault::{AgentRecord, Store};
use std::sync::Arc;

/// The reloadable view of the configuration and the vault's agent table.
pub struct Runtime {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub directory: Arc<Directory>,
    /// The vault generation the directory was built from.
    pub vault_generation: u64,
    /// The vault agent table and session key the directory was built from (kept
    /// alive, so a table compared by identity cannot be a reused address).
    built_from: (Arc<Vec<AgentRecord>>, Secret),
}

impl Runtime {
    pub fn build(config: Arc<Config>, vault: &dyn Store) -> Runtime {
        let snapshot = vault.snapshot();
        let agents = snapshot.shared_agents();
        let session = vault.session_key();
        Runtime {
            policy: Policy::from_config(&config),
            directory: Arc::new(Directory::build(&config, &agents, Some(session.clone()))),
            vault_generation: snapshot.generation(),
            built_from: (agents, session),
            config,
        }
    }

    /// The runtime after a vault change under the same config. A change of
    /// secrets only keeps the directory (the same agent definitions, by
    /// identity), so per-agent caches like the redaction set update from the
    /// change instead of starting over.
    pub fn after_vault_change(&self, vault: &dyn Store) -> Runtime {
        let snapshot = vault.snapshot();
        let agents = snapshot.shared_agents();
        let session = vault.session_key();
        // SECURITY: any change to the agent table or the session key rebuilds
        // the directory (tokens, scopes, sessions come from them).
        if !Arc::ptr_eq(&agents, &self.built_from.0)
            || session.expose() != self.built_from.1.expose()
        {
            return Runtime::build(self.config.clone(), vault);
        }
        Runtime {
            config: self.config.clone(),
            policy: Policy::from_config(&self.config),
            directory: self.directory.clone(),
            vault_generation: snapshot.generation(),
            built_from: (agents, session),
        }
    }
}
