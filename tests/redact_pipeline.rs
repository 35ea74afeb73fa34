//! What a response is redacted of, end to end (SPEC §6.6), and how an answer that
//! cannot be redacted is refused: one audit line per decision (SPEC §6.7).

mod common;

use common::*;

const OPENAI_KEY: &str = "sk-openai-real-0123456789abcdef";

/// The audit lines of the one request the agent made with `path`.
fn lines_of(kw: &Kw, path: &str) -> Vec<serde_json::Value> {
    let lines = kw.audit_lines();
    let id = lines
        .iter()
        .find(|l| l["path"] == path)
        .and_then(|l| l["request_id"].as_str())
        .unwrap_or_else(|| panic!("no audit line for {path}: {lines:?}"))
        .to_string();
    lines
        .into_iter()
        .filter(|l| l["request_id"] == id.as_str())
        .collect()
}

/// An upstream answering in a content-encoding keyward cannot decode gets a 502
/// `upstream_encoding_unsupported`, and that refusal is audited: the `inject` line
/// of the decision to send, then one `upstream_error` line saying why the answer
/// was withheld (sized or chunked body alike).
#[tokio::test]
async fn unsupported_content_encoding_is_refused_and_audited() {
    let kw = Kw::start("").await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    for (path, query) in [("/encoding/zstd", ""), ("/encoding/compress", "?stream=1")] {
        let got = kw
            .client()
            .get("api.openai.com", &format!("{path}{query}"), &[])
            .await;
        assert_eq!(got.status, 502, "{path}: {}", got.text());
        assert_eq!(
            got.error_code().as_deref(),
            Some("upstream_encoding_unsupported")
        );
        assert_eq!(
            got.json()["error"]["type"],
            "keyward.upstream_encoding_unsupported"
        );
        assert_eq!(got.json()["error"]["agent"], AGENT);
        assert!(got.headers.get("content-encoding").is_none());
        assert_no_leak("the refusal", &got.body, OPENAI_KEY);
        // The upstream did answer (with the key in a body keyward cannot read).
        assert_eq!(kw.upstream.last().uri, format!("{path}{query}"));

        let lines = lines_of(&kw, path);
        assert_eq!(lines.len(), 2, "{path}: {lines:?}");
        assert_eq!(lines[0]["event"], "inject");
        assert_eq!(lines[0]["outcome"], "allowed");
        let refusal = &lines[1];
        assert_eq!(refusal["event"], "upstream_error");
        assert_eq!(refusal["outcome"], "error");
        assert_eq!(refusal["reason"], "upstream_encoding_unsupported");
        assert_eq!(refusal["status"], 502);
        assert_eq!(refusal["provider"], "openai");
        assert_eq!(refusal["secret"], "OPENAI_API_KEY");
        assert_eq!(refusal["agent"], AGENT);
    }
    let audit = std::fs::read(kw.audit_path()).unwrap();
    assert_no_leak("the audit log", &audit, OPENAI_KEY);
}

/// The same over h2: the refusal is an ordinary response on the stream.
#[tokio::test]
async fn unsupported_content_encoding_is_refused_over_h2() {
    let kw = Kw::start("").await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    let mut client = kw.client();
    client.h2 = true;
    let got = client.get("api.openai.com", "/encoding/zstd", &[]).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.error_code().as_deref(),
        Some("upstream_encoding_unsupported")
    );
    let lines = lines_of(&kw, "/encoding/zstd");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["event"], "upstream_error");
    assert_eq!(lines[1]["reason"], "upstream_encoding_unsupported");
}

/// A supported encoding is decoded and redacted, not refused (the control).
#[tokio::test]
async fn supported_content_encoding_is_not_refused() {
    let kw = Kw::start("").await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    // The echo upstream labels a plain body; "identity" is a no-op label.
    let got = kw
        .client()
        .get("api.openai.com", "/encoding/identity?stream=1", &[])
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "you sent: Bearer [REDACTED]");
    let lines = lines_of(&kw, "/encoding/identity");
    let events: Vec<_> = lines.iter().map(|l| l["event"].clone()).collect();
    assert_eq!(events, ["inject", "redact"]);
}
