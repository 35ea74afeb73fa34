//! The real `keyward` binary in a temp dir with its own config, vault and audit
//! log, for CLI tests: run a command with stdin, check its exit and one-line errors,
//! and collect every place a value could leak into.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub struct CliEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl CliEnv {
    /// A config with only `[vault]` and `[audit]` under the temp dir.
    pub fn new() -> CliEnv {
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
        CliEnv { dir, config }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `keyward --config … ARGS` in the temp dir, with no master key from the
    /// caller's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyward"));
        c.arg("--config").arg(&self.config).args(args);
        for var in [
            "KEYWARD_MASTER_KEY",
            "KEYWARD_MASTER_PASSPHRASE",
            "KEYWARD_NEW_MASTER_KEY",
            "KEYWARD_NEW_MASTER_PASSPHRASE",
        ] {
            c.env_remove(var);
        }
        c.current_dir(self.dir.path());
        c
    }

    /// Runs `c` with `stdin` (closed at once when `None`).
    pub fn run_cmd(mut c: Command, stdin: Option<&[u8]>) -> Output {
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            // A command refused before it reads stdin may exit first.
            if let Err(e) = pipe.write_all(input) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
            }
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        CliEnv::run_cmd(self.cmd(args), stdin)
    }

    pub fn run_str(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.run(args, stdin.map(str::as_bytes))
    }

    /// Runs and expects exit 0; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit 1 with a one-line message; returns stderr.
    pub fn user_error(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(args, stdin);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        err
    }

    /// The audit log's lines, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path("data/audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// stdout + stderr + audit + vault file, everything a value could leak into.
    pub fn everything(&self, outputs: &[&Output]) -> Vec<u8> {
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

impl Default for CliEnv {
    fn default() -> Self {
        CliEnv::new()
    }
}
