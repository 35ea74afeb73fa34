//! Redaction sets that change cheaply (issue 16): a vault change never puts a
//! full automaton build on a request's path.
//!
//! * **Identity.** A set is its values: [`ValueSet`] keeps each value's SHA-256
//!   ([`ValueId`]) and the [`Fingerprint`] over the sorted ids. A change to a record
//!   outside the set leaves the fingerprint alone; agents with the same values
//!   share one automaton ([`PatternCache`], an LRU by automaton bytes).
//! * **Interim.** When a set's full build is not there yet, the set is served
//!   with what its lineage (the agent) was served before, plus one small
//!   automaton for only the values that one does not cover (the delta, built
//!   inline with the cheapest-to-build automaton). The delta is computed against
//!   that *interim* (base + stacked deltas), not against the last finished full
//!   build, so it stays the size of the change. A value removed or rotated away
//!   stays in the interim until the swap: briefly over-redacted, never under.
//! * **Background.** The full build of the new set is queued to one builder
//!   thread; per lineage only the newest wanted set waits (older ones are
//!   dropped unbuilt), and a set already built is skipped. Requests swap to the
//!   full build when it is there, or rebase onto the lineage's newest finished
//!   build (plus a delta) if the set moved on meanwhile.
//! * **Bounds.** At most [`MAX_DELTAS`] stacked deltas (then they are merged
//!   into one), at most [`DELTA_MAX_VALUES`] values inline (beyond that the set is
//!   built inline once, as a cold start is); finished builds are kept up to
//!   [`PATTERN_CACHE_BYTES`] and [`PATTERN_CACHE_SIZE`] sets (least recently used
//!   evicted first, the newest always kept).

use super::matcher::Patterns;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// SHA-256 of one value (domain-separated): its identity within a set.
pub type ValueId = [u8; 32];

/// SHA-256 over a set's sorted [`ValueId`]s.
pub type Fingerprint = [u8; 32];

/// Distinct finished sets [`PatternCache`] keeps (least recently used evicted).
pub const PATTERN_CACHE_SIZE: usize = 64;

/// Automaton memory of finished sets [`PatternCache`] keeps (least recently used
/// evicted first; the newest is always kept). Interim sets in use hold their
/// base beyond this until their swap.
pub const PATTERN_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Values an inline delta may hold; a bigger change is built whole inline once.
pub const DELTA_MAX_VALUES: usize = 256;

/// Deltas stacked on one base before they are merged into one.
pub const MAX_DELTAS: usize = 4;

/// Sets of more values than this are built as several automata ("chunks", by
/// value id, each of at most about this many values) searched as one: a
/// rotation then rebuilds only the one or two chunks it touched, and a build's
/// transient memory is a chunk's, not the whole set's (a 5,000-value automaton
/// is ~42 MiB, ~200 MiB while it is built).
pub const CHUNK_VALUES: usize = 1024;

/// Pending background builds kept (oldest lineage dropped first; its requests
/// keep their interim and queue again on their next change).
pub const BUILD_QUEUE_MAX: usize = 1024;

const VALUE_ID_LABEL: &[u8] = b"keyward redact value v1\0";

/// The identity of `value` in a set.
pub fn value_id(value: &Secret) -> ValueId {
    let mut h = Sha256::new();
    h.update(VALUE_ID_LABEL);
    h.update(value.expose());
    h.finalize().into()
}

/// The values a response is redacted of, with their ids, deduplicated (empty
/// values dropped) and sorted by id.
pub struct ValueSet {
    secrets: Vec<Secret>,
    ids: Vec<ValueId>,
    index: HashSet<ValueId>,
    fingerprint: Fingerprint,
}

impl ValueSet {
    pub fn new(values: impl IntoIterator<Item = Secret>) -> ValueSet {
        ValueSet::with_ids(values.into_iter().map(|s| (value_id(&s), s)).collect())
    }

