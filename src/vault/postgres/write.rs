//! One write transaction (SPEC §10): `meta` locked, the touched rows read and
//! verified into a draft, the change applied by the file backend's code, the row
//! difference written with the table digest moved by the same rows, NOTIFY.
//! `import` is the same path from an empty store.

use super::super::change::{Applied, Change, Touched, Undo};
use super::super::crypto::Key;
use super::super::error::VaultError;
use super::super::format::{AgentRecord, Draft, StoredRecord, SEAL_LIMIT_PER_KEY};
use super::super::snapshot::{Edit, Snapshot};
use super::connect::{dberr, describe};
use super::digest::{Acc, Digester};
use super::rows::{self, Db, Meta};
use super::{body_of, raw, Inner, CHANNEL};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

impl Inner {
    /// One change in one transaction: `meta` locked (`FOR UPDATE`: writers through
    /// every replica are serialised and the generation strictly increases), the
    /// rows it touches read and verified, the change applied to them as a draft,
    /// the difference written, then NOTIFY (delivered at commit).
    pub(super) async fn apply(&self, change: Change) -> Result<(Applied, Undo), VaultError> {
        self.writable()?;
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        // Taken before the pool client, as `refresh` does (one lock order).
        let loading = self.loading.lock().await;
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before) = self.draft(&db, &tx, Some(change.touches())).await?;
        let (base, wrapped) = (draft.body.counter, draft.body.data_key.clone());
        let (applied, undo) = change.apply_to(&mut draft, &self.path)?;
        if undo.is_noop() {
            tx.rollback().await.map_err(err)?;
            return Ok((applied, undo));
        }
        // Only a change under the same data key can be laid over the snapshot.
        let edits = (draft.body.data_key == wrapped)
            .then(|| edits_of(&before.records, &before.agents, &draft));
        self.write(&db, &tx, &draft, before).await?;
        tx.commit().await.map_err(err)?;
        drop(c);
        let adopted = self.adopt(base, edits, &draft.data_key);
        drop(loading);
        if !adopted {
            self.after_write().await;
        }
        Ok((applied, undo))
    }

    pub(super) async fn undo(&self, undo: Undo) -> Result<(), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before) = self.draft(&db, &tx, None).await?;
        undo.apply_to(&mut draft)?;
        self.write(&db, &tx, &draft, before).await?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok(())
    }

    /// Refuses a change while the last load refused what the database holds: a
    /// write on top would build on rows this replica could not verify. (Undo
    /// still runs: it takes back this replica's own write.)
    pub(super) fn writable(&self) -> Result<(), VaultError> {
        match &*self.failure.lock() {
            // SECURITY: no write on contents that failed verification.
            Some(f) if f.refused => Err(dberr(
                self.path_str(),
                format!("store refused, nothing written: {}", f.message),
            )),
            _ => Ok(()),
        }
    }

    /// Our own write is visible to our readers before `apply` returns.
    pub(super) async fn after_write(&self) {
        if let Err(e) = self.refresh(false).await {
            tracing::warn!(error = %e, "store refresh after a write failed");
        }
    }

    /// Locks `meta` and reads what `change` touches (everything for an undo) into
    /// a draft; returns it with the rows as they were, keyed, for the diff.
    pub(super) async fn draft(
        &self,
        db: &Db<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        touched: Option<Touched>,
    ) -> Result<(Draft, Before), VaultError> {
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
        let acc = meta.digest.as_ref().map(|d| d.acc);
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
        let before = Before {
            records: keyed(&draft.body.records),
            agents: draft
                .body
                .agents
                .iter()
                .map(|a| (a.id.clone(), a.clone()))
                .collect(),
            acc,
        };
        Ok((draft, before))
    }

    /// Writes the difference between `before` and `draft`, moves the table
    /// digest by exactly the rows written, sets `meta` and notifies.
    pub(super) async fn write(
        &self,
        db: &Db<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        draft: &Draft,
        before: Before,
    ) -> Result<(), VaultError> {
        let generation = draft
            .body
            .counter
            .checked_add(1)
            .ok_or_else(|| VaultError::Invalid("generation counter exhausted".into()))?;
        // SECURITY: no write on a store whose digest was cleared: it would bless
        // whatever rows are there now.
        let mut acc = before.acc.ok_or_else(|| {
            dberr(
                self.path_str(),
                "table digest missing in meta (cleared outside keyward); nothing written",
            )
        })?;
        let dg = Digester::new(&draft.data_key);
        let after_r = keyed(&draft.body.records);
        for (key, (old, _)) in &before.records {
            if !after_r.contains_key(key) {
                db.delete_record(tx, &key.0, &key.1).await?;
                dg.toggle_record_json(&mut acc, old);
            }
        }
        for (key, (json, rec)) in &after_r {
            match before.records.get(key) {
                Some((old_json, _)) if old_json == json => continue,
                Some((old, _)) => {
                    db.put_record(tx, rec, generation, true).await?;
                    dg.toggle_record_json(&mut acc, old);
                }
                None => db.put_record(tx, rec, generation, false).await?,
            }
            dg.toggle_record_json(&mut acc, json);
        }
        for (id, old) in &before.agents {
            if draft.body.agents.iter().all(|a| &a.id != id || a != old) {
                db.delete_agent(tx, id).await?;
                dg.toggle_agent(&mut acc, old);
            }
        }
        for a in &draft.body.agents {
            if before.agents.get(&a.id) != Some(a) {
                db.insert_agent(tx, a, &draft.data_key, generation).await?;
                dg.toggle_agent(&mut acc, a);
            }
        }
        let meta = Meta {
            generation,
            master: draft.body.master.clone(),
            data_key: draft.body.data_key.clone(),
            seal: draft.body.seal.clone(),
            digest: Some(dg.seal(generation, &draft.body.seal, acc)),
        };
        db.update_meta(tx, &meta).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.db_schema])
            .await
            .map_err(|e| dberr(self.path_str(), describe(&e)))?;
        Ok(())
    }

    /// Copies a verified file vault into an empty store in one transaction, as a
    /// write from nothing: the file's data key (wrapped under the same master
    /// key) becomes the store's, its records are copied still sealed.
    pub(super) async fn import(
        &self,
        bytes: Vec<u8>,
        file: PathBuf,
    ) -> Result<(usize, usize), VaultError> {
        self.writable()?;
        let (body, data_key) = super::super::file::read_any(&bytes, &self.master, &file)?;
        // Proves every record of the file opens before anything is copied.
        Snapshot::build(&body, &data_key, &file, true)?;
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before) = self.draft(&db, &tx, None).await?;
        if !before.records.is_empty() || !before.agents.is_empty() {
            return Err(dberr(
                self.path_str(),
                "the store already holds secrets or agents; import needs an empty store",
            ));
        }
        let counter = draft.body.counter.max(body.counter);
        draft.body = body;
        draft.body.counter = counter;
        draft.data_key = data_key;
        let (n, a) = (draft.body.records.len(), draft.body.agents.len());
        // An empty set has the same (zero) accumulator under any key.
        let before = Before {
            acc: Some(Acc::default()),
            ..before
        };
        self.write(&db, &tx, &draft, before).await?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok((n, a))
    }
}

