//! The admin API (SPEC §9): HTTP/1 JSON on its own listener, bearer tokens with
//! permissions from `[admin].tokens` (re-read on every request, so config reloads
//! apply at once).
//!
//! One table, [`ROUTES`], drives routing and authorization; `tests/admin_api.rs`
//! checks it against `docs/admin-api.yaml` (OpenAPI 3) in both directions.
//!
//! Secret values come in (PUT) and never go out: they are wrapped in [`Secret`] as
//! soon as the body is parsed, and no response, log line or audit line carries one.

use crate::audit::{self, Event, EventKind, Outcome};
use crate::config::{valid_agent_id, valid_secret_name, AdminToken};
use crate::proxy::state::State;
use crate::proxy::{empty, full, Body};
use crate::resolve::{self, MAX_SESSION_TTL_SECS};
use crate::secret::Secret;
use crate::vault::{AgentRecord, Change, RecordMeta, SetOptions, VaultError};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use zeroize::Zeroizing;

/// Largest request body accepted (a 64 KiB value JSON-escaped, plus metadata).
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Largest request head accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Slow request heads are cut off after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent admin connections; beyond this new ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// Session lifetime when `POST /v1/sessions` names none.
pub const DEFAULT_SESSION_TTL_SECS: u64 = 15 * 60;
/// `GET /v1/audit` returns at most this many lines when `limit` is absent …
pub const DEFAULT_AUDIT_LIMIT: usize = 1_000;
/// … and never more than this.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// Longest `run_id` a session may carry (it is copied into every audit line).
pub const MAX_RUN_ID_LEN: usize = 128;
/// Content type of `/metrics` (Prometheus text exposition).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What an admin token may do. Permissions are exact: `secrets:manage` does not
/// imply `secrets:read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    SecretsRead,
    SecretsManage,
    AgentsManage,
    SessionsCreate,
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::SecretsRead,
        Permission::SecretsManage,
        Permission::AgentsManage,
        Permission::SessionsCreate,
        Permission::AuditRead,
    ];

    /// The string used in `[admin].tokens[].permissions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SecretsRead => "secrets:read",
            Permission::SecretsManage => "secrets:manage",
            Permission::AgentsManage => "agents:manage",
            Permission::SessionsCreate => "sessions:create",
            Permission::AuditRead => "audit:read",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    ListSecrets,
    GetSecret,
    PutSecret,
    DeleteSecret,
    CreateAgent,
    CreateSession,
    QueryAudit,
}

/// One endpoint: method, OpenAPI path template, the permission it needs (`None`:
/// no authentication) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Option<Permission>,
    pub op: Op,
}

const fn route(
    method: &'static str,
    path: &'static str,
    permission: Option<Permission>,
    op: Op,
) -> Route {
    Route {
        method,
        path,
        permission,
        op,
    }
}

/// Every endpoint the server implements. Path templates use OpenAPI syntax.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", None, Op::Healthz),
    route("GET", "/readyz", None, Op::Readyz),
    route("GET", "/metrics", None, Op::Metrics),
    route(
        "GET",
        "/v1/secrets",
        Some(Permission::SecretsRead),
        Op::ListSecrets,
    ),
    route(
        "GET",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsRead),
        Op::GetSecret,
    ),
    route(
        "PUT",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsManage),
        Op::PutSecret,
    ),
    route(
        "DELETE",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsManage),
        Op::DeleteSecret,
    ),
    route(
        "POST",
        "/v1/agents",
        Some(Permission::AgentsManage),
        Op::CreateAgent,
    ),
    route(
        "POST",
        "/v1/sessions",
        Some(Permission::SessionsCreate),
        Op::CreateSession,
    ),
    route(
        "GET",
        "/v1/audit",
        Some(Permission::AuditRead),
        Op::QueryAudit,
    ),
];

// ---------------------------------------------------------------------------
// Server

/// Binds `listen` and serves the admin API until `stop` flips; returns the bound address.
pub async fn start(
    state: Arc<State>,
    listen: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if state.runtime().config.admin.tokens.is_empty() {
        tracing::warn!(%addr, "admin API has no [admin].tokens: only /healthz, /readyz and /metrics will answer");
    }
    tokio::spawn(accept_loop(listener, state, stop));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(state, stream).await;
            drop(permit);
        });
    }
}

