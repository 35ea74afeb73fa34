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

    #[test]
    fn held_prefix_is_flushed_at_end() {
        let p = patterns(SECRET);
        assert_eq!(
            stream(&p, b"the end: sk-proj-Ab", &[]),
            b"the end: sk-proj-Ab".to_vec()
        );
    }
}
