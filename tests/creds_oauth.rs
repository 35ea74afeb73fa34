//! OAuth2 secrets against a local token server: client credentials, caching until
//! shortly before expiry, single flight under concurrency, refresh-token rotation
//! written back to the vault, and a revoked refresh token (`oauth_refresh_failed`).

mod common;
use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyward::vault::SecretKind;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const API: &str = "api.github.com";
const TOKEN_HOST: &str = "pypi.example.test";
const CLIENT_ID: &str = "cid-1";

/// The token server's behaviour and what it saw.
struct Tokens {
    client_secret: String,
    calls: AtomicUsize,
    expires_in: AtomicU64,
    delay_ms: AtomicU64,
    /// The refresh token it currently accepts (None: refresh grants fail).
    refresh: Mutex<Option<String>>,
    /// Issue a new refresh token on every refresh grant.
    rotate: bool,
    issued: Mutex<Vec<String>>,
    grants: Mutex<Vec<String>>,
}

impl Tokens {
    fn new(client_secret: &str, refresh: Option<&str>, rotate: bool) -> Arc<Tokens> {
        Arc::new(Tokens {
            client_secret: client_secret.into(),
            calls: AtomicUsize::new(0),
            expires_in: AtomicU64::new(3600),
            delay_ms: AtomicU64::new(0),
            refresh: Mutex::new(refresh.map(str::to_string)),
            rotate,
            issued: Mutex::new(Vec::new()),
            grants: Mutex::new(Vec::new()),
        })
    }
}

fn form_get(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn token_endpoint(
    t: Arc<Tokens>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    let n = t.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let form = String::from_utf8(req.into_body().collect().await?.to_bytes().to_vec()).unwrap();
    tokio::time::sleep(Duration::from_millis(t.delay_ms.load(Ordering::SeqCst))).await;
    let reply = |status: u16, json: serde_json::Value| {
        Ok(http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json.to_string())))
            .unwrap())
    };
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{CLIENT_ID}:{}", t.client_secret))
    );
    if auth != want {
        return reply(401, serde_json::json!({"error": "invalid_client"}));
    }
    let grant = form_get(&form, "grant_type").unwrap_or_default();
    t.grants.lock().push(grant.clone());
    let mut body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": t.expires_in.load(Ordering::SeqCst),
    });
    match grant.as_str() {
        "client_credentials" => {}
        "refresh_token" => {
            let sent = form_get(&form, "refresh_token");
            let mut current = t.refresh.lock();
            if current.is_none() || sent != *current {
                // Echo the offending token, as some servers do: keyward must not pass it on.
                return reply(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": format!("refresh token {} revoked", sent.unwrap_or_default())}),
                );
            }
            if t.rotate {
                let next = format!("rt-rotated-{n}-{}", canary());
                *current = Some(next.clone());
                body["refresh_token"] = next.into();
            }
        }
        _ => return reply(400, serde_json::json!({"error": "unsupported_grant_type"})),
    }
    let token = format!("at-{n}-{}", canary());
    t.issued.lock().push(token.clone());
    body["access_token"] = token.into();
    reply(200, body)
}

