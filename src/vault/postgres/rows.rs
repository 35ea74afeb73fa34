//! Rows and the vault types they hold: a `records` row is exactly the file's
//! sealed record (`StoredRecord`), an `agents` row an `AgentRecord` with a MAC
//! under a key derived from the data key (so an inserted or edited agent is
//! refused), `meta` the file header (key id, KDF, wrapped data key, seal state),
//! the generation and the table digest (`digest.rs`). Reads, and the writes of a
//! change as a row diff.

use super::super::crypto::{self, Key, Sealed};
use super::super::error::VaultError;
use super::super::format::{AgentRecord, MasterHeader, SealState, StoredRecord};
use super::super::kind::SecretKind;
use super::super::master::MasterKey;
use super::connect::{dberr, describe};
use super::digest::{Acc, Digest};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

/// HKDF label of the agent-row MAC key (a sub-key of the data key; used for nothing else).
pub(in crate::vault) const LABEL_AGENT_MAC: &str = "keyward/v1/pg-agent-mac";

/// The `meta` row.
#[derive(Debug, Clone)]
pub(in crate::vault) struct Meta {
    pub(in crate::vault) generation: u64,
    pub(in crate::vault) master: MasterHeader,
    pub(in crate::vault) data_key: String,
    pub(in crate::vault) seal: SealState,
    /// `None` only before migration 4 computed it (a load refuses that).
    pub(in crate::vault) digest: Option<Digest>,
}

/// An `agents` row as read, before its MAC is checked.
pub(in crate::vault) struct AgentRow {
    id: String,
    record: String,
    mac: String,
}

const RECORD_COLS: &str = "scope, name, id, version, hint, description, hosts, created, \
     updated, last_rotated, rotate_every_secs, kind, public, sealed";

pub(in crate::vault) struct Db<'a> {
    pub(in crate::vault) s: &'a str,
    pub(in crate::vault) shown: &'a str,
}

