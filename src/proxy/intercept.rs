//! An intercepted tunnel: TLS toward the agent with a leaf for the tunnel's host
//! (SNI must match), then `pipeline::handle` for every request on it (HTTP/1.1
//! or h2 by ALPN), closed when idle.

use super::limits::{Activity, InFlightBody, Tracked};
use super::pipeline;
use super::tunnel::TunnelCx;
use crate::policy;
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

/// TLS toward the agent with a leaf for the CONNECT host, then the pipeline for
/// every request on it (HTTP/1.1 or h2 by ALPN).
pub async fn intercept<IO>(cx: Arc<TunnelCx>, client: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        acceptor.accept(client),
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