    /// [`Self::new`] of values whose [`value_id`]s are already known (each pair
    /// must be `(value_id(&s), s)`).
    pub fn with_ids(mut pairs: Vec<(ValueId, Secret)>) -> ValueSet {
        pairs.retain(|(_, s)| !s.is_empty());
        pairs.sort_unstable_by_key(|p| p.0);
        pairs.dedup_by(|a, b| a.0 == b.0);
        let mut h = Sha256::new();
        for (id, _) in &pairs {
            h.update(id);
        }
        let (ids, secrets): (Vec<ValueId>, Vec<Secret>) = pairs.into_iter().unzip();
        ValueSet {
            index: ids.iter().copied().collect(),
            secrets,
            ids,
            fingerprint: h.finalize().into(),
        }
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Whether `value` is one of the set's values.
    pub fn contains(&self, value: &Secret) -> bool {
        self.index.contains(&value_id(value))
    }

    /// The full automaton of the set: one, or [`CHUNK_VALUES`]-sized chunks,
    /// each reused from `chunks` if an earlier set had exactly its values.
    fn build(&self, chunks: &Chunks, chunk_values: usize) -> Patterns {
        if self.secrets.len() <= chunk_values {
            let refs: Vec<&[u8]> = self.secrets.iter().map(|s| s.expose()).collect();
            return Patterns::new(&refs);
        }
        // A power of two, so a value's chunk is the low bits of its id's first
        // byte and stays put as long as the count of chunks does.
        let count = self
            .secrets
            .len()
            .div_ceil(chunk_values)
            .next_power_of_two()
            .min(256);
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); count];
        for (i, id) in self.ids.iter().enumerate() {
            groups[usize::from(id[0]) % count].push(i);
        }
        let layers: Vec<Arc<Patterns>> = groups
            .iter()
            .map(|g| {
                let mut h = Sha256::new();
                g.iter().for_each(|&i| h.update(self.ids[i]));
                let fp: Fingerprint = h.finalize().into();
                if let Some(p) = chunks.lock().get(&fp).and_then(|w| w.upgrade()) {
                    return p;
                }
                let refs: Vec<&[u8]> = g.iter().map(|&i| self.secrets[i].expose()).collect();
                let built = Arc::new(Patterns::new(&refs));
                let mut map = chunks.lock();
                map.retain(|_, w| w.strong_count() > 0);
                map.insert(fp, Arc::downgrade(&built));
                built
            })
            .collect();
        Patterns::layered(&layers)
    }
}

/// Chunk automata by the fingerprint of their values, while a set uses them.
type Chunks = parking_lot::Mutex<HashMap<Fingerprint, std::sync::Weak<Patterns>>>;

/// One built automaton and the ids of the values it covers.
pub(super) struct Layer {
    patterns: Arc<Patterns>,
    ids: HashSet<ValueId>,
    /// Order of finished full builds (0 for deltas): a higher one is newer.
    seq: u64,
}

impl Layer {
    fn delta(values: &[&Secret]) -> Layer {
        let refs: Vec<&[u8]> = values.iter().map(|s| s.expose()).collect();
        Layer {
            patterns: Arc::new(Patterns::quick(&refs)),
            ids: values.iter().map(|s| value_id(s)).collect(),
            seq: 0,
        }
    }
}

/// What a set is searched with now: a full build of exactly it, or an interim
/// (a base full build of an earlier set plus deltas) that covers it.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) patterns: Arc<Patterns>,
    base: Arc<Layer>,
    deltas: Vec<Arc<Layer>>,
    /// `patterns` is the full build of exactly the set it serves.
    pub(super) full: bool,
}

impl Served {
    fn full(base: Arc<Layer>) -> Served {
        Served {
            patterns: base.patterns.clone(),
            base,
            deltas: Vec::new(),
            full: true,
        }
    }

    fn covers(&self, id: &ValueId) -> bool {
        self.base.ids.contains(id) || self.deltas.iter().any(|d| d.ids.contains(id))
    }

    fn with_deltas(base: Arc<Layer>, deltas: Vec<Arc<Layer>>) -> Served {
        let mut all = vec![base.patterns.clone()];
        all.extend(deltas.iter().map(|d| d.patterns.clone()));
        Served {
            patterns: Arc::new(Patterns::layered(&all)),
            base,
            deltas,
            full: false,
        }
    }

