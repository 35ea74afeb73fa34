//! Credential kind `hmac` (and an API key used as an HMAC key): the provider's
//! signature header over the exact body bytes forwarded.

use super::body::{buffer, header_name, plain_value};
use super::sign;
use crate::body::{full, Body};
use crate::config::HmacSignConfig;
use crate::proxy::error::Deny;
use crate::secret::Secret;
use http::header::{self, HeaderValue};
use http::request::Parts;
use std::time::Duration;

pub async fn sign(
    cfg: &HmacSignConfig,
    key: &Secret,
    parts: &mut Parts,
    body: Body,
    idle: Duration,
) -> Result<Body, Deny> {
    let bytes = buffer(body, idle).await?;
    let ts = crate::clock::unix_now();
    let signature = sign::hmac_header(cfg, key, ts, &bytes);
    // `insert` replaces every value the client sent for these names.
    parts
        .headers
        .insert(header_name(&cfg.header)?, plain_value(&signature)?);
    if let Some(name) = &cfg.timestamp_header {
        parts
            .headers
            .insert(header_name(name)?, HeaderValue::from(ts));
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Ok(full(bytes))
}
