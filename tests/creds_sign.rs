//! HMAC webhook signing and AWS SigV4 through the proxy: the upstream receives a
//! signature over the exact bytes it got, made with the stored key.

mod common;
use bytes::Bytes;
use common::*;
use hmac::{Hmac, Mac};
use http::Request;
use http_body_util::Full;
use keyward::proxy::inject::sign::{self, AwsCredentials, SigV4Request};
use keyward::secret::Secret;
use keyward::vault::SecretKind;
use sha2::Sha256;

const GH: &str = "api.github.com";

fn hmac_hex(key: &str, data: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

async fn post(kw: &Kw, path: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Got {
    let mut b = Request::post(path).header("host", GH);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    kw.client()
        .send(GH, b.body(Full::new(Bytes::from_static(body))).unwrap())
        .await
}

#[tokio::test]
async fn github_style_hmac_signature_over_the_forwarded_body() {
    let key = canary();
    let kw = Kw::builder()
        .provider(Provider::new("github", GH, "HOOK_SECRET").sign(
            r#"{ hmac = "sha256", header = "X-Hub-Signature-256", format = "sha256={hex}", over = "body" }"#,
        ))
        .start()
        .await;
    kw.set_secret_of_kind("platform", "HOOK_SECRET", SecretKind::Hmac, &key);
    let body: &[u8] = br#"{"action":"opened","number":1}"#;
    let got = post(
        &kw,
        "/hook",
        &[
            ("x-hub-signature-256", "sha256=forged"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    assert_eq!(seen.body, body);
    let sigs: Vec<_> = seen.headers.get_all("x-hub-signature-256").iter().collect();
    assert_eq!(sigs.len(), 1, "the forged signature must be replaced");
    assert_eq!(
        sigs[0].to_str().unwrap(),
        format!("sha256={}", hmac_hex(&key, body))
    );
    assert!(seen.headers.get("authorization").is_none());
    assert_no_leak("response", &got.body, &key);
    assert_eq!(kw.last_audit()["event"], "inject");
}

#[tokio::test]
async fn stripe_style_signature_over_timestamp_and_body() {
    let key = canary();
    let kw = Kw::builder()
        .provider(Provider::new("github", GH, "STRIPE_WEBHOOK").sign(
            r#"{ hmac = "sha256", header = "Stripe-Signature", format = "t={ts},v1={hex}", over = "timestamp.body", timestamp_header = "X-Timestamp" }"#,
        ))
        .start()
        .await;
    kw.set_secret_of_kind("platform", "STRIPE_WEBHOOK", SecretKind::Hmac, &key);
    let body: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    let got = post(&kw, "/webhook", &[], body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    let sig = seen.headers["stripe-signature"]
        .to_str()
        .unwrap()
        .to_string();
    let (t, v1) = sig
        .strip_prefix("t=")
        .and_then(|r| r.split_once(",v1="))
        .expect("t=..,v1=..");
    assert_eq!(seen.headers["x-timestamp"].to_str().unwrap(), t);
    let signed = [t.as_bytes(), b".", body].concat();
    assert_eq!(v1, hmac_hex(&key, &signed));
    let now = keyward::clock::unix_now();
    let ts: u64 = t.parse().unwrap();
    assert!(now.abs_diff(ts) < 60);
}

#[tokio::test]
async fn hmac_signing_respects_the_body_limit() {
    let kw = Kw::builder()
        .proxy("max_body_bytes", 16)
        .provider(
            Provider::new("github", GH, "HOOK_SECRET")
                .sign(r#"{ hmac = "sha256", header = "X-Sig" }"#),
        )
        .start()
        .await;
    kw.set_secret_of_kind("platform", "HOOK_SECRET", SecretKind::Hmac, "k");
    let got = post(&kw, "/hook", &[], b"0123456789abcdefghijklmnop").await;
    assert_eq!(got.status, 413);
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn aws_sigv4_replaces_the_sdk_signature() {
    let secret_key = canary();
    let session = canary();
    let kw = Kw::builder()
        .provider(
            Provider::new("github", GH, "AWS_CREDS")
                .sign(r#"{ aws_sigv4 = { service = "s3", region = "us-east-1" } }"#),
        )
        .start()
        .await;
    kw.set_secret_of_kind("platform", "AWS_CREDS",
        SecretKind::Aws,
        &format!(
            r#"{{"access_key_id":"AKIDREAL","secret_access_key":"{secret_key}","session_token":"{session}"}}"#
        ),
    );
    let body: &[u8] = b"hello object";
    let got = post(
        &kw,
        "/bucket/key%20name.txt?x-id=PutObject",
        &[
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDDUMMY/20200101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            ),
            ("x-amz-date", "20200101T000000Z"),
            ("x-amz-security-token", "dummy"),
            (
                "x-amz-content-sha256",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ),
            ("content-type", "text/plain"),
        ],
        body,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    assert_eq!(seen.body, body);
    let one = |n: &str| {
        let all: Vec<_> = seen.headers.get_all(n).iter().collect();
        assert_eq!(all.len(), 1, "{n}");
        all[0].to_str().unwrap().to_string()
    };
    let auth = one("authorization");
    let date = one("x-amz-date");
    assert_ne!(date, "20200101T000000Z");
    assert_eq!(one("x-amz-security-token"), session);
    assert_eq!(one("x-amz-content-sha256"), sign::sha256_hex(body));
    assert!(auth.starts_with(&format!(
        "AWS4-HMAC-SHA256 Credential=AKIDREAL/{}/us-east-1/s3/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=",
        &date[..8]
    )), "{auth}");
    // Verify as the server would: recompute over what arrived.
    let signed: Vec<(String, String)> = [
        "content-type",
        "x-amz-content-sha256",
        "x-amz-date",
        "x-amz-security-token",
    ]
    .iter()
    .map(|n| (n.to_string(), one(n)))
    .chain(std::iter::once(("host".to_string(), GH.to_string())))
    .collect();
    let (path, query) = seen.uri.split_once('?').unwrap();
    let want = sign::sigv4_authorization(
        &SigV4Request {
            method: "POST",
            path,
            query: Some(query),
            headers: &signed,
            payload_hash: &sign::sha256_hex(body),
        },
        &AwsCredentials {
            access_key_id: "AKIDREAL".into(),
            secret_access_key: Secret::from_str(&secret_key),
            session_token: None,
        },
        "us-east-1",
        "s3",
        &date,
    );
    assert_eq!(auth, want);
    assert_no_leak("response", &got.body, &secret_key);
}

#[tokio::test]
async fn aws_unsigned_payload_streams() {
    let kw = Kw::builder()
        .provider(Provider::new("github", GH, "AWS_CREDS").sign(
            r#"{ aws_sigv4 = { service = "s3", region = "eu-west-1", unsigned_payload = true } }"#,
        ))
        .start()
        .await;
    kw.set_secret_of_kind(
        "platform",
        "AWS_CREDS",
        SecretKind::Aws,
        r#"{"access_key_id":"AKIDREAL","secret_access_key":"sk"}"#,
    );
    let got = post(&kw, "/b/k", &[], b"data").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    assert_eq!(seen.headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
    assert!(seen.headers.get("x-amz-security-token").is_none());
    assert!(seen.headers["authorization"]
        .to_str()
        .unwrap()
        .contains("/eu-west-1/s3/aws4_request"));
}

#[tokio::test]
async fn sdk_streaming_payload_modes() {
    let kw = Kw::builder()
        .provider(
            Provider::new("github", GH, "AWS_CREDS")
                .sign(r#"{ aws_sigv4 = { service = "s3", region = "us-east-1" } }"#),
        )
        .start()
        .await;
    kw.set_secret_of_kind(
        "platform",
        "AWS_CREDS",
        SecretKind::Aws,
        r#"{"access_key_id":"AKIDREAL","secret_access_key":"sk"}"#,
    );
    // unsigned aws-chunked with trailers (S3 SDK default): kept as declared
    let mode = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
    let got = post(
        &kw,
        "/b/k",
        &[
            ("x-amz-content-sha256", mode),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "4"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        b"4\r\ndata\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = kw.upstream.last();
    assert_eq!(seen.headers["x-amz-content-sha256"], mode);
    let auth = seen.headers["authorization"].to_str().unwrap().to_string();
    assert!(auth.contains("x-amz-decoded-content-length"), "{auth}");
    assert!(auth.contains("x-amz-trailer"), "{auth}");
    // chunk signatures made with the dummy key: refused, nothing sent
    let before = kw.upstream.requests().len();
    let got = post(
        &kw,
        "/b/k",
        &[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")],
        b"x",
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(kw.upstream.requests().len(), before);
}

#[tokio::test]
async fn kind_mismatch_is_refused_not_sent() {
    let kw = Kw::builder()
        .provider(
            Provider::new("github", GH, "AWS_CREDS")
                .sign(r#"{ aws_sigv4 = { service = "s3", region = "us-east-1" } }"#),
        )
        .start()
        .await;
    kw.set_secret("platform", "AWS_CREDS", "plain-api-key-value");
    let got = post(&kw, "/b/k", &[], b"x").await;
    assert_eq!(got.status, 500);
    assert!(kw.upstream.requests().is_empty());
    assert_no_leak("refusal", &got.body, "plain-api-key-value");
}

#[tokio::test]
async fn placeholder_of_a_multi_field_secret_is_refused() {
    let secret_key = canary();
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "GITHUB_TOKEN", "ghp_plain_0123456789");
    kw.set_secret_of_kind(
        "platform",
        "AWS_CREDS",
        SecretKind::Aws,
        &format!(r#"{{"access_key_id":"AKIDREAL","secret_access_key":"{secret_key}"}}"#),
    );
    // bind the aws secret to the github host so only the kind check stands in the way
    kw.set_secret_for_hosts(
        "platform",
        "AWS_CREDS",
        &format!(r#"{{"access_key_id":"AKIDREAL","secret_access_key":"{secret_key}"}}"#),
        &[GH],
    );
    let got = kw
        .client()
        .get(GH, "/user", &[("x-custom", "{{AWS_CREDS}}")])
        .await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("placeholder_not_allowed"));
    assert!(got.text().contains("kind"), "{}", got.text());
    assert!(kw.upstream.requests().is_empty());
    assert_no_leak("refusal", &got.body, &secret_key);
}

/// A body keyward must read whole to sign, stalled after its first bytes: refused
/// after `idle_timeout` (400 `bad_request`, audited), never sent upstream.
#[tokio::test]
async fn a_stalled_body_that_must_be_signed_is_refused_after_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let kw = Kw::builder()
        .proxy("idle_timeout", "1s")
        .provider(Provider::new("github", GH, "HOOK_SECRET").sign(
            r#"{ hmac = "sha256", header = "X-Hub-Signature-256", format = "sha256={hex}", over = "body" }"#,
        ))
        .start()
        .await;
    kw.set_secret_of_kind("platform", "HOOK_SECRET", SecretKind::Hmac, &canary());
    let mut tls = kw.client().open_raw_tls(GH).await;
    tls.write_all(
        b"POST /hook HTTP/1.1\r\nhost: api.github.com\r\ncontent-length: 100\r\n\r\nonly ten b",
    )
    .await
    .unwrap();
    let (status, head, _) =
        tokio::time::timeout(std::time::Duration::from_secs(20), read_head_from(&mut tls))
            .await
            .expect("refused within the bound, not held forever");
    assert_eq!(status, 400, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-keyward-error: bad_request"),
        "{head}"
    );
    assert!(kw.upstream.requests().is_empty(), "nothing went upstream");
    let line = kw.last_audit();
    assert_eq!(line["event"], "deny");
    assert_eq!(line["reason"], "bad_request");
    assert_eq!(line["path"], "/hook");
}
