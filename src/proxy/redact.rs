//! Streaming redaction of echoed secrets in upstream responses (SPEC §6.6).
//!
//! An upstream can echo the credential keyward injected (error pages that quote the
//! `Authorization` header, debug endpoints, a `Location` with `?key=`…). The agent
//! must never learn the real value, so every response toward a request that carried
//! a secret passes through [`wrap_response`]:
//!
//! * **Forms.** [`Patterns`] turns each secret into the spellings an upstream is likely
//!   to use: raw; hex; standard and URL-safe base64 at each of the three byte
//!   alignments (the secret embedded at offset 0/1/2 of a larger encoded blob, so only
//!   the *stable inner part* of each alignment is searched; padding is irrelevant to
//!   it); percent-encoding under the common encoder sets (RFC 3986, JavaScript
//!   `encodeURIComponent`/`encodeURI`, HTML forms, Python `quote_plus`, every byte);
//!   JSON string escaping (with and without `\/`, `\u00XX` controls and quotes,
//!   HTML-safe `\u003c`, ASCII-only `\uXXXX`). Matching is ASCII case-insensitive,
//!   which covers upper/lower/mixed hex digits in hex, `%xx` and `\uXXXX` at no
//!   cost; the only effect on other forms is that a case-variant of a secret is
//!   redacted too. All forms go into one leftmost-longest Aho-Corasick automaton and
//!   every match becomes [`REDACTED`].
//! * **Streaming.** [`Redactor`] holds back only the longest suffix of what it has
//!   seen that is still a prefix of some pattern (at most the longest pattern − 1
//!   bytes); everything before it is emitted at once, so SSE and chunked responses
//!   stay unbuffered. Held bytes are flushed at the end of the body. Trailers are
//!   redacted like headers.
//! * **Compression.** A `content-encoding` of `gzip`, `deflate` or `br` is decoded
//!   as it streams, redacted, and forwarded **decoded**, with `content-encoding` and
//!   `content-length` removed. Re-compressing would cost CPU on the hot path and add
//!   compressor buffering to SSE; forwarding the compressed bytes would mean not
//!   redacting. Any other coding (or a stack of several) is refused with a 502 rather
//!   than passed through unredacted (fail closed): [`read_answer`] (or
//!   [`wrap_response`]) returns the `Deny`, before anything of the response is
//!   sent, and the pipeline refuses with it like any refusal (one audit line).
//!   To make the decode path rare,
//!   the proxy should also call [`prepare_request`] on redacted requests, which asks
//!   the upstream for `identity`: both are needed, because servers may ignore
//!   `Accept-Encoding`, and decoding is what keeps such responses safe.
//!   Decoded output is produced in bounded frames ([`DECODE_OUTPUT_BUDGET`]) so a
//!   compression bomb costs the upstream's bandwidth, not our memory.
//! * **Failures.** An upstream body error, a truncated compressed stream, or corrupt
//!   compressed data surface as a body error, never as a clean end of stream; the
//!   held-back bytes are then discarded, not flushed. These are found while the
//!   body streams, after the status and headers went out, so they cannot become a
//!   keyward refusal: the agent sees the body fail (h1: connection closed before
//!   the chunked terminator; h2: stream reset), and the audit log keeps the one
//!   `inject` line of the decision already made.
//!
//! Limits, by design: secrets are matched byte-exactly in their listed forms; other
//! transformations (MIME base64 with line breaks, double encodings, bytes split by
//! markup) are not recognised. Encoded forms shorter than [`MIN_ENCODED_PATTERN_LEN`]
//! are skipped (they would redact random text); the raw form is always searched.
//! WebSocket frames after a `101` go through the same patterns (`websocket.rs`).
//! [`Patterns`] is built once per secret set and shared (`Arc`); building it is
//! far more expensive than using it (a DFA for small sets, the contiguous NFA for
//! large ones: [`DFA_MAX_FORMS`]).
//!
//! **Which secrets.** Every credential the agent could be granted (SPEC §5: each
//! name in its chain ∩ agent lists, resolved through the same tiers), of every
//! kind (an `oauth2` record's client secret and refresh token, an `aws` record's
//! secret key and session token), plus what exists only for this request (an
//! OAuth2 access token). [`ScopeCache`] resolves that set once per agent and vault
//! snapshot; [`PatternCache`] builds one automaton per distinct set.

use super::error::{Code, Deny};
use super::{Body, BoxError};
use crate::resolve::{Agent, Chain, Principal};
use crate::secret::Secret;
use crate::vault::Snapshot;
use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind, StartKind};
use base64::Engine as _;
use bytes::{Buf, Bytes};
use http::header::{HeaderName, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

/// What every occurrence of a secret, in any form, is replaced by.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// Encoded forms shorter than this are not searched: a 2-character base64 fragment
/// would redact random text everywhere, and reveals nothing useful about the secret.
pub const MIN_ENCODED_PATTERN_LEN: usize = 8;

/// Most decoded bytes produced for one body frame (bounds memory under a
/// decompression bomb and keeps frames a sensible size).
pub const DECODE_OUTPUT_BUDGET: usize = 64 * 1024;

/// Compressed input is fed to stream decoders in slices this big, so one slice can
/// expand to at most ~1 MiB (deflate's maximum ratio is ~1032:1).
const DECODE_INPUT_SLICE: usize = 1024;

/// Output space reserved per low-level decoder call.
const DECODE_OUTPUT_STEP: usize = 16 * 1024;

/// The encoded forms of the in-scope secrets to look for.
pub struct Patterns {
    matcher: Matcher,
}

enum Matcher {
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

/// Every spelling of `secret` that is searched for (before case folding/dedup).
pub fn encoded_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    let mut derived = Vec::new();
    derived.push(hex::encode(secret).into_bytes());
    derived.extend(base64_inner_forms(secret));
    derived.extend(percent_forms(secret));
    if let Ok(text) = std::str::from_utf8(secret) {
        derived.extend(json_forms(text));
    }
    out.extend(
        derived
            .into_iter()
            .filter(|f| f.len() >= MIN_ENCODED_PATTERN_LEN),
    );
    out
}

/// The characters of base64(prefix ‖ secret ‖ suffix) that depend only on the
/// secret, for a prefix of 0, 1 and 2 bytes (every alignment), in both alphabets.
fn base64_inner_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    const ALIGNMENTS: usize = 3;
    let mut out = Vec::new();
    for k in 0..ALIGNMENTS {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(secret);
        let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&buf);
        // Character i covers bits [6i, 6i+6); the secret covers [8k, 8(k+n)).
        let first = (8 * k).div_ceil(6);
        let end = 8 * (k + secret.len()) / 6;
        if end <= first {
            continue;
        }
        let std_form = enc.as_bytes()[first..end].to_vec();
        let url_form: Vec<u8> = std_form
            .iter()
            .map(|&c| match c {
                b'+' => b'-',
                b'/' => b'_',
                c => c,
            })
            .collect();
        out.push(std_form);
        out.push(url_form);
    }
    out
}

