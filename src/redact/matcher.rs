//! The matcher: every form of every in-scope secret in one leftmost-longest,
//! ASCII case-insensitive Aho-Corasick automaton (a DFA for small sets, the
//! contiguous NFA for large ones: [`DFA_MAX_FORMS`]), and the scan that replaces
//! each settled match by [`REDACTED`] while holding back a possible partial match.

use super::forms::encoded_forms;
use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, Match, MatchKind, StartKind};
use std::sync::Arc;

/// What every occurrence of a secret, in any form, is replaced by.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The encoded forms of the in-scope secrets to look for.
pub struct Patterns {
    pub(super) matcher: Matcher,
}

/// The state of a [`Patterns`]: what a response is searched with, if anything.
pub(super) enum Matcher {
    /// No secret in scope: responses pass untouched.
    Empty,
    Ready(Box<Search>),
    /// The automaton could not be built; every response is refused (fail closed).
    Broken,
}

impl Patterns {
    pub fn new(secrets: &[&[u8]]) -> Patterns {
        Patterns::build(secrets, Build::Scan)
    }

    /// Like [`Patterns::new`] but always with the automaton that is cheapest to
    /// build (the contiguous NFA): for the small delta sets built on a request's
    /// path while a full rebuild runs in the background (`sets.rs`).
    pub fn quick(secrets: &[&[u8]]) -> Patterns {
        Patterns::build(secrets, Build::Quick)
    }

    /// Several pattern sets searched as one: a match of any layer is redacted,
    /// leftmost-longest across all of them, so the output is that of one
    /// automaton over the union of their patterns. An interim set while its
    /// full rebuild runs (`sets.rs`). Layers that are themselves layered are
    /// flattened; an empty layer is dropped; a broken one breaks the whole
    /// (fail closed).
    pub fn layered(layers: &[Arc<Patterns>]) -> Patterns {
        let mut flat: Vec<Arc<Patterns>> = Vec::new();
        for layer in layers {
            match &layer.matcher {
                Matcher::Empty => {}
                Matcher::Broken => {
                    return Patterns {
                        matcher: Matcher::Broken,
                    }
                }
                Matcher::Ready(search) => match &**search {
                    Search::Layers(inner) => flat.extend(inner.iter().cloned()),
                    _ => flat.push(layer.clone()),
                },
            }
        }
        let matcher = match flat.len() {
            0 => Matcher::Empty,
            _ => Matcher::Ready(Box::new(Search::Layers(flat))),
        };
        Patterns { matcher }
    }

    /// How many automata a search runs (1 for a full build, more for an interim).
    pub fn layers(&self) -> usize {
        match &self.matcher {
            Matcher::Ready(search) => match &**search {
                Search::Layers(l) => l.len(),
                _ => 1,
            },
            _ => 0,
        }
    }

    fn build(secrets: &[&[u8]], how: Build) -> Patterns {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            forms.extend(encoded_forms(secret));
        }
        // Case-insensitive matching makes case-variants equal; keep one of each.
        forms.iter_mut().for_each(|f| f.make_ascii_lowercase());
        forms.sort_unstable();
        forms.dedup();
        if forms.is_empty() {
            return Patterns {
                matcher: Matcher::Empty,
            };
        }
        let matcher = match Search::build(&forms, how) {
            Some(search) => Matcher::Ready(Box::new(search)),
            None => Matcher::Broken,
        };
        Patterns { matcher }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.matcher, Matcher::Empty)
    }

    /// Heap bytes held by the automaton.
    pub fn memory_usage(&self) -> usize {
        match &self.matcher {
            Matcher::Ready(search) => search.memory_usage(),
            _ => 0,
        }
    }

    /// Length of the longest pattern (0 when empty).
    pub fn max_pattern_len(&self) -> usize {
        match &self.matcher {
            Matcher::Ready(search) => search.max_pattern_len(),
            _ => 0,
        }
    }

    /// Redacts a complete value (a header, a trailer). `None` when nothing matched.
    pub fn redact_all(&self, data: &[u8]) -> Option<Vec<u8>> {
        let Matcher::Ready(search) = &self.matcher else {
            return None;
        };
        let mut out = None;
        search.scan(data, true, &mut out);
        out
    }

    /// Whether `data` contains any form of any secret.
    pub fn contains_secret(&self, data: &[u8]) -> bool {
        match &self.matcher {
            Matcher::Ready(search) => search.contains(data),
            Matcher::Empty => false,
            Matcher::Broken => true,
        }
    }
}

