//! A bodiless answer keeps its framing while a secret is in scope (issue 15, bug 1):
//! a HEAD answer's `content-length` is the representation's length (boto3's
//! `head_object` reads it), 204/304 carry no body, and their headers are still
//! redacted; a GET of the same resource is still redacted as before.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const OPENAI_KEY: &str = "sk-openai-real-0123456789abcdef";
const HOST: &str = "api.openai.com";

/// Small (read whole on GET) and large (streamed on GET) representations.
const LENGTHS: [usize; 2] = [100, 200_000];

fn request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn started() -> Kw {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    kw
}

/// HEAD through keyward (h1 and h2) answers with the upstream's `content-length`
/// and no body; the upstream got the HEAD with the key injected, and the echoed
/// key in a header is still redacted.
#[tokio::test]
async fn head_keeps_the_upstream_content_length_over_h1_and_h2() {
    let kw = started().await;
    for h2 in [false, true] {
        for len in LENGTHS {
            let mut client = kw.client();
            client.h2 = h2;
            let path = format!("/sized?len={len}");
            let got = client.send(HOST, request("HEAD", &path)).await;
            let what = format!("HEAD len={len} h2={h2}");
            assert_eq!(got.status, 200, "{what}");
            assert_eq!(
                got.headers
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()),
                Some(len.to_string().as_str()),
                "{what}: {:?}",
                got.headers
            );
            assert!(got.body.is_empty(), "{what}");
            assert_eq!(got.headers["x-echo"], "Bearer [REDACTED]", "{what}");
            assert_no_leak(&what, format!("{:?}", got.headers).as_bytes(), OPENAI_KEY);

            let seen = kw.upstream.last();
            assert_eq!(seen.method, "HEAD");
            assert_eq!(seen.uri, path);
            assert_eq!(
                seen.headers["authorization"],
                format!("Bearer {OPENAI_KEY}").as_str()
            );
            // One decision line, then the echo's redaction line.
            let lines = kw.audit_lines();
            let events: Vec<_> = lines[lines.len() - 2..]
                .iter()
                .map(|l| (l["event"].clone(), l["method"].clone(), l["secret"].clone()))
                .collect();
            assert_eq!(
                events,
                [
                    ("inject".into(), "HEAD".into(), "OPENAI_API_KEY".into()),
                    ("redact".into(), "HEAD".into(), "OPENAI_API_KEY".into())
                ],
                "{what}"
            );
        }
    }
}

/// curl's `-I` (a real HEAD client) prints the upstream's `Content-Length`.
#[tokio::test]
async fn curl_head_sees_the_content_length() {
    let Some(curl) = tools::require("curl", "curl_head_sees_the_content_length") else {
        return;
    };
    let kw = started().await;
    let ca = kw.dir.path().join("ca.pem");
    let kw_addr = kw.addr();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(curl)
            .args(["-sS", "-I", "--noproxy", "", "--cacert"])
            .arg(&ca)
            .arg("--proxy")
            .arg(format!("http://{AGENT}:{TOKEN}@{kw_addr}"))
            .arg(format!("https://{HOST}/sized?len=4321"))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("content-length: 4321"), "{stdout}");
    assert!(stdout.contains("x-echo: bearer [redacted]"), "{stdout}");
    assert_no_leak(
        "curl -I",
        stdout.as_bytes(),
        &OPENAI_KEY.to_ascii_lowercase(),
    );
    assert_eq!(kw.upstream.last().method, "HEAD");
}

/// 204 and 304 carry no body over h1 and h2, their headers redacted.
#[tokio::test]
async fn no_content_and_not_modified_carry_no_body() {
    let kw = started().await;
    for h2 in [false, true] {
        for status in [204u16, 304] {
            let mut client = kw.client();
            client.h2 = h2;
            let path = format!("/sized?len=77&status={status}");
            let got = client.send(HOST, request("GET", &path)).await;
            let what = format!("{status} h2={h2}");
            assert_eq!(got.status, status, "{what}");
            assert!(got.body.is_empty(), "{what}: {}", got.text());
            assert!(got.headers.get("transfer-encoding").is_none(), "{what}");
            assert_eq!(got.headers["x-echo"], "Bearer [REDACTED]", "{what}");
            if status == 204 {
                assert!(got.headers.get("content-length").is_none(), "{what}");
            } else if let Some(len) = got.headers.get("content-length") {
                // A 304's length is the representation's; never rewritten.
                assert_eq!(len, "77", "{what}");
            }
            assert_eq!(kw.upstream.last().uri, path);
        }
    }
}

/// The control: a GET of the same resource is redacted, small (exact new
/// length) or large (streamed), over h1 and h2.
#[tokio::test]
async fn get_of_the_same_resource_is_still_redacted() {
    let kw = started().await;
    for h2 in [false, true] {
        for len in LENGTHS {
            let mut client = kw.client();
            client.h2 = h2;
            let got = client
                .send(HOST, request("GET", &format!("/sized?len={len}")))
                .await;
            let what = format!("GET len={len} h2={h2}");
            assert_eq!(got.status, 200, "{what}");
            assert!(
                got.text().starts_with("you sent: Bearer [REDACTED]..."),
                "{what}"
            );
            assert_no_leak(&what, &got.body, OPENAI_KEY);
            // Every byte but the secret's, which became the marker.
            assert_eq!(
                got.body.len(),
                len - OPENAI_KEY.len() + "[REDACTED]".len(),
                "{what}"
            );
            if let Some(n) = got.headers.get("content-length") {
                assert_eq!(n, got.body.len().to_string().as_str(), "{what}");
            }
        }
    }
}
