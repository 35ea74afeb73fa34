//! Admin API `PUT /v1/secrets/{scope}/{name}` with `kind`: multi-field values are
//! checked, and only their non-secret fields ever come back.

mod common;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

const ADMIN_TOKEN: &str = "kwadm-creds-0123456789abcdef";

async fn call(kw: &Kw, method: &str, path: &str, body: Option<serde_json::Value>) -> Got {
    let addr = kw.running.admin_addr.expect("admin API listening");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

#[tokio::test]
async fn put_oauth2_secret_returns_public_fields_only() {
    let kw = Kw::builder()
        .admin_token("ops", ADMIN_TOKEN, &["secrets:read", "secrets:manage"])
        .start()
        .await;
    let (cs, rt) = (canary(), canary());
    let value = json!({"client_id": "cid-9", "client_secret": cs, "refresh_token": rt,
                       "token_url": "https://auth.example.com/token"})
    .to_string();
    let got = call(
        &kw,
        "PUT",
        "/v1/secrets/platform/GH_OAUTH",
        Some(json!({"value": value, "kind": "oauth2"})),
    )
    .await;
    assert_eq!(got.status, 201, "{}", got.text());
    assert_eq!(got.json()["kind"], "oauth2");
    assert_eq!(got.json()["fields"]["client_id"], "cid-9");
    let read = call(&kw, "GET", "/v1/secrets/platform/GH_OAUTH", None).await;
    assert_eq!(
        read.json()["fields"]["token_url"],
        "https://auth.example.com/token"
    );
    for secret in [&cs, &rt] {
        assert_no_leak("put response", &got.body, secret);
        assert_no_leak("get response", &read.body, secret);
    }
    let bad = call(
        &kw,
        "PUT",
        "/v1/secrets/platform/X",
        Some(json!({"value": format!("nope-{cs}"), "kind": "oauth2"})),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_no_leak("refusal", &bad.body, &cs);
    let bad = call(
        &kw,
        "PUT",
        "/v1/secrets/platform/X",
        Some(json!({"value": "v", "kind": "jwt"})),
    )
    .await;
    assert_eq!(bad.status, 400);
}