async fn start_token_server(pki: &UpstreamPki, t: Arc<Tokens>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = (*pki.server_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, t) = (acceptor.clone(), t.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| token_endpoint(t.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// keyward with `github` overridden to take an OAuth2 secret, and the token server.
async fn setup(t: Arc<Tokens>, refresh: Option<&str>) -> Kw {
    let pki = UpstreamPki::new();
    let token_addr = start_token_server(&pki, t.clone()).await;
    let kw = Kw::builder()
        .provider(Provider::bearer("github", "api.github.com", "GH_OAUTH"))
        .resolve(TOKEN_HOST, token_addr)
        .upstream_pki(pki)
        .start()
        .await;
    let mut value = serde_json::json!({
        "client_id": CLIENT_ID,
        "client_secret": t.client_secret,
        "token_url": format!("https://{TOKEN_HOST}/oauth/token"),
        "scope": "repo read:org",
    });
    if let Some(r) = refresh {
        value["refresh_token"] = r.into();
    }
    kw.set_secret_of_kind(
        "platform",
        "GH_OAUTH",
        SecretKind::Oauth2,
        &value.to_string(),
    );
    kw
}

fn bearer_seen(kw: &Kw) -> String {
    kw.upstream.last().headers["authorization"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn client_credentials_token_is_injected_cached_and_redacted() {
    let t = Tokens::new(&canary(), None, false);
    let kw = setup(t.clone(), None).await;
    let c = kw.client();
    let got = c
        .get(API, "/user", &[("authorization", "Bearer dummy")])
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let issued = t.issued.lock()[0].clone();
    assert_eq!(bearer_seen(&kw), format!("Bearer {issued}"));
    assert_eq!(t.grants.lock()[0], "client_credentials");

    // cached: the second request makes no token call
    let got = c.get(API, "/echo-secret", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    // the upstream echoed the access token: redacted like any secret
    assert_no_leak("echoed response", &got.body, &issued);
    assert_no_leak(
        "echoed header",
        format!("{:?}", got.headers).as_bytes(),
        &issued,
    );
    for line in kw.audit_lines() {
        let l = line.to_string();
        assert!(!l.contains(&issued) && !l.contains(&t.client_secret), "{l}");
    }
}

#[tokio::test]
async fn token_is_renewed_shortly_before_expiry() {
    let t = Tokens::new(&canary(), None, false);
    // 31 s lifetime - 30 s margin: valid for about one second
    t.expires_in.store(31, Ordering::SeqCst);
    let kw = setup(t.clone(), None).await;
    let c = kw.client();
    assert_eq!(c.get(API, "/a", &[]).await.status, 200);
    let first = bearer_seen(&kw);
    assert_eq!(c.get(API, "/b", &[]).await.status, 200);
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(c.get(API, "/c", &[]).await.status, 200);
    assert_eq!(t.calls.load(Ordering::SeqCst), 2);
    assert_ne!(bearer_seen(&kw), first);
}

#[tokio::test]
async fn many_concurrent_requests_make_one_token_call() {
    let t = Tokens::new(&canary(), None, false);
    t.delay_ms.store(300, Ordering::SeqCst);
    let kw = setup(t.clone(), None).await;
    let c = Arc::new(kw.client());
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get(API, &format!("/n/{i}"), &[]).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(t.calls.load(Ordering::SeqCst), 1, "single flight");
    let issued = t.issued.lock()[0].clone();
    for seen in kw.upstream.requests() {
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {issued}").as_str()
        );
    }
}

#[tokio::test]
async fn rotated_refresh_token_is_written_back_and_used() {
    let first_refresh = format!("rt-first-{}", canary());
    let t = Tokens::new(&canary(), Some(&first_refresh), true);
    t.expires_in.store(31, Ordering::SeqCst);
    let kw = setup(t.clone(), Some(&first_refresh)).await;
    let c = kw.client();
    assert_eq!(c.get(API, "/a", &[]).await.status, 200);
    assert_eq!(t.grants.lock()[0], "refresh_token");
    let rotated = t.refresh.lock().clone().unwrap();
    assert_ne!(rotated, first_refresh);
    // the vault now holds the rotated refresh token (new version), atomically
    let snap = kw.running.state.vault.snapshot();
    let opened = snap.get("platform", "GH_OAUTH").unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(opened.value.expose()).unwrap();
    assert_eq!(stored["refresh_token"], rotated.as_str());
    assert_eq!(stored["client_id"], CLIENT_ID);
    assert_eq!(opened.version, 2);
    assert_eq!(opened.kind, SecretKind::Oauth2);
    // after expiry the rotated token is used (the first one is no longer accepted)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let got = c.get(API, "/b", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(t.calls.load(Ordering::SeqCst), 2);
    // a fresh keyward (no cache) reading the vault file uses the rotated token too
    let vault_file = std::fs::read(kw.dir.path().join("vault.kw")).unwrap();
    assert_no_leak("vault file", &vault_file, &rotated);
}

#[tokio::test]
async fn revoked_refresh_token_is_oauth_refresh_failed() {
    let revoked = format!("rt-revoked-{}", canary());
    let t = Tokens::new(&canary(), None, false);
    let kw = setup(t.clone(), Some(&revoked)).await;
    let got = kw
        .client()
        .get(API, "/user", &[("authorization", "Bearer dummy")])
        .await;
    assert_eq!(got.status, 502);
    assert_eq!(got.error_code().as_deref(), Some("oauth_refresh_failed"));
    assert!(got.text().contains("invalid_grant"), "{}", got.text());
    assert_no_leak("refusal", &got.body, &revoked);
    assert_no_leak("refusal", &got.body, &t.client_secret);
    assert!(kw.upstream.requests().is_empty(), "nothing reached the API");
    let line = kw.last_audit();
    assert_eq!(line["reason"], "oauth_refresh_failed");
    assert_eq!(line["status"], 502);
    assert!(!line.to_string().contains(&revoked));
}

#[tokio::test]
async fn wrong_client_secret_is_oauth_refresh_failed() {
    let t = Tokens::new("the-real-one", None, false);
    let kw = setup(t.clone(), None).await;
    // overwrite with a wrong client secret
    let bad = serde_json::json!({
        "client_id": CLIENT_ID, "client_secret": "wrong-secret-xyz",
        "token_url": format!("https://{TOKEN_HOST}/oauth/token"),
    });
    kw.set_secret("platform", "GH_OAUTH", &bad.to_string());
    let got = kw.client().get(API, "/user", &[]).await;
    assert_eq!(got.status, 502);
    assert_eq!(got.error_code().as_deref(), Some("oauth_refresh_failed"));
    assert_no_leak("refusal", &got.body, "wrong-secret-xyz");
}

/// An API that accepts only access tokens numbered `min_valid` or later, and
/// reports the body it got.
async fn start_api_server(
    pki: &UpstreamPki,
    t: Arc<Tokens>,
    min_valid: Arc<AtomicUsize>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = (*pki.server_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, t, min_valid) = (acceptor.clone(), t.clone(), min_valid.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (t, min_valid) = (t.clone(), min_valid.clone());
                    async move {
                        let bearer = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .unwrap_or("")
                            .to_string();
                        let body = req.into_body().collect().await?.to_bytes();
                        let issued = t.issued.lock().clone();
                        let n = issued.iter().position(|x| *x == bearer).map(|i| i + 1);
                        let ok = n.is_some_and(|n| n >= min_valid.load(Ordering::SeqCst));
                        let status = if ok { 200 } else { 401 };
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("x-body-len", body.len())
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries_small_bodies() {
    let t = Tokens::new(&canary(), None, false);
    let pki = UpstreamPki::new();
    let token_addr = start_token_server(&pki, t.clone()).await;
    let min_valid = Arc::new(AtomicUsize::new(1));
    let api_addr = start_api_server(&pki, t.clone(), min_valid.clone()).await;
    let kw = Kw::builder()
        .provider(Provider::bearer("github", "api.github.com", "GH_OAUTH"))
        .resolve(TOKEN_HOST, token_addr)
        .resolve(API, api_addr)
        .upstream_pki(pki)
        .start()
        .await;
    let value = serde_json::json!({
        "client_id": CLIENT_ID, "client_secret": t.client_secret,
        "token_url": format!("https://{TOKEN_HOST}/oauth/token"),
    });
    kw.set_secret_of_kind(
        "platform",
        "GH_OAUTH",
        SecretKind::Oauth2,
        &value.to_string(),
    );
    let c = kw.client();
    let post = |body: &'static [u8]| {
        http::Request::post("/repos/a/b/issues")
            .header("host", API)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let got = c.send(API, post(b"{\"title\":\"one\"}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);

    // The provider revokes token 1: the cached token gets a 401, keyward refreshes
    // once and re-sends the same body.
    min_valid.store(2, Ordering::SeqCst);
    let got = c.send(API, post(b"{\"title\":\"two\"}")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, b"{\"title\":\"two\"}");
    assert_eq!(t.calls.load(Ordering::SeqCst), 2);

    // Still rejected after the refresh: the 401 reaches the agent (one retry only).
    min_valid.store(100, Ordering::SeqCst);
    let got = c.send(API, post(b"x")).await;
    assert_eq!(got.status, 401);
    assert_eq!(t.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_401_with_a_large_body_is_passed_through() {
    let t = Tokens::new(&canary(), None, false);
    let pki = UpstreamPki::new();
    let token_addr = start_token_server(&pki, t.clone()).await;
    let min_valid = Arc::new(AtomicUsize::new(100));
    let api_addr = start_api_server(&pki, t.clone(), min_valid.clone()).await;
    let kw = Kw::builder()
        .provider(Provider::bearer("github", "api.github.com", "GH_OAUTH"))
        .resolve(TOKEN_HOST, token_addr)
        .resolve(API, api_addr)
        .upstream_pki(pki)
        .start()
        .await;
    let value = serde_json::json!({
        "client_id": CLIENT_ID, "client_secret": t.client_secret,
        "token_url": format!("https://{TOKEN_HOST}/oauth/token"),
    });
    kw.set_secret_of_kind(
        "platform",
        "GH_OAUTH",
        SecretKind::Oauth2,
        &value.to_string(),
    );
    let big = vec![b'x'; (keyward::proxy::inject::RETRY_BODY_LIMIT + 1) as usize];
    let req = http::Request::post("/upload")
        .header("host", API)
        .body(Full::new(Bytes::from(big)))
        .unwrap();
    let got = kw.client().send(API, req).await;
    assert_eq!(got.status, 401);
    assert_eq!(
        t.calls.load(Ordering::SeqCst),
        1,
        "no refresh without a retry"
    );
    // ...but the rejected token is dropped: the next request fetches a fresh one
    min_valid.store(2, Ordering::SeqCst);
    let got = kw.client().get(API, "/user", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(t.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failing_token_endpoint_is_called_once_for_many_waiting_requests() {
    let revoked = format!("rt-revoked-{}", canary());
    let t = Tokens::new(&canary(), None, false);
    t.delay_ms.store(200, Ordering::SeqCst);
    let kw = setup(t.clone(), Some(&revoked)).await;
    let c = Arc::new(kw.client());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.get(API, &format!("/n/{i}"), &[]).await.error_code()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().as_deref(), Some("oauth_refresh_failed"));
    }
    assert_eq!(
        t.calls.load(Ordering::SeqCst),
        1,
        "failure is shared, not retried per request"
    );
}
