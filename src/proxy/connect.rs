//! The outer proxy protocol: authenticate the CONNECT, decide (intercept | tunnel |
//! deny) on its authority, and set up what follows the `200`.

use super::error::{Code, Deny};
use super::limits::{Activity, InFlightBody, Tracked};
use super::pipeline::{self, TunnelCx};
use super::refuse::refuse;
use super::state::State;
use super::upstream::UpstreamClient;
use super::{empty, Body};
use crate::audit::{Event, EventKind, Outcome};
use crate::metrics::GaugeGuard;
use crate::policy::{self, Route};
use crate::resolve::Principal;
use base64::Engine;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Streams an h2 client may open at once inside one tunnel.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Resets a client may provoke before the connection is closed (rapid-reset guard).
pub const H2_MAX_PENDING_RESETS: usize = 32;
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 64;

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
        Err(deny) => refuse(&state, &deny, ev),
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
    let denied = || {
        Deny::new(
            Code::ProxyAuthRequired,
            "send Proxy-Authorization: Basic base64(agent_id:token)",
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
    ev.agent = Some(principal.agent.id.clone());
    ev.run_id = principal.run_id.clone();
    ev.owner = principal.owner().map(str::to_string);
    ev.builder = principal.builder().map(str::to_string);
    ev.chain = principal.chain_name().map(str::to_string);
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
    let route = state.runtime().policy.route(&host, port)?;
    let slot = state
        .limiter
        .open_tunnel(&principal.agent.id, state.limits.max_connections_per_agent)?;
    state.rate_check(&principal.agent.id)?;
    match route {
        Route::Tunnel => {
            // Dial before answering 200, so a refusal reaches the agent as a status.
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
            let idle = state.limits.idle_timeout.0;
            let upgrade = hyper::upgrade::on(&mut req);
            let open = GaugeGuard::new(&state.metrics.open_tunnels);
            tokio::spawn(async move {
                let _open = (open, slot, conn_slot);
                match upgrade.await {
                    Ok(client) => relay(TokioIo::new(client), upstream, idle).await,
                    Err(e) => tracing::debug!(error = %e, "tunnel upgrade failed"),
                }
            });
            Ok(ok_200())
        }
        Route::Intercept(_) => {
            let Some(authority) = super::pipeline::upstream_authority(&host, port) else {
                return Err(Deny::new(Code::BadRequest, "invalid CONNECT host"));
            };
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
            let upgrade = hyper::upgrade::on(&mut req);
            let open = GaugeGuard::new(&state.metrics.open_tunnels);
            tokio::spawn(async move {
                let _open = (open, slot, conn_slot);
                match upgrade.await {
                    Ok(client) => intercept(cx, client).await,
                    Err(e) => tracing::debug!(error = %e, "tunnel upgrade failed"),
                }
            });
            Ok(ok_200())
        }
    }
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

/// TLS toward the agent with a leaf for the CONNECT host, then the pipeline for
/// every request on it (HTTP/1.1 or h2 by ALPN).
async fn intercept(cx: Arc<TunnelCx>, client: Upgraded) {
    let config = match cx.state.ca.server_config(&cx.host).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, host = %cx.host, "cannot mint leaf");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    // SECURITY: the handshake is bounded like a request head: an agent that opens
    // a tunnel and never finishes TLS would otherwise hold a connection slot forever.
    let tls = match tokio::time::timeout(
        cx.state.limits.header_read_timeout.0,
        acceptor.accept(TokioIo::new(client)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, host = %cx.host, "agent TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // SECURITY: SNI must name the CONNECT host; a client asking for another name
    // inside this tunnel is confused or probing.
    if let Some(sni) = tls.get_ref().1.server_name() {
        if policy::canonical_host(sni).as_deref() != Some(cx.host.as_str()) {
            tracing::info!(host = %cx.host, "SNI does not match the CONNECT host; closing");
            return;
        }
    }
    let limits = &cx.state.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's header timer also runs while a keep-alive connection waits for its
    // next request, so inside an (authenticated, per-agent capped) tunnel it is the
    // idle timeout: SDK connection pools keep tunnels idle between calls.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    let activity = Activity::new();
    let svc_cx = cx.clone();
    let svc_activity = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        // In flight from here until the response body has ended (see `Activity`).
        let in_flight = svc_activity.begin();
        let answer = pipeline::handle(svc_cx.clone(), req);
        async move {
            let resp = answer.await?;
            Ok::<_, Infallible>(resp.map(|body| InFlightBody::new(body, in_flight)))
        }
    });
    let io = TokioIo::new(Tracked::new(tls, activity.clone()));
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // SECURITY: an idle tunnel is closed after `idle_timeout`. hyper itself waits
    // without limit for the first bytes (h1/h2 detection) and has no idle limit
    // for h2, so a silent tunnel would otherwise hold a connection slot and the
    // agent's tunnel quota forever.
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = activity.idle(limits.idle_timeout.0) => {
            tracing::debug!(host = %cx.host, "idle tunnel closed");
            // Nothing is in flight, so a graceful close loses nothing (h2 says
            // GOAWAY); a peer that does not take part in it is dropped.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, host = %cx.host, "intercepted connection ended with an error");
    }
}

/// How long an idle tunnel's graceful close may take before the connection is dropped.
pub const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// hyper refuses a `max_buf_size` below this.
pub const MIN_BUF: usize = 8192;

/// Copies bytes both ways until either side closes or nothing moves for `idle`.
pub async fn relay<A, B>(mut a: A, mut b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(&mut a);
    let (mut br, mut bw) = tokio::io::split(&mut b);
    let mut abuf = vec![0u8; RELAY_BUF];
    let mut bbuf = vec![0u8; RELAY_BUF];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => match r {
                Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; }
                Ok(n) => if bw.write_all(&abuf[..n]).await.is_err() { break },
            },
            r = br.read(&mut bbuf), if b_open => match r {
                Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; }
                Ok(n) => if aw.write_all(&bbuf[..n]).await.is_err() { break },
            },
            _ = tokio::time::sleep(idle) => break,
        }
    }
}

/// Relay buffer per direction.
pub const RELAY_BUF: usize = 16 * 1024;
