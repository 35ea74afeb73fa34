//! Streaming redaction: [`Redactor`] redacts body bytes in any chunking, holding
//! back only a suffix that may still be the start of a secret; the response body
//! built on it decodes (if needed), redacts, forwards trailers redacted, and ends
//! as an error (held bytes dropped) when the upstream body fails or is truncated.

use super::decode::{DecodeError, Decoder, DECODE_OUTPUT_BUDGET};
use super::head::{has_body, redact_head, redact_headers};
use super::matcher::{Matcher, Patterns};
use crate::body::{Body, BoxError};
use bytes::{Buf, Bytes};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Called at most once, when the first redaction in a response happens.
pub type OnRedact = Box<dyn FnOnce() + Send + Sync>;

/// An [`OnRedact`] that fires at most once, however many redactions follow.
pub(super) struct Notify(pub(super) Option<OnRedact>);

impl Notify {
    pub(super) fn fire(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A chunk longer than this many times the longest pattern, arriving while bytes
/// are held, is searched in two pieces (see [`Redactor::push_split`]).
const SEAM_SPLIT_FACTOR: usize = 4;

/// Streaming redactor: feed body bytes in any chunking, get redacted bytes out.
pub struct Redactor {
    patterns: Arc<Patterns>,
    held: Vec<u8>,
    scratch: Vec<u8>,
    /// The prefilter's lowercased block (`prefilter.rs`), kept between chunks.
    lower: Vec<u8>,
    redactions: u64,
}

impl Redactor {
    pub fn new(patterns: Arc<Patterns>) -> Redactor {
        Redactor {
            patterns,
            held: Vec::new(),
            scratch: Vec::new(),
            lower: Vec::new(),
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
        let (first, rest) = self.push_split(chunk);
        if first.is_empty() {
            return rest;
        }
        if rest.is_empty() {
            return first;
        }
        let mut out = Vec::with_capacity(first.len() + rest.len());
        out.extend_from_slice(&first);
        out.extend_from_slice(&rest);
        Bytes::from(out)
    }

    /// Like [`Redactor::push`], the output in two pieces (emit `first`, then
    /// `rest`), so that a large chunk arriving while a possible partial match is
    /// held is not copied: only the seam (held bytes and the chunk's first
    /// `max_pattern_len` bytes) is, and the rest of the chunk is searched, and
    /// when nothing in it matches emitted, as a slice of the chunk itself.
    ///
    /// Same output as one search over held ‖ chunk: it is the search of the chunk
    /// arriving in two pieces (any chunking gives the same output), and the held
    /// bytes after the seam piece are the chunk's own bytes just before the rest.
    pub fn push_split(&mut self, chunk: Bytes) -> (Bytes, Bytes) {
        let search = match &self.patterns.matcher {
            Matcher::Empty => return (Bytes::new(), chunk),
            Matcher::Ready(search) => search,
            // SECURITY: no automaton, no way to tell; emit nothing (callers refuse
            // such responses up front, this is belt and braces).
            Matcher::Broken => return (Bytes::new(), Bytes::new()),
        };
        if self.held.is_empty() {
            return (Bytes::new(), self.scan_unheld(chunk));
        }
        let seam_len = self.patterns.max_pattern_len();
        let h = self.held.len();
        if chunk.len() <= SEAM_SPLIT_FACTOR * seam_len {
            return (self.scan_held(&chunk), Bytes::new());
        }
        let mut out = None;
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.held);
        self.scratch.extend_from_slice(&chunk[..seam_len]);
        let (settled, n) = search.scan(&self.scratch, false, &mut out, &mut self.lower);
        if settled < h {
            // Cannot happen (the seam's last `max_pattern_len - 1` bytes are the
            // most it holds back, so it settles past the held bytes); keep the
            // one-search path rather than rely on it.
            return (self.scan_held(&chunk), Bytes::new());
        }
        self.redactions += n as u64;
        self.held.clear();
        let first = match out {
            Some(v) => Bytes::from(v),
            None => Bytes::copy_from_slice(&self.scratch[..settled]),
        };
        // What is held after the seam is chunk[settled - h..seam_len]: search it
        // with the rest of the chunk, in place.
        let rest = self.scan_unheld(chunk.slice(settled - h..));
        (first, rest)
    }

    /// The search with nothing held: the chunk itself is the buffer, and an
    /// unmatched prefix is emitted as a zero-copy slice.
    fn scan_unheld(&mut self, chunk: Bytes) -> Bytes {
        let Matcher::Ready(search) = &self.patterns.matcher else {
            return Bytes::new();
        };
        let mut out = None;
        let (settled, n) = search.scan(&chunk, false, &mut out, &mut self.lower);
        self.redactions += n as u64;
        self.held.extend_from_slice(&chunk[settled..]);
        match out {
            Some(v) => Bytes::from(v),
            None => chunk.slice(..settled),
        }
    }

    /// The search over held ‖ chunk, copied into one buffer (small chunks).
    fn scan_held(&mut self, chunk: &[u8]) -> Bytes {
        let Matcher::Ready(search) = &self.patterns.matcher else {
            return Bytes::new();
        };
        let mut out = None;
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.held);
        self.scratch.extend_from_slice(chunk);
        let (settled, n) = search.scan(&self.scratch, false, &mut out, &mut self.lower);
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
                let (_, n) = search.scan(&held, true, &mut out, &mut self.lower);
                self.redactions += n as u64;
                Bytes::from(out.unwrap_or(held))
            }
        }
    }
}

