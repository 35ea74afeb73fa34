//! The matcher: every form of every in-scope secret in one leftmost-longest,
//! ASCII case-insensitive Aho-Corasick automaton (a DFA for small sets, the
//! contiguous NFA for large ones: [`DFA_MAX_FORMS`]), and the scan that replaces
//! each settled match by [`REDACTED`] while holding back a possible partial match.
//! With a [`Prefilter`] (sets of up to ~64 distinct form prefixes) the automaton
//! only confirms the candidates a SIMD search finds; without one it reads every
//! byte.

use super::forms::encoded_forms;
use super::prefilter::{Candidates, Prefilter};
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

    /// Like [`Patterns::new`] but without the prefilter: the automaton reads
    /// every byte (the reference the prefiltered scan is tested against).
    #[cfg(test)]
    pub(super) fn unfiltered(secrets: &[&[u8]]) -> Patterns {
        Patterns::build(secrets, Build::Unfiltered)
    }

    /// Like [`Patterns::new`] with a prefilter that lowercases `block` bytes at
    /// a time (tests: block edges everywhere).
    #[cfg(test)]
    pub(super) fn with_block(secrets: &[&[u8]], block: usize) -> Patterns {
        Patterns::build(secrets, Build::Block(block))
    }

    /// Whether searches run the SIMD prefilter.
    pub fn is_prefiltered(&self) -> bool {
        matches!(
            self.search(),
            Some(Search::Dfa(_, Some(_)) | Search::Nfa(_, Some(_)))
        )
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
        search.scan(data, true, &mut out, &mut Vec::new());
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
    /// As `Scan`, without a prefilter (tests).
    #[cfg(test)]
    Unfiltered,
    /// As `Scan`, the prefilter lowercasing this many bytes at a time (tests).
    #[cfg(test)]
    Block(usize),
}

/// The automaton of a pattern set (see [`DFA_MAX_FORMS`]) and its prefilter if
/// one fits, or several searched as one ([`Patterns::layered`]; each layer is a
/// `Dfa` or an `Nfa`, searched without its prefilter).
pub(super) enum Search {
    Dfa(DFA, Option<Prefilter>),
    Nfa(NFA, Option<Prefilter>),
    Layers(Vec<Arc<Patterns>>),
}

impl Search {
    /// `None` when the automaton cannot be built.
    fn build(forms: &[Vec<u8>], how: Build) -> Option<Search> {
        // Leftmost-longest so that a secret and its longer encodings redact whole;
        // anchored starts are needed by `partial_match_start`. No prefilter: with
        // case-insensitive forms only aho-corasick's rare-byte prefilter applies,
        // and on base64/hex-like bodies its bytes occur every few bytes, so each
        // candidate restarts the search: 5-10x slower than the plain automaton
        // (1 MiB of base64: ~9-27 vs ~1.7 ms; callgrind: 19M instructions per MiB,
        // two thirds of keyward's userland per download). Same matches either way.
        // Our own prefilter instead (`prefilter.rs`): case-insensitive by
        // lowercasing, each candidate confirmed by the automaton.
        let prefilter = match how {
            #[cfg(test)]
            Build::Unfiltered => None,
            #[cfg(test)]
            Build::Block(block) => Prefilter::with_block(forms, block),
            Build::Scan | Build::Quick => Prefilter::build(forms),
        };
        if how != Build::Quick && forms.len() <= DFA_MAX_FORMS {
            DFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(false)
                .start_kind(StartKind::Both)
                .build(forms)
                .ok()
                .map(|a| Search::Dfa(a, prefilter))
        } else {
            NFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(false)
                .build(forms)
                .ok()
                .map(|a| Search::Nfa(a, prefilter))
        }
    }

    fn memory_usage(&self) -> usize {
        let pre = |p: &Option<Prefilter>| p.as_ref().map_or(0, Prefilter::memory_usage);
        match self {
            Search::Dfa(a, p) => a.memory_usage() + pre(p),
            Search::Nfa(a, p) => a.memory_usage() + pre(p),
            Search::Layers(l) => l.iter().map(|p| p.memory_usage()).sum(),
        }
    }