/// Percent-encodings under the encoder sets in common use.
fn percent_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    fn unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }
    fn uri_component(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
    }
    fn uri(b: u8) -> bool {
        uri_component(b) || b";,/?:@&=+$#".contains(&b)
    }
    fn form(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"*-._".contains(&b)
    }
    fn php(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._".contains(&b)
    }
    fn alphanumeric(b: u8) -> bool {
        b.is_ascii_alphanumeric()
    }
    fn nothing(_: u8) -> bool {
        false
    }
    /// Which bytes are kept literal, and whether space is written as '+'.
    type Encoding = (fn(u8) -> bool, bool);
    let sets: [Encoding; 9] = [
        (unreserved, false),    // RFC 3986, Go url.PathEscape-like, Python quote
        (unreserved, true),     // Python quote_plus
        (uri_component, false), // JavaScript encodeURIComponent
        (uri, false),           // JavaScript encodeURI
        (form, true),           // WHATWG application/x-www-form-urlencoded
        (php, true),            // PHP urlencode
        (alphanumeric, false),  // Rust percent_encoding NON_ALPHANUMERIC
        (alphanumeric, true),
        (nothing, false), // every byte
    ];
    sets.iter()
        .map(|(keep, space_plus)| {
            let mut out = Vec::with_capacity(secret.len() * 3);
            for &b in secret {
                if keep(b) {
                    out.push(b);
                } else if b == b' ' && *space_plus {
                    out.push(b'+');
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            out
        })
        .collect()
}

/// JSON string escapings under the encoder options in common use.
fn json_forms(text: &str) -> Vec<Vec<u8>> {
    const OPTION_COUNT: u32 = 5;
    let mut out = Vec::new();
    for bits in 0..(1u32 << OPTION_COUNT) {
        let escape_slash = bits & 1 != 0;
        let html_safe = bits & 2 != 0;
        let ascii_only = bits & 4 != 0;
        let unicode_controls = bits & 8 != 0;
        let unicode_quotes = bits & 16 != 0;
        let mut s = String::with_capacity(text.len() * 2);
        for c in text.chars() {
            let u = |s: &mut String, c: u32| s.push_str(&format!("\\u{c:04x}"));
            match c {
                '"' | '\\' if unicode_quotes => u(&mut s, c as u32),
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '/' if escape_slash => s.push_str("\\/"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html_safe => u(&mut s, c as u32),
                '\u{8}' if !unicode_controls => s.push_str("\\b"),
                '\u{c}' if !unicode_controls => s.push_str("\\f"),
                '\n' if !unicode_controls => s.push_str("\\n"),
                '\r' if !unicode_controls => s.push_str("\\r"),
                '\t' if !unicode_controls => s.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' && unicode_controls => u(&mut s, c as u32),
                c if !c.is_ascii() && ascii_only => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        u(&mut s, u32::from(*unit));
                    }
                }
                c => s.push(c),
            }
        }
        out.push(s.into_bytes());
    }
    // Some encoders (and hand-rolled serializers) escape every character; the
    // automaton is case-insensitive, so `\u00XX` and `\u00xx` are both covered.
    let mut every = String::with_capacity(text.len() * 6);
    for c in text.chars() {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            every.push_str(&format!("\\u{:04x}", unit));
        }
    }
    out.push(every.into_bytes());
    out
}

/// Pattern sets up to this many encoded forms (about four secrets) are searched
/// with a DFA: one table lookup per byte, but ~1 MiB and ~1 ms to build per
/// secret. Larger sets (every secret in an agent's scope) use the contiguous NFA:
/// ~20 KiB per secret and ~8x cheaper to build, about half the DFA's speed on text
/// full of near-matches, the same on ordinary text.
const DFA_MAX_FORMS: usize = 32;

/// The automaton of a pattern set (see [`DFA_MAX_FORMS`]).
enum Search {
    Dfa(DFA),
    Nfa(NFA),
}

impl Search {
    /// `None` when the automaton cannot be built.
    fn build(forms: &[Vec<u8>]) -> Option<Search> {
        // Leftmost-longest so that a secret and its longer encodings redact whole;
        // anchored starts are needed by `partial_match_start`.
        if forms.len() <= DFA_MAX_FORMS {
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
        }
    }

    fn max_pattern_len(&self) -> usize {
        match self {
            Search::Dfa(a) => a.max_pattern_len(),
            Search::Nfa(a) => a.max_pattern_len(),
        }
    }

