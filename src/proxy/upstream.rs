//! Toward the real service: resolve once, refuse private addresses at dial time,
//! connect with a timeout, and speak verified TLS through a pooled hyper client.

use super::error::{Code, Deny};
use super::runtime::Runtime;
use super::Body;
use crate::netaddr;
use arc_swap::ArcSwap;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Name resolution, injectable so tests never touch real DNS or real addresses.
pub trait Resolver: Send + Sync {
    fn lookup(&self, host: String) -> BoxFuture<io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver.
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: String) -> BoxFuture<io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Why a dial failed; mapped to a deny code.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve host: {0}")]
    Resolve(io::Error),
    #[error("host resolves to no address")]
    NoAddress,
    #[error("host resolves to a {0} address, which is not allowed")]
    Private(&'static str),
    #[error("refusing to connect to keyward itself")]
    SelfLoop,
    #[error("connect timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("TLS to upstream failed: {0}")]
    Tls(io::Error),
}

impl DialError {
    pub fn deny(&self) -> Deny {
        let code = match self {
            DialError::Private(_) => Code::PrivateAddress,
            DialError::SelfLoop => Code::SelfLoop,
            DialError::Timeout => Code::UpstreamTimeout,
            DialError::Tls(_) => Code::UpstreamTls,
            DialError::Resolve(_) | DialError::NoAddress | DialError::Connect(_) => {
                Code::UpstreamUnreachable
            }
        };
        Deny::new(code, self.to_string())
    }
}

/// What dialing needs; shared by the tunnel path and the pooled client.
pub struct Dialer {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub resolver: Arc<dyn Resolver>,
    pub connect_timeout: Duration,
    /// keyward's own listen address, never a valid target.
    pub own_addr: parking_lot::RwLock<Option<SocketAddr>>,
    /// keyward's other listeners (the admin API): never a valid target either.
    pub other_own_addrs: parking_lot::RwLock<Vec<SocketAddr>>,
}

impl Dialer {
    /// Resolves `host` once, keeps only addresses that pass the egress check, and
    /// returns the first one to dial.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, DialError> {
        let rt = self.runtime.load();
        let candidates: Vec<SocketAddr> = if let Some(addr) = rt.policy.resolve.get(host) {
            vec![*addr]
        } else if let Some(ip) = netaddr::parse_ip_lenient(host) {
            vec![SocketAddr::new(ip, port)]
        } else {
            let ips = self
                .resolver
                .lookup(host.to_string())
                .await
                .map_err(DialError::Resolve)?;
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        };
        let mut refused = None;
        for addr in candidates {
            // SECURITY: the address is checked after resolution and that same
            // address is dialled, so DNS rebinding cannot swap in an internal IP.
            match netaddr::check(addr.ip(), &rt.policy.allow_private) {
                Ok(()) => {
                    // SECURITY: a CONNECT back to keyward would loop requests
                    // through it (and around per-agent accounting).
                    if self.is_self(addr) {
                        refused = Some(DialError::SelfLoop);
                        continue;
                    }
                    return Ok(addr);
                }
                Err(reason) => refused = Some(DialError::Private(reason)),
            }
        }
        Err(refused.unwrap_or(DialError::NoAddress))
    }

    fn is_self(&self, addr: SocketAddr) -> bool {
        let same = |own: &SocketAddr| {
            own.port() == addr.port()
                && (own.ip() == addr.ip() || own.ip().is_unspecified() || addr.ip().is_loopback())
        };
        self.own_addr.read().iter().any(same) || self.other_own_addrs.read().iter().any(same)
    }

    /// Resolve, check and connect (TCP only).
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let addr = self.resolve(host, port).await?;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(DialError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Dialer {
    /// Resolve, check, connect and verify TLS (SNI = `host`) with `tls`: the one
    /// TLS dial, used by the pooled client and by upgrade handshakes.
    pub async fn connect_tls(
        &self,
        host: &str,
        port: u16,
        tls: &TlsConnector,
    ) -> Result<TlsStream<TcpStream>, DialError> {
        let tcp = self.connect(host, port).await?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| DialError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        // SECURITY: the TLS connector verifies the chain and the host name against
        // the configured roots; there is no code path that skips verification.
        tokio::time::timeout(self.connect_timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(DialError::Tls)
    }
}

/// A verified TLS connection to an upstream, as the pooled client sees it.
pub struct UpstreamConn {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl Read for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The pooled client's connector: `Dialer` + TLS with SNI = the URI host.
#[derive(Clone)]
pub struct Connector {
    dialer: Arc<Dialer>,
    tls: TlsConnector,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = UpstreamConn;
    type Error = DialError;
    type Future = BoxFuture<Result<UpstreamConn, DialError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tls = this.dialer.connect_tls(&host, port, &this.tls).await?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(UpstreamConn {
                io: TokioIo::new(tls),
                h2,
            })
        })
    }
}

pub type UpstreamClient = Client<Connector, Body>;

pub fn client(
    dialer: Arc<Dialer>,
    tls: Arc<rustls::ClientConfig>,
    idle_per_host: usize,
) -> UpstreamClient {
    let connector = Connector {
        dialer,
        tls: TlsConnector::from(tls),
    };
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(idle_per_host)
        .build(connector)
}

/// Maps a client error to a deny, finding our `DialError` in its source chain.
pub fn classify(err: &hyper_util::client::legacy::Error) -> Deny {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(d) = e.downcast_ref::<DialError>() {
            return d.deny();
        }
        if let Some(l) = e.downcast_ref::<http_body_util::LengthLimitError>() {
            return Deny::new(Code::PayloadTooLarge, l.to_string());
        }
        source = e.source();
    }
    if err.is_connect() {
        return Deny::new(Code::UpstreamUnreachable, "cannot connect to upstream");
    }
    Deny::new(Code::UpstreamProtocol, "upstream connection failed")
}

/// What became of one send through a pool: `upstream::answer(timeout(t,
/// client.request(req)).await)` is the one send of the request path, its OAuth2
/// retry and token calls. (A helper `async fn send(&UpstreamClient, ..)` would
/// hold the client reference across the await, and the compiler then cannot
/// prove the request path's future `Send`: rust#64552.)
pub fn answer(
    sent: Result<
        Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
        tokio::time::error::Elapsed,
    >,
) -> Result<http::Response<Body>, Deny> {
    use http_body_util::BodyExt;
    match sent {
        Err(_) => Err(Deny::new(
            Code::UpstreamTimeout,
            "upstream did not answer in time",
        )),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(resp)) => Ok(resp.map(|b| b.map_err(Into::into).boxed())),
    }
}
