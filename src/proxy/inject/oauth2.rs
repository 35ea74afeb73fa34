//! OAuth2 access tokens for secrets of kind `oauth2`: obtained from the token
//! endpoint (refresh-token grant when a refresh token is stored, else client
//! credentials) over the same verified-TLS, private-address-checked client as every
//! upstream; cached per (scope, secret) until shortly before expiry; one token call
//! at a time per secret (single flight); rotated refresh tokens written back.

use super::scheme::sensitive_value;
use crate::body::full;
use crate::clock::unix_now;
use crate::proxy::error::{Code, Deny};
use crate::proxy::upstream::{self, UpstreamClient};
use crate::secret::Secret;
use crate::vault::kind::OAuth2Value;
use crate::vault::{LeaseWait, SharedToken, TokenLease};
use base64::Engine;
use http::{header, Request};
use http_body_util::{BodyExt, Limited};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A token is renewed this long before the provider says it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint does not say (`expires_in` absent).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest wait for a token endpoint (requests for that secret queue behind it).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed token call, requests for that secret fail fast this long
/// instead of each calling the endpoint again.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(2);
/// Largest token-endpoint response read.
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// `application/x-www-form-urlencoded` value encoding.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a token call needs from the running keyward (no `State`: this file sits
/// below it): the pool to reach the token endpoint, the longest wait, and where
/// a rotated refresh token is written back.
pub struct TokenEnv<'a> {
    pub client: &'a UpstreamClient,
    pub timeout: Duration,
    pub store: Arc<dyn RefreshStore>,
}

/// The task of [`RefreshStore::store`]: the new record version, if stored.
pub type StoreTask = tokio::task::JoinHandle<Option<u32>>;

/// Where a refresh token the provider rotated is kept (the vault).
pub trait RefreshStore: Send + Sync {
    /// Stores `value` (the whole OAuth2 record, new refresh token inside) as a new
    /// version of `key`'s record; returns that version.
    fn store(self: Arc<Self>, key: TokenKey, value: Secret) -> StoreTask;

    /// The cross-replica refresh lock of `key` (PostgreSQL store); `None` when
    /// this keyward shares its vault with no other replica.
    fn lease(&self, _key: &TokenKey) -> Option<LeaseWait> {
        None
    }
}

/// Which stored secret a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub scope: String,
    pub name: String,
}

struct Cached {
    token: Secret,
    refresh: Option<Secret>,
    valid_until: Instant,
    /// Vault versions this token was obtained for (the stored one, and the one our
    /// own refresh-token write-back created).
    versions: (u32, Option<u32>),
}

/// One secret's token state; its mutex is the single flight.
#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    /// The last failure, for this vault version, until when it is answered again.
    failure: Option<(Instant, u32, Deny)>,
}

/// Token cache, hung off `State` (no globals).
#[derive(Default)]
pub struct TokenCache {
    slots: parking_lot::Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<Slot>>>>,
    /// Calls made to token endpoints (for metrics and tests).
    pub calls: std::sync::atomic::AtomicU64,
}

/// What a request gets: the access token, plus the other secrets it involved
/// (client secret, refresh tokens) for redaction of the response.
pub struct Issued {
    pub access_token: Secret,
    pub involved: Vec<Secret>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

fn failed(why: impl Into<String>) -> Deny {
    Deny::new(Code::OauthRefreshFailed, why)
}

impl TokenCache {
    fn slot(&self, key: &TokenKey) -> Arc<tokio::sync::Mutex<Slot>> {
        self.slots.lock().entry(key.clone()).or_default().clone()
    }

    /// Drops the cached token if it is still `token` (after a 401 from the provider).
    pub async fn invalidate(&self, key: &TokenKey, token: &Secret) {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.cached.as_mut() {
            if c.token.expose() == token.expose() {
                c.valid_until = Instant::now();
            }
        }
    }

