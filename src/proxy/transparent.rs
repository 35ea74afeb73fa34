//! `[proxy] transparent_listen` (SPEC §12): connections redirected here (a pod's
//! TCP sent to the keyward sidecar by iptables REDIRECT, the way service meshes
//! do) are handled like a CONNECT from `proxy.transparent_agent`, without
//! `Proxy-Authorization`. The host is the ClientHello's SNI, the port is the one
//! the connection was headed for (`SO_ORIGINAL_DST`); policy, injection,
//! redaction and audit are the CONNECT's (`policy::route`, `intercept`, `relay`).
//! Cleartext HTTP is answered with `cleartext_refused` (§6); anything without an
//! SNI is closed with `bad_request`. A refusal of a TLS connection cannot be an
//! HTTP answer (the client expects a TLS server): it is audited and the
//! connection closed.

use super::connect::{admit, note_principal, Admitted, ConnSlot};
use super::error::{Code, Deny};
use super::intercept::intercept;
use super::limits::TunnelSlot;
use super::refuse::refuse;
use super::relay::relay;
use super::state::State;
use super::upstream::UpstreamClient;
use super::workers::Workers;
use crate::audit::{Event, EventKind, Outcome};
use crate::metrics::GaugeGuard;
use crate::policy;
use crate::sniff::{sniff, Sniffed};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Most bytes read to find the SNI (a ClientHello with a post-quantum key share
/// is ~1.8 KB; this leaves room for large extension lists).
pub const MAX_SNIFF: usize = 16 * 1024;
/// The port of a connection that was not redirected (it came straight to
/// `transparent_listen`, so `SO_ORIGINAL_DST` names the listener itself): TLS.
pub const DIRECT_PORT: u16 = 443;
/// Pause after a failed accept (out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Serves `listener` as the transparent path of `agent` until `stop` changes.
/// It has its own `proxy.max_connections` slots (a connection over them is
/// counted and closed).
pub fn spawn(
    listener: TcpListener,
    state: Arc<State>,
    workers: Arc<Workers>,
    stop: watch::Receiver<bool>,
    agent: String,
) -> JoinHandle<()> {
    tokio::spawn(accept_loop(
        listener,
        state,
        workers,
        stop,
        Arc::from(agent),
    ))
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
    agent: Arc<str>,
) {
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "transparent accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // SECURITY: over the cap nothing is read; counted, not audited one by
            // one (a flood would become disk writes), as on the proxy listener.
            state.metrics.deny(Code::TooManyConnections.as_str());
            continue;
        };
        let slot = Arc::new(permit);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                continue;
            }
        };
        let worker = workers.pick();
        let client = worker.client.clone();
        let (state, agent) = (state.clone(), agent.clone());
        worker.handle.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(state, stream, local, slot, client, agent).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot take a connection"),
            }
        });
    }
    drop(listener);
    let all = u32::try_from(state.limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(super::listener::SHUTDOWN_GRACE, slots.acquire_many(all)).await;
}

/// One redirected connection.
async fn serve(
    state: Arc<State>,
    mut stream: TcpStream,
    local: Option<SocketAddr>,
    slot: ConnSlot,
    client: UpstreamClient,
    agent: Arc<str>,
) {
    let _ = stream.set_nodelay(true);
    let port = match original_destination(&stream) {
        Some(dst) if Some(dst) != local => dst.port(),
        _ => DIRECT_PORT,
    };
    let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
    ev.request_id = Some(crate::ids::request_id());
    ev.method = Some("CONNECT".into());
    let mut first = Vec::new();
    // SECURITY: the first bytes are bounded in time like a request head, so a
    // silent connection does not hold a slot forever.
    let sniffed = tokio::time::timeout(
        state.limits.header_read_timeout.0,
        read_sniff(&mut stream, &mut first),
    )
    .await
    .unwrap_or(Sniffed::Incomplete);
    let io = Prefixed::new(first, stream);
    match sniffed {
        Sniffed::Tls(Some(sni)) => {
            ev.host = Some(sni.clone());
            match decide(&state, &sni, port, &agent, &mut ev, client).await {
                Ok((plan, tunnel_slot)) => {
                    let _held = (
                        GaugeGuard::new(&state.metrics.open_tunnels),
                        tunnel_slot,
                        slot,
                    );
                    match plan {
                        Admitted::Tunnel(upstream) => {
                            relay(io, upstream, state.limits.idle_timeout.0).await;
                        }
                        Admitted::Intercept(cx) => intercept(cx, io).await,
                    }
                }
                Err(deny) => record(&state, &deny, ev),
            }
        }
        Sniffed::Http { host, .. } => cleartext(state, io, host, agent).await,
        Sniffed::Tls(None) => record(
            &state,
            &Deny::new(
                Code::BadRequest,
                "transparent_listen needs TLS with SNI (the host name); this ClientHello has none",
            ),
            ev,
        ),
        Sniffed::Incomplete | Sniffed::Other => record(
            &state,
            &Deny::new(
                Code::BadRequest,
                "transparent_listen takes TLS with SNI; the first bytes were neither TLS nor HTTP",
            ),
            ev,
        ),
    }
}

