//! WebSocket through an intercepted tunnel: the handshake gets the credential
//! (OpenAI Realtime style), then frames pass both ways.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_handshake_is_injected_then_frames_flow_both_ways() {
    let kw = Kw::start("").await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let client = kw.client();
    let tcp = client.connect("api.openai.com:443").await.expect("tunnel");
    let tls = tokio_rustls::TlsConnector::from(client.tls_config())
        .connect(ServerName::try_from("api.openai.com").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = "wss://api.openai.com/ws?model=x"
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        "Bearer keyward-placeholder".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
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
