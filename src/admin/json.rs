//! JSON in and out of the admin API: the size-limited body reader, the JSON
//! response, and query-string pairs.

use crate::body::{full, Body};
use crate::proxy::error::{Code, Deny};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

/// Largest request body accepted (a 64 KiB value JSON-escaped, plus metadata).
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// `status` with `body` as `application/json`.
pub fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads a JSON body (size-limited). Parse errors name a position, never content:
/// a body may hold a secret value.
pub async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    shape: &str,
) -> Result<T, Deny> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Deny::payload_too_large(MAX_BODY_BYTES as u64))
        }
        Err(_) => {
            return Err(Deny::new(
                Code::BadRequest,
                "could not read the request body",
            ))
        }
    };
    // The body may hold a secret value: keep it in memory that is wiped on drop.
    let bytes = Zeroizing::new(Vec::from(bytes));
    serde_json::from_slice(&bytes).map_err(|e| {
        Deny::new(
            Code::BadRequest,
            format!(
                "invalid JSON body ({:?} error at line {} column {}); expected {shape}",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })
}

/// `a=b&c=d` → pairs, percent- and `+`-decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `unknown parameter "x"`, for a query key an endpoint does not take.
pub fn unknown_parameter(name: &str) -> Deny {
    Deny::new(Code::BadRequest, format!("unknown parameter {name:?}"))
}
