//! `keyward secret …` / `keyward vault …` as an operator runs them: the real binary,
//! values on stdin, tables and JSON on stdout, one-line errors, audit lines, and a
//! canary value that must never show up anywhere but inside the sealed record.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;

use common::cli::CliEnv as Env;
use common::leaks::assert_no_leak;

fn marker() -> String {
    let mut b = [0u8; 12];
    getrandom(&mut b);
    hex::encode(b)
}

fn getrandom(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(b)
        .unwrap();
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn secret_lifecycle_through_the_cli_never_shows_the_value() {
    let env = Env::new();
    let m = marker();
    let value = format!("sk-proj-{m}-9xQz");
    let mut outputs = Vec::new();

    let out = env.ok(
        &[
            "secret",
            "set",
            "OPENAI_API_KEY",
            "--description",
            "prod",
            "--hosts",
            "api.openai.com,*.openai.com",
        ],
        Some(format!("{value}\n").as_bytes()),
    );
    assert!(out.contains("sk-p…9xQz"), "prints the hint: {out}");
    outputs.push(out);
    assert_eq!(
        std::fs::metadata(env.path("certs/master.key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );

    let list = env.ok(&["secret", "list"], None);
    assert!(list.starts_with("SCOPE"), "a table: {list}");
    // SPEC §2: name, scope, version, hint, description, created/updated, rotation due.
    for column in [
        "NAME",
        "VER",
        "HINT",
        "CREATED",
        "UPDATED",
        "ROTATION DUE",
        "DESCRIPTION",
    ] {
        assert!(
            list.lines().next().unwrap().contains(column),
            "{column}: {list}"
        );
    }
    assert!(list.contains("OPENAI_API_KEY") && list.contains("sk-p…9xQz") && list.contains("prod"));
    outputs.push(list);
    let json = env.ok(&["secret", "list", "--json"], None);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["scope"], "platform");
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(
        rows[0]["hosts"],
        serde_json::json!(["*.openai.com", "api.openai.com"])
    );
    outputs.push(json);

    let show = env.ok(&["secret", "show", "OPENAI_API_KEY"], None);
    assert!(
        show.contains("hint") && show.contains("sk-p…9xQz"),
        "{show}"
    );
    outputs.push(show);
    let show: serde_json::Value =
        serde_json::from_str(&env.ok(&["secret", "show", "OPENAI_API_KEY", "--json"], None))
            .unwrap();
    assert_eq!(show["description"], "prod");

    let rotated = format!("sk-proj-{m}-rot2-AbCd");
    let out = env.ok(
        &["secret", "rotate", "OPENAI_API_KEY"],
        Some(rotated.as_bytes()),
    );
    assert!(out.contains("v2") && out.contains("AbCd"), "{out}");
    outputs.push(out);

    outputs.push(env.ok(
        &[
            "secret",
            "clone",
            "OPENAI_API_KEY",
            "--from-scope",
            "platform",
            "--to-scope",
            "owner:acme",
        ],
        None,
    ));
    let acme = env.ok(&["secret", "list", "--scope", "owner:acme", "--json"], None);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&acme)
            .unwrap()
            .len(),
        1
    );
    // In two scopes now: a bare name is ambiguous, `--scope` picks one.
    outputs.push(env.user_error(&["secret", "rm", "OPENAI_API_KEY"], None));
    let platform = ["--scope", "platform"];
    let rm = ["secret", "rm", "OPENAI_API_KEY"];
    outputs.push(env.ok(&[&rm[..], &platform].concat(), None));
    let show = ["secret", "show", "OPENAI_API_KEY"];
    let err = env.user_error(&[&show[..], &platform].concat(), None);
    assert!(err.contains("not found"), "{err}");
    outputs.push(err);
    outputs.push(env.user_error(&[&rm[..], &platform].concat(), None));

    let events: Vec<(String, String, String, u64)> = env
        .audit()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["secret"].as_str().unwrap().to_string(),
                e["scope"].as_str().unwrap().to_string(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("secret_set", "platform", 1),
        ("secret_rotate", "platform", 2),
        ("secret_clone", "owner:acme", 1),
        ("secret_rm", "platform", 2),
    ];
    assert_eq!(events.len(), want.len(), "{events:?}");
    for ((ev, name, scope, ver), (wev, wscope, wver)) in events.iter().zip(want) {
        assert_eq!(
            (ev.as_str(), name.as_str(), scope.as_str(), *ver),
            (wev, "OPENAI_API_KEY", wscope, wver)
        );
    }

    for (i, o) in outputs.iter().enumerate() {
        for canary in [&value, &rotated, &m] {
            assert_no_leak(&format!("output {i}"), o.as_bytes(), canary);
        }
    }
    for f in all_files(env.dir.path()) {
        let bytes = std::fs::read(&f).unwrap();
        for canary in [&value, &rotated, &m] {
            assert_no_leak(&f.display().to_string(), &bytes, canary);
        }
    }
}

#[test]
fn bad_values_are_refused_without_echoing_them() {
    let env = Env::new();
    let m = marker();
    for input in [
        String::new(),
        "\n".to_string(),
        format!("a-{m}\r\n"),
        format!("a-{m}\nsecond-line"),
        format!("a-{m}\0nul"),
        format!("a-{m}\n\n"),
    ] {
        let err = env.user_error(&["secret", "set", "K"], Some(input.as_bytes()));
        assert!(!err.contains(&m), "{err}");
    }
    assert!(env
        .user_error(&["secret", "set", "lower"], Some(b"v"))
        .contains("invalid secret name"));
    assert!(env
        .user_error(&["secret", "set", "K", "--scope", "team:x"], Some(b"v"))
        .contains("invalid scope"));
    assert!(env
        .user_error(
            &["secret", "set", "K", "--rotate-every", "often"],
            Some(b"v")
        )
        .contains("--rotate-every"));
    assert!(env
        .user_error(
            &["secret", "set", "K", "--hosts", "a.com:443"],
            Some(b"vvvvv")
        )
        .contains("invalid host"));
    assert!(
        env.audit().is_empty(),
        "refused writes are not audited as changes"
    );
    let list = env.ok(&["secret", "list"], None);
    assert_eq!(list.trim(), "no secrets");
}

#[test]
fn wrong_master_key_refuses_with_one_line_and_leaves_the_file() {
    let env = Env::new();
    env.ok(&["secret", "set", "K"], Some(b"value-1234567890"));
    let vault = env.path("data/vault.kw");
    let before = std::fs::read(&vault).unwrap();
    let other = base64_key([9u8; 32]);
    for args in [&["secret", "list"][..], &["secret", "rm", "K"][..]] {
        let mut c = env.cmd(args);
        c.env("KEYWARD_MASTER_KEY", &other);
        let out = Env::run_cmd(c, None);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains(&vault.display().to_string()) && err.contains("wrong master key"),
            "{err}"
        );
    }
    let mut c = env.cmd(&["secret", "set", "K2"]);
    c.env("KEYWARD_MASTER_KEY", &other);
    assert_eq!(
        Env::run_cmd(c, Some(b"value-1234567890")).status.code(),
        Some(1)
    );
    assert_eq!(std::fs::read(&vault).unwrap(), before);

    std::fs::write(&vault, b"garbage").unwrap();
    let err = env.user_error(&["secret", "list"], None);
    assert!(err.contains(&vault.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&vault).unwrap(), b"garbage");
}