async fn serve_connection(state: Arc<State>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

/// One admin request, start to end.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let mut resp = dispatch(state, req).await;
    // Answers may carry tokens or secret metadata: never cache them.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Routes, authenticates, authorizes, then runs the handler.
async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut allowed: Vec<&str> = Vec::new();
    let mut hit = None;
    for r in ROUTES {
        if let Some(params) = match_path(r.path, &path) {
            if r.method == req.method().as_str() {
                hit = Some((r, params));
                break;
            }
            allowed.push(r.method);
        }
    }
    let Some((route, params)) = hit else {
        if allowed.is_empty() {
            return ApiError::not_found(format!("no admin endpoint {path}")).response();
        }
        let allow = allowed.join(", ");
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {allow}"),
        )
        .response();
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    };
    let cx = Cx {
        actor: None,
        method: req.method().to_string(),
        path,
    };
    let cx = match route.permission {
        None => cx,
        Some(perm) => match authorize(&state, req.headers(), perm, &cx) {
            Ok(name) => Cx {
                actor: Some(name),
                ..cx
            },
            Err(e) => return e.response(),
        },
    };
    let result = match route.op {
        Op::Healthz => Ok(json_response(StatusCode::OK, json!({"status": "ok"}))),
        Op::Readyz => Ok(readyz(&state)),
        Op::Metrics => Ok(metrics(&state)),
        Op::ListSecrets => list_secrets(&state, req.uri().query()),
        Op::GetSecret => get_secret(&state, &params[0], &params[1]),
        Op::PutSecret => put_secret(&state, &cx, &params[0], &params[1], req).await,
        Op::DeleteSecret => delete_secret(&state, &cx, &params[0], &params[1]).await,
        Op::CreateAgent => create_agent(&state, &cx, req).await,
        Op::CreateSession => create_session(&state, &cx, req).await,
        Op::QueryAudit => query_audit(&state, req.uri().query()).await,
    };
    result.unwrap_or_else(ApiError::response)
}

/// Matches `/v1/secrets/{scope}/{name}` against a request path; returns the
/// percent-decoded parameters.
fn match_path(template: &str, path: &str) -> Option<Vec<String>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (ts, ps) in t.iter().zip(&p) {
        if ts.starts_with('{') && ts.ends_with('}') {
            let v = percent_encoding::percent_decode_str(ps)
                .decode_utf8()
                .ok()?;
            if v.is_empty() {
                return None;
            }
            params.push(v.into_owned());
        } else if ts != ps {
            return None;
        }
    }
    Some(params)
}

/// Who is calling and what, for audit lines.
struct Cx {
    /// The admin token's name (never the token).
    actor: Option<String>,
    method: String,
    path: String,
}

impl Cx {
    fn event(&self, event: EventKind, outcome: Outcome, status: StatusCode) -> Event {
        let mut ev = Event::new(event, outcome);
        ev.request_id = Some(crate::ids::request_id());
        ev.method = Some(self.method.clone());
        ev.path = Some(self.path.clone());
        ev.status = Some(status.as_u16());
        ev.reason = self.actor.as_ref().map(|a| format!("admin:{a}"));
        ev
    }
}

// ---------------------------------------------------------------------------
// Authentication and authorization

/// The `Authorization: Bearer …` token, if well-formed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The configured token whose SHA-256 matches `presented`.
fn find_token<'a>(tokens: &'a [AdminToken], presented: &str) -> Option<&'a AdminToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        let mut want = [0u8; 32];
        if hex::decode_to_slice(t.sha256.trim(), &mut want).is_err() {
            continue;
        }
        // SECURITY: digests are compared in constant time and every configured token
        // is checked (no early exit), so timing does not reveal how close a guess was.
        if bool::from(digest.ct_eq(&want)) {
            found = Some(t);
        }
    }
    found
}

