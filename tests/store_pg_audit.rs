//! The audit log in PostgreSQL (issue 17, docs/store.md "Audit") against a real
//! throwaway cluster (`common::pg`): two replicas each keep their own chain in
//! one database, verify proves both complete and the merged history holds the
//! lines of both; an edited, deleted (middle or tail) or reordered row makes
//! verify name the replica and the seq. CLI writers (`secret set|rotate|rm|import`,
//! `agent add|rm`) write chains of their own that verify covers, and a database
//! that refuses the line undoes the change; `audit tail` and `--follow` read every
//! chain; `store import --audit` copies a verified file chain and refuses a
//! tampered one.

mod common;

use common::pg::Pg;
use keyward::audit::{lines_pg, verify_pg, ChainReport, Event, EventKind, Outcome, PgAudit};
use keyward::config::Config;
use keyward::vault::open_store;

const MASTER: &str = "a2V5d2FyZC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXM=";
const SCHEMA: &str = "kwaudit";

fn config(pg: &Pg, dir: &std::path::Path) -> Config {
    std::fs::write(dir.join("master.key"), format!("{MASTER}\n")).unwrap();
    let text = format!(
        "[vault]\npath = \"{d}/vault.kw\"\nmaster_key_file = \"{d}/master.key\"\n{}",
        pg.store_toml(SCHEMA),
        d = dir.display()
    );
    Config::parse(&text, "<test>").unwrap()
}

fn ev(agent: &str, i: usize) -> Event {
    Event {
        agent: Some(agent.into()),
        host: Some("api.example.test".into()),
        path: Some(format!("/v1/{i}")),
        secret: Some("API_KEY".into()),
        ..Event::new(EventKind::Inject, Outcome::Allowed)
    }
}

/// A migrated cluster (the store's `open` applies the migrations) and a pool on it.
fn setup(test: &str) -> Option<(Pg, tempfile::TempDir, Config, tokio::runtime::Runtime)> {
    let pg = Pg::start(test)?;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, dir.path());
    drop(open_store(&cfg).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Some((pg, dir, cfg, rt))
}

fn pool(cfg: &Config) -> deadpool_postgres::Pool {
    keyward::vault::postgres::connect::Target::from_config(&cfg.store)
        .unwrap()
        .pool()
        .unwrap()
}

fn report<'a>(reports: &'a [ChainReport], replica: &str) -> &'a ChainReport {
    reports.iter().find(|r| r.replica == replica).unwrap()
}

/// Writes `n` lines through replica `r1` and `n` through `r2`, in batches of 3
/// (interleaved, concurrently), and returns the pool.
fn two_replicas(rt: &tokio::runtime::Runtime, cfg: &Config, n: usize) -> deadpool_postgres::Pool {
    rt.block_on(async {
        let p = pool(cfg);
        let a = PgAudit::register(pool(cfg), SCHEMA, "r1").await.unwrap();
        let b = PgAudit::register(pool(cfg), SCHEMA, "r2").await.unwrap();
        let write = |log: PgAudit, agent: &'static str| async move {
            let mut i = 0;
            while i < n {
                let mut batch: Vec<Event> = (i..(i + 3).min(n)).map(|k| ev(agent, k)).collect();
                i += batch.len();
                log.append(&mut batch).await.unwrap();
            }
        };
        let (x, y) = (
            tokio::spawn(write(a, "alpha")),
            tokio::spawn(write(b, "beta")),
        );
        x.await.unwrap();
        y.await.unwrap();
        p
    })
}

#[test]
fn two_replicas_keep_their_own_chains_verify_and_merge() {
    let Some((_pg, _dir, cfg, rt)) = setup("two_replicas_keep_their_own_chains_verify_and_merge")
    else {
        return;
    };
    let p = two_replicas(&rt, &cfg, 10);
    let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in &reports {
        assert!(r.problem.is_none(), "{r:?}");
        assert_eq!(r.lines, 10, "{r:?}");
    }
    let lines = rt.block_on(lines_pg(&p, SCHEMA)).unwrap();
    assert_eq!(lines.len(), 20);
    assert_eq!(
        lines.iter().filter(|l| l.2.contains("\"alpha\"")).count(),
        10
    );
    assert_eq!(
        lines.iter().filter(|l| l.2.contains("\"beta\"")).count(),
        10
    );
    assert!(lines.windows(2).all(|w| {
        let ts = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"].clone();
        ts(&w[0].2).as_str() <= ts(&w[1].2).as_str()
    }));

    // A restarted replica continues its chain at the registered head.
    rt.block_on(async {
        let again = PgAudit::register(pool(&cfg), SCHEMA, "r1").await.unwrap();
        again.record(ev("alpha", 99)).await.unwrap();
    });
    let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
    assert!(report(&reports, "r1").problem.is_none(), "{reports:?}");
    assert_eq!(report(&reports, "r1").lines, 11);
    assert_eq!(report(&reports, "r2").lines, 10);
}