    fn scan(&self, buf: &[u8], at_end: bool, out: &mut Option<Vec<u8>>) -> (usize, usize) {
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

/// Streaming redactor: feed body bytes in any chunking, get redacted bytes out.
pub struct Redactor {
    patterns: Arc<Patterns>,
    held: Vec<u8>,
    scratch: Vec<u8>,
    redactions: u64,
}

impl Redactor {
    pub fn new(patterns: Arc<Patterns>) -> Redactor {
        Redactor {
            patterns,
            held: Vec::new(),
            scratch: Vec::new(),
            redactions: 0,
        }
    }

    /// How many replacements were made so far.
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    /// Bytes currently held back as a possible partial match.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Feeds one chunk; returns what can be emitted now (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        let nfa = match &self.patterns.matcher {
            Matcher::Empty => return chunk,
            Matcher::Ready(search) => search,
            // SECURITY: no automaton, no way to tell; emit nothing (callers refuse
            // such responses up front, this is belt and braces).
            Matcher::Broken => return Bytes::new(),
        };
        let mut out = None;
        if self.held.is_empty() {
            // Fast path: no carry-over, so the chunk itself is the buffer and an
            // unmatched prefix is emitted as a zero-copy slice.
            let (settled, n) = nfa.scan(&chunk, false, &mut out);
            self.redactions += n as u64;
            self.held.extend_from_slice(&chunk[settled..]);
            return match out {
                Some(v) => Bytes::from(v),
                None => chunk.slice(..settled),
            };
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.held);
        self.scratch.extend_from_slice(&chunk);
        let (settled, n) = nfa.scan(&self.scratch, false, &mut out);
        self.redactions += n as u64;
        self.held.clear();
        self.held.extend_from_slice(&self.scratch[settled..]);
        match out {
            Some(v) => Bytes::from(v),
            None => Bytes::copy_from_slice(&self.scratch[..settled]),
        }
    }

    /// End of stream: everything held is settled and returned (redacted).
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        match &self.patterns.matcher {
            Matcher::Empty => Bytes::from(held),
            Matcher::Broken => Bytes::new(),
            Matcher::Ready(search) => {
                let mut out = None;
                let (_, n) = search.scan(&held, true, &mut out);
                self.redactions += n as u64;
                Bytes::from(out.unwrap_or(held))
            }
        }
    }
}

/// Called at most once, when the first redaction in a response happens.
pub type OnRedact = Box<dyn FnOnce() + Send + Sync>;

/// Asks the upstream for an unencoded response, so redaction rarely has to decode.
/// Call it on every request whose response will go through [`wrap_response`].
pub fn prepare_request(headers: &mut HeaderMap) {
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
}

/// Redacts every header value in place (names are kept; a header whose *name*
/// carries a secret is dropped). Returns the number of redactions.
pub fn redact_headers(patterns: &Patterns, headers: &mut HeaderMap) -> usize {
    if patterns.is_empty() {
        return 0;
    }
    let mut count = 0;
    // SECURITY: a header name cannot hold "[REDACTED]", so an echoing name goes.
    let bad_names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| patterns.contains_secret(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in bad_names {
        headers.remove(&name);
        count += 1;
    }
    let mut invalid: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter_mut() {
        // SECURITY: any header value may echo the injected credential.
        if let Some(clean) = patterns.redact_all(value.as_bytes()) {
            count += 1;
            match HeaderValue::from_bytes(&clean) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    *value = v;
                }
                Err(_) => invalid.push(name.clone()),
            }
        }
    }
    for name in invalid {
        headers.remove(&name);
    }
    count
}

/// Whether a response can be redacted at all, decided before any of it is sent:
/// `Ok` with the decoder its `content-encoding` needs, or the refusal the caller
/// answers (and audits) instead of the response.
fn check_redactable(resp: &Response<Body>, patterns: &Patterns) -> Result<Option<Decoder>, Deny> {
    match patterns.matcher {
        // Hot path: nothing in scope, nothing to decode.
        Matcher::Empty => return Ok(None),
        // SECURITY: without a working matcher nothing can be checked; refuse.
        Matcher::Broken => {
            return Err(Deny::new(
                Code::RedactionUnavailable,
                "keyward could not prepare response redaction",
            ))
        }
        Matcher::Ready(_) => {}
    }
    if !has_body(resp.status()) {
        return Ok(None);
    }
    // SECURITY: bytes we cannot decode cannot be inspected; never pass them on.
    content_decoder(resp.headers()).map_err(|coding| {
        Deny::new(
            Code::UpstreamEncodingUnsupported,
            format!(
                "upstream response uses content-encoding {coding:?}, which keyward cannot inspect"
            ),
        )
    })
}

/// 1xx, 204 and 304 carry no body (and a 304's content-length describes the
/// representation, not this message).
fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Redacts headers now and the body (and trailers) as it streams. `Err` when the
/// response cannot be redacted (an unsupported `content-encoding`, no working
/// matcher): nothing of it may reach the agent, and the caller refuses instead.
pub fn wrap_response(
    resp: Response<Body>,
    patterns: Arc<Patterns>,
    on_redact: Option<OnRedact>,
) -> Result<Response<Body>, Deny> {
    let decoder = check_redactable(&resp, &patterns)?;
    Ok(wrap_checked(resp, decoder, patterns, on_redact))
}