/// Returns the calling token's name, or the audited 401/403.
fn authorize(
    state: &State,
    headers: &HeaderMap,
    perm: Permission,
    cx: &Cx,
) -> Result<String, ApiError> {
    // SECURITY: tokens are read from the live config on every request, so removing
    // one from the config (and reloading) revokes it at once.
    let runtime = state.runtime();
    let tokens = &runtime.config.admin.tokens;
    let presented = bearer(headers);
    // SECURITY: only the SHA-256 of admin tokens is configured; the presented token is
    // hashed and compared, never logged or echoed.
    let Some(token) = presented.and_then(|t| find_token(tokens, t)) else {
        let reason = if presented.is_some() {
            "unknown admin token"
        } else {
            "missing bearer token"
        };
        let mut ev = cx.event(
            EventKind::AdminAuthFail,
            Outcome::Denied,
            StatusCode::UNAUTHORIZED,
        );
        ev.reason = Some(reason.to_string());
        audit_denial(state, ev);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin token>",
        ));
    };
    // SECURITY: permissions are exact strings from the config; a token without the
    // route's permission is refused before any handler (or the vault) runs.
    if !token.permissions.iter().any(|p| p == perm.as_str()) {
        let mut ev = cx.event(
            EventKind::AdminForbidden,
            Outcome::Denied,
            StatusCode::FORBIDDEN,
        );
        ev.reason = Some(format!("admin:{} lacks {}", token.name, perm.as_str()));
        audit_denial(state, ev);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("admin token {:?} lacks {}", token.name, perm.as_str()),
        ));
    }
    Ok(token.name.clone())
}

fn audit_denial(state: &State, ev: Event) {
    if let Err(e) = state.audit.record(ev) {
        tracing::error!(error = %e, "audit log unwritable while refusing an admin request");
    }
}

/// Records an audit line for a change; the caller fails closed when this errors.
fn audit_change(state: &State, ev: Event) -> Result<(), ApiError> {
    state.audit.record(ev).map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit log unwritable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written",
        )
    })
}

// ---------------------------------------------------------------------------
// Errors and responses

/// An admin API refusal, rendered as `{"error":{"type":"keyward.<code>","message":…}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see keyward's log)",
        )
    }

    fn response(self) -> Response<Body> {
        let body =
            json!({"error": {"type": format!("keyward.{}", self.code), "message": self.message}});
        let mut resp = json_response(self.status, body);
        let h = resp.headers_mut();
        h.insert("x-keyward-error", HeaderValue::from_static(self.code));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward-admin\""),
            );
        }
        resp
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> ApiError {
        match e {
            // Vault messages name scopes, names and limits, never values.
            VaultError::Invalid(m) => ApiError::bad_request(m),
            e @ VaultError::NotFound { .. } => ApiError::not_found(e.to_string()),
            e @ VaultError::AgentExists(_) => ApiError::conflict(e.to_string()),
            e => {
                tracing::error!(error = %e, "vault write failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "vault_unavailable",
                    "the vault could not be written (see keyward's log)",
                )
            }
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
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
async fn read_json<T: for<'de> Deserialize<'de>>(
    req: Request<Incoming>,
    shape: &str,
) -> Result<T, ApiError> {
    let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            ))
        }
        Err(_) => return Err(ApiError::bad_request("could not read the request body")),
    };
    // The body may hold a secret value: keep it in memory that is wiped on drop.
    let bytes = Zeroizing::new(Vec::from(bytes));
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body ({:?} error at line {} column {}); expected {shape}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

/// `a=b&c=d` → pairs, percent- and `+`-decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
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

/// Runs a blocking vault call off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal())?
}

/// Makes a vault write visible to the proxy at once (agent table, generation).
fn refresh(state: &State) {
    if let Err(e) = state.refresh_vault() {
        tracing::warn!(error = %e, "vault refresh after an admin write failed");
    }
}

// ---------------------------------------------------------------------------
// Health, readiness, metrics

fn readyz(state: &State) -> Response<Body> {
    let vault = {
        // Loaded at start; a snapshot is always there once `State` exists.
        let _ = state.vault.snapshot().generation();
        Ok(())
    };
    let ca = if state.ca.ca_pem().is_empty() {
        Err("CA certificate not loaded")
    } else {
        Ok(())
    };
    let audit = audit_writable(state.audit.path());
    let checks = [("vault", vault), ("ca", ca), ("audit", audit)];
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(k, r)| {
            let v = match r {
                Ok(()) => "ok".to_string(),
                Err(m) => m.to_string(),
            };
            (k.to_string(), Value::String(v))
        })
        .collect();
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    json_response(status, json!({"status": word, "checks": body}))
}

/// Cheap check: the audit file can still be opened for appending.
fn audit_writable(path: &Path) -> Result<(), &'static str> {
    if path == Path::new("-") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map(|_| ())
        .map_err(|_| "audit log not writable")
}