/// Two handles with one replica id (a restart that overlaps the old process):
/// each one's cached head goes stale as the other writes, so its one-statement
/// append stores nothing and it re-reads the head under the lock: one chain, no fork.
#[test]
fn two_writers_with_one_replica_id_keep_one_chain() {
    let Some((_pg, _dir, cfg, rt)) = setup("two_writers_with_one_replica_id_keep_one_chain") else {
        return;
    };
    let p = pool(&cfg);
    rt.block_on(async {
        let a = PgAudit::register(pool(&cfg), SCHEMA, "twin").await.unwrap();
        let b = PgAudit::register(pool(&cfg), SCHEMA, "twin").await.unwrap();
        let write = |log: PgAudit, agent: &'static str| async move {
            for i in 0..20 {
                log.record(ev(agent, i)).await.unwrap();
            }
        };
        tokio::join!(write(a, "alpha"), write(b, "beta"));
    });
    let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
    let twin = report(&reports, "twin");
    assert!(twin.problem.is_none(), "{reports:?}");
    assert_eq!(twin.lines, 40, "{reports:?}");
}

#[test]
fn tampered_rows_name_the_replica_and_seq() {
    let Some((pg, _dir, cfg, rt)) = setup("tampered_rows_name_the_replica_and_seq") else {
        return;
    };
    let p = two_replicas(&rt, &cfg, 8);
    let cli = cli_on(&pg);
    let out = cli.ok(&["audit", "verify"], None);
    assert!(
        out.contains("ok: replica r1: 8 lines") && out.contains("ok: replica r2: 8 lines"),
        "{out}"
    );
    let check = |replica: &str| -> (i64, String) {
        let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
        let other = if replica == "r1" { "r2" } else { "r1" };
        assert!(report(&reports, other).problem.is_none(), "{reports:?}");
        report(&reports, replica)
            .problem
            .clone()
            .expect("tamper detected")
    };
    let t = format!("{SCHEMA}.audit");

    // Edit: a line's text changes (the hash column left alone).
    pg.sql(&format!(
        "UPDATE {t} SET line = replace(line, '/v1/3', '/v1/X') WHERE replica = 'r1' AND seq = 4"
    ));
    let (seq, why) = check("r1");
    assert_eq!(seq, 4, "{why}");
    assert!(why.contains("edited"), "{why}");
    let got = cli.run(&["audit", "verify"], None);
    let text = String::from_utf8_lossy(&got.stdout);
    assert_eq!(got.status.code(), Some(1), "{text}");
    assert!(
        text.contains("tampered: replica r1 seq 4: the hash does not match"),
        "{text}"
    );
    assert!(!text.contains(&pg.password), "{text}");
    pg.sql(&format!(
        "UPDATE {t} SET line = replace(line, '/v1/X', '/v1/3') WHERE replica = 'r1' AND seq = 4"
    ));
    let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
    assert!(reports.iter().all(|r| r.problem.is_none()), "{reports:?}");

    // Reorder: rows 2 and 3 swap places (each takes the other's seq).
    let swap = format!(
        "UPDATE {t} a SET ts = b.ts, line = b.line, prev_hash = b.prev_hash, hash = b.hash \
         FROM {t} b WHERE a.replica = 'r2' AND b.replica = 'r2' \
         AND ((a.seq = 2 AND b.seq = 3) OR (a.seq = 3 AND b.seq = 2))"
    );
    pg.sql(&swap);
    let (seq, why) = check("r2");
    assert_eq!(seq, 2, "{why}");
    assert!(why.contains("reordered"), "{why}");
    pg.sql(&swap);

    // Delete in the middle: the seq is missing.
    pg.sql(&format!("DELETE FROM {t} WHERE replica = 'r2' AND seq = 5"));
    let (seq, why) = check("r2");
    assert_eq!(seq, 5, "{why}");
    assert!(why.contains("missing"), "{why}");

    // Delete the tail of r1: the chain is intact but short of the registered head.
    pg.sql(&format!("DELETE FROM {t} WHERE replica = 'r1' AND seq = 8"));
    let reports = rt.block_on(verify_pg(&p, SCHEMA)).unwrap();
    let (seq, why) = report(&reports, "r1")
        .problem
        .clone()
        .expect("tail cut detected");
    assert_eq!(seq, 8, "{why}");
    assert!(why.contains("registered head"), "{why}");
}