    /// A valid access token for `key` (version `version`, value `value`).
    pub async fn token(
        &self,
        env: &TokenEnv<'_>,
        key: &TokenKey,
        version: u32,
        value: &OAuth2Value,
    ) -> Result<Issued, Deny> {
        let slot = self.slot(key);
        // Single flight: whoever holds the slot refreshes; the others wait here and
        // then find the fresh token.
        let mut guard = slot.lock().await;
        let mut involved = vec![value.client_secret.clone()];
        involved.extend(value.refresh_token.clone());
        if let Some((until, failed_version, deny)) = &guard.failure {
            if *failed_version == version && Instant::now() < *until {
                return Err(deny.clone());
            }
        }
        if let Some(c) = guard.cached.as_ref() {
            let same_secret = c.versions.0 == version || c.versions.1 == Some(version);
            if same_secret && Instant::now() < c.valid_until {
                involved.extend(c.refresh.clone());
                return Ok(Issued {
                    access_token: c.token.clone(),
                    involved,
                });
            }
        }
        // A refresh token rotated by an earlier call is newer than the vault copy
        // this request read (if the write-back has not reached its snapshot yet).
        let refresh = guard
            .cached
            .as_ref()
            .filter(|c| c.versions.1 == Some(version) || c.versions.0 == version)
            .and_then(|c| c.refresh.clone())
            .or_else(|| value.refresh_token.clone());
        // One refresh at a time across replicas: wait for the lock, then use what
        // another replica stored meanwhile if it is still good.
        let lease = take_lease(env, key).await;
        if let Some(shared) = lease.as_ref().and_then(|l| usable(l, version)) {
            involved.extend(refresh.clone());
            guard.cached = Some(Cached {
                token: shared.token.clone(),
                refresh: refresh.clone(),
                valid_until: Instant::now() + shared.left,
                versions: shared.versions,
            });
            return Ok(Issued {
                access_token: shared.token,
                involved,
            });
        }
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = fetch(env, value, refresh.as_ref()).await.and_then(|resp| {
            if resp.access_token.is_empty() {
                Err(failed("the token endpoint returned an empty access token"))
            } else {
                Ok(resp)
            }
        });
        let resp = match fetched {
            Ok(resp) => resp,
            Err(deny) => {
                guard.failure = Some((Instant::now() + FAILURE_BACKOFF, version, deny.clone()));
                return Err(deny);
            }
        };
        guard.failure = None;
        let token = Secret::new(resp.access_token.into_bytes());
        let lifetime = resp
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        let rotated = resp
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(|r| Secret::new(r.into_bytes()))
            .filter(|r| {
                refresh
                    .as_ref()
                    .is_none_or(|old| old.expose() != r.expose())
            });
        let mut written = None;
        if let Some(new_refresh) = &rotated {
            involved.push(new_refresh.clone());
            written = write_back(env.store.clone(), key, value, new_refresh).await;
        }
        if let Some(lease) = lease {
            lease.finish(Some(SharedToken {
                token: token.clone(),
                expires: unix_now().saturating_add(lifetime.as_secs()),
                versions: (version, written),
            }));
        }
        guard.cached = Some(Cached {
            token: token.clone(),
            refresh: rotated.or(refresh),
            valid_until: Instant::now() + lifetime.saturating_sub(EXPIRY_MARGIN),
            versions: (version, written),
        });
        Ok(Issued {
            access_token: token,
            involved,
        })
    }
}

/// The lease of `key` if the store shares tokens; a store that cannot be reached
/// does not stop the refresh (this replica then refreshes on its own).
async fn take_lease(env: &TokenEnv<'_>, key: &TokenKey) -> Option<TokenLease> {
    match env.store.lease(key)?.await {
        Ok(Ok(lease)) => Some(lease),
        Ok(Err(e)) => {
            tracing::warn!(secret = %key.name, error = %e, "OAuth2 refresh without the replica lock");
            None
        }
        Err(_) => None,
    }
}

/// A token another replica stored, for this record version, not about to expire.
struct Usable {
    token: Secret,
    left: Duration,
    versions: (u32, Option<u32>),
}

fn usable(lease: &TokenLease, version: u32) -> Option<Usable> {
    let t = lease.current.as_ref()?;
    if t.versions.0 != version && t.versions.1 != Some(version) {
        return None;
    }
    let left = t
        .expires
        .checked_sub(unix_now())?
        .checked_sub(EXPIRY_MARGIN.as_secs())?;
    (left > 0).then(|| Usable {
        token: t.token.clone(),
        left: Duration::from_secs(left),
        versions: t.versions,
    })
}

/// Stores a rotated refresh token; returns the new version.
async fn write_back(
    store: Arc<dyn RefreshStore>,
    key: &TokenKey,
    value: &OAuth2Value,
    refresh: &Secret,
) -> Option<u32> {
    match value.with_refresh_token(refresh) {
        Ok(new_value) => store
            .store(key.clone(), new_value)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "refresh-token write-back task failed");
                None
            }),
        Err(e) => {
            tracing::error!(secret = %key.name, error = %e, "cannot store rotated refresh token");
            None
        }
    }
}

