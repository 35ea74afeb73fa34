//! THE request path inside an intercepted tunnel, top to bottom (SPEC §6.5–6.7):
//! host check → who is asking, now → which provider → which credential → strip and
//! inject → send over verified TLS → one audit line → redacted response.

use super::error::{Code, Deny};
use super::state::{Runtime, State};
use super::{credentials, inject, upstream, Body};
use crate::audit::Event;
use crate::clock::unix_now;
use crate::ids::request_id;
use crate::policy::{self, Provider};
use crate::redact;
use crate::resolve::{self, Principal};
use crate::secret::Secret;
use http::header::{self, HeaderName};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Audit event of a request that was injected and then failed upstream.
pub const UPSTREAM_ERROR_EVENT: &str = "upstream_error";

/// Connection-level headers that never cross a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One intercepted tunnel: the identity and target fixed at CONNECT time.
pub struct TunnelCx {
    pub state: Arc<State>,
    pub agent_id: String,
    pub run_id: Option<String>,
    pub expires: Option<u64>,
    /// Canonical CONNECT host and port.
    pub host: String,
    pub port: u16,
    /// `host[:port]` toward the upstream (port omitted when 443), built once.
    pub authority: http::uri::Authority,
    /// The upstream pool of the worker this tunnel runs on.
    pub client: super::upstream::UpstreamClient,
}

/// `host[:port]` for the upstream URI (port omitted when 443; IPv6 in brackets).
pub fn upstream_authority(host: &str, port: u16) -> Option<http::uri::Authority> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let text = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    text.parse().ok()
}

pub async fn handle(
    cx: Arc<TunnelCx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut ev = Event::new("inject", "allowed");
    ev.request_id = Some(request_id());
    ev.agent = Some(cx.agent_id.clone());
    ev.run_id = cx.run_id.clone();
    ev.host = Some(cx.host.clone());
    ev.method = Some(req.method().to_string());
    // Path only: the query string may carry data the agent considers private.
    ev.path = Some(req.uri().path().to_string());
    // Boxed: hyper keeps a connection's in-flight slot allocated while it is idle,
    // sized for this future; boxed, an idle tunnel holds a pointer, not the
    // request path's whole state (~5.5 KiB).
    match Box::pin(forward(&cx, req, &mut ev)).await {
        Ok(resp) => Ok(resp),
        Err(deny) => Ok(refuse(&cx.state, deny, ev)),
    }
}

async fn forward(
    cx: &Arc<TunnelCx>,
    mut req: Request<Incoming>,
    ev: &mut Event,
) -> Result<Response<Body>, Deny> {
    let client_upgrade = is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // SECURITY: the Host inside the tunnel must be the CONNECT host, or an agent
    // could tunnel to a cheap host and ask for an expensive provider's key.
    check_host(&parts.headers, &parts.uri, &cx.host, cx.port)?;

    // Who is asking, now (identity fixed per tunnel, re-checked per request).
    let rt = cx.state.runtime();
    let principal = current_principal(cx, &rt, ev)?;

    // Which provider, and may this agent call this endpoint of it.
    let provider = provider_for(cx, &rt, &principal, &parts, ev)?;

    // Which credential: scope, then tier (SPEC §5).
    let snapshot = cx.state.vault.snapshot();
    let grant = credential_for(cx, &principal, &provider, &*snapshot, ev)?;
    // What the answer is redacted of: every credential this agent could be
    // granted, not only this request's (cached per agent and vault snapshot).
    let in_scope = in_scope_secrets(cx, &principal, &snapshot)?;

    // Strip the agent's credentials, fill placeholders, inject or sign.
    let mut secrets = rewrite_request(
        cx,
        &rt,
        &principal,
        &provider,
        &grant,
        &*snapshot,
        &mut parts,
        client_upgrade.is_some(),
    )?;
    let (body, too_large) = limit_body(cx, &parts, body)?;
    let (body, retry) =
        credentials::apply(&cx.state, &provider, &grant, &mut parts, body, &mut secrets).await?;

    // SECURITY: fail closed: the decision is on disk before the credential leaves
    // keyward; if the audit log cannot be written nothing is sent upstream.
    if let Err(e) = cx.state.audit.commit(ev).await {
        tracing::error!(error = %e, "audit log unwritable: refusing");
        return Err(Deny::new(
            Code::AuditUnavailable,
            "the audit log cannot be written",
        ));
    }
    // From here on a refusal is an upstream failure, logged as its own event.
    ev.event = UPSTREAM_ERROR_EVENT.into();

    // Over verified TLS; an OAuth2 token the provider rejects is refreshed once.
    let started = std::time::Instant::now();
    let head = parts.method == http::Method::HEAD;
    let req = Request::from_parts(parts, body);
    let resp = match client_upgrade {
        // A WebSocket: after `101` its frames go through the same redaction.
        Some(agent_side) => {
            let frames = (
                in_scope.patterns(&cx.state.patterns, &secrets),
                on_redact(cx.state.clone(), ev.clone()),
            );
            upgrade(cx, req, agent_side, frames).await?
        }
        None => send(cx, req, &too_large).await?,
    };
    let resp =
        credentials::retry_unauthorized(&cx.state, &provider, resp, retry, &mut secrets).await?;
    cx.state
        .metrics
        .inject(&provider.name, started.elapsed().as_secs_f64());

    // The answer goes back with every in-scope secret redacted: a small one of
    // declared length read whole, anything else as it streams. An answer that
    // cannot be redacted (unsupported content-encoding, no working matcher) is
    // refused here, before its head goes out, as an `upstream_error` line; a
    // streamed body found corrupt later can only end as a body error.
    let patterns = in_scope.patterns(&cx.state.patterns, &secrets);
    let answer =
        redact::read_answer(resp, &patterns, head, cx.state.limits.response_timeout.0).await?;
    // The caller has no further use for the event once the response is ours.
    Ok(redact::redact_upstream(
        answer,
        patterns,
        Some(on_redact(cx.state.clone(), std::mem::take(ev))),
    ))
}

