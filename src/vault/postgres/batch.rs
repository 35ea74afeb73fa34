//! Several changes, or several undos, as one transaction: `meta` locked once, the
//! union of the rows they touch read and verified, every change applied in order
//! to one draft, the difference written with one generation. A failing change
//! rolls the whole transaction back, so `keyward secret import` against the
//! store is all or nothing (as the file backend's one-entry batch is).

use super::super::change::{Applied, Change, Touched, Undo};
use super::super::error::VaultError;
use super::{dberr, describe, raw, Inner};
use std::collections::BTreeSet;

/// Names the failing change of a batch (1-based, as the file backend does).
pub(super) fn in_batch(i: usize, e: VaultError) -> VaultError {
    VaultError::Invalid(format!("change {}: {e}", i + 1))
}

/// The rows several changes touch, each once.
fn union(all: impl Iterator<Item = Touched>) -> Touched {
    let (mut keys, mut ids) = (BTreeSet::new(), BTreeSet::new());
    for (k, a) in all {
        keys.extend(k);
        ids.extend(a);
    }
    (keys.into_iter().collect(), ids.into_iter().collect())
}

impl Inner {
    pub(super) async fn apply_batch(
        &self,
        changes: Vec<Change>,
    ) -> Result<Vec<(Applied, Undo)>, VaultError> {
        self.writable()?;
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let touched = union(changes.iter().map(Change::touches));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before) = self.draft(&db, &tx, Some(touched)).await?;
        let mut out = Vec::with_capacity(changes.len());
        for (i, change) in changes.into_iter().enumerate() {
            // Dropping `tx` on the error path rolls everything back.
            out.push(
                change
                    .apply_to(&mut draft, &self.path)
                    .map_err(|e| in_batch(i, e))?,
            );
        }
        if out.iter().all(|(_, u)| u.is_noop()) {
            tx.rollback().await.map_err(err)?;
            return Ok(out);
        }
        self.write(&db, &tx, &draft, before).await?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok(out)
    }

    /// Takes back several changes, newest first, in one transaction; refused (and
    /// nothing undone) if one of them changed again since.
    pub(super) async fn undo_all(&self, undos: Vec<Undo>) -> Result<(), VaultError> {
        let err = |e: tokio_postgres::Error| dberr(self.path_str(), describe(&e));
        let undos: Vec<Undo> = undos.into_iter().filter(|u| !u.is_noop()).collect();
        if undos.is_empty() {
            return Ok(());
        }
        let touched = union(undos.iter().map(Undo::touches));
        let db = self.db();
        let mut c = self.client().await?;
        let tx = raw(&mut c).transaction().await.map_err(err)?;
        let (mut draft, before) = self.draft(&db, &tx, Some(touched)).await?;
        for u in undos.into_iter().rev() {
            u.apply_to(&mut draft)?;
        }
        self.write(&db, &tx, &draft, before).await?;
        tx.commit().await.map_err(err)?;
        self.after_write().await;
        Ok(())
    }
}
