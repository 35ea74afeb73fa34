//! Library-level helpers for the PostgreSQL store suites (`store_pg`,
//! `store_pg_faults`): one master key, a config naming a cluster's schema, and
//! a set / read / agent record through the `Store` trait.

use super::pg::Pg;
use keyward::config::Config;
use keyward::secret::Secret;
use keyward::vault::{AgentRecord, Change, SetOptions, Store, VaultError};

/// One master key for every replica of a test (base64 of 32 bytes).
pub const MASTER: &str = "a2V5d2FyZC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXM=";

/// A config (for library calls) naming schema `schema` of the cluster, with the
/// shared master key written into `dir`.
pub fn config(pg: &Pg, schema: &str, dir: &std::path::Path) -> Config {
    std::fs::write(dir.join("master.key"), format!("{MASTER}\n")).unwrap();
    let text = format!(
        "[vault]\npath = \"{d}/vault.kw\"\nmaster_key_file = \"{d}/master.key\"\n{}",
        pg.store_toml(schema),
        d = dir.display()
    );
    Config::parse(&text, "<test>").unwrap()
}

/// Sets `scope/name` to `value`; the stored version.
pub fn set(v: &dyn Store, scope: &str, name: &str, value: &str) -> Result<u32, VaultError> {
    let change = Change::SetSecret {
        scope: scope.into(),
        name: name.into(),
        value: Secret::from_str(value),
        kind: None,
        options: SetOptions::default(),
    };
    v.apply(change)
        .and_then(|(a, _)| a.into_meta())
        .map(|m| m.version)
}

/// The value of `scope/name` in the store's current snapshot.
pub fn value_of(v: &dyn Store, scope: &str, name: &str) -> Option<String> {
    v.snapshot()
        .get(scope, name)
        .unwrap()
        .map(|o| String::from_utf8(o.value.expose().to_vec()).unwrap())
}

/// A registered agent `id` (token `tok-ID`).
pub fn agent(id: &str) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        token_sha256: super::sha256_hex(&format!("tok-{id}")),
        chain: None,
        owner: None,
        builder: None,
        secrets: None,
        created: "2026-01-01T00:00:00Z".into(),
    }
}