/// Pattern sets up to this many encoded forms (about four secrets) are searched
/// with a DFA: one table lookup per byte, but ~1 MiB and ~1 ms to build per
/// secret. Larger sets (every secret in an agent's scope) use the contiguous NFA:
/// ~20 KiB per secret and ~8x cheaper to build, about half the DFA's speed on text
/// full of near-matches, the same on ordinary text.
const DFA_MAX_FORMS: usize = 32;

/// Which automaton [`Search::build`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Build {
    /// The fastest to search for its size (see [`DFA_MAX_FORMS`]).
    Scan,
    /// The fastest to build (always the NFA).
    Quick,
}

/// The automaton of a pattern set (see [`DFA_MAX_FORMS`]), or several searched
/// as one ([`Patterns::layered`]; each layer is a `Dfa` or an `Nfa`).
pub(super) enum Search {
    Dfa(DFA),
    Nfa(NFA),
    Layers(Vec<Arc<Patterns>>),
}

impl Search {
    /// `None` when the automaton cannot be built.
    fn build(forms: &[Vec<u8>], how: Build) -> Option<Search> {
        // Leftmost-longest so that a secret and its longer encodings redact whole;
        // anchored starts are needed by `partial_match_start`.
        if how == Build::Scan && forms.len() <= DFA_MAX_FORMS {
            DFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(true)
                .start_kind(StartKind::Both)
                .build(forms)
                .ok()
                .map(Search::Dfa)
        } else {
            NFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(true)
                .build(forms)
                .ok()
                .map(Search::Nfa)
        }
    }

    fn memory_usage(&self) -> usize {
        match self {
            Search::Dfa(a) => a.memory_usage(),
            Search::Nfa(a) => a.memory_usage(),
            Search::Layers(l) => l.iter().map(|p| p.memory_usage()).sum(),
        }
    }

    fn max_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a) => a.max_pattern_len(),
            Search::Nfa(a) => a.max_pattern_len(),
            Search::Layers(l) => l.iter().map(|p| p.max_pattern_len()).max().unwrap_or(0),
        }
    }

    fn min_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a) => a.min_pattern_len(),
            Search::Nfa(a) => a.min_pattern_len(),
            Search::Layers(l) => l
                .iter()
                .filter_map(|p| p.search())
                .map(Search::min_pattern_len)
                .min()
                .unwrap_or(0),
        }
    }

    /// The leftmost-longest match starting at or after `at`; `Err` when the
    /// search cannot run.
    fn find_from(&self, buf: &[u8], at: usize) -> Result<Option<Match>, ()> {
        let input = Input::new(buf).range(at..);
        match self {
            Search::Dfa(a) => a.try_find(&input).map_err(drop),
            Search::Nfa(a) => a.try_find(&input).map_err(drop),
            Search::Layers(_) => Err(()),
        }
    }

    fn partial_match_start(&self, buf: &[u8]) -> usize {
        match self {
            Search::Dfa(a) => partial_match_start(a, buf),
            Search::Nfa(a) => partial_match_start(a, buf),
            Search::Layers(l) => l
                .iter()
                .filter_map(|p| p.search())
                .map(|s| s.partial_match_start(buf))
                .min()
                .unwrap_or(buf.len()),
        }
    }

    /// [`scan`] with this automaton.
    pub(super) fn scan(
        &self,
        buf: &[u8],
        at_end: bool,
        out: &mut Option<Vec<u8>>,
    ) -> (usize, usize) {
        match self {
            Search::Dfa(a) => scan(a, buf, at_end, out),
            Search::Nfa(a) => scan(a, buf, at_end, out),
            Search::Layers(l) => scan_layers(self, l, buf, at_end, out),
        }
    }

    fn contains(&self, data: &[u8]) -> bool {
        fn find<A: Automaton>(a: &A, data: &[u8]) -> bool {
            // SECURITY: a search that cannot run counts as a match (fail closed).
            data.len() >= a.min_pattern_len()
                && a.try_find(&Input::new(data)).map_or(true, |m| m.is_some())
        }
        match self {
            Search::Dfa(a) => find(a, data),
            Search::Nfa(a) => find(a, data),
            // SECURITY: a layer that cannot search counts as a match (fail closed).
            Search::Layers(l) => l
                .iter()
                .any(|p| p.search().is_none_or(|s| s.contains(data))),
        }
    }
}

