//! Hot config reload: file changes apply without restart, invalid files are
//! refused (the running config stays), open tunnels survive.

mod common;

use common::*;
use std::time::{Duration, Instant};

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn config_change_applies_without_dropping_open_tunnels() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut tunnel = kw.client().open("api.openai.com").await.unwrap();
    assert_eq!(tunnel.get("api.openai.com", "/v1/a").await.status, 200);
    assert_eq!(
        kw.client()
            .open("evil.example.test")
            .await
            .err()
            .unwrap()
            .status,
        403
    );

    // An invalid file is refused; the running config stays.
    let original = std::fs::read_to_string(&kw.config_path).unwrap();
    std::fs::write(&kw.config_path, format!("{original}\nnot valid toml [[[")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tunnel.get("api.openai.com", "/v1/b").await.status, 200);

    // A valid change: allow a new host.
    kw.rewrite_config(&Kw::builder().allow(&["pypi.example.test", "evil.example.test"]));
    eventually("reload", async || {
        kw.client().connect("evil.example.test:443").await.is_ok()
    })
    .await;

    // The tunnel opened before the reload still works.
    assert_eq!(tunnel.get("api.openai.com", "/v1/c").await.status, 200);
}
