//! [`ScopeCache`]: per agent, the values its responses are redacted of, resolved
//! once per agent and vault snapshot by a closure the caller passes in, and what
//! they are searched with ([`PatternCache`] in `sets.rs` builds the automata; an
//! agent's previous set is what a changed one is served with until its own full
//! build is done).

use super::matcher::Patterns;
use super::sets::{PatternCache, Served, ValueSet};
use crate::resolve::{Agent, Chain, Principal};
use crate::secret::Secret;
use crate::vault::Snapshot;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// What a response to one agent is redacted of: every credential it could be
/// granted (SPEC §5, §6.6), not only the one its request carries, so a second key
/// the agent may use elsewhere is not handed back by an upstream that knows it.
/// One entry per agent id, valid for the agent and chain definitions and the
/// vault snapshot it was resolved under (compared by identity, so any config or
/// vault change resolves again; another agent never sees this entry).
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
    set: Arc<ValueSet>,
    /// What `set` is searched with (none until first used).
    served: parking_lot::Mutex<Option<Served>>,
    /// What the agent's previous set was served with, until `served` is set.
    prev: parking_lot::Mutex<Option<Served>>,
}

impl InScope {
    fn is_for(&self, principal: &Principal, snapshot: &Arc<Snapshot>) -> bool {
        std::ptr::eq(self.agent.as_ptr(), Arc::as_ptr(&principal.agent))
            && std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(snapshot))
            && match (&self.chain, &principal.chain) {
                (None, None) => true,
                (Some(w), Some(c)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(c)),
                _ => false,
            }
    }

    fn is_live(&self) -> bool {
        self.agent.strong_count() > 0 && self.snapshot.strong_count() > 0
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

    /// This agent's in-scope values under `snapshot`; `resolve` lists them (with
    /// duplicates) when the cached entry is missing or stale.
    pub fn get<E>(
        &self,
        principal: &Principal,
        snapshot: &Arc<Snapshot>,
        resolve: impl FnOnce() -> Result<Vec<Secret>, E>,
    ) -> Result<Arc<InScope>, E> {
        let id = principal.agent.id.as_str();
        let old = self.entries.read().get(id).cloned();
        if let Some(entry) = &old {
            if entry.is_for(principal, snapshot) {
                return Ok(entry.clone());
            }
        }
        let set = Arc::new(ValueSet::new(resolve()?));
        let prev = old
            .and_then(|e| e.lineage())
            .or_else(|| self.lineage.lock().remove(id));
        let entry = Arc::new(InScope {
            agent: Arc::downgrade(&principal.agent),
            chain: principal.chain.as_ref().map(Arc::downgrade),
            snapshot: Arc::downgrade(snapshot),
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

impl Default for ScopeCache {
    fn default() -> Self {
        ScopeCache::new()
    }
}