    /// This interim plus what it lacks of `set`, or `None` when that is more
    /// than [`DELTA_MAX_VALUES`] values.
    fn extended(&self, set: &ValueSet) -> Option<Served> {
        let missing: Vec<&Secret> = set
            .ids
            .iter()
            .zip(&set.secrets)
            .filter(|(id, _)| !self.covers(id))
            .map(|(_, s)| s)
            .collect();
        if missing.is_empty() {
            return Some(Served {
                full: false,
                ..self.clone()
            });
        }
        if missing.len() > DELTA_MAX_VALUES {
            return None;
        }
        if self.deltas.len() < MAX_DELTAS {
            let mut deltas = self.deltas.clone();
            deltas.push(Arc::new(Layer::delta(&missing)));
            return Some(Served::with_deltas(self.base.clone(), deltas));
        }
        // Too many layers: one delta for everything the base lacks.
        let merged: Vec<&Secret> = set
            .ids
            .iter()
            .zip(&set.secrets)
            .filter(|(id, _)| !self.base.ids.contains(*id))
            .map(|(_, s)| s)
            .collect();
        if merged.len() > DELTA_MAX_VALUES {
            return None;
        }
        let delta = Arc::new(Layer::delta(&merged));
        Some(Served::with_deltas(self.base.clone(), vec![delta]))
    }
}

/// Finished full builds by fingerprint, least recently used first out.
#[derive(Default)]
struct Finished {
    map: HashMap<Fingerprint, (Arc<Layer>, u64)>,
    /// Sum of `memory_usage` of the automata in `map`.
    bytes: usize,
    /// Use counter (for LRU order) and full-build counter (for [`Layer::seq`]).
    tick: u64,
    seq: u64,
    /// Per lineage, its newest finished build (to rebase an interim onto).
    newest: HashMap<String, Arc<Layer>>,
}

impl Finished {
    fn get(&mut self, fp: &Fingerprint) -> Option<Arc<Layer>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(fp).map(|(l, used)| {
            *used = tick;
            l.clone()
        })
    }

    fn insert(&mut self, fp: Fingerprint, patterns: Patterns, ids: &[ValueId]) -> Arc<Layer> {
        if let Some(l) = self.get(&fp) {
            return l;
        }
        self.seq += 1;
        let layer = Arc::new(Layer {
            patterns: Arc::new(patterns),
            ids: ids.iter().copied().collect(),
            seq: self.seq,
        });
        let size = layer.patterns.memory_usage();
        while !self.map.is_empty()
            && (self.map.len() >= PATTERN_CACHE_SIZE || self.bytes + size > PATTERN_CACHE_BYTES)
        {
            let Some(victim) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&victim) {
                self.bytes -= old.patterns.memory_usage();
            }
        }
        // Lineages whose newest build was evicted lose it (memory stays bounded).
        let map = &self.map;
        self.newest
            .retain(|_, l| map.values().any(|(m, _)| Arc::ptr_eq(m, l)));
        self.tick += 1;
        self.map.insert(fp, (layer.clone(), self.tick));
        self.bytes += size;
        layer
    }

    /// `layer` is now `lineage`'s newest set (if newer than the one it had);
    /// the one it replaces is dropped unless another lineage's newest is it:
    /// after a rotation the old set is not wanted again, and keeping it would
    /// hold a whole automaton per change until the byte bound.
    fn supersede(&mut self, lineage: &str, layer: Arc<Layer>) {
        let old = match self.newest.get(lineage) {
            Some(n) if n.seq >= layer.seq => return,
            Some(n) => Some(n.clone()),
            None => None,
        };
        self.newest.insert(lineage.to_string(), layer.clone());
        let Some(old) = old else { return };
        if Arc::ptr_eq(&old, &layer) || self.newest.values().any(|n| Arc::ptr_eq(n, &old)) {
            return;
        }
        let key = self
            .map
            .iter()
            .find(|(_, (l, _))| Arc::ptr_eq(l, &old))
            .map(|(k, _)| *k);
        if let Some(k) = key {
            if let Some((l, _)) = self.map.remove(&k) {
                self.bytes -= l.patterns.memory_usage();
            }
        }
    }
}