fn metrics(state: &State) -> Response<Body> {
    let mut resp = Response::new(full(state.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    resp
}

// ---------------------------------------------------------------------------
// Secrets

fn list_secrets(state: &State, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let mut scope = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "scope" => scope = Some(v),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )))
            }
        }
    }
    let list = state.vault.list(scope.as_deref());
    Ok(json_response(StatusCode::OK, json!({ "secrets": list })))
}

fn find_meta(state: &State, scope: &str, name: &str) -> Option<RecordMeta> {
    state
        .vault
        .list(Some(scope))
        .into_iter()
        .find(|m| m.scope == scope && m.name == name)
}

fn get_secret(state: &State, scope: &str, name: &str) -> Result<Response<Body>, ApiError> {
    match find_meta(state, scope, name) {
        Some(meta) => Ok(json_response(StatusCode::OK, json!(meta))),
        None => Err(ApiError::not_found(format!(
            "secret {name} not found in scope {scope}"
        ))),
    }
}

/// `{"value"}`: deserialized straight into a [`Secret`].
struct SecretValue(Secret);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SecretValue(Secret::new(s.into_bytes())))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSecretBody {
    value: Option<SecretValue>,
    description: Option<String>,
    hosts: Option<Vec<String>>,
    rotate_every: Option<String>,
    /// `api_key` | `oauth2` | `hmac` | `aws` (multi-field kinds: `value` is JSON text).
    kind: Option<String>,
}

const PUT_SECRET_SHAPE: &str = r#"{"value": string, "description"?: string, "hosts"?: [string], "rotate_every"?: "90d", "kind"?: "api_key|oauth2|hmac|aws"}"#;

async fn put_secret(
    state: &Arc<State>,
    cx: &Cx,
    scope: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: PutSecretBody = read_json(req, PUT_SECRET_SHAPE).await?;
    let Some(SecretValue(value)) = body.value else {
        return Err(ApiError::bad_request(format!(
            "\"value\" is required; expected {PUT_SECRET_SHAPE}"
        )));
    };
    if !valid_secret_name(name) {
        return Err(ApiError::bad_request(format!(
            "secret name {name:?} must match ^[A-Z_][A-Z0-9_]*$"
        )));
    }
    if value.is_empty() {
        return Err(ApiError::bad_request("\"value\" is empty"));
    }
    // SECURITY: values end up in header lines, URLs and paths; CR/LF would let a
    // stored value split a header, NUL truncates in C clients. The message never
    // contains the value.
    if value
        .expose()
        .iter()
        .any(|&b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(ApiError::bad_request("\"value\" contains CR, LF or NUL"));
    }
    let rotate_every = match body.rotate_every.as_deref() {
        None => None,
        Some(s) => Some(humantime::parse_duration(s).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid rotate_every {s:?}: use e.g. 90d, 12w, 24h"
            ))
        })?),
    };
    let kind = match body.kind.as_deref() {
        None => None,
        Some(k) => Some(crate::vault::SecretKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid kind {k:?}: use api_key, oauth2, hmac or aws"
            ))
        })?),
    };
    let opts = SetOptions {
        description: body.description,
        hosts: body.hosts.unwrap_or_default(),
        rotate_every,
    };
    let (st, sc, nm) = (state.clone(), scope.to_string(), name.to_string());
    let (meta, undo) = blocking(move || {
        let change = Change::SetSecret {
            scope: sc,
            name: nm,
            value,
            kind,
            options: opts,
        };
        let (applied, undo) = st.vault.apply(change)?;
        Ok((applied.into_meta()?, undo))
    })
    .await?;
    // Decided inside the vault's locked write, so two concurrent PUTs of a new
    // name are one `secret_set` and one `secret_rotate`.
    let (event, status) = if undo.replaced() {
        (EventKind::SecretRotate, StatusCode::OK)
    } else {
        (EventKind::SecretSet, StatusCode::CREATED)
    };
    let mut ev = cx.event(event, Outcome::Allowed, status);
    ev.secret = Some(meta.name.clone());
    ev.scope = Some(meta.scope.clone());
    ev.version = Some(meta.version);
    audit_or_undo(state, ev, undo).await?;
    refresh(state);
    tracing::info!(scope = %meta.scope, name = %meta.name, version = meta.version, actor = ?cx.actor, "{event} via admin API");
    Ok(json_response(status, json!(meta)))
}

