//! The writer's own change laid over its snapshot (`Inner::adopt`): after a commit
//! the replica that wrote does not reload the whole store (at 100,000 secrets a
//! full load is ~1 s: every row read and opened); other replicas still load on
//! the notification. docs/store.md "Reads, writes, propagation".

use super::write::{keyed, Agents, Rows};
use super::Inner;
use crate::vault::crypto::Key;
use crate::vault::format::Draft;
use crate::vault::snapshot::Edit;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

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
