//! The messages a new user meets in the first hour (issue 15), through the real
//! binary: each names what to change (the key, the address, the path) and exits 1.

mod common;

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("KEYWARD_MASTER_KEY")
        .env_remove("KEYWARD_MASTER_PASSPHRASE")
        .output()
        .unwrap()
}

/// `keyward check` on `toml`: exit 1 and the one `error:` line it printed.
fn check_error(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), toml).unwrap();
    let out = run(dir.path(), &["check", "--config", "bad.toml"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let errors: Vec<_> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    errors[0].to_string()
}

/// A value of the wrong type names its key path, not only the file and line.
#[test]
fn check_names_the_key_of_a_type_error() {
    let err = check_error("[proxy]\nmax_connections = 10\nlisten = 3128\n");
    assert!(
        err.starts_with("error: bad.toml:3: proxy.listen: "),
        "{err}"
    );
    assert!(err.contains("3128"), "{err}");

    let err = check_error("[admin]\n\nlisten = true\n");
    assert!(
        err.starts_with("error: bad.toml:3: admin.listen: "),
        "{err}"
    );

    let err = check_error("[egress]\nports = [443, \"8443\"]\n");
    assert!(
        err.starts_with("error: bad.toml:2: egress.ports[1]: "),
        "{err}"
    );
}

/// A `{secrt}` typo in an inject template is reported on the template's line
/// (not the `[[providers]]` table's) and quotes the template.
#[test]
fn check_reports_a_template_typo_on_its_line() {
    let err = check_error(
        "[[providers]]\nname = \"acme\"\nhosts = [\"api.acme.test\"]\nsecret = \"ACME_KEY\"\n\
         inject = { header = \"authorization\", value = \"Bearer {secrt}\" }\n",
    );
    assert!(
        err.starts_with("error: bad.toml:5: providers.acme.inject: "),
        "{err}"
    );
    assert!(err.contains("\"Bearer {secrt}\""), "{err}");
    assert!(err.contains("must contain {secret}"), "{err}");

    let err = check_error(
        "[[providers]]\nname = \"bot\"\nhosts = [\"api.bot.test\"]\nsecret = \"BOT_KEY\"\n\n\
         inject = { path_prefix = \"/bot{token}\" }\n",
    );
    assert!(
        err.starts_with("error: bad.toml:6: providers.bot.inject: "),
        "{err}"
    );
}
