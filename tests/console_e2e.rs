//! The operator console end to end in a real browser: Debian's `chromium`
//! driven by `playwright-core` (`tests/e2e/console.mjs`). This test runs
//! keyward, starts the script, and answers its `STEP` lines: it sends the
//! proxied requests and checks what the upstream received, so "the proxy
//! injects the secret created in the console" is checked end to end. Afterwards
//! the export must equal `keyward audit query --json`, and no response the page
//! received may hold a secret value.
//!
//! Needs `chromium` and `node`, and `npm ci` in `tests/e2e/` (`.ci/run` does all
//! three). Screenshots go to `$KEYWARD_CONSOLE_SHOTS` (e.g. `docs/console`), or
//! to a temp dir.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const NAME: &str = "OPENAI_API_KEY";
const TEST: &str = "console_e2e";

fn tok(name: &str) -> String {
    format!("kwadm-{name}-e2e-0123456789abcdef")
}

#[tokio::test]
async fn the_console_in_chromium_manages_secrets_the_proxy_injects() {
    let Some(_) = tools::require("/usr/bin/chromium", TEST) else {
        return;
    };
    let Some(node) = tools::require("node", TEST) else {
        return;
    };
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !e2e.join("node_modules/playwright-core").is_dir() {
        let _: Option<()> =
            tools::skip_or_fail("playwright-core not installed (npm ci in tests/e2e)", TEST);
        return;
    }
    let kw = Kw::builder()
        .admin_token(
            "ops",
            &tok("ops"),
            &[
                "secrets:read",
                "secrets:manage",
                "agents:manage",
                "sessions:create",
                "audit:read",
            ],
        )
        .admin_token("auditor", &tok("auditor"), &["secrets:read", "audit:read"])
        .chain(Chain::new("triage").owner("acme"))
        .start()
        .await;
    let admin = kw.running.admin_addr.expect("admin listener");
    let out = tempfile::tempdir().unwrap();
    let shots_tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("KEYWARD_CONSOLE_SHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| shots_tmp.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    let (v1, v2) = (canary(), canary());

    let mut child = Command::new(node)
        .arg(e2e.join("console.mjs"))
        .current_dir(&e2e)
        .env("KW_UI", format!("http://{admin}/ui/"))
        .env("KW_MANAGE_TOKEN", tok("ops"))
        .env("KW_READ_TOKEN", tok("auditor"))
        .env("KW_V1", &v1)
        .env("KW_V2", &v2)
        .env("KW_OUT", out.path())
        .env("KW_SHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut to_node = child.stdin.take().unwrap();
    let mut from_node = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut agent_token = String::new();
    let mut transcript = Vec::new();
    let mut done = false;
    while let Some(line) = from_node.next_line().await.unwrap() {
        eprintln!("console.mjs: {line}");
        transcript.push(line.clone());
        let Some(step) = line.strip_prefix("STEP ") else {
            done |= line.starts_with("DONE");
            continue;
        };
        let answer = match step.split_once(' ').unwrap_or((step, "")) {
            ("hint", _) => {
                let meta = kw.running.state.vault.list(Some("platform")).remove(0);
                assert_eq!(meta.name, NAME);
                format!("ok {}", meta.hint)
            }
            (which @ ("inject-v1" | "inject-v2"), _) => {
                let want = if which == "inject-v1" { &v1 } else { &v2 };
                let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
                assert_eq!(got.status, 200, "{which}");
                assert_eq!(
                    kw.upstream.last().headers["authorization"],
                    format!("Bearer {want}")
                );
                "ok".to_string()
            }
            ("agent", token) => {
                agent_token = token.to_string();
                let got = kw
                    .client_as("bot-e2e", token)
                    .get("api.openai.com", "/v1/models", &[])
                    .await;
                assert_eq!(got.status, 200, "the new agent's token works");
                "ok".to_string()
            }
            ("agent-removed", _) => {
                let refused = kw
                    .client_as("bot-e2e", &agent_token)
                    .connect("api.openai.com:443")
                    .await;
                assert_eq!(
                    refused.err().map(|(status, _, _)| status),
                    Some(407),
                    "a removed agent's token stops working"
                );
                "ok".to_string()
            }
            ("session", token) => {
                let got = kw
                    .client_as("bot-e2e", token)
                    .get("api.openai.com", "/v1/models", &[])
                    .await;
                assert_eq!(got.status, 200, "the session token works");
                assert_eq!(kw.last_audit()["run_id"], "e2e-run-1");
                "ok".to_string()
            }
            (other, _) => panic!("unknown step {other}"),
        };
        to_node
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .unwrap();
    }
    let status = child.wait().await.unwrap();
    assert!(
        status.success() && done,
        "console.mjs failed:\n{}",
        transcript.join("\n")
    );

    // The export is what `keyward audit query --json` prints for the same filter.
    let export = std::fs::read_to_string(out.path().join("export.jsonl")).unwrap();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--config")
        .arg(&kw.config_path)
        .args([
            "audit",
            "query",
            "--json",
            "--secret",
            NAME,
            "--outcome",
            "allowed",
        ])
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli = String::from_utf8(cli.stdout).unwrap();
    assert!(export.lines().any(|l| l.contains("\"event\":\"inject\"")));
    assert_eq!(export, cli);
    let cef = std::fs::read_to_string(out.path().join("export.cef")).unwrap();
    assert_eq!(cef.lines().count(), export.lines().count());

    // Every change was audited as the console's admin token.
    let events: Vec<String> = kw
        .audit_lines()
        .iter()
        .filter(|l| l["reason"] == "admin:ops")
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    for e in [
        "secret_set",
        "secret_rotate",
        "secret_clone",
        "secret_rm",
        "secret_describe",
        "agent_add",
        "agent_rm",
        "session_create",
    ] {
        assert!(
            events.iter().any(|x| x == e),
            "{e} not audited as admin:ops: {events:?}"
        );
    }

    let received = std::fs::read(out.path().join("responses.bin")).unwrap();
    assert!(received.len() > 10_000, "responses were recorded");
    for v in [&v1, &v2] {
        assert_no_leak("responses the page received", &received, v);
        assert_no_leak("audit log", &std::fs::read(kw.audit_path()).unwrap(), v);
    }
    assert!(!agent_token.is_empty());
}
