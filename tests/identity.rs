//! Identity and resolution end to end (issue 3/6): chains, tiers, per-agent keys,
//! revocation inside an open tunnel, placeholders, session tokens.

mod common;

use common::*;

/// The `triage` chain (owner `acme`, builder `botco`, OpenAI and Anthropic).
fn triage() -> Chain {
    Chain::new("triage")
        .owner("acme")
        .builder("botco")
        .secrets(&["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
}

/// keyward whose agent is in the `triage` chain.
fn in_triage() -> KwBuilder {
    Kw::builder()
        .agent(Agent::agent_1().chain("triage"))
        .chain(triage())
}

#[tokio::test]
async fn owner_key_wins_and_audit_names_tier_scope_version_connection() {
    let kw = in_triage().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "platform-key-0123456789");
    kw.set_secret("builder:botco", "OPENAI_API_KEY", "builder-key-0123456789");
    kw.set_secret("owner:acme", "OPENAI_API_KEY", "owner-key-0123456789");
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer owner-key-0123456789"
    );
    let line = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .unwrap();
    assert_eq!(line["tier"], "owner");
    assert_eq!(line["scope"], "owner:acme");
    assert_eq!(line["version"], 1);
    assert_eq!(line["chain"], "triage");
    assert_eq!(line["owner"], "acme");
    assert_eq!(line["builder"], "botco");
    assert_eq!(line["connection_id"], "acme-botco-openai");
}

#[tokio::test]
async fn two_agents_in_one_chain_get_their_own_keys() {
    let kw = in_triage().start().await;
    kw.add_agent("agent-2", "tok-agent-2", Some("triage"));
    kw.set_secret("owner:acme", "OPENAI_API_KEY", "shared-owner-key-0123");
    kw.set_secret("agent:agent-2", "OPENAI_API_KEY", "agent2-own-key-0123");
    kw.client().get("api.openai.com", "/v1/a", &[]).await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer shared-owner-key-0123"
    );
    let mut c2 = kw.client();
    c2.auth = Some(("agent-2".into(), "tok-agent-2".into()));
    c2.get("api.openai.com", "/v1/b", &[]).await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer agent2-own-key-0123"
    );
    let line = kw
        .audit_lines()
        .into_iter()
        .rev()
        .find(|l| l["event"] == "inject")
        .unwrap();
    assert_eq!(line["tier"], "agent");
    assert_eq!(line["agent"], "agent-2");
}

#[tokio::test]
async fn tier_pin_forces_builder_keys() {
    let kw = Kw::builder()
        .agent(
            Agent::agent_1()
                .chain("triage")
                .pin("OPENAI_API_KEY", "builder"),
        )
        .chain(triage())
        .start()
        .await;
    kw.set_secret("owner:acme", "OPENAI_API_KEY", "owner-key-0123456789");
    kw.set_secret("builder:botco", "OPENAI_API_KEY", "builder-key-0123456789");
    kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer builder-key-0123456789"
    );
}

#[tokio::test]
async fn provider_outside_the_chain_is_secret_not_in_scope() {
    let kw = in_triage().start().await;
    kw.set_secret("platform", "GITHUB_TOKEN", "ghp-real-0123456789");
    let got = kw.client().get("api.github.com", "/user", &[]).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("secret_not_in_scope"));
    assert_eq!(got.json()["error"]["type"], "keyward.secret_not_in_scope");
    let line = kw.last_audit();
    assert_eq!(line["event"], "deny");
    assert_eq!(line["reason"], "secret_not_in_scope");
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn removing_a_secret_stops_the_next_request_in_an_open_tunnel() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut t = kw.client().open("api.openai.com").await.unwrap();
    assert_eq!(t.get("api.openai.com", "/v1/models").await.status, 200);
    kw.remove_secret("platform", "OPENAI_API_KEY");
    let got = t.get("api.openai.com", "/v1/models").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("secret_not_found"));
    assert_eq!(kw.upstream.requests().len(), 1);
}

#[tokio::test]
async fn removing_an_agent_stops_its_open_tunnel() {
    let kw = Kw::builder().start().await;
    kw.add_agent("agent-2", "tok-agent-2", None);
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut c = kw.client();
    c.auth = Some(("agent-2".into(), "tok-agent-2".into()));
    let mut t = c.open("api.openai.com").await.unwrap();
    assert_eq!(t.get("api.openai.com", "/v1/models").await.status, 200);
    assert!(kw.remove_agent("agent-2"));
    let got = t.get("api.openai.com", "/v1/models").await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("agent_revoked"));
    assert_eq!(kw.last_audit()["reason"], "agent_revoked");
    assert_eq!(kw.upstream.requests().len(), 1);
    // And a new CONNECT is refused outright.
    assert_eq!(c.open("api.openai.com").await.err().unwrap().status, 407);
}

#[tokio::test]
async fn placeholder_is_filled_for_a_host_the_secret_is_bound_to() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let got = kw
        .client()
        .get(
            "api.openai.com",
            "/v1/models",
            &[("x-custom", "k={{OPENAI_API_KEY}}")],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["x-custom"],
        "k=sk-real-openai-0123456789"
    );
}

#[tokio::test]
async fn placeholder_for_a_secret_bound_to_another_host_is_refused() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    kw.set_secret("platform", "ANTHROPIC_API_KEY", "sk-ant-real-0123456789");
    // An agent trying to send its OpenAI key to Anthropic's host (which it could
    // then read back from a logging endpoint) is refused.
    let got = kw
        .client()
        .get(
            "api.anthropic.com",
            "/v1/messages",
            &[("x-custom", "{{OPENAI_API_KEY}}")],
        )
        .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("placeholder_not_allowed"));
    assert!(!got.text().contains("sk-real-openai"));
    assert_eq!(kw.last_audit()["reason"], "placeholder_not_allowed");
    assert!(
        kw.upstream.requests().is_empty(),
        "nothing forwarded, neither placeholder nor value"
    );
}

#[tokio::test]
async fn placeholder_out_of_scope_is_refused() {
    let kw = Kw::builder()
        .agent(Agent::agent_1().secrets(&["OPENAI_API_KEY"]))
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    kw.set_secret("platform", "Q_KEY", "q-real-0123456789");
    let got = kw
        .client()
        .get("api.openai.com", "/v1/models", &[("x-custom", "{{Q_KEY}}")])
        .await;
    assert_eq!(got.status, 403);
    assert_eq!(got.error_code().as_deref(), Some("placeholder_not_allowed"));
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn session_token_carries_run_id_and_dies_at_ttl() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let key = kw.running.state.vault.session_key();
    let now = keyward::clock::unix_now();
    let live = keyward::resolve::mint_session(&key, AGENT, "run-77", now + 60);
    let mut c = kw.client();
    c.auth = Some((AGENT.into(), live));
    assert_eq!(c.get("api.openai.com", "/v1/models", &[]).await.status, 200);
    let line = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .unwrap();
    assert_eq!(line["run_id"], "run-77");

    let dead = keyward::resolve::mint_session(&key, AGENT, "run-78", now.saturating_sub(1));
    c.auth = Some((AGENT.into(), dead));
    let err = c.open("api.openai.com").await.err().unwrap();
    assert_eq!(err.status, 407);
    let text = std::fs::read_to_string(kw.audit_path()).unwrap();
    assert!(
        !text.contains("kws_"),
        "session tokens never reach the audit log"
    );
}
