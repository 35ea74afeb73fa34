//! OAuth2 access tokens shared between replicas: a refresh runs inside a
//! transaction holding `pg_advisory_xact_lock(key of schema + secret)`, so one
//! replica at a time calls the token endpoint for a secret; the token is stored
//! sealed (AES-256-GCM under HKDF(master-derived key, `keyward/v1/oauth-token`),
//! associated data binding schema, scope, name, versions and expiry), and the
//! replicas that waited on the lock find it and use it. docs/store.md.

use super::super::crypto::{self, Sealed};
use super::super::error::VaultError;
use super::super::store::{SharedToken, TokenLease};
use super::{dberr, describe, raw, Inner};
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::sync::Arc;

/// HKDF label of the token-sealing key.
const LABEL_TOKEN: &str = "keyward/v1/oauth-token";

type Reply = tokio::sync::oneshot::Sender<Result<TokenLease, VaultError>>;

/// The advisory-lock key of one secret's token (FNV-1a of schema, scope, name).
fn lock_key(schema: &str, scope: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ["oauth", schema, scope, name].join("\0").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

fn aad(schema: &str, scope: &str, name: &str, v: i64, w: Option<i64>, expires: i64) -> Vec<u8> {
    format!(
        "{LABEL_TOKEN}\0{schema}\0{scope}\0{name}\0{v}\0{}\0{expires}",
        w.map(|w| w.to_string()).unwrap_or_default()
    )
    .into_bytes()
}

impl Inner {
    fn token_key(&self) -> crypto::Key {
        self.session.read().derive(LABEL_TOKEN)
    }

    /// Runs on the store's runtime: takes the lock, reads the stored token, hands
    /// the lease over, then stores what it is finished with and commits (or rolls
    /// back when the lease is dropped), which releases the lock.
    pub(super) async fn hold_token_lock(
        self: Arc<Self>,
        scope: String,
        name: String,
        reply: Reply,
    ) {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let mut c = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let tx = match raw(&mut c).transaction().await.map_err(err) {
            Ok(tx) => tx,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let s = &self.db_schema;
        let key = lock_key(s, &scope, &name);
        // SECURITY: one token call per secret across replicas (a refresh-token
        // grant raced by two replicas revokes one of them at rotating providers).
        let current = async {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .await
                .map_err(err)?;
            let sql = format!(
                "SELECT version, written, expires, sealed FROM {s}.oauth_tokens WHERE scope = $1 AND name = $2"
            );
            let row = tx.query_opt(&sql, &[&scope, &name]).await.map_err(err)?;
            Ok::<_, VaultError>(row.and_then(|r| self.open_token(&scope, &name, &r)))
        }
        .await;
        let current = match current {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (ftx, frx) = tokio::sync::oneshot::channel();
        if reply.send(Ok(TokenLease::new(current, ftx))).is_err() {
            return;
        }
        let Ok(Some(token)) = frx.await else {
            let _ = tx.rollback().await;
            return;
        };
        let stored = async {
            let (v, w) = (i64::from(token.versions.0), token.versions.1.map(i64::from));
            let expires = i64::try_from(token.expires).unwrap_or(i64::MAX);
            let k = self.token_key();
            let sealed = crypto::seal(
                &k,
                k.key_id(),
                &aad(s, &scope, &name, v, w, expires),
                token.token.expose(),
            )?;
            let sealed = B64.encode(sealed.encode());
            let sql = format!(
                "INSERT INTO {s}.oauth_tokens (scope, name, version, written, expires, sealed)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (scope, name) DO UPDATE SET version = $3, written = $4, expires = $5, sealed = $6"
            );
            tx.execute(&sql, &[&scope, &name, &v, &w, &expires, &sealed])
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)
        }
        .await;
        if let Err(e) = stored {
            tracing::warn!(secret = %name, error = %e, "cannot share the OAuth2 token with other replicas");
        }
    }

    /// A stored token that opens (an edited row is ignored: a fresh token is fetched).
    fn open_token(&self, scope: &str, name: &str, r: &tokio_postgres::Row) -> Option<SharedToken> {
        let v: i64 = r.try_get("version").ok()?;
        let w: Option<i64> = r.try_get("written").ok()?;
        let expires: i64 = r.try_get("expires").ok()?;
        let sealed: String = r.try_get("sealed").ok()?;
        let sealed = Sealed::decode(&B64.decode(sealed).ok()?).ok()?;
        let plain = crypto::open(
            &self.token_key(),
            &sealed,
            &aad(&self.db_schema, scope, name, v, w, expires),
        )?;
        Some(SharedToken {
            token: Secret::new(plain.to_vec()),
            expires: u64::try_from(expires).ok()?,
            versions: (
                u32::try_from(v).ok()?,
                w.and_then(|w| u32::try_from(w).ok()),
            ),
        })
    }
}
