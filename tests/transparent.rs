//! `[proxy] transparent_listen` (issue 19, SPEC §12): a TLS client connecting
//! straight to the transparent listener (as a pod's redirected TCP does) is
//! treated as a CONNECT from `transparent_agent` to its SNI host.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FILES_SECRET: &str = "FILES_KEY";
const REAL: &str = "files-real-0123456789abcdef";

async fn start() -> Kw {
    let kw = Kw::builder()
        .provider(Provider::bearer("files", "files.test", FILES_SECRET))
        .proxy("transparent_listen", "127.0.0.1:0")
        .proxy("transparent_agent", AGENT)
        .start()
        .await;
    kw.set_secret("platform", FILES_SECRET, REAL);
    kw
}

fn transparent(kw: &Kw) -> SocketAddr {
    kw.running
        .transparent_addr
        .expect("transparent_listen is bound")
}

/// TLS to the transparent listener with `sni` (none when `None`).
async fn tls(
    kw: &Kw,
    sni: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut cfg = (*kw.client().tls_config()).clone();
    cfg.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("files.test").to_string()).unwrap();
    let tcp = TcpStream::connect(transparent(kw)).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// The audit lines that name `host`.
fn audit_for(kw: &Kw, host: &str) -> Vec<serde_json::Value> {
    kw.audit_lines()
        .into_iter()
        .filter(|l| l["host"] == host)
        .collect()
}

#[tokio::test]
async fn sni_of_a_provider_host_is_injected_as_the_transparent_agent() {
    let kw = start().await;
    let stream = tls(&kw, Some("files.test"))
        .await
        .expect("TLS through keyward");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/v1/data")
        .header("host", "files.test")
        .header("authorization", "Bearer keyward-placeholder")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(REAL), "redacted");
    let seen = kw.upstream.last();
    assert_eq!(seen.uri, "/v1/data");
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {REAL}").as_str()]);
    let inject = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .expect("an inject line");
    assert_eq!(inject["agent"], AGENT);
    assert_eq!(inject["host"], "files.test");
    assert_eq!(inject["provider"], "files");
    assert_no_leak_in_audit(&kw);
}

fn assert_no_leak_in_audit(kw: &Kw) {
    let text = std::fs::read_to_string(kw.audit_path()).unwrap();
    assert!(!text.contains(REAL), "the secret is in the audit log");
}

#[tokio::test]
async fn a_host_outside_the_policy_is_refused_and_audited() {
    let kw = start().await;
    let got = tls(&kw, Some("evil.example.test")).await;
    assert!(got.is_err(), "keyward closes instead of serving TLS");
    assert!(
        kw.upstream.requests().is_empty(),
        "the upstream saw nothing"
    );
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = audit_for(&kw, "evil.example.test");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "deny");
    assert_eq!(lines[0]["reason"], "host_not_allowed");
    assert_eq!(lines[0]["agent"], AGENT);
}

#[tokio::test]
async fn a_client_hello_without_sni_is_refused() {
    let kw = start().await;
    let got = tls(&kw, None).await;
    assert!(got.is_err(), "no SNI, no tunnel");
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = kw.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "deny");
    assert_eq!(lines[0]["reason"], "bad_request");
}

#[tokio::test]
async fn cleartext_toward_a_provider_is_refused() {
    let kw = start().await;
    let mut s = TcpStream::connect(transparent(&kw)).await.unwrap();
    s.write_all(
        b"GET /v1/data HTTP/1.1\r\nHost: files.test\r\nAuthorization: Bearer dummy\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, head, _body) = read_head(&mut s).await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("cleartext_refused"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = audit_for(&kw, "files.test");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "cleartext_refused");
    assert_eq!(lines[0]["agent"], AGENT);
}

#[tokio::test]
async fn transparent_listen_needs_a_known_agent() {
    let err = Kw::builder()
        .proxy("transparent_listen", "127.0.0.1:0")
        .try_start()
        .await
        .err()
        .expect("refused");
    assert!(err.contains("proxy.transparent_agent"), "{err}");
    let err = Kw::builder()
        .proxy("transparent_listen", "127.0.0.1:0")
        .proxy("transparent_agent", "nobody")
        .try_start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("proxy.transparent_agent") && err.contains("nobody"),
        "{err}"
    );
}

/// `keyward run`'s relay reports what the jail refused as an authenticated
/// CONNECT to `jail-report.keyward.invalid`; serve audits and counts it.
async fn report(kw: &Kw, auth: Option<String>, count: &str) -> (u16, String) {
    let mut s = TcpStream::connect(kw.addr()).await.unwrap();
    let mut req = format!(
        "CONNECT jail-report.keyward.invalid:9 HTTP/1.1\r\nHost: jail-report.keyward.invalid:9\r\n\
         x-keyward-jail-blocks: {count}\r\nx-keyward-jail-what: DNS lookup of \"x.test\"\r\n"
    );
    if let Some(b) = auth {
        req.push_str(&format!("Proxy-Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, head, _) = read_head(&mut s).await;
    (status, head)
}

#[tokio::test]
async fn jail_reports_are_audited_as_jail_block_and_counted() {
    let kw = start().await;
    let (status, head) = report(&kw, kw.client().basic(), "3").await;
    assert_eq!(status, 204, "{head}");
    let line = kw.last_audit();
    assert_eq!(line["event"], "jail_block");
    assert_eq!(line["agent"], AGENT);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("3 refused; latest: DNS lookup"),
        "{line}"
    );
    // A refusal on the transparent path is a jail block too.
    let _ = tls(&kw, Some("evil.example.test")).await;
    let metrics = kw.running.state.metrics.render();
    assert!(metrics.contains("keyward_jail_blocks_total 4"), "{metrics}");
    // Unauthenticated or malformed reports are refused and count nothing.
    let (status, _) = report(&kw, None, "5").await;
    assert_eq!(status, 407);
    let (status, _) = report(&kw, kw.client().basic(), "lots").await;
    assert_eq!(status, 400);
    let metrics = kw.running.state.metrics.render();
    assert!(metrics.contains("keyward_jail_blocks_total 4"), "{metrics}");
    assert!(kw.upstream.requests().is_empty());
}
