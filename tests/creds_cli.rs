//! `keyward secret set --kind …` / `secret show`: multi-field kinds from stdin JSON;
//! show prints the kind and non-secret fields only.

use std::process::Output;

mod common;

use common::canary;
use common::cli::CliEnv as Env;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn oauth2_secret_show_has_kind_and_public_fields_only() {
    let env = Env::new();
    let (cs, rt) = (canary(), canary());
    let value = format!(
        r#"{{"client_id":"my-client","client_secret":"{cs}","token_url":"https://auth.example.com/oauth/token","refresh_token":"{rt}","scope":"repo"}}"#
    );
    let set = env.run_str(
        &["secret", "set", "GH_OAUTH", "--kind", "oauth2"],
        Some(&value),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = env.run_str(&["secret", "show", "GH_OAUTH"], None);
    assert!(show.status.success(), "{}", text(&show));
    let out = text(&show);
    assert!(out.contains("oauth2"), "{out}");
    assert!(out.contains("my-client"), "{out}");
    assert!(
        out.contains("https://auth.example.com/oauth/token"),
        "{out}"
    );
    let json = env.run_str(&["secret", "show", "GH_OAUTH", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["kind"], "oauth2");
    assert_eq!(v["fields"]["client_id"], "my-client");
    let list = env.run_str(&["secret", "list", "--json"], None);
    for secret in [&cs, &rt] {
        let all = env.everything(&[&set, &show, &json, &list]);
        assert!(
            !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret field leaked"
        );
    }
}

#[test]
fn aws_secret_shows_access_key_id_not_the_secret_key() {
    let env = Env::new();
    let (sk, st) = (canary(), canary());
    let value = format!(
        r#"{{"access_key_id":"AKIAEXAMPLE123","secret_access_key":"{sk}","session_token":"{st}"}}"#
    );
    let set = env.run_str(
        &["secret", "set", "AWS_CREDS", "--kind", "aws"],
        Some(&value),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = env.run_str(&["secret", "show", "AWS_CREDS"], None);
    let out = text(&show);
    assert!(
        out.contains("aws") && out.contains("AKIAEXAMPLE123"),
        "{out}"
    );
    let all = env.everything(&[&set, &show]);
    for secret in [&sk, &st] {
        assert!(!all.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[test]
fn bad_kind_or_bad_json_is_a_one_line_user_error() {
    let env = Env::new();
    let bad = env.run_str(&["secret", "set", "X", "--kind", "jwt"], Some("v"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("--kind"), "{}", text(&bad));
    let secret = canary();
    let bad = env.run_str(
        &["secret", "set", "X", "--kind", "oauth2"],
        Some(&format!("not-json-{secret}")),
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(!text(&bad).contains(&secret));
    assert_eq!(text(&bad).trim().lines().count(), 1, "{}", text(&bad));
    let http = env.run_str(
        &["secret", "set", "X", "--kind", "oauth2"],
        Some(r#"{"client_id":"a","client_secret":"b","token_url":"http://plain/t"}"#),
    );
    assert_eq!(http.status.code(), Some(1));
    assert!(text(&http).contains("https"), "{}", text(&http));
}

#[test]
fn hmac_and_default_kinds() {
    let env = Env::new();
    let set = env.run_str(
        &["secret", "set", "HOOK", "--kind", "hmac"],
        Some("whsec_abcdefgh1234"),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = text(&env.run_str(&["secret", "show", "HOOK"], None));
    assert!(show.contains("hmac"), "{show}");
    let set = env.run_str(&["secret", "set", "PLAIN"], Some("sk-plain-12345678"));
    assert!(set.status.success());
    let show = text(&env.run_str(&["secret", "show", "PLAIN"], None));
    assert!(show.contains("api_key"), "{show}");
}
