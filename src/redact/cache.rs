//! [`ScopeCache`]: per agent, the values its responses are redacted of, resolved
//! once per agent and vault snapshot by a closure the caller passes in (after a
//! vault change only for the names of the records that changed, so a change
//! costs what it changed, not the vault), and what they are searched with ([`PatternCache`] in `sets.rs` builds the automata; an
//! agent's previous set is what a changed one is served with until its own full
//! build is done).

use super::matcher::Patterns;
use super::sets::{value_id, Fingerprint, PatternCache, Served, ValueId, ValueSet};
use crate::resolve::{Agent, Chain, Principal};
use crate::secret::Secret;
use crate::vault::snapshot::RecordsView;
use crate::vault::Snapshot;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};

/// What a response to one agent is redacted of: every credential it could be
/// granted (SPEC §5, §6.6), not only the one its request carries, so a second key
/// the agent may use elsewhere is not handed back by an upstream that knows it.
/// One entry per agent id, valid for the agent and chain definitions and the
/// vault snapshot it was resolved under (compared by identity, so any config or
/// vault change resolves again; another agent never sees this entry). After a
/// vault change alone (same agent and chain definitions) only the names whose
/// records changed between the entry's snapshot and the new one are resolved
/// again; every other name keeps its values (they cannot have changed: its
/// records are the same, and the definitions that pick among them too).
pub struct ScopeCache {
    entries: parking_lot::RwLock<HashMap<String, Arc<InScope>>>,
    /// Per agent id, what its last entry dropped as stale was served with: the
    /// start of the next set's interim (so a vault change never finds an agent
    /// with nothing to serve while its new set builds).
    lineage: parking_lot::Mutex<HashMap<String, Served>>,
}

/// Agents whose in-scope values [`ScopeCache`] keeps.
pub const SCOPE_CACHE_SIZE: usize = 4096;

/// The values one agent's responses are redacted of (see [`ScopeCache`]).
pub struct InScope {
    /// What the entry was resolved for. Weak: an entry keeps neither a replaced
    /// snapshot nor a removed agent alive, yet their addresses cannot be reused
    /// while it exists, so the identity check cannot be fooled.
    agent: Weak<Agent>,
    chain: Option<Weak<Chain>>,
    snapshot: Weak<Snapshot>,
    /// The records of that snapshot, to diff the next one against.
    records: RecordsView,
    /// Per grantable name, its values with their ids (what `set` is made of).
    by_name: ByName,
    set: Arc<ValueSet>,
    /// What `set` is searched with (none until first used).
    served: parking_lot::Mutex<Option<Served>>,
    /// What the agent's previous set was served with, until `served` is set.
    prev: parking_lot::Mutex<Option<Served>>,
}

/// Per grantable name, its redaction values and their ids (persistent: the next
/// entry's map shares every unchanged name).
type ByName = imbl::OrdMap<String, Arc<[(ValueId, Secret)]>>;

/// What a `resolve` closure of [`ScopeCache::get`] returns: per grantable name
/// (each at most once), the values a response is redacted of for it.
pub type Resolved = Vec<(String, Vec<Secret>)>;

impl InScope {
    fn is_for(&self, principal: &Principal, snapshot: &Arc<Snapshot>) -> bool {
        self.same_principal(principal)
            && std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(snapshot))
    }

    /// Resolved for the same agent and chain definitions (by identity).
    fn same_principal(&self, principal: &Principal) -> bool {
        std::ptr::eq(self.agent.as_ptr(), Arc::as_ptr(&principal.agent))
            && match (&self.chain, &principal.chain) {
                (None, None) => true,
                (Some(w), Some(c)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(c)),
                _ => false,
            }
    }

    /// An entry whose agent is gone is dropped; one of an older snapshot is
    /// kept, to be updated from (it holds that snapshot's records, not more).
    fn is_live(&self) -> bool {
        self.agent.strong_count() > 0
    }

    /// The id of the set (SHA-256 over its sorted value ids).
    pub fn fingerprint(&self) -> &Fingerprint {
        self.set.fingerprint()
    }

    /// How many values responses to this agent are redacted of.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn lineage(&self) -> Option<Served> {
        self.served
            .lock()
            .clone()
            .or_else(|| self.prev.lock().clone())
    }

    /// [`Self::lineage`] without waiting (under the cache's write lock, where an
    /// entry busy building inline must not stall every request).
    fn lineage_now(&self) -> Option<Served> {
        let served = self.served.try_lock()?.clone();
        served.or_else(|| self.prev.try_lock()?.clone())
    }

    /// The patterns for this agent's in-scope values and `request`'s own secrets
    /// (values that exist only for this request, like an OAuth2 access token).
    pub fn patterns(&self, cache: &PatternCache, request: &[Secret]) -> Arc<Patterns> {
        let current = self.current(cache);
        // Hot path: an API key or placeholder is one of the in-scope values.
        if request.iter().all(|s| self.set.contains(s)) {
            return current;
        }
        // SECURITY: the request's own secrets are always searched too.
        let extra: Vec<Secret> = request
            .iter()
            .filter(|s| !self.set.contains(s))
            .cloned()
            .collect();
        Arc::new(Patterns::layered(&[current, cache.get(&extra)]))
    }

    /// What the in-scope set is searched with now (see `sets.rs`): never a
    /// full build on the request's path unless the agent has no earlier set.
    fn current(&self, cache: &PatternCache) -> Arc<Patterns> {
        let mut slot = self.served.lock();
        if let Some(s) = slot.as_ref() {
            if s.full {
                return s.patterns.clone();
            }
            // An interim: swap in the full build (or a newer base) once done.
            if let Some(next) = cache.refresh(&self.agent_id(), &self.set, s) {
                let p = next.patterns.clone();
                *slot = Some(next);
                return p;
            }
            return s.patterns.clone();
        }
        let prev = self.prev.lock().take();
        let served = cache.serve(&self.agent_id(), &self.set, prev.as_ref());
        let p = served.patterns.clone();
        *slot = Some(served);
        p
    }

    fn agent_id(&self) -> String {
        self.agent
            .upgrade()
            .map(|a| a.id.clone())
            .unwrap_or_default()
    }
}

