//! The proxy listener: accept loop, connection limit (503 over `max_connections`),
//! per-connection serving on the workers, graceful shutdown.

use super::connect;
use super::error::{Code, Deny};
use super::state::State;
use super::upstream::UpstreamClient;
use super::workers::Workers;
use crate::audit::{Event, EventKind, Outcome};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most one audit line per this interval for connections refused over
/// `max_connections` (the metric counts every one).
pub const BUSY_AUDIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long writing the 503 to a connection over `max_connections` may take.
pub const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `listener` until `stop` changes, then drains open connections (up to
/// `SHUTDOWN_GRACE`).
pub fn spawn(
    listener: TcpListener,
    state: Arc<State>,
    workers: Arc<Workers>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(listener, state, workers, stop))
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    let busy = Bytes::from(busy_response().await);
    let mut last_busy_audit: Option<Instant> = None;
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // SECURITY: refusals over the cap come as fast as a flood of connects,
            // and an audit line for each would turn the flood into disk writes (and
            // lock contention with real decisions). Every refusal is counted in
            // metrics; one audit line per BUSY_AUDIT_INTERVAL records that it happens.
            let now = Instant::now();
            let audit =
                last_busy_audit.is_none_or(|t| now.duration_since(t) >= BUSY_AUDIT_INTERVAL);
            if audit {
                last_busy_audit = Some(now);
            }
            tokio::spawn(refuse_busy(state.clone(), stream, busy.clone(), audit));
            continue;
        };
        let state = state.clone();
        // The slot is shared with any tunnel this connection becomes, so it is
        // only released when both are gone.
        let slot = Arc::new(permit);
        // The connection moves to a worker's own reactor and stays there.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                continue;
            }
        };
        let worker = workers.pick();
        let client = worker.client.clone();
        worker.handle.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(state, stream, slot, client).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot take a connection"),
            }
        });
    }
    // Stop accepting at once; then wait until every connection slot is back (open
    // requests and tunnels finished), or the grace period ends.
    drop(listener);
    let all = u32::try_from(state.limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
}

/// The refusal for connections over `max_connections`, rendered once by `Deny`
/// like every other refusal, as HTTP/1.1 bytes. The request is never read: a
/// connection over the cap gets no buffer and no header timer of its own.
/// The refusal of a connection over `proxy.max_connections`.
fn busy_deny() -> Deny {
    Deny::new(
        Code::TooManyConnections,
        "keyward is at proxy.max_connections; retry later",
    )
}

async fn busy_response() -> Vec<u8> {
    let deny = busy_deny();
    let mut resp = deny.response(None, None);
    deny.add_proxy_status(&mut resp);
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

async fn refuse_busy(state: Arc<State>, mut stream: TcpStream, busy: Bytes, audit: bool) {
    let deny = busy_deny();
    if audit {
        tracing::warn!("connection refused: proxy.max_connections reached");
        let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
        ev.request_id = Some(crate::ids::request_id());
        super::refuse::record(&state, &deny, ev);
    } else {
        state.metrics.deny(deny.code.as_str());
    }
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        let _ = stream.write_all(&busy).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    state: Arc<State>,
    stream: TcpStream,
    slot: connect::ConnSlot,
    client: UpstreamClient,
) {
    let _ = stream.set_nodelay(true);
    let limits = &state.limits;
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        connect::handle(svc_state.clone(), req, slot.clone(), client.clone())
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(super::intercept::MIN_BUF))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_busy_refusal_is_rendered_by_deny() {
        let text = String::from_utf8(busy_response().await).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains("x-keyward-error: too_many_connections"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "keyward.too_many_connections");
    }
}
