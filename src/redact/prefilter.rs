//! The SIMD prefilter of a pattern set: aho-corasick's packed (Teddy) searcher
//! over the distinct prefixes of the (lowercased) forms, run on a lowercased copy
//! of the haystack, one bounded block at a time. It finds every position where a
//! form may start — a superset: a form's prefix occurs there, ASCII
//! case-insensitively — and the automaton confirms each candidate with an
//! anchored search (`matcher.rs`). Lowercasing keeps byte positions, so a match
//! on the copy is exactly a case-insensitive match on the original.
//!
//! Not built (the automaton searches alone, byte at a time) when the set has more
//! prefixes than Teddy handles well, a prefix is too short to be selective, or
//! the CPU lacks SSSE3/AVX2 (NEON on aarch64).

use aho_corasick::packed::{Config, MatchKind, Searcher};
use aho_corasick::Span;

/// Bytes of each form that the prefilter looks for. Teddy fingerprints the first
/// three and verifies the rest; eight make a false candidate (one the automaton
/// then rejects) rare on base64/hex-like bodies while letting forms that share a
/// start (the raw, percent and JSON spellings of most secrets) share a prefix.
const PREFIX_LEN: usize = 8;

/// Teddy's own limit on patterns (above it aho-corasick declines to build one).
const MAX_PREFIXES: usize = 64;

/// A prefix shorter than this (the raw form of a one- or two-byte secret) would
/// make nearly every byte a candidate: the automaton alone is faster then.
const MIN_PREFIX_LEN: usize = 3;

/// Bytes lowercased at a time: bounds the copy a scan keeps (per redactor) and
/// keeps it in L1 cache while Teddy reads it.
const BLOCK_LEN: usize = 16 * 1024;

/// The packed searcher over a set's prefixes.
pub(super) struct Prefilter {
    searcher: Searcher,
    /// The longest prefix searched for.
    prefix_len: usize,
    /// Bytes lowercased at a time (at least `prefix_len`).
    block_len: usize,
}

impl Prefilter {
    /// The prefilter of `forms` (any case). `None` when no packed searcher fits.
    pub(super) fn build(forms: &[Vec<u8>]) -> Option<Prefilter> {
        Prefilter::with_block(forms, BLOCK_LEN)
    }

    /// [`Prefilter::build`] lowercasing `block_len` bytes at a time (tests use
    /// small blocks to put block edges everywhere).
    pub(super) fn with_block(forms: &[Vec<u8>], block_len: usize) -> Option<Prefilter> {
        // SECURITY: the haystack is searched lowercased, so the prefixes must be
        // too (they are already, `Patterns::build`; this keeps it so).
        let mut prefixes: Vec<Vec<u8>> = forms
            .iter()
            .map(|f| f[..f.len().min(PREFIX_LEN)].to_ascii_lowercase())
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        // A prefix that extends a shorter one adds no candidate: drop it (sorted,
        // so the shorter one comes just before its extensions).
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            if kept.last().is_none_or(|k| !p.starts_with(k)) {
                kept.push(p);
            }
        }
        let shortest = kept.iter().map(|p| p.len()).min()?;
        if kept.len() > MAX_PREFIXES || shortest < MIN_PREFIX_LEN {
            return None;
        }
        let prefix_len = kept.iter().map(|p| p.len()).max()?;
        let searcher = Config::new()
            .match_kind(MatchKind::LeftmostFirst)
            .builder()
            .extend(&kept)
            .build()?;
        Some(Prefilter {
            searcher,
            prefix_len,
            block_len: block_len.max(prefix_len),
        })
    }

    pub(super) fn memory_usage(&self) -> usize {
        self.searcher.memory_usage()
    }
}

/// A scan's walk over the candidates of one haystack: `lower[..filled]` holds
/// `buf[base..base + filled]` lowercased (`lower` is the caller's, kept between
/// scans so that a block costs no allocation).
pub(super) struct Candidates<'a> {
    pre: &'a Prefilter,
    buf: &'a [u8],
    lower: &'a mut Vec<u8>,
    base: usize,
    filled: usize,
}