/// [`wrap_response`] after [`check_redactable`] said yes.
fn wrap_checked(
    resp: Response<Body>,
    decoder: Option<Decoder>,
    patterns: Arc<Patterns>,
    on_redact: Option<OnRedact>,
) -> Response<Body> {
    // Hot path: nothing in scope, nothing to do.
    if patterns.is_empty() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let mut notify = Notify(on_redact);
    redact_head(&patterns, &mut parts, &mut notify);
    // Headers were all there was to redact.
    if !has_body(parts.status) {
        return Response::from_parts(parts, body);
    }
    if decoder.is_some() {
        parts.headers.remove(CONTENT_ENCODING);
    }
    // The body may change length (and is decoded): its framing is ours now.
    parts.headers.remove(CONTENT_LENGTH);
    let body = RedactBody {
        inner: body,
        decoder,
        redactor: Redactor::new(patterns),
        notify,
        pending_in: Bytes::new(),
        compressed_seen: false,
        trailers: None,
        phase: Phase::Streaming,
    };
    Response::from_parts(parts, body.boxed())
}

/// Bodies of at most this many bytes, with a declared length and no
/// content-encoding, are read whole by [`read_answer`] and sent with their
/// exact (redacted) length instead of streaming through the chunked redactor.
pub const WHOLE_BODY_MAX: u64 = 64 * 1024;

/// An upstream answer, ready for [`redact_upstream`].
pub enum Answer {
    /// A small body of declared length, read whole (see [`WHOLE_BODY_MAX`]).
    Whole {
        parts: http::response::Parts,
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Everything else: redacted as it streams.
    Streaming(Streamed),
}

/// A response [`read_answer`] found redactable, to be redacted as it streams.
pub struct Streamed {
    resp: Response<Body>,
    decoder: Option<Decoder>,
}

/// Reads a small body of declared length (no content-encoding, at most
/// [`WHOLE_BODY_MAX`]) whole within `deadline`, so it can be redacted at once and
/// sent with its exact new `content-length`: no chunked framing and no streaming
/// state for the common small JSON answer. Other answers are left to stream.
/// `head`: the request was HEAD, so the length describes a body not sent.
///
/// Every reason to withhold the response is found here, before its head can go
/// out, and returned as the `Deny` the caller refuses (and audits) with: no
/// working matcher (`redaction_unavailable`), a `content-encoding` keyward cannot
/// decode (`upstream_encoding_unsupported`), a small body that stalls or is cut
/// off. A streamed body that turns out corrupt or truncated later can no longer
/// change the status: it ends as a body error (see the module docs).
pub async fn read_answer(
    resp: Response<Body>,
    patterns: &Patterns,
    head: bool,
    deadline: std::time::Duration,
) -> Result<Answer, Deny> {
    let decoder = check_redactable(&resp, patterns)?;
    let small = !head
        && matches!(patterns.matcher, Matcher::Ready(_))
        && has_body(resp.status())
        && resp.headers().get(CONTENT_ENCODING).is_none()
        && declared_length(resp.headers()).is_some_and(|n| n <= WHOLE_BODY_MAX);
    if !small {
        // A streamed body is bounded per silence, not as a whole (SSE may run long).
        let resp = resp.map(|b| crate::body::StallLimit::new(b, deadline).boxed());
        return Ok(Answer::Streaming(Streamed { resp, decoder }));
    }
    let (parts, body) = resp.into_parts();
    let collected = match tokio::time::timeout(deadline, body.collect()).await {
        Err(_) => {
            return Err(Deny::new(
                Code::UpstreamTimeout,
                "upstream did not finish its response in time",
            ))
        }
        // SECURITY: a truncated body is never passed off as complete.
        Ok(Err(_)) => {
            return Err(Deny::new(
                Code::UpstreamProtocol,
                "upstream response body ended early or failed",
            ))
        }
        Ok(Ok(c)) => c,
    };
    let trailers = collected.trailers().cloned();
    Ok(Answer::Whole {
        parts,
        data: collected.to_bytes(),
        trailers,
    })
}

/// The agent's response: a whole body redacted at once (exact `content-length`),
/// or a streaming one through [`wrap_response`].
pub fn redact_upstream(
    answer: Answer,
    patterns: Arc<Patterns>,
    on_redact: Option<OnRedact>,
) -> Response<Body> {
    let (mut parts, data, mut trailers) = match answer {
        Answer::Streaming(Streamed { resp, decoder }) => {
            return wrap_checked(resp, decoder, patterns, on_redact)
        }
        Answer::Whole {
            parts,
            data,
            trailers,
        } => (parts, data, trailers),
    };
    let mut notify = Notify(on_redact);
    redact_head(&patterns, &mut parts, &mut notify);
    // SECURITY: the whole body is in hand: every form of every secret goes.
    let data = match patterns.redact_all(&data) {
        Some(clean) => {
            notify.fire();
            Bytes::from(clean)
        }
        None => data,
    };
    if let Some(t) = trailers.as_mut() {
        if redact_headers(&patterns, t) > 0 {
            notify.fire();
        }
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(data.len()));
    let body = match trailers {
        None => super::full(data),
        Some(t) => http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(data)),
            Ok(Frame::trailers(t)),
        ]))
        .boxed(),
    };
    Response::from_parts(parts, body)
}

/// `content-length`, when present and a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Redacts the response head: every header, and the HTTP/1 reason phrase.
fn redact_head(patterns: &Patterns, parts: &mut http::response::Parts, notify: &mut Notify) {
    if redact_headers(patterns, &mut parts.headers) > 0 {
        notify.fire();
    }
    // SECURITY: hyper relays the upstream's HTTP/1 reason phrase verbatim.
    if let Some(reason) = parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        if patterns.contains_secret(reason.as_bytes()) {
            parts.extensions.remove::<hyper::ext::ReasonPhrase>();
            notify.fire();
        }
    }
}

struct Notify(Option<OnRedact>);