impl ScopeCache {
    pub fn new() -> ScopeCache {
        ScopeCache {
            entries: parking_lot::RwLock::new(HashMap::new()),
            lineage: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// This agent's in-scope values under `snapshot`. When the cached entry is
    /// missing or stale, `resolve(None)` lists every grantable name with its
    /// values, or — when only the vault changed since the entry — `resolve(Some(names))`
    /// lists those of `names` that are grantable now (the others are dropped).
    pub fn get<E>(
        &self,
        principal: &Principal,
        snapshot: &Arc<Snapshot>,
        resolve: impl FnOnce(Option<&BTreeSet<String>>) -> Result<Resolved, E>,
    ) -> Result<Arc<InScope>, E> {
        let id = principal.agent.id.as_str();
        let old = self.entries.read().get(id).cloned();
        if let Some(entry) = &old {
            if entry.is_for(principal, snapshot) {
                return Ok(entry.clone());
            }
        }
        let by_name = match old.as_ref().filter(|e| e.same_principal(principal)) {
            // SECURITY: only names whose records differ between the two snapshots
            // can resolve differently for the same definitions; every one of
            // them is resolved again (a removed one is dropped, never kept).
            Some(e) => {
                let changed = snapshot.changed_names(&e.records);
                let mut map = e.by_name.clone();
                if !changed.is_empty() {
                    for name in &changed {
                        // (a lookup first: removing an absent key would still
                        // copy its path, and the set be rebuilt for nothing)
                        if map.contains_key(name) {
                            map.remove(name);
                        }
                    }
                    insert_resolved(&mut map, resolve(Some(&changed))?);
                }
                map
            }
            None => {
                let mut map = ByName::new();
                insert_resolved(&mut map, resolve(None)?);
                map
            }
        };
        let set = match old.as_ref() {
            Some(e) if e.by_name.ptr_eq(&by_name) => e.set.clone(),
            _ => Arc::new(ValueSet::with_ids(
                by_name.values().flat_map(|v| v.iter().cloned()).collect(),
            )),
        };
        let prev = old
            .and_then(|e| e.lineage())
            .or_else(|| self.lineage.lock().remove(id));
        let entry = Arc::new(InScope {
            agent: Arc::downgrade(&principal.agent),
            chain: principal.chain.as_ref().map(Arc::downgrade),
            snapshot: Arc::downgrade(snapshot),
            records: snapshot.view(),
            by_name,
            set,
            served: parking_lot::Mutex::new(None),
            prev: parking_lot::Mutex::new(prev),
        });
        let mut entries = self.entries.write();
        // A miss follows a config or vault change: drop what that made stale,
        // keeping what each agent was served with for its next set.
        let mut lineage = self.lineage.lock();
        entries.retain(|agent, e| {
            if e.is_live() {
                return true;
            }
            if let Some(s) = e.lineage_now() {
                if lineage.len() >= SCOPE_CACHE_SIZE {
                    lineage.clear();
                }
                lineage.insert(agent.clone(), s);
            }
            false
        });
        drop(lineage);
        if entries.len() >= SCOPE_CACHE_SIZE && !entries.contains_key(id) {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(id.to_string(), entry.clone());
        Ok(entry)
    }
}

/// Adds resolved names to `map` (their values with ids; a name twice is merged).
fn insert_resolved(map: &mut ByName, resolved: Resolved) {
    for (name, values) in resolved {
        let mut pairs: Vec<(ValueId, Secret)> =
            values.into_iter().map(|s| (value_id(&s), s)).collect();
        if let Some(had) = map.get(&name) {
            pairs.extend(had.iter().cloned());
        }
        map.insert(name, pairs.into());
    }
}

impl Default for ScopeCache {
    fn default() -> Self {
        ScopeCache::new()
    }
}
