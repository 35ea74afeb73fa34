//! `proxy.idle_timeout` inside intercepted tunnels: a tunnel with nothing in
//! flight and no bytes moving is closed, whatever the protocol; a long streamed
//! answer is not.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Short enough for a test, and well under `header_read_timeout`, so that a close
/// within the bounds below can only be the idle clock's doing.
const IDLE: Duration = Duration::from_secs(1);
/// Generous: the close comes at most IDLE × 1.25 plus a close grace after the last byte.
const CLOSE_BOUND: Duration = Duration::from_secs(4);

async fn kw() -> Kw {
    let kw = Kw::builder()
        .proxy("idle_timeout", "1s")
        .proxy("header_read_timeout", "20s")
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    kw
}

/// Reads until the peer closes (EOF or error); the time that took.
async fn time_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the tunnel was never closed");
    started.elapsed()
}

#[tokio::test]
async fn tunnel_that_completes_tls_and_sends_nothing_is_closed_after_idle_timeout() {
    // hyper waits for the first bytes (h1/h2 detection) with no timer of its own.
    let kw = kw().await;
    let mut tls = kw.client().open_raw_tls("api.openai.com").await;
    let took = time_to_close(&mut tls).await;
    assert!(
        took >= IDLE / 2 && took <= CLOSE_BOUND,
        "closed after {took:?}"
    );
}

#[tokio::test]
async fn idle_h2_tunnel_is_closed_after_idle_timeout() {
    // hyper has no idle limit for h2 at all.
    let kw = kw().await;
    let mut client = kw.client();
    client.h2 = true;
    let mut t = client.open("api.openai.com").await.unwrap();
    assert_eq!(t.get("api.openai.com", "/v1/a").await.status, 200);
    let Sender::H2(sender) = &t.sender else {
        panic!("not h2")
    };
    let idle_from = Instant::now();
    while !sender.is_closed() {
        assert!(
            idle_from.elapsed() <= CLOSE_BOUND,
            "idle h2 tunnel still open after {:?}",
            idle_from.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle_from.elapsed() >= IDLE / 2, "closed too early");
}

#[tokio::test]
async fn idle_h1_tunnel_after_a_request_is_closed_after_idle_timeout() {
    let kw = kw().await;
    let mut tls = kw.client().open_raw_tls("api.openai.com").await;
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"GET /v1/a HTTP/1.1\r\nhost: api.openai.com\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_head_from(&mut tls).await;
    assert_eq!(status, 200, "{head}");
    let took = time_to_close(&mut tls).await;
    assert!(took <= CLOSE_BOUND, "closed after {took:?}");
}

async fn stream_outlives_idle_timeout(h2: bool) {
    let kw = kw().await;
    let mut client = kw.client();
    client.h2 = h2;
    let mut t = client.open("api.openai.com").await.unwrap();
    // The upstream sends one event, then nothing for 1.5 s (> IDLE), then another.
    let got = t.get("api.openai.com", "/sse").await;
    assert_eq!(got.status, 200);
    let body = got.text();
    assert!(
        body.contains("data: first") && body.contains("data: second"),
        "stream cut: {body:?}"
    );
}

#[tokio::test]
async fn h1_stream_with_a_silence_longer_than_idle_timeout_is_not_cut() {
    stream_outlives_idle_timeout(false).await;
}

#[tokio::test]
async fn h2_stream_with_a_silence_longer_than_idle_timeout_is_not_cut() {
    stream_outlives_idle_timeout(true).await;
}

#[tokio::test]
async fn a_tunnel_in_use_stays_open_past_idle_timeout() {
    let kw = kw().await;
    let mut client = kw.client();
    client.h2 = true;
    let mut t = client.open("api.openai.com").await.unwrap();
    for i in 0..6 {
        assert_eq!(
            t.get("api.openai.com", &format!("/v1/{i}")).await.status,
            200
        );
        tokio::time::sleep(IDLE / 2).await;
    }
}
