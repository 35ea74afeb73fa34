//! An upstream that does not answer in time is a 504 `upstream_timeout`, audited as
//! an `upstream_error` after the `inject` line of the decision (SPEC §6.4, §6.7):
//! a head later than `proxy.response_timeout`, and an upstream that accepts TCP but
//! never finishes TLS within `proxy.connect_timeout`.

mod common;

use common::*;
use std::time::Duration;

const KEY: &str = "kwtest-timeout-key-0123456789abcdef";

/// The `upstream_error` line of the request to `path`, after its `inject` line.
fn assert_timeout_audited(kw: &Kw, path: &str) {
    let lines = kw.audit_lines();
    let mine: Vec<_> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert_eq!(mine[0]["event"], "inject");
    assert_eq!(mine[0]["outcome"], "allowed");
    assert_eq!(mine[1]["event"], "upstream_error");
    assert_eq!(mine[1]["outcome"], "error");
    assert_eq!(mine[1]["reason"], "upstream_timeout");
    assert_eq!(mine[1]["status"], 504);
    assert_eq!(mine[1]["request_id"], mine[0]["request_id"]);
}

#[tokio::test]
async fn a_head_later_than_response_timeout_is_a_504() {
    let kw = Kw::builder().proxy("response_timeout", "1s").start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let got = kw
        .client()
        .get("api.openai.com", "/slow?ms=4000", &[])
        .await;
    assert_eq!(got.status, 504, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_timeout"));
    assert_eq!(got.json()["error"]["type"], "keyward.upstream_timeout");
    assert_no_leak("the 504", &got.body, KEY);
    // The request did go out (the decision was made and audited first).
    assert_eq!(kw.upstream.last().uri, "/slow?ms=4000");
    assert_timeout_audited(&kw, "/slow");
    // An answer in time on the same tunnel's pool still works.
    let ok = kw.client().get("api.openai.com", "/slow?ms=10", &[]).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn an_upstream_that_never_finishes_tls_is_a_504_within_connect_timeout() {
    // Accepts TCP, then says nothing: the TLS handshake can only time out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let kw = Kw::builder()
        .proxy("connect_timeout", "1s")
        .resolve("api.openai.com", silent_addr)
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let started = std::time::Instant::now();
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 504, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded by connect_timeout"
    );
    // The echo upstream saw nothing: the request never left keyward.
    assert!(kw.upstream.requests().is_empty());
    assert_timeout_audited(&kw, "/v1/models");
}

/// A streamed answer whose upstream goes silent mid-body ends as a body error after
/// `response_timeout` of silence (the request no longer holds its tunnel forever);
/// what came before the silence was delivered.
#[tokio::test]
async fn a_streamed_body_silent_for_response_timeout_ends_as_an_error() {
    use http_body_util::BodyExt;
    let kw = Kw::builder().proxy("response_timeout", "1s").start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let mut tunnel = kw.client().open("api.openai.com").await.expect("tunnel");
    let req = http::Request::get("/stall")
        .header("host", "api.openai.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = tunnel.send_raw(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or(&[])),
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await
    .expect("the stalled body is ended, not held forever");
    assert!(ended, "ends as an error, never as a clean end of stream");
    assert_eq!(got, b"data: first\n\n");
}

/// Silences shorter than `response_timeout` are not cut (SSE between events).
#[tokio::test]
async fn a_stream_with_pauses_shorter_than_response_timeout_completes() {
    let kw = Kw::builder().proxy("response_timeout", "3s").start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    // `/sse`: two events 1.5 s apart.
    let got = kw.client().get("api.openai.com", "/sse", &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.text().contains("second"), "{}", got.text());
}