/// The tunnel's provider (config reloads may have changed it) and the agent's
/// request rules for it.
fn provider_for(
    cx: &TunnelCx,
    rt: &Runtime,
    principal: &Principal,
    parts: &http::request::Parts,
    ev: &mut Event,
) -> Result<Arc<Provider>, Deny> {
    let provider = rt
        .policy
        .provider_for(&cx.host)
        .cloned()
        .ok_or_else(|| Deny::new(Code::HostNotAllowed, "host is no longer a provider host"))?;
    ev.provider = Some(provider.name.clone());
    ev.connection_id = Some(principal.connection_id(&provider.name));
    ev.secret = Some(provider.secret.clone());
    // SECURITY: request rules are checked before any credential is resolved or
    // attached, so a disallowed endpoint never sees the key.
    principal.check_rules(&provider.name, parts.method.as_str(), parts.uri.path())?;
    Ok(provider)
}

/// Scope + tier resolution, and the record's own host restriction.
fn credential_for(
    cx: &TunnelCx,
    principal: &Principal,
    provider: &Provider,
    snapshot: &dyn resolve::SecretSource,
    ev: &mut Event,
) -> Result<resolve::Grant, Deny> {
    let grant = resolve::grant(principal, &provider.secret, snapshot)?;
    ev.scope = Some(grant.scope.clone());
    ev.tier = Some(grant.tier.as_str().to_string());
    ev.version = Some(grant.version);
    // SECURITY: a record restricted with --hosts goes only to those hosts.
    let bound = grant.hosts.is_empty()
        || grant
            .hosts
            .iter()
            .any(|h| policy::host_matches(h, &cx.host));
    if !bound {
        return Err(resolve::Refusal::HostNotBound(grant.name.clone()).into());
    }
    Ok(grant)
}

/// Every secret value this agent could be granted (SPEC §5), for redaction.
fn in_scope_secrets(
    cx: &TunnelCx,
    principal: &Principal,
    snapshot: &Arc<crate::vault::Snapshot>,
) -> Result<Arc<redact::InScope>, Deny> {
    cx.state.scopes.get(principal, snapshot, || {
        // SECURITY: a value that cannot be read cannot be redacted: refuse
        // (before anything is sent) rather than answer with a gap in the set.
        let grants = resolve::grantable(principal, &**snapshot)?;
        let mut values = Vec::with_capacity(grants.len());
        for g in &grants {
            credentials::redaction_values(g, &mut values);
        }
        Ok::<_, Deny>(values)
    })
}