/// The CLI with `[store]` on the cluster (schema `SCHEMA`) and the shared master key.
fn cli_on(pg: &Pg) -> common::cli::CliEnv {
    let env = common::cli::CliEnv::new();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&pg.store_toml(SCHEMA));
    std::fs::write(&env.config, text).unwrap();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    std::fs::write(env.path("certs/master.key"), format!("{MASTER}\n")).unwrap();
    env
}

/// A replica serving on the cluster, its spool in its own dir.
fn replica(pg: &Pg) -> common::KwBuilder {
    let store = pg.store_toml_spool(SCHEMA, "SPOOL");
    common::Kw::builder()
        .config_toml(&store)
        .before_start(|dir| {
            std::fs::write(dir.join("master.key"), format!("{MASTER}\n")).unwrap();
            let cfg = dir.join("keyward.toml");
            if let Ok(text) = std::fs::read_to_string(&cfg) {
                let spool = dir.join("audit-spool.jsonl");
                std::fs::write(&cfg, text.replace("SPOOL", spool.to_str().unwrap())).unwrap();
            }
        })
}

fn db_pool(pg: &Pg) -> (tokio::runtime::Runtime, deadpool_postgres::Pool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(pg, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = {
        let _g = rt.enter();
        pool(&cfg)
    };
    (rt, p)
}

/// Verifies in a thread of its own (the test's runtime must not block).
fn verify_now(pg: &Pg) -> (Vec<ChainReport>, Vec<(String, i64, String)>) {
    std::thread::scope(|s| {
        s.spawn(|| {
            let (rt, p) = db_pool(pg);
            (
                rt.block_on(verify_pg(&p, SCHEMA)).unwrap(),
                rt.block_on(lines_pg(&p, SCHEMA)).unwrap(),
            )
        })
        .join()
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_through_two_replicas_lands_in_two_verified_chains() {
    let Some(pg) = Pg::start("traffic_through_two_replicas_lands_in_two_verified_chains") else {
        return;
    };
    let a = replica(&pg).start().await;
    let b = replica(&pg).start().await;
    for i in 0..5 {
        a.client()
            .get("api.openai.com", &format!("/a/{i}"), &[])
            .await;
        b.client()
            .get("api.openai.com", &format!("/b/{i}"), &[])
            .await;
    }
    let (reports, lines) = verify_now(&pg);
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports.iter().all(|r| r.problem.is_none() && r.lines >= 5),
        "{reports:?}"
    );
    for i in 0..5 {
        for side in ["a", "b"] {
            let path = format!("\"/{side}/{i}\"");
            assert_eq!(
                lines.iter().filter(|l| l.2.contains(&path)).count(),
                1,
                "{path}"
            );
        }
    }
    // The file mirror still has each replica's own lines.
    assert!(a.audit_lines().iter().any(|l| l["path"] == "/a/0"));
    // `audit query` and `export` read every replica's chain from the database.
    let cli = cli_on(&pg);
    let out = cli.ok(&["audit", "query", "--json"], None);
    for side in ["a", "b"] {
        assert!(out.contains(&format!("\"/{side}/4\"")), "{side}: {out}");
    }
    let cef = cli.ok(&["audit", "export", "--format", "cef"], None);
    assert!(
        cef.lines().count() >= 10 && cef.starts_with("CEF:"),
        "{cef}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_under_traffic_spools_then_drains_in_order() {
    let Some(pg) = Pg::start("database_down_under_traffic_spools_then_drains_in_order") else {
        return;
    };
    let a = replica(&pg).start().await;
    let spool = a.audit_path().parent().unwrap().join("audit-spool.jsonl");
    let status_up = a
        .client()
        .get("api.openai.com", "/before", &[])
        .await
        .status;
    pg.stop_server();
    // Requests go on while their lines are spooled (same answer as with the DB up).
    for i in 0..3 {
        let got = a
            .client()
            .get("api.openai.com", &format!("/during/{i}"), &[])
            .await;
        assert_eq!(got.status, status_up, "{:?}", got.error_code());
        assert_ne!(got.error_code().as_deref(), Some("audit_unavailable"));
    }
    let spooled = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(
        spooled.lines().filter(|l| l.contains("/during/")).count(),
        3
    );
    pg.start_server();
    // The next line drains the spool first (a few tries while the pool reconnects).
    for i in 0..50 {
        a.client()
            .get("api.openai.com", &format!("/after/{i}"), &[])
            .await;
        if !spool.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(!spool.exists(), "the spool was not drained");
    let (reports, lines) = verify_now(&pg);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].problem.is_none(), "{reports:?}");
    let paths: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.2).unwrap()["path"].to_string())
        .collect();
    let at = |p: &str| {
        paths
            .iter()
            .position(|x| x == &format!("\"{p}\""))
            .unwrap_or_else(|| panic!("{p} lost: {paths:?}"))
    };
    assert!(at("/before") < at("/during/0"));
    assert!(at("/during/0") < at("/during/1") && at("/during/1") < at("/during/2"));
    assert!(at("/during/2") < at("/after/0"));
}

/// The chains `audit verify` reports, as (replica, lines); fails on a tampered one.
fn verified_chains(cli: &common::cli::CliEnv) -> Vec<(String, u64)> {
    let out = cli.ok(&["audit", "verify"], None);
    out.lines()
        .map(|l| {
            let rest = l
                .strip_prefix("ok: replica ")
                .unwrap_or_else(|| panic!("{out}"));
            let (replica, n) = rest.split_once(": ").unwrap();
            let n = n.split(' ').next().unwrap().parse().unwrap();
            (replica.to_string(), n)
        })
        .collect()
}

#[test]
fn cli_writers_audit_into_chains_of_their_own_and_undo_what_the_database_refuses() {
    let Some(pg) = Pg::start("cli_writers_audit_into_chains_of_their_own") else {
        return;
    };
    let cli = cli_on(&pg);
    cli.ok(&["secret", "set", "API_KEY"], Some(b"value-one-0123456789"));
    cli.ok(
        &["secret", "rotate", "API_KEY"],
        Some(b"value-two-0123456789"),
    );
    cli.ok(&["agent", "add", "bot-1"], None);
    cli.ok(
        &["secret", "import"],
        Some(b"{\"name\":\"A_KEY\",\"value\":\"import-a-0123456789\"}\n{\"name\":\"B_KEY\",\"value\":\"import-b-0123456789\"}\n"),
    );
    cli.ok(&["agent", "rm", "bot-1"], None);
    cli.ok(&["secret", "rm", "A_KEY"], None);
    // A command refused before it changes anything leaves no chain.
    cli.user_error(&["agent", "rm", "nobody-here"], None);

    let chains = verified_chains(&cli);
    assert_eq!(chains.len(), 6, "one chain per writing command: {chains:?}");
    assert!(
        chains.iter().all(|(r, _)| r.starts_with("cli-")),
        "{chains:?}"
    );
    let mut sizes: Vec<u64> = chains.iter().map(|c| c.1).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 1, 1, 1, 1, 2], "{chains:?}");
    let out = cli.ok(&["audit", "query", "--json"], None);
    let events: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    for kind in [
        "secret_set",
        "secret_rotate",
        "agent_add",
        "agent_rm",
        "secret_rm",
    ] {
        assert!(
            events.contains(&format!("\"{kind}\"")),
            "{kind}: {events:?}"
        );
    }
    assert_eq!(events.len(), 7, "{events:?}");
    // The file of `[audit] path` mirrors the same lines.
    assert_eq!(cli.audit().len(), 7);
    let dump = String::from_utf8_lossy(&pg.dump()).to_string();
    assert!(!dump.contains("value-two-0123456789") && !dump.contains("import-b-0123456789"));

    // The database refuses the audit line: the change is undone, exit 2.
    pg.sql(&format!(
        "CREATE FUNCTION {SCHEMA}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON {SCHEMA}.audit \
         FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.refuse()"
    ));
    let got = cli.run(
        &["secret", "set", "NEW_KEY"],
        Some(b"never-stored-0123456789"),
    );
    let err = String::from_utf8_lossy(&got.stderr).to_string();
    assert_eq!(got.status.code(), Some(2), "{err}");
    assert!(
        err.contains("audit refused by the test") && err.contains("undone"),
        "{err}"
    );
    let got = cli.run(&["agent", "add", "bot-2"], None);
    assert_eq!(got.status.code(), Some(2));
    assert!(got.stdout.is_empty(), "no token for an unaudited agent");
    let list = cli.ok(&["secret", "list"], None);
    assert!(
        !list.contains("NEW_KEY") && list.contains("B_KEY"),
        "{list}"
    );
    assert!(!cli.ok(&["agent", "list"], None).contains("bot-2"));
    pg.sql(&format!("DROP TRIGGER refuse ON {SCHEMA}.audit"));
    assert_eq!(verified_chains(&cli).len(), 6, "no half-written chain");
}