impl Db<'_> {
    fn err(&self, e: tokio_postgres::Error) -> VaultError {
        dberr(self.shown, describe(&e))
    }

    fn bad(&self, what: &str) -> VaultError {
        dberr(self.shown, format!("corrupt row in {}: {what}", self.s))
    }

    pub(in crate::vault) async fn meta(
        &self,
        c: &impl GenericClient,
        for_update: bool,
    ) -> Result<Option<Meta>, VaultError> {
        let lock = if for_update { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT generation, key_id, kdf, data_key, seal_epoch, seal_count, row_digest, \
             digest_mac FROM {}.meta{lock}",
            self.s
        );
        let Some(row) = c.query_opt(&sql, &[]).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let kdf: Option<String> = self.get(&row, "kdf")?;
        let kdf = match kdf {
            Some(k) => Some(serde_json::from_str(&k).map_err(|_| self.bad("meta.kdf"))?),
            None => None,
        };
        let acc: Option<String> = self.get(&row, "row_digest")?;
        let mac: Option<String> = self.get(&row, "digest_mac")?;
        let digest = match (acc, mac) {
            (Some(acc), Some(mac)) => Some(Digest {
                acc: Acc::from_hex(&acc).ok_or_else(|| self.bad("meta.row_digest"))?,
                mac,
            }),
            _ => None,
        };
        Ok(Some(Meta {
            generation: u64_of(self.get::<i64>(&row, "generation")?)
                .ok_or_else(|| self.bad("generation"))?,
            master: MasterHeader {
                key_id: self.get(&row, "key_id")?,
                kdf,
            },
            data_key: self.get(&row, "data_key")?,
            seal: SealState {
                epoch: u64_of(self.get::<i64>(&row, "seal_epoch")?)
                    .ok_or_else(|| self.bad("seal_epoch"))?,
                count: u64_of(self.get::<i64>(&row, "seal_count")?)
                    .ok_or_else(|| self.bad("seal_count"))?,
            },
            digest,
        }))
    }

    /// Creates the `meta` row (a new store; a concurrent creator wins, nothing changes).
    pub(in crate::vault) async fn insert_meta(
        &self,
        c: &impl GenericClient,
        m: &Meta,
    ) -> Result<(), VaultError> {
        let sql = format!(
            "INSERT INTO {}.meta (generation, key_id, kdf, data_key, seal_epoch, seal_count, \
             row_digest, digest_mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (singleton) DO NOTHING",
            self.s
        );
        self.write_meta(c, &sql, m).await
    }

    /// Replaces the header (import) and sets the generation, seal state and digest.
    pub(in crate::vault) async fn update_meta(
        &self,
        c: &impl GenericClient,
        m: &Meta,
    ) -> Result<(), VaultError> {
        let sql = format!(
            "UPDATE {}.meta SET generation = $1, key_id = $2, kdf = $3, data_key = $4, \
             seal_epoch = $5, seal_count = $6, row_digest = $7, digest_mac = $8",
            self.s
        );
        self.write_meta(c, &sql, m).await
    }

    async fn write_meta(
        &self,
        c: &impl GenericClient,
        sql: &str,
        m: &Meta,
    ) -> Result<(), VaultError> {
        let kdf = m
            .master
            .kdf
            .as_ref()
            .map(|k| serde_json::to_string(k).unwrap_or_default());
        let acc = m.digest.as_ref().map(|d| d.acc.to_hex());
        let mac = m.digest.as_ref().map(|d| d.mac.clone());
        let params: [&(dyn ToSql + Sync); 8] = [
            &i64_of(m.generation)?,
            &m.master.key_id,
            &kdf,
            &m.data_key,
            &i64_of(m.seal.epoch)?,
            &i64_of(m.seal.count)?,
            &acc,
            &mac,
        ];
        c.execute(sql, &params).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(in crate::vault) async fn generation(
        &self,
        c: &impl GenericClient,
    ) -> Result<Option<u64>, VaultError> {
        let sql = format!("SELECT generation FROM {}.meta", self.s);
        let Some(row) = c.query_opt(&sql, &[]).await.map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let g: i64 = self.get(&row, "generation")?;
        Ok(Some(u64_of(g).ok_or_else(|| self.bad("generation"))?))
    }

    /// One record, locked for the rest of the transaction.
    pub(in crate::vault) async fn record(
        &self,
        c: &impl GenericClient,
        scope: &str,
        name: &str,
    ) -> Result<Option<StoredRecord>, VaultError> {
        let tail = "WHERE scope = $1 AND name = $2 FOR UPDATE";
        Ok(self.select_records(c, tail, &[&scope, &name]).await?.pop())
    }

    pub(in crate::vault) async fn records(
        &self,
        c: &impl GenericClient,
    ) -> Result<Vec<StoredRecord>, VaultError> {
        self.select_records(c, "ORDER BY scope, name", &[]).await
    }

    /// The records rows `tail` (`WHERE …`, `ORDER BY …`) selects, decoded.
    async fn select_records(
        &self,
        c: &impl GenericClient,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<StoredRecord>, VaultError> {
        let sql = format!("SELECT {RECORD_COLS} FROM {}.records {tail}", self.s);
        let rows = c.query(&sql, params).await.map_err(|e| self.err(e))?;
        rows.iter().map(|r| self.stored(r)).collect()
    }

    /// One agent (MAC checked), locked for the rest of the transaction.
    pub(in crate::vault) async fn agent(
        &self,
        c: &impl GenericClient,
        id: &str,
        data_key: &Key,
    ) -> Result<Option<AgentRecord>, VaultError> {
        let tail = "WHERE id = $1 FOR UPDATE";
        match self.select_agents(c, tail, &[&id]).await?.pop() {
            Some(row) => Ok(Some(self.verify_agent(row, data_key)?)),
            None => Ok(None),
        }
    }

    /// Every agent, MAC checked.
    pub(in crate::vault) async fn agents(
        &self,
        c: &impl GenericClient,
        data_key: &Key,
    ) -> Result<Vec<AgentRecord>, VaultError> {
        let rows = self.agent_rows(c).await?;
        rows.into_iter()
            .map(|r| self.verify_agent(r, data_key))
            .collect()
    }

    /// Every agent row as stored, not yet checked (a load checks after its read).
    pub(in crate::vault) async fn agent_rows(
        &self,
        c: &impl GenericClient,
    ) -> Result<Vec<AgentRow>, VaultError> {
        self.select_agents(c, "ORDER BY id", &[]).await
    }

    /// The agents rows `tail` (`WHERE …`, `ORDER BY …`) selects.
    async fn select_agents(
        &self,
        c: &impl GenericClient,
        tail: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<AgentRow>, VaultError> {
        let sql = format!("SELECT id, record, mac FROM {}.agents {tail}", self.s);
        let rows = c.query(&sql, params).await.map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                Ok(AgentRow {
                    id: self.get(row, "id")?,
                    record: self.get(row, "record")?,
                    mac: self.get(row, "mac")?,
                })
            })
            .collect()
    }

    pub(in crate::vault) fn verify_agent(
        &self,
        row: AgentRow,
        data_key: &Key,
    ) -> Result<AgentRecord, VaultError> {
        let AgentRow { id, record, mac } = row;
        let tag = hex::decode(mac).map_err(|_| self.bad("agents.mac"))?;
        // SECURITY: an agent row written or edited with SQL (a token hash of the
        // attacker's choosing, another chain) is refused: its MAC needs the data key.
        let mut m = agent_mac(data_key);
        m.update(record.as_bytes());
        if m.verify_slice(&tag).is_err() {
            return Err(dberr(
                self.shown,
                format!("agent {id:?} fails authentication (edited or inserted outside keyward)"),
            ));
        }
        let agent: AgentRecord =
            serde_json::from_str(&record).map_err(|_| self.bad("agents.record"))?;
        if agent.id != id {
            return Err(dberr(
                self.shown,
                format!("agent row {id:?} holds agent {:?} (moved)", agent.id),
            ));
        }
        Ok(agent)
    }

    fn stored(&self, row: &Row) -> Result<StoredRecord, VaultError> {
        let kind: String = self.get(row, "kind")?;
        let public: String = self.get(row, "public")?;
        let version: i64 = self.get(row, "version")?;
        let every: Option<i64> = self.get(row, "rotate_every_secs")?;
        Ok(StoredRecord {
            id: self.get(row, "id")?,
            scope: self.get(row, "scope")?,
            name: self.get(row, "name")?,
            version: u32::try_from(version).map_err(|_| self.bad("records.version"))?,
            hint: self.get(row, "hint")?,
            description: self.get(row, "description")?,
            hosts: self.get(row, "hosts")?,
            created: self.get(row, "created")?,
            updated: self.get(row, "updated")?,
            last_rotated: self.get(row, "last_rotated")?,
            rotate_every_secs: match every {
                Some(v) => Some(u64_of(v).ok_or_else(|| self.bad("records.rotate_every_secs"))?),
                None => None,
            },
            kind: SecretKind::parse(&kind).ok_or_else(|| self.bad("records.kind"))?,
            public: serde_json::from_str::<BTreeMap<String, String>>(&public)
                .map_err(|_| self.bad("records.public"))?,
            sealed: self.get(row, "sealed")?,
        })
    }

    fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
        &self,
        row: &'r Row,
        col: &str,
    ) -> Result<T, VaultError> {
        row.try_get(col).map_err(|_| self.bad(col))
    }

    pub(in crate::vault) async fn delete_record(
        &self,
        c: &impl GenericClient,
        scope: &str,
        name: &str,
    ) -> Result<(), VaultError> {
        let sql = format!(
            "DELETE FROM {}.records WHERE scope = $1 AND name = $2",
            self.s
        );
        c.execute(&sql, &[&scope, &name])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Inserts a record; with `replace`, the row of its (scope, name) is replaced.
    pub(in crate::vault) async fn put_record(
        &self,
        c: &impl GenericClient,
        r: &StoredRecord,
        generation: u64,
        replace: bool,
    ) -> Result<(), VaultError> {
        if replace {
            self.delete_record(c, &r.scope, &r.name).await?;
        }
        let sql = format!(
            "INSERT INTO {}.records ({RECORD_COLS}, generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            self.s
        );
        let public = serde_json::to_string(&r.public).unwrap_or_else(|_| "{}".into());
        let every = r.rotate_every_secs.map(i64_of).transpose()?;
        let params: [&(dyn ToSql + Sync); 15] = [
            &r.scope,
            &r.name,
            &r.id,
            &i64::from(r.version),
            &r.hint,
            &r.description,
            &r.hosts,
            &r.created,
            &r.updated,
            &r.last_rotated,
            &every,
            &r.kind.as_str(),
            &public,
            &r.sealed,
            &i64_of(generation)?,
        ];
        c.execute(&sql, &params).await.map_err(|e| match e.code() {
            // Create-only holds even without the meta row lock: the key is unique.
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => VaultError::Exists {
                scope: r.scope.clone(),
                name: r.name.clone(),
            },
            _ => self.err(e),
        })?;
        Ok(())
    }

    pub(in crate::vault) async fn delete_agent(
        &self,
        c: &impl GenericClient,
        id: &str,
    ) -> Result<(), VaultError> {
        let sql = format!("DELETE FROM {}.agents WHERE id = $1", self.s);
        c.execute(&sql, &[&id]).await.map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(in crate::vault) async fn insert_agent(
        &self,
        c: &impl GenericClient,
        a: &AgentRecord,
        data_key: &Key,
        generation: u64,
    ) -> Result<(), VaultError> {
        let record = serde_json::to_string(a)
            .map_err(|e| VaultError::Invalid(format!("cannot encode agent: {e}")))?;
        let mut m = agent_mac(data_key);
        m.update(record.as_bytes());
        let mac = hex::encode(m.finalize().into_bytes());
        let sql = format!(
            "INSERT INTO {}.agents (id, record, mac, generation) VALUES ($1, $2, $3, $4)",
            self.s
        );
        c.execute(&sql, &[&a.id, &record, &mac, &i64_of(generation)?])
            .await
            .map_err(|e| match e.code() {
                // SECURITY: create-only under races: the primary key refuses a second
                // agent with this id even if two writers got this far.
                Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    VaultError::AgentExists(a.id.clone())
                }
                _ => self.err(e),
            })?;
        Ok(())
    }
}

