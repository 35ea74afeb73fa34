//! The production entry points for an upstream answer: [`read_answer`] decides,
//! before any of the response is sent, whether it can be redacted at all and
//! reads a small one of declared length whole; [`redact_upstream`] then redacts
//! it at once (exact `content-length`) or wraps it to redact as it streams.

use super::decode::{content_decoder, Decoder};
use super::error::RedactError;
use super::head::{has_body, redact_head, redact_headers};
use super::matcher::{Matcher, Patterns};
use super::stream::{self, Notify, OnRedact};
use crate::body::{full, Body, BoxError, StallLimit};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use std::sync::Arc;

/// Whether a response can be redacted at all, decided before any of it is sent:
/// `Ok` with the decoder its `content-encoding` needs, or why the caller must
/// refuse (and audit) instead of answering with it. A bodiless answer
/// (`bodiless`: see [`read_answer`]) has only headers to redact: no decoder.
fn check_redactable(
    resp: &Response<Body>,
    patterns: &Patterns,
    bodiless: bool,
) -> Result<Option<Decoder>, RedactError> {
    match patterns.matcher {
        // Hot path: nothing in scope, nothing to decode.
        Matcher::Empty => return Ok(None),
        // SECURITY: without a working matcher nothing can be checked; refuse.
        Matcher::Broken => return Err(RedactError::Unavailable),
        Matcher::Ready(_) => {}
    }
    if bodiless {
        return Ok(None);
    }
    // SECURITY: bytes we cannot decode cannot be inspected; never pass them on.
    content_decoder(resp.headers()).map_err(RedactError::EncodingUnsupported)
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
    /// No body follows the head (HEAD request, 1xx/204/304): its framing
    /// headers (`content-length`, `content-encoding`) describe the
    /// representation and are passed on untouched.
    bodiless: bool,
}

/// Reads a small body of declared length (no content-encoding, at most
/// [`WHOLE_BODY_MAX`]) whole within `deadline`, so it can be redacted at once and
/// sent with its exact new `content-length`: no chunked framing and no streaming
/// state for the common small JSON answer. Other answers are left to stream.
/// `head`: the request was HEAD, so the length describes a body not sent.
///
/// Every reason to withhold the response is found here, before its head can go
/// out, and returned as the [`RedactError`] the caller refuses (and audits) with:
/// no working matcher, a `content-encoding` keyward cannot decode, a small body
/// that stalls or is cut off. A streamed body that turns out corrupt or truncated later can no longer
/// change the status: it ends as a body error (see the module docs).
pub async fn read_answer(
    resp: Response<Body>,
    patterns: &Patterns,
    head: bool,
    deadline: std::time::Duration,
) -> Result<Answer, RedactError> {
    let bodiless = head || !has_body(resp.status());
    let decoder = check_redactable(&resp, patterns, bodiless)?;
    let small = !bodiless
        && matches!(patterns.matcher, Matcher::Ready(_))
        && resp.headers().get(CONTENT_ENCODING).is_none()
        && declared_length(resp.headers()).is_some_and(|n| n <= WHOLE_BODY_MAX);
    if !small {
        // A streamed body is bounded per silence, not as a whole (SSE may run long).
        let resp = resp.map(|b| StallLimit::new(b, deadline).boxed());
        return Ok(Answer::Streaming(Streamed {
            resp,
            decoder,
            bodiless,
        }));
    }
    let (parts, body) = resp.into_parts();
    let collected = match tokio::time::timeout(deadline, body.collect()).await {
        Err(_) => return Err(RedactError::TimedOut),
        // SECURITY: a truncated body is never passed off as complete.
        Ok(Err(_)) => return Err(RedactError::Truncated),
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
/// or a streaming one redacted as it flows (decoded first if it was compressed).
pub fn redact_upstream(
    answer: Answer,
    patterns: Arc<Patterns>,
    on_redact: Option<OnRedact>,
) -> Response<Body> {
    let (mut parts, data, mut trailers) = match answer {
        Answer::Streaming(Streamed {
            resp,
            decoder,
            bodiless,
        }) => return stream::wrap(resp, decoder, bodiless, patterns, on_redact),
        Answer::Whole {
            parts,
            data,
            trailers,
        } => (parts, data, trailers),
    };
    let mut notify = Notify(on_redact);
    if redact_head(&patterns, &mut parts) {
        notify.fire();
    }
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
        None => full(data),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// No working matcher: the response is refused up front (the pipeline audits
    /// the refusal), whatever its status or size.
    #[tokio::test]
    async fn broken_matcher_refuses_before_anything_is_sent() {
        let broken = Patterns {
            matcher: Matcher::Broken,
        };
        for (status, len) in [(200, Some("2")), (200, None), (204, None), (101, None)] {
            let mut resp = Response::new(full(Bytes::from_static(b"ok")));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            if let Some(len) = len {
                resp.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from_static(len));
            }
            let err = read_answer(resp, &broken, false, std::time::Duration::from_secs(5))
                .await
                .err()
                .expect("a refusal");
            // The proxy maps it to `redaction_unavailable`, 502 (tests/redact_stream.rs).
            assert_eq!(err, RedactError::Unavailable, "{status}");
        }
    }
}