/// Records the audit line for a secret change, or takes the change back.
async fn audit_or_undo(
    state: &Arc<State>,
    ev: Event,
    undo: crate::vault::Undo,
) -> Result<(), ApiError> {
    let Err(e) = audit_change(state, ev) else {
        return Ok(());
    };
    // SECURITY: fail closed: a vault change that is not on record is undone (the
    // previous record goes back, still sealed), as agent creation is rolled back.
    let st = state.clone();
    let undone = blocking(move || Ok(st.vault.undo(undo)?)).await;
    refresh(state);
    Err(match undone {
        Ok(()) => ApiError {
            message: format!("{}; the change was undone", e.message),
            ..e
        },
        Err(u) => {
            tracing::error!(error = %u.message, "an unaudited vault change could not be undone");
            ApiError {
                message: format!("{}; the change could NOT be undone", e.message),
                ..e
            }
        }
    })
}

async fn delete_secret(
    state: &Arc<State>,
    cx: &Cx,
    scope: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    if find_meta(state, scope, name).is_none() {
        return Err(ApiError::not_found(format!(
            "secret {name} not found in scope {scope}"
        )));
    }
    let (st, sc, nm) = (state.clone(), scope.to_string(), name.to_string());
    let (meta, undo) = blocking(move || {
        let change = Change::RemoveSecret {
            scope: sc,
            name: nm,
        };
        let (applied, undo) = st.vault.apply(change)?;
        Ok((applied.into_meta()?, undo))
    })
    .await?;
    let mut ev = cx.event(
        EventKind::SecretRm,
        Outcome::Allowed,
        StatusCode::NO_CONTENT,
    );
    ev.secret = Some(meta.name.clone());
    ev.scope = Some(meta.scope.clone());
    ev.version = Some(meta.version);
    audit_or_undo(state, ev, undo).await?;
    refresh(state);
    tracing::info!(scope = %meta.scope, name = %meta.name, actor = ?cx.actor, "secret_rm via admin API");
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

// ---------------------------------------------------------------------------
// Agents and sessions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAgentBody {
    id: String,
    chain: Option<String>,
    owner: Option<String>,
    builder: Option<String>,
    secrets: Option<Vec<String>>,
}

const CREATE_AGENT_SHAPE: &str = r#"{"id": string, "chain"?: string, "owner"?: string, "builder"?: string, "secrets"?: [string]}"#;

async fn create_agent(
    state: &Arc<State>,
    cx: &Cx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: CreateAgentBody = read_json(req, CREATE_AGENT_SHAPE).await?;
    if !valid_agent_id(&body.id) {
        return Err(ApiError::bad_request(format!(
            "agent id {:?}: use letters, digits, '-', '_', '.' (at most 128)",
            body.id
        )));
    }
    for (what, v) in [("owner", &body.owner), ("builder", &body.builder)] {
        if let Some(v) = v {
            if !valid_agent_id(v) {
                return Err(ApiError::bad_request(format!(
                    "{what} {v:?}: use letters, digits, '-', '_', '.'"
                )));
            }
        }
    }
    let runtime = state.runtime();
    if let Some(c) = &body.chain {
        if !runtime.config.chains.iter().any(|x| &x.name == c) {
            return Err(ApiError::bad_request(format!("no chain named {c:?}")));
        }
    }
    for s in body.secrets.iter().flatten() {
        if !valid_secret_name(s) {
            return Err(ApiError::bad_request(format!(
                "secret name {s:?} must match ^[A-Z_][A-Z0-9_]*$"
            )));
        }
    }
    // SECURITY: re-registering an existing id would silently replace its token (and
    // hijack its identity in the audit trail); refuse instead.
    if runtime.config.agents.iter().any(|a| a.id == body.id) {
        return Err(ApiError::conflict(format!(
            "agent {} is defined in the config file",
            body.id
        )));
    }
    if state
        .vault
        .snapshot()
        .agents()
        .iter()
        .any(|a| a.id == body.id)
    {
        return Err(ApiError::conflict(format!(
            "agent {} already exists",
            body.id
        )));
    }
    let token = Zeroizing::new(crate::ids::new_token());
    let record = AgentRecord {
        id: body.id.clone(),
        token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
        chain: body.chain.clone(),
        owner: body.owner.clone(),
        builder: body.builder.clone(),
        secrets: body.secrets.clone(),
        created: crate::clock::now_rfc3339(),
    };
    let st = state.clone();
    // The check above is the fast path; `AddAgent` repeats it inside the
    // vault's locked write, so of two concurrent creations only one succeeds.
    let (_, undo) = blocking(move || Ok(st.vault.apply(Change::AddAgent(record))?)).await?;
    let mut ev = cx.event(EventKind::AgentAdd, Outcome::Allowed, StatusCode::CREATED);
    ev.agent = Some(body.id.clone());
    ev.chain = body.chain.clone();
    ev.owner = body.owner.clone();
    ev.builder = body.builder.clone();
    if let Err(e) = audit_change(state, ev) {
        // SECURITY: fail closed: an agent whose creation is not audited is rolled back.
        let st = state.clone();
        let _ = blocking(move || Ok(st.vault.undo(undo)?)).await;
        refresh(state);
        return Err(e);
    }
    refresh(state);
    tracing::info!(agent = %body.id, actor = ?cx.actor, "agent_add via admin API");
    Ok(json_response(
        StatusCode::CREATED,
        json!({"id": body.id, "token": token.as_str()}),
    ))
}

