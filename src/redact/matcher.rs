//! The matcher: every form of every in-scope secret in one leftmost-longest,
//! ASCII case-insensitive Aho-Corasick automaton (a DFA for small sets, the
//! contiguous NFA for large ones: [`DFA_MAX_FORMS`]), and the scan that replaces
//! each settled match by [`REDACTED`] while holding back a possible partial match.

use super::forms::encoded_forms;
use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind, StartKind};

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
        let matcher = match Search::build(&forms) {
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

/// The automaton of a pattern set (see [`DFA_MAX_FORMS`]).
pub(super) enum Search {
    Dfa(DFA),
    Nfa(NFA),
}

impl Search {
    /// `None` when the automaton cannot be built.
    fn build(forms: &[Vec<u8>]) -> Option<Search> {
        // Leftmost-longest so that a secret and its longer encodings redact whole;
        // anchored starts are needed by `partial_match_start`. No prefilter: with
        // case-insensitive forms only aho-corasick's rare-byte prefilter applies,
        // and on base64/hex-like bodies its bytes occur every few bytes, so each
        // candidate restarts the search: 5-10x slower than the plain automaton
        // (1 MiB of base64: ~9-27 vs ~1.7 ms; callgrind: 19M instructions per MiB,
        // two thirds of keyward's userland per download). Same matches either way.
        if forms.len() <= DFA_MAX_FORMS {
            DFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(false)
                .start_kind(StartKind::Both)
                .build(forms)
                .ok()
                .map(Search::Dfa)
        } else {
            NFA::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .ascii_case_insensitive(true)
                .prefilter(false)
                .build(forms)
                .ok()
                .map(Search::Nfa)
        }
    }

    fn memory_usage(&self) -> usize {
        match self {
            Search::Dfa(a) => a.memory_usage(),
            Search::Nfa(a) => a.memory_usage(),
        }
    }

    fn max_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a) => a.max_pattern_len(),
            Search::Nfa(a) => a.max_pattern_len(),
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
        }
    }
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
}
