//! `keyward audit …` driven through the real binary, over logs written by the
//! library writer (`AuditLog::record`) the proxy uses.

use keyward::audit::{rotated_files, AuditLog, Event, EventKind, Outcome};
use keyward::config::Config;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of a child copy of this test binary: the log to append to.
const CHILD_LOG_ENV: &str = "KEYWARD_TEST_AUDIT_CHILD_LOG";
/// Lines each child writer appends.
const CHILD_LINES: usize = 200;
/// Rotation threshold of the concurrent-writers test.
const CHILD_ROTATE_BYTES: u64 = 8 * 1024;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Env {
    fn new(rotate_bytes: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let log = root.join("data").join("audit.jsonl");
        let config = root.join("keyward.toml");
        std::fs::write(
            &config,
            format!(
                "[audit]\npath = {:?}\nrotate_bytes = {rotate_bytes}\n",
                log.display().to_string()
            ),
        )
        .unwrap();
        Env {
            _dir: dir,
            root,
            config,
            log,
        }
    }

    /// The writer the proxy would open from this config.
    fn writer(&self) -> AuditLog {
        let cfg = Config::from_file(&self.config).unwrap();
        AuditLog::open(&cfg.audit).unwrap()
    }

    fn write(&self, events: impl IntoIterator<Item = Event>) {
        let log = self.writer();
        for ev in events {
            log.record(ev).unwrap();
        }
    }

    fn keyward(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.root)
            .output()
            .unwrap()
    }

    fn edit_lines(&self, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(&self.log).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        f(&mut lines);
        std::fs::write(&self.log, lines.join("\n") + "\n").unwrap();
    }
}

