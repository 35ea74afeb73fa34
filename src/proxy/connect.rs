//! The outer proxy protocol: authenticate the CONNECT, decide (intercept | tunnel |
//! deny) on its authority, and set up what follows the `200`.

use super::error::{Code, Deny};
use super::intercept::intercept;
use super::limits::TunnelSlot;
use super::refuse::refuse;
use super::relay::relay;
use super::state::State;
use super::tunnel::{upstream_authority, TunnelCx};
use super::upstream::UpstreamClient;
use super::{empty, Body};
use crate::audit::{Event, EventKind, Outcome};
use crate::metrics::GaugeGuard;
use crate::policy::{self, Route};
use crate::resolve::Principal;
use base64::Engine;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A client connection's share of `proxy.max_connections`, held by the
/// connection and by the tunnel it turns into.
pub type ConnSlot = Arc<tokio::sync::OwnedSemaphorePermit>;

/// Entry point for every request on a client connection to keyward.
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    slot: ConnSlot,
    client: UpstreamClient,
) -> Result<Response<Body>, Infallible> {
    let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
    ev.request_id = Some(crate::ids::request_id());
    ev.method = Some(req.method().to_string());
    let result = if req.method() == Method::CONNECT {
        connect(&state, req, &mut ev, slot, client).await
    } else {
        cleartext(&state, &req, &mut ev)
    };
    Ok(match result {
        Ok(resp) => resp,
        Err(deny) => {
            let mut resp = refuse(&state, &deny, ev);
            deny.add_proxy_status(&mut resp);
            resp
        }
    })
}

/// `id:token` from `Proxy-Authorization: Basic …`.
fn proxy_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    let value = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, token) = text.split_once(':')?;
    Some((id.to_string(), token.to_string()))
}

fn authenticate(state: &State, req: &Request<Incoming>, ev: &mut Event) -> Result<Principal, Deny> {
    // One message for a missing and a wrong token alike: which one it was (or
    // whether the id exists) is not the caller's to learn.
    let denied = || {
        Deny::new(
            Code::ProxyAuthRequired,
            "send Proxy-Authorization: Basic base64(agent_id:token) \
             (HTTPS_PROXY=http://AGENT_ID:TOKEN@host:port, from `keyward env`); \
             the agent id or its token was missing or wrong",
        )
    };
    let (id, token) = proxy_credentials(req).ok_or_else(denied)?;
    let runtime = state.runtime();
    // SECURITY: the token is compared as a SHA-256 digest in constant time; it is
    // never logged.
    let Some(principal) = runtime
        .directory
        .authenticate(&id, &token, crate::clock::unix_now())
    else {
        // SECURITY: the claimed id goes into the audit line only when it names a
        // known agent (a wrong token for a real agent is worth seeing). Anything
        // else may be a token: `HTTPS_PROXY=http://kwa_…@keyward` sends the token
        // as the user name, and the audit log never holds a token.
        if runtime.directory.knows(&id) {
            ev.agent = Some(id);
        }
        return Err(denied());
    };
    note_principal(ev, &principal);
    Ok(principal)
}

async fn connect(
    state: &Arc<State>,
    mut req: Request<Incoming>,
    ev: &mut Event,
    conn_slot: ConnSlot,
    client: UpstreamClient,
) -> Result<Response<Body>, Deny> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let (host, port) = policy::split_authority(&authority)
        .ok_or_else(|| Deny::new(Code::BadRequest, "CONNECT needs host:port"))?;
    ev.host = Some(host.clone());
    let principal = authenticate(state, &req, ev)?;
    if host == super::jail_report::REPORT_HOST {
        return super::jail_report::record(state, &req, ev);
    }
    let (admitted, slot) = admit(state, &principal, host, port, ev, client).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    let open = GaugeGuard::new(&state.metrics.open_tunnels);
    let idle = state.limits.idle_timeout.0;
    tokio::spawn(async move {
        let _open = (open, slot, conn_slot);
        match upgrade.await {
            Ok(client) => match admitted {
                Admitted::Tunnel(upstream) => relay(TokioIo::new(client), upstream, idle).await,
                Admitted::Intercept(cx) => intercept(cx, TokioIo::new(client)).await,
            },
            Err(e) => tracing::debug!(error = %e, "tunnel upgrade failed"),
        }
    });
    Ok(ok_200())
}