impl Patterns {
    /// The automaton, if the set is ready.
    fn search(&self) -> Option<&Search> {
        match &self.matcher {
            Matcher::Ready(s) => Some(s),
            _ => None,
        }
    }
}

/// [`scan`] over several automata as if they were one over the union of their
/// patterns: at each step the earliest-starting match of any layer wins, the
/// longest of those starting there; a possible partial match of any layer is
/// held back (the earliest such start).
fn scan_layers(
    all: &Search,
    layers: &[Arc<Patterns>],
    buf: &[u8],
    at_end: bool,
    out: &mut Option<Vec<u8>>,
) -> (usize, usize) {
    if at_end && buf.len() < all.min_pattern_len() {
        if let Some(o) = out {
            o.extend_from_slice(buf);
        }
        return (buf.len(), 0);
    }
    let tail = if at_end {
        buf.len()
    } else {
        all.partial_match_start(buf)
    };
    let searches: Vec<&Search> = layers.iter().filter_map(|p| p.search()).collect();
    // Per layer, its next match at or after `pos` (None once it has no more).
    let mut next: Vec<Option<Match>> = vec![None; searches.len()];
    let mut done = vec![false; searches.len()];
    let (mut pos, mut count) = (0, 0);
    loop {
        let mut best: Option<Match> = None;
        for (i, search) in searches.iter().enumerate() {
            if done[i] {
                continue;
            }
            if next[i].is_none_or(|m| m.start() < pos) {
                match search.find_from(buf, pos) {
                    Ok(Some(m)) => next[i] = Some(m),
                    Ok(None) => {
                        done[i] = true;
                        continue;
                    }
                    Err(()) => {
                        // SECURITY: cannot search → emit nothing more but the marker.
                        out.get_or_insert_with(Vec::new).extend_from_slice(REDACTED);
                        return (buf.len(), count + 1);
                    }
                }
            }
            if let Some(m) = next[i] {
                let better = best.is_none_or(|b| {
                    m.start() < b.start() || (m.start() == b.start() && m.end() > b.end())
                });
                if better {
                    best = Some(m);
                }
            }
        }
        // SECURITY: as in `scan`, a match at or after `tail` may still grow.
        let Some(m) = best.filter(|m| m.start() < tail) else {
            break;
        };
        let o = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
        o.extend_from_slice(&buf[pos..m.start()]);
        o.extend_from_slice(REDACTED);
        pos = m.end();
        count += 1;
    }
    let settled = pos.max(tail);
    if let Some(o) = out {
        o.extend_from_slice(&buf[pos..settled]);
    }
    (settled, count)
}

