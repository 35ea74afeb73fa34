//! `keyward secret set --kind …` / `secret show`: multi-field kinds from stdin JSON;
//! show prints the kind and non-secret fields only.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keyward.toml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "[vault]\npath = \"{d}/data/vault.kw\"\nmaster_key_file = \"{d}/certs/master.key\"\n\
                 [audit]\npath = \"{d}/data/audit.jsonl\"\n"
            ),
        )
        .unwrap();
        Env { dir, config }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyward"));
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("KEYWARD_MASTER_KEY")
            .env_remove("KEYWARD_MASTER_PASSPHRASE")
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// stdout + stderr + audit + vault file, everything a value could leak into.
    fn everything(&self, outputs: &[&Output]) -> Vec<u8> {
        let mut all = Vec::new();
        for o in outputs {
            all.extend_from_slice(&o.stdout);
            all.extend_from_slice(&o.stderr);
        }
        for f in ["data/audit.jsonl", "data/vault.kw"] {
            all.extend(std::fs::read(self.dir.path().join(f)).unwrap_or_default());
        }
        all
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn canary() -> String {
    format!("sk-canary-{}", hex::encode(rand::random::<[u8; 12]>()))
}

#[test]
fn oauth2_secret_show_has_kind_and_public_fields_only() {
    let env = Env::new();
    let (cs, rt) = (canary(), canary());
    let value = format!(
        r#"{{"client_id":"my-client","client_secret":"{cs}","token_url":"https://auth.example.com/oauth/token","refresh_token":"{rt}","scope":"repo"}}"#
    );
    let set = env.run(
        &["secret", "set", "GH_OAUTH", "--kind", "oauth2"],
        Some(&value),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = env.run(&["secret", "show", "GH_OAUTH"], None);
    assert!(show.status.success(), "{}", text(&show));
    let out = text(&show);
    assert!(out.contains("oauth2"), "{out}");
    assert!(out.contains("my-client"), "{out}");
    assert!(
        out.contains("https://auth.example.com/oauth/token"),
        "{out}"
    );
    let json = env.run(&["secret", "show", "GH_OAUTH", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["kind"], "oauth2");
    assert_eq!(v["fields"]["client_id"], "my-client");
    let list = env.run(&["secret", "list", "--json"], None);
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
    let set = env.run(
        &["secret", "set", "AWS_CREDS", "--kind", "aws"],
        Some(&value),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = env.run(&["secret", "show", "AWS_CREDS"], None);
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
    let bad = env.run(&["secret", "set", "X", "--kind", "jwt"], Some("v"));
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("--kind"), "{}", text(&bad));
    let secret = canary();
    let bad = env.run(
        &["secret", "set", "X", "--kind", "oauth2"],
        Some(&format!("not-json-{secret}")),
    );
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(!text(&bad).contains(&secret));
    assert_eq!(text(&bad).trim().lines().count(), 1, "{}", text(&bad));
    let http = env.run(
        &["secret", "set", "X", "--kind", "oauth2"],
        Some(r#"{"client_id":"a","client_secret":"b","token_url":"http://plain/t"}"#),
    );
    assert_eq!(http.status.code(), Some(1));
    assert!(text(&http).contains("https"), "{}", text(&http));
}

#[test]
fn hmac_and_default_kinds() {
    let env = Env::new();
    let set = env.run(
        &["secret", "set", "HOOK", "--kind", "hmac"],
        Some("whsec_abcdefgh1234"),
    );
    assert!(set.status.success(), "{}", text(&set));
    let show = text(&env.run(&["secret", "show", "HOOK"], None));
    assert!(show.contains("hmac"), "{show}");
    let set = env.run(&["secret", "set", "PLAIN"], Some("sk-plain-12345678"));
    assert!(set.status.success());
    let show = text(&env.run(&["secret", "show", "PLAIN"], None));
    assert!(show.contains("api_key"), "{show}");
}
