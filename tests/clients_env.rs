//! Clients unchanged (issue 15): each test runs the real `keyward env`, parses
//! its `export` lines and runs an off-the-shelf client with exactly that
//! environment — no proxy, CA or credential flag of its own — against a real
//! server of the client's protocol behind a `.test` name that keyward's
//! `egress.resolve` maps to 127.0.0.1: git with `git http-backend`, boto3 with
//! moto's signature-checking S3, wget and Node's global-agent with the echo
//! upstream. Each asserts what the server received (the real key, never the
//! dummy), what the client saw, and the audit lines. A missing tool skips on a
//! developer machine and fails under CI (`common::tools`).

mod common;

use common::clients::{self, Env, GitServer, Moto, TlsRelay};
use common::*;
use keyward::vault::SecretKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The provider of the `files.test` echo upstream (wget, Node) and its secret.
const FILES_SECRET: &str = "FILES_API_KEY";

fn files_provider() -> Provider {
    Provider::bearer("files", "files.test", FILES_SECRET)
}

/// Audit lines of `event` (inject, auth_fail, deny, …).
fn events(kw: &Kw, event: &str) -> Vec<serde_json::Value> {
    kw.audit_lines()
        .into_iter()
        .filter(|l| l["event"] == event)
        .collect()
}

/// Runs a client off the runtime's worker threads (keyward serves on them).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client thread")
}

