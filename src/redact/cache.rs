//! The two caches that keep automaton building off the hot path: [`PatternCache`]
//! (one automaton per distinct secret set, keyed by the values) and [`ScopeCache`]
//! (per agent, the values its responses are redacted of, resolved once per agent
//! and vault snapshot by a closure the caller passes in).

use super::matcher::Patterns;
use crate::resolve::{Agent, Chain, Principal};
use crate::secret::Secret;
use crate::vault::Snapshot;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Recently built [`Patterns`], so a request does not rebuild the automaton for a
/// secret set it has seen before (building costs far more than a response scan).
/// Keyed by the secret values themselves, not by name or version: a rotated, re-set
/// or swapped value can never be searched with a stale automaton. Agents whose
/// in-scope values are the same share one automaton (it holds only patterns, and
/// they are identical).
pub struct PatternCache {
    entries: parking_lot::Mutex<PatternEntries>,
}

#[derive(Default)]
struct PatternEntries {
    list: Vec<(Vec<Secret>, Arc<Patterns>)>,
    /// Sum of the automatons' `memory_usage` in `list`.
    bytes: usize,
}

/// Distinct secret sets kept by [`PatternCache`] (oldest evicted first).
pub const PATTERN_CACHE_SIZE: usize = 64;

/// Automaton memory [`PatternCache`] keeps (oldest evicted first; the newest is
/// always kept). An automaton costs roughly 0.75 MiB per secret in it, so this
/// bounds memory when agents have many secrets in scope.
pub const PATTERN_CACHE_BYTES: usize = 256 * 1024 * 1024;

impl PatternCache {
    pub fn new() -> PatternCache {
        PatternCache {
            entries: parking_lot::Mutex::new(PatternEntries::default()),
        }
    }

    /// The patterns for exactly these secrets, built on first use.
    pub fn get(&self, secrets: &[Secret]) -> Arc<Patterns> {
        if let Some((_, p)) = self.entries.lock().list.iter().find(|(k, _)| k == secrets) {
            return p.clone();
        }
        let refs: Vec<&[u8]> = secrets.iter().map(|s| s.expose()).collect();
        let built = Arc::new(Patterns::new(&refs));
        let size = built.memory_usage();
        let mut entries = self.entries.lock();
        while !entries.list.is_empty()
            && (entries.list.len() >= PATTERN_CACHE_SIZE
                || entries.bytes + size > PATTERN_CACHE_BYTES)
        {
            let (_, old) = entries.list.remove(0);
            entries.bytes -= old.memory_usage();
        }
        entries.list.push((secrets.to_vec(), built.clone()));
        entries.bytes += size;
        built
    }
}

impl Default for PatternCache {
    fn default() -> Self {
        PatternCache::new()
    }
}

/// What a response to one agent is redacted of: every credential it could be
/// granted (SPEC §5, §6.6), not only the one its request carries, so a second key
/// the agent may use elsewhere is not handed back by an upstream that knows it.
/// One entry per agent id, valid for the agent and chain definitions and the
/// vault snapshot it was resolved under (compared by identity, so any config or
/// vault change resolves again; another agent never sees this entry).
pub struct ScopeCache {
    entries: parking_lot::RwLock<HashMap<String, Arc<InScope>>>,
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
    secrets: Vec<Secret>,
    /// The automaton for `secrets` alone, while [`PatternCache`] (or a response
    /// in flight) keeps it alive.
    patterns: parking_lot::Mutex<Weak<Patterns>>,
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
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The patterns for this agent's in-scope values and `request`'s own secrets
    /// (values that exist only for this request, like an OAuth2 access token).
    pub fn patterns(&self, cache: &PatternCache, request: &[Secret]) -> Arc<Patterns> {
        // Hot path: an API key or placeholder is one of the in-scope values
        // (the same shared buffer, so the comparison is a pointer check).
        if request.iter().all(|s| self.secrets.contains(s)) {
            let mut slot = self.patterns.lock();
            if let Some(p) = slot.upgrade() {
                return p;
            }
            let p = cache.get(&self.secrets);
            *slot = Arc::downgrade(&p);
            return p;
        }
        // SECURITY: the request's own secrets are always searched too.
        let mut all = self.secrets.clone();
        all.extend(
            request
                .iter()
                .filter(|s| !self.secrets.contains(s))
                .cloned(),
        );
        cache.get(&all)
    }
}

impl ScopeCache {
    pub fn new() -> ScopeCache {
        ScopeCache {
            entries: parking_lot::RwLock::new(HashMap::new()),
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
        if let Some(entry) = self.entries.read().get(id) {
            if entry.is_for(principal, snapshot) {
                return Ok(entry.clone());
            }
        }
        let mut secrets: Vec<Secret> = Vec::new();
        for s in resolve()? {
            if !s.is_empty() && !secrets.contains(&s) {
                secrets.push(s);
            }
        }
        let entry = Arc::new(InScope {
            agent: Arc::downgrade(&principal.agent),
            chain: principal.chain.as_ref().map(Arc::downgrade),
            snapshot: Arc::downgrade(snapshot),
            secrets,
            patterns: parking_lot::Mutex::new(Weak::new()),
        });
        let mut entries = self.entries.write();
        // A miss follows a config or vault change: drop what that made stale.
        entries.retain(|_, e| e.is_live());
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