/// A full build waiting for the builder thread.
struct Job {
    lineage: String,
    set: Arc<ValueSet>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Job>,
    started: bool,
    closed: bool,
}

struct Shared {
    finished: parking_lot::Mutex<Finished>,
    chunks: Chunks,
    /// [`CHUNK_VALUES`] (smaller in tests).
    chunk_values: usize,
    queue: parking_lot::Mutex<Queue>,
    wake: parking_lot::Condvar,
    /// Full builds run inline and in the background (for tests and metrics).
    built_inline: std::sync::atomic::AtomicU64,
    built_behind: std::sync::atomic::AtomicU64,
}

/// Recently built automata, by the values they search (see the module docs);
/// owns the background builder thread (started on first use, ended on drop).
pub struct PatternCache {
    shared: Arc<Shared>,
}

impl PatternCache {
    pub fn new() -> PatternCache {
        PatternCache {
            shared: Arc::new(Shared {
                finished: parking_lot::Mutex::new(Finished::default()),
                chunks: Default::default(),
                chunk_values: CHUNK_VALUES,
                queue: parking_lot::Mutex::new(Queue::default()),
                wake: parking_lot::Condvar::new(),
                built_inline: Default::default(),
                built_behind: Default::default(),
            }),
        }
    }

    /// The patterns for exactly these values, built inline on first use with
    /// the cheapest automaton to build (for a request's own secrets, like an
    /// OAuth2 access token: few, and new whenever the token is).
    pub fn get(&self, secrets: &[Secret]) -> Arc<Patterns> {
        let set = ValueSet::new(secrets.iter().cloned());
        if let Some(l) = self.finished(&set.fingerprint) {
            return l.patterns.clone();
        }
        let refs: Vec<&[u8]> = set.secrets.iter().map(|s| s.expose()).collect();
        let built = Patterns::quick(&refs);
        let mut finished = self.shared.finished.lock();
        finished
            .insert(set.fingerprint, built, &set.ids)
            .patterns
            .clone()
    }

    /// (full builds run on a request's path, full builds run in the background).
    pub fn builds(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.built_inline.load(Relaxed),
            self.shared.built_behind.load(Relaxed),
        )
    }

    /// Automaton bytes of the finished sets kept.
    pub fn memory_usage(&self) -> usize {
        self.shared.finished.lock().bytes
    }

    fn finished(&self, fp: &Fingerprint) -> Option<Arc<Layer>> {
        self.shared.finished.lock().get(fp)
    }

    fn build_now(&self, set: &ValueSet) -> Arc<Layer> {
        if let Some(l) = self.finished(&set.fingerprint) {
            return l;
        }
        let patterns = set.build(&self.shared.chunks, self.shared.chunk_values);
        self.shared
            .built_inline
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared
            .finished
            .lock()
            .insert(set.fingerprint, patterns, &set.ids)
    }

    /// Queues the full build of `set` for `lineage`, replacing the lineage's
    /// pending one (only its newest set is worth building).
    fn build_later(&self, lineage: &str, set: Arc<ValueSet>) {
        let mut q = self.shared.queue.lock();
        if let Some(job) = q.pending.iter_mut().find(|j| j.lineage == lineage) {
            job.set = set;
            return;
        }
        if q.pending.len() >= BUILD_QUEUE_MAX {
            q.pending.pop_front();
        }
        q.pending.push_back(Job {
            lineage: lineage.to_string(),
            set,
        });
        if !q.started {
            q.started = true;
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("keyward-redact-build".into())
                .spawn(move || builder(&shared));
            if let Err(e) = spawned {
                // Requests keep their interim (correct, only slower to search).
                tracing::error!(error = %e, "cannot start the redaction builder thread");
                q.started = false;
            }
        }
        self.shared.wake.notify_one();
    }

    fn newest(&self, lineage: &str) -> Option<Arc<Layer>> {
        self.shared.finished.lock().newest.get(lineage).cloned()
    }

    /// What `set` is searched with now, given what its `lineage` was served
    /// before (`prev`): its full build if finished; else an interim (queuing
    /// the full build); else, with nothing to start from or a change too big
    /// for a delta, the full build inline.
    pub(super) fn serve(
        &self,
        lineage: &str,
        set: &Arc<ValueSet>,
        prev: Option<&Served>,
    ) -> Served {
        {
            let mut finished = self.shared.finished.lock();
            if let Some(full) = finished.get(&set.fingerprint) {
                finished.supersede(lineage, full.clone());
                return Served::full(full);
            }
        }
        let newest = self.newest(lineage).map(Served::full);
        let start = match (prev, newest) {
            (Some(p), Some(n)) if n.base.seq > p.base.seq => Some(n),
            (Some(p), _) => Some(p.clone()),
            (None, n) => n,
        };
        if let Some(interim) = start.and_then(|s| s.extended(set)) {
            self.build_later(lineage, set.clone());
            return interim;
        }
        let full = self.build_now(set);
        self.shared.finished.lock().supersede(lineage, full.clone());
        Served::full(full)
    }

    /// The hot path's check on an interim: the full build if it is done, a
    /// rebase onto a newer finished build of the lineage, or `None` (keep it).
    pub(super) fn refresh(
        &self,
        lineage: &str,
        set: &Arc<ValueSet>,
        cur: &Served,
    ) -> Option<Served> {
        if let Some(full) = self.finished(&set.fingerprint) {
            return Some(Served::full(full));
        }
        let newest = self.newest(lineage)?;
        if newest.seq <= cur.base.seq {
            return None;
        }
        Served::full(newest).extended(set)
    }
}

