//! Opening the schema: the fast check that it is current (no DDL, no lock) and
//! the migrations under the advisory lock, which also create `meta` with the
//! first data key and the table digest, or compute the digest of an existing
//! store the first time a keyward with migration 4 opens it.

use super::super::crypto::Key;
use super::super::error::VaultError;
use super::super::format::Draft;
use super::super::snapshot::Snapshot;
use super::connect::{dberr, describe};
use super::digest::Digester;
use super::rows::{self, Db, Meta};
use super::{body_of, raw, schema, Inner, Opened};
use std::sync::Arc;

/// The migration that added the table digest to `meta`.
const DIGEST_MIGRATION: i32 = 4;

impl Inner {
    /// The schema at the latest version with its `meta` row: nothing to migrate, so
    /// no DDL and no lock (a replica may then run as a role without CREATE).
    pub(super) async fn up_to_date(
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
    pub(super) async fn migrate(&self) -> Result<Opened, VaultError> {
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
                let data_key = Arc::new(rows::unwrap(&self.master, &meta, &self.path)?);
                if have < DIGEST_MIGRATION && meta.digest.is_none() {
                    self.first_digest(&db, &tx, meta, &data_key).await?;
                }
                false
            }
            None => {
                let fresh = Draft::fresh(&self.master, &self.path)?;
                let digest =
                    Digester::new(&fresh.data_key).seal(0, &fresh.body.seal, Default::default());
                let meta = Meta {
                    generation: 0,
                    master: fresh.body.master.clone(),
                    data_key: fresh.body.data_key.clone(),
                    seal: fresh.body.seal.clone(),
                    digest: Some(digest),
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

    /// Migration 4 on a store that has rows: the digest of the rows as they are,
    /// once every record opens and every agent's MAC holds (what was deleted
    /// before this cannot be seen; from now on it can).
    async fn first_digest(
        &self,
        db: &Db<'_>,
        tx: &tokio_postgres::Transaction<'_>,
        mut meta: Meta,
        data_key: &Arc<Key>,
    ) -> Result<(), VaultError> {
        let records = db.records(tx).await?;
        let agents = db.agents(tx, data_key).await?;
        let body = body_of(meta.clone(), records, agents);
        Snapshot::build(&body, data_key, &self.path, true)?;
        let acc = Digester::new(data_key).of(&body.records, &body.agents);
        meta.digest = Some(Digester::new(data_key).seal(meta.generation, &meta.seal, acc));
        db.update_meta(tx, &meta).await
    }
}
