//! Sessions through the admin API: a short-lived proxy token for one agent and
//! one run (`run_id` is copied into every audit line the session causes).
//!
//! [`create`] is the logic (validate, mint, audit); [`http_create`] only parses
//! the request and renders the answer.

use super::caller::{record_change, Caller};
use super::json::{json_response, read_json};
use crate::audit::{EventKind, Outcome};
use crate::body::Body;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use crate::resolve::{self, MAX_SESSION_TTL_SECS};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Session lifetime when `POST /v1/sessions` names none.
pub const DEFAULT_SESSION_TTL_SECS: u64 = 15 * 60;
/// Longest `run_id` a session may carry (it is copied into every audit line).
pub const MAX_RUN_ID_LEN: usize = 128;

/// `"15m"` or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    Secs(u64),
    Text(String),
}

/// What `POST /v1/sessions` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub agent: String,
    pub run_id: String,
    pub ttl: Option<Ttl>,
}

pub const NEW_SESSION_SHAPE: &str =
    r#"{"agent": string, "run_id": string, "ttl"?: "15m" or seconds}"#;

/// A minted session: the token (shown once), when it dies, and the proxy to use.
pub struct Issued {
    pub agent: String,
    pub token: Zeroizing<String>,
    /// Unix seconds.
    pub expires: u64,
    pub proxy_addr: SocketAddr,
}

impl Issued {
    /// `http://AGENT:TOKEN@PROXY`, for `HTTPS_PROXY`.
    pub fn proxy_url(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "http://{}:{}@{}",
            self.agent,
            self.token.as_str(),
            self.proxy_addr
        ))
    }
}

fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_RUN_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn bad(message: impl Into<String>) -> Deny {
    Deny::new(Code::BadRequest, message)
}

/// Mints a session token for `body.agent`; no token leaves unless audited.
pub fn create(state: &State, caller: &Caller, body: NewSession) -> Result<Issued, Deny> {
    if !valid_run_id(&body.run_id) {
        return Err(bad(format!(
            "run_id: 1-{MAX_RUN_ID_LEN} letters, digits, '-', '_', '.', ':'"
        )));
    }
    let ttl = match body.ttl {
        None => DEFAULT_SESSION_TTL_SECS,
        Some(Ttl::Secs(s)) => s,
        Some(Ttl::Text(t)) => humantime::parse_duration(&t)
            .map(|d| d.as_secs())
            .map_err(|_| bad(format!("invalid ttl {t:?}: use e.g. 15m, 1h, or seconds")))?,
    };
    if ttl == 0 {
        return Err(bad("ttl must be at least 1 second"));
    }
    // SECURITY: sessions are short-lived by design; a caller cannot mint one that
    // outlives the cap.
    let ttl = ttl.min(MAX_SESSION_TTL_SECS);
    let runtime = state.runtime();
    let Some(principal) = runtime.directory.principal(&body.agent, None) else {
        return Err(Deny::new(
            Code::NotFound,
            format!("no agent {:?} (or its chain no longer exists)", body.agent),
        ));
    };
    let expires = crate::clock::unix_now() + ttl;
    let key = state.vault.session_key();
    let token = Zeroizing::new(resolve::mint_session(
        &key,
        &body.agent,
        &body.run_id,
        expires,
    ));
    let mut ev = caller.event(
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
    record_change(state, ev)?;
    let proxy_addr = state
        .dialer
        .own_addr
        .read()
        .unwrap_or(runtime.config.proxy.listen);
    tracing::info!(agent = %body.agent, run_id = %body.run_id, ttl, actor = ?caller.actor, "session_create via admin API");
    Ok(Issued {
        agent: body.agent,
        token,
        expires,
        proxy_addr,
    })
}

/// `POST /v1/sessions`: 201 `{token, expires_at, proxy_url}`.
pub async fn http_create(
    state: &Arc<State>,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, Deny> {
    let body: NewSession = read_json(req, NEW_SESSION_SHAPE).await?;
    let issued = create(state, caller, body)?;
    Ok(json_response(
        StatusCode::CREATED,
        json!({
            "token": issued.token.as_str(),
            "expires_at": crate::clock::rfc3339(issued.expires),
            "proxy_url": issued.proxy_url().as_str(),
        }),
    ))
}
