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
    let kw = Kw::builder().start().await;
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
    let kw = Kw::builder().start().await;
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
    let kw = Kw::builder().start().await;
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

const ANTHROPIC_KEY: &str = "kwtest-other-key-9876543210fedcba";
const AGENT_2: &str = "agent-2";
const TOKEN_2: &str = "tok-agent-2-secret";

fn client_for(kw: &Kw, agent: &str, token: &str) -> ProxyClient {
    ProxyClient {
        auth: Some((agent.into(), token.into())),
        ..kw.client()
    }
}

/// `/echo-value` with `value` (percent-encoded), optionally streamed.
fn echo_path(value: &str, streamed: bool) -> String {
    let v = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
    let stream = if streamed { "&stream=1" } else { "" };
    format!("/echo-value?v={v}{stream}")
}

/// The attack: an agent calls provider A (keyward injects A's key) and the
/// upstream answers with key B, which the agent may also use (e.g. the upstream
/// logged it when the agent called it through keyward). B never reaches the agent,
/// and the redaction is audited, whether the body is read whole or streamed.
#[tokio::test]
async fn another_in_scope_secret_echoed_by_an_upstream_is_redacted() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    kw.set_secret("platform", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    for streamed in [false, true] {
        let path = echo_path(ANTHROPIC_KEY, streamed);
        let got = kw.client().get("api.openai.com", &path, &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), "found: [REDACTED]", "streamed {streamed}");
        assert_eq!(got.headers["x-echo"], "[REDACTED]");
        assert_no_leak("the response", &got.body, ANTHROPIC_KEY);
        let lines = kw.audit_lines();
        let last = &lines[lines.len() - 2..];
        assert_eq!(last[0]["event"], "inject");
        assert_eq!(last[0]["secret"], "OPENAI_API_KEY");
        assert_eq!(last[1]["event"], "redact", "{last:?}");
        assert_eq!(last[1]["request_id"], last[0]["request_id"]);
        assert_eq!(last[1]["path"], "/echo-value");
    }
    // Encoded forms of the other key too (the same set of forms as the injected one).
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(ANTHROPIC_KEY)
    };
    let got = kw
        .client()
        .get("api.openai.com", &echo_path(&b64, false), &[])
        .await;
    assert_no_leak("the response", &got.body, ANTHROPIC_KEY);
    assert!(got.text().contains("[REDACTED]"), "{}", got.text());
}

/// A key rotated in the vault is redacted in its new value at once: the cached
/// in-scope set follows the vault snapshot.
#[tokio::test]
async fn rotated_in_scope_secret_is_redacted_in_its_new_value() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    kw.set_secret("platform", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let got = kw
        .client()
        .get("api.openai.com", &echo_path(ANTHROPIC_KEY, false), &[])
        .await;
    assert_eq!(got.text(), "found: [REDACTED]");
    let rotated = "kwtest-rotated-key-00112233445566";
    kw.set_secret("platform", "ANTHROPIC_API_KEY", rotated);
    let got = kw
        .client()
        .get("api.openai.com", &echo_path(rotated, true), &[])
        .await;
    assert_eq!(got.text(), "found: [REDACTED]");
}

/// Scope is the agent's own (SPEC §5.1): agent-1 may use only OpenAI, agent-2
/// also Stripe. Stripe's key echoed to agent-2 is redacted; echoed to agent-1 it
/// is not keyward's to know about (a key agent-1 can never be granted), and the
/// per-agent cache never hands one agent's set to the other, in either order.
#[tokio::test]
async fn in_scope_set_is_per_agent() {
    const STRIPE_KEY: &str = "sk_live_stripe-real-1234567890abcd";
    let kw = Kw::builder()
        .agent(Agent::agent_1().secrets(&["OPENAI_API_KEY"]))
        .agent(Agent::new(AGENT_2, TOKEN_2).secrets(&["OPENAI_API_KEY", "STRIPE_API_KEY"]))
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    kw.set_secret("platform", "STRIPE_API_KEY", STRIPE_KEY);
    let one = kw.client();
    let two = client_for(&kw, AGENT_2, TOKEN_2);
    for round in 0..2 {
        let got = two
            .get("api.openai.com", &echo_path(STRIPE_KEY, round == 1), &[])
            .await;
        assert_eq!(got.text(), "found: [REDACTED]", "agent-2, round {round}");
        let got = one
            .get("api.openai.com", &echo_path(STRIPE_KEY, round == 1), &[])
            .await;
        assert_eq!(
            got.text(),
            format!("found: {STRIPE_KEY}"),
            "agent-1 cannot be granted the Stripe key: not in its scope"
        );
        // Each still gets its own injected key redacted.
        let got = one.get("api.openai.com", "/echo-secret", &[]).await;
        assert_eq!(got.text(), "you sent: Bearer [REDACTED]");
    }
}

/// Multi-field records in scope: their secret fields are redacted (an AWS secret
/// access key and session token; an OAuth2 client secret and refresh token),
/// while the public fields (access key id, client id) are not secrets.
#[tokio::test]
async fn secret_fields_of_multi_field_records_in_scope_are_redacted() {
    use keyward::secret::Secret;
    use keyward::vault::{SecretKind, SetOptions};
    const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const AWS_SESSION: &str = "FwoGZXIvYXdzEXAMPLEsessionTOKEN0123456789";
    const OAUTH_SECRET: &str = "oauth-client-secret-abcdef0123456789";
    const OAUTH_REFRESH: &str = "oauth-refresh-token-9876543210abcdef";
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    let vault = &kw.running.state.vault;
    let aws = serde_json::json!({
        "access_key_id": "AKIAEXAMPLE123",
        "secret_access_key": AWS_SECRET,
        "session_token": AWS_SESSION,
    });
    common::vault::set_with(
        &**vault,
        "platform",
        "AWS_CREDS",
        Secret::from_str(&aws.to_string()),
        Some(SecretKind::Aws),
        SetOptions::default(),
    )
    .unwrap();
    let oauth = serde_json::json!({
        "client_id": "client-123",
        "client_secret": OAUTH_SECRET,
        "token_url": "https://auth.example.test/token",
        "refresh_token": OAUTH_REFRESH,
    });
    common::vault::set_with(
        &**vault,
        "platform",
        "SOME_OAUTH",
        Secret::from_str(&oauth.to_string()),
        Some(SecretKind::Oauth2),
        SetOptions::default(),
    )
    .unwrap();
    kw.running.state.refresh_vault().unwrap();
    for value in [AWS_SECRET, AWS_SESSION, OAUTH_SECRET, OAUTH_REFRESH] {
        let got = kw
            .client()
            .get("api.openai.com", &echo_path(value, false), &[])
            .await;
        assert_eq!(got.text(), "found: [REDACTED]");
    }
    let got = kw
        .client()
        .get("api.openai.com", &echo_path("AKIAEXAMPLE123", false), &[])
        .await;
    assert_eq!(got.text(), "found: AKIAEXAMPLE123", "a public field");
}
