//! The PostgreSQL backend (SPEC §10): [`PgStore`] implements [`Store`] on tables
//! of sealed records (`rows.rs`), migrated under an advisory lock (`schema.rs`),
//! reached through a pool (`connect.rs`). Readers get a cached `Arc<Snapshot>`;
//! a LISTEN task and a periodic generation check refresh it, so a change through
//! any replica is in effect on all within a second. The trait is sync: DB work
//! runs on a small runtime of its own and callers wait on a channel, never a
//! proxy worker (the request path only loads the snapshot). docs/store.md.

mod adopt;
mod batch;
pub mod connect;
mod rows;
pub mod schema;
mod tokens;

use super::change::{Applied, Change, Touched, Undo};
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
use parking_lot::Mutex;
use rows::{Db, Meta};
use std::collections::BTreeMap;
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
    failure: Mutex<Option<String>>,
    /// One full load at a time.
    loading: tokio::sync::Mutex<()>,
    /// `[store] stale_after`: how long the last snapshot may be served unrefreshed.
    stale_after: Duration,
    /// When a refresh last succeeded (the snapshot was confirmed current).
    last_ok: Mutex<Instant>,
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
            Some(msg) => Err(dberr(self.inner.path_str(), msg)),
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
        if self.inner.failure.lock().is_none() {
            return Freshness::Current;
        }
        let age = self.inner.last_ok.lock().elapsed();
        if age > self.inner.stale_after {
            Freshness::Stale { age }
        } else {
            Freshness::Unreachable { age }
        }
    }
}

