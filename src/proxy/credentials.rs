//! From a `Grant` to what leaves keyward: the value to inject (an API key, or an
//! OAuth2 access token), then the provider's signature (HMAC, AWS SigV4) over the
//! exact bytes forwarded. Every secret involved is added to the request's
//! redaction set.

use super::error::{Code, Deny};
use super::oauth::TokenKey;
use super::sign::{self, AwsCredentials, SigV4Request};
use super::state::State;
use super::{full, inject, Body};
use crate::config::{AwsSigv4Config, HmacSignConfig, SignConfig};
use crate::policy::Provider;
use crate::resolve::Grant;
use crate::secret::Secret;
use crate::vault::kind::{AwsValue, OAuth2Value};
use crate::vault::SecretKind;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http_body_util::BodyExt;
use std::time::Duration;

fn misfit(provider: &Provider, grant: &Grant, what: &str) -> Deny {
    Deny::new(
        Code::Internal,
        format!(
            "provider {} {what}, but secret {} is of kind {}",
            provider.name, grant.name, grant.kind
        ),
    )
}

fn invalid_value(grant: &Grant) -> Deny {
    Deny::new(
        Code::Internal,
        format!("stored {} value of {} is invalid", grant.kind, grant.name),
    )
}

/// The values of a grant that must never come back to the agent: an API key or
/// HMAC key as stored; of an `oauth2` record its client secret and refresh token
/// (access tokens exist only per request and are added there); of an `aws` record
/// its secret access key and session token (the access key id is public). A
/// multi-field value that does not parse is redacted whole.
pub fn redaction_values(grant: &Grant, out: &mut Vec<Secret>) {
    match grant.kind {
        SecretKind::ApiKey | SecretKind::Hmac => out.push(grant.value.clone()),
        SecretKind::Oauth2 => match OAuth2Value::parse(&grant.value) {
            Ok(v) => {
                out.push(v.client_secret);
                out.extend(v.refresh_token);
            }
            Err(_) => out.push(grant.value.clone()),
        },
        SecretKind::Aws => match AwsValue::parse(&grant.value) {
            Ok(v) => {
                out.push(v.secret_access_key);
                out.extend(v.session_token);
            }
            Err(_) => out.push(grant.value.clone()),
        },
    }
}

/// Bodies up to this size of OAuth2 requests are kept so the request can be sent
/// once more with a fresh token after a 401.
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// What is needed to send an OAuth2 request again after a 401.
pub struct Retry {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    /// `None`: the body was too large to keep; a 401 only drops the cached token.
    body: Option<Bytes>,
    key: TokenKey,
    secret_version: u32,
    value: OAuth2Value,
    token: Secret,
}

