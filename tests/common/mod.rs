//! Test harness: a runtime-generated upstream PKI, a real TLS echo upstream that
//! records what it received, and a client that speaks CONNECT + TLS + HTTP through
//! keyward. The keyward itself: `kw` (builder, start), `config` (its config as
//! values), `seed` (secrets and agents), `leaks` (the one leak assertion).
#![allow(dead_code)]

pub mod cli;
pub mod clients;
pub mod config;
pub mod kw;
pub mod leaks;
pub mod pg;
pub mod seed;
pub mod store;
pub mod tools;
pub mod vault;

// What a test names most, at `common::`; not every test binary uses each.
#[allow(unused_imports)]
pub use config::{Agent, Chain, Provider};
#[allow(unused_imports)]
pub use kw::{Kw, KwBuilder, AGENT, TOKEN};
#[allow(unused_imports)]
pub use leaks::assert_no_leak;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward::proxy::upstream::{BoxFuture, Resolver};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Hosts the echo upstream holds a certificate for.
pub const UPSTREAM_HOSTS: &[&str] = &[
    "localhost",
    "api.openai.com",
    "api.anthropic.com",
    "api.stripe.com",
    "api.telegram.org",
    "api.github.com",
    "slack.com",
    "discord.com",
    "q.example.test",
    "pypi.example.test",
    "evil.example.test",
    // Servers of a client's own protocol (tests/common/clients.rs).
    "git.test",
    "s3.test",
    "files.test",
];

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A random marker to plant in secrets and grep for in every output.
pub fn canary() -> String {
    format!("sk-canary-{}", hex::encode(rand::random::<[u8; 12]>()))
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The upstream's own test CA and a leaf for `UPSTREAM_HOSTS`.
pub struct UpstreamPki {
    pub ca_pem: String,
    pub leaf: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
}

impl UpstreamPki {
    pub fn new() -> UpstreamPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "upstream test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(
            UPSTREAM_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        UpstreamPki {
            ca_pem: ca_cert.pem(),
            leaf: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.leaf.clone(), key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub version: http::Version,
}

/// A TLS upstream that records requests and answers with a JSON echo.
/// Paths: `/sse` streams two events 1.5 s apart; `/echo-secret` puts the
/// request's credential header into the response body and a header;
/// `/encoding/<coding>` sends the `authorization` it got as a body labelled
/// `content-encoding: <coding>`; `/echo-value?v=<percent-encoded>` echoes that
/// value (a key the upstream knows) in the body and `x-echo`. With `stream` in
/// the query the last two answer chunked, in two frames.
/// `/sized?len=N&status=S` answers status `S` (default 200) with the request's
/// `authorization` in `x-echo` and a body of exactly `N` bytes (`you sent: <it>`,
/// padded with `.`) and its `content-length` (HEAD: the length, no body; 304:
/// the length as a header, no body, which hyper drops over h1; 204: neither).
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl EchoUpstream {
    pub async fn start(pki: &UpstreamPki) -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = s.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| echo(seen.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        EchoUpstream {
            addr,
            seen,
            connections,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn echo(
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<http::Response<BoxBody>, hyper::Error> {
    if req.uri().path() == "/ws" {
        return Ok(websocket_echo(seen, &mut req));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let record = Seen {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
    };
    seen.lock().push(record);
    let path = parts.uri.path().to_string();
    if path == "/sse" {
        // Two events 1.5 s apart.
        return Ok(event_stream(
            Duration::from_millis(1500),
            Some("data: second\n\n"),
        ));
    }
    if path == "/stall" {
        // One event, then an open body that never moves again (for a minute).
        return Ok(event_stream(Duration::from_secs(60), None));
    }
    if path == "/slow" {
        // Answers after `?ms=N` milliseconds (for response timeouts).
        let ms = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(http::Response::new(
            Full::new(Bytes::from_static(b"late")).boxed(),
        ));
    }
    if path == "/echo-secret" {
        let cred = ["authorization", "x-api-key", "x-custom"]
            .iter()
            .filter_map(|h| parts.headers.get(*h))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let mut resp =
            http::Response::new(Full::new(Bytes::from(format!("you sent: {cred}"))).boxed());
        if let Ok(v) = http::HeaderValue::from_str(&cred) {
            resp.headers_mut().insert("x-echo", v);
        }
        return Ok(resp);
    }
    let streamed = parts.uri.query().is_some_and(|q| q.contains("stream"));
    if let Some(coding) = path.strip_prefix("/encoding/") {
        let cred = parts
            .headers
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
            .unwrap_or_default();
        let mut resp = reply(format!("you sent: {cred}").into_bytes(), streamed);
        resp.headers_mut()
            .insert("content-encoding", coding.parse().unwrap());
        return Ok(resp);
    }
    if path == "/sized" {
        return Ok(sized(&parts));
    }
    if path == "/echo-value" {
        let value = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("v="))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .to_string()
            })
            .unwrap_or_default();
        let mut resp = reply(format!("found: {value}").into_bytes(), streamed);
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert("x-echo", v);
        }
        return Ok(resp);
    }
    let json = serde_json::json!({
        "method": parts.method.to_string(),
        "uri": parts.uri.to_string(),
        "headers": parts.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).to_string())).collect::<Vec<_>>(),
        "body_len": body.len(),
    });
    let mut resp = http::Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// A `text/event-stream` answer: `data: first`, then after `pause` either `second`
/// and the end, or (no second event) the end without anything more.
fn event_stream(pause: Duration, second: Option<&'static str>) -> http::Response<BoxBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
            .await;
        tokio::time::sleep(pause).await;
        if let Some(event) = second {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(event.as_bytes()))))
                .await;
        }
    });
    let mut resp = http::Response::new(BodyExt::boxed(StreamBody::new(tokio_stream_from(rx))));
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

