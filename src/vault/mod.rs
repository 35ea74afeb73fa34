//! The encrypted secret store (SPEC §7): `crypto` seals records, `store` owns the
//! file (lock, atomic write, reload) and the in-memory snapshot the proxy reads.

pub mod crypto;
pub mod store;

pub use store::{AgentRecord, Opened, RecordMeta, SetOptions, Snapshot, Vault, VaultError};