/// The rows a write read (keyed, with their JSON for the diff) and the digest
/// accumulator of `meta` (`None`: cleared outside keyward).
pub(super) struct Before {
    records: Rows,
    agents: Agents,
    acc: Option<Acc>,
}

pub(super) type Rows = BTreeMap<(String, String), (String, StoredRecord)>;
pub(super) type Agents = BTreeMap<String, AgentRecord>;

pub(super) fn keyed(records: &[StoredRecord]) -> Rows {
    records
        .iter()
        .map(|r| {
            let json = serde_json::to_string(r).unwrap_or_default();
            ((r.scope.clone(), r.name.clone()), (json, r.clone()))
        })
        .collect()
}

// The writer's own change laid over its snapshot (`Inner::adopt`): after a commit
// the replica that wrote does not reload the whole store (at 100,000 secrets a
// full load is ~0.6 s: every row read and opened); other replicas still load on
// the notification. docs/store.md "Reads, writes, propagation".
impl Inner {
    /// Our own committed write laid over the current snapshot, when that snapshot
    /// is exactly the generation the write started from (`meta` was locked, so
    /// nothing else committed in between): costs the change, not the vault (a full
    /// load opens every record). Else (or if a record fails) `after_write` loads.
    ///
    /// The caller holds `loading` from before its write transaction to here, so
    /// the LISTEN task, woken by our own NOTIFY, finds this generation current
    /// and loads nothing (instead of a full load the write would wait behind).
    pub(super) fn adopt(&self, base: u64, edits: Option<Vec<Edit>>, data_key: &Arc<Key>) -> bool {
        let Some(edits) = edits else {
            return false;
        };
        let cur = self.current.load_full();
        if cur.generation() != base || self.seen.load(Ordering::SeqCst) > base {
            return false;
        }
        let Some(generation) = base.checked_add(1) else {
            return false;
        };
        // SECURITY: the new records are opened once (verify), as a load would.
        match cur.edited(edits, data_key, generation, true) {
            Ok(snap) => {
                self.seen.fetch_max(generation, Ordering::SeqCst);
                self.current.store(Arc::new(snap));
                *self.last_ok.lock() = Instant::now();
                true
            }
            Err(_) => false,
        }
    }
}

/// What a write changed, as snapshot edits (rows and agents before vs the draft).
pub(super) fn edits_of(before_r: &Rows, before_a: &Agents, draft: &Draft) -> Vec<Edit> {
    let after_r = keyed(&draft.body.records);
    let mut edits: Vec<Edit> = before_r
        .keys()
        .filter(|k| !after_r.contains_key(*k))
        .map(|(scope, name)| Edit::Remove {
            scope: scope.clone(),
            name: name.clone(),
        })
        .collect();
    for (key, (json, rec)) in &after_r {
        if before_r.get(key).map(|(old, _)| old) != Some(json) {
            edits.push(Edit::Put(rec.clone()));
        }
    }
    for id in before_a.keys() {
        if draft.body.agents.iter().all(|a| &a.id != id) {
            edits.push(Edit::RemoveAgent { id: id.clone() });
        }
    }
    for a in &draft.body.agents {
        if before_a.get(&a.id) != Some(a) {
            edits.push(Edit::PutAgent(a.clone()));
        }
    }
    edits
}
