//! `keyward check`, `init` and `env` through the real binary.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_example_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let example = root.join("config/keyward.example.toml");
    let out = run(
        dir.path(),
        &["check", "--config", example.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: config"), "{text}");
}

#[test]
fn check_reports_file_line_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[proxy]\nlisten = \"127.0.0.1:1\"\nmax_conections = 5\n",
    )
    .unwrap();
    let out = run(dir.path(), &["check", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.toml:3:") && text.contains("max_conections"),
        "{text}"
    );
}

#[test]
fn serve_with_a_bad_config_exits_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[egress]\nports = \"443\"\n").unwrap();
    let out = run(dir.path(), &["serve", "--config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("keyward: bad.toml:2:"), "{err}");
}

#[test]
fn init_writes_config_ca_and_master_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["init", "kw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kw = dir.path().join("kw");
    for f in [
        "config/keyward.toml",
        "certs/ca.pem",
        "certs/ca.key",
        "certs/master.key",
    ] {
        assert!(kw.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["certs/ca.key", "certs/master.key"] {
        let mode = std::fs::metadata(kw.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let ca = std::fs::read(kw.join("certs/ca.pem")).unwrap();
    let key = std::fs::read(kw.join("certs/master.key")).unwrap();
    std::fs::write(kw.join("config/keyward.toml"), "# mine\n").unwrap();
    let out = run(dir.path(), &["init", "kw"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    assert_eq!(std::fs::read(kw.join("certs/ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(kw.join("certs/master.key")).unwrap(), key);
    assert_eq!(
        std::fs::read_to_string(kw.join("config/keyward.toml")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn env_refuses_a_wrong_token_and_prints_each_shell_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["agent", "add", "dev-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let bad = run(dir.path(), &["env", "--agent", "dev-1", "--token", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    for (shell, prefix) in [
        ("sh", "export HTTPS_PROXY="),
        ("fish", "set -gx HTTPS_PROXY "),
        ("dotenv", "HTTPS_PROXY="),
    ] {
        let out = run(
            dir.path(),
            &[
                "env", "--agent", "dev-1", "--token", &token, "--shell", shell,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(
            text.lines().any(|l| l.starts_with(prefix)),
            "{shell}: {text}"
        );
        assert!(text.contains("NODE_USE_ENV_PROXY"));
        assert!(text.contains("SSL_CERT_FILE"));
    }
    let bundle = std::fs::read_to_string(dir.path().join("data/ca-bundle.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("certs/ca.pem")).unwrap();
    assert!(bundle.ends_with(&ca), "bundle = system roots + keyward CA");
}

#[test]
fn env_names_a_dummy_variable_for_a_config_provider_without_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.toml"),
        "[[providers]]\nname = \"internal\"\nhosts = [\"api.internal.example\"]\n\
         secret = \"INTERNAL_API_KEY\"\ninject = { header = \"authorization\", value = \"Bearer {secret}\" }\n\
         [[providers]]\nname = \"named\"\nhosts = [\"api.named.example\"]\n\
         secret = \"NAMED_KEY\"\nenv = [\"NAMED_SDK_TOKEN\"]\n\
         inject = { header = \"authorization\", value = \"Bearer {secret}\" }\n",
    )
    .unwrap();
    let out = run(dir.path(), &["--config", "k.toml", "agent", "add", "dev-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = run(
        dir.path(),
        &[
            "--config", "k.toml", "env", "--agent", "dev-1", "--token", &token, "--shell", "dotenv",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "INTERNAL_API_KEY=keyward-placeholder"),
        "{text}"
    );
    // An explicit `env` is used as given (and the secret name is not added).
    assert!(text
        .lines()
        .any(|l| l == "NAMED_SDK_TOKEN=keyward-placeholder"));
    assert!(!text.contains("NAMED_KEY="), "{text}");
}

#[test]
fn init_puts_the_config_at_config_path_and_names_an_environment_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--config", "elsewhere/kw.toml", "init", "kw"])
        .env("KEYWARD_MASTER_KEY", base64_key())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("elsewhere/kw.toml").exists(), "{text}");
    assert!(!dir.path().join("kw/config/keyward.toml").exists());
    assert!(dir.path().join("kw/certs/ca.pem").exists());
    // The key came from the environment: no key file, and init says so.
    assert!(!dir.path().join("kw/certs/master.key").exists());
    assert!(text.contains("$KEYWARD_MASTER_KEY"), "{text}");
    assert!(!text.contains("master.key"), "{text}");
}

/// 32 random bytes, base64 (a master key as `$KEYWARD_MASTER_KEY` takes it).
fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}
