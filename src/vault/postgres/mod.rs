//! The PostgreSQL backend (SPEC §10): [`PgStore`] implements [`Store`] on tables
//! of sealed records (`rows.rs`), migrated under an advisory lock (`schema.rs`),
//! reached through a pool (`connect.rs`). Readers get a cached `Arc<Snapshot>`;
//! a LISTEN task and a periodic generation check refresh it, so a change through
//! any replica is in effect on all within a second. The trait is sync: DB work
//! runs on a small runtime of its own and callers wait on a channel, never a
//! proxy worker (the request path only loads the snapshot). docs/store.md.

mod batch;
pub mod connect;
mod digest;
mod migrate;
mod rows;
pub mod schema;
mod tokens;
mod write;

use super::change::{Applied, Change, Undo};
use super::crypto::{self, Key};
use super::error::VaultError;
use super::format::{AgentRecord, Draft, FileBody, StoredRecord, SEAL_LIMIT_PER_KEY};
use super::master::MasterKey;
use super::snapshot::Snapshot;
use super::store::{Freshness, Store};
use crate::config::StoreConfig;
use crate::secret::Secret;
use arc_swap::ArcSwap;
use connect::{dberr, describe, Target};
use digest::Digester;
use parking_lot::Mutex;
use rows::{Db, Meta};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The NOTIFY channel; the payload is the schema name.
pub const CHANNEL: &str = "keyward_changes";
/// How often the generation is compared, in case a notification was missed.
pub const RESYNC_EVERY: Duration = Duration::from_millis(500);
/// Pause before a lost LISTEN connection is opened again.
pub const RELISTEN_AFTER: Duration = Duration::from_millis(500);
/// Threads of the store's own runtime.
const DB_THREADS: usize = 1;

struct Inner {
    db_schema: String,
    shown: String,
    /// Names the store in messages (`postgres://user:***@host/db schema s`).
    path: PathBuf,
    target: Target,
    pool: deadpool_postgres::Pool,
    master: MasterKey,
    session: parking_lot::RwLock<Key>,
    current: ArcSwap<Snapshot>,
    /// Highest generation loaded: an older one is a rollback and is refused.
    seen: AtomicU64,
    /// Generation last reported by `reload()`.
    reported: AtomicU64,
    /// Why the last refresh failed (cleared by a good one).
    failure: Mutex<Option<Failure>>,
    /// One full load at a time.
    loading: tokio::sync::Mutex<()>,
    /// `[store] stale_after`: how long the last snapshot may be served unrefreshed.
    stale_after: Duration,
    /// When a refresh last succeeded (the snapshot was confirmed current).
    last_ok: Mutex<Instant>,
}

/// What to do about refused contents (part of the error, logged by the watcher).
const TAMPERED_HINT: &str = "the database was changed outside keyward: this replica keeps \
     serving its last good snapshot and refuses the new one; find out who changed it, then \
     restore the schema from a backup (pg_dump) or import a vault file into a new schema \
     and restart the replicas (docs/store.md, \"What the database can and cannot do to you\")";

/// The last refresh's error, and whether the database answered but its contents
/// failed verification (tampering, rollback) rather than not answering.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    refused: bool,
}

/// Why a load failed: the database (`Db`), or what it returned (`Refused`).
enum Failed {
    Db(VaultError),
    Refused(VaultError),
}

pub struct PgStore {
    inner: Arc<Inner>,
    rt: DbRuntime,
}

/// The store's own runtime. Dropping a runtime blocks on its threads, which
/// panics inside another runtime (a failed start in `serve`); shut it down in
/// the background instead.
struct DbRuntime(Option<tokio::runtime::Runtime>);

impl DbRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable!("the runtime lives as long as the store"),
        }
    }
}

impl Drop for DbRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.inner.path.display())
    }
}

/// What `open` reports (for `keyward store init`).
#[derive(Debug, Clone)]
pub struct Opened {
    pub schema_version: i32,
    pub generation: u64,
    pub created: bool,
}

/// Runs `fut` on `rt` and waits for it from a thread that is not one of `rt`'s.
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    match rx.recv() {
        Ok(v) => v,
        // Only if the runtime was shut down under us (process exit).
        Err(_) => panic!("the store runtime stopped"),
    }
}