/// Removes client credentials and hop-by-hop headers, fills `{{NAME}}`
/// placeholders and points the request at the upstream. Returns every secret the
/// request now carries (for response redaction).
#[allow(clippy::too_many_arguments)]
fn rewrite_request(
    cx: &TunnelCx,
    rt: &Runtime,
    principal: &Principal,
    provider: &Provider,
    grant: &resolve::Grant,
    snapshot: &dyn resolve::SecretSource,
    parts: &mut http::request::Parts,
    websocket: bool,
) -> Result<Vec<Secret>, Deny> {
    inject::strip_credentials(&mut parts.headers, provider);
    strip_hop_by_hop(&mut parts.headers);
    if websocket {
        // SECURITY: no compression extension: the relay must read every frame
        // the upstream sends to redact it (a frame that still claims one ends
        // the connection).
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        parts.headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        parts
            .headers
            .insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
    // Ask for an identity-encoded answer: redaction then never has to decode.
    redact::prepare_request(&mut parts.headers);
    let mut secrets: Vec<Secret> = vec![grant.value.clone()];
    inject::replace_placeholders(&mut parts.headers, |name| {
        let g = placeholder_grant(rt, principal, &cx.host, name, snapshot)?;
        secrets.push(g.value.clone());
        Ok(g.value)
    })?;
    parts.uri = upstream_uri(cx, &parts.uri)?;
    parts.version = Version::HTTP_11;
    parts.headers.remove(header::HOST);
    Ok(secrets)
}

/// Caps the request body at `proxy.max_body_bytes`: a declared length over it is
/// refused now, a streamed body when it gets there. The flag records the latter,
/// since hyper may report it as a stream reset (h2).
fn limit_body(
    cx: &TunnelCx,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<(Body, Arc<AtomicBool>), Deny> {
    let max_body = cx.state.limits.max_body_bytes.0;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(too_large(max_body));
    }
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let body: Body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                flag.store(true, Ordering::Relaxed);
            }
            e
        })
        .boxed();
    Ok((body, too_large))
}

fn too_large(max_body: u64) -> Deny {
    Deny::new(
        Code::PayloadTooLarge,
        format!("request body is larger than {max_body} bytes"),
    )
}

/// Through this worker's pooled verified-TLS client.
async fn send(
    cx: &Arc<TunnelCx>,
    req: Request<Body>,
    body_too_large: &AtomicBool,
) -> Result<Response<Body>, Deny> {
    let sent =
        tokio::time::timeout(cx.state.limits.response_timeout.0, cx.client.request(req)).await;
    match sent {
        Err(_) => Err(Deny::new(
            Code::UpstreamTimeout,
            "upstream did not answer in time",
        )),
        Ok(Err(_)) if body_too_large.load(Ordering::Relaxed) => {
            Err(too_large(cx.state.limits.max_body_bytes.0))
        }
        Ok(Err(e)) => Err(upstream::classify(&e)),
        Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
    }
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

/// A WebSocket handshake (credential injected like any request) on its own
/// HTTP/1.1 connection; after `101` the agent's frames are relayed as bytes and
/// the upstream's are redacted (`websocket::relay`).
async fn upgrade(
    cx: &Arc<TunnelCx>,
    req: Request<Body>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    (patterns, on_frame_redact): (Arc<redact::Patterns>, redact::OnRedact),
) -> Result<Response<Body>, Deny> {
    use hyper_util::rt::TokioIo;
    let state = &cx.state;
    // A bare HTTP/1.1 connection wants origin-form and a Host header.
    let (mut parts, body) = req.into_parts();
    let authority = cx.authority.as_str();
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| Deny::new(Code::BadRequest, "invalid request target"))?;
    parts.headers.insert(
        header::HOST,
        http::HeaderValue::from_str(authority)
            .map_err(|_| Deny::new(Code::BadRequest, "invalid host"))?,
    );
    let req = Request::from_parts(parts, body);
    let tls = state
        .dialer
        .connect_tls(&cx.host, cx.port, &state.upgrade_tls)
        .await
        .map_err(|e| e.deny())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|_| Deny::new(Code::UpstreamProtocol, "upstream handshake failed"))?;
    tokio::spawn(conn.with_upgrades());
    let mut resp = tokio::time::timeout(state.limits.response_timeout.0, sender.send_request(req))
        .await
        .map_err(|_| Deny::new(Code::UpstreamTimeout, "upstream did not answer in time"))?
        .map_err(|_| {
            Deny::new(
                Code::UpstreamProtocol,
                "upstream refused the upgrade request",
            )
        })?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = state.limits.idle_timeout.0;
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                super::websocket::relay(
                    TokioIo::new(client),
                    TokioIo::new(upstream),
                    patterns,
                    idle,
                    on_frame_redact,
                )
                .await;
            }
        });
    }
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