async fn read_sniff(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Sniffed {
    let mut chunk = [0u8; 4096];
    loop {
        let s = sniff(buf);
        if s != Sniffed::Incomplete || buf.len() >= MAX_SNIFF {
            return s;
        }
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Sniffed::Other,
        }
    }
}

/// The CONNECT's decision for `host:port` as `agent` (the caller records a
/// refusal before it closes the connection, so the audit line is there first).
async fn decide(
    state: &Arc<State>,
    sni: &str,
    port: u16,
    agent: &str,
    ev: &mut Event,
    client: UpstreamClient,
) -> Result<(Admitted, TunnelSlot), Deny> {
    let host = policy::canonical_host(sni)
        .ok_or_else(|| Deny::new(Code::BadRequest, "the SNI is not a valid host name"))?;
    ev.host = Some(host.clone());
    let runtime = state.runtime();
    // SECURITY: the identity is the configured one, never anything the client
    // sends; an agent removed since start resolves nothing and is refused.
    let principal = runtime.directory.principal(agent, None).ok_or_else(|| {
        Deny::new(
            Code::AgentRevoked,
            "proxy.transparent_agent names no agent (removed?)",
        )
    })?;
    note_principal(ev, &principal);
    admit(state, &principal, host, port, ev, client).await
}

/// Plain HTTP on the transparent path: every request is refused (§6: never a
/// credential over cleartext), one audit line each, then the connection closes.
async fn cleartext(
    state: Arc<State>,
    io: Prefixed<TcpStream>,
    host: Option<String>,
    agent: Arc<str>,
) {
    let header_timeout = state.limits.header_read_timeout.0;
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
        ev.request_id = Some(crate::ids::request_id());
        ev.method = Some(req.method().to_string());
        ev.path = Some(req.uri().path().to_string());
        ev.host = host.as_deref().and_then(policy::canonical_host);
        let runtime = state.runtime();
        if runtime.directory.knows(&agent) {
            ev.agent = Some(agent.to_string());
        }
        // SECURITY: credentials are only ever injected over TLS.
        let provider = ev
            .host
            .as_deref()
            .is_some_and(|h| runtime.policy.provider_for(h).is_some());
        let deny = if provider {
            Deny::new(Code::CleartextRefused, "use https:// for provider hosts")
        } else {
            Deny::new(
                Code::CleartextRefused,
                "plain http is not proxied; use https://",
            )
        };
        state.metrics.jail_blocks.inc();
        let resp = refuse(&state, &deny, ev);
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "transparent cleartext connection ended with an error");
    }
}

/// A refusal on the transparent path: a `deny` line like a CONNECT's, and
/// counted in `keyward_jail_blocks_total` (the pod is the jail).
fn record(state: &State, deny: &Deny, ev: Event) {
    state.metrics.jail_blocks.inc();
    super::refuse::record(state, deny, ev);
}

/// Where a redirected connection was headed (`SO_ORIGINAL_DST`, set by
/// iptables REDIRECT/DNAT); `None` where the kernel does not know.
#[cfg(target_os = "linux")]
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    /// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) = `IP6T_SO_ORIGINAL_DST`.
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = stream.as_raw_fd();
    let v6 = stream.local_addr().ok()?.is_ipv6();
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed sockaddr_in6,
    // large enough for either family; fd is a live socket owned by `stream`.
    unsafe {
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
        let rc = libc::getsockopt(
            fd,
            level,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        );
        if rc != 0 {
            return None;
        }
        match libc::c_int::from(addr.sin6_family) {
            libc::AF_INET => {
                let v4: libc::sockaddr_in =
                    std::ptr::read((&addr as *const libc::sockaddr_in6).cast());
                Some(SocketAddr::from((
                    u32::from_be(v4.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 => Some(SocketAddr::from((
                addr.sin6_addr.s6_addr,
                u16::from_be(addr.sin6_port),
            ))),
            _ => None,
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn original_destination(_stream: &TcpStream) -> Option<SocketAddr> {
    None
}

/// A stream whose first bytes (read to sniff the SNI) are replayed before the
/// rest, so TLS and HTTP see the connection from its start.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_sniffed_bytes_are_replayed_first() {
        let (a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b" world")
            .await
            .unwrap();
        drop(b);
        let mut p = Prefixed::new(b"hello".to_vec(), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