/// `"15m"` or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSessionBody {
    agent: String,
    run_id: String,
    ttl: Option<Ttl>,
}

const CREATE_SESSION_SHAPE: &str =
    r#"{"agent": string, "run_id": string, "ttl"?: "15m" or seconds}"#;

fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_RUN_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

async fn create_session(
    state: &Arc<State>,
    cx: &Cx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: CreateSessionBody = read_json(req, CREATE_SESSION_SHAPE).await?;
    if !valid_run_id(&body.run_id) {
        return Err(ApiError::bad_request(format!(
            "run_id: 1-{MAX_RUN_ID_LEN} letters, digits, '-', '_', '.', ':'"
        )));
    }
    let ttl = match body.ttl {
        None => DEFAULT_SESSION_TTL_SECS,
        Some(Ttl::Secs(s)) => s,
        Some(Ttl::Text(t)) => humantime::parse_duration(&t)
            .map(|d| d.as_secs())
            .map_err(|_| {
                ApiError::bad_request(format!("invalid ttl {t:?}: use e.g. 15m, 1h, or seconds"))
            })?,
    };
    if ttl == 0 {
        return Err(ApiError::bad_request("ttl must be at least 1 second"));
    }
    // SECURITY: sessions are short-lived by design; a caller cannot mint one that
    // outlives the cap.
    let ttl = ttl.min(MAX_SESSION_TTL_SECS);
    let runtime = state.runtime();
    let Some(principal) = runtime.directory.principal(&body.agent, None) else {
        return Err(ApiError::not_found(format!(
            "no agent {:?} (or its chain no longer exists)",
            body.agent
        )));
    };
    let expires = crate::clock::unix_now() + ttl;
    let key = state.vault.session_key();
    let token = Zeroizing::new(resolve::mint_session(
        &key,
        &body.agent,
        &body.run_id,
        expires,
    ));
    let mut ev = cx.event(
        EventKind::SessionCreate,
        Outcome::Allowed,
        StatusCode::CREATED,
    );
    ev.agent = Some(body.agent.clone());
    ev.run_id = Some(body.run_id.clone());
    ev.chain = principal.chain_name().map(str::to_string);
    ev.owner = principal.owner().map(str::to_string);
    ev.builder = principal.builder().map(str::to_string);
    // SECURITY: fail closed: no token leaves unless its creation is on record.
    audit_change(state, ev)?;
    let proxy_addr = state
        .dialer
        .own_addr
        .read()
        .unwrap_or(runtime.config.proxy.listen);
    tracing::info!(agent = %body.agent, run_id = %body.run_id, ttl, actor = ?cx.actor, "session_create via admin API");
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "token": token.as_str(),
            "expires_at": crate::clock::rfc3339(expires),
            "proxy_url": format!("http://{}:{}@{}", body.agent, token.as_str(), proxy_addr),
        }),
    ))
}

// ---------------------------------------------------------------------------
// Audit

/// Which audit lines `GET /v1/audit` returns: `audit::Filter` plus `run_id` and a
/// limit. Every set field must match.
#[derive(Debug)]
struct AuditQuery {
    filter: audit::Filter,
    run_id: Option<String>,
    limit: usize,
}

