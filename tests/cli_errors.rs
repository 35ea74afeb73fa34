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

/// A command that runs the keyward binary as a user that file permissions apply
/// to: this user when it is not root, else `nobody` through `setpriv` (a copy of
/// the binary in `dir` when `nobody` cannot reach the build's). `None`: skipped.
fn unprivileged(dir: &std::path::Path, test: &str) -> Option<Command> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Some(Command::new(BIN));
    }
    let setpriv = common::tools::require("setpriv", test)?;
    let as_nobody = |bin: &std::path::Path| {
        let mut c = Command::new(&setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin);
        c
    };
    let reachable = as_nobody(std::path::Path::new(BIN))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if reachable {
        return Some(as_nobody(std::path::Path::new(BIN)));
    }
    let copy = dir.join("keyward-bin");
    std::fs::copy(BIN, &copy).unwrap();
    Some(as_nobody(&copy))
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A master key file keyward may not read (its directory closed, or the file
/// itself) is reported as a permission problem naming the file and what to
/// change, never as "missing" (which would suggest restoring it).
#[test]
fn unreadable_master_key_is_a_permission_problem_not_missing() {
    let test = "unreadable_master_key_is_a_permission_problem_not_missing";
    let env = common::cli::CliEnv::new();
    env.ok(&["secret", "set", "K"], Some(b"sk-test-0123456789abcdef"));
    chmod(env.dir.path(), 0o755);
    if unprivileged(env.dir.path(), test).is_none() {
        return;
    }
    let key = env.path("certs/master.key");
    let certs = env.path("certs");
    // A directory without search (x) permission, or a file without read.
    for (what, dir_mode, file_mode) in [("closed dir", 0o600, 0o600), ("closed file", 0o755, 0o000)]
    {
        chmod(&certs, dir_mode);
        chmod(&key, file_mode);
        for args in [&["secret", "list"][..], &["check"][..]] {
            let mut c = unprivileged(env.dir.path(), test).unwrap();
            c.arg("--config")
                .arg(&env.config)
                .args(args)
                .current_dir(env.dir.path())
                .env_remove("KEYWARD_MASTER_KEY")
                .env_remove("KEYWARD_MASTER_PASSPHRASE");
            let out = c.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(1), "{what} {args:?}: {text}");
            let line = text
                .lines()
                .find(|l| l.contains("master key"))
                .unwrap_or_else(|| panic!("{what} {args:?}: {text}"));
            assert!(
                line.contains(&key.display().to_string())
                    && line.contains("permission denied")
                    && line.contains("readable")
                    && !line.contains("missing"),
                "{what} {args:?}: {line}"
            );
        }
    }
    chmod(&certs, 0o700);
    chmod(&key, 0o600);
}

/// An `allow_private` entry that is neither an address nor a network says what
/// to write.
#[test]
fn check_says_what_to_write_for_a_bad_allow_private_entry() {
    let err = check_error("[egress]\nallow_private = [\"127.0.0.1\", \"loopback\"]\n");
    assert!(
        err.starts_with("error: bad.toml:2: egress.allow_private: \"loopback\" is not an address"),
        "{err}"
    );
    assert!(err.contains("\"10.0.0.0/8\" or \"127.0.0.1\""), "{err}");
}

/// A usage error (unknown flag, missing argument, unknown subcommand, none at
/// all) exits 1 with clap's message naming the problem; `--help` and
/// `--version` exit 0 on stdout.
#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    for (args, names) in [
        (&["secret", "show"][..], "<NAME>"),
        (&["secret", "list", "--bogus"][..], "--bogus"),
        (&["frobnicate"][..], "frobnicate"),
        (&[][..], "Usage"),
    ] {
        let out = run(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
    for args in [
        &["--help"][..],
        &["--version"][..],
        &["secret", "--help"][..],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}
