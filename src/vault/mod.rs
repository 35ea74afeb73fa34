//! The encrypted secret store (SPEC §7): `crypto` seals records, `store` owns the
//! file (lock, atomic write, reload) and the in-memory snapshot the proxy reads.
//! Format, key hierarchy and threat model: docs/vault.md.

pub mod crypto;
pub mod kind;
pub mod store;

pub use kind::SecretKind;
pub use store::{
    check_value, format_period, normalize_hosts, valid_scope, AgentRecord, KdfParams, MasterKey,
    MasterSource, Opened, RecordMeta, SetOptions, Snapshot, Undo, Vault, VaultError,
    ENV_MASTER_KEY, ENV_MASTER_PASSPHRASE, MAX_VALUE_BYTES,
};