/// Injects and signs. `parts.uri` is the absolute upstream URI; `body` is the
/// size-limited request body; returns the body to send, and for OAuth2 requests
/// with a small body what is needed to retry after a 401.
pub async fn apply(
    state: &State,
    provider: &Provider,
    grant: &Grant,
    parts: &mut Parts,
    body: Body,
    secrets: &mut Vec<Secret>,
) -> Result<(Body, Option<Retry>), Deny> {
    let mut oauth = None;
    let idle = state.limits.idle_timeout.0;
    let injected: Option<Secret> = match grant.kind {
        SecretKind::ApiKey | SecretKind::Hmac => Some(grant.value.clone()),
        SecretKind::Oauth2 => {
            let value = OAuth2Value::parse(&grant.value).map_err(|_| invalid_value(grant))?;
            let key = TokenKey {
                scope: grant.scope.clone(),
                name: grant.name.clone(),
            };
            let issued = state
                .oauth
                .token(state, &key, grant.version, &value)
                .await?;
            // SECURITY: access, refresh and client secrets are all redacted from
            // what the upstream sends back.
            secrets.extend(issued.involved);
            secrets.push(issued.access_token.clone());
            let token = issued.access_token.clone();
            oauth = Some((key, value, token));
            Some(issued.access_token)
        }
        SecretKind::Aws => None,
    };
    if provider.inject.is_some() {
        let value = injected.ok_or_else(|| misfit(provider, grant, "injects a value"))?;
        inject::apply(&mut parts.headers, &mut parts.uri, provider, &value)?;
    }
    let body = match &provider.sign {
        None => body,
        Some(SignConfig::Hmac(cfg)) => {
            if !matches!(grant.kind, SecretKind::Hmac | SecretKind::ApiKey) {
                return Err(misfit(provider, grant, "signs with HMAC"));
            }
            sign_hmac(cfg, &grant.value, parts, body, idle).await?
        }
        Some(SignConfig::AwsSigv4 { aws_sigv4 }) => {
            if grant.kind != SecretKind::Aws {
                return Err(misfit(provider, grant, "signs with AWS SigV4"));
            }
            let value = AwsValue::parse(&grant.value).map_err(|_| invalid_value(grant))?;
            secrets.push(value.secret_access_key.clone());
            secrets.extend(value.session_token.clone());
            let creds = AwsCredentials {
                access_key_id: value.access_key_id,
                secret_access_key: value.secret_access_key,
                session_token: value.session_token,
            };
            sign_aws(aws_sigv4, &creds, parts, body, idle).await?
        }
    };
    // A signed request would need signing again; only plain OAuth2 injection retries.
    let retryable = provider.sign.is_none()
        && http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n <= RETRY_BODY_LIMIT);
    let Some((key, value, token)) = oauth else {
        return Ok((body, None));
    };
    let (body, kept) = if retryable {
        let bytes = buffer(body, idle).await?;
        (full(bytes.clone()), Some(bytes))
    } else {
        (body, None)
    };
    let retry = Retry {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: kept,
        key,
        secret_version: grant.version,
        value,
        token,
    };
    Ok((body, Some(retry)))
}

/// After a 401 to an OAuth2 request: drop the cached token, get a fresh one, and
/// send the request once more. Anything else passes through.
pub async fn retry_unauthorized(
    state: &State,
    provider: &Provider,
    resp: http::Response<Body>,
    retry: Option<Retry>,
    secrets: &mut Vec<Secret>,
) -> Result<http::Response<Body>, Deny> {
    let Some(r) = retry else { return Ok(resp) };
    if resp.status() != http::StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    state.oauth.invalidate(&r.key, &r.token).await;
    let Some(body) = r.body else {
        // Too large to re-send: the agent sees the 401; its next request gets a
        // fresh token.
        return Ok(resp);
    };
    drop(resp);
    let issued = state
        .oauth
        .token(state, &r.key, r.secret_version, &r.value)
        .await?;
    secrets.extend(issued.involved);
    secrets.push(issued.access_token.clone());
    let (mut headers, mut uri) = (r.headers, r.uri);
    inject::apply(&mut headers, &mut uri, provider, &issued.access_token)?;
    let mut req = http::Request::new(full(body));
    *req.method_mut() = r.method;
    *req.uri_mut() = uri;
    *req.version_mut() = r.version;
    *req.headers_mut() = headers;
    tracing::info!(provider = %provider.name, secret = %r.key.name, "401 from upstream: retrying once with a fresh OAuth2 token");
    let sent = tokio::time::timeout(state.limits.response_timeout.0, state.client.request(req))
        .await
        .map_err(|_| Deny::new(Code::UpstreamTimeout, "upstream did not answer in time"))?
        .map_err(|e| super::upstream::classify(&e))?;
    Ok(sent.map(|b| b.map_err(Into::into).boxed()))
}

/// Reads the whole (already size-limited) body, each part within `idle`.
async fn buffer(mut body: Body, idle: Duration) -> Result<Bytes, Deny> {
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

fn header_name(name: &str) -> Result<HeaderName, Deny> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| Deny::new(Code::Internal, "provider sign header is invalid"))
}

fn plain_value(v: &str) -> Result<HeaderValue, Deny> {
    HeaderValue::from_str(v)
        .map_err(|_| Deny::new(Code::Internal, "signature is not a header value"))
}

async fn sign_hmac(
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

async fn sign_aws(
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
        h.insert(
            sign::X_AMZ_SECURITY_TOKEN,
            inject::sensitive_value(token.expose())?,
        );
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
        inject::sensitive_value(authorization.as_bytes())?,
    );
    Ok(body)
}