fn current_principal(cx: &TunnelCx, rt: &Runtime, ev: &mut Event) -> Result<Principal, Deny> {
    // SECURITY: identity is fixed per tunnel but re-checked per request, so a
    // removed agent or an expired session stops at the next request.
    let principal = rt
        .directory
        .principal(&cx.agent_id, cx.run_id.clone())
        .ok_or_else(|| Deny::new(Code::AgentRevoked, "this agent is no longer registered"))?;
    if let Some(expires) = cx.expires {
        if expires <= unix_now() {
            return Err(Deny::new(
                Code::AgentRevoked,
                "the session token has expired",
            ));
        }
    }
    cx.state.rate_check(&cx.agent_id)?;
    ev.owner = principal.owner().map(str::to_string);
    ev.builder = principal.builder().map(str::to_string);
    ev.chain = principal.chain_name().map(str::to_string);
    Ok(principal)
}

/// A `{{NAME}}` placeholder may be filled only when NAME is in the agent's scope
/// AND this host is one NAME is bound to.
fn placeholder_grant(
    rt: &Runtime,
    principal: &Principal,
    host: &str,
    name: &str,
    snapshot: &dyn resolve::SecretSource,
) -> Result<resolve::Grant, Deny> {
    let refuse = |why: &str| {
        Deny::new(
            Code::PlaceholderNotAllowed,
            format!("placeholder {{{{{name}}}}}: {why}"),
        )
    };
    let g = resolve::grant(principal, name, snapshot).map_err(|r| refuse(&r.to_string()))?;
    // SECURITY: without the host binding an agent could send {{OPENAI_API_KEY}}
    // to any provider host it can reach and read it back from a logging endpoint.
    if !rt.policy.host_bound_to(name, host, &g.hosts) {
        return Err(refuse("the secret is not bound to this host"));
    }
    // SECURITY: a multi-field value (OAuth2 client secret + refresh token, AWS
    // secret key) must never be pasted into a header as it is stored.
    if !g.kind.is_api_key() {
        return Err(refuse(
            "secrets of this kind cannot be used as placeholders",
        ));
    }
    Ok(g)
}

/// Writes the one audit line of a refusal and renders it.
fn refuse(state: &State, deny: Deny, mut ev: Event) -> Response<Body> {
    let agent = ev.agent.clone();
    let host = ev.host.clone();
    state.metrics.deny(deny.code.as_str());
    if !ev.event.is_empty() {
        if ev.event != UPSTREAM_ERROR_EVENT {
            ev.event = "deny".into();
        }
        ev.outcome = if deny.code.status().is_server_error() {
            "error".into()
        } else {
            "denied".into()
        };
        ev.reason = Some(deny.code.as_str().to_string());
        ev.status = Some(deny.code.status().as_u16());
        if let Err(e) = state.audit.record(ev) {
            tracing::error!(error = %e, "audit log unwritable while refusing");
        }
    }
    tracing::info!(
        code = deny.code.as_str(),
        agent = agent.as_deref(),
        host = host.as_deref(),
        "refused"
    );
    deny.response(agent.as_deref(), host.as_deref())
}

fn on_redact(state: Arc<State>, mut ev: Event) -> redact::OnRedact {
    ev.status = None;
    Box::new(move || {
        state.metrics.redactions.inc();
        let mut line = ev;
        line.event = "redact".into();
        line.outcome = "allowed".into();
        line.reason = Some("upstream echoed a secret; redacted".into());
        if let Err(e) = state.audit.record(line) {
            tracing::error!(error = %e, "audit log unwritable while recording a redaction");
        }
    })
}

fn check_host(headers: &HeaderMap, uri: &Uri, host: &str, port: u16) -> Result<(), Deny> {
    let mismatch = || {
        Deny::new(
            Code::HostMismatch,
            format!("this tunnel is for {host}; the request names another host"),
        )
    };
    let matches = |authority: &str| -> bool {
        let (h, p) = match policy::split_authority(authority) {
            Some((h, p)) => (h, p),
            None => match policy::canonical_host(authority) {
                Some(h) => (h, 443),
                None => return false,
            },
        };
        h == host && p == port
    };
    let mut seen = false;
    if let Some(auth) = uri.authority() {
        seen = true;
        if !matches(auth.as_str()) {
            return Err(mismatch());
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    if let Some(v) = hosts.next() {
        seen = true;
        // SECURITY: duplicate Host headers are ambiguous (which one does the
        // upstream use?); refuse rather than guess.
        if hosts.next().is_some() || !v.to_str().is_ok_and(matches) {
            return Err(mismatch());
        }
    }
    if !seen {
        return Err(Deny::new(Code::BadRequest, "request has no Host"));
    }
    Ok(())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn upstream_uri(cx: &TunnelCx, uri: &Uri) -> Result<Uri, Deny> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("https")
        .authority(cx.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Deny::new(Code::BadRequest, "invalid request target"))
}