/// Redacts the head now and the body (and trailers) as it streams, decoding with
/// `decoder` first. The caller has checked the response can be redacted
/// (`answer::check_redactable`). A `bodiless` answer (HEAD request, 1xx/204/304)
/// has its headers redacted and its framing kept: its `content-length` is the
/// representation's (a HEAD client such as boto3 reads it), not a body's.
pub(super) fn wrap(
    resp: Response<Body>,
    decoder: Option<Decoder>,
    bodiless: bool,
    patterns: Arc<Patterns>,
    on_redact: Option<OnRedact>,
) -> Response<Body> {
    // Hot path: nothing in scope, nothing to do.
    if patterns.is_empty() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let mut notify = Notify(on_redact);
    if redact_head(&patterns, &mut parts) {
        notify.fire();
    }
    // Headers were all there was to redact.
    if bodiless || !has_body(parts.status) {
        // SECURITY: a bodiless answer is not scanned, so no byte of one passes
        // (hyper yields none; this keeps it so whatever the upstream sent).
        drop(body);
        return Response::from_parts(parts, crate::body::empty());
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
        queued: Bytes::new(),
    };
    Response::from_parts(parts, body.boxed())
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
    /// Redacted bytes to send before anything else (the second piece of a
    /// [`Redactor::push_split`]).
    queued: Bytes,
}

impl RedactBody {
    fn note_redactions(&mut self, before: u64) {
        if self.redactor.redactions() > before {
            self.notify.fire();
        }
    }

    /// Redacts a piece of (decoded) body: returns what to send now; a second
    /// piece, if any, is queued to go out next (before anything else).
    fn redact(&mut self, data: Bytes) -> Bytes {
        let before = self.redactor.redactions();
        let (first, rest) = self.redactor.push_split(data);
        self.note_redactions(before);
        if first.is_empty() {
            return rest;
        }
        self.queued = rest;
        first
    }

    /// Decodes and redacts one bounded step of `pending_in`.
    fn decode_step(&mut self) -> Result<Bytes, DecodeError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(Bytes::new());
        };
        let mut decoded = Vec::new();
        let used = decoder.decode(&self.pending_in, &mut decoded, DECODE_OUTPUT_BUDGET)?;
        // SECURITY: a decoder that neither consumes nor produces would spin forever;
        // treat it as corrupt input rather than hang the response.
        if used == 0 && decoded.is_empty() && !self.pending_in.is_empty() {
            return Err(DecodeError::Corrupt("decoder made no progress".into()));
        }
        self.pending_in.advance(used);
        Ok(self.redact(Bytes::from(decoded)))
    }

    /// The upstream body is complete: drain the decoder, flush held bytes.
    fn finish(&mut self) -> Result<Bytes, DecodeError> {
        let mut tail = Vec::new();
        if let Some(decoder) = self.decoder.as_mut().filter(|_| self.compressed_seen) {
            decoder.finish(&mut tail)?;
        }
        // One piece (`push`, not `redact`): nothing may be queued behind the end.
        let before = self.redactor.redactions();
        let mut out = self.redactor.push(Bytes::from(tail)).to_vec();
        out.extend_from_slice(&self.redactor.finish());
        self.note_redactions(before);
        Ok(Bytes::from(out))
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.phase = Phase::Done;
        self.pending_in = Bytes::new();
        self.queued = Bytes::new();
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
            if !this.queued.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut this.queued)))));
            }
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
    use super::super::test_util::{patterns, stream, SECRET};
    use super::*;

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

    /// A document long enough that a chunk arriving while a partial match is
    /// held takes the two-piece path: secrets and near-misses on every side of
    /// every seam; any two cuts give the one-search output.
    #[test]
    fn large_chunks_after_a_held_prefix_redact_as_one_search() {
        use super::super::forms::encoded_forms;
        for p in [patterns(SECRET), super::super::test_util::large_set()] {
            let forms = encoded_forms(SECRET);
            let mut doc = Vec::new();
            for (i, form) in forms.iter().enumerate() {
                doc.extend_from_slice(b"filler text, ");
                doc.extend_from_slice(&SECRET[..(i % SECRET.len()) + 1]);
                doc.extend_from_slice(b" then ");
                doc.extend_from_slice(form);
                doc.extend_from_slice(&form[..form.len() / 2]);
            }
            doc.extend_from_slice(SECRET);
            doc.extend_from_slice(&SECRET[..5]);
            let want = p.redact_all(&doc).expect("the document holds secrets");
            let max = p.max_pattern_len();
            for a in 0..doc.len() {
                for b in [a + 1, a + max, a + 4 * max + 1, a + 5 * max + 3] {
                    assert_eq!(stream(&p, &doc, &[a, b]), want, "cuts {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn the_rest_of_a_large_chunk_after_a_held_prefix_is_not_copied() {
        let p = patterns(SECRET);
        let mut r = Redactor::new(p.clone());
        assert_eq!(&r.push(Bytes::from_static(b"x sk-pr"))[..], b"x ");
        assert!(r.held_len() > 0);
        let chunk = Bytes::from([b"oj".as_slice(), &[b'.'; 4096]].concat());
        let (first, rest) = r.push_split(chunk.clone());
        assert!(first.starts_with(b"sk-proj"));
        let rest_at = rest.as_ptr() as usize - chunk.as_ptr() as usize;
        assert!(rest_at < chunk.len(), "rest is a slice of the chunk");
        assert_eq!(
            [&first[..], &rest[..]].concat(),
            [b"sk-pr".as_slice(), &chunk[..]].concat()
        );
        assert_eq!(r.held_len(), 0);
    }

    #[test]
    fn held_prefix_is_flushed_at_end() {
        let p = patterns(SECRET);
        assert_eq!(
            stream(&p, b"the end: sk-proj-Ab", &[]),
            b"the end: sk-proj-Ab".to_vec()
        );
    }
}
