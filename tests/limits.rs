//! Per-agent limits: request rate (429 + Retry-After) and open tunnels.

mod common;

use common::*;

#[tokio::test]
async fn agent_over_its_request_rate_gets_429_with_retry_after() {
    let kw = Kw::builder()
        .proxy("max_requests_per_second_per_agent", 1.0)
        .proxy("rate_burst", 2.0)
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    // The CONNECT takes one token, the first request the second.
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    assert_eq!(t.get("api.openai.com", "/v1/a").await.status, 200);
    let got = t.get("api.openai.com", "/v1/b").await;
    assert_eq!(got.status, 429);
    assert_eq!(got.error_code().as_deref(), Some("rate_limited"));
    assert!(got.headers.get("retry-after").is_some());
    assert_eq!(kw.last_audit()["reason"], "rate_limited");
    assert_eq!(kw.upstream.requests().len(), 1);
}

#[tokio::test]
async fn agent_over_its_tunnel_cap_is_refused_and_slots_come_back() {
    let kw = Kw::builder()
        .proxy("max_connections_per_agent", 1)
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut first = kw.client().open("api.openai.com").await.unwrap();
    assert_eq!(first.get("api.openai.com", "/v1/a").await.status, 200);
    let err = kw
        .client()
        .open("api.openai.com")
        .await
        .err()
        .expect("second tunnel refused");
    assert_eq!(err.status, 429);
    assert_eq!(err.error_code().as_deref(), Some("rate_limited"));
    drop(first);
    // The slot is released when the first tunnel closes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match kw.client().open("api.openai.com").await {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot never released: {}", e.status),
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_tunnel_outlives_the_header_timeout() {
    // SDK pools keep tunnels idle between calls; only idle_timeout may close them.
    let kw = Kw::builder()
        .proxy("header_read_timeout", "1s")
        .proxy("idle_timeout", "30s")
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    assert_eq!(t.get("api.openai.com", "/v1/a").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(t.get("api.openai.com", "/v1/b").await.status, 200);
}