impl PgStore {
    /// Connects, migrates (under the advisory lock), creates the `meta` row with a
    /// fresh data key if the store is new, loads the first snapshot and starts the
    /// LISTEN and resync tasks.
    pub fn open(cfg: &StoreConfig, master: MasterKey) -> Result<(PgStore, Opened), VaultError> {
        PgStore::open_with(cfg, master, true)
    }

    /// Opens a store whose schema is already at the latest version, creating and
    /// changing nothing (`keyward check`).
    pub fn open_existing(
        cfg: &StoreConfig,
        master: MasterKey,
    ) -> Result<(PgStore, Opened), VaultError> {
        PgStore::open_with(cfg, master, false)
    }

    fn open_with(
        cfg: &StoreConfig,
        master: MasterKey,
        migrate: bool,
    ) -> Result<(PgStore, Opened), VaultError> {
        let target = Target::from_config(cfg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(DB_THREADS)
            .thread_name("keyward-store")
            .enable_all()
            .build()
            .map_err(|e| {
                dberr(
                    &target.shown,
                    format!("cannot start the store runtime: {e}"),
                )
            })?;
        let rt = DbRuntime(Some(rt));
        let pool = {
            let _guard = rt.handle().enter();
            target.pool()?
        };
        let shown = target.shown.clone();
        let path = PathBuf::from(format!("{shown} schema {}", cfg.schema));
        let inner = Arc::new(Inner {
            db_schema: cfg.schema.clone(),
            shown,
            path: path.clone(),
            target,
            pool,
            master,
            session: parking_lot::RwLock::new(Key::random()),
            current: ArcSwap::from_pointee(Snapshot::empty(&path, 0)),
            seen: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            failure: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
            stale_after: cfg.stale_after,
            last_ok: Mutex::new(Instant::now()),
        });
        let i = inner.clone();
        let opened = run_on(rt.handle(), async move {
            let opened = if migrate {
                i.migrate().await?
            } else {
                let c = i.client().await?;
                i.up_to_date(&c).await?.ok_or_else(|| {
                    dberr(
                        i.path_str(),
                        "the schema is missing or older than this keyward: run `keyward store init`",
                    )
                })?
            };
            i.refresh(true).await?;
            Ok::<_, VaultError>(opened)
        })?;
        // The session key depends only on the master key (as with the file backend);
        // a passphrase needs the store's KDF salt, known now.
        let i = inner.clone();
        let meta = run_on(rt.handle(), async move { i.read_meta().await })?;
        let (mk, _) = inner
            .master
            .resolve(meta.master.kdf.as_ref(), &inner.path)?;
        *inner.session.write() = mk.derive(crypto::LABEL_SESSION);
        inner
            .reported
            .store(inner.current.load().generation(), Ordering::SeqCst);
        rt.handle().spawn(listen(inner.clone()));
        rt.handle().spawn(resync(inner.clone()));
        Ok((PgStore { inner, rt }, opened))
    }

    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        run_on(self.rt.handle(), fut)
    }

    /// `postgres://user:***@host/db schema s`.
    pub fn describe(&self) -> String {
        self.inner.path.display().to_string()
    }

    /// Copies a verified file vault into an empty store: same data key, records
    /// still sealed as they were (nothing is decrypted and re-encrypted).
    pub fn import_file(&self, bytes: Vec<u8>, file: PathBuf) -> Result<(usize, usize), VaultError> {
        let i = self.inner.clone();
        self.run(async move { i.import(bytes, file).await })
    }

    /// Writes the store as a vault file (same data key and sealed records) to bytes.
    pub fn export_file(&self) -> Result<(Vec<u8>, usize, usize), VaultError> {
        let i = self.inner.clone();
        self.run(async move { i.export().await })
    }
}

impl Store for PgStore {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    fn apply(&self, mut change: Change) -> Result<(Applied, Undo), VaultError> {
        change.check()?;
        let i = self.inner.clone();
        self.run(async move { i.apply(change).await })
    }

    fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        let i = self.inner.clone();
        self.run(async move { i.undo(undo).await })
    }

    /// All or nothing: one transaction (`secret import` is atomic).
    fn apply_batch(&self, mut changes: Vec<Change>) -> Result<Vec<(Applied, Undo)>, VaultError> {
        for (n, c) in changes.iter_mut().enumerate() {
            c.check().map_err(|e| batch::in_batch(n, e))?;
        }
        let i = self.inner.clone();
        self.run(async move { i.apply_batch(changes).await })
    }

    fn undo_all(&self, undos: Vec<Undo>) -> Result<(), VaultError> {
        let i = self.inner.clone();
        self.run(async move { i.undo_all(undos).await })
    }

    /// Never touches the database (the watcher calls it on the serving runtime):
    /// reports whether the background refresh loaded something new.
    fn reload(&self) -> Result<bool, VaultError> {
        let now = self.inner.current.load().generation();
        // A snapshot loaded before a later failure is still news for the caller.
        if self.inner.reported.swap(now, Ordering::SeqCst) != now {
            return Ok(true);
        }
        match self.inner.failure.lock().clone() {
            Some(f) => Err(dberr(self.inner.path_str(), f.message)),
            None => Ok(false),
        }
    }

    fn session_key(&self) -> Secret {
        Secret::new(self.inner.session.read().expose().to_vec())
    }

    fn lease_token(&self, scope: &str, name: &str) -> Option<super::store::LeaseWait> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let i = self.inner.clone();
        let (scope, name) = (scope.to_string(), name.to_string());
        self.rt.handle().spawn(i.hold_token_lock(scope, name, tx));
        Some(rx)
    }

    fn freshness(&self) -> Freshness {
        let refused = match &*self.inner.failure.lock() {
            None => return Freshness::Current,
            Some(f) => f.refused,
        };
        let age = self.inner.last_ok.lock().elapsed();
        if refused {
            return Freshness::Refused { age };
        }
        if age > self.inner.stale_after {
            Freshness::Stale { age }
        } else {
            Freshness::Unreachable { age }
        }
    }
}

