//! The listener's own duties: the refusal over `max_connections` looks, counts and
//! audits like every other refusal; vault reloads are counted.

mod common;

use common::*;
use keyward::secret::Secret;
use keyward::vault::{MasterKey, SetOptions, Vault};
use std::time::{Duration, Instant};

/// The value of an unlabelled counter (or one exact `name{labels}`) in `/metrics` text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn connections_over_the_cap_get_a_json_503_counted_and_audited_at_a_bounded_rate() {
    let kw = Kw::builder().proxy("max_connections", 1).start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut held = kw.client().open("api.openai.com").await.unwrap();
    let audit_before = kw.audit_lines().len();

    const FLOOD: usize = 10;
    for _ in 0..FLOOD {
        let mut s = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
        let (status, head, body) = read_head(&mut s).await;
        assert_eq!(status, 503, "{head}");
        assert_eq!(
            head_error_code(&head).as_deref(),
            Some("too_many_connections")
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["error"]["type"], "keyward.too_many_connections",
            "{json}"
        );
    }

    let metrics = kw.running.state.metrics.render();
    assert_eq!(
        metric(
            &metrics,
            "keyward_denials_total{code=\"too_many_connections\"}"
        ),
        Some(FLOOD as u64),
        "{metrics}"
    );
    // A flood is audited, not once per connection: the metric has the count.
    let lines = kw.audit_lines();
    let busy: Vec<_> = lines[audit_before..]
        .iter()
        .filter(|l| l["reason"] == "too_many_connections")
        .collect();
    assert!(!busy.is_empty() && busy.len() < FLOOD, "{busy:?}");
    assert_eq!(busy[0]["event"], "deny");
    assert_eq!(busy[0]["outcome"], "denied");
    assert_eq!(busy[0]["status"], 503);
    assert!(keyward::audit::verify(&kw.audit_path()).unwrap().is_ok());

    // The tunnel that holds the slot is unaffected.
    assert_eq!(held.get("api.openai.com", "/v1/ok").await.status, 200);
}

#[tokio::test]
async fn a_vault_change_on_disk_is_reloaded_and_counted() {
    let kw = Kw::builder().start().await;
    let reloads = || {
        metric(
            &kw.running.state.metrics.render(),
            "keyward_vault_reloads_total",
        )
    };
    let before = reloads().expect("the counter is exported");

    // Another process (the CLI, a Secret swap) writes the file.
    let config = kw.config();
    let key = MasterKey::load_or_create_file(&config.vault.master_key_file).unwrap();
    let other = Vault::open_with(&config.vault, key).unwrap();
    common::vault::set_with(
        &other,
        "platform",
        "OPENAI_API_KEY",
        Secret::from_str("sk-from-elsewhere-0123456789"),
        None,
        SetOptions::default(),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads() == Some(before) {
        assert!(Instant::now() < deadline, "the reload was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
}
