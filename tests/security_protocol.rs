//! Protocol abuse (issue 6): raw bytes at keyward's port and inside an intercepted
//! tunnel — malformed heads, ambiguous framing, oversized and slow input, identity
//! and host confusion — and a hostile upstream that breaks framing.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk-real-openai-0123456789";

async fn kw_with_key(kw: KwBuilder) -> Kw {
    let kw = kw.start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    kw
}

/// Raw bytes at keyward's listening port; returns what came back.
async fn raw_outer(kw: &Kw, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(kw.addr()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_head_from(&mut s))
        .await
        .expect("keyward neither answered nor closed")
}

/// Raw bytes inside an intercepted tunnel to api.openai.com.
async fn raw_inner(kw: &Kw, bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let mut tls = kw.client().open_raw_tls("api.openai.com").await;
    tls.write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_head_from(&mut tls))
        .await
        .expect("keyward neither answered nor closed")
}

fn auth_header(kw: &Kw) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        kw.client().basic().unwrap()
    )
}

/// Reads until EOF or error; true when the peer closed within `within`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------
// At keyward's port (before any tunnel)

#[tokio::test]
async fn garbage_request_line_on_proxy_port_is_rejected() {
    let kw = Kw::builder().start().await;
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"CONNECT\r\n\r\n",
        b"CONNECT api.openai.com:443\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"CONNECT api.openai.com:443 HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let (status, head, _) = raw_outer(&kw, bytes).await;
        assert!(
            status == 0 || (400..500).contains(&status),
            "{:?}: {head}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn nul_cr_lf_in_connect_headers_are_rejected() {
    let kw = Kw::builder().start().await;
    let auth = auth_header(&kw);
    for bad in [
        "X-Evil: a\0b\r\n",
        "X-Evil: a\rb\r\n",
        "X Evil: b\r\n",
        "X-Evil\0: b\r\n",
        ": novalue\r\n",
        "X-Evil: a\r\n folded\r\n",
    ] {
        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{auth}{bad}\r\n"
        );
        let (status, head, _) = raw_outer(&kw, req.as_bytes()).await;
        assert!(status == 400 || status == 0, "{bad:?} was accepted: {head}");
    }
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn oversized_connect_head_gets_431() {
    let kw = kw_with_key(Kw::builder().proxy("max_header_bytes", 8192)).await;
    let filler = "a".repeat(20_000);
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{}X-Filler: {filler}\r\n\r\n",
        auth_header(&kw)
    );
    let (status, head, _) = raw_outer(&kw, req.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
}

#[tokio::test]
async fn many_small_connect_headers_over_the_limit_get_431() {
    let kw = kw_with_key(Kw::builder().proxy("max_header_bytes", 8192)).await;
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!(
        "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{}{many}\r\n",
        auth_header(&kw)
    );
    let (status, head, _) = raw_outer(&kw, req.as_bytes()).await;
    assert!(status == 431 || status == 400, "{head}");
}

#[tokio::test]
async fn slow_connect_head_is_cut_off() {
    let kw = kw_with_key(Kw::builder().proxy("header_read_timeout", "1s")).await;
    let mut s = TcpStream::connect(kw.addr()).await.unwrap();
    let started = Instant::now();
    s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n")
        .await
        .unwrap();
    // Slowloris: a byte now and then, never the end of the head.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if s.write_all(b"X").await.is_err() {
            break;
        }
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(4)).await,
        "a head that never completes was kept open"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn malformed_proxy_authorization_gets_407() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kw = Kw::builder().start().await;
    let cases = [
        String::new(),
        "Basic".to_string(),
        "Basic !!!notbase64!!!".to_string(),
        format!("Basic {}", b64(AGENT)),
        format!("Basic {}", b64(&format!("{AGENT}:"))),
        format!("Basic {}", b64(&format!(":{TOKEN}"))),
        format!("Bearer {TOKEN}"),
        format!("Basic {}", b64(&format!("{AGENT}:{TOKEN}x"))),
        format!("Basic {}", b64(&format!("{AGENT}\r\nX-Evil: 1:{TOKEN}"))),
        format!("Basic {}", b64(&format!("AGENT-1:{TOKEN}"))),
        format!("Basic {}", b64(&format!("{AGENT} :{TOKEN}"))),
    ];
    for value in &cases {
        let header = if value.is_empty() {
            String::new()
        } else {
            format!("Proxy-Authorization: {value}\r\n")
        };
        let req = format!(
            "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{header}\r\n"
        );
        let (status, head, _) = raw_outer(&kw, req.as_bytes()).await;
        assert_eq!(status, 407, "{value:?}: {head}");
        assert_eq!(
            head_error_code(&head).as_deref(),
            Some("proxy_auth_required")
        );
        assert!(head.contains("Basic realm=\"keyward\""), "{head}");
        assert_eq!(kw.last_audit()["event"], "auth_fail", "{value:?}");
    }
    let audit = std::fs::read_to_string(kw.audit_path()).unwrap();
    assert!(!audit.contains(TOKEN), "a token reached the audit log");
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn credentials_for_one_agent_with_another_agents_id_get_407() {
    let kw = Kw::builder()
        .agent(Agent::new("agent-2", "tok-agent-2"))
        .start()
        .await;
    let mut c = kw.client();
    c.auth = Some(("agent-2".into(), TOKEN.into()));
    let err = c.open("api.openai.com").await.err().expect("refused");
    assert_eq!(err.status, 407);
    assert_eq!(kw.last_audit()["agent"], "agent-2");
}

