//! A WebSocket upgrade: the handshake (credential already injected like any
//! request) goes out on its own HTTP/1.1 connection over verified TLS; after `101`
//! the two upgraded connections are handed to `websocket::relay`, which redacts
//! every frame from the upstream.

use super::error::{Code, Deny};
use super::tunnel::TunnelCx;
use super::{websocket, Body};
use crate::redact;
use http::{header, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;

/// A WebSocket handshake (credential injected like any request) on its own
/// HTTP/1.1 connection; after `101` the agent's frames are relayed as bytes and
/// the upstream's are redacted (`websocket::relay`).
pub async fn handshake(
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
                websocket::relay(
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
