//! Secret leaks (issue 6): a canary credential, planted in the vault, must never
//! come back to the agent (whatever an upstream echoes, in whatever encoding), nor
//! appear in the audit file, the vault file, error bodies, `Debug` output or
//! keyward's own log.

mod common;

use base64::Engine;
use bytes::Bytes;
use common::leaks::log_capture;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// All of a response as bytes: status line-ish, headers, body.
fn dump(got: &Got) -> Vec<u8> {
    let mut out = format!("{}\n", got.status).into_bytes();
    for (k, v) in &got.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(&got.body);
    out
}

/// The credential the upstream received, whatever the scheme.
fn credential(req: &Request<Incoming>) -> String {
    for h in ["authorization", "x-api-key", "x-custom"] {
        if let Some(v) = req.headers().get(h) {
            let v = v.to_str().unwrap_or_default();
            return v.strip_prefix("Bearer ").unwrap_or(v).to_string();
        }
    }
    String::new()
}

/// An upstream that echoes the credential it received back in every encoding,
/// in headers, a redirect, the body and (for `/gzip`) a gzip-compressed body.
async fn encoding_echo_upstream(pki: &UpstreamPki) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let secret = credential(&req);
                    let path = req.uri().path().to_string();
                    let std_b64 = base64::engine::general_purpose::STANDARD;
                    let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                    let mut body = String::new();
                    body.push_str(&format!("plain={secret}\n"));
                    for pad in ["", "#", "##"] {
                        body.push_str(&format!(
                            "b64={} b64url={}\n",
                            std_b64.encode(format!("{pad}{secret}")),
                            url_b64.encode(format!("{pad}{secret}"))
                        ));
                    }
                    body.push_str(&format!(
                        "hex={} HEX={}\n",
                        hex::encode(&secret),
                        hex::encode_upper(&secret)
                    ));
                    body.push_str(&format!(
                        "url={}\n",
                        percent_encoding::utf8_percent_encode(
                            &secret,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    ));
                    body.push_str(&format!("json={}\n", serde_json::json!({ "key": secret })));
                    let escaped: String = secret
                        .chars()
                        .map(|c| format!("\\u{:04x}", c as u32))
                        .collect();
                    body.push_str(&format!("jsonu={{\"key\":\"{escaped}\"}}\n"));
                    let mut b = http::Response::builder()
                        .header("x-echo", secret.as_str())
                        .header("x-echo-b64", std_b64.encode(&secret))
                        .header("set-cookie", format!("session={secret}; Secure"));
                    let bytes = if path == "/gzip" {
                        use std::io::Write;
                        let mut gz =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        gz.write_all(body.as_bytes()).unwrap();
                        b = b.header("content-encoding", "gzip");
                        gz.finish().unwrap()
                    } else if path == "/redirect" {
                        b = b.status(302).header(
                            "location",
                            format!("https://evil.example.test/cb?token={secret}"),
                        );
                        body.into_bytes()
                    } else {
                        body.into_bytes()
                    };
                    Ok::<_, std::convert::Infallible>(
                        b.body(Full::new(Bytes::from(bytes))).unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// keyward whose `api.openai.com` upstream is the encoding echo, with a canary key.
async fn kw_with_echo() -> (Kw, String) {
    let pki = UpstreamPki::new();
    let addr = encoding_echo_upstream(&pki).await;
    let kw = Kw::builder()
        .upstream_pki(pki)
        .resolve("api.openai.com", addr)
        .start()
        .await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    (kw, secret)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = flate2::read::GzDecoder::new(bytes).read_to_end(&mut out);
    out
}

#[tokio::test]
async fn echoed_secret_is_redacted_in_every_encoding() {
    let (kw, secret) = kw_with_echo().await;
    for h2 in [false, true] {
        let mut c = kw.client();
        c.h2 = h2;
        let got = c.get("api.openai.com", "/v1/echo", &[]).await;
        assert_eq!(got.status, 200);
        assert!(got.text().contains("plain="), "the echo body arrived");
        assert_no_leak(&format!("response (h2={h2})"), &dump(&got), &secret);
    }
}

/// `"\u0073\u006b…"`: every character of the value as a JSON `\uXXXX` escape.
fn fully_unicode_escaped(needle: &str) -> String {
    needle
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect()
}

#[tokio::test]
async fn echoed_secret_fully_unicode_escaped_in_json_is_redacted() {
    let (kw, secret) = kw_with_echo().await;
    let got = kw.client().get("api.openai.com", "/v1/echo", &[]).await;
    assert_eq!(got.status, 200);
    let text = String::from_utf8_lossy(&got.body).to_string();
    assert!(text.contains("jsonu="), "the echo body arrived");
    assert!(
        !text.contains(&fully_unicode_escaped(&secret)),
        "the \\u-escaped value reached the agent"
    );
}

#[tokio::test]
async fn echoed_secret_in_gzip_body_is_redacted() {
    let (kw, secret) = kw_with_echo().await;
    let got = kw.client().get("api.openai.com", "/gzip", &[]).await;
    assert_eq!(got.status, 200);
    let gzipped = got
        .headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = if gzipped {
        gunzip(&got.body)
    } else {
        got.body.clone()
    };
    assert!(
        String::from_utf8_lossy(&body).contains("plain="),
        "body arrived"
    );
    assert_no_leak("gzip response body", &body, &secret);
    assert_no_leak("gzip response", &dump(&got), &secret);
}

#[tokio::test]
async fn echoed_secret_in_redirect_location_is_redacted_and_not_followed() {
    let (kw, secret) = kw_with_echo().await;
    let got = kw.client().get("api.openai.com", "/redirect", &[]).await;
    assert_eq!(got.status, 302, "redirects are relayed, never followed");
    assert!(got.headers.contains_key("location"));
    assert_no_leak("redirect", &dump(&got), &secret);
}

#[tokio::test]
async fn query_scheme_secret_echoed_in_uri_is_redacted() {
    // The echo upstream reflects the full URI, which carries the injected `key=`.
    let kw = Kw::builder().start().await;
    let secret = canary();
    kw.set_secret("platform", "Q_KEY", &secret);
    let got = kw
        .client()
        .get("q.example.test", "/v1/thing?key=dummy", &[])
        .await;
    assert_eq!(got.status, 200);
    assert!(kw.upstream.last().uri.contains(&secret), "was injected");
    assert_no_leak("query-scheme response", &dump(&got), &secret);
}

#[tokio::test]
async fn placeholder_value_echoed_back_is_redacted() {
    let kw = Kw::builder().start().await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    let got = kw
        .client()
        .get(
            "api.openai.com",
            "/echo-secret",
            &[("x-custom", "{{OPENAI_API_KEY}}")],
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_no_leak("placeholder echo", &dump(&got), &secret);
}

#[tokio::test]
async fn placeholder_to_unbound_host_is_refused_without_the_value() {
    let kw = Kw::builder().start().await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let got = kw
        .client()
        .get(
            "api.anthropic.com",
            "/echo-secret",
            &[("x-custom", "{{OPENAI_API_KEY}}")],
        )
        .await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("placeholder_not_allowed"));
    assert_no_leak("placeholder refusal", &dump(&got), &secret);
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn error_bodies_never_carry_the_secret() {
    // Drive every refusal reachable with the key in the vault and check each body.
    let rogue_pki = UpstreamPki::new();
    let rogue = EchoUpstream::start(&rogue_pki).await;
    let kw = Kw::builder()
        .proxy("max_body_bytes", 100)
        .resolve("api.anthropic.com", rogue.addr)
        .start()
        .await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    kw.set_secret("platform", "ANTHROPIC_API_KEY", &secret);
    let c = kw.client();
    let mut got = vec![
        // host_mismatch
        c.open("api.openai.com")
            .await
            .unwrap()
            .get("api.anthropic.com", "/x")
            .await,
        // payload_too_large
        c.send(
            "api.openai.com",
            Request::post("/v1/x")
                .header("host", "api.openai.com")
                .body(Full::new(Bytes::from(vec![b'x'; 1000])))
                .unwrap(),
        )
        .await,
        // upstream_tls (the credential was resolved before the dial failed)
        c.get("api.anthropic.com", "/v1/messages", &[]).await,
    ];
    got.push(c.open("evil.example.test").await.err().unwrap());
    for g in &got {
        assert!(g.error_code().is_some(), "{}", g.text());
        assert_no_leak(&format!("{:?} body", g.error_code()), &dump(g), &secret);
    }
}

#[tokio::test]
async fn audit_and_vault_files_never_contain_the_secret_or_token() {
    let (kw, secret) = kw_with_echo().await;
    // Inject, redact, deny: every kind of line.
    let c = kw.client();
    assert_eq!(c.get("api.openai.com", "/v1/echo", &[]).await.status, 200);
    let _ = c.get("api.openai.com", "/gzip?key=querysecret", &[]).await;
    let _ = c.open("evil.example.test").await;
    let mut anon = kw.client();
    anon.auth = Some((AGENT.into(), format!("{TOKEN}-wrong")));
    let _ = anon.open("api.openai.com").await;
    let lines = kw.audit_lines();
    assert!(lines.iter().any(|l| l["event"] == "inject"));
    assert!(lines.iter().any(|l| l["event"] == "redact"));
    let audit = std::fs::read(kw.audit_path()).unwrap();
    assert_no_leak("audit log", &audit, &secret);
    assert_no_leak("audit log", &audit, TOKEN);
    assert!(
        !String::from_utf8_lossy(&audit).contains("querysecret"),
        "a query string reached the audit log"
    );
    let vault = std::fs::read(kw.dir.path().join("vault.kw")).unwrap();
    assert_no_leak("vault file", &vault, &secret);
}

#[tokio::test]
async fn debug_of_state_types_does_not_contain_the_secret() {
    let kw = Kw::builder().start().await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    let state = &kw.running.state;
    let rt = state.runtime();
    let snapshot = state.vault.snapshot();
    let opened = snapshot
        .get("platform", "OPENAI_API_KEY")
        .unwrap()
        .expect("stored");
    assert_eq!(opened.value.expose(), secret.as_bytes());
    let principal = rt.directory.principal(AGENT, None).expect("agent");
    let grant = keyward::resolve::grant(&principal, "OPENAI_API_KEY", &*snapshot).unwrap();
    let debugs = [
        format!("{:?}", opened),
        format!("{:#?}", opened),
        format!("{:?}", grant),
        format!("{:?}", grant.value),
        format!("{:?}", principal),
        format!("{:?}", rt.directory),
        format!("{:?}", rt.policy),
        format!("{:?}", rt.config),
        format!("{:?}", state.vault),
        format!("{:?}", state.limits),
    ];
    for d in &debugs {
        assert_no_leak("Debug output", d.as_bytes(), &secret);
        assert_no_leak("Debug output", d.as_bytes(), TOKEN);
    }
    let metrics = state.metrics.render();
    assert_no_leak("metrics", metrics.as_bytes(), &secret);
}

#[tokio::test]
async fn keyward_log_at_trace_never_contains_the_secret_or_token() {
    let log = log_capture();
    let (kw, secret) = kw_with_echo().await;
    let c = kw.client();
    assert_eq!(c.get("api.openai.com", "/v1/echo", &[]).await.status, 200);
    let _ = c.get("api.openai.com", "/gzip", &[]).await;
    let _ = c.open("evil.example.test").await;
    let mut wrong = kw.client();
    wrong.auth = Some((AGENT.into(), format!("{TOKEN}-wrong")));
    let _ = wrong.open("api.openai.com").await;
    let text = log.lock().unwrap().clone();
    assert!(!text.is_empty(), "the log capture works");
    assert_no_leak("keyward log", &text, &secret);
    assert_no_leak("keyward log", &text, TOKEN);
}

#[tokio::test]
async fn response_body_read_to_the_end_after_redaction_is_well_formed_json() {
    // Redaction must not break the framing an SDK parses.
    let kw = Kw::builder().start().await;
    let secret = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    let resp = t
        .send_raw(
            Request::get("/v1/models")
                .header("host", "api.openai.com")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
    assert_no_leak("json echo", json.to_string().as_bytes(), &secret);
}