impl Default for PatternCache {
    fn default() -> Self {
        PatternCache::new()
    }
}

impl Drop for PatternCache {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

/// The builder thread: one full build at a time, newest per lineage, skipping
/// sets already built; ends when its [`PatternCache`] is dropped.
fn builder(shared: &Shared) {
    loop {
        let job = {
            let mut q = shared.queue.lock();
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.pending.pop_front() {
                    break job;
                }
                shared.wake.wait(&mut q);
            }
        };
        build_job(shared, job);
    }
}

fn build_job(shared: &Shared, job: Job) {
    let fp = job.set.fingerprint;
    let done = shared.finished.lock().get(&fp);
    let layer = match done {
        Some(l) => l,
        None => {
            let patterns = job.set.build(&shared.chunks, shared.chunk_values);
            shared
                .built_behind
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.finished.lock().insert(fp, patterns, &job.set.ids)
        }
    };
    shared.finished.lock().supersede(&job.lineage, layer);
}

#[cfg(test)]
impl PatternCache {
    /// A cache whose background builds run only when [`Self::run_pending`] says.
    pub(super) fn manual() -> PatternCache {
        PatternCache::manual_chunked(CHUNK_VALUES)
    }

    /// [`Self::manual`] building sets of more than `chunk_values` in chunks.
    pub(super) fn manual_chunked(chunk_values: usize) -> PatternCache {
        let mut cache = PatternCache::new();
        cache.shared.queue.lock().started = true;
        if let Some(shared) = Arc::get_mut(&mut cache.shared) {
            shared.chunk_values = chunk_values;
        }
        cache
    }