/// Finds the matches in `buf` that are final, appends the redacted output to `out`
/// (created at the first match) and returns how many bytes of `buf` are settled;
/// `buf[settled..]` may still be the start of a secret and must be held back.
/// With `at_end` the whole buffer is settled.
fn scan<A: Automaton>(
    nfa: &A,
    buf: &[u8],
    at_end: bool,
    out: &mut Option<Vec<u8>>,
) -> (usize, usize) {
    // A whole value shorter than the shortest pattern cannot hold one (most
    // header values, small bodies): skip setting up the search.
    if at_end && buf.len() < nfa.min_pattern_len() {
        if let Some(o) = out {
            o.extend_from_slice(buf);
        }
        return (buf.len(), 0);
    }
    let tail = if at_end {
        buf.len()
    } else {
        partial_match_start(nfa, buf)
    };
    let mut pos = 0;
    let mut count = 0;
    let Ok(iter) = nfa.try_find_iter(Input::new(buf)) else {
        // SECURITY: cannot search → emit nothing of this buffer but the marker.
        out.get_or_insert_with(Vec::new).extend_from_slice(REDACTED);
        return (buf.len(), 1);
    };
    for m in iter {
        // SECURITY: a match starting at or after `tail` may still grow into a longer
        // pattern (or an earlier-starting one may appear) once more bytes arrive.
        if m.start() >= tail {
            break;
        }
        let o = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
        o.extend_from_slice(&buf[pos..m.start()]);
        o.extend_from_slice(REDACTED);
        pos = m.end();
        count += 1;
    }
    let settled = pos.max(tail);
    if let Some(o) = out {
        o.extend_from_slice(&buf[pos..settled]);
    }
    (settled, count)
}

/// Start of the longest suffix of `buf` that is a prefix of some pattern (or a whole
/// pattern that a longer one could extend), or `buf.len()` if there is none. Only
/// the last `max_pattern_len - 1` positions can start one.
fn partial_match_start<A: Automaton>(nfa: &A, buf: &[u8]) -> usize {
    let window = nfa.max_pattern_len().saturating_sub(1);
    let Ok(start) = nfa.start_state(Anchored::Yes) else {
        return buf.len().saturating_sub(window);
    };
    let from = buf.len().saturating_sub(window);
    'positions: for i in from..buf.len() {
        let mut sid = start;
        for &b in &buf[i..] {
            sid = nfa.next_state(Anchored::Yes, sid, b);
            if nfa.is_dead(sid) {
                continue 'positions;
            }
        }
        return i;
    }
    buf.len()
}

#[cfg(test)]
mod tests {
    use super::super::forms::encoded_forms;
    use super::super::test_util::{assert_redacted, large_set, patterns, stream, SECRET};
    use super::*;

    #[test]
    fn small_sets_use_the_dfa_and_large_ones_the_nfa() {
        let is_dfa =
            |p: &Patterns| matches!(&p.matcher, Matcher::Ready(s) if matches!(**s, Search::Dfa(_)));
        let is_nfa =
            |p: &Patterns| matches!(&p.matcher, Matcher::Ready(s) if matches!(**s, Search::Nfa(_)));
        assert!(is_dfa(&patterns(SECRET)));
        let large = large_set();
        assert!(is_nfa(&large));
        assert!(large.memory_usage() < patterns(SECRET).memory_usage());
    }

    #[test]
    fn every_encoded_form_is_redacted_by_both_automata_at_every_cut() {
        for p in [patterns(SECRET), large_set()] {
            for form in encoded_forms(SECRET) {
                assert_redacted(&p, &form);
            }
            assert_eq!(p.redact_all(b"no secret here, just text"), None);
        }
        // The other secrets of the large set too, and adjacent occurrences.
        let p = large_set();
        let doc = b"other-secret-3-Qw3rTy9zXcother-secret-7-Qw3rTy9zXc";
        assert_eq!(stream(&p, doc, &[5, 30]), b"[REDACTED][REDACTED]");
    }