fn base64_key(k: [u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}

#[test]
fn env_master_key_takes_precedence_over_the_key_file() {
    let env = Env::new();
    let key = base64_key([3u8; 32]);
    let mut c = env.cmd(&["secret", "set", "K"]);
    c.env("KEYWARD_MASTER_KEY", &key);
    assert!(Env::run_cmd(c, Some(b"value-1234567890")).status.success());
    assert!(
        !env.path("certs/master.key").exists(),
        "no key file is created when the env supplies the key"
    );
    let mut c = env.cmd(&["secret", "list", "--json"]);
    c.env("KEYWARD_MASTER_KEY", &key);
    let out = Env::run_cmd(c, None);
    assert!(out.status.success());
    // Without the env there is no key: keyward refuses instead of making one up.
    let err = env.user_error(&["secret", "list"], None);
    assert!(err.contains("master key file is missing"), "{err}");
    let mut c = env.cmd(&["secret", "list"]);
    c.env("KEYWARD_MASTER_KEY", "not-base64!");
    let out = Env::run_cmd(c, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYWARD_MASTER_KEY"));
}

#[test]
fn due_reports_overdue_secrets_and_exits_1() {
    let env = Env::new();
    env.ok(
        &["secret", "set", "A", "--rotate-every", "90d"],
        Some(b"value-a-1234567890"),
    );
    env.ok(
        &[
            "secret",
            "set",
            "B",
            "--rotate-every",
            "20d",
            "--scope",
            "owner:acme",
        ],
        Some(b"value-b-1234567890"),
    );
    env.ok(&["secret", "set", "C"], Some(b"value-c-1234567890"));
    assert_eq!(
        env.ok(&["secret", "due"], None).trim(),
        "no secrets due for rotation"
    );
    // In 30 days, B (20d) is overdue and A (90d) is not yet due.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = env.run(&["secret", "due", "--at", &at, "--json"], None);
    assert_eq!(out.status.code(), Some(1));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["name"].as_str(), rows[0]["status"].as_str()),
        (Some("B"), Some("overdue"))
    );
    // In 80 days A is due soon (within 14 days), B overdue.
    let at = (time::OffsetDateTime::now_utc() + time::Duration::days(80))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let out = env.run(&["secret", "due", "--at", &at], None);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("due_soon") && text.contains("overdue"),
        "{text}"
    );
}