#[tokio::test]
async fn env_writes_a_readable_bundle_and_a_wgetrc_and_names_every_clients_variables() {
    let kw = Kw::builder()
        .provider(files_provider())
        .provider(
            Provider::new("s3", "s3.test", "AWS_CREDS")
                .sign(r#"{ aws_sigv4 = { service = "s3", region = "us-east-1" } }"#),
        )
        .start()
        .await;
    let env = clients::keyward_env(&kw);
    let get = |k: &str| clients::get(&env, k).unwrap_or_else(|| panic!("no {k} in {env:?}"));
    clients::assert_local_proxy(&env);
    for var in ["https_proxy", "http_proxy", "GLOBAL_AGENT_HTTPS_PROXY"] {
        assert_eq!(get(var), get("HTTPS_PROXY"), "{var}");
    }
    for var in ["no_proxy", "GLOBAL_AGENT_NO_PROXY"] {
        assert_eq!(get(var), get("NO_PROXY"), "{var}");
    }
    assert_eq!(get("GIT_HTTP_PROXY_AUTHMETHOD"), "basic");
    // The bundle is beside the vault (not in the owner-only certs/), readable by all.
    let bundle = kw.dir.path().canonicalize().unwrap().join("ca-bundle.pem");
    for var in [
        "SSL_CERT_FILE",
        "AWS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "NODE_EXTRA_CA_CERTS",
    ] {
        assert_eq!(Path::new(get(var)), bundle, "{var}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bundle), 0o644);
    assert!(std::fs::read_to_string(&bundle)
        .unwrap()
        .ends_with(&kw.ca_pem()));
    let wgetrc = Path::new(get("WGETRC"));
    assert_eq!(wgetrc, bundle.with_file_name("ca-bundle.wgetrc"));
    assert_eq!(mode(wgetrc), 0o644);
    assert_eq!(
        std::fs::read_to_string(wgetrc).unwrap(),
        format!("ca_certificate = {}\n", bundle.display())
    );
    // A SigV4 provider: the two variables AWS SDKs read, not the secret's name.
    assert_eq!(get("AWS_ACCESS_KEY_ID"), "keyward-placeholder");
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), "keyward-placeholder");
    assert!(clients::get(&env, "AWS_CREDS").is_none(), "{env:?}");
    assert_eq!(get(FILES_SECRET), "keyward-placeholder");

    // --bundle: the bundle and its wgetrc go there instead.
    let elsewhere = tempfile::tempdir().unwrap();
    let want = elsewhere.path().canonicalize().unwrap().join("roots.pem");
    let text = clients::keyward_env_text(&kw, &["--bundle", want.to_str().unwrap()]);
    let env = clients::parse_sh_exports(&text);
    assert_eq!(clients::get(&env, "AWS_CA_BUNDLE"), want.to_str());
    let wgetrc = want.with_file_name("roots.wgetrc");
    assert_eq!(clients::get(&env, "WGETRC"), wgetrc.to_str());
    assert_eq!(mode(&want), 0o644);
    assert_eq!(mode(&wgetrc), 0o644);
}

#[tokio::test]
async fn env_refuses_a_bad_bundle_path_or_proxy_url_naming_the_flag_and_writes_nothing() {
    let kw = Kw::builder().start().await;
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--config")
        .arg(&kw.config_path)
        .args(["env", "--agent", AGENT, "--token", TOKEN])
        .args(["--bundle", "/nonexistent-dir/ca-bundle.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/nonexistent-dir/ca-bundle.pem") && err.contains("--bundle PATH"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing to eval on failure");

    // A bad --proxy is refused before anything is written.
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .arg("--config")
        .arg(&kw.config_path)
        .args([
            "env",
            "--agent",
            AGENT,
            "--token",
            TOKEN,
            "--proxy",
            "127.0.0.1:3128",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--proxy") && err.contains("http://host:port"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert!(!kw.dir.path().join("ca-bundle.pem").exists());
}

// ---------------------------------------------------------------- git

/// A bare repository `root/repo.git` (push allowed) with one commit.
fn seed_repo(git: &Path, root: &Path, work: &Path) {
    let run = |dir: &Path, args: &[&str]| {
        let out = Command::new(git)
            .args(["-c", "user.name=seed", "-c", "user.email=seed@example.test"])
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        clients::assert_ok(&format!("git {args:?}"), &out);
    };
    run(root, &["init", "-q", "--bare", "repo.git"]);
    run(
        &root.join("repo.git"),
        &["config", "http.receivepack", "true"],
    );
    run(work, &["init", "-q", "seed"]);
    std::fs::write(work.join("seed/README"), "seeded\n").unwrap();
    run(&work.join("seed"), &["add", "README"]);
    run(&work.join("seed"), &["commit", "-q", "-m", "seed"]);
    let bare = root.join("repo.git");
    run(
        &work.join("seed"),
        &["push", "-q", bare.to_str().unwrap(), "main"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn git_clone_and_push_over_https_unchanged_with_the_real_key_and_no_407() {
    let test = "git_clone_and_push_over_https_unchanged_with_the_real_key_and_no_407";
    let Some(git) = tools::require("git", test) else {
        return;
    };
    let exec_path = Command::new(&git).arg("--exec-path").output().unwrap();
    let backend =
        Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-http-backend");
    if !backend.exists()
        && tools::skip_or_fail::<()>("git-http-backend not installed", test).is_none()
    {
        return;
    }
    let key = canary();
    let pki = UpstreamPki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (root, work, home) = (
        tmp.path().join("srv"),
        tmp.path().join("work"),
        tmp.path().join("home"),
    );
    for d in [&root, &work, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    seed_repo(&git, &root, &work);
    let server = GitServer::start(&pki, backend, root.clone(), key.clone()).await;
    let kw = Kw::builder()
        .upstream_pki(pki)
        .provider(Provider::bearer("git", "git.test", "GIT_TOKEN"))
        .resolve("git.test", server.addr)
        .start()
        .await;
    kw.set_secret("platform", "GIT_TOKEN", &key);
    let env = clients::keyward_env(&kw);
    assert_eq!(
        clients::get(&env, "GIT_HTTP_PROXY_AUTHMETHOD"),
        Some("basic")
    );

    // Only what keeps git from prompting or reading the machine's config.
    let quiet = [("GIT_TERMINAL_PROMPT", "0"), ("GIT_CONFIG_NOSYSTEM", "1")];
    let run = {
        let (env, home, git) = (env.clone(), home.clone(), git.clone());
        move |cwd: &Path, args: &[&str]| clients::run_client(&env, &home, cwd, &quiet, &git, args)
    };
    let clone_dir = work.clone();
    let run2 = run.clone();
    let out = blocking(move || {
        run2(
            &clone_dir,
            &["clone", "-q", "https://git.test/repo.git", "clone"],
        )
    })
    .await;
    clients::assert_ok("git clone", &out);
    assert_eq!(
        std::fs::read_to_string(work.join("clone/README")).unwrap(),
        "seeded\n"
    );
    std::fs::write(work.join("clone/NEW"), "from the sandbox\n").unwrap();
    let cwd = work.join("clone");
    let out = blocking(move || {
        let add = run(&cwd, &["add", "NEW"]);
        clients::assert_ok("git add", &add);
        let commit = run(
            &cwd,
            &[
                "-c",
                "user.name=agent",
                "-c",
                "user.email=agent@example.test",
                "commit",
                "-q",
                "-m",
                "new",
            ],
        );
        clients::assert_ok("git commit", &commit);
        run(&cwd, &["push", "-q", "origin", "HEAD"])
    })
    .await;
    clients::assert_ok("git push", &out);

    // The server has the pushed commit.
    let log = Command::new(&git)
        .args(["log", "--format=%s", "main"])
        .current_dir(root.join("repo.git"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout), "new\nseed\n");
    // Every request reached it with the real key (the server refuses others).
    let seen = server.requests();
    assert!(seen.len() >= 4, "{seen:?}");
    for s in &seen {
        assert_eq!(
            s.headers["authorization"],
            format!("Bearer {key}").as_str(),
            "{} {}",
            s.method,
            s.uri
        );
    }
    assert!(seen
        .iter()
        .any(|s| s.uri.contains("git-receive-pack") && s.method == "POST"));
    // git sent its proxy credentials up front: no 407, no auth_fail line.
    assert!(
        events(&kw, "auth_fail").is_empty(),
        "{:?}",
        kw.audit_lines()
    );
    let injects = events(&kw, "inject");
    assert_eq!(injects.len(), seen.len(), "{injects:?}");
    assert!(
        injects
            .iter()
            .all(|l| l["provider"] == "git" && l["host"] == "git.test"),
        "{injects:?}"
    );
    for (name, bytes) in [("push stdout", &out.stdout), ("push stderr", &out.stderr)] {
        assert_no_leak(name, bytes, &key);
    }

    // The control: without GIT_HTTP_PROXY_AUTHMETHOD git probes first and every
    // command costs a 407 and an auth_fail line (why `keyward env` sets it).
    let mut probing = env.clone();
    probing.retain(|(k, _)| k != "GIT_HTTP_PROXY_AUTHMETHOD");
    let out = blocking(move || {
        clients::run_client(
            &probing,
            &home,
            &work,
            &quiet,
            &git,
            &["ls-remote", "https://git.test/repo.git"],
        )
    })
    .await;
    clients::assert_ok("git ls-remote without the auth method", &out);
    assert_eq!(events(&kw, "auth_fail").len(), 1, "{:?}", kw.audit_lines());
}

// ---------------------------------------------------------------- boto3 / moto

/// Creates an IAM user with an allow-all policy and an access key in moto
/// (directly, no proxy: these are moto's free unauthenticated actions), then
/// tries the dummy pair; prints `access_key_id secret_access_key refused|accepted`.
const MOTO_SETUP: &str = r#"
import sys, boto3
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="keyward")
iam.put_user_policy(UserName="keyward", PolicyName="all", PolicyDocument=
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
k = iam.create_access_key(UserName="keyward")["AccessKey"]
# The free actions are used up: moto now checks signatures (the dummy pair fails).
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="keyward-placeholder", aws_secret_access_key="keyward-placeholder")
try:
    s3.list_buckets()
    dummy = "accepted"
except Exception:
    dummy = "refused"
print(k["AccessKeyId"], k["SecretAccessKey"], dummy)
"#;
/// moto's free actions: the three IAM calls above.
const MOTO_FREE_ACTIONS: u32 = 3;

/// boto3 as a sandboxed agent would use it: no keys, proxy or CA in the code
/// (only the S3 endpoint, since `s3.test` is not AWS). Prints one JSON object.
const BOTO3_SCRIPT: &str = r#"
import json, os
for v in ("HTTPS_PROXY", "https_proxy", "AWS_CA_BUNDLE", "AWS_ACCESS_KEY_ID"):
    assert os.environ.get(v), "keyward env set no " + v
assert "@127.0.0.1:" in os.environ["HTTPS_PROXY"]
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="https://s3.test", region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                connect_timeout=10, read_timeout=10))
out = {}
s3.create_bucket(Bucket="kw-bucket")
s3.put_object(Bucket="kw-bucket", Key="hello.txt", Body=b"hello from the sandbox")
out["get"] = s3.get_object(Bucket="kw-bucket", Key="hello.txt")["Body"].read().decode()
try:
    out["head_length"] = s3.head_object(Bucket="kw-bucket", Key="hello.txt")["ContentLength"]
except Exception as e:
    out["head_error"] = repr(e)
print(json.dumps(out))
"#;

/// What the boto3 run left for the assertions.
struct Boto3Run {
    kw: Kw,
    relay: TlsRelay,
    out: serde_json::Value,
    access_key_id: String,
    secret_access_key: String,
    /// `keyward env`'s environment and the sandbox's HOME, for further clients.
    env: Env,
    home: tempfile::TempDir,
    _moto: Moto,
}

/// moto (SigV4 on) behind `s3.test`, a SigV4 provider with moto's real key in the
/// vault, and the boto3 script run with `keyward env`'s environment; `None` if
/// skipped.
async fn boto3_through_keyward(test: &str) -> Option<Boto3Run> {
    let moto_server = tools::require("moto_server", test)?;
    let python = tools::require("python3", test)?;
    let has_boto3 = Command::new(&python)
        .args(["-c", "import boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_boto3 {
        return tools::skip_or_fail("python3 module boto3 not installed", test);
    }
    let moto = Moto::start(&moto_server, MOTO_FREE_ACTIONS);
    let endpoint = format!("http://{}", moto.addr);
    let setup = Command::new(&python)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["-c", MOTO_SETUP, &endpoint])
        .output()
        .unwrap();
    clients::assert_ok("moto setup", &setup);
    let keys = String::from_utf8(setup.stdout).unwrap();
    let (keys, dummy) = keys.trim().rsplit_once(' ').expect("keys and a verdict");
    assert_eq!(dummy, "refused", "moto must check signatures");
    let (access_key_id, secret_access_key) = keys.split_once(' ').expect("two keys");
    let (access_key_id, secret_access_key) =
        (access_key_id.to_string(), secret_access_key.to_string());

    let pki = UpstreamPki::new();
    let relay = TlsRelay::start(&pki, moto.addr).await;
    let kw = Kw::builder()
        .upstream_pki(pki)
        .provider(
            Provider::new("s3", "s3.test", "AWS_CREDS")
                .sign(r#"{ aws_sigv4 = { service = "s3", region = "us-east-1" } }"#),
        )
        .resolve("s3.test", relay.addr)
        .start()
        .await;
    kw.set_secret_of_kind(
        "platform",
        "AWS_CREDS",
        SecretKind::Aws,
        &serde_json::json!({
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
        })
        .to_string(),
    );
    let env: Env = clients::keyward_env(&kw);
    let home = tempfile::tempdir().unwrap();
    let (sandbox_env, dir) = (env.clone(), home.path().to_path_buf());
    let out = blocking(move || {
        let out = clients::run_client(
            &sandbox_env,
            &dir,
            &dir,
            &[],
            &python,
            &["-c", BOTO3_SCRIPT],
        );
        clients::assert_ok("boto3", &out);
        out
    })
    .await;
    assert_no_leak("boto3 stdout", &out.stdout, &secret_access_key);
    assert_no_leak("boto3 stderr", &out.stderr, &secret_access_key);
    let out: serde_json::Value = serde_json::from_slice(&out.stdout).expect("boto3 prints JSON");
    Some(Boto3Run {
        kw,
        relay,
        out,
        access_key_id,
        secret_access_key,
        env,
        home,
        _moto: moto,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_puts_and_gets_an_object_in_signature_checking_s3_with_dummy_keys() {
    let test = "boto3_puts_and_gets_an_object_in_signature_checking_s3_with_dummy_keys";
    let Some(run) = boto3_through_keyward(test).await else {
        return;
    };
    // moto checks SigV4 against its own IAM keys: the object round-tripped, so
    // keyward's signature with the real key was accepted.
    assert_eq!(run.out["get"], "hello from the sandbox", "{}", run.out);
    let received = run.relay.received();
    let credential = format!("Credential={}/", run.access_key_id);
    let requests = received.matches("AWS4-HMAC-SHA256 Credential=").count();
    assert!(requests >= 3, "{received}");
    assert_eq!(
        received.matches(&credential).count(),
        requests,
        "every request signed with the real key"
    );
    assert!(
        !received.contains("keyward-placeholder"),
        "the dummy key never reached S3"
    );
    assert_no_leak(
        "what S3 received",
        received.as_bytes(),
        &run.secret_access_key,
    );
    let injects = events(&run.kw, "inject");
    assert!(injects.len() >= 3, "{injects:?}");
    assert!(
        injects
            .iter()
            .all(|l| l["provider"] == "s3" && l["host"] == "s3.test"),
        "{injects:?}"
    );
    assert!(events(&run.kw, "auth_fail").is_empty());
    assert!(
        events(&run.kw, "deny").is_empty(),
        "{:?}",
        run.kw.audit_lines()
    );
}

/// Issue 15 bug 1 (HEAD lost `Content-Length` when a secret is in scope) is fixed
/// on branch h15a (task 15a); this test passes once that is merged. boto3's
/// `head_object` and the AWS CLI's download (a HEAD first) both need it.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_head_object_and_aws_cli_download_get_the_content_length_through_keyward() {
    let test = "boto3_head_object_and_aws_cli_download_get_the_content_length_through_keyward";
    let Some(aws) = tools::require("aws", test) else {
        return;
    };
    let Some(run) = boto3_through_keyward(test).await else {
        return;
    };
    assert_eq!(run.out["get"], "hello from the sandbox", "{}", run.out);
    // BUG 1 (fixed by 15a): fails with KeyError 'ContentLength' before that merge.
    assert_eq!(run.out["head_length"], 22, "{}", run.out);

    // The AWS CLI, the same environment (the endpoint is the only flag: s3.test
    // is not AWS). Upload, then download (HEAD + GET) and compare.
    let dir = run.home.path().to_path_buf();
    std::fs::write(dir.join("up.txt"), "from the aws cli\n").unwrap();
    let env = run.env.clone();
    let (up, down) = blocking(move || {
        let cli = |args: &[&str]| {
            let mut all = vec!["--endpoint-url", "https://s3.test", "--region", "us-east-1"];
            all.extend_from_slice(args);
            clients::run_client(&env, &dir, &dir, &[], &aws, &all)
        };
        let up = cli(&["s3", "cp", "up.txt", "s3://kw-bucket/up.txt"]);
        let down = cli(&["s3", "cp", "s3://kw-bucket/up.txt", "down.txt"]);
        (up, down)
    })
    .await;
    clients::assert_ok("aws s3 cp (upload)", &up);
    // BUG 1 (fixed by 15a): the download's HEAD has no Content-Length before that merge.
    clients::assert_ok("aws s3 cp (download)", &down);
    assert_eq!(
        std::fs::read_to_string(run.home.path().join("down.txt")).unwrap(),
        "from the aws cli\n"
    );
    for out in [&up, &down] {
        assert_no_leak("aws cli output", &out.stdout, &run.secret_access_key);
        assert_no_leak("aws cli stderr", &out.stderr, &run.secret_access_key);
    }
    assert!(!run.relay.received().contains("keyward-placeholder"));
}

// ---------------------------------------------------------------- wget, Node

#[tokio::test(flavor = "multi_thread")]
async fn wget_fetches_through_keyward_with_only_the_env_and_its_wgetrc() {
    let test = "wget_fetches_through_keyward_with_only_the_env_and_its_wgetrc";
    let Some(wget) = tools::require("wget", test) else {
        return;
    };
    let key = canary();
    let kw = Kw::builder().provider(files_provider()).start().await;
    kw.set_secret("platform", FILES_SECRET, &key);
    let env = clients::keyward_env(&kw);
    let home = tempfile::tempdir().unwrap();
    let out = blocking(move || {
        clients::run_client(
            &env,
            home.path(),
            home.path(),
            &[],
            &wget,
            &[
                "-q",
                "--tries=1",
                "--timeout=10",
                "-O",
                "-",
                "https://files.test/v1/files",
            ],
        )
    })
    .await;
    clients::assert_ok("wget", &out);
    let seen = kw.upstream.last();
    assert_eq!(seen.uri, "/v1/files");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {key}").as_str()
    );
    // The echo carries the key back; the client sees it redacted.
    assert!(String::from_utf8_lossy(&out.stdout).contains("/v1/files"));
    assert_no_leak("wget stdout", &out.stdout, &key);
    assert_no_leak("wget stderr", &out.stderr, &key);
    let inject = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .expect("an inject line");
    assert_eq!(inject["provider"], "files");
    assert_eq!(inject["path"], "/v1/files");
    assert!(events(&kw, "auth_fail").is_empty());
}

/// Node 20 has no `NODE_USE_ENV_PROXY`: global-agent's `bootstrap()` reads
/// `GLOBAL_AGENT_HTTPS_PROXY` and routes plain `https.get` through keyward.
const NODE_GLOBAL_AGENT: &str = r#"
for (const v of ["GLOBAL_AGENT_HTTPS_PROXY", "NODE_EXTRA_CA_CERTS"]) {
  if (!process.env[v]) { console.error("keyward env set no " + v); process.exit(2); }
}
require("global-agent").bootstrap();
const https = require("https");
https.get("https://files.test/v1/node", {
  headers: { authorization: "Bearer " + process.env.FILES_API_KEY },
  timeout: 10000,
}, (res) => {
  let body = "";
  res.on("data", (d) => (body += d));
  res.on("end", () => console.log(res.statusCode, body));
}).on("error", (e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread")]
async fn node_https_get_goes_through_keyward_with_global_agent_bootstrap() {
    let test = "node_https_get_goes_through_keyward_with_global_agent_bootstrap";
    let Some(node) = tools::require("node", test) else {
        return;
    };
    let has_agent = Command::new(&node)
        .args(["-e", "require('global-agent')"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_agent {
        let why = "node package global-agent not installed (NODE_PATH)";
        if tools::skip_or_fail::<()>(why, test).is_none() {
            return;
        }
    }
    let key = canary();
    let kw = Kw::builder().provider(files_provider()).start().await;
    kw.set_secret("platform", FILES_SECRET, &key);
    let env = clients::keyward_env(&kw);
    assert_eq!(
        clients::get(&env, FILES_SECRET),
        Some("keyward-placeholder")
    );
    let home = tempfile::tempdir().unwrap();
    let out = blocking(move || {
        clients::run_client(
            &env,
            home.path(),
            home.path(),
            &[],
            &node,
            &["-e", NODE_GLOBAL_AGENT],
        )
    })
    .await;
    clients::assert_ok("node global-agent", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("200 "),
        "{out:?}"
    );
    let seen = kw.upstream.last();
    assert_eq!(seen.uri, "/v1/node");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {key}").as_str()
    );
    assert_no_leak("node stdout", &out.stdout, &key);
    assert_no_leak("node stderr", &out.stderr, &key);
    assert!(
        events(&kw, "auth_fail").is_empty(),
        "global-agent's proxy login works"
    );
    let injects = events(&kw, "inject");
    assert_eq!(injects.len(), 1, "{injects:?}");
    assert_eq!(injects[0]["provider"], "files");
}