/// The `/sized` answer (see [`EchoUpstream`]).
fn sized(parts: &http::request::Parts) -> http::Response<BoxBody> {
    let query: HashMap<&str, &str> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let len: usize = query.get("len").and_then(|v| v.parse().ok()).unwrap_or(0);
    let status: u16 = query
        .get("status")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let cred = parts
        .headers
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .unwrap_or_default();
    let mut body = format!("you sent: {cred}").into_bytes();
    body.resize(len.max(body.len()), b'.');
    if status == 204 || status == 304 {
        body.clear();
    }
    let mut resp = http::Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if status == 304 {
        // A 304's length describes the representation, not this message.
        resp.headers_mut()
            .insert("content-length", http::HeaderValue::from(len));
    }
    if let Ok(v) = http::HeaderValue::from_str(&cred) {
        resp.headers_mut().insert("x-echo", v);
    }
    resp
}

/// `body` with a `content-length` (one frame), or chunked in two frames split in
/// the middle (`streamed`).
fn reply(body: Vec<u8>, streamed: bool) -> http::Response<BoxBody> {
    if !streamed {
        return http::Response::new(Full::new(Bytes::from(body)).boxed());
    }
    let mid = body.len() / 2;
    let frames = vec![
        Ok(Frame::data(Bytes::copy_from_slice(&body[..mid]))),
        Ok(Frame::data(Bytes::copy_from_slice(&body[mid..]))),
    ];
    http::Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
        frames,
    ))))
}

/// Accepts a WebSocket handshake and echoes text messages as `echo:<text>`.
fn websocket_echo(
    seen: Arc<Mutex<Vec<Seen>>>,
    req: &mut Request<Incoming>,
) -> http::Response<BoxBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    seen.lock().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().path().to_string(),
        headers: req.headers().clone(),
        body: Vec::new(),
        version: req.version(),
    });
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                if ws
                    .send(Message::text(format!("echo:{}", t.as_str())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    http::Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", key)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A resolver for tests: known names map to given IPs, everything else fails.
/// Never resolves anything for real.
pub struct MapResolver(pub HashMap<String, Vec<IpAddr>>);

impl Resolver for MapResolver {
    fn lookup(&self, host: String) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
        let r = self
            .0
            .get(&host)
            .cloned()
            .ok_or_else(|| std::io::Error::other("no such host (test resolver)"));
        Box::pin(async move { r })
    }
}

/// What a client saw.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn error_code(&self) -> Option<String> {
        self.headers
            .get("x-keyward-error")
            .map(|v| v.to_str().unwrap().to_string())
    }
}

/// CONNECT + TLS (trusting only the keyward CA) + HTTP/1.1 or h2.
pub struct ProxyClient {
    pub proxy: SocketAddr,
    pub auth: Option<(String, String)>,
    pub ca_pem: String,
    pub h2: bool,
}