#[test]
fn tail_reads_every_chain_and_follow_prints_new_lines() {
    let Some((pg, _dir, cfg, rt)) = setup("tail_reads_every_chain_and_follow") else {
        return;
    };
    let _p = two_replicas(&rt, &cfg, 4);
    let cli = cli_on(&pg);
    let out = cli.ok(&["audit", "tail", "-n", "3", "--json"], None);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines
        .windows(2)
        .all(|w| w[0]["ts"].as_str() <= w[1]["ts"].as_str()));
    let all = cli.ok(&["audit", "tail", "-n", "100"], None);
    assert_eq!(all.lines().count(), 1 + 8, "header + every line: {all}");
    assert!(all.contains("alpha") && all.contains("beta"), "{all}");

    // --follow: lines written after it started, from a replica and a CLI writer.
    let mut c = cli.cmd(&["audit", "tail", "-n", "1", "--follow", "--json"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .stdin(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let bound = std::time::Duration::from_secs(30);
    // The last line already there comes first: the follower has its snapshot.
    let last = rx.recv_timeout(bound).unwrap();
    assert!(last.contains("/v1/3"), "{last}");
    rt.block_on(async {
        let a = PgAudit::register(pool(&cfg), SCHEMA, "r1").await.unwrap();
        a.record(ev("alpha", 100)).await.unwrap();
    });
    cli.ok(
        &["secret", "set", "FOLLOW_KEY"],
        Some(b"follow-value-0123456789"),
    );
    let first: serde_json::Value = serde_json::from_str(&rx.recv_timeout(bound).unwrap()).unwrap();
    let second: serde_json::Value = serde_json::from_str(&rx.recv_timeout(bound).unwrap()).unwrap();
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(first["path"], "/v1/100", "{first}");
    assert_eq!(second["event"], "secret_set", "{second}");
    assert_eq!(second["secret"], "FOLLOW_KEY", "{second}");
}

#[test]
fn store_import_copies_a_verified_file_chain_and_refuses_a_tampered_one() {
    let Some(pg) = Pg::start("store_import_copies_a_verified_file_chain") else {
        return;
    };
    let file = common::cli::CliEnv::new();
    file.ok(
        &["secret", "set", "API_KEY"],
        Some(b"file-value-0123456789"),
    );
    file.ok(
        &["secret", "rotate", "API_KEY"],
        Some(b"file-value-9876543210"),
    );
    let log = file.path("data/audit.jsonl");
    let cli = cli_on(&pg);
    cli.ok(&["store", "init"], None);
    let out = cli.ok(&["store", "import", "--audit", log.to_str().unwrap()], None);
    assert!(out.contains("imported 2 audit lines"), "{out}");
    let chains = verified_chains(&cli);
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert!(
        chains[0].0.starts_with("import-audit.jsonl-") && chains[0].1 == 2,
        "{chains:?}"
    );
    // The same bytes: the file's head is the chain's head.
    let file_head = file.ok(&["audit", "verify"], None);
    let head = file_head.trim().rsplit(' ').next().unwrap().to_string();
    assert!(cli.ok(&["audit", "verify"], None).contains(&head));
    let q = cli.ok(
        &["audit", "query", "--json", "--event", "secret_rotate"],
        None,
    );
    assert_eq!(q.lines().count(), 1, "{q}");

    // A tampered file is refused, naming the line; nothing is copied.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("secret_set", "secret_rm", 1)).unwrap();
    let err = cli.user_error(&["store", "import", "--audit", log.to_str().unwrap()], None);
    assert!(
        err.contains("line 1") && err.contains("nothing was imported"),
        "{err}"
    );
    assert_eq!(verified_chains(&cli).len(), 1);
}