impl<'a> Candidates<'a> {
    pub(super) fn new(pre: &'a Prefilter, buf: &'a [u8], lower: &'a mut Vec<u8>) -> Self {
        Candidates {
            pre,
            buf,
            lower,
            base: 0,
            filled: 0,
        }
    }

    /// The first position at or after `from` where some prefix occurs (ASCII
    /// case-insensitively), or `None`. No form starts in `from..` before it.
    pub(super) fn next(&mut self, mut from: usize) -> Option<usize> {
        let n = self.buf.len();
        loop {
            if from >= n {
                return None;
            }
            let end = self.base + self.filled;
            if from < self.base || from >= end {
                self.fill(from);
                continue;
            }
            // Every occurrence starting before `safe` lies whole in the block, so
            // the block's leftmost one before `safe` is the haystack's. One found
            // at or after it may have an earlier one straddling the block's end.
            let safe = if end == n {
                n
            } else {
                end + 1 - self.pre.prefix_len
            };
            let span = Span::from(from - self.base..self.filled);
            let found = self.pre.searcher.find_in(&self.lower[..self.filled], span);
            match found.map(|m| m.start() + self.base) {
                Some(s) if s < safe => return Some(s),
                _ if end == n => return None,
                // `safe` > `base` (a block is at least `prefix_len` long): progress.
                _ => {
                    from = from.max(safe);
                    self.fill(from);
                }
            }
        }
    }

    /// Lowercases the block starting at `at`.
    fn fill(&mut self, at: usize) {
        let end = at.saturating_add(self.pre.block_len).min(self.buf.len());
        let src = &self.buf[at..end];
        if self.lower.len() < src.len() {
            self.lower.resize(src.len(), 0);
        }
        // One pass (copy and fold together; the compiler vectorizes it).
        for (d, s) in self.lower.iter_mut().zip(src) {
            *d = s.to_ascii_lowercase();
        }
        self.base = at;
        self.filled = src.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn all(pre: &Prefilter, buf: &[u8]) -> Vec<usize> {
        let mut lower = Vec::new();
        let mut c = Candidates::new(pre, buf, &mut lower);
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(s) = c.next(from) {
            out.push(s);
            from = s + 1;
        }
        out
    }

    #[test]
    fn extensions_of_a_prefix_are_dropped_and_limits_hold() {
        let p = Prefilter::build(&forms(&["abcdefghij", "abcdefgh-other", "abc"])).unwrap();
        assert_eq!(p.prefix_len, 3);
        assert!(Prefilter::build(&forms(&["ab", "abcdefgh"])).is_none());
        let many: Vec<Vec<u8>> = (0..=MAX_PREFIXES)
            .map(|i| format!("{i:08}").into_bytes())
            .collect();
        assert!(Prefilter::build(&many).is_none());
        assert!(Prefilter::build(&many[..MAX_PREFIXES]).is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Every position where a prefix occurs case-insensitively, whatever the
        /// block length: exactly the naive answer.
        #[test]
        fn candidates_are_every_case_insensitive_prefix_occurrence(
            pats in proptest::collection::vec("[aAbB0x]{3,10}", 1..6),
            doc in "[aAbB0xX ]{0,120}",
            block in 1usize..40,
        ) {
            let fs: Vec<Vec<u8>> = pats.iter().map(|s| s.as_bytes().to_vec()).collect();
            let pre = Prefilter::with_block(&fs, block).expect("small set");
            let doc = doc.as_bytes();
            let lower = doc.to_ascii_lowercase();
            let want: Vec<usize> = (0..doc.len())
                .filter(|&i| {
                    fs.iter().any(|f| {
                        let prefix = f[..f.len().min(PREFIX_LEN)].to_ascii_lowercase();
                        lower[i..].starts_with(&prefix)
                    })
                })
                .collect();
            proptest::prop_assert_eq!(all(&pre, doc), want);
        }
    }
}
