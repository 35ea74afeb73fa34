//! Streaming redaction of echoed secrets in upstream responses (SPEC §6.6).
//!
//! An upstream can echo the credential keyward injected (error pages that quote the
//! `Authorization` header, debug endpoints, a `Location` with `?key=`…). The agent
//! must never learn the real value, so every response toward a request that carried
//! a secret passes through [`read_answer`] then [`redact_upstream`]:
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
//!   redacted like headers. A bodiless answer (the request was HEAD, or status
//!   1xx/204/304) has only its headers redacted: its framing (`content-length`,
//!   `content-encoding`) describes the representation and is passed on as is.
//! * **Compression.** A `content-encoding` of `gzip`, `deflate` or `br` is decoded
//!   as it streams, redacted, and forwarded **decoded**, with `content-encoding` and
//!   `content-length` removed. Re-compressing would cost CPU on the hot path and add
//!   compressor buffering to SSE; forwarding the compressed bytes would mean not
//!   redacting. Any other coding (or a stack of several) is refused with a 502 rather
//!   than passed through unredacted (fail closed): [`read_answer`] returns the
//!   [`RedactError`], before anything of the response is sent, and the pipeline
//!   refuses with it like any refusal (one audit line; the proxy maps each
//!   variant to its `x-keyward-error` code in one place).
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
//! large ones: `matcher::DFA_MAX_FORMS`). A set of up to 64 distinct form
//! prefixes (about 7 secrets) also gets a SIMD prefilter (`prefilter`): Teddy over
//! a lowercased copy of each 16 KiB block finds where a form may start, and the
//! automaton confirms only there (same output as the automaton alone; ~2
//! instructions per byte instead of ~18 on a body without secrets).
//!
//! **Which secrets.** Every credential the agent could be granted (SPEC §5: each
//! name in its chain ∩ agent lists, resolved through the same tiers), of every
//! kind (an `oauth2` record's client secret and refresh token, an `aws` record's
//! secret key and session token), plus what exists only for this request (an
//! OAuth2 access token). [`ScopeCache`] resolves that set once per agent and vault
//! snapshot (after a vault change, only the names whose records changed); [`PatternCache`] keeps one automaton per distinct set of values
//! (shared between agents). A vault change never builds a whole automaton on a
//! request's path: the changed set is searched with the agent's previous one
//! plus a small automaton of only the new values until the full rebuild, run on
//! a builder thread, is swapped in (`sets`; a value rotated away stays redacted
//! until then: over-redaction for a moment, never under).
//!
//! **Files.** `forms` (the spellings of a secret), `matcher` (the automaton and
//! the scan, also over several automata as one), `prefilter` (the SIMD candidate
//! search), `sets` ([`PatternCache`], the
//! interim sets and the builder thread), `cache` ([`ScopeCache`]), `stream` ([`Redactor`]
//! and the streaming body), `decode` (gzip/deflate/br), `head` (headers, trailers,
//! reason phrase), `answer` (the entry points), `error` ([`RedactError`]). This
//! module sits below `proxy`: it knows bodies (`crate::body`), secrets and the
//! resolved principal, never the proxy that calls it.

mod answer;
mod cache;
mod decode;
mod error;
mod forms;
mod head;
mod matcher;
mod prefilter;
mod sets;
mod stream;
#[cfg(test)]
mod test_util;

pub use answer::{read_answer, redact_upstream, Answer, Streamed, WHOLE_BODY_MAX};
pub use cache::{InScope, Resolved, ScopeCache, SCOPE_CACHE_SIZE};
pub use decode::{DecodeError, DECODE_OUTPUT_BUDGET};
pub use error::RedactError;
pub use forms::{encoded_forms, MIN_ENCODED_PATTERN_LEN};
pub use head::{prepare_request, redact_headers};
pub use matcher::{Patterns, REDACTED};
pub use sets::{
    value_id, Fingerprint, PatternCache, ValueId, ValueSet, DELTA_MAX_VALUES, MAX_DELTAS,
    PATTERN_CACHE_BYTES, PATTERN_CACHE_SIZE,
};
pub use stream::{OnRedact, Redactor};