impl Notify {
    fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The decoder for the response's `content-encoding`; `Err(coding)` when keyward
/// cannot decode it.
fn content_decoder(headers: &HeaderMap) -> Result<Option<Decoder>, String> {
    let mut codings = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Err(String::from_utf8_lossy(value.as_bytes()).into_owned());
        };
        codings.extend(
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    match codings.as_slice() {
        [] => Ok(None),
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Ok(Some(Decoder::Gzip(Box::new(
                flate2::write::MultiGzDecoder::new(Vec::new()),
            )))),
            "deflate" => Ok(Some(Decoder::Deflate(DeflateState::Probe(Vec::new())))),
            "br" => Ok(Some(Decoder::Brotli(Box::new(BrotliDecoder::new())))),
            other => Err(other.to_string()),
        },
        // Stacked codings: rare enough to refuse rather than to chain decoders.
        many => Err(many.join(", ")),
    }
}

/// Errors the redacted body can end with (besides the upstream's own).
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("upstream response body is corrupt ({0}) and was cut off")]
    Corrupt(String),
    #[error("upstream response body ended before its compressed stream was complete")]
    Truncated,
}

enum DeflateState {
    /// Waiting for two bytes to tell zlib-wrapped from raw deflate.
    Probe(Vec<u8>),
    Running {
        inflate: flate2::Decompress,
        ended: bool,
        pending: bool,
    },
}

type BrotliState = brotli_decompressor::BrotliState<
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
    brotli_decompressor::StandardAlloc,
>;

struct BrotliDecoder {
    state: BrotliState,
    ended: bool,
    pending: bool,
}

impl BrotliDecoder {
    fn new() -> BrotliDecoder {
        use brotli_decompressor::StandardAlloc;
        BrotliDecoder {
            state: BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            ended: false,
            pending: false,
        }
    }

    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<usize, RedactError> {
        use brotli_decompressor::{BrotliDecompressStream, BrotliResult};
        let mut available_in = input.len();
        let mut input_offset = 0;
        let mut total_out = 0;
        loop {
            if self.ended {
                // SECURITY: data after the end of the stream is not ours to judge.
                if available_in > 0 {
                    return Err(RedactError::Corrupt(
                        "data after end of brotli stream".into(),
                    ));
                }
                self.pending = false;
                return Ok(input_offset);
            }
            let start = out.len();
            out.resize(start + DECODE_OUTPUT_STEP, 0);
            let mut available_out = DECODE_OUTPUT_STEP;
            let mut output_offset = start;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                &mut out[..],
                &mut total_out,
                &mut self.state,
            );
            out.truncate(output_offset);
            match result {
                BrotliResult::ResultSuccess => self.ended = true,
                BrotliResult::NeedsMoreInput => {
                    self.pending = false;
                    return Ok(input_offset);
                }
                BrotliResult::NeedsMoreOutput => {
                    self.pending = true;
                    if out.len() >= budget {
                        return Ok(input_offset);
                    }
                }
                BrotliResult::ResultFailure => {
                    return Err(RedactError::Corrupt("invalid brotli data".into()))
                }
            }
        }
    }
}

enum Decoder {
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Deflate(DeflateState),
    Brotli(Box<BrotliDecoder>),
}

fn corrupt(e: impl std::fmt::Display) -> RedactError {
    RedactError::Corrupt(e.to_string())
}

impl Decoder {
    /// Whether decoded output is waiting inside the decoder.
    fn has_pending(&self) -> bool {
        match self {
            Decoder::Gzip(_) => false,
            Decoder::Deflate(DeflateState::Running { pending, .. }) => *pending,
            Decoder::Deflate(DeflateState::Probe(_)) => false,
            Decoder::Brotli(b) => b.pending,
        }
    }

    /// Decodes a prefix of `input` into `out` (stopping near `budget` output bytes);
    /// returns how much input was consumed.
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        budget: usize,
    ) -> Result<usize, RedactError> {
        match self {
            Decoder::Gzip(gz) => {
                let mut consumed = 0;
                while consumed < input.len() && out.len() < budget {
                    let end = input.len().min(consumed + DECODE_INPUT_SLICE);
                    gz.write_all(&input[consumed..end]).map_err(corrupt)?;
                    gz.flush().map_err(corrupt)?;
                    out.append(gz.get_mut());
                    consumed = end;
                }
                Ok(consumed)
            }
            Decoder::Deflate(state) => {
                if let DeflateState::Probe(head) = state {
                    let take = input.len().min(2usize.saturating_sub(head.len()));
                    head.extend_from_slice(&input[..take]);
                    if head.len() < 2 {
                        return Ok(take);
                    }
                    let head = std::mem::take(head);
                    let mut inflate = flate2::Decompress::new(looks_like_zlib(&head));
                    let mut sink = Vec::new();
                    let (used, ended, pending) =
                        inflate_step(&mut inflate, &head, &mut sink, usize::MAX)?;
                    if used < head.len() || (ended && take < input.len()) {
                        return Err(RedactError::Corrupt(
                            "data after end of deflate stream".into(),
                        ));
                    }
                    out.append(&mut sink);
                    *state = DeflateState::Running {
                        inflate,
                        ended,
                        pending,
                    };
                    let rest = self.decode(&input[take..], out, budget)?;
                    return Ok(take + rest);
                }
                let DeflateState::Running {
                    inflate,
                    ended,
                    pending,
                } = state
                else {
                    return Ok(0);
                };
                if *ended {
                    if input.is_empty() {
                        return Ok(0);
                    }
                    return Err(RedactError::Corrupt(
                        "data after end of deflate stream".into(),
                    ));
                }
                let (used, now_ended, now_pending) = inflate_step(inflate, input, out, budget)?;
                *ended = now_ended;
                *pending = now_pending;
                if *ended && used < input.len() {
                    return Err(RedactError::Corrupt(
                        "data after end of deflate stream".into(),
                    ));
                }
                Ok(used)
            }
            Decoder::Brotli(b) => b.decode(input, out, budget),
        }
    }

    /// End of input: drains the decoder and checks the stream was complete.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RedactError> {
        match self {
            Decoder::Gzip(gz) => {
                // SECURITY: try_finish verifies the gzip trailer (CRC and length),
                // so a cut-off body is an error, not a short success.
                gz.try_finish().map_err(|_| RedactError::Truncated)?;
                out.append(gz.get_mut());
                Ok(())
            }
            Decoder::Deflate(DeflateState::Probe(head)) => {
                if head.is_empty() {
                    // An empty body with a content-encoding: nothing to decode.
                    return Ok(());
                }
                Err(RedactError::Truncated)
            }
            Decoder::Deflate(DeflateState::Running { .. }) | Decoder::Brotli(_) => {
                while self.has_pending() {
                    self.decode(&[], out, usize::MAX)?;
                }
                let ended = match self {
                    Decoder::Deflate(DeflateState::Running { ended, .. }) => *ended,
                    Decoder::Brotli(b) => b.ended,
                    _ => false,
                };
                // SECURITY: a stream that never reached its end marker was truncated.
                if ended {
                    Ok(())
                } else {
                    Err(RedactError::Truncated)
                }
            }
        }
    }
}

