//! Injection: from a `Grant` to what leaves keyward, one arm per credential kind
//! (like superfly/tokenizer's processors): the value to write (an API key as
//! stored, an OAuth2 access token from `oauth2`) through the provider's scheme
//! (`scheme`: header, basic, query, path prefix), then the provider's signature
//! (`hmac`, `sigv4`) over the exact bytes forwarded. Every secret involved is
//! added to the request's redaction set. `{{NAME}}` placeholders: `placeholder`.
//!
//! A new credential kind is a `SecretKind` variant (vault/kind.rs), an arm in
//! [`apply`] and [`redaction_values`], and its file here.

pub mod body;
pub mod hmac;
pub mod oauth2;
pub mod placeholder;
pub mod scheme;
pub mod sign;
pub mod sigv4;

pub use placeholder::{placeholder_names, replace_placeholders};
pub use scheme::{sensitive_value, strip_credentials};

use self::body::buffer;
use self::oauth2::{TokenEnv, TokenKey};
use self::sign::AwsCredentials;
use super::error::{Code, Deny};
use super::state::State;
use super::tunnel::TunnelCx;
use super::upstream;
use crate::body::{full, Body};
use crate::config::SignConfig;
use crate::policy::Provider;
use crate::resolve::Grant;
use crate::secret::Secret;
use crate::vault::kind::{AwsValue, OAuth2Value};
use crate::vault::{Change, SecretKind};
use bytes::Bytes;
use http::request::Parts;
use std::sync::Arc;

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

/// What a token call needs: the tunnel's worker pool, the response timeout, and
/// the store a rotated refresh token is written back to.
fn token_env(cx: &TunnelCx) -> TokenEnv<'_> {
    TokenEnv {
        client: &cx.client,
        timeout: cx.state.limits.response_timeout.0,
        store: cx.state.clone(),
    }
}

/// Refresh tokens a provider rotated are stored as a new version of their record
/// (atomic vault write), then the running snapshot is refreshed.
impl oauth2::RefreshStore for State {
    fn store(self: Arc<Self>, key: TokenKey, value: Secret) -> oauth2::StoreTask {
        tokio::task::spawn_blocking(move || {
            let change = Change::RotateSecret {
                scope: key.scope.clone(),
                name: key.name.clone(),
                value,
            };
            match self.vault.apply(change).and_then(|(a, _)| a.into_meta()) {
                Ok(meta) => {
                    if let Err(e) = self.refresh_vault() {
                        tracing::error!(error = %e, "vault reload after refresh-token write-back failed");
                    }
                    tracing::info!(secret = %key.name, scope = %key.scope, version = meta.version, "rotated refresh token stored");
                    Some(meta.version)
                }
                Err(e) => {
                    // The token in memory still works; the next start may need a new one.
                    tracing::error!(secret = %key.name, error = %e, "cannot store rotated refresh token");
                    None
                }
            }
        })
    }

    fn lease(&self, key: &TokenKey) -> Option<crate::vault::LeaseWait> {
        self.vault.lease_token(&key.scope, &key.name)
    }
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
    cx: &Arc<TunnelCx>,
    provider: &Provider,
    grant: &Grant,
    parts: &mut Parts,
    body: Body,
    secrets: &mut Vec<Secret>,
) -> Result<(Body, Option<Retry>), Deny> {
    let state = &cx.state;
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
                .token(&token_env(cx), &key, grant.version, &value)
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
        scheme::apply(&mut parts.headers, &mut parts.uri, provider, &value)?;
    }
    let body = match &provider.sign {
        None => body,
        Some(SignConfig::Hmac(cfg)) => {
            if !matches!(grant.kind, SecretKind::Hmac | SecretKind::ApiKey) {
                return Err(misfit(provider, grant, "signs with HMAC"));
            }
            hmac::sign(cfg, &grant.value, parts, body, idle).await?
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
            sigv4::sign(aws_sigv4, &creds, parts, body, idle).await?
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
    cx: &Arc<TunnelCx>,
    provider: &Provider,
    resp: http::Response<Body>,
    retry: Option<Retry>,
    secrets: &mut Vec<Secret>,
) -> Result<http::Response<Body>, Deny> {
    let Some(r) = retry else { return Ok(resp) };
    let state = &cx.state;
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
        .token(&token_env(cx), &r.key, r.secret_version, &r.value)
        .await?;
    secrets.extend(issued.involved);
    secrets.push(issued.access_token.clone());
    let (mut headers, mut uri) = (r.headers, r.uri);
    scheme::apply(&mut headers, &mut uri, provider, &issued.access_token)?;
    let mut req = http::Request::new(full(body));
    *req.method_mut() = r.method;
    *req.uri_mut() = uri;
    *req.version_mut() = r.version;
    *req.headers_mut() = headers;
    tracing::info!(provider = %provider.name, secret = %r.key.name, "401 from upstream: retrying once with a fresh OAuth2 token");
    // The same send as the first attempt, through the tunnel's worker pool.
    let wait = state.limits.response_timeout.0;
    upstream::answer(tokio::time::timeout(wait, cx.client.request(req)).await)
}