/// The token request: a refresh (or client-credentials) grant, client id and
/// secret as HTTP Basic (RFC 6749 §2.3.1). Its own (non-async) function so the
/// encoder closure is never held across an await.
fn token_request(
    value: &OAuth2Value,
    refresh: Option<&Secret>,
) -> Result<Request<crate::body::Body>, Deny> {
    let enc = |b: &[u8]| {
        Zeroizing::new(utf8_percent_encode(&String::from_utf8_lossy(b), FORM).to_string())
    };
    let mut form = Zeroizing::new(String::new());
    match refresh {
        Some(r) => {
            form.push_str("grant_type=refresh_token&refresh_token=");
            form.push_str(&enc(r.expose()));
        }
        None => form.push_str("grant_type=client_credentials"),
    }
    if let Some(scope) = &value.scope {
        form.push_str("&scope=");
        form.push_str(&enc(scope.as_bytes()));
    }
    // RFC 6749 §2.3.1: client id and secret, form-encoded, as HTTP Basic.
    let mut pair = Zeroizing::new(enc(value.client_id.as_bytes()).as_bytes().to_vec());
    pair.push(b':');
    pair.extend_from_slice(enc(value.client_secret.expose()).as_bytes());
    let basic = Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&*pair)
    ));
    let uri: http::Uri = value
        .token_url
        .parse()
        .map_err(|_| failed("the stored token_url is not a URL"))?;
    // SECURITY: the client secret goes out only over verified TLS.
    if uri.scheme_str() != Some("https") {
        return Err(failed("the stored token_url is not https"));
    }
    Request::post(uri)
        .header(header::AUTHORIZATION, sensitive_value(basic.as_bytes())?)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(full(form.as_bytes().to_vec()))
        .map_err(|_| failed("cannot build the token request"))
}

/// One call to the token endpoint.
async fn fetch(
    env: &TokenEnv<'_>,
    value: &OAuth2Value,
    refresh: Option<&Secret>,
) -> Result<TokenResponse, Deny> {
    let req = token_request(value, refresh)?;
    let wait = env.timeout.min(TOKEN_TIMEOUT);
    // The raw (unboxed) answer: its body is read here, never passed on.
    let sent = tokio::time::timeout(wait, env.client.request(req))
        .await
        .map_err(|_| failed("the token endpoint did not answer in time"))?
        .map_err(|e| {
            let why = upstream::classify(&e);
            failed(format!(
                "the token endpoint is unreachable ({})",
                why.code.as_str()
            ))
        })?;
    let status = sent.status();
    let body = Limited::new(sent.into_body(), MAX_TOKEN_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|_| failed("the token endpoint response could not be read"))?
        .to_bytes();
    let body = Zeroizing::new(body.to_vec());
    if !status.is_success() {
        // The body may echo the refresh token; only the OAuth error code is kept.
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string))
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or_default();
        return Err(failed(format!(
            "the token endpoint refused the grant (status {}{}{})",
            status.as_u16(),
            if code.is_empty() { "" } else { ", " },
            code
        )));
    }
    serde_json::from_slice(&body).map_err(|_| failed("the token endpoint response is not a token"))
}
