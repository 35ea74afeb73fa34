//! WebSocket through an intercepted tunnel: the handshake gets the credential
//! (OpenAI Realtime style), then frames pass both ways.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// CONNECT + TLS to api.openai.com through keyward, then the WebSocket handshake
/// with `headers`; asserts the `101`.
async fn open(kw: &Kw, url: &str, headers: &[(&'static str, &str)]) -> Ws {
    let client = kw.client();
    let tcp = client.connect("api.openai.com:443").await.expect("tunnel");
    let tls = tokio_rustls::TlsConnector::from(client.tls_config())
        .connect(ServerName::try_from("api.openai.com").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

#[tokio::test]
async fn websocket_handshake_is_injected_then_frames_flow_both_ways() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut ws = open(
        &kw,
        "wss://api.openai.com/ws?model=x",
        &[("authorization", "Bearer keyward-placeholder")],
    )
    .await;
    let seen = kw.upstream.last();
    assert_eq!(
        seen.headers["authorization"],
        "Bearer sk-real-openai-0123456789"
    );
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(
            reply.into_text().unwrap().as_str(),
            format!("echo:hello {i}")
        );
    }
    let line = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .unwrap();
    assert_eq!(line["path"], "/ws");
}

/// An upstream that echoes the credential in a WebSocket frame: the agent gets
/// `[REDACTED]`, a `redact` line is audited, and the compression extension the
/// agent offered never reached the upstream (frames must stay readable).
#[tokio::test]
async fn websocket_frames_echoing_the_secret_are_redacted_and_audited() {
    let kw = Kw::builder().start().await;
    let secret = format!("sk-real-{}", canary());
    kw.set_secret("platform", "OPENAI_API_KEY", &secret);
    let mut ws = open(
        &kw,
        "wss://api.openai.com/ws?model=realtime",
        &[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert!(kw
        .upstream
        .last()
        .headers
        .get("sec-websocket-extensions")
        .is_none());
    // The agent (here: the test) puts the value in a message; the upstream echoes it.
    ws.send(Message::text(format!("my key is {secret}!")))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(reply.as_str(), "echo:my key is [REDACTED]!");
    assert_no_leak("websocket reply", reply.as_bytes(), &secret);
    // The stream goes on after a redaction.
    ws.send(Message::text("again")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert_eq!(reply.as_str(), "echo:again");
    let lines = kw.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "redact" && l["path"] == "/ws"),
        "{lines:?}"
    );
}
