//! Per-agent / per-chain request rules: a request no rule allows is refused with
//! `request_not_allowed` before any credential is attached.

mod common;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const GH: &str = "api.github.com";
const TOKEN_VALUE: &str = "ghp_real_token_0123456789abcdef";

async fn send(kw: &Kw, method: &str, path: &str) -> Got {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", GH)
        .header("authorization", "Bearer dummy")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    kw.client().send(GH, req).await
}

#[tokio::test]
async fn agent_rules_allow_listed_endpoints_and_deny_the_rest_before_injection() {
    let kw = Kw::builder()
        .agent(Agent::agent_1().rule("github", &["GET /repos/**", "POST /repos/*/*/issues"]))
        .start()
        .await;
    kw.set_secret("platform", "GITHUB_TOKEN", TOKEN_VALUE);

    let ok = send(&kw, "GET", "/repos/acme/app/pulls").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = send(&kw, "POST", "/repos/acme/app/issues").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let upstream_seen = kw.upstream.requests().len();
    assert_eq!(upstream_seen, 2);

    for (m, p) in [
        ("DELETE", "/repos/acme/app"),
        ("POST", "/repos/acme/app/pulls"),
        ("GET", "/user"),
        ("GET", "/repos/../user"),
        ("GET", "/repos/%2e%2e/user"),
    ] {
        let denied = send(&kw, m, p).await;
        assert_eq!(denied.status, 403, "{m} {p}");
        assert_eq!(
            denied.error_code().as_deref(),
            Some("request_not_allowed"),
            "{m} {p}"
        );
        assert_eq!(
            denied.json()["error"]["type"],
            "keyward.request_not_allowed"
        );
        assert_no_leak("denial body", &denied.body, TOKEN_VALUE);
        let line = kw.last_audit();
        assert_eq!(line["event"], "deny");
        assert_eq!(line["reason"], "request_not_allowed");
        // refused before resolution: no secret scope/version in the line
        assert!(line["version"].is_null(), "{line}");
    }
    // nothing refused reached the upstream
    assert_eq!(kw.upstream.requests().len(), upstream_seen);
}

#[tokio::test]
async fn chain_and_agent_rules_both_apply() {
    let kw = Kw::builder()
        .agent(
            Agent::agent_1()
                .chain("triage")
                .rule("github", &["* /repos/**"]),
        )
        .chain(Chain::new("triage").rule("github", &["GET /**"]))
        .start()
        .await;
    kw.set_secret("platform", "GITHUB_TOKEN", TOKEN_VALUE);
    assert_eq!(send(&kw, "GET", "/repos/a/b").await.status, 200);
    let chain_says_no = send(&kw, "POST", "/repos/a/b").await;
    assert_eq!(chain_says_no.status, 403);
    assert!(
        chain_says_no.text().contains("chain"),
        "{}",
        chain_says_no.text()
    );
    let agent_says_no = send(&kw, "GET", "/user").await;
    assert_eq!(agent_says_no.status, 403);
    assert!(agent_says_no.text().contains("agent"));
}

#[tokio::test]
async fn rules_for_another_provider_do_not_limit_this_one() {
    let kw = Kw::builder()
        .agent(Agent::agent_1().rule("openai", &["GET /v1/models"]))
        .start()
        .await;
    kw.set_secret("platform", "GITHUB_TOKEN", TOKEN_VALUE);
    assert_eq!(send(&kw, "DELETE", "/anything").await.status, 200);
}

#[test]
fn config_rejects_bad_rules_with_file_and_line() {
    let base = |rules: &str| {
        format!(
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"{}\"\n{rules}\n",
            "0".repeat(64)
        )
    };
    let e = keyward::config::Config::parse(
        &base(r#"rules = [{ provider = "nope", allow = ["GET /"] }]"#),
        "k.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("k.toml:4:") && e.contains("no provider"),
        "{e}"
    );
    let e = keyward::config::Config::parse(
        &base(r#"rules = [{ provider = "github", allow = ["get repos"] }]"#),
        "k.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("k.toml:4:"), "{e}");
}
