//! The `Store` trait: what the rest of keyward needs from a vault backend. The
//! proxy, admin API and CLI hold an `Arc<dyn Store>` (or the file backend,
//! [`super::Vault`], where a command is file-specific such as master-key
//! rotation), so a second backend (PostgreSQL) is one more `impl Store`.

use super::change::{Applied, Change, Undo};
use super::error::VaultError;
use super::snapshot::{RecordMeta, Snapshot};
use crate::secret::Secret;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How current a replica's snapshot is (SPEC §10 `[store] stale_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The last refresh succeeded (the file backend is always current).
    Current,
    /// The store has not been readable for `age`, still within `stale_after`:
    /// requests go on from the last snapshot.
    Unreachable { age: Duration },
    /// The store answers but what it holds failed verification (a row edited,
    /// deleted or put back outside keyward, a rollback) for `age`: the last good
    /// snapshot is served, as with a tampered vault file, and the replica is not
    /// ready until the store verifies again.
    Refused { age: Duration },
    /// Unreadable for longer than `stale_after`: requests needing a credential
    /// fail closed (`store_stale`).
    Stale { age: Duration },
}

/// An OAuth2 access token shared between replicas (PostgreSQL store), sealed in
/// the database under a key derived from the master key.
pub struct SharedToken {
    pub token: Secret,
    /// Unix seconds when the provider said it expires.
    pub expires: u64,
    /// The record versions it was obtained for: the one read, and the one a
    /// rotated refresh token written back created.
    pub versions: (u32, Option<u32>),
}

/// Held while this replica refreshes one secret's token: the other replicas wait
/// (`pg_advisory_xact_lock`) and then find the token stored here.
pub struct TokenLease {
    /// What a replica stored before (maybe still valid).
    pub current: Option<SharedToken>,
    finish: tokio::sync::oneshot::Sender<Option<SharedToken>>,
}

impl TokenLease {
    pub fn new(
        current: Option<SharedToken>,
        finish: tokio::sync::oneshot::Sender<Option<SharedToken>>,
    ) -> TokenLease {
        TokenLease { current, finish }
    }

    /// Stores `token` (sealed) and releases the lock; `None` (or dropping the
    /// lease) releases it without a change.
    pub fn finish(self, token: Option<SharedToken>) {
        let _ = self.finish.send(token);
    }
}

/// A lease being acquired (resolves once the lock is held).
pub type LeaseWait = tokio::sync::oneshot::Receiver<Result<TokenLease, VaultError>>;

/// `Debug` must never show a value (the file backend shows its path only).
pub trait Store: Send + Sync + fmt::Debug {
    /// The current contents; cheap (an `ArcSwap` load), called per request.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// Makes one change atomically (validated, then written under the writer lock)
    /// and returns what changed and how to take it back.
    fn apply(&self, change: Change) -> Result<(Applied, Undo), VaultError>;

    /// Makes several changes. The default applies them one by one (a failure
    /// leaves the earlier ones made); the file backend writes all or none, as
    /// one entry with one `fsync`.
    fn apply_batch(&self, changes: Vec<Change>) -> Result<Vec<(Applied, Undo)>, VaultError> {
        changes.into_iter().map(|c| self.apply(c)).collect()
    }

    /// Takes back several changes, newest first. The default undoes them one by
    /// one; the file backend writes all of it as one entry.
    fn undo_all(&self, undos: Vec<Undo>) -> Result<(), VaultError> {
        undos.into_iter().rev().try_for_each(|u| self.undo(u))
    }

    /// Waits for background work this handle started (the file backend's
    /// compaction), so a short-lived process leaves the store settled.
    fn settle(&self) {}

    /// Takes back the change `undo` came from, unless what it touched changed again
    /// since (a later change is never lost).
    fn undo(&self, undo: Undo) -> Result<(), VaultError>;

    /// Picks up changes made elsewhere (another process, a swapped Secret).
    /// `Ok(true)` if a new snapshot was loaded; on error the last good one stays.
    fn reload(&self) -> Result<bool, VaultError>;

    /// A 32-byte key derived from the master key for signing session tokens;
    /// identical on every replica that shares the master key.
    fn session_key(&self) -> Secret;

    /// Takes the cross-replica lock on `scope`/`name`'s OAuth2 token; `None` when
    /// the backend has no replicas to share with (the file vault).
    fn lease_token(&self, _scope: &str, _name: &str) -> Option<LeaseWait> {
        None
    }

    /// Whether the snapshot is still backed by a reachable store.
    fn freshness(&self) -> Freshness {
        Freshness::Current
    }

    /// Monotonic version of the current snapshot.
    fn generation(&self) -> u64 {
        self.snapshot().generation()
    }

    /// All records (of `scope` if given), sorted by scope then name.
    fn list(&self, scope: Option<&str>) -> Vec<RecordMeta> {
        self.snapshot().list(scope)
    }
}
