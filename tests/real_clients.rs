//! The quick start, for real: the `keyward` binary (secret set → agent add →
//! serve → env), then off-the-shelf clients (curl, Python requests and httpx, Node
//! undici) with only `keyward env`'s variables. A canary secret is grepped for in
//! every output: client output, keyward's log, the audit file, the vault file and
//! the CLI's own output. A client that is not installed is skipped with a note.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");
/// How long to wait for `keyward serve` to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Per-client timeout (seconds), passed to the clients themselves.
const CLIENT_TIMEOUT_SECS: &str = "20";

struct Served {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn kw(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Writes a config for the binary: every test host → the echo upstream, no agents
/// in the file (they are added with `keyward agent add`).
fn start_binary(dir: &Path, upstream: std::net::SocketAddr, pki: &UpstreamPki) -> Served {
    let port = free_port();
    let config = Kw::builder()
        .listen(([127, 0, 0, 1], port).into())
        // The binary test registers its agent through the CLI instead.
        .without_agents()
        .write_files(dir, pki, upstream);
    Served {
        child: None,
        dir: dir.to_path_buf(),
        config,
        port,
    }
}

fn spawn_serve(config: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("KEYWARD_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("keyward did not start on port {port}");
}

/// Parses `export K='v'` lines.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

fn have(cmd: &str, probe: &[&str]) -> bool {
    Command::new(cmd)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a client with only the sandbox environment (plus PATH/HOME).
fn sandboxed(env: &HashMap<String, String>, cmd: &str, args: &[&str]) -> Output {
    let mut c = Command::new(cmd);
    c.env_clear();
    for k in ["PATH", "HOME", "NODE_PATH"] {
        if let Ok(v) = std::env::var(k) {
            c.env(k, v);
        }
    }
    c.envs(env).args(args).output().unwrap()
}

struct Scenario {
    _rt: tokio::runtime::Runtime,
    upstream: EchoUpstream,
    served: Served,
    env: HashMap<String, String>,
    canary: String,
    cli_output: Vec<u8>,
    _tmp: tempfile::TempDir,
}

fn scenario() -> Scenario {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = UpstreamPki::new();
    let upstream = rt.block_on(EchoUpstream::start(&pki));
    let tmp = tempfile::tempdir().unwrap();
    let mut served = start_binary(tmp.path(), upstream.addr, &pki);
    let canary = canary();
    let mut cli_output = Vec::new();
    // The Anthropic SDK test needs a key for its provider too (same canary).
    for name in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"] {
        let out = kw(
            &served.config,
            &["secret", "set", name, "--scope", "platform"],
            Some(&canary),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cli_output.extend(&out.stdout);
        cli_output.extend(&out.stderr);
    }
    let out = kw(&served.config, &["agent", "add", "sandbox-1"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    cli_output.extend(&out.stderr);
    let out = kw(&served.config, &["secret", "list"], None);
    cli_output.extend(&out.stdout);
    let out = kw(&served.config, &["secret", "show", "OPENAI_API_KEY"], None);
    cli_output.extend(&out.stdout);
    // Started after the CLI wrote the vault, so the first request needs no reload.
    served.child = Some(spawn_serve(&served.config, &served.dir));
    wait_ready(served.port);
    let out = kw(
        &served.config,
        &["env", "--agent", "sandbox-1", "--token", &token],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = parse_env(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(env["OPENAI_API_KEY"], "keyward-placeholder");
    assert!(env["HTTPS_PROXY"].contains(&format!("127.0.0.1:{}", served.port)));
    Scenario {
        _rt: rt,
        upstream,
        served,
        env,
        canary,
        cli_output,
        _tmp: tmp,
    }
}

impl Scenario {
    /// The upstream got the real key; the client's output never shows it.
    fn check_client(&self, name: &str, out: &Output) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("200"), "{name}: {stdout}");
        let seen = self.upstream.last();
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {}", self.canary).as_str(),
            "{name}"
        );
        assert_no_leak(&format!("{name} output"), &out.stdout, &self.canary);
        assert_no_leak(&format!("{name} stderr"), &out.stderr, &self.canary);
    }

    /// keyward's log, audit file, vault file and CLI output never carry the value.
    fn check_no_leaks(&self) {
        let dir = &self.served.dir;
        for f in ["serve.log", "audit.jsonl", "vault.kw"] {
            let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
            assert_no_leak(f, &bytes, &self.canary);
        }
        assert_no_leak("CLI output", &self.cli_output, &self.canary);
    }
}

#[test]
fn curl_through_keyward_env() {
    if !have("curl", &["--version"]) {
        eprintln!("skipped: curl not installed");
        return;
    }
    let s = scenario();
    let out = sandboxed(
        &s.env,
        "curl",
        &[
            "-sS",
            "--max-time",
            CLIENT_TIMEOUT_SECS,
            "-H",
            "Authorization: Bearer keyward-placeholder",
            "-w",
            "\n%{http_code}",
            "https://api.openai.com/echo-secret",
        ],
    );
    s.check_client("curl", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("[REDACTED]"),
        "echoed key was redacted"
    );
    s.check_no_leaks();
}

const PY_REQUESTS: &str = r#"
import os, requests
r = requests.get("https://api.openai.com/v1/models",
                 headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}, timeout=20)
print(r.status_code, r.text)
"#;

const PY_HTTPX: &str = r#"
import os, httpx
r = httpx.get("https://api.openai.com/v1/models",
              headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}, timeout=20)
print(r.status_code, r.text)
"#;

const PY_URLLIB: &str = r#"
import os, urllib.request
req = urllib.request.Request("https://api.openai.com/v1/models",
                             headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
with urllib.request.urlopen(req, timeout=20) as r:
    print(r.status, r.read().decode())
"#;

#[test]
fn python_clients_through_keyward_env() {
    if !have("python3", &["--version"]) {
        eprintln!("skipped: python3 not installed");
        return;
    }
    let s = scenario();
    for (name, module, code) in [
        ("requests", "requests", PY_REQUESTS),
        ("httpx", "httpx", PY_HTTPX),
        ("urllib", "urllib", PY_URLLIB),
    ] {
        if !have("python3", &["-c", &format!("import {module}")]) {
            eprintln!("skipped: python3 module {module} not installed");
            continue;
        }
        let out = sandboxed(&s.env, "python3", &["-c", code]);
        s.check_client(name, &out);
    }
    s.check_no_leaks();
}

/// The official OpenAI SDK, configured only by the environment `keyward env` prints
/// (dummy key, proxy, CA). The raw response: the echo upstream is not OpenAI.
const PY_OPENAI_SDK: &str = r#"
from openai import OpenAI
client = OpenAI(max_retries=0, timeout=20)
r = client.models.with_raw_response.list()
print(r.http_response.status_code, r.http_response.text)
"#;

/// The official Anthropic SDK, the same way (it sends the key as `x-api-key`).
const PY_ANTHROPIC_SDK: &str = r#"
import anthropic
client = anthropic.Anthropic(max_retries=0, timeout=20)
r = client.messages.with_raw_response.create(
    model="claude-test", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
print(r.http_response.status_code, r.http_response.text)
"#;

#[test]
fn official_openai_and_anthropic_sdks_through_keyward_env() {
    if !have("python3", &["--version"]) {
        eprintln!("skipped: python3 not installed");
        return;
    }
    let s = scenario();
    if have("python3", &["-c", "import openai"]) {
        let out = sandboxed(&s.env, "python3", &["-c", PY_OPENAI_SDK]);
        s.check_client("openai SDK", &out);
        assert_eq!(s.upstream.last().uri, "/v1/models");
    } else {
        eprintln!("skipped: python3 module openai not installed");
    }
    if have("python3", &["-c", "import anthropic"]) {
        assert_eq!(s.env["ANTHROPIC_API_KEY"], "keyward-placeholder");
        let out = sandboxed(&s.env, "python3", &["-c", PY_ANTHROPIC_SDK]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with("200"),
            "anthropic SDK failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = s.upstream.last();
        assert_eq!(seen.uri, "/v1/messages");
        // The dummy key was replaced by the real one, in the provider's header.
        assert_eq!(seen.headers["x-api-key"], s.canary.as_str());
        assert_no_leak("anthropic SDK output", &out.stdout, &s.canary);
        assert_no_leak("anthropic SDK stderr", &out.stderr, &s.canary);
    } else {
        eprintln!("skipped: python3 module anthropic not installed");
    }
    s.check_no_leaks();
}

const NODE_UNDICI: &str = r#"
const { EnvHttpProxyAgent, fetch } = require("undici");
fetch("https://api.openai.com/v1/models", {
  dispatcher: new EnvHttpProxyAgent(),
  headers: { authorization: "Bearer " + process.env.OPENAI_API_KEY },
}).then(async (r) => console.log(r.status, await r.text()))
  .catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn node_undici_through_keyward_env() {
    if !have(
        "node",
        &[
            "-e",
            "require('undici').EnvHttpProxyAgent || process.exit(1)",
        ],
    ) {
        eprintln!("skipped: node with the undici package (NODE_PATH) not available");
        return;
    }
    let s = scenario();
    let out = sandboxed(&s.env, "node", &["-e", NODE_UNDICI]);
    s.check_client("node undici", &out);
    s.check_no_leaks();
}

#[test]
fn cli_rotate_reaches_a_running_proxy_without_restart() {
    if !have("curl", &["--version"]) {
        eprintln!("skipped: curl not installed");
        return;
    }
    let s = scenario();
    let curl = |env: &HashMap<String, String>| {
        sandboxed(
            env,
            "curl",
            &[
                "-sS",
                "--max-time",
                CLIENT_TIMEOUT_SECS,
                "-w",
                "\n%{http_code}",
                "https://api.openai.com/v1/x",
            ],
        )
    };
    s.check_client("curl before rotation", &curl(&s.env));
    let rotated = canary();
    let out = kw(
        &s.served.config,
        &["secret", "rotate", "OPENAI_API_KEY", "--scope", "platform"],
        Some(&rotated),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The running proxy polls the vault file; the next request after the reload
    // carries the new key.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(&s.env);
        assert!(out.status.success());
        let got = s.upstream.last().headers["authorization"]
            .to_str()
            .unwrap()
            .to_string();
        if got == format!("Bearer {rotated}") {
            break;
        }
        assert!(Instant::now() < deadline, "rotation never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = std::fs::read_to_string(s.served.dir.join("audit.jsonl")).unwrap();
    let last_inject = line
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"inject\""))
        .unwrap();
    assert!(last_inject.contains("\"version\":2"), "{last_inject}");
}
