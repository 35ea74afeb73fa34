//! The working core (issue 1/6): CONNECT, interception, provider match, each
//! injection scheme, stripping, denials, blind tunnel, SSE streaming.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::time::{Duration, Instant};

#[tokio::test]
async fn bearer_injection_replaces_dummy_key() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let got = kw
        .client()
        .get(
            "api.openai.com",
            "/v1/models?limit=2",
            &[
                ("authorization", "Bearer keyward-placeholder"),
                ("Authorization", "Bearer dup"),
                ("X-API-KEY", "x"),
            ],
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec!["Bearer sk-real-openai-0123456789"]);
    assert!(seen.headers.get("x-api-key").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert_eq!(seen.uri, "/v1/models?limit=2");
    // The echo upstream reflects the headers it got: the agent must not read the key back.
    assert!(
        !got.text().contains("sk-real-openai-0123456789"),
        "{}",
        got.text()
    );
    let lines = kw.audit_lines();
    assert_eq!(
        lines.last().unwrap()["event"],
        "redact",
        "the echoed key was redacted and audited"
    );
    let line = lines
        .iter()
        .find(|l| l["event"] == "inject")
        .expect("inject line")
        .clone();
    assert_eq!(line["outcome"], "allowed");
    assert_eq!(line["provider"], "openai");
    assert_eq!(line["secret"], "OPENAI_API_KEY");
    assert_eq!(line["scope"], "platform");
    assert_eq!(line["tier"], "platform");
    assert!(
        line.get("status").is_none(),
        "written before the upstream answered"
    );
    assert_eq!(line["path"], "/v1/models", "no query string in the audit");
    assert_eq!(line["agent"], AGENT);
}

#[tokio::test]
async fn header_scheme_x_api_key_for_anthropic() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let got = kw
        .client()
        .get(
            "api.anthropic.com",
            "/v1/messages",
            &[("x-api-key", "dummy"), ("authorization", "Bearer d")],
        )
        .await;
    assert_eq!(got.status, 200);
    let seen = kw.upstream.last();
    assert_eq!(seen.headers["x-api-key"], "sk-ant-real-0123456789");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn header_template_bot_scheme_for_discord() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "DISCORD_BOT_TOKEN", "discord-real-0123456789");
    let got = kw
        .client()
        .get(
            "discord.com",
            "/api/v10/users/@me",
            &[("authorization", "Bot dummy")],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bot discord-real-0123456789"
    );
}

#[tokio::test]
async fn basic_scheme_for_stripe() {
    use base64::Engine;
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "STRIPE_API_KEY", "sk_live_real_0123456789");
    let got = kw
        .client()
        .get(
            "api.stripe.com",
            "/v1/charges",
            &[("authorization", "Basic ZHVtbXk6")],
        )
        .await;
    assert_eq!(got.status, 200);
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("sk_live_real_0123456789:")
    );
    assert_eq!(kw.upstream.last().headers["authorization"], want.as_str());
}

#[tokio::test]
async fn query_scheme_replaces_dummy_parameter() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "Q_KEY", "q-real-0123456789");
    let got = kw
        .client()
        .get("q.example.test", "/v1/thing?key=dummy&x=1", &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().uri,
        "/v1/thing?x=1&key=q-real-0123456789"
    );
    assert_eq!(kw.last_audit()["path"], "/v1/thing");
}

#[tokio::test]
async fn path_prefix_scheme_for_telegram() {
    let kw = Kw::builder().start().await;
    kw.set_secret(
        "platform",
        "TELEGRAM_BOT_TOKEN",
        "123456:real-telegram-token",
    );
    let got = kw
        .client()
        .get("api.telegram.org", "/botDUMMY/getMe", &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().uri,
        "/bot123456:real-telegram-token/getMe"
    );
    let line = kw.last_audit();
    assert_eq!(
        line["path"], "/botDUMMY/getMe",
        "the audit keeps the agent's path, never the injected one"
    );
}

