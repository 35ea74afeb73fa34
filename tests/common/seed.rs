//! Seeding a running test keyward: secrets and agents written through its vault
//! and made visible to the proxy at once (what `keyward secret set` / the admin
//! API do, without the round trip). The one place tests write the vault of a `Kw`.

use super::kw::Kw;
use super::sha256_hex;
use keyward::secret::Secret;
use keyward::vault::{AgentRecord, Applied, Change, SecretKind, SetOptions};

/// `created` of agents seeded here.
const SEEDED_AT: &str = "2026-01-01T00:00:00Z";

impl Kw {
    /// Stores a plain secret and makes the proxy see it.
    pub fn set_secret(&self, scope: &str, name: &str, value: &str) {
        self.seed_secret(scope, name, value, None, SetOptions::default());
    }

    /// Stores a secret of `kind` (HMAC key, AWS keys, OAuth2 client, …).
    pub fn set_secret_of_kind(&self, scope: &str, name: &str, kind: SecretKind, value: &str) {
        self.seed_secret(scope, name, value, Some(kind), SetOptions::default());
    }

    /// Stores a plain secret bound to `hosts` (usable in placeholders there).
    pub fn set_secret_for_hosts(&self, scope: &str, name: &str, value: &str, hosts: &[&str]) {
        let opts = SetOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..SetOptions::default()
        };
        self.seed_secret(scope, name, value, None, opts);
    }

    fn seed_secret(
        &self,
        scope: &str,
        name: &str,
        value: &str,
        kind: Option<SecretKind>,
        opts: SetOptions,
    ) {
        let st = &self.running.state;
        super::vault::set_with(&*st.vault, scope, name, Secret::from_str(value), kind, opts)
            .unwrap();
        st.refresh_vault().unwrap();
    }

    /// Removes a secret and makes the proxy see it gone.
    pub fn remove_secret(&self, scope: &str, name: &str) {
        let st = &self.running.state;
        super::vault::remove(&*st.vault, scope, name).unwrap();
        st.refresh_vault().unwrap();
    }

    /// Registers an agent in the vault (as `keyward agent add` does), replacing
    /// one of the same id (agents are create-only: remove, then add).
    pub fn add_agent(&self, id: &str, token: &str, chain: Option<&str>) {
        let st = &self.running.state;
        st.vault
            .apply(Change::RemoveAgent { id: id.into() })
            .unwrap();
        st.vault
            .apply(Change::AddAgent(AgentRecord {
                id: id.into(),
                token_sha256: sha256_hex(token),
                chain: chain.map(str::to_string),
                owner: None,
                builder: None,
                secrets: None,
                created: SEEDED_AT.into(),
            }))
            .unwrap();
        st.refresh_vault().unwrap();
    }

    /// Revokes a vault agent; whether it existed.
    pub fn remove_agent(&self, id: &str) -> bool {
        let st = &self.running.state;
        let (removed, _) = st
            .vault
            .apply(Change::RemoveAgent { id: id.into() })
            .unwrap();
        let existed = matches!(removed, Applied::Agent(Some(_)));
        st.refresh_vault().unwrap();
        existed
    }
}
