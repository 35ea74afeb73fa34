//! Helpers the credential kinds share: reading a (size-limited) request body
//! whole when a signature must cover it, and header names/values built from
//! config or signatures.

use crate::body::Body;
use crate::proxy::error::{Code, Deny};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use std::time::Duration;

/// Reads the whole (already size-limited) body, each part within `idle`.
pub async fn buffer(mut body: Body, idle: Duration) -> Result<Bytes, Deny> {
    let mut out = bytes::BytesMut::new();
    loop {
        // SECURITY: a client that sends a head and then stalls its body would hold
        // the request (and its tunnel: a request in flight is never idle) forever.
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| {
                Deny::new(
                    Code::BadRequest,
                    "request body stalled (no bytes for proxy.idle_timeout)",
                )
            })?;
        match frame {
            None => return Ok(out.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Deny::new(
                    Code::PayloadTooLarge,
                    "request body is larger than proxy.max_body_bytes",
                ))
            }
            Some(Err(_)) => {
                return Err(Deny::new(
                    Code::BadRequest,
                    "request body could not be read",
                ))
            }
        }
    }
}

pub fn header_name(name: &str) -> Result<HeaderName, Deny> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Deny::new(Code::Internal, "provider sign header is invalid"))
}

pub fn plain_value(v: &str) -> Result<HeaderValue, Deny> {
    HeaderValue::from_str(v)
        .map_err(|_| Deny::new(Code::Internal, "signature is not a header value"))
}