    /// Runs the queued background builds now (with [`Self::manual`]).
    pub(super) fn run_pending(&self) {
        loop {
            let Some(job) = self.shared.queue.lock().pending.pop_front() else {
                return;
            };
            build_job(&self.shared, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::forms::{encoded_forms, MIN_ENCODED_PATTERN_LEN};
    use super::super::test_util::stream;
    use super::*;
    use proptest::prelude::*;

    fn set(values: &[&str]) -> Arc<ValueSet> {
        Arc::new(ValueSet::new(values.iter().map(|v| Secret::from_str(v))))
    }

    #[test]
    fn a_set_is_its_values_whatever_their_order_or_duplicates() {
        let a = set(&["alpha-value-1", "beta-value-22", ""]);
        let b = set(&["beta-value-22", "alpha-value-1", "alpha-value-1"]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.len(), 2);
        assert!(a.contains(&Secret::from_str("beta-value-22")));
        assert!(!a.contains(&Secret::from_str("gamma-value-333")));
        assert_ne!(a.fingerprint(), set(&["alpha-value-1"]).fingerprint());
    }

    #[test]
    fn a_change_is_served_with_the_old_automaton_plus_a_delta_until_the_swap() {
        let cache = PatternCache::manual();
        let v1 = set(&["old-secret-value-1", "kept-secret-value-2"]);
        let first = cache.serve("agent", &v1, None);
        assert!(first.full);
        assert_eq!(cache.builds(), (1, 0), "the cold start builds inline");

        // Rotate value 1: an interim, nothing built whole on this path.
        let v2 = set(&["new-secret-value-1", "kept-secret-value-2"]);
        let interim = cache.serve("agent", &v2, Some(&first));
        assert!(!interim.full);
        assert_eq!(interim.patterns.layers(), 2);
        assert_eq!(cache.builds(), (1, 0));
        let doc = b"a new-secret-value-1 b old-secret-value-1 c kept-secret-value-2";
        // The rotated-away value stays redacted until the swap (never under).
        assert_eq!(
            interim.patterns.redact_all(doc).as_deref(),
            Some(&b"a [REDACTED] b [REDACTED] c [REDACTED]"[..])
        );
        assert!(cache.refresh("agent", &v2, &interim).is_none());

        cache.run_pending();
        assert_eq!(cache.builds(), (1, 1));
        let swapped = cache.refresh("agent", &v2, &interim).expect("swap");
        assert!(swapped.full);
        assert_eq!(swapped.patterns.layers(), 1);
        assert_eq!(
            swapped.patterns.redact_all(doc).as_deref(),
            Some(&b"a [REDACTED] b old-secret-value-1 c [REDACTED]"[..])
        );
        // Another agent with the same values shares the automaton.
        let other = cache.serve(
            "other",
            &set(&["kept-secret-value-2", "new-secret-value-1"]),
            None,
        );
        assert!(Arc::ptr_eq(&other.patterns, &swapped.patterns));
        assert_eq!(cache.builds(), (1, 1));
    }

    #[test]
    fn deltas_stack_against_the_interim_then_merge_and_a_huge_change_builds_inline() {
        let cache = PatternCache::manual();
        let mut values: Vec<String> = (0..10).map(|i| format!("base-secret-{i:04}")).collect();
        let refs = |v: &[String]| set(&v.iter().map(String::as_str).collect::<Vec<_>>());
        let mut served = cache.serve("a", &refs(&values), None);
        for i in 0..(MAX_DELTAS + 2) {
            values[i] = format!("rotated-secret-{i:04}");
            let next = refs(&values);
            served = cache.serve("a", &next, Some(&served));
            assert!(!served.full);
            assert!(served.patterns.layers() <= 1 + MAX_DELTAS);
            // Each delta holds only the change, not everything since the base.
            for v in &values {
                assert!(served.patterns.contains_secret(v.as_bytes()), "{v}");
            }
        }
        assert_eq!(cache.builds().0, 1);
        let huge: Vec<String> = (0..DELTA_MAX_VALUES + 1)
            .map(|i| format!("bulk-{i:06}"))
            .collect();
        let big = cache.serve("a", &refs(&huge), Some(&served));
        assert!(big.full);
        assert_eq!(cache.builds().0, 2);
    }

    #[test]
    fn a_rebuild_that_finished_for_an_older_set_becomes_the_new_base() {
        let cache = PatternCache::manual();
        let s1 = set(&["first-secret-aaaa", "second-secret-bbbb"]);
        let full = cache.serve("a", &s1, None);
        let s2 = set(&["first-secret-aaaa", "second-secret-cccc"]);
        let i2 = cache.serve("a", &s2, Some(&full));
        cache.run_pending(); // builds s2
        let s3 = set(&["first-secret-aaaa", "second-secret-dddd"]);
        // s3's interim starts from s2's finished build, not s1's.
        let i3 = cache.serve("a", &s3, Some(&i2));
        assert_eq!(i3.patterns.layers(), 2);
        assert!(!i3.patterns.contains_secret(b"second-secret-bbbb"));
        assert!(i3.patterns.contains_secret(b"second-secret-dddd"));
    }

    #[test]
    fn the_builder_thread_swaps_the_full_build_in() {
        let cache = PatternCache::new();
        let full = cache.serve("a", &set(&["thread-secret-1111"]), None);
        let s2 = set(&["thread-secret-2222"]);
        let interim = cache.serve("a", &s2, Some(&full));
        assert!(!interim.full);
        // Waits for the build (no time is asserted; the test only needs it done).
        while cache.builds().1 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(cache.refresh("a", &s2, &interim).is_some_and(|s| s.full));
    }

    #[test]
    fn finished_sets_are_evicted_least_recently_used_first() {
        let mut f = Finished::default();
        for i in 0..(PATTERN_CACHE_SIZE + 3) {
            let v = format!("evict-secret-{i:04}");
            f.insert([i as u8; 32], Patterns::new(&[v.as_bytes()]), &[]);
            f.get(&[0u8; 32]); // the first stays in use
        }
        assert_eq!(f.map.len(), PATTERN_CACHE_SIZE);
        assert!(f.get(&[0u8; 32]).is_some());
        assert!(f.get(&[1u8; 32]).is_none());
        assert_eq!(
            f.bytes,
            f.map
                .values()
                .map(|(l, _)| l.patterns.memory_usage())
                .sum::<usize>()
        );
    }

    #[test]
    fn big_sets_are_built_in_chunks_and_a_rotation_rebuilds_only_what_it_touched() {
        let cache = PatternCache::manual_chunked(8);
        let mut values: Vec<String> = (0..40).map(|i| format!("chunked-secret-{i:04}")).collect();
        let refs = |v: &[String]| set(&v.iter().map(String::as_str).collect::<Vec<_>>());
        let first = cache.serve("a", &refs(&values), None);
        assert_eq!(
            first.patterns.layers(),
            8,
            "40 values / 8 per chunk → 8 chunks (a power of two)"
        );
        for v in &values {
            assert!(first.patterns.contains_secret(v.as_bytes()), "{v}");
        }
        values[3] = "chunked-secret-rotated".into();
        let next = refs(&values);
        let interim = cache.serve("a", &next, Some(&first));
        assert!(!interim.full);
        cache.run_pending();
        let full = cache.refresh("a", &next, &interim).expect("swap");
        assert!(full.full);
        assert!(full.patterns.contains_secret(b"chunked-secret-rotated"));
        assert!(!full.patterns.contains_secret(b"chunked-secret-0003"));
        // Only the one or two chunks the change touched were built again.
        let (a, b) = (layer_ptrs(&first.patterns), layer_ptrs(&full.patterns));
        let reused = b.iter().filter(|p| a.contains(p)).count();
        assert!(reused >= 6, "reused {reused} of 8");
    }

    fn layer_ptrs(p: &Patterns) -> Vec<*const Patterns> {
        match &p.matcher {
            super::super::matcher::Matcher::Ready(s) => match &**s {
                super::super::matcher::Search::Layers(l) => l.iter().map(Arc::as_ptr).collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_superseded_set_is_dropped_unless_another_agent_still_uses_it() {
        let cache = PatternCache::manual();
        let s1 = set(&["superseded-secret-1"]);
        let first = cache.serve("a", &s1, None);
        cache.serve("b", &s1, None); // b shares s1
        let s2 = set(&["superseded-secret-2"]);
        cache.serve("a", &s2, Some(&first));
        cache.run_pending();
        assert!(
            cache.finished(s1.fingerprint()).is_some(),
            "b's newest stays"
        );
        let s3 = set(&["superseded-secret-3"]);
        cache.serve("b", &s3, Some(&first));
        cache.run_pending();
        assert!(
            cache.finished(s1.fingerprint()).is_none(),
            "nobody's newest: dropped"
        );
        assert!(cache.finished(s2.fingerprint()).is_some());
        assert!(cache.finished(s3.fingerprint()).is_some());
    }

    #[derive(Debug, Clone)]
    enum Change {
        Add(String),
        Remove(usize),
        Rotate(usize, String),
        /// The background builds finish.
        Build,
    }

    /// Values from a small alphabet so that values overlap and prefix each other.
    fn value() -> impl Strategy<Value = String> {
        "[ab01]{6,12}"
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            value().prop_map(Change::Add),
            any::<usize>().prop_map(Change::Remove),
            (any::<usize>(), value()).prop_map(|(i, v)| Change::Rotate(i, v)),
            Just(Change::Build),
        ]
    }

    fn lower(b: &[u8]) -> Vec<u8> {
        b.to_ascii_lowercase()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        let (hay, needle) = (lower(hay), lower(needle));
        hay.windows(needle.len()).any(|w| w == needle)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// For random vaults and change sequences, what the layered (interim)
        /// matcher leaves of a document never holds a form of an in-scope value
        /// that the full rebuild would have redacted, whole or streamed.
        #[test]
        fn the_interim_never_redacts_less_than_the_full_rebuild(
            initial in proptest::collection::vec(value(), 1..12),
            changes in proptest::collection::vec(change(), 1..12),
            picks in proptest::collection::vec((any::<usize>(), any::<usize>(), "[ab01 ]{0,4}"), 1..16),
            cut in any::<usize>(),
        ) {
            let cache = PatternCache::manual_chunked(4);
            let mut values = initial.clone();
            let mut ever: Vec<String> = initial;
            let mut served = cache.serve("a", &Arc::new(ValueSet::new(values.iter().map(|v| Secret::from_str(v)))), None);
            for c in changes {
                match c {
                    Change::Add(v) => { ever.push(v.clone()); values.push(v) }
                    Change::Remove(i) if !values.is_empty() => { values.remove(i % values.len()); }
                    Change::Rotate(i, v) if !values.is_empty() => {
                        let n = values.len();
                        ever.push(v.clone());
                        values[i % n] = v;
                    }
                    Change::Build => cache.run_pending(),
                    _ => {}
                }
                let set = Arc::new(ValueSet::new(values.iter().map(|v| Secret::from_str(v))));
                served = cache.serve("a", &set, Some(&served));
                if let Some(next) = cache.refresh("a", &set, &served) {
                    served = next;
                }
                // A document of forms of current and former values and filler.
                let mut doc = Vec::new();
                for (which, form, filler) in &picks {
                    let v = &ever[which % ever.len()];
                    let forms = encoded_forms(v.as_bytes());
                    doc.extend_from_slice(&forms[form % forms.len()]);
                    doc.extend_from_slice(filler.as_bytes());
                }
                let refs: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
                let full = Arc::new(Patterns::new(&refs));
                let want = full.redact_all(&doc).unwrap_or_else(|| doc.clone());
                let got = served.patterns.redact_all(&doc).unwrap_or_else(|| doc.clone());
                let streamed = stream(&served.patterns, &doc, &[cut % (doc.len() + 1)]);
                for v in &values {
                    for f in encoded_forms(v.as_bytes()) {
                        if f.len() < MIN_ENCODED_PATTERN_LEN && f != v.as_bytes() { continue; }
                        if contains(&want, &f) { continue; }
                        prop_assert!(!contains(&got, &f), "whole: {v} in {:?}", String::from_utf8_lossy(&got));
                        prop_assert!(!contains(&streamed, &f), "streamed: {v} in {:?}", String::from_utf8_lossy(&streamed));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod measure {
    use super::*;

    fn hwm() -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Automaton memory and build time by set size (numbers, not assertions).
    #[test]
    #[ignore]
    fn print_automaton_memory_by_set_size() {
        for n in [1000usize, 5000] {
            let set = ValueSet::new((0..n).map(|i| {
                Secret::new(
                    format!("sk-scale-{i:06}-Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4").into_bytes(),
                )
            }));
            let t = std::time::Instant::now();
            let p = set.build(&Chunks::default(), CHUNK_VALUES);
            eprintln!(
                "n={n} build {:?} memory {} KiB; {}",
                t.elapsed(),
                p.memory_usage() / 1024,
                hwm()
            );
        }
    }
}