/// RFC 1950 header check (as browsers do to accept raw deflate under "deflate").
fn looks_like_zlib(head: &[u8]) -> bool {
    const ZLIB_METHOD_DEFLATE: u8 = 8;
    const ZLIB_MAX_WINDOW_INFO: u8 = 7;
    const ZLIB_CHECK_MODULUS: u16 = 31;
    match head {
        [cmf, flg, ..] => {
            cmf & 0x0f == ZLIB_METHOD_DEFLATE
                && cmf >> 4 <= ZLIB_MAX_WINDOW_INFO
                && (u16::from(*cmf) << 8 | u16::from(*flg)) % ZLIB_CHECK_MODULUS == 0
        }
        _ => false,
    }
}

/// Runs inflate over `input` until it is consumed, the stream ends, or `out` grows
/// past `budget`. Returns (consumed, stream ended, output pending inside).
fn inflate_step(
    inflate: &mut flate2::Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    budget: usize,
) -> Result<(usize, bool, bool), RedactError> {
    let mut consumed = 0;
    loop {
        out.reserve(DECODE_OUTPUT_STEP);
        let spare = out.capacity() - out.len();
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress_vec(&input[consumed..], out, flate2::FlushDecompress::None)
            .map_err(corrupt)?;
        let used = (inflate.total_in() - in_before) as usize;
        let produced = (inflate.total_out() - out_before) as usize;
        consumed += used;
        if status == flate2::Status::StreamEnd {
            return Ok((consumed, true, false));
        }
        let filled = produced == spare;
        if used == 0 && produced == 0 {
            return Ok((consumed, false, false));
        }
        if out.len() >= budget {
            return Ok((consumed, false, filled || consumed < input.len()));
        }
        if consumed == input.len() && !filled {
            return Ok((consumed, false, false));
        }
    }
}

#[derive(PartialEq)]
enum Phase {
    Streaming,
    /// The upstream body ended cleanly; trailers (if any) remain to be sent.
    Ended,
    Done,
}

struct RedactBody {
    inner: Body,
    decoder: Option<Decoder>,
    redactor: Redactor,
    notify: Notify,
    /// Compressed bytes not yet decoded (decoding is bounded per frame).
    pending_in: Bytes,
    /// Whether any compressed byte arrived (an empty body needs no end marker, as
    /// in a HEAD response that names its encoding).
    compressed_seen: bool,
    trailers: Option<HeaderMap>,
    phase: Phase,
}

impl RedactBody {
    fn note_redactions(&mut self, before: u64) {
        if self.redactor.redactions() > before {
            self.notify.fire();
        }
    }

    /// Redacts a piece of (decoded) body.
    fn redact(&mut self, data: Bytes) -> Bytes {
        let before = self.redactor.redactions();
        let out = self.redactor.push(data);
        self.note_redactions(before);
        out
    }