impl Inner {
    fn db(&self) -> Db<'_> {
        Db {
            s: &self.db_schema,
            shown: self.path_str(),
        }
    }

    fn path_str(&self) -> &str {
        self.path.to_str().unwrap_or(&self.shown)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, VaultError> {
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

    /// The schema at the latest version with its `meta` row: nothing to migrate, so
    /// no DDL and no lock (a replica may then run as a role without CREATE).
    async fn up_to_date(
        &self,
        c: &deadpool_postgres::Object,
    ) -> Result<Option<Opened>, VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let table = format!("{}.schema_version", self.db_schema);
        let row = c
            .query_one("SELECT to_regclass($1)::text AS t", &[&table])
            .await
            .map_err(err)?;
        let exists: Option<String> = row.try_get("t").map_err(err)?;
        if exists.is_none() {
            return Ok(None);
        }
        let sql = format!("SELECT coalesce(max(version), 0) AS v FROM {table}");
        let have: i32 = c
            .query_one(&sql, &[])
            .await
            .map_err(err)?
            .try_get("v")
            .map_err(err)?;
        if have != schema::latest() {
            return Ok(None);
        }
        let Some(meta) = self.db().meta(&***c, false).await? else {
            return Ok(None);
        };
        rows::unwrap(&self.master, &meta, &self.path)?;
        Ok(Some(Opened {
            schema_version: have,
            generation: meta.generation,
            created: false,
        }))
    }

    /// Creates or upgrades the schema, and the `meta` row, under the advisory lock.
    async fn migrate(&self) -> Result<Opened, VaultError> {
        let s = &self.db_schema;
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let mut c = self.client().await?;
        if let Some(opened) = self.up_to_date(&c).await? {
            return Ok(opened);
        }
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        // SECURITY: replicas starting together must not both create the first data
        // key (records sealed under two keys); the lock serialises them.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::lock_key(s)])
            .await
            .map_err(err)?;
        tx.batch_execute(&schema::create_schema(s))
            .await
            .map_err(err)?;
        let row = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) AS v FROM {s}.schema_version"),
                &[],
            )
            .await
            .map_err(err)?;
        let have: i32 = row.try_get("v").map_err(err)?;
        if have > schema::latest() {
            return Err(dberr(
                self.path_str(),
                format!(
                    "schema version {have} is newer than this keyward ({}); upgrade keyward",
                    schema::latest()
                ),
            ));
        }
        for n in (have + 1)..=schema::latest() {
            let sql = schema::migration(s, n as usize)
                .ok_or_else(|| VaultError::Invalid(format!("no migration {n}")))?;
            tx.batch_execute(&sql).await.map_err(err)?;
            tx.execute(
                &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
                &[&n],
            )
            .await
            .map_err(err)?;
        }
        let db = self.db();
        let created = match db.meta(&tx, true).await? {
            Some(meta) => {
                rows::unwrap(&self.master, &meta, &self.path)?;
                false
            }
            None => {
                let fresh = Draft::fresh(&self.master, &self.path)?;
                let meta = Meta {
                    generation: 0,
                    master: fresh.body.master.clone(),
                    data_key: fresh.body.data_key.clone(),
                    seal: fresh.body.seal.clone(),
                };
                db.insert_meta(&tx, &meta).await?;
                true
            }
        };
        let generation = db.generation(&tx).await?.unwrap_or(0);
        tx.commit().await.map_err(err)?;
        Ok(Opened {
            schema_version: schema::latest(),
            generation,
            created,
        })
    }

    /// Loads everything in one consistent read and swaps the snapshot in (unless
    /// nothing changed and `force` is off). Records and agents are verified first;
    /// on any error the last good snapshot stays and the error is kept for `reload`.
    async fn refresh(&self, force: bool) -> Result<bool, VaultError> {
        let _one = self.loading.lock().await;
        let res = self.load(force).await;
        match &res {
            Ok(_) => {
                *self.last_ok.lock() = Instant::now();
                *self.failure.lock() = None;
            }
            Err(VaultError::File { message, .. }) => *self.failure.lock() = Some(message.clone()),
            Err(e) => *self.failure.lock() = Some(e.to_string()),
        }
        res
    }

    async fn load(&self, force: bool) -> Result<bool, VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let mut c = self.client().await?;
        let db = self.db();
        if !force {
            let gen = db.generation(&**c).await?;
            if gen == Some(self.current.load().generation()) {
                return Ok(false);
            }
        }
        let tx = raw(&mut c)
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
        let data_key = Arc::new(rows::unwrap(&self.master, &meta, &self.path)?);
        let records = db.records(&tx).await?;
        let agents = db.agents(&tx, &data_key).await?;
        tx.commit().await.map_err(err)?;
        let seen = self.seen.load(Ordering::SeqCst);
        // SECURITY: a restored older database (or a replayed generation) would bring
        // back removed secrets and agents; the generation only moves forward.
        if meta.generation < seen {
            return Err(dberr(
                self.path_str(),
                format!(
                    "rollback detected: store generation {} is older than generation {seen} already seen",
                    meta.generation
                ),
            ));
        }
        let body = body_of(meta, records, agents);
        // SECURITY: every record is opened once (AAD: id, scope, name, version,
        // hosts, kind) so an edited or swapped row is refused before it is served.
        let snap = Snapshot::build(&body, &data_key, &self.path, true)?;
        self.seen.fetch_max(body.counter, Ordering::SeqCst);
        self.current.store(Arc::new(snap));
        Ok(true)
    }

    /// One change in one transaction: `meta` locked (`FOR UPDATE`: writers through
    /// every replica are serialised and the generation strictly increases), the
    /// rows it touches read and verified, the change applied to them as a draft,
    /// the difference written, then NOTIFY (delivered at commit).
    async fn apply(&self, change: Change) -> Result<(Applied, Undo), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before_r, before_a) = self.draft(&db, &tx, Some(change.touches())).await?;
        let (base, wrapped) = (draft.body.counter, draft.body.data_key.clone());
        let (applied, undo) = change.apply_to(&mut draft, &self.path)?;
        if undo.is_noop() {
            tx.rollback().await.map_err(err)?;
            return Ok((applied, undo));
        }
        // Only a change under the same data key can be laid over the snapshot.
        let edits =
            (draft.body.data_key == wrapped).then(|| adopt::edits_of(&before_r, &before_a, &draft));
        self.write(&db, &tx, &draft, before_r, before_a).await?;
        tx.commit().await.map_err(err)?;
        if !self.adopt(base, edits, &draft.data_key).await {
            self.after_write().await;
        }
        Ok((applied, undo))
    }

    async fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before_r, before_a) = self.draft(&db, &tx, None).await?;
        undo.apply_to(&mut draft)?;
        self.write(&db, &tx, &draft, before_r, before_a).await?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok(())
    }

    /// Our own write is visible to our readers before `apply` returns.
    async fn after_write(&self) {
        if let Err(e) = self.refresh(false).await {
            tracing::warn!(error = %e, "store refresh after a write failed");
        }
    }

    /// Locks `meta` and reads what `change` touches (everything for an undo) into
    /// a draft; returns it with the rows as they were, keyed, for the diff.
    async fn draft(
        &self,
        db: &Db<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        touched: Option<Touched>,
    ) -> Result<(Draft, Rows, Agents), VaultError> {
        let meta = db
            .meta(tx, true)
            .await?
            .ok_or_else(|| dberr(self.path_str(), "no meta row: run `keyward store init`"))?;
        let data_key = Arc::new(rows::unwrap(&self.master, &meta, &self.path)?);
        let (records, agents) = match touched {
            None => (db.records(tx).await?, db.agents(tx, &data_key).await?),
            Some((keys, ids)) => {
                let mut records = Vec::new();
                for (scope, name) in keys {
                    if let Some(r) = db.record(tx, &scope, &name).await? {
                        records.push(r);
                    }
                }
                let mut agents = Vec::new();
                for id in ids {
                    agents.extend(db.agent(tx, &id, &data_key).await?);
                }
                (records, agents)
            }
        };
        let body = body_of(meta, records, agents);
        let draft = Draft {
            body,
            data_key,
            seal_limit: SEAL_LIMIT_PER_KEY,
        };
        // SECURITY: a row edited with SQL must not be laundered by a rotation that
        // re-seals it (with its edited hosts or scope) under a valid tag.
        for r in &draft.body.records {
            drop(draft.open(r, &self.path)?);
        }
        let before_r = keyed(&draft.body.records);
        let before_a = draft
            .body
            .agents
            .iter()
            .map(|a| (a.id.clone(), a.clone()))
            .collect();
        Ok((draft, before_r, before_a))
    }

    async fn write(
        &self,
        db: &Db<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        draft: &Draft,
        before_r: Rows,
        before_a: Agents,
    ) -> Result<(), VaultError> {
        let generation = draft
            .body
            .counter
            .checked_add(1)
            .ok_or_else(|| VaultError::Invalid("generation counter exhausted".into()))?;
        let after_r = keyed(&draft.body.records);
        for key in before_r.keys() {
            if !after_r.contains_key(key) {
                db.delete_record(tx, &key.0, &key.1).await?;
            }
        }
        for (key, (json, rec)) in &after_r {
            match before_r.get(key) {
                Some((old, _)) if old == json => {}
                Some(_) => db.put_record(tx, rec, generation, true).await?,
                None => db.put_record(tx, rec, generation, false).await?,
            }
        }
        for (id, old) in &before_a {
            if draft.body.agents.iter().all(|a| &a.id != id || a != old) {
                db.delete_agent(tx, id).await?;
            }
        }
        for a in &draft.body.agents {
            if before_a.get(&a.id) != Some(a) {
                db.insert_agent(tx, a, &draft.data_key, generation).await?;
            }
        }
        let meta = Meta {
            generation,
            master: draft.body.master.clone(),
            data_key: draft.body.data_key.clone(),
            seal: draft.body.seal.clone(),
        };
        db.update_meta(tx, &meta).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.db_schema])
            .await
            .map_err(|e| dberr(self.path_str(), describe(&e)))?;
        Ok(())
    }

    async fn import(&self, bytes: Vec<u8>, file: PathBuf) -> Result<(usize, usize), VaultError> {
        let (body, data_key) = super::file::read_any(&bytes, &self.master, &file)?;
        let draft = Draft {
            body,
            data_key,
            seal_limit: SEAL_LIMIT_PER_KEY,
        };
        // Proves every record of the file opens before anything is copied.
        Snapshot::build(&draft.body, &draft.data_key, &file, true)?;
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let meta = db
            .meta(&tx, true)
            .await?
            .ok_or_else(|| dberr(self.path_str(), "no meta row: run `keyward store init`"))?;
        let data_key = rows::unwrap(&self.master, &meta, &self.path)?;
        if !db.records(&tx).await?.is_empty() || !db.agents(&tx, &data_key).await?.is_empty() {
            return Err(dberr(
                self.path_str(),
                "the store already holds secrets or agents; import needs an empty store",
            ));
        }
        let generation = meta
            .generation
            .max(draft.body.counter)
            .checked_add(1)
            .ok_or_else(|| VaultError::Invalid("generation counter exhausted".into()))?;
        for r in &draft.body.records {
            db.put_record(&tx, r, generation, false).await?;
        }
        for a in &draft.body.agents {
            db.insert_agent(&tx, a, &draft.data_key, generation).await?;
        }
        // The file's data key (wrapped under the same master key) becomes the store's.
        db.update_meta(
            &tx,
            &Meta {
                generation,
                master: draft.body.master.clone(),
                data_key: draft.body.data_key.clone(),
                seal: draft.body.seal.clone(),
            },
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.db_schema])
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok((draft.body.records.len(), draft.body.agents.len()))
    }

    async fn export(&self) -> Result<(Vec<u8>, usize, usize), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c)
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
        let data_key = Arc::new(rows::unwrap(&self.master, &meta, &self.path)?);
        let records = db.records(&tx).await?;
        let agents = db.agents(&tx, &data_key).await?;
        tx.commit().await.map_err(err)?;
        let body = body_of(meta, records, agents);
        Snapshot::build(&body, &data_key, &self.path, true)?;
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

type Rows = BTreeMap<(String, String), (String, StoredRecord)>;
type Agents = BTreeMap<String, AgentRecord>;

fn keyed(records: &[StoredRecord]) -> Rows {
    records
        .iter()
        .map(|r| {
            let json = serde_json::to_string(r).unwrap_or_default();
            ((r.scope.clone(), r.name.clone()), (json, r.clone()))
        })
        .collect()
}

fn body_of(meta: Meta, records: Vec<StoredRecord>, agents: Vec<AgentRecord>) -> FileBody {
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