    #[test]
    fn case_variant_of_secret_is_also_redacted() {
        let p = patterns(b"SK-Token-ABCDEFG");
        assert_eq!(
            p.redact_all(b"x sk-token-abcdefg y").as_deref(),
            Some(&b"x [REDACTED] y"[..])
        );
    }

    #[test]
    fn values_shorter_than_every_pattern_skip_the_search_but_a_whole_secret_does_not() {
        let p = patterns(SECRET);
        // Exactly the secret (the shortest pattern's length) is still found...
        assert_eq!(p.redact_all(SECRET).as_deref(), Some(&b"[REDACTED]"[..]));
        assert!(p.contains_secret(SECRET));
        // ...one byte less cannot hold any form of it.
        let short = &SECRET[..SECRET.len() - 1];
        assert_eq!(p.redact_all(short), None);
        assert!(!p.contains_secret(short));
        // A streamed tail shorter than a pattern is still held back, not skipped.
        assert_eq!(stream(&p, SECRET, &[3, 9]), b"[REDACTED]");
    }

    #[test]
    fn empty_and_short_secrets() {
        assert!(Patterns::new(&[]).is_empty());
        assert!(Patterns::new(&[b""]).is_empty());
        let p = patterns(b"abc");
        // The raw form of a short secret is always searched; its derived forms are
        // too short to search without redacting noise.
        assert_eq!(
            p.redact_all(b"xabcx").as_deref(),
            Some(&b"x[REDACTED]x"[..])
        );
        assert_eq!(p.redact_all(b"YWJj"), None);
    }

    #[test]
    fn encoded_forms_do_not_match_plain_text() {
        let p = patterns(SECRET);
        let text = b"The quick brown fox jumps over the lazy dog. 0123456789 +/=%\\u00";
        assert_eq!(p.redact_all(text), None);
        assert_eq!(stream(&p, text, &[3, 10, 11, 40]), text.to_vec());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Several automata searched as one give exactly the output of one
        /// automaton over the union of their patterns, whole and streamed.
        #[test]
        fn layers_search_as_the_union_of_their_patterns(
            a in proptest::collection::vec("[ab01]{3,10}", 1..6),
            b in proptest::collection::vec("[ab01]{3,10}", 1..6),
            doc in "[ab01 x]{0,80}",
            cut in 0usize..81,
        ) {
            let bytes = |v: &[String]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
            let (va, vb) = (bytes(&a), bytes(&b));
            fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
                v.iter().map(Vec::as_slice).collect()
            }
            let union: Vec<Vec<u8>> = va.iter().chain(&vb).cloned().collect();
            let one = Arc::new(Patterns::new(&refs(&union)));
            let layered = Arc::new(Patterns::layered(&[
                Arc::new(Patterns::new(&refs(&va))),
                Arc::new(Patterns::quick(&refs(&vb))),
            ]));
            proptest::prop_assert_eq!(layered.layers(), 2);
            let doc = doc.as_bytes();
            proptest::prop_assert_eq!(layered.redact_all(doc), one.redact_all(doc));
            proptest::prop_assert_eq!(layered.contains_secret(doc), one.contains_secret(doc));
            let cut = cut.min(doc.len());
            proptest::prop_assert_eq!(stream(&layered, doc, &[cut]), stream(&one, doc, &[cut]));
        }
    }

    #[test]
    fn an_empty_layer_is_dropped_and_a_broken_one_breaks_the_whole() {
        let p = patterns(SECRET);
        let empty = Arc::new(Patterns::new(&[]));
        assert_eq!(Patterns::layered(&[p.clone(), empty.clone()]).layers(), 1);
        assert!(Patterns::layered(&[empty]).is_empty());
        let broken = Arc::new(Patterns { matcher: Matcher::Broken });
        let both = Patterns::layered(&[p, broken]);
        assert!(matches!(both.matcher, Matcher::Broken));
        assert!(both.contains_secret(b"anything"));
    }
}
