//! Redaction while the vault changes (issue 16): an agent with many secrets in
//! scope keeps being answered while its automaton is rebuilt off the request's
//! path, and every change is redacted from the next request on: a rotated,
//! added or re-added value at once, whole or streamed; a removed or rotated-away
//! value may stay redacted until the rebuild is swapped in, never the other way.

mod common;

use common::*;

const OPENAI_KEY: &str = "sk-openai-real-0123456789abcdef";

/// `/echo-value` with `value` (percent-encoded), optionally streamed.
fn echo_path(value: &str, streamed: bool) -> String {
    let v = percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
    let stream = if streamed { "&stream=1" } else { "" };
    format!("/echo-value?v={v}{stream}")
}

async fn assert_redacted(kw: &Kw, value: &str, what: &str) {
    for streamed in [false, true] {
        let got = kw
            .client()
            .get("api.openai.com", &echo_path(value, streamed), &[])
            .await;
        assert_eq!(got.status, 200, "{what}: {}", got.text());
        assert_eq!(got.text(), "found: [REDACTED]", "{what}, streamed {streamed}");
        assert_no_leak(what, &got.body, value);
    }
}

/// An unscoped agent over a vault big enough for the large-set automaton; a
/// sequence of rotations, additions and re-additions, each followed at once by
/// requests whose upstream echoes the newest values.
#[tokio::test]
async fn every_change_is_redacted_from_the_next_request_on() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", OPENAI_KEY);
    for i in 0..40 {
        kw.set_secret("platform", &format!("OTHER_{i:02}"), &format!("kwtest-other-{i:02}-a1b2c3d4e5f6"));
    }
    assert_redacted(&kw, "kwtest-other-07-a1b2c3d4e5f6", "a stored value").await;
    for round in 0..6 {
        let rotated = format!("kwtest-rotated-{round}-00112233445566");
        kw.set_secret("platform", &format!("OTHER_{:02}", round * 3), &rotated);
        assert_redacted(&kw, &rotated, "a rotated value").await;
        let added = format!("kwtest-added-{round}-ffeeddccbbaa99");
        kw.set_secret("platform", &format!("ADDED_{round}"), &added);
        assert_redacted(&kw, &added, "an added value").await;
        // Values from earlier rounds are still in the set.
        assert_redacted(&kw, "kwtest-added-0-ffeeddccbbaa99", "an earlier value").await;
    }
    // Removed, then set again under another name: redacted again at once.
    kw.remove_secret("platform", "ADDED_1");
    kw.set_secret("platform", "READDED", "kwtest-added-1-ffeeddccbbaa99");
    assert_redacted(&kw, "kwtest-added-1-ffeeddccbbaa99", "a re-added value").await;
    // The injected key itself, through all of it.
    let got = kw.client().get("api.openai.com", "/echo-secret", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.text().contains("[REDACTED]"), "{}", got.text());
    assert_no_leak("the response", &got.body, OPENAI_KEY);
}