impl Inner {
    pub(super) fn db(&self) -> Db<'_> {
        Db {
            s: &self.db_schema,
            shown: self.path_str(),
        }
    }

    pub(super) fn path_str(&self) -> &str {
        self.path.to_str().unwrap_or(&self.shown)
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, VaultError> {
        self.pool.get().await.map_err(|e| {
            let msg = match &e {
                deadpool_postgres::PoolError::Backend(be) => describe(be),
                other => other.to_string(),
            };
            dberr(self.path_str(), format!("cannot reach the database: {msg}"))
        })
    }

    async fn read_meta(&self) -> Result<Meta, VaultError> {
        let c = self.client().await?;
        self.db()
            .meta(&**c, false)
            .await?
            .ok_or_else(|| dberr(self.path_str(), "no meta row: run `keyward store init`"))
    }

    /// Loads everything in one consistent read and swaps the snapshot in (unless
    /// nothing changed and `force` is off). Records, agents and the table digest
    /// are verified first; on any error the last good snapshot stays and the error
    /// is kept for `reload` (and `freshness`: refused contents are not an outage).
    pub(super) async fn refresh(&self, force: bool) -> Result<bool, VaultError> {
        let _one = self.loading.lock().await;
        let (res, refused) = match self.load(force).await {
            Ok(changed) => (Ok(changed), false),
            Err(Failed::Db(e)) => (Err(e), false),
            Err(Failed::Refused(e)) => (Err(e), true),
        };
        match &res {
            Ok(_) => {
                *self.last_ok.lock() = Instant::now();
                *self.failure.lock() = None;
            }
            Err(e) => {
                let message = match e {
                    VaultError::File { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                *self.failure.lock() = Some(Failure { message, refused });
            }
        }
        res
    }

    async fn load(&self, force: bool) -> Result<bool, Failed> {
        let mut c = self.client().await.map_err(Failed::Db)?;
        if !force {
            let gen = self.db().generation(&**c).await.map_err(Failed::Db)?;
            if gen == Some(self.current.load().generation()) {
                return Ok(false);
            }
        }
        let (meta, records, agents) = self.read_all(&mut c).await.map_err(Failed::Db)?;
        let seen = self.seen.load(Ordering::SeqCst);
        // SECURITY: a restored older database (or a replayed generation) would bring
        // back removed secrets and agents; the generation only moves forward.
        if meta.generation < seen {
            return Err(Failed::Refused(dberr(
                self.path_str(),
                format!(
                    "rollback detected: store generation {} is older than generation {seen} already seen",
                    meta.generation
                ),
            )));
        }
        let (body, _, snap) = self
            .verify(meta, records, agents)
            .map_err(Failed::Refused)?;
        self.seen.fetch_max(body.counter, Ordering::SeqCst);
        self.current.store(Arc::new(snap));
        Ok(true)
    }

    /// `meta`, `records` and the agent rows in one REPEATABLE READ, read-only
    /// transaction (one consistent state); nothing is verified yet.
    async fn read_all(
        &self,
        c: &mut deadpool_postgres::Object,
    ) -> Result<(Meta, Vec<StoredRecord>, Vec<rows::AgentRow>), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let tx = raw(c)
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(err)?;
        let meta = db
            .meta(&tx, false)
            .await?
            .ok_or_else(|| dberr(self.path_str(), "no meta row: run `keyward store init`"))?;
        let records = db.records(&tx).await?;
        let agents = db.agent_rows(&tx).await?;
        tx.commit().await.map_err(err)?;
        Ok((meta, records, agents))
    }

    /// Everything `read_all` read, verified: the data key unwraps, every agent's
    /// MAC, every record opens, and the table digest covers exactly these rows.
    fn verify(
        &self,
        meta: Meta,
        records: Vec<StoredRecord>,
        agent_rows: Vec<rows::AgentRow>,
    ) -> Result<(FileBody, Arc<Key>, Snapshot), VaultError> {
        let data_key = Arc::new(rows::unwrap(&self.master, &meta, &self.path)?);
        let db = self.db();
        let agents = agent_rows
            .into_iter()
            .map(|r| db.verify_agent(r, &data_key))
            .collect::<Result<Vec<_>, _>>()?;
        let digest = meta.digest.clone();
        let body = body_of(meta, records, agents);
        // SECURITY: every record is opened once (AAD: id, scope, name, version,
        // hosts, kind) so an edited or swapped row is refused before it is served.
        let snap = Snapshot::build(&body, &data_key, &self.path, true)?;
        // SECURITY: and the set of rows is the one the last writer left: a deleted,
        // copied or older row is refused (`digest.rs`).
        Digester::new(&data_key)
            .check(
                digest.as_ref(),
                body.counter,
                &body.seal,
                &body.records,
                &body.agents,
            )
            .map_err(|m| dberr(self.path_str(), format!("{m}; {TAMPERED_HINT}")))?;
        Ok((body, data_key, snap))
    }

    /// Writes the store out as a vault file, after the same verification as a load.
    async fn export(&self) -> Result<(Vec<u8>, usize, usize), VaultError> {
        let mut c = self.client().await?;
        let (meta, records, agents) = self.read_all(&mut c).await?;
        let (body, data_key, _) = self.verify(meta, records, agents)?;
        let (n, a) = (body.records.len(), body.agents.len());
        let draft = Draft {
            body,
            data_key,
            seal_limit: SEAL_LIMIT_PER_KEY,
        };
        let (bytes, _) = draft.encode()?;
        Ok((bytes, n, a))
    }
}

/// The driver's client under the pool's wrapper (its transactions are the driver's).
fn raw(c: &mut deadpool_postgres::Object) -> &mut tokio_postgres::Client {
    c
}

pub(super) fn body_of(
    meta: Meta,
    records: Vec<StoredRecord>,
    agents: Vec<AgentRecord>,
) -> FileBody {
    FileBody {
        counter: meta.generation,
        master: meta.master,
        data_key: meta.data_key,
        seal: meta.seal,
        records,
        agents,
    }
}

/// LISTEN on its own connection; a notification for our schema refreshes at once.
/// A lost connection is opened again (the resync covers the gap).
async fn listen(inner: Arc<Inner>) {
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        match inner.target.connect_listener(tx).await {
            Ok(client) => {
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    while let Some(payload) = rx.recv().await {
                        if payload == inner.db_schema {
                            // Errors are kept for `reload` and logged by the watcher.
                            let _ = inner.refresh(false).await;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "store LISTEN connection failed"),
        }
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

/// Every `RESYNC_EVERY`: compare the generation, load if it moved.
async fn resync(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = inner.refresh(false).await;
    }
}

/// The path-like label of a store for messages, without connecting.
pub fn label(cfg: &StoreConfig) -> String {
    match cfg.resolved_url() {
        Ok(u) => format!("{} schema {}", u.redacted(), cfg.schema),
        Err(_) => format!("postgres store schema {}", cfg.schema),
    }
}