impl AuditQuery {
    fn parse(query: Option<&str>) -> Result<AuditQuery, ApiError> {
        let mut q = AuditQuery {
            filter: audit::Filter::default(),
            run_id: None,
            limit: DEFAULT_AUDIT_LIMIT,
        };
        let now = OffsetDateTime::now_utc();
        let time =
            |v: &str| audit::parse_time(v, now).map_err(|e| ApiError::bad_request(e.to_string()));
        for (k, v) in query_pairs(query) {
            let f = &mut q.filter;
            match k.as_str() {
                "secret" => f.secret = Some(v),
                "agent" => f.agent = Some(v),
                "chain" => f.chain = Some(v),
                "outcome" => f.outcome = Some(v),
                "event" => f.event = Some(v),
                "run_id" => q.run_id = Some(v),
                "since" => f.since = Some(time(&v)?),
                "until" => f.until = Some(time(&v)?),
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?;
                    q.limit = n.clamp(1, MAX_AUDIT_LIMIT);
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter {other:?}"
                    )))
                }
            }
        }
        Ok(q)
    }

    fn matches(&self, ev: &Event) -> bool {
        self.filter.matches(ev)
            && self
                .run_id
                .as_deref()
                .is_none_or(|r| ev.run_id.as_deref() == Some(r))
    }
}

/// The newest `limit` matching lines of the audit file set, oldest first, each as
/// written (hash included). Unreadable lines are skipped (`audit verify` reports them).
fn read_audit(path: &Path, q: &AuditQuery) -> Result<Vec<Value>, audit::AuditError> {
    let mut out = VecDeque::new();
    for rec in audit::query_iter(path, &q.filter)? {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable audit line");
                continue;
            }
        };
        if !q.matches(&rec.event) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&rec.line) else {
            continue;
        };
        if out.len() == q.limit {
            out.pop_front();
        }
        out.push_back(v);
    }
    Ok(out.into())
}

async fn query_audit(state: &State, query: Option<&str>) -> Result<Response<Body>, ApiError> {
    let q = AuditQuery::parse(query)?;
    let path: PathBuf = state.audit.path().to_path_buf();
    if path == Path::new("-") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "audit_not_queryable",
            "the audit log goes to stdout; query it where it is collected",
        ));
    }
    let lines = blocking(move || {
        read_audit(&path, &q).map_err(|e| {
            tracing::error!(error = %e, "audit log unreadable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log cannot be read",
            )
        })
    })
    .await?;
    Ok(json_response(StatusCode::OK, Value::Array(lines)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_match_and_decode() {
        assert_eq!(
            match_path("/v1/secrets/{scope}/{name}", "/v1/secrets/owner%3Aacme/KEY"),
            Some(vec!["owner:acme".to_string(), "KEY".to_string()])
        );
        assert_eq!(
            match_path("/v1/secrets/{scope}/{name}", "/v1/secrets/platform/"),
            None
        );
        assert_eq!(match_path("/v1/secrets", "/v1/secrets/"), None);
        assert_eq!(match_path("/healthz", "/healthz"), Some(vec![]));
    }

    #[test]
    fn routes_are_unique_and_permissions_parse() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {}", r.method, r.path);
        }
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn bearer_token_lookup_compares_digests() {
        let tokens = vec![AdminToken {
            name: "ops".into(),
            sha256: hex::encode(Sha256::digest(b"tok")),
            permissions: vec![],
        }];
        assert_eq!(
            find_token(&tokens, "tok").map(|t| t.name.as_str()),
            Some("ops")
        );
        assert!(find_token(&tokens, "tok2").is_none());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "Basic tok".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn audit_query_parses_and_matches() {
        let q = AuditQuery::parse(Some("agent=a1&outcome=denied&run_id=r%3A1&limit=5")).unwrap();
        assert_eq!(q.limit, 5);
        let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
        ev.agent = Some("a1".into());
        ev.run_id = Some("r:1".into());
        assert!(q.matches(&ev));
        ev.run_id = Some("r:2".into());
        assert!(!q.matches(&ev));
        assert!(AuditQuery::parse(Some("agnet=a1")).is_err());
        assert!(AuditQuery::parse(Some("since=yesterday-ish")).is_err());
    }
}