    /// Decodes and redacts one bounded step of `pending_in`.
    fn decode_step(&mut self) -> Result<Bytes, RedactError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(Bytes::new());
        };
        let mut decoded = Vec::new();
        let used = decoder.decode(&self.pending_in, &mut decoded, DECODE_OUTPUT_BUDGET)?;
        // SECURITY: a decoder that neither consumes nor produces would spin forever;
        // treat it as corrupt input rather than hang the response.
        if used == 0 && decoded.is_empty() && !self.pending_in.is_empty() {
            return Err(RedactError::Corrupt("decoder made no progress".into()));
        }
        self.pending_in.advance(used);
        Ok(self.redact(Bytes::from(decoded)))
    }

    /// The upstream body is complete: drain the decoder, flush held bytes.
    fn finish(&mut self) -> Result<Bytes, RedactError> {
        let mut tail = Vec::new();
        if let Some(decoder) = self.decoder.as_mut().filter(|_| self.compressed_seen) {
            decoder.finish(&mut tail)?;
        }
        let mut out = self.redact(Bytes::from(tail)).to_vec();
        let before = self.redactor.redactions();
        out.extend_from_slice(&self.redactor.finish());
        self.note_redactions(before);
        Ok(Bytes::from(out))
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.phase = Phase::Done;
        self.pending_in = Bytes::new();
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for RedactBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Done => return Poll::Ready(None),
                Phase::Ended => {
                    this.phase = Phase::Done;
                    return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                Phase::Streaming => {}
            }
            let decoding_pending = this.decoder.as_ref().is_some_and(|d| d.has_pending());
            if !this.pending_in.is_empty() || decoding_pending {
                match this.decode_step() {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Err(e) => return this.fail(e.into()),
                }
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                // SECURITY: an upstream error ends the body as an error; the bytes
                // held back (a possible secret prefix) are dropped, never flushed.
                Poll::Ready(Some(Err(e))) => return this.fail(e),
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(None) => None,
            };
            let frame = match frame {
                Some(frame) => frame,
                None => {
                    return match this.finish() {
                        Ok(tail) => {
                            this.phase = Phase::Ended;
                            if tail.is_empty() {
                                continue;
                            }
                            Poll::Ready(Some(Ok(Frame::data(tail))))
                        }
                        Err(e) => this.fail(e.into()),
                    };
                }
            };
            let frame = match frame.into_data() {
                Ok(data) if this.decoder.is_some() => {
                    this.compressed_seen |= !data.is_empty();
                    this.pending_in = data;
                    continue;
                }
                Ok(data) => {
                    let out = this.redact(data);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => frame,
            };
            if let Ok(mut trailers) = frame.into_trailers() {
                if redact_headers(&this.redactor.patterns, &mut trailers) > 0 {
                    this.notify.fire();
                }
                this.trailers = Some(trailers);
                // Trailers end the body: settle everything before sending them.
                match this.finish() {
                    Ok(tail) => {
                        this.phase = Phase::Ended;
                        if !tail.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(tail))));
                        }
                    }
                    Err(e) => return this.fail(e.into()),
                }
            }
            // Unknown frame kinds are dropped.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    const SECRET: &[u8] = b"sk-proj-Ab1+/Cd2?Ef3_gh4~XYZ";

    fn patterns(secret: &[u8]) -> Arc<Patterns> {
        Arc::new(Patterns::new(&[secret]))
    }

    /// Streams `data` through a fresh redactor split at `cuts`.
    fn stream(p: &Arc<Patterns>, data: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = Redactor::new(p.clone());
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let c = c.clamp(at, data.len());
            out.extend_from_slice(&r.push(Bytes::copy_from_slice(&data[at..c])));
            at = c;
        }
        out.extend_from_slice(&r.finish());
        out
    }

    fn assert_redacted(p: &Arc<Patterns>, echoed: &[u8]) {
        let doc = [b"before <".as_slice(), echoed, b"> after".as_slice()].concat();
        let want = b"before <[REDACTED]> after".to_vec();
        assert_eq!(
            p.redact_all(&doc).as_deref(),
            Some(&want[..]),
            "{:?}",
            String::from_utf8_lossy(echoed)
        );
        for cut in 0..=doc.len() {
            assert_eq!(
                stream(p, &doc, &[cut]),
                want,
                "cut {cut} in {:?}",
                String::from_utf8_lossy(echoed)
            );
        }
    }

    /// `SECRET` among enough other secrets that the set is searched by the NFA.
    fn large_set() -> Arc<Patterns> {
        let others: Vec<Vec<u8>> = (0..8)
            .map(|i| format!("other-secret-{i}-Qw3rTy9zXc").into_bytes())
            .collect();
        let mut all: Vec<&[u8]> = others.iter().map(Vec::as_slice).collect();
        all.push(SECRET);
        Arc::new(Patterns::new(&all))
    }

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
    fn raw_secret_is_redacted() {
        assert_redacted(&patterns(SECRET), SECRET);
    }

    #[test]
    fn hex_lower_upper_and_mixed_are_redacted() {
        let p = patterns(SECRET);
        let lower = hex::encode(SECRET);
        assert_redacted(&p, lower.as_bytes());
        assert_redacted(&p, hex::encode_upper(SECRET).as_bytes());
        let mixed: String = lower
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 3 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_redacted(&p, mixed.as_bytes());
    }

    #[test]
    fn base64_whole_value_in_every_alphabet_and_padding_is_redacted() {
        let p = patterns(SECRET);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(SECRET);
            let out = p.redact_all(enc.as_bytes()).expect("matched");
            assert!(!p.contains_secret(&out));
            // Only the (at most 2) boundary characters that mix in padding bits remain.
            assert!(
                out.len() <= REDACTED.len() + 3,
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn base64_at_every_alignment_inside_a_larger_blob_is_redacted() {
        let p = patterns(SECRET);
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let blob = [
                    vec![0xA5u8; prefix_len],
                    SECRET.to_vec(),
                    vec![0x5Au8; suffix_len],
                ]
                .concat();
                for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                    let enc = engine.encode(&blob);
                    let out = p.redact_all(enc.as_bytes()).expect("matched");
                    assert!(out.windows(REDACTED.len()).any(|w| w == REDACTED));
                    // What is left encodes the prefix, the suffix, at most one mixed
                    // character at each edge, and padding.
                    assert!(!p.contains_secret(&out));
                    let left = String::from_utf8_lossy(&out).replace("[REDACTED]", "");
                    let bound = (prefix_len * 4).div_ceil(3) + (suffix_len * 4).div_ceil(3) + 2 + 2;
                    assert!(
                        left.len() <= bound,
                        "prefix {prefix_len} suffix {suffix_len}: {left}"
                    );
                }
            }
        }
    }

    #[test]
    fn url_encoded_forms_are_redacted() {
        let p = patterns(SECRET);
        let upper: String = SECRET
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_redacted(&p, upper.as_bytes());
        assert_redacted(&p, upper.to_lowercase().as_bytes());
        let lower_hex: String = SECRET
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
        assert_redacted(&p, lower_hex.as_bytes());
        let every: String = SECRET.iter().map(|b| format!("%{b:02X}")).collect();
        assert_redacted(&p, every.as_bytes());
        let component = percent_encoding::utf8_percent_encode(
            std::str::from_utf8(SECRET).unwrap(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        assert_redacted(&p, component.as_bytes());
    }

    #[test]
    fn form_encoding_with_space_as_plus_is_redacted() {
        let p = patterns(b"pass word&more=1");
        assert_redacted(&p, b"pass+word%26more%3D1");
    }

    #[test]
    fn json_escaped_forms_are_redacted() {
        let secret = "k/\"ey<\\>&\u{1}é\tz";
        let p = patterns(secret.as_bytes());
        let serde = serde_json::to_string(secret).unwrap();
        assert_redacted(&p, serde.trim_matches('"').as_bytes());
        assert_redacted(&p, br#"k\/\"ey<\\>&\u0001\u00e9\tz"#);
        assert_redacted(&p, br#"k/\"ey\u003c\\\u003e\u0026\u0001\u00E9\tz"#);
        assert_redacted(
            &p,
            br#"k\/\u0022ey\u003c\u005c\u003e\u0026\u0001\u00e9\u0009z"#,
        );
    }

    #[test]
    fn json_with_every_character_unicode_escaped_is_redacted() {
        let p = patterns("sk-live-é9".as_bytes());
        assert_redacted(
            &p,
            br"\u0073\u006b\u002d\u006c\u0069\u0076\u0065\u002d\u00e9\u0039",
        );
        assert_redacted(
            &p,
            br"\u0073\u006B\u002D\u006C\u0069\u0076\u0065\u002D\u00E9\u0039",
        );
    }

    #[test]
    fn json_slash_escape_of_a_url_like_key_is_redacted() {
        let p = patterns(b"https://user:tok3n@example.com/x");
        assert_redacted(&p, br"https:\/\/user:tok3n@example.com\/x");
    }

    #[test]
    fn several_secrets_and_adjacent_occurrences() {
        let p = Arc::new(Patterns::new(&[b"alpha-secret-1", b"beta-secret-22"]));
        let doc = b"alpha-secret-1beta-secret-22 x alpha-secret-1";
        let want = b"[REDACTED][REDACTED] x [REDACTED]".to_vec();
        for a in 0..doc.len() {
            for b in a..doc.len() {
                assert_eq!(stream(&p, doc, &[a, b]), want);
            }
        }
    }

    #[test]
    fn chunk_with_no_possible_partial_match_passes_at_once_without_copy() {
        let p = patterns(SECRET);
        let mut r = Redactor::new(p);
        let chunk = Bytes::from_static(b"data: {\"delta\":\"hello world\"}\n\n");
        let out = r.push(chunk.clone());
        assert_eq!(out, chunk);
        assert_eq!(
            out.as_ptr(),
            chunk.as_ptr(),
            "unmatched chunk must be passed through zero-copy"
        );
        assert_eq!(r.held_len(), 0);
    }

    #[test]
    fn only_the_partial_match_suffix_is_held() {
        let p = patterns(SECRET);
        let mut r = Redactor::new(p);
        let out = r.push(Bytes::from_static(b"hello sk-pr"));
        assert_eq!(&out[..], b"hello ");
        assert_eq!(r.held_len(), 5);
        let out = r.push(Bytes::from_static(b"ivate"));
        assert_eq!(
            &out[..],
            b"sk-private",
            "a prefix that stops matching is released"
        );
        assert_eq!(r.held_len(), 0);
        assert_eq!(&r.finish()[..], b"");
    }

    #[test]
    fn held_prefix_is_flushed_at_end() {
        let p = patterns(SECRET);
        assert_eq!(
            stream(&p, b"the end: sk-proj-Ab", &[]),
            b"the end: sk-proj-Ab".to_vec()
        );
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

    #[test]
    fn headers_values_are_redacted_and_names_carrying_secrets_dropped() {
        let p = patterns(b"tok_1234567890abcdef");
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("https://x.test/cb?key=tok_1234567890abcdef&a=1"),
        );
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("k=dG9rXzEyMzQ1Njc4OTBhYmNkZWY"),
        );
        h.insert("tok_1234567890abcdef", HeaderValue::from_static("x"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(redact_headers(&p, &mut h), 3);
        assert_eq!(h["location"], "https://x.test/cb?key=[REDACTED]&a=1");
        assert!(h["location"].is_sensitive());
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies[0], "a=1");
        assert!(cookies[1].to_str().unwrap().contains("[REDACTED]"));
        assert!(!h.contains_key("tok_1234567890abcdef"));
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn prepare_request_asks_for_identity() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, zstd"));
        prepare_request(&mut h);
        assert_eq!(h[ACCEPT_ENCODING], "identity");
    }

    /// No working matcher: the response is refused up front (the pipeline audits
    /// the refusal), whatever its status or size.
    #[tokio::test]
    async fn broken_matcher_refuses_before_anything_is_sent() {
        let broken = Patterns {
            matcher: Matcher::Broken,
        };
        for (status, len) in [(200, Some("2")), (200, None), (204, None), (101, None)] {
            let mut resp = Response::new(super::super::full(Bytes::from_static(b"ok")));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(len) = len {
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from_static(len));
            }
            let deny = read_answer(resp, &broken, false, std::time::Duration::from_secs(5))
                .await
                .err()
                .expect("a refusal");
            assert_eq!(deny.code.as_str(), "redaction_unavailable", "{status}");
            assert_eq!(deny.code.status(), StatusCode::BAD_GATEWAY);
        }
    }

    #[test]
    fn zlib_header_detection() {
        assert!(looks_like_zlib(&[0x78, 0x9c]));
        assert!(looks_like_zlib(&[0x78, 0x01]));
        assert!(!looks_like_zlib(&[0x78, 0x00]));
        assert!(!looks_like_zlib(&[0xcb, 0x48]));
    }
}