fn agent_mac(data_key: &Key) -> Hmac<Sha256> {
    let k = data_key.derive(LABEL_AGENT_MAC);
    // HMAC takes keys of any length; 32 bytes cannot fail.
    match Hmac::<Sha256>::new_from_slice(k.expose()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts a 32-byte key"),
    }
}

fn u64_of(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

fn i64_of(v: u64) -> Result<i64, VaultError> {
    i64::try_from(v).map_err(|_| VaultError::Invalid("counter out of range".into()))
}

/// The data key in `meta`, unwrapped with `master` after the key ids are compared.
pub(in crate::vault) fn unwrap(
    master: &MasterKey,
    meta: &Meta,
    path: &Path,
) -> Result<Key, VaultError> {
    let (mk, _) = master.resolve(meta.master.kdf.as_ref(), path)?;
    let ours = hex::encode(mk.key_id());
    // SECURITY: a replica with another master key must refuse the store, not
    // write records sealed under a key the others cannot open.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        ours.as_bytes(),
        meta.master.key_id.as_bytes(),
    )) {
        return Err(VaultError::File {
            path: path.display().to_string(),
            message: format!(
                "wrong master key: the store is sealed under key id {}, {} has id {ours}",
                meta.master.key_id,
                master.source().describe()
            ),
        });
    }
    let wrapped = B64
        .decode(&meta.data_key)
        .ok()
        .and_then(|raw| Sealed::decode(&raw).ok())
        .ok_or_else(|| VaultError::File {
            path: path.display().to_string(),
            message: "corrupt wrapped data key in meta".into(),
        })?;
    crypto::unwrap_data_key(&mk, &wrapped).ok_or_else(|| VaultError::File {
        path: path.display().to_string(),
        message: "cannot unwrap the data key: wrong master key or edited meta row".into(),
    })
}