#[test]
fn two_processes_writing_at_once_lose_nothing() {
    let env = Env::new();
    env.ok(&["secret", "set", "SEED"], Some(b"seed-value-123456"));
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut c = env.cmd(&[
                "secret",
                "set",
                &format!("P{i}"),
                "--scope",
                "builder:botco",
            ]);
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("value-{i}-abcdefgh").as_bytes())
                .unwrap();
            child
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&env.ok(
        &["secret", "list", "--scope", "builder:botco", "--json"],
        None,
    ))
    .unwrap();
    assert_eq!(rows.len(), 8);
    assert_eq!(env.audit().len(), 9);
}

#[test]
fn rotate_master_key_rewraps_and_the_old_key_stops_working() {
    let env = Env::new();
    env.ok(&["secret", "set", "K"], Some(b"value-1234567890"));
    let new_key = env.path("certs/master-2.key");
    let out = env.ok(
        &[
            "vault",
            "rotate-master-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.contains("re-wrapped"), "{out}");
    assert!(env
        .user_error(&["secret", "list"], None)
        .contains("wrong master key"));
    let key = std::fs::read_to_string(&new_key).unwrap();
    let mut c = env.cmd(&["secret", "list", "--json"]);
    c.env("KEYWARD_MASTER_KEY", key.trim());
    let out = Env::run_cmd(c, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"K\""));
    assert!(env
        .audit()
        .iter()
        .any(|e| e["event"] == "vault_rotate_master_key"));

    // --new-from-env takes the next key from $KEYWARD_NEW_MASTER_KEY.
    let third = base64_key([5u8; 32]);
    let mut c = env.cmd(&["vault", "rotate-master-key", "--new-from-env"]);
    c.env("KEYWARD_MASTER_KEY", key.trim())
        .env("KEYWARD_NEW_MASTER_KEY", &third);
    assert!(Env::run_cmd(c, None).status.success());
    let mut c = env.cmd(&["secret", "show", "K"]);
    c.env("KEYWARD_MASTER_KEY", &third);
    assert!(Env::run_cmd(c, None).status.success());
    assert!(env
        .user_error(&["vault", "rotate-master-key"], None)
        .contains("--new-key-file"));
}

#[test]
fn a_vault_without_its_key_file_is_refused_not_rekeyed() {
    let env = Env::new();
    env.ok(&["secret", "set", "K"], Some(b"value-1234567890"));
    std::fs::rename(
        env.path("certs/master.key"),
        env.path("certs/elsewhere.key"),
    )
    .unwrap();
    let err = env.user_error(&["secret", "list"], None);
    assert!(
        err.contains("master key file is missing") && err.contains("vault.kw"),
        "{err}"
    );
    assert!(
        !env.path("certs/master.key").exists(),
        "no new key was made up"
    );
}

#[test]
fn passphrase_from_the_environment_seals_and_opens() {
    let env = Env::new();
    let mut c = env.cmd(&["secret", "set", "K"]);
    c.env("KEYWARD_MASTER_PASSPHRASE", "correct horse battery staple");
    let out = Env::run_cmd(c, Some(b"value-1234567890"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.path("certs/master.key").exists());
    let mut c = env.cmd(&["secret", "show", "K", "--json"]);
    c.env("KEYWARD_MASTER_PASSPHRASE", "correct horse battery staple");
    assert!(Env::run_cmd(c, None).status.success());
    let mut c = env.cmd(&["secret", "show", "K"]);
    c.env("KEYWARD_MASTER_PASSPHRASE", "wrong horse");
    let out = Env::run_cmd(c, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong master key"));
}

/// Without `--scope`, `show`, `rotate` and `rm` act on the one scope holding the
/// name, whichever it is (not only `platform`).
#[test]
fn show_rotate_rm_without_scope_find_the_one_scope_holding_the_name() {
    let env = Env::new();
    env.ok(
        &["secret", "set", "ACME_KEY", "--scope", "owner:acme"],
        Some(b"sk-acme-0123456789abcdef"),
    );
    let show = env.ok(&["secret", "show", "ACME_KEY"], None);
    assert!(show.contains("owner:acme"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["secret", "show", "ACME_KEY", "--json"], None)).unwrap();
    assert_eq!(json["scope"], "owner:acme");
    let out = env.ok(
        &["secret", "rotate", "ACME_KEY"],
        Some(b"sk-acme-rotated-0123456789"),
    );
    assert!(out.starts_with("rotated owner:acme/ACME_KEY v2"), "{out}");
    let out = env.ok(&["secret", "rm", "ACME_KEY"], None);
    assert!(out.starts_with("removed owner:acme/ACME_KEY"), "{out}");
    let scopes: Vec<_> = env
        .audit()
        .iter()
        .map(|e| (e["event"].clone(), e["scope"].clone()))
        .collect();
    assert_eq!(
        scopes,
        [
            ("secret_set".into(), "owner:acme".into()),
            ("secret_rotate".into(), "owner:acme".into()),
            ("secret_rm".into(), "owner:acme".into()),
        ]
    );
}

/// A name in two scopes: each of the three exits 1 listing the scopes and
/// asking for `--scope`, and changes nothing (no audit line, versions kept).
#[test]
fn show_rotate_rm_without_scope_refuse_a_name_in_several_scopes() {
    let env = Env::new();
    for scope in ["platform", "builder:botco"] {
        env.ok(
            &["secret", "set", "SHARED_KEY", "--scope", scope],
            Some(b"sk-shared-0123456789abcdef"),
        );
    }
    for (args, stdin) in [
        (&["secret", "show", "SHARED_KEY"][..], None),
        (
            &["secret", "rotate", "SHARED_KEY"][..],
            Some(&b"sk-new-0123456789"[..]),
        ),
        (&["secret", "rm", "SHARED_KEY"][..], None),
    ] {
        let err = env.user_error(args, stdin);
        assert!(
            err.contains("SHARED_KEY")
                && err.contains("builder:botco, platform")
                && err.contains("--scope"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.audit().len(), 2);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["secret", "list", "--json"], None)).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|m| m["version"] == 1), "{list:?}");
    // `--scope` still picks one.
    let show = env.ok(
        &["secret", "show", "SHARED_KEY", "--scope", "builder:botco"],
        None,
    );
    assert!(show.contains("builder:botco"), "{show}");
}

/// A name in no scope: exit 1 naming it, for each of the three.
#[test]
fn show_rotate_rm_without_scope_name_a_missing_secret() {
    let env = Env::new();
    env.ok(
        &["secret", "set", "OTHER"],
        Some(b"sk-other-0123456789abcdef"),
    );
    for (args, stdin) in [
        (&["secret", "show", "NOPE_KEY"][..], None),
        (
            &["secret", "rotate", "NOPE_KEY"][..],
            Some(&b"sk-new-0123456789"[..]),
        ),
        (&["secret", "rm", "NOPE_KEY"][..], None),
    ] {
        let err = env.user_error(args, stdin);
        assert!(
            err.contains("NOPE_KEY") && err.contains("not found in any scope"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(env.audit().len(), 1);
}
