//! Credential kind `aws`: AWS Signature Version 4 over the request as forwarded
//! (the agent's SDK signed with dummy credentials; that signature is replaced).

use super::body::{buffer, plain_value};
use super::scheme::sensitive_value;
use super::sign::{self, AwsCredentials, SigV4Request};
use crate::body::{full, Body};
use crate::config::AwsSigv4Config;
use crate::proxy::error::{Code, Deny};
use http::header::{self, HeaderValue};
use http::request::Parts;
use std::time::Duration;

pub async fn sign(
    cfg: &AwsSigv4Config,
    creds: &AwsCredentials,
    parts: &mut Parts,
    body: Body,
    idle: Duration,
) -> Result<Body, Deny> {
    // What the SDK declared about the payload: an unsigned (streaming) payload is
    // kept as declared; chunk signatures made with the dummy key cannot be redone.
    let declared = parts
        .headers
        .get(sign::X_AMZ_CONTENT_SHA256)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let keep_declared =
        match declared.as_deref() {
            Some(h) if h == sign::UNSIGNED_PAYLOAD => Some(h.to_string()),
            Some(h) if h.starts_with(sign::STREAMING_PREFIX) && h.contains("UNSIGNED") => {
                Some(h.to_string())
            }
            Some(h) if h.starts_with(sign::STREAMING_PREFIX) => return Err(Deny::new(
                Code::BadRequest,
                "signed streaming payloads (aws-chunked chunk signatures) cannot be re-signed; \
                 configure the SDK for unsigned payloads",
            )),
            _ => None,
        };
    // SECURITY: the agent's SDK signed with dummy credentials; none of that may
    // reach AWS next to keyward's signature.
    for name in sign::AWS_CLIENT_HEADERS {
        while parts.headers.remove(*name).is_some() {}
    }
    let (payload_hash, body) = if let Some(h) = keep_declared {
        (h, body)
    } else if cfg.unsigned_payload {
        (sign::UNSIGNED_PAYLOAD.to_string(), body)
    } else {
        let bytes = buffer(body, idle).await?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        (sign::sha256_hex(&bytes), full(bytes))
    };
    let amz_date = sign::amz_date(crate::clock::unix_now());
    let h = &mut parts.headers;
    h.insert(sign::X_AMZ_DATE, plain_value(&amz_date)?);
    h.insert(sign::X_AMZ_CONTENT_SHA256, plain_value(&payload_hash)?);
    if let Some(token) = &creds.session_token {
        h.insert(sign::X_AMZ_SECURITY_TOKEN, sensitive_value(token.expose())?);
    }
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| Deny::new(Code::BadRequest, "request has no host"))?;
    let mut signed: Vec<(String, String)> = vec![("host".into(), authority)];
    for (name, value) in h.iter() {
        let n = name.as_str();
        if n.starts_with("x-amz-") || n == "content-type" || n == "content-md5" {
            let v = value
                .to_str()
                .map_err(|_| Deny::new(Code::BadRequest, "a signed header is not text"))?;
            signed.push((n.to_string(), v.to_string()));
        }
    }
    let method = parts.method.as_str().to_string();
    let req = SigV4Request {
        method: &method,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &signed,
        payload_hash: &payload_hash,
    };
    let authorization =
        sign::sigv4_authorization(&req, creds, &cfg.region, &cfg.service, &amz_date);
    parts.headers.insert(
        header::AUTHORIZATION,
        sensitive_value(authorization.as_bytes())?,
    );
    Ok(body)
}
