//! The encrypted secret store (SPEC §7). Callers use the [`Store`] trait; the file
//! backend [`Vault`] implements it. One concept per file:
//!
//! - `store.rs`    the `Store` trait (snapshot, apply, undo, reload, session key)
//! - `change.rs`   `Change` (every mutation as one value), `Applied`, `Undo`
//! - `file/`       the file backend: open, reload, rollback; `file/log.rs` the
//!   format-3 log, `file/write.rs` batches and appends, `file/compact.rs` compaction
//! - `format.rs`   records, the header, formats 1/2 (one whole file) and their MAC
//! - `snapshot.rs` the immutable view readers get, `RecordMeta`
//! - `master.rs`   master key sources, Argon2id parameters
//! - `validate.rs` names, scopes, values, hosts, descriptions, rotation periods
//! - `crypto.rs`   sealing primitives; `kind.rs` secret kinds; `watch.rs` the poller
//! - `error.rs`    `VaultError`
//! - `open.rs`     `open_store`: the file or the PostgreSQL backend, as `[store]` says
//! - `postgres/`   the PostgreSQL backend (`PgStore`, docs/store.md)
//!
//! Format, key hierarchy and threat model: docs/vault.md.

pub mod change;
pub mod crypto;
pub mod error;
pub mod file;
pub mod format;
pub mod kind;
pub mod master;
pub mod open;
pub mod postgres;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod watch;

pub use change::{Applied, Change, SetOptions, Undo};
pub use error::VaultError;
pub use file::Vault;
pub use format::AgentRecord;
pub use kind::SecretKind;
pub use master::{KdfParams, MasterKey, MasterSource, ENV_MASTER_KEY, ENV_MASTER_PASSPHRASE};
pub use open::open_store;
pub use snapshot::{Opened, RecordMeta, Snapshot};
pub use store::{Freshness, LeaseWait, SharedToken, Store, TokenLease};
pub use validate::{check_value, format_period, normalize_hosts, valid_scope, MAX_VALUE_BYTES};
pub use watch::watch;