/// What an allowed tunnel becomes.
pub(super) enum Admitted {
    /// Allowlisted: already dialled and audited; bytes are relayed.
    Tunnel(TcpStream),
    /// A provider: TLS is opened toward the agent with this context.
    Intercept(Arc<TunnelCx>),
}

/// The egress decision for `host:port` (canonical) as `principal`, the same for a
/// CONNECT and the transparent listener: route, the agent's tunnel slot and rate,
/// then the dial (before the agent is answered, so a refusal is a status) or the
/// intercepted tunnel's context.
pub(super) async fn admit(
    state: &Arc<State>,
    principal: &Principal,
    host: String,
    port: u16,
    ev: &mut Event,
    client: UpstreamClient,
) -> Result<(Admitted, TunnelSlot), Deny> {
    // SECURITY: the egress policy decides before any dial: only listed ports,
    // no private address literal, a provider (intercepted) or an allowlisted host.
    let route = state.runtime().policy.route(&host, port)?;
    let slot = state
        .limiter
        .open_tunnel(&principal.agent.id, state.limits.max_connections_per_agent)?;
    state.rate_check(&principal.agent.id)?;
    match route {
        Route::Tunnel => {
            let upstream = state
                .dialer
                .connect(&host, port)
                .await
                .map_err(|e| e.deny())?;
            ev.event = EventKind::Tunnel;
            ev.outcome = Outcome::Allowed;
            ev.status = Some(200);
            ev.connection_id = None;
            // SECURITY: fail closed: no audit line, no tunnel.
            state.audit.record(ev.clone()).map_err(|_| {
                Deny::new(Code::AuditUnavailable, "the audit log cannot be written")
            })?;
            Ok((Admitted::Tunnel(upstream), slot))
        }
        Route::Intercept(_) => {
            let authority = upstream_authority(&host, port)
                .ok_or_else(|| Deny::new(Code::BadRequest, "invalid tunnel host"))?;
            let cx = Arc::new(TunnelCx {
                state: state.clone(),
                agent_id: principal.agent.id.clone(),
                run_id: principal.run_id.clone(),
                expires: principal.expires,
                host,
                port,
                authority,
                client,
            });
            Ok((Admitted::Intercept(cx), slot))
        }
    }
}

/// The event's who: the agent and its run, owner, builder and chain.
pub(super) fn note_principal(ev: &mut Event, principal: &Principal) {
    ev.agent = Some(principal.agent.id.clone());
    ev.run_id = principal.run_id.clone();
    ev.owner = principal.owner().map(str::to_string);
    ev.builder = principal.builder().map(str::to_string);
    ev.chain = principal.chain_name().map(str::to_string);
}

fn ok_200() -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Plain `http://` through the proxy: never a credential over cleartext.
fn cleartext(
    state: &State,
    req: &Request<Incoming>,
    ev: &mut Event,
) -> Result<Response<Body>, Deny> {
    let host = req.uri().host().and_then(policy::canonical_host);
    ev.host = host.clone();
    ev.path = Some(req.uri().path().to_string());
    let Some(host) = host else {
        return Err(Deny::new(
            Code::BadRequest,
            "keyward is a proxy: send CONNECT or an absolute-form URL",
        ));
    };
    authenticate(state, req, ev)?;
    // SECURITY: credentials are only ever injected over TLS; refusing here also
    // keeps a dummy key sent in clear from being "upgraded" by us.
    if state.runtime().policy.provider_for(&host).is_some() {
        return Err(Deny::new(
            Code::CleartextRefused,
            "use https:// for provider hosts",
        ));
    }
    Err(Deny::new(
        Code::CleartextRefused,
        "plain http is not proxied; use https://",
    ))
}
