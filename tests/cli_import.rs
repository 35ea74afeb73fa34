//! `keyward secret import` as an operator runs it: JSON Lines on stdin, every line
//! checked before anything is written, one vault write for all of them, one audit
//! line per secret, and no value in any output.

mod common;

use common::cli::CliEnv as Env;
use common::leaks::assert_no_leak;

fn marker() -> String {
    use std::io::Read;
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    hex::encode(b)
}

/// Entry lines (one per write) in the vault file.
fn entries(env: &Env) -> usize {
    let text = std::fs::read_to_string(env.path("data/vault.kw")).unwrap_or_default();
    text.lines().filter(|l| l.starts_with("e ")).count()
}

#[test]
fn import_stores_every_line_in_one_write_and_audits_each_secret() {
    let env = Env::new();
    let m = marker();
    env.ok(
        &["secret", "set", "EXISTING"],
        Some(format!("old-{m}-value\n").as_bytes()),
    );
    let before = entries(&env);
    let oauth = format!(
        r#"{{\"client_id\":\"cid\",\"client_secret\":\"cs-{m}\",\"token_url\":\"https://auth.test/token\"}}"#
    );
    let input = format!(
        "{{\"name\":\"OPENAI_API_KEY\",\"value\":\"sk-a-{m}-9xQz\",\"description\":\"prod\",\"hosts\":[\"api.openai.test\"]}}\n\
         \n\
         {{\"scope\":\"owner:acme\",\"name\":\"GH\",\"value\":\"gh-b-{m}\",\"rotate_every\":\"90d\"}}\n\
         {{\"name\":\"OAUTH\",\"kind\":\"oauth2\",\"value\":\"{oauth}\"}}\n\
         {{\"name\":\"EXISTING\",\"value\":\"new-{m}-value\"}}\n"
    );
    let out = env.run(&["secret", "import"], Some(input.as_bytes()));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("imported 4 secrets (3 new, 1 new versions)"),
        "{stdout}"
    );
    assert_eq!(entries(&env), before + 1, "one write for the whole import");

    let list = env.ok(&["secret", "list", "--json"], None);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["scope"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "owner:acme/GH",
            "platform/EXISTING",
            "platform/OAUTH",
            "platform/OPENAI_API_KEY"
        ]
    );
    let by = |n: &str| list.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(by("OPENAI_API_KEY")["hosts"][0], "api.openai.test");
    assert_eq!(by("OPENAI_API_KEY")["description"], "prod");
    assert_eq!(by("OAUTH")["kind"], "oauth2");
    assert_eq!(by("EXISTING")["version"], 2);
    assert_eq!(by("GH")["rotate_every"], "90d");

    let audit = env.audit();
    let events: Vec<_> = audit
        .iter()
        .skip(1)
        .map(|l| {
            format!(
                "{} {}/{}",
                l["event"].as_str().unwrap(),
                l["scope"].as_str().unwrap(),
                l["secret"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "secret_set platform/OPENAI_API_KEY",
            "secret_set owner:acme/GH",
            "secret_set platform/OAUTH",
            "secret_rotate platform/EXISTING",
        ]
    );
    let everything = env.everything(&[&out]);
    for v in [
        format!("sk-a-{m}-9xQz"),
        format!("gh-b-{m}"),
        format!("cs-{m}"),
    ] {
        assert_no_leak("import output, audit and vault file", &everything, &v);
    }
}

#[test]
fn a_bad_line_names_its_number_and_nothing_is_written() {
    let env = Env::new();
    let m = marker();
    env.ok(&["secret", "set", "KEEP"], Some(b"keep-value-123456\n"));
    let file = std::fs::read(env.path("data/vault.kw")).unwrap();
    let audit = env.audit().len();
    let good = format!("{{\"name\":\"A\",\"value\":\"a-{m}\"}}");
    let cases: Vec<(&str, String)> = vec![
        (
            "bad name",
            format!("{{\"name\":\"lower\",\"value\":\"v-{m}\"}}"),
        ),
        (
            "bad scope",
            format!("{{\"scope\":\"nope\",\"name\":\"B\",\"value\":\"v-{m}\"}}"),
        ),
        (
            "value in a typo'd field",
            format!("{{\"name\":\"B\",\"valeu\":\"v-{m}\"}}"),
        ),
        (
            "value where hosts go",
            format!("{{\"name\":\"B\",\"value\":\"x-123456\",\"hosts\":\"v-{m}\"}}"),
        ),
        ("not JSON", format!("name=B value=v-{m}")),
        ("missing value", "{\"name\":\"B\"}".to_string()),
        (
            "value with a newline",
            format!("{{\"name\":\"B\",\"value\":\"v-{m}\\nX\"}}"),
        ),
        (
            "oauth2 value not JSON",
            format!("{{\"name\":\"B\",\"kind\":\"oauth2\",\"value\":\"v-{m}\"}}"),
        ),
        ("duplicate", good.clone()),
    ];
    for (what, bad) in cases {
        let input = format!("{good}\n{{\"name\":\"C\",\"value\":\"c-{m}\"}}\n{bad}\n");
        let out = env.run(&["secret", "import"], Some(input.as_bytes()));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: one line: {err:?}"
        );
        assert!(err.contains("line 3"), "{what}: names the line: {err}");
        assert!(err.contains("nothing was imported"), "{what}: {err}");
        assert_no_leak(what, &env.everything(&[&out]), format!("v-{m}"));
        assert_eq!(
            std::fs::read(env.path("data/vault.kw")).unwrap(),
            file,
            "{what}: the vault file is untouched"
        );
        assert_eq!(env.audit().len(), audit, "{what}: nothing audited");
    }
    let err = env.user_error(&["secret", "import"], Some(b""));
    assert!(err.contains("nothing to import"), "{err}");
}