/// Reads an HTTP/1 response head (and a Content-Length body) from a raw stream.
pub async fn read_head(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    read_head_from(stream).await
}

impl ProxyClient {
    pub fn basic(&self) -> Option<String> {
        use base64::Engine;
        self.auth
            .as_ref()
            .map(|(a, t)| base64::engine::general_purpose::STANDARD.encode(format!("{a}:{t}")))
    }

    /// Sends CONNECT; returns the stream when the answer is 200, else the answer.
    pub async fn connect(&self, authority: &str) -> Result<TcpStream, (u16, String, Vec<u8>)> {
        let mut s = TcpStream::connect(self.proxy).await.unwrap();
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(b) = self.basic() {
            req.push_str(&format!("Proxy-Authorization: Basic {b}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (status, head, body) = read_head(&mut s).await;
        if status == 200 {
            Ok(s)
        } else {
            Err((status, head, body))
        }
    }

    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = if self.h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Arc::new(cfg)
    }

    /// One request through a fresh tunnel to `host:443`.
    pub async fn send(&self, host: &str, req: Request<Full<Bytes>>) -> Got {
        let mut tunnel = self.open(host).await.expect("tunnel");
        tunnel.send(req).await
    }

    /// GET `https://{host}{path}` with extra headers.
    pub async fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Got {
        let mut b = Request::get(path).header("host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(host, b.body(Full::new(Bytes::new())).unwrap())
            .await
    }

    /// Opens a tunnel; `Err` carries a CONNECT refusal as a `Got`.
    pub async fn open(&self, host: &str) -> Result<Tunnel, Got> {
        let stream = match self.connect(&format!("{host}:443")).await {
            Ok(s) => s,
            Err((status, head, body)) => {
                let mut headers = HeaderMap::new();
                for line in head.lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        if let (Ok(k), Ok(v)) = (
                            http::HeaderName::from_bytes(k.trim().as_bytes()),
                            v.trim().parse(),
                        ) {
                            headers.append(k, v);
                        }
                    }
                }
                return Err(Got {
                    status: StatusCode::from_u16(status).unwrap(),
                    headers,
                    body,
                });
            }
        };
        let connector = tokio_rustls::TlsConnector::from(self.tls_config());
        let tls = connector
            .connect(ServerName::try_from(host.to_string()).unwrap(), stream)
            .await
            .unwrap();
        let io = TokioIo::new(tls);
        let sender = if self.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            Sender::H1(s)
        };
        Ok(Tunnel { sender })
    }
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct Tunnel {
    pub sender: Sender,
}

impl Tunnel {
    pub async fn send_raw(&mut self, mut req: Request<Full<Bytes>>) -> http::Response<Incoming> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                if req.uri().authority().is_none() {
                    let host = req
                        .headers()
                        .get("host")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string();
                    *req.uri_mut() =
                        format!("https://{host}{}", req.uri().path_and_query().unwrap())
                            .parse()
                            .unwrap();
                    req.headers_mut().remove("host");
                }
                *req.version_mut() = http::Version::HTTP_2;
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        let resp = self.send_raw(req).await;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// Reads an HTTP/1 response head (and a Content-Length body) from any stream.
/// Status 0 means the connection closed (or failed) before a head arrived.
pub async fn read_head_from<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if len > 0 {
        let _ = s.read_exact(&mut body).await;
    }
    (status, head, body)
}

/// The `x-keyward-error` value in a raw response head.
pub fn head_error_code(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-keyward-error")
            .then(|| v.trim().to_string())
    })
}

impl ProxyClient {
    /// CONNECT + TLS (SNI = `host`, trusting the keyward CA) and nothing else:
    /// the caller writes raw HTTP bytes into the intercepted tunnel.
    pub async fn open_raw_tls(&self, host: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
        let stream = self
            .connect(&format!("{host}:443"))
            .await
            .unwrap_or_else(|e| panic!("CONNECT {host} refused: {} {}", e.0, e.1));
        tokio_rustls::TlsConnector::from(self.tls_config())
            .connect(ServerName::try_from(host.to_string()).unwrap(), stream)
            .await
            .expect("TLS to keyward")
    }
}