#[tokio::test]
async fn connect_without_credentials_gets_407() {
    let kw = Kw::builder().start().await;
    let mut c = kw.client();
    c.auth = None;
    let err = c.open("api.openai.com").await.err().expect("refused");
    assert_eq!(err.status, 407);
    assert_eq!(err.headers["proxy-authenticate"], "Basic realm=\"keyward\"");
    assert_eq!(err.error_code().as_deref(), Some("proxy_auth_required"));
    assert_eq!(err.json()["error"]["type"], "keyward.proxy_auth_required");
    let line = kw.last_audit();
    assert_eq!(line["event"], "auth_fail");
    assert_eq!(line["outcome"], "denied");
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn connect_with_wrong_token_gets_407() {
    let kw = Kw::builder().start().await;
    let mut c = kw.client();
    c.auth = Some((AGENT.into(), "wrong-token".into()));
    let err = c.open("api.openai.com").await.err().expect("refused");
    assert_eq!(err.status, 407);
    let line = kw.last_audit();
    assert_eq!(line["event"], "auth_fail");
    assert_eq!(line["agent"], AGENT);
    let text = std::fs::read_to_string(kw.audit_path()).unwrap();
    assert!(
        !text.contains("wrong-token") && !text.contains(TOKEN),
        "tokens never reach the audit log"
    );
}

#[tokio::test]
async fn unlisted_host_is_refused_without_contacting_upstream() {
    let kw = Kw::builder().start().await;
    let err = kw
        .client()
        .open("evil.example.test")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.status, 403);
    assert_eq!(err.error_code().as_deref(), Some("host_not_allowed"));
    let body = err.json();
    assert_eq!(body["error"]["type"], "keyward.host_not_allowed");
    assert_eq!(body["error"]["host"], "evil.example.test");
    assert_eq!(body["error"]["agent"], AGENT);
    let line = kw.last_audit();
    assert_eq!(line["event"], "deny");
    assert_eq!(line["reason"], "host_not_allowed");
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn port_outside_allowed_ports_is_refused() {
    let kw = Kw::builder().start().await;
    let err = kw
        .client()
        .connect("api.openai.com:22")
        .await
        .expect_err("refused");
    assert_eq!(err.0, 403);
    assert!(
        err.1
            .to_ascii_lowercase()
            .contains("x-keyward-error: port_not_allowed"),
        "{}",
        err.1
    );
    assert_eq!(kw.last_audit()["reason"], "port_not_allowed");
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn allowlisted_host_is_a_blind_tunnel_with_the_upstreams_own_certificate() {
    let kw = Kw::builder().start().await;
    let mut c = kw.client();
    // Trust only the upstream's CA: the handshake succeeds only if keyward did not intercept.
    c.ca_pem = kw.pki.ca_pem.clone();
    let got = c
        .get(
            "pypi.example.test",
            "/simple/",
            &[("authorization", "Bearer mine")],
        )
        .await;
    assert_eq!(got.status, 200);
    // Nothing was stripped or injected: it is the agent's own traffic.
    assert_eq!(kw.upstream.last().headers["authorization"], "Bearer mine");
    let line = kw.last_audit();
    assert_eq!(line["event"], "tunnel");
    assert_eq!(line["host"], "pypi.example.test");
}

#[tokio::test]
async fn host_header_differs_from_connect_target_is_refused() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    let got = t.get("api.anthropic.com", "/v1/messages").await;
    assert_eq!(got.status, 421);
    assert_eq!(got.error_code().as_deref(), Some("host_mismatch"));
    assert_eq!(kw.last_audit()["reason"], "host_mismatch");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn cleartext_request_to_provider_is_refused() {
    use tokio::io::AsyncWriteExt;
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let c = kw.client();
    let mut s = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    let req = format!(
        "GET http://api.openai.com/v1/models HTTP/1.1\r\nHost: api.openai.com\r\nProxy-Authorization: Basic {}\r\n\r\n",
        c.basic().unwrap()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, head, _) = read_head(&mut s).await;
    assert_eq!(status, 403);
    assert!(head.contains("cleartext_refused"), "{head}");
    assert_eq!(kw.last_audit()["reason"], "cleartext_refused");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn provider_host_resolving_to_private_address_is_refused_at_dial() {
    // internal.example.test is not in `resolve`; the test resolver maps it to a
    // private address that is NOT in allow_private. keyward refuses before any
    // packet is sent.
    let kw = Kw::builder()
        .provider(Provider::bearer(
            "internal",
            "internal.example.test",
            "INTERNAL_KEY",
        ))
        .resolve_names(&[("internal.example.test", &["10.20.30.40"])])
        .start()
        .await;
    kw.set_secret("platform", "INTERNAL_KEY", "internal-real-0123456789");
    let got = kw.client().get("internal.example.test", "/x", &[]).await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("private_address"));
    assert_eq!(kw.last_audit()["reason"], "private_address");
}

#[tokio::test]
async fn missing_secret_is_an_agent_readable_denial() {
    let kw = Kw::builder().start().await;
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("secret_not_found"));
    assert_eq!(got.json()["error"]["type"], "keyward.secret_not_found");
    assert_eq!(kw.last_audit()["reason"], "secret_not_found");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn sse_first_event_arrives_before_the_stream_ends() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    let started = Instant::now();
    let resp = t
        .send_raw(
            Request::get("/sse")
                .header("host", "api.openai.com")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    // The upstream holds the second event back 1.5 s; the first must not wait for it.
    assert!(
        first_at < Duration::from_millis(1400),
        "first event took {first_at:?}"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("second"));
}

#[tokio::test]
async fn h2_client_gets_injection_too() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut c = kw.client();
    c.h2 = true;
    let got = c
        .get(
            "api.openai.com",
            "/v1/models",
            &[("authorization", "Bearer dummy")],
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer sk-real-openai-0123456789"
    );
}

#[tokio::test]
async fn one_tunnel_carries_many_requests() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    for _ in 0..5 {
        assert_eq!(t.get("api.openai.com", "/v1/models").await.status, 200);
    }
    assert_eq!(kw.upstream.requests().len(), 5);
    assert_eq!(
        kw.upstream.connection_count(),
        1,
        "upstream connection is pooled"
    );
}

/// Thread-per-core: tunnels are dealt round-robin to `proxy.workers` threads, each
/// with its own upstream pool. Every request is still injected and audited once;
/// sequential tunnels reuse their worker's pooled connection, and each worker
/// dials its own (a shared pool would use one connection for all nine).
#[tokio::test]
async fn tunnels_on_several_workers_each_inject_and_audit() {
    let kw = Kw::builder().proxy("workers", 3).start().await;
    assert_eq!(kw.running.state.limits.workers, 3);
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    for i in 0..9 {
        let got = kw
            .client()
            .get("api.openai.com", &format!("/v1/models?i={i}"), &[])
            .await;
        assert_eq!(got.status, 200, "{}", got.text());
    }
    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 9);
    for s in &seen {
        assert_eq!(
            s.headers.get("authorization").unwrap(),
            "Bearer sk-real-openai-0123456789"
        );
    }
    let injected = kw
        .audit_lines()
        .iter()
        .filter(|l| l["event"] == "inject")
        .count();
    assert_eq!(injected, 9);
    let conns = kw.upstream.connection_count();
    assert!((3..9).contains(&conns), "{conns} upstream connections");
}