    fn max_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a, _) => a.max_pattern_len(),
            Search::Nfa(a, _) => a.max_pattern_len(),
            Search::Layers(l) => l.iter().map(|p| p.max_pattern_len()).max().unwrap_or(0),
        }
    }

    fn min_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a, _) => a.min_pattern_len(),
            Search::Nfa(a, _) => a.min_pattern_len(),
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
            Search::Dfa(a, _) => a.try_find(&input).map_err(drop),
            Search::Nfa(a, _) => a.try_find(&input).map_err(drop),
            Search::Layers(_) => Err(()),
        }
    }

    fn partial_match_start(&self, buf: &[u8]) -> usize {
        match self {
            Search::Dfa(a, _) => partial_match_start(a, buf),
            Search::Nfa(a, _) => partial_match_start(a, buf),
            Search::Layers(l) => l
                .iter()
                .filter_map(|p| p.search())
                .map(|s| s.partial_match_start(buf))
                .min()
                .unwrap_or(buf.len()),
        }
    }

    /// [`scan`] with this automaton (and its prefilter: [`scan_filtered`], which
    /// lowercases into `lower`).
    pub(super) fn scan(
        &self,
        buf: &[u8],
        at_end: bool,
        out: &mut Option<Vec<u8>>,
        lower: &mut Vec<u8>,
    ) -> (usize, usize) {
        match self {
            Search::Dfa(a, Some(pre)) => scan_filtered(a, pre, buf, at_end, out, lower),
            Search::Nfa(a, Some(pre)) => scan_filtered(a, pre, buf, at_end, out, lower),
            Search::Dfa(a, None) => scan(a, buf, at_end, out),
            Search::Nfa(a, None) => scan(a, buf, at_end, out),
            Search::Layers(l) => scan_layers(self, l, buf, at_end, out),
        }
    }

    fn contains(&self, data: &[u8]) -> bool {
        fn find<A: Automaton>(a: &A, pre: Option<&Prefilter>, data: &[u8]) -> bool {
            if data.len() < a.min_pattern_len() {
                return false;
            }
            let Some(pre) = pre else {
                // SECURITY: a search that cannot run counts as a match (fail closed).
                return a.try_find(&Input::new(data)).map_or(true, |m| m.is_some());
            };
            let mut lower = Vec::new();
            let mut candidates = Candidates::new(pre, data, &mut lower);
            let mut from = 0;
            while let Some(c) = candidates.next(from) {
                match a.try_find(&anchored_at(data, c)) {
                    Ok(Some(_)) => return true,
                    Ok(None) => from = c + 1,
                    // SECURITY: a search that cannot run counts as a match (fail closed).
                    Err(_) => return true,
                }
            }
            false
        }
        match self {
            Search::Dfa(a, p) => find(a, p.as_ref(), data),
            Search::Nfa(a, p) => find(a, p.as_ref(), data),
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

/// An anchored search of `buf` at `at`: the longest pattern starting there.
fn anchored_at(buf: &[u8], at: usize) -> Input<'_> {
    Input::new(buf).range(at..).anchored(Anchored::Yes)
}

/// [`scan`], the same output, with the automaton run only where the prefilter
/// finds a candidate: the leftmost match at or after a position starts at the
/// first candidate there at which an anchored search matches (every match
/// starts at a candidate), and leftmost-longest makes it that search's match.
fn scan_filtered<A: Automaton>(
    a: &A,
    pre: &Prefilter,
    buf: &[u8],
    at_end: bool,
    out: &mut Option<Vec<u8>>,
    lower: &mut Vec<u8>,
) -> (usize, usize) {
    if at_end && buf.len() < a.min_pattern_len() {
        if let Some(o) = out {
            o.extend_from_slice(buf);
        }
        return (buf.len(), 0);
    }
    let tail = if at_end {
        buf.len()
    } else {
        partial_match_start(a, buf)
    };
    let mut candidates = Candidates::new(pre, buf, lower);
    // `pos`: bytes emitted; `from`: where the next match may start.
    let (mut pos, mut from, mut count) = (0, 0, 0);
    while let Some(c) = candidates.next(from) {
        // SECURITY: as in `scan`, a match at or after `tail` may still grow.
        if c >= tail {
            break;
        }
        match a.try_find(&anchored_at(buf, c)) {
            Ok(Some(m)) => {
                let o = out.get_or_insert_with(|| Vec::with_capacity(buf.len()));
                o.extend_from_slice(&buf[pos..m.start()]);
                o.extend_from_slice(REDACTED);
                pos = m.end();
                from = pos;
                count += 1;
            }
            Ok(None) => from = c + 1,
            Err(_) => {
                // SECURITY: cannot search → emit nothing more of this buffer but the marker.
                out.get_or_insert_with(Vec::new).extend_from_slice(REDACTED);
                return (buf.len(), count + 1);
            }
        }
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
        let is_dfa = |p: &Patterns| matches!(&p.matcher, Matcher::Ready(s) if matches!(**s, Search::Dfa(..)));
        let is_nfa = |p: &Patterns| matches!(&p.matcher, Matcher::Ready(s) if matches!(**s, Search::Nfa(..)));
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
        let broken = Arc::new(Patterns {
            matcher: Matcher::Broken,
        });
        let both = Patterns::layered(&[p, broken]);
        assert!(matches!(both.matcher, Matcher::Broken));
        assert!(both.contains_secret(b"anything"));
    }

    /// A body dense with forms of `secrets` (whole, case-flipped, truncated,
    /// one byte changed) between base64/percent/JSON-like filler.
    fn dense_doc(secrets: &[Vec<u8>], pieces: &[(String, u8, usize, usize, u64)]) -> Vec<u8> {
        let forms: Vec<Vec<u8>> = secrets.iter().flat_map(|s| encoded_forms(s)).collect();
        let mut doc = Vec::new();
        for (filler, kind, i, j, bits) in pieces {
            doc.extend_from_slice(filler.as_bytes());
            let mut form = forms[i % forms.len()].clone();
            for (k, b) in form.iter_mut().enumerate() {
                if bits >> (k % 64) & 1 == 1 {
                    *b = b.to_ascii_uppercase();
                }
            }
            match kind {
                0 => {}
                1 => doc.extend_from_slice(&form),
                2 => doc.extend_from_slice(&form[..j % form.len()]),
                _ => {
                    let at = j % form.len();
                    form[at] = b'x';
                    doc.extend_from_slice(&form);
                }
            }
        }
        doc
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        /// The prefiltered scan gives exactly the automaton-alone output: whole,
        /// streamed in any chunking, and for `contains_secret`, with prefilter
        /// blocks of any length (block edges everywhere).
        #[test]
        fn prefiltered_scan_is_the_automaton_scan(
            secrets in proptest::collection::vec("[a-zA-Z0-9+/?%\"\\\\ _~.-]{3,20}", 1..5),
            pieces in proptest::collection::vec(
                ("[A-Za-z0-9+/=%\\\\ ]{0,12}", 0u8..4, 0usize..1000, 0usize..1000, proptest::prelude::any::<u64>()),
                0..14,
            ),
            cuts in proptest::collection::vec(0usize..600, 0..6),
            block in proptest::prop_oneof![8usize..40, proptest::strategy::Just(16 * 1024)],
        ) {
            let secrets: Vec<Vec<u8>> = secrets.into_iter().map(String::into_bytes).collect();
            let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
            let fast = Arc::new(Patterns::with_block(&refs, block));
            let slow = Arc::new(Patterns::unfiltered(&refs));
            proptest::prop_assert!(!slow.is_prefiltered());
            let doc = dense_doc(&secrets, &pieces);
            proptest::prop_assert_eq!(fast.redact_all(&doc), slow.redact_all(&doc));
            proptest::prop_assert_eq!(fast.contains_secret(&doc), slow.contains_secret(&doc));
            let mut cuts = cuts;
            cuts.sort_unstable();
            proptest::prop_assert_eq!(stream(&fast, &doc, &cuts), stream(&slow, &doc, &cuts));
        }
    }

    #[test]
    fn small_sets_are_prefiltered_and_secrets_at_block_edges_are_found() {
        let p = patterns(SECRET);
        assert!(p.is_prefiltered());
        assert!(large_set().is_prefiltered());
        // Too many prefixes for Teddy: the automaton alone, same output.
        let many: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("{i:02}-many-secrets-Qw3rTy9zXc").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        assert!(!Patterns::new(&refs).is_prefiltered());
        // A secret straddling each edge of the real 16 KiB blocks, in both cases.
        let block = 16 * 1024;
        let mut doc = vec![b'A'; 4 * block];
        for (k, at) in [block - 3, 2 * block - 20, 3 * block - 1]
            .into_iter()
            .enumerate()
        {
            let s = if k % 2 == 0 {
                SECRET.to_vec()
            } else {
                SECRET.to_ascii_uppercase()
            };
            doc[at..at + s.len()].copy_from_slice(&s);
        }
        let slow = Arc::new(Patterns::unfiltered(&[SECRET]));
        let want = slow.redact_all(&doc).expect("three secrets");
        assert_eq!(
            want.windows(REDACTED.len())
                .filter(|w| *w == REDACTED)
                .count(),
            3
        );
        assert_eq!(p.redact_all(&doc).as_deref(), Some(&want[..]));
        for cut in [block - 1, block, 2 * block - 10, 3 * block + 5] {
            assert_eq!(stream(&p, &doc, &[cut]), want, "cut {cut}");
        }
    }

    /// Throughput probe, not a test (no timed assertion): the scan of a 1 MiB
    /// base64 body (bench/run.sh's `/1m`) in 16 KiB chunks for a bench-like
    /// secret, automaton alone vs prefiltered. Run with
    /// `cargo test --release --lib scan_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn scan_throughput_probe() {
        use base64::Engine as _;
        use bytes::Bytes;
        const MIB: usize = 1 << 20;
        const CHUNK: usize = 16 * 1024;
        const ROUNDS: usize = 15;
        let raw: Vec<u8> = (0..MIB).map(|_| rand::random::<u8>()).collect();
        let body = base64::engine::general_purpose::STANDARD
            .encode(raw)
            .into_bytes();
        let body = Bytes::from(body[..MIB].to_vec());
        let secret = b"sk-bench-3f9a1c0d5e7b2a4f6c8d0e1f2a3b4c5d";
        let mut four: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("sk-other-{i}-Qw3rTy9zXcVb").into_bytes())
            .collect();
        four.push(secret.to_vec());
        let four: Vec<&[u8]> = four.iter().map(Vec::as_slice).collect();
        let cases = [
            ("1 secret, automaton alone", Patterns::unfiltered(&[secret])),
            ("1 secret, prefiltered", Patterns::new(&[secret])),
            ("4 secrets, automaton alone", Patterns::unfiltered(&four)),
            ("4 secrets, prefiltered", Patterns::new(&four)),
        ];
        for (name, p) in cases {
            let p = Arc::new(p);
            let mut best = f64::MAX;
            for _ in 0..ROUNDS {
                let mut r = super::super::stream::Redactor::new(p.clone());
                let t = std::time::Instant::now();
                let mut n = 0;
                for at in (0..MIB).step_by(CHUNK) {
                    n += r.push(body.slice(at..(at + CHUNK).min(MIB))).len();
                }
                n += r.finish().len();
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(n, MIB);
            }
            println!(
                "{name}: {:.3} ms per MiB, {:.0} MiB/s (best of {ROUNDS}; prefilter {})",
                best * 1e3,
                1.0 / best,
                p.is_prefiltered()
            );
        }
    }
}
