//! THE request path inside an intercepted tunnel, top to bottom (SPEC §6.5–6.7):
//! host check → who is asking, now → which provider → which credential → strip and
//! inject → send over verified TLS → one audit line → redacted response.

use super::error::{Code, Deny};
use super::refuse::refuse;
use super::request::{self, Call};
use super::state::State;
use super::tunnel::TunnelCx;
use super::{inject, upgrade, upstream, Body};
use crate::audit::{Event, EventKind, Outcome};
use crate::ids::request_id;
use crate::redact;
use http::{Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub async fn handle(
    cx: Arc<TunnelCx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut ev = Event::new(EventKind::Inject, Outcome::Allowed);
    ev.request_id = Some(request_id());
    ev.agent = Some(cx.agent_id.clone());
    ev.run_id = cx.run_id.clone();
    ev.host = Some(cx.host.clone());
    ev.method = Some(req.method().as_str().to_owned());
    // Path only: the query string may carry data the agent considers private.
    ev.path = Some(req.uri().path().to_string());
    // Boxed: hyper keeps a connection's in-flight slot allocated while it is idle,
    // sized for this future; boxed, an idle tunnel holds a pointer, not the
    // request path's whole state (~5.5 KiB).
    match Box::pin(forward(&cx, req, &mut ev)).await {
        Ok(resp) => Ok(resp),
        Err(deny) => Ok(refuse(&cx.state, &deny, ev)),
    }
}

async fn forward(
    cx: &Arc<TunnelCx>,
    mut req: Request<Incoming>,
    ev: &mut Event,
) -> Result<Response<Body>, Deny> {
    let client_upgrade = request::is_websocket_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // SECURITY: the Host inside the tunnel must be the CONNECT host, or an agent
    // could tunnel to a cheap host and ask for an expensive provider's key.
    request::check_host(&parts.headers, &parts.uri, &cx.host, cx.port)?;

    // Who is asking (now), which provider and rules, which credential (SPEC §5).
    let call = Call::resolve(cx, &parts, ev)?;
    // What the answer is redacted of: every credential this agent could be
    // granted, not only this request's (cached per agent and vault snapshot).
    let in_scope = request::in_scope_secrets(&call)?;

    // Strip the agent's credentials, fill placeholders, then inject or sign.
    let mut secrets = request::rewrite(&call, &mut parts, client_upgrade.is_some())?;
    let (body, too_large) = request::limit_body(cx, &parts, body)?;
    let (provider, grant) = (&*call.provider, &call.grant);
    let (body, retry) = inject::apply(cx, provider, grant, &mut parts, body, &mut secrets).await?;

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
    ev.event = EventKind::UpstreamError;

    // Over verified TLS; an OAuth2 token the provider rejects is refreshed once.
    let started = std::time::Instant::now();
    let head = parts.method == http::Method::HEAD;
    let req = Request::from_parts(parts, body);
    let timeout = cx.state.limits.response_timeout.0;
    let resp = match client_upgrade {
        // A WebSocket: after `101` its frames go through the same redaction.
        Some(agent_side) => {
            let patterns = in_scope.patterns(&cx.state.patterns, &secrets);
            let on_frame = on_redact(cx.state.clone(), ev.clone());
            upgrade::handshake(cx, req, agent_side, (patterns, on_frame)).await?
        }
        None => {
            let sent =
                upstream::answer(tokio::time::timeout(timeout, cx.client.request(req)).await);
            // The body's size limit may surface as a reset (h2): that is the
            // agent's 413, not an upstream fault.
            sent.map_err(|deny| {
                if too_large.load(Ordering::Relaxed) && deny.code != Code::UpstreamTimeout {
                    Deny::payload_too_large(cx.state.limits.max_body_bytes.0)
                } else {
                    deny
                }
            })?
        }
    };
    let resp = inject::retry_unauthorized(cx, provider, resp, retry, &mut secrets).await?;
    let elapsed = started.elapsed().as_secs_f64();
    cx.state.metrics.inject(&provider.name, elapsed);

    // The answer goes back with every in-scope secret redacted: a small one of
    // declared length read whole, anything else as it streams. One that cannot
    // be redacted (unsupported content-encoding, no matcher) is refused here,
    // before its head goes out; a streamed body found corrupt later can only end
    // as a body error.
    let patterns = in_scope.patterns(&cx.state.patterns, &secrets);
    let answer = redact::read_answer(resp, &patterns, head, timeout).await?;
    // The caller has no further use for the event once the response is ours.
    let on_echo = on_redact(cx.state.clone(), std::mem::take(ev));
    Ok(redact::redact_upstream(answer, patterns, Some(on_echo)))
}

fn on_redact(state: Arc<State>, mut ev: Event) -> redact::OnRedact {
    ev.status = None;
    Box::new(move || {
        state.metrics.redactions.inc();
        let mut line = ev;
        line.event = EventKind::Redact;
        line.outcome = Outcome::Allowed;
        line.reason = Some("upstream echoed a secret; redacted".into());
        if let Err(e) = state.audit.record(line) {
            tracing::error!(error = %e, "audit log unwritable while recording a redaction");
        }
    })
}
