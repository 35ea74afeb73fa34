//! Vault helpers: a fresh file vault in a temp dir, and the common changes as
//! one-liners over `Store::apply` (the one mutation entry point).

use keyward::config::VaultConfig;
use keyward::secret::Secret;
use keyward::vault::{
    Change, MasterKey, RecordMeta, SecretKind, SetOptions, Store, Vault, VaultError,
};
use std::path::Path;

/// The layout `keyward init` makes under `dir`.
pub fn cfg(dir: &Path) -> VaultConfig {
    VaultConfig {
        path: dir.join("data/vault.kw"),
        master_key_file: dir.join("certs/master.key"),
    }
}

/// Opens (creating the key file if absent) the vault `c` names.
pub fn open(c: &VaultConfig) -> Result<Vault, VaultError> {
    Vault::open_with(c, MasterKey::load_or_create_file(&c.master_key_file)?)
}

/// A fresh vault in a temp dir holding `records` (scope, name, value).
pub fn seeded(records: &[(&str, &str, &str)]) -> (tempfile::TempDir, VaultConfig, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let v = open(&c).unwrap();
    for (scope, name, value) in records {
        set(&v, scope, name, value).unwrap();
    }
    (dir, c, v)
}

/// `SetSecret` with a kind and options.
pub fn set_with(
    v: &dyn Store,
    scope: &str,
    name: &str,
    value: Secret,
    kind: Option<SecretKind>,
    options: SetOptions,
) -> Result<RecordMeta, VaultError> {
    let change = Change::SetSecret {
        scope: scope.into(),
        name: name.into(),
        value,
        kind,
        options,
    };
    v.apply(change).and_then(|(a, _)| a.into_meta())
}

/// `SetSecret` of a plain `api_key` value with no options.
pub fn set(v: &dyn Store, scope: &str, name: &str, value: &str) -> Result<RecordMeta, VaultError> {
    set_with(
        v,
        scope,
        name,
        Secret::from_str(value),
        None,
        SetOptions::default(),
    )
}

pub fn rotate(
    v: &dyn Store,
    scope: &str,
    name: &str,
    value: Secret,
) -> Result<RecordMeta, VaultError> {
    let change = Change::RotateSecret {
        scope: scope.into(),
        name: name.into(),
        value,
    };
    v.apply(change).and_then(|(a, _)| a.into_meta())
}

pub fn remove(v: &dyn Store, scope: &str, name: &str) -> Result<RecordMeta, VaultError> {
    let change = Change::RemoveSecret {
        scope: scope.into(),
        name: name.into(),
    };
    v.apply(change).and_then(|(a, _)| a.into_meta())
}

pub fn clone(v: &dyn Store, name: &str, from: &str, to: &str) -> Result<RecordMeta, VaultError> {
    let change = Change::CloneSecret {
        name: name.into(),
        from: from.into(),
        to: to.into(),
    };
    v.apply(change).and_then(|(a, _)| a.into_meta())
}
