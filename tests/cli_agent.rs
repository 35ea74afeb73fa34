//! `keyward agent …` as an operator runs it: create-only registration (an existing
//! id is never silently given a new token) and no change without an audit line.

mod common;

use common::cli::CliEnv as Env;
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The vault's agent ids, as `agent list --json` shows them.
fn vault_agents(env: &Env) -> Vec<String> {
    let out = env.ok(&["agent", "list", "--json"], None);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "vault")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `token` authenticates `id` (checked by `keyward env`).
fn token_works(env: &Env, id: &str, token: &str) -> bool {
    env.run(&["env", "--agent", id, "--token", token], None)
        .status
        .success()
}

/// Points `[audit] path` below a regular file: nothing can create or append to it,
/// even as root.
fn break_audit(env: &Env) {
    std::fs::write(env.path("not-a-dir"), b"").unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let broken = env.path("not-a-dir/audit.jsonl");
    let text = text.replace(
        &format!("path = \"{}\"", env.path("data/audit.jsonl").display()),
        &format!("path = \"{}\"", broken.display()),
    );
    assert!(text.contains("not-a-dir"), "{text}");
    std::fs::write(&env.config, text).unwrap();
}

#[test]
fn agent_add_of_an_existing_id_is_refused_and_the_first_token_keeps_working() {
    let env = Env::new();
    let first = env.ok(&["agent", "add", "dev-1"], None).trim().to_string();
    assert!(first.starts_with("kwa_"), "{first}");

    let again = env.run(&["agent", "add", "dev-1"], None);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("already exists"), "{err}");
    assert!(
        err.contains("agent rm dev-1"),
        "says how to re-issue: {err}"
    );
    assert!(
        !stdout(&again).contains("kwa_") && !err.contains("kwa_"),
        "nothing that looks like a token is printed"
    );

    assert_eq!(vault_agents(&env), ["dev-1"]);
    assert!(
        token_works(&env, "dev-1", &first),
        "the first token still works"
    );
    let adds = env
        .audit()
        .iter()
        .filter(|l| l["event"] == "agent_add")
        .count();
    assert_eq!(adds, 1, "the refusal changed nothing to audit");

    // Re-issuing is remove + add, both on record.
    env.ok(&["agent", "rm", "dev-1"], None);
    let second = env.ok(&["agent", "add", "dev-1"], None).trim().to_string();
    assert!(token_works(&env, "dev-1", &second));
    assert!(!token_works(&env, "dev-1", &first), "the old token is dead");
    let events: Vec<String> = env
        .audit()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["agent_add", "agent_rm", "agent_add"]);
}

#[test]
fn agent_add_with_an_unwritable_audit_log_registers_nothing_and_prints_no_token() {
    let env = Env::new();
    break_audit(&env);
    let out = env.run(&["agent", "add", "dev-1"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("audit"), "{err}");
    assert!(
        !stdout(&out).contains("kwa_") && !err.contains("kwa_"),
        "no token for an unaudited agent"
    );
    assert!(vault_agents(&env).is_empty(), "nothing was registered");
}

#[test]
fn agent_rm_with_an_unwritable_audit_log_keeps_the_agent() {
    let env = Env::new();
    let token = env.ok(&["agent", "add", "dev-1"], None).trim().to_string();
    break_audit(&env);
    let err = env.user_error(&["agent", "rm", "dev-1"], None);
    assert!(err.contains("audit"), "{err}");
    assert_eq!(vault_agents(&env), ["dev-1"]);
    assert!(token_works(&env, "dev-1", &token));
}

/// The audit log opens but every write fails (`/dev/full`: ENOSPC), so a change
/// is made and must then be taken back.
fn audit_to_dev_full(env: &Env) -> bool {
    if !std::path::Path::new("/dev/full").exists() {
        return false;
    }
    let audit = env.path("data/audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    std::fs::create_dir_all(env.path("data")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &audit).unwrap();
    true
}

#[test]
fn changes_whose_audit_write_fails_are_undone_and_print_no_token() {
    let env = Env::new();
    let token = env.ok(&["agent", "add", "dev-1"], None).trim().to_string();
    env.ok(
        &["secret", "set", "OPENAI_API_KEY"],
        Some(b"sk-before-0123456789"),
    );
    if !audit_to_dev_full(&env) {
        return;
    }
    let expect_undone = |out: &Output, what: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("undone"), "{what}: {err}");
        assert!(!stdout(out).contains("kwa_"), "{what}: no token printed");
    };
    expect_undone(&env.run(&["agent", "add", "dev-2"], None), "agent add");
    expect_undone(&env.run(&["agent", "rm", "dev-1"], None), "agent rm");
    assert_eq!(vault_agents(&env), ["dev-1"]);
    assert!(token_works(&env, "dev-1", &token));

    expect_undone(
        &env.run(
            &["secret", "set", "OPENAI_API_KEY"],
            Some(b"sk-after-0123456789"),
        ),
        "secret set",
    );
    expect_undone(
        &env.run(&["secret", "set", "NEW_KEY"], Some(b"sk-new-0123456789")),
        "secret set (new)",
    );
    expect_undone(
        &env.run(&["secret", "rm", "OPENAI_API_KEY"], None),
        "secret rm",
    );
    let list = env.ok(&["secret", "list", "--json"], None);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    assert_eq!(rows[0]["name"], "OPENAI_API_KEY");
    assert_eq!(rows[0]["version"], 1, "the old value is back: {list}");
}
