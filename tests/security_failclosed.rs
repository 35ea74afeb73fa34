//! Fail closed (issue 6): when the audit log or the vault cannot be trusted,
//! keyward refuses rather than serving unaudited credential use.
//!
//! Tests may run as root, where `chmod` does not stop writes, so the audit file is
//! made unwritable by replacing it with a directory: nothing can append to that.

mod common;

use common::*;

const KEY: &str = "sk-real-openai-0123456789";

/// Replaces the live audit file with a directory of the same name.
fn break_audit(kw: &Kw) {
    let path = kw.audit_path();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
}

#[tokio::test]
async fn unwritable_audit_log_refuses_provider_requests() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    break_audit(&kw);
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("audit_unavailable"));
    assert_eq!(got.json()["error"]["type"], "keyward.audit_unavailable");
    assert!(!got.text().contains(KEY));
}

#[tokio::test]
async fn unwritable_audit_log_sends_nothing_upstream() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    break_audit(&kw);
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 503);
    assert!(
        kw.upstream.requests().is_empty(),
        "a credential was used upstream without an audit line"
    );
}

#[tokio::test]
async fn unwritable_audit_log_refuses_blind_tunnels() {
    let kw = Kw::builder().start().await;
    break_audit(&kw);
    let mut c = kw.client();
    c.ca_pem = kw.pki.ca_pem.clone();
    let err = c.open("pypi.example.test").await.err().expect("refused");
    assert_eq!(err.status, 503);
    assert_eq!(err.error_code().as_deref(), Some("audit_unavailable"));
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn unwritable_audit_log_still_refuses_what_policy_refuses() {
    // A broken audit log must never turn a denial into an allow.
    let kw = Kw::builder().start().await;
    break_audit(&kw);
    let err = kw
        .client()
        .open("evil.example.test")
        .await
        .err()
        .expect("refused");
    assert_eq!(err.status, 403);
    assert_eq!(err.error_code().as_deref(), Some("host_not_allowed"));
    let mut anon = kw.client();
    anon.auth = None;
    assert_eq!(anon.open("api.openai.com").await.err().unwrap().status, 407);
    assert_eq!(kw.upstream.connection_count(), 0);
}

#[tokio::test]
async fn audit_log_recovers_when_the_path_is_writable_again() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    break_audit(&kw);
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 503);
    std::fs::remove_dir(kw.audit_path()).unwrap();
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(kw.audit_lines().iter().any(|l| l["event"] == "inject"));
}

#[tokio::test]
async fn audit_path_that_is_a_directory_refuses_to_start() {
    let err = Kw::builder()
        .before_start(|dir| std::fs::create_dir(dir.join("audit.jsonl")).unwrap())
        .try_start()
        .await
        .err()
        .expect("started without a writable audit log");
    assert!(err.contains("audit.jsonl"), "{err}");
}

#[tokio::test]
async fn corrupt_vault_refuses_to_start() {
    let err = Kw::builder()
        .before_start(|dir| std::fs::write(dir.join("vault.kw"), b"{\"not\": \"a vault\"").unwrap())
        .try_start()
        .await
        .err()
        .expect("started on a corrupt vault");
    assert!(err.contains("vault.kw"), "{err}");
}

#[tokio::test]
async fn vault_with_wrong_master_key_refuses_to_start() {
    // A vault sealed under one master key, opened with another: never reset.
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let vault = std::fs::read(kw.dir.path().join("vault.kw")).unwrap();
    let err = Kw::builder()
        .before_start(move |dir| std::fs::write(dir.join("vault.kw"), &vault).unwrap())
        .try_start()
        .await
        .err()
        .expect("started on a vault sealed under another master key");
    assert!(!err.contains(KEY));
}

#[tokio::test]
async fn tampered_vault_file_at_runtime_keeps_the_last_good_vault() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let path = kw.dir.path().join("vault.kw");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    assert!(kw.running.state.refresh_vault().is_err());
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
}
