//! Off-the-shelf clients driven only by what `keyward env` printed, against real
//! servers of their own protocol behind TLS (for `tests/clients_env.rs`):
//! `GitServer` (git's own `git http-backend`, run as CGI per request),
//! `TlsRelay` (TLS in front of a plain-TCP server such as moto's S3), `Moto`
//! (moto's server with SigV4 checking on). Every server listens on 127.0.0.1 and
//! is reached only through keyward's `egress.resolve` override of a `.test` name.

use super::kw::{Kw, AGENT, TOKEN};
use super::{Seen, UpstreamPki};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long moto's server may take to print its address.
const MOTO_START: Duration = Duration::from_secs(20);
/// Proxy variables a client family reads; each must point at the local keyward
/// before any client runs (so none can reach the real network).
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "GLOBAL_AGENT_HTTPS_PROXY",
    "GLOBAL_AGENT_HTTP_PROXY",
];

/// The sandbox environment: `keyward env`'s variables, in its order.
pub type Env = Vec<(String, String)>;

/// Runs the real `keyward env` for the default agent against `kw`'s config (the
/// proxy URL given with `--proxy`, as a sandbox reaches it) plus `extra`
/// arguments; returns its stdout. Panics with stderr if it fails.
pub fn keyward_env_text(kw: &Kw, extra: &[&str]) -> String {
    let proxy = format!("http://{}", kw.addr());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
    cmd.arg("--config")
        .arg(&kw.config_path)
        .args(["env", "--agent", AGENT, "--token", TOKEN, "--proxy", &proxy])
        .args(extra)
        .env_remove("KEYWARD_MASTER_KEY")
        .env_remove("KEYWARD_MASTER_PASSPHRASE")
        .current_dir(kw.dir.path());
    let out = cmd.output().expect("keyward env runs");
    assert!(
        out.status.success(),
        "keyward env: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("keyward env prints UTF-8")
}

/// `keyward env` (sh form), parsed.
pub fn keyward_env(kw: &Kw) -> Env {
    parse_sh_exports(&keyward_env_text(kw, &[]))
}

/// Parses `export NAME='value'` lines as sh would (`'\''` is a quote).
pub fn parse_sh_exports(text: &str) -> Env {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), sh_unquote(v)))
        .collect()
}

fn sh_unquote(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => out.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The value of `name` in `env`.
pub fn get<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Panics unless every proxy variable names a keyward on 127.0.0.1 (checked
/// before a client runs: a client must never reach the real network).
pub fn assert_local_proxy(env: &Env) {
    for var in PROXY_VARS {
        let v = get(env, var).unwrap_or_else(|| panic!("keyward env printed no {var}"));
        assert!(
            v.starts_with("http://") && v.contains("@127.0.0.1:"),
            "{var} does not point at the local keyward: {v}"
        );
    }
}

/// Runs `program` with exactly the sandbox environment (plus PATH, NODE_PATH and
/// a fresh HOME, and `extra` variables that only keep a client from prompting).
pub fn run_client(
    env: &Env,
    home: &Path,
    cwd: &Path,
    extra: &[(&str, &str)],
    program: &Path,
    args: &[&str],
) -> Output {
    assert_local_proxy(env);
    let mut c = Command::new(program);
    c.env_clear();
    for k in ["PATH", "NODE_PATH"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c.env("HOME", home)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null());
    c.output().expect("the client runs")
}

/// `out` succeeded, or panics with its stdout and stderr.
pub fn assert_ok(name: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{name} failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's TLS config (the upstream PKI's leaf) with only these ALPN ids.
fn tls_config(pki: &UpstreamPki, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut cfg = (*pki.server_config()).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// Smart-HTTP git over TLS: each request runs `git http-backend` as CGI over the
/// bare repositories in `root`. Only a request carrying `authorization: Bearer
/// <key>` is served (401 otherwise), as a real forge would.
pub struct GitServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitServer {
    pub async fn start(pki: &UpstreamPki, backend: PathBuf, root: PathBuf, key: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(pki, &[b"h2", b"http/1.1"]));
        let cgi = Arc::new(Cgi {
            backend,
            root,
            key,
            seen: seen.clone(),
        });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, cgi) = (acceptor.clone(), cgi.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| cgi.clone().serve(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        GitServer { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

struct Cgi {
    backend: PathBuf,
    root: PathBuf,
    key: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Cgi {
    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        self.seen.lock().push(Seen {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body: Vec::new(),
            version: parts.version,
        });
        let want = format!("Bearer {}", self.key);
        if parts.headers.get("authorization").map(|v| v.as_bytes()) != Some(want.as_bytes()) {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"no valid key\n")));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            return Ok(resp);
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let mut cmd = tokio::process::Command::new(&self.backend);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REMOTE_USER", "sandbox")
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
            .env("CONTENT_TYPE", header("content-type"))
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
            .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("git http-backend starts");
        let mut stdin = child.stdin.take().expect("piped stdin");
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
        let out = child
            .wait_with_output()
            .await
            .expect("git http-backend runs");
        Ok(cgi_response(&out.stdout))
    }
}

/// A CGI answer (`Status:` and other headers, a blank line, the body) as HTTP.
fn cgi_response(out: &[u8]) -> Response<Full<Bytes>> {
    let (head_len, sep) = match find(out, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => (find(out, b"\n\n").unwrap_or(out.len()), 2),
    };
    let head = String::from_utf8_lossy(&out[..head_len]).to_string();
    let body = out.get(head_len + sep..).unwrap_or_default().to_vec();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            *resp.status_mut() = code.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// TLS (HTTP/1.1 only) in front of a plain-TCP server: bytes are relayed as
/// they are, and everything the client side sent is kept (what the server got).
pub struct TlsRelay {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
}

impl TlsRelay {
    pub async fn start(pki: &UpstreamPki, backend: SocketAddr) -> TlsRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(pki, &[b"http/1.1"]));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let (Ok(tls), Ok(server)) = (
                        acceptor.accept(tcp).await,
                        tokio::net::TcpStream::connect(backend).await,
                    ) else {
                        return;
                    };
                    let (mut from_client, mut to_client) = tokio::io::split(tls);
                    let (mut from_server, mut to_server) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        log.lock().extend_from_slice(&buf[..n]);
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown().await;
                });
            }
        });
        TlsRelay { addr, received }
    }

    /// Everything clients sent through the relay so far, as text.
    pub fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock()).to_string()
    }
}

/// moto's server (`moto_server -p 0`) on 127.0.0.1; SigV4 is checked once
/// `free_actions` requests have been served (moto's `INITIAL_NO_AUTH_ACTION_COUNT`),
/// against the IAM access keys created in those free requests. Killed on drop.
pub struct Moto {
    child: Child,
    pub addr: SocketAddr,
}

impl Moto {
    pub fn start(program: &Path, free_actions: u32) -> Moto {
        let mut child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", free_actions.to_string())
            // Path-style buckets whatever the host (`s3.test` is no bucket).
            .env("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the address, then keeps draining (moto logs every request).
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(MOTO_START) {
            Ok(a) => a.parse().expect("moto prints host:port"),
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server printed no address");
            }
        };
        Moto { child, addr }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