fn inject(agent: &str, secret: &str) -> Event {
    Event {
        agent: Some(agent.into()),
        chain: Some("support-triage".into()),
        secret: Some(secret.into()),
        host: Some("api.openai.com".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        tier: Some("owner".into()),
        status: Some(200),
        ..Event::new(EventKind::Inject, Outcome::Allowed)
    }
}

fn deny(agent: &str, reason: &str) -> Event {
    Event {
        agent: Some(agent.into()),
        chain: Some("billing".into()),
        host: Some("evil.example".into()),
        reason: Some(reason.into()),
        status: Some(403),
        ..Event::new(EventKind::Deny, Outcome::Denied)
    }
}

fn five_lines() -> Vec<Event> {
    (0..5)
        .map(|i| inject(&format!("agent-{i}"), "OPENAI_API_KEY"))
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn all_output(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

fn assert_tampered_at(o: &Output, line: u64) {
    assert_eq!(o.status.code(), Some(1), "{}", all_output(o));
    assert!(
        all_output(o).contains(&format!("line {line} ")),
        "{}",
        all_output(o)
    );
}

#[test]
fn verify_clean_log_prints_ok_and_exits_0() {
    let env = Env::new(0);
    env.write(five_lines());
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stdout(&o).starts_with("ok: 5 lines"), "{}", stdout(&o));
}

#[test]
fn verify_reports_an_edited_line() {
    let env = Env::new(0);
    env.write(five_lines());
    env.edit_lines(|l| l[2] = l[2].replace("\"status\":200", "\"status\":500"));
    assert_tampered_at(&env.keyward(&["audit", "verify"]), 3);
}

#[test]
fn verify_reports_a_deleted_line() {
    let env = Env::new(0);
    env.write(five_lines());
    env.edit_lines(|l| {
        l.remove(1);
    });
    assert_tampered_at(&env.keyward(&["audit", "verify"]), 2);
}

#[test]
fn verify_reports_reordered_lines() {
    let env = Env::new(0);
    env.write(five_lines());
    env.edit_lines(|l| l.swap(3, 4));
    assert_tampered_at(&env.keyward(&["audit", "verify"]), 4);
}

#[test]
fn verify_reports_a_line_truncated_in_the_middle_of_the_log() {
    let env = Env::new(0);
    env.write(five_lines());
    env.edit_lines(|l| {
        let keep = l[1].len() / 3;
        l[1].truncate(keep);
    });
    assert_tampered_at(&env.keyward(&["audit", "verify"]), 2);
}

#[test]
fn verify_reports_a_deleted_first_line_and_accepts_an_anchor() {
    let env = Env::new(0);
    env.write(five_lines());
    let first: Event = serde_json::from_str(
        std::fs::read_to_string(&env.log)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    env.edit_lines(|l| {
        l.remove(0);
    });
    assert_tampered_at(&env.keyward(&["audit", "verify"]), 1);
    let o = env.keyward(&["audit", "verify", "--anchor", &first.hash]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
}

#[test]
fn rotation_keeps_one_chain_across_files() {
    let env = Env::new(1024);
    env.write((0..40).map(|i| inject(&format!("agent-{i}"), "OPENAI_API_KEY")));
    let rotated = rotated_files(&env.log).unwrap();
    assert!(rotated.len() >= 3, "{rotated:?}");
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(stdout(&o).starts_with("ok: 40 lines"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("in {} file(s)", rotated.len() + 1)),
        "{}",
        stdout(&o)
    );

    // Query and export read the whole set, in order.
    let o = env.keyward(&["audit", "query", "--json"]);
    let agents: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().agent.unwrap())
        .collect();
    assert_eq!(
        agents,
        (0..40).map(|i| format!("agent-{i}")).collect::<Vec<_>>()
    );

    // A rotated file removed from the middle is a gap in the chain.
    std::fs::remove_file(&rotated[1].1).unwrap();
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(
        stdout(&o).contains(&rotated[2].1.display().to_string()),
        "{}",
        stdout(&o)
    );
}

/// Not a test on its own: the body of a child writer process (see below).
#[test]
fn child_writer() {
    let Ok(log) = std::env::var(CHILD_LOG_ENV) else {
        return;
    };
    let writer = AuditLog::open_rotating(Path::new(&log), CHILD_ROTATE_BYTES).unwrap();
    let me = std::process::id().to_string();
    for i in 0..CHILD_LINES {
        let mut ev = Event::new(EventKind::SecretSet, Outcome::Allowed);
        ev.agent = Some(format!("{me}-{i}"));
        writer.record(ev).unwrap();
    }
}

#[test]
fn two_processes_appending_keep_one_valid_chain() {
    let env = Env::new(CHILD_ROTATE_BYTES);
    env.write([inject("before", "OPENAI_API_KEY")]);
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&me)
                .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
                .env(CHILD_LOG_ENV, &env.log)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // And this process writes at the same time.
    let writer = env.writer();
    for i in 0..CHILD_LINES {
        writer
            .record(inject(&format!("parent-{i}"), "OPENAI_API_KEY"))
            .unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let expected = 1 + 3 * CHILD_LINES;
    assert!(
        stdout(&o).starts_with(&format!("ok: {expected} lines")),
        "{}",
        stdout(&o)
    );
    assert!(!rotated_files(&env.log).unwrap().is_empty());
}

#[test]
fn secret_set_processes_and_the_proxy_writer_share_one_chain() {
    let env = Env::new(CHILD_ROTATE_BYTES);
    let vault = format!(
        "[vault]\npath = {:?}\nmaster_key_file = {:?}\n",
        env.root.join("data/vault.kw").display().to_string(),
        env.root.join("certs/master.key").display().to_string(),
    );
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&vault);
    std::fs::write(&env.config, text).unwrap();
    let set = |name: String| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--config")
            .arg(&env.config)
            .args(["secret", "set", &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"sk-not-a-real-value-0123456789")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The first `secret set` creates the master key and vault before the race.
    set("KEY_INIT".into());
    let writer = env.writer();
    std::thread::scope(|s| {
        for t in 0..2 {
            s.spawn(move || {
                for i in 0..4 {
                    set(format!("KEY_{t}_{i}"));
                }
            });
        }
        for i in 0..CHILD_LINES {
            writer
                .record(inject(&format!("proxy-{i}"), "OPENAI_API_KEY"))
                .unwrap();
        }
    });
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert!(
        stdout(&o).starts_with(&format!("ok: {} lines", 9 + CHILD_LINES)),
        "{}",
        stdout(&o)
    );
    let o = env.keyward(&["audit", "query", "--json", "--event", "secret_set"]);
    assert_eq!(stdout(&o).lines().count(), 9, "{}", all_output(&o));
    // The value never reaches the log.
    let o = env.keyward(&["audit", "export", "--format", "jsonl"]);
    assert!(!stdout(&o).contains("sk-not-a-real-value"));
}

#[test]
fn query_filters_select_events() {
    let env = Env::new(0);
    let mut old = inject("triage-1", "OPENAI_API_KEY");
    old.ts = "2020-01-01T00:00:00.000Z".into();
    env.write([
        old,
        inject("triage-1", "SLACK_BOT_TOKEN"),
        inject("triage-2", "OPENAI_API_KEY"),
        deny("triage-2", "host_not_allowed"),
    ]);
    let count = |args: &[&str]| {
        let mut all = vec!["audit", "query", "--json"];
        all.extend_from_slice(args);
        let o = env.keyward(&all);
        assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
        stdout(&o).lines().count()
    };
    assert_eq!(count(&[]), 4);
    assert_eq!(count(&["--secret", "OPENAI_API_KEY"]), 2);
    assert_eq!(count(&["--agent", "triage-2"]), 2);
    assert_eq!(count(&["--chain", "billing"]), 1);
    assert_eq!(count(&["--outcome", "denied"]), 1);
    assert_eq!(count(&["--since", "1h"]), 3);
    assert_eq!(count(&["--until", "2021-01-01T00:00:00Z"]), 1);
    assert_eq!(
        count(&[
            "--agent",
            "triage-1",
            "--secret",
            "OPENAI_API_KEY",
            "--since",
            "2019-06-01T00:00:00Z"
        ]),
        1
    );

    let table = stdout(&env.keyward(&["audit", "query", "--outcome", "denied"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("TS"), "{table}");
    assert!(lines[1].contains("403 host_not_allowed"), "{table}");

    let o = env.keyward(&["audit", "query", "--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
}

#[test]
fn export_jsonl_is_the_log_and_cef_is_escaped() {
    let env = Env::new(0);
    let mut tricky = deny("agent=1", "bad|reason\nsecond line");
    tricky.event = EventKind::Deny;
    tricky.path = Some(r"/a\b".into());
    env.write([inject("triage-1", "OPENAI_API_KEY"), tricky]);

    let o = env.keyward(&["audit", "export", "--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    assert_eq!(o.stdout, std::fs::read(&env.log).unwrap());

    let o = env.keyward(&["audit", "export", "--format", "cef"]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        lines[0].starts_with(&format!(
            "CEF:0|keyward|keyward|{version}|inject|inject allowed|"
        )),
        "{text}"
    );
    assert!(lines[0].contains("suser=triage-1"), "{text}");
    assert!(
        lines[0].contains("cs2Label=secret cs2=OPENAI_API_KEY"),
        "{text}"
    );
    assert!(lines[0].contains("requestMethod=POST"), "{text}");
    assert!(lines[1].contains(r"suser=agent\=1"), "{text}");
    assert!(
        lines[1].contains(r"reason=bad|reason\nsecond line"),
        "{text}"
    );
    assert!(lines[1].contains(r"request=/a\\b"), "{text}");

    let o = env.keyward(&[
        "audit",
        "export",
        "--format",
        "cef",
        "--since",
        "1h",
        "--outcome",
        "denied",
    ]);
    assert_eq!(stdout(&o).lines().count(), 1);
}

#[test]
fn tail_prints_the_last_lines_and_follows_new_ones() {
    let env = Env::new(700);
    env.write((0..8).map(|i| inject(&format!("agent-{i}"), "OPENAI_API_KEY")));
    let o = env.keyward(&["audit", "tail", "-n", "3", "--json"]);
    let agents: Vec<String> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().agent.unwrap())
        .collect();
    assert_eq!(agents, ["agent-5", "agent-6", "agent-7"]);

    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_keyward"))
            .arg("--config")
            .arg(&env.config)
            .args(["audit", "tail", "-n", "1", "--json", "--follow"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut reader = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("agent-7"), "{line}");
    // New lines, across at least one rotation, arrive in order.
    env.write((8..20).map(|i| inject(&format!("agent-{i}"), "OPENAI_API_KEY")));
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 8..20 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains(&format!("\"agent-{i}\"")), "{line}");
        assert!(Instant::now() < deadline);
    }
}

/// A `--follow` child must not outlive a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stdout_log_cannot_be_verified_in_place() {
    let env = Env::new(0);
    std::fs::write(&env.config, "[audit]\npath = \"-\"\n").unwrap();
    let o = env.keyward(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", all_output(&o));
    assert!(all_output(&o).contains("stdout"), "{}", all_output(&o));
}

#[test]
fn file_flag_verifies_a_collected_copy() {
    let env = Env::new(0);
    env.write(five_lines());
    let copy = env.root.join("collected.jsonl");
    std::fs::copy(&env.log, &copy).unwrap();
    let o = env.keyward(&["audit", "verify", "--file", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", all_output(&o));
}