#[tokio::test]
async fn connection_flood_beyond_max_connections_gets_503() {
    let kw = kw_with_key(Kw::builder().proxy("max_connections", 2)).await;
    let _a = TcpStream::connect(kw.addr()).await.unwrap();
    let _b = TcpStream::connect(kw.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = TcpStream::connect(kw.addr()).await.unwrap();
    let (status, head, _) = tokio::time::timeout(Duration::from_secs(5), read_head(&mut c))
        .await
        .expect("no answer");
    assert_eq!(status, 503, "{head}");
    assert_eq!(
        head_error_code(&head).as_deref(),
        Some("too_many_connections")
    );
}

// ---------------------------------------------------------------------------
// Inside an intercepted tunnel

#[tokio::test]
async fn content_length_and_transfer_encoding_together_are_never_forwarded_ambiguously() {
    let kw = kw_with_key(Kw::builder()).await;
    let req = b"POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
    let (status, head, _) = raw_inner(&kw, req).await;
    if status == 200 {
        // Accepted: it must have been read one way (chunked, RFC 9112 §6.3) and
        // forwarded with one framing that matches the body.
        for seen in kw.upstream.requests() {
            let te = seen.headers.contains_key("transfer-encoding");
            let cl = seen.headers.get("content-length");
            assert!(!(te && cl.is_some()), "forwarded both CL and TE: {seen:?}");
            if let Some(cl) = cl {
                assert_eq!(cl.to_str().unwrap(), seen.body.len().to_string());
            }
            assert_ne!(seen.uri, "/smuggled", "a smuggled request reached upstream");
        }
        assert_eq!(kw.upstream.last().body, b"hello");
    } else {
        assert_eq!(status, 400, "{head}");
        assert!(kw.upstream.requests().is_empty());
    }
}

#[tokio::test]
async fn duplicate_differing_content_length_is_rejected() {
    let kw = kw_with_key(Kw::builder()).await;
    let req = b"POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 3\r\nContent-Length: 10\r\n\r\nabcdefghij";
    let (status, head, _) = raw_inner(&kw, req).await;
    assert_eq!(status, 400, "{head}");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn content_length_with_list_or_sign_is_rejected() {
    let kw = kw_with_key(Kw::builder()).await;
    for cl in ["3, 10", "+3", "-1", "0x3", "3 3"] {
        let req = format!(
            "POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: {cl}\r\n\r\nabc"
        );
        let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
        assert_eq!(status, 400, "Content-Length: {cl}: {head}");
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_rejected() {
    let kw = kw_with_key(Kw::builder()).await;
    for te in ["chunked, identity", "xchunked", "gzip", "chunked\x0b"] {
        let req = format!(
            "POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: {te}\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
        assert!(
            status == 400 || status == 501,
            "Transfer-Encoding: {te:?}: {head}"
        );
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn nul_cr_lf_in_tunnel_headers_are_rejected() {
    let kw = kw_with_key(Kw::builder()).await;
    for bad in [
        "X-Evil: a\0b\r\n",
        "X-Evil: a\rb\r\n",
        "X Evil: b\r\n",
        "X-Evil\0: b\r\n",
        "X-Evil: a\r\n folded\r\n",
        "Authorization: Bearer x\r\n\tInjected: 1\r\n",
    ] {
        let req = format!("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n{bad}\r\n");
        let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
        assert!(status == 400 || status == 0, "{bad:?} was accepted: {head}");
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn bad_request_line_inside_tunnel_is_rejected() {
    let kw = kw_with_key(Kw::builder()).await;
    for line in [
        "GET\r\n\r\n",
        "GET /v1/models\r\nHost: api.openai.com\r\n\r\n",
        "GET /v1/models HTTP/1.1 x\r\nHost: api.openai.com\r\n\r\n",
        "G\0T /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        "GET /v1/mo dels HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    ] {
        let (status, head, _) = raw_inner(&kw, line.as_bytes()).await;
        assert!(
            status == 400 || status == 0,
            "{line:?} was accepted: {head}"
        );
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn oversized_request_head_inside_tunnel_gets_431() {
    let kw = kw_with_key(Kw::builder().proxy("max_header_bytes", 8192)).await;
    let filler = "a".repeat(20_000);
    let req =
        format!("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nX-Filler: {filler}\r\n\r\n");
    let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn slow_request_head_inside_tunnel_is_cut_off() {
    // Inside a tunnel the idle timeout bounds a request head (see connect.rs).
    let kw = kw_with_key(
        Kw::builder()
            .proxy("header_read_timeout", "1s")
            .proxy("idle_timeout", "1s"),
    )
    .await;
    let mut tls = kw.client().open_raw_tls("api.openai.com").await;
    tls.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert!(
        closed_within(&mut tls, Duration::from_secs(4)).await,
        "a head that never completes was kept open"
    );
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn tls_handshake_that_never_starts_is_cut_off() {
    // CONNECT accepted, then silence: the tunnel must not be held forever.
    let kw = kw_with_key(Kw::builder().proxy("header_read_timeout", "1s")).await;
    let mut s = kw.client().connect("api.openai.com:443").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
}

#[tokio::test]
async fn body_over_max_body_bytes_with_content_length_gets_413() {
    let kw = kw_with_key(Kw::builder().proxy("max_body_bytes", 1000)).await;
    let got = kw
        .client()
        .send(
            "api.openai.com",
            Request::post("/v1/files")
                .header("host", "api.openai.com")
                .body(Full::new(Bytes::from(vec![b'x'; 5000])))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 413, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("payload_too_large"));
    assert_eq!(got.json()["error"]["type"], "keyward.payload_too_large");
    let line = kw.last_audit();
    assert_eq!(line["event"], "deny");
    assert_eq!(line["reason"], "payload_too_large");
    assert!(kw.upstream.requests().is_empty());
    assert_eq!(kw.upstream.connection_count(), 0, "refused before dialling");
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes_gets_413() {
    let kw = kw_with_key(Kw::builder().proxy("max_body_bytes", 1000)).await;
    let chunk = format!("{:x}\r\n{}\r\n", 800, "y".repeat(800));
    let req = format!(
        "POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n"
    );
    let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("payload_too_large"));
    assert!(
        kw.upstream.requests().is_empty(),
        "the upstream received a complete over-limit body"
    );
}

#[tokio::test]
async fn second_host_header_inside_tunnel_gets_421() {
    let kw = kw_with_key(Kw::builder()).await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    for hosts in [
        "Host: api.openai.com\r\nHost: api.anthropic.com\r\n",
        "Host: api.anthropic.com\r\nHost: api.openai.com\r\n",
        "Host: api.openai.com\r\nHost: api.openai.com\r\n",
    ] {
        let req = format!("GET /v1/models HTTP/1.1\r\n{hosts}\r\n");
        let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
        assert_eq!(status, 421, "{hosts:?}: {head}");
        assert_eq!(head_error_code(&head).as_deref(), Some("host_mismatch"));
        assert_eq!(kw.last_audit()["reason"], "host_mismatch");
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn host_header_with_other_port_or_userinfo_gets_421() {
    let kw = kw_with_key(Kw::builder()).await;
    for host in [
        "api.openai.com:8443",
        "api.anthropic.com",
        "api.openai.com.evil.example.test",
        "evil@api.openai.com",
        "api.openai.com@evil.example.test",
    ] {
        let req = format!("GET /v1/models HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (status, head, _) = raw_inner(&kw, req.as_bytes()).await;
        assert!(status == 421 || status == 400, "Host: {host}: {head}");
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn absolute_form_target_naming_another_host_gets_421() {
    let kw = kw_with_key(Kw::builder()).await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let req = b"GET https://api.anthropic.com/v1/messages HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
    let (status, head, _) = raw_inner(&kw, req).await;
    assert_eq!(status, 421, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("host_mismatch"));
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn missing_host_inside_tunnel_is_a_bad_request() {
    let kw = kw_with_key(Kw::builder()).await;
    let (status, head, _) = raw_inner(&kw, b"GET /v1/models HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("bad_request"));
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn h2_authority_differs_from_connect_host_gets_421() {
    let kw = kw_with_key(Kw::builder()).await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let mut c = kw.client();
    c.h2 = true;
    let mut t = c.open("api.openai.com").await.unwrap();
    let got = t.get("api.anthropic.com", "/v1/messages").await;
    assert_eq!(got.status, 421);
    assert_eq!(got.error_code().as_deref(), Some("host_mismatch"));
    assert_eq!(kw.last_audit()["reason"], "host_mismatch");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn h2_host_header_contradicting_authority_gets_421() {
    let kw = kw_with_key(Kw::builder()).await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let mut c = kw.client();
    c.h2 = true;
    let mut t = c.open("api.openai.com").await.unwrap();
    let got = t
        .send(
            Request::get("https://api.openai.com/v1/models")
                .header("host", "api.anthropic.com")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 421, "{}", got.text());
    assert!(kw.upstream.requests().is_empty());
}

/// Accepts any server certificate: lets a test present an SNI the leaf does not
/// cover, to see what keyward (not the client) does about it.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn sni_different_from_connect_host_closes_the_tunnel() {
    let kw = kw_with_key(Kw::builder()).await;
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    let stream = kw.client().connect("api.openai.com:443").await.unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from("api.anthropic.com").unwrap();
    if let Ok(mut tls) = connector.connect(name, stream).await {
        let _ = tls
            .write_all(b"GET /v1/messages HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            .await;
        let (status, head, _) = read_head_from(&mut tls).await;
        assert_eq!(
            status, 0,
            "a request with a foreign SNI was answered: {head}"
        );
    }
    assert!(kw.upstream.requests().is_empty());
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn hop_by_hop_connection_header_cannot_drop_injected_credential() {
    // `Connection: authorization` asks a proxy to strip Authorization; it must not
    // remove the injected one (nor let the agent's own through).
    let kw = kw_with_key(Kw::builder()).await;
    let req = b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nConnection: authorization, x-api-key\r\nAuthorization: Bearer agent-own\r\n\r\n";
    let (status, head, _) = raw_inner(&kw, req).await;
    assert_eq!(status, 200, "{head}");
    let seen = kw.upstream.last();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {KEY}").as_str()]);
    assert!(seen.headers.get("connection").is_none());
}

// ---------------------------------------------------------------------------
// A hostile upstream

/// A TLS upstream (HTTP/1.1 only, the harness PKI) that reads one request head and
/// answers with `reply` verbatim, then closes.
async fn raw_upstream(pki: &UpstreamPki, reply: &'static [u8]) -> SocketAddr {
    let mut cfg = (*pki.server_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => buf.push(byte[0]),
                    }
                }
                let _ = tls.write_all(reply).await;
                let _ = tls.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

async fn kw_with_hostile_upstream(reply: &'static [u8]) -> Kw {
    let pki = UpstreamPki::new();
    let addr = raw_upstream(&pki, reply).await;
    let kw = Kw::builder()
        .upstream_pki(pki)
        .resolve("api.openai.com", addr)
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    kw
}

/// One GET through the tunnel; the status and whether the body ended cleanly.
async fn get_body(kw: &Kw) -> (u16, Result<Vec<u8>, String>) {
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    let resp = t
        .send_raw(
            Request::get("/v1/models")
                .header("host", "api.openai.com")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body neither ended nor failed")
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

#[tokio::test]
async fn upstream_closing_mid_body_is_not_passed_off_as_complete() {
    let kw = kw_with_hostile_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\nonly-twenty-bytes...",
    )
    .await;
    // A small body of declared length is read whole before the head is sent, so
    // the truncation is answered as what it is.
    let (status, body) = get_body(&kw).await;
    assert_eq!(status, 502);
    let body = String::from_utf8(body.expect("a complete error body")).unwrap();
    assert!(body.contains("upstream_protocol"), "{body}");
    assert!(!body.contains("only-twenty"), "{body}");
    let last = kw.last_audit();
    assert_eq!(last["event"], "upstream_error");
    assert_eq!(last["reason"], "upstream_protocol");
}

#[tokio::test]
async fn upstream_closing_mid_chunked_body_is_not_passed_off_as_complete() {
    let kw = kw_with_hostile_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    let (_, body) = get_body(&kw).await;
    assert!(
        body.is_err(),
        "a chunked body without its last chunk reached the agent as complete: {body:?}"
    );
}

#[tokio::test]
async fn upstream_sending_invalid_chunk_framing_is_an_error() {
    let kw = kw_with_hostile_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\nbogus\r\n0\r\n\r\n",
    )
    .await;
    let (_, body) = get_body(&kw).await;
    assert!(
        body.is_err(),
        "broken chunk framing was smoothed over: {body:?}"
    );
}

#[tokio::test]
async fn upstream_sending_garbage_instead_of_a_response_gets_502() {
    let kw = kw_with_hostile_upstream(b"SSH-2.0-OpenSSH_9.0\r\n\r\n").await;
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_protocol"));
    let line = kw.last_audit();
    assert_eq!(line["reason"], "upstream_protocol");
    assert_eq!(line["outcome"], "error");
}

#[tokio::test]
async fn upstream_with_conflicting_content_lengths_gets_502() {
    let kw = kw_with_hostile_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello",
    )
    .await;
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_protocol"));
}

#[tokio::test]
async fn upstream_closing_without_answering_gets_502() {
    let kw = kw_with_hostile_upstream(b"").await;
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(
        matches!(
            got.error_code().as_deref(),
            Some("upstream_protocol") | Some("upstream_unreachable")
        ),
        "{:?}",
        got.error_code()
    );
}
