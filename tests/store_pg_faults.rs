//! The PostgreSQL store under tampering and crashes (SPEC §10, issue 17), on a
//! real throwaway cluster (`common::pg`):
//! - the table digest (`src/vault/postgres/digest.rs`): a record or agent row
//!   deleted with SQL, an older row version put back, a removed row resurrected
//!   from a backup, a row copied into another scope, the digest cleared or taken
//!   from an older state: each refused by a new replica and by a running one
//!   (which keeps its last good snapshot and reports `refused` on `/readyz`);
//!   normal concurrent writes through two replicas still verify; a store made
//!   before migration 4 gets its digest on first open;
//! - `kill -9` of a `keyward serve` child in the middle of an admin PUT loop, and
//!   of a `keyward secret import` in the middle of its one transaction: every
//!   acknowledged write is there, no half batch, digest and audit chains verify,
//!   a new replica starts and serves.

mod common;

use bytes::Bytes;
use common::cli::CliEnv;
use common::pg::Pg;
use common::store::{agent, config, set, value_of, MASTER};
use common::{Kw, KwBuilder};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyward::secret::Secret;
use keyward::vault::{open_store, Change, Freshness, Store};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "kwadm-all-0123456789abcdef";
const BIN: &str = env!("CARGO_BIN_EXE_keyward");
/// How long a test waits for something that should happen at once (a refresh,
/// a process start); a deadline for a hang, not a measured number.
const PATIENCE: Duration = Duration::from_secs(20);

/// Waits until `running` refuses what the database holds now (the tampering
/// below bumps the generation and notifies, as an attacker hiding nothing would
/// not need to: a new replica refuses it either way).
fn until_refused(running: &dyn Store, what: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Err(e) = running.reload() {
            if matches!(running.freshness(), Freshness::Refused { .. }) {
                return e.to_string();
            }
        }
        assert!(Instant::now() < deadline, "not refused: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One tampering scenario on its own schema: `prepare` writes through keyward,
/// `tamper` is SQL; a new replica must refuse with `expect`, the running one
/// must refuse the new state and keep serving `kept` (scope, name, value).
struct Case {
    schema: &'static str,
    expect: &'static str,
}

fn check_case(
    pg: &Pg,
    case: Case,
    prepare: impl FnOnce(&dyn Store),
    tamper: &[String],
    kept: (&str, &str, &str),
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(pg, case.schema, dir.path());
    let running = open_store(&cfg).unwrap();
    prepare(&*running);
    for sql in tamper {
        pg.sql(sql);
    }
    let s = case.schema;
    pg.sql(&format!(
        "UPDATE {s}.meta SET generation = generation + 1; SELECT pg_notify('keyward_changes', '{s}')"
    ));
    let err = open_store(&cfg)
        .err()
        .unwrap_or_else(|| panic!("{s}: a new replica opened the tampered store"))
        .to_string();
    assert!(err.contains(case.expect), "{s}: {err}");
    assert!(!err.contains(&pg.password), "{s}: {err}");
    let err = until_refused(&*running, s);
    assert!(err.contains(case.expect), "{s}: {err}");
    assert_eq!(
        value_of(&*running, kept.0, kept.1).as_deref(),
        Some(kept.2),
        "{s}: the last good snapshot is kept"
    );
    // Nothing is written on top of refused contents.
    let err = set(&*running, "platform", "NEW", "new-value-0123456789")
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "{s}: {err}");
}

#[test]
fn rows_deleted_put_back_or_copied_with_sql_are_refused_by_new_and_running_replicas() {
    let Some(pg) = Pg::start("store_pg_faults::digest") else {
        return;
    };
    let two = |v: &dyn Store| {
        set(v, "platform", "K", "the-real-value-0123456789").unwrap();
        set(v, "agent:bob", "K", "bob-value-0123456789").unwrap();
        v.apply(Change::AddAgent(agent("alice"))).unwrap();
        v.apply(Change::AddAgent(agent("carol"))).unwrap();
    };
    let kept = ("platform", "K", "the-real-value-0123456789");

    // A record row deleted (a revocation nobody audited).
    check_case(
        &pg,
        Case {
            schema: "del_record",
            expect: "table digest mismatch",
        },
        two,
        &["DELETE FROM del_record.records WHERE scope = 'agent:bob'".into()],
        kept,
    );

    // An agent row deleted.
    check_case(
        &pg,
        Case {
            schema: "del_agent",
            expect: "table digest mismatch",
        },
        two,
        &["DELETE FROM del_agent.agents WHERE id = 'carol'".into()],
        kept,
    );

    // An older version of a record put back (the whole row as it was at v1:
    // its seal is valid, only the digest can tell).
    let s = "old_row";
    check_case(
        &pg,
        Case {
            schema: s,
            expect: "table digest mismatch",
        },
        |v| {
            two(v);
            pg.sql(&format!(
                "CREATE TABLE {s}.saved AS SELECT * FROM {s}.records WHERE scope = 'platform'"
            ));
            v.apply(Change::RotateSecret {
                scope: "platform".into(),
                name: "K".into(),
                value: Secret::from_str("rotated-value-0123456789"),
            })
            .unwrap();
            assert_eq!(
                value_of(v, "platform", "K").as_deref(),
                Some("rotated-value-0123456789")
            );
        },
        &[format!(
            "DELETE FROM {s}.records WHERE scope = 'platform'; \
             INSERT INTO {s}.records SELECT * FROM {s}.saved"
        )],
        ("platform", "K", "rotated-value-0123456789"),
    );

    // The same, with the digest of that older state put back too (a partial
    // rollback behind the current generation): the digest's MAC binds it.
    let s = "old_meta";
    check_case(
        &pg,
        Case {
            schema: s,
            expect: "table digest in meta fails authentication",
        },
        |v| {
            two(v);
            pg.sql(&format!(
                "CREATE TABLE {s}.saved AS SELECT * FROM {s}.records WHERE scope = 'platform'; \
                 CREATE TABLE {s}.saved_meta AS SELECT * FROM {s}.meta"
            ));
            v.apply(Change::RotateSecret {
                scope: "platform".into(),
                name: "K".into(),
                value: Secret::from_str("rotated-value-0123456789"),
            })
            .unwrap();
        },
        &[format!(
            "DELETE FROM {s}.records WHERE scope = 'platform'; \
             INSERT INTO {s}.records SELECT * FROM {s}.saved; \
             UPDATE {s}.meta m SET row_digest = o.row_digest, digest_mac = o.digest_mac \
             FROM {s}.saved_meta o"
        )],
        ("platform", "K", "rotated-value-0123456789"),
    );

    // A removed secret resurrected from a backup row.
    let s = "resurrect";
    check_case(
        &pg,
        Case {
            schema: s,
            expect: "table digest mismatch",
        },
        |v| {
            two(v);
            pg.sql(&format!(
                "CREATE TABLE {s}.saved AS SELECT * FROM {s}.records WHERE scope = 'agent:bob'"
            ));
            v.apply(Change::RemoveSecret {
                scope: "agent:bob".into(),
                name: "K".into(),
            })
            .unwrap();
            assert_eq!(value_of(v, "agent:bob", "K"), None);
        },
        &[format!("INSERT INTO {s}.records SELECT * FROM {s}.saved")],
        kept,
    );

    // A row copied into another scope (its seal names the first scope).
    let s = "copied";
    check_case(
        &pg,
        Case {
            schema: s,
            expect: "fails authentication",
        },
        two,
        &[format!(
            "INSERT INTO {s}.records SELECT 'agent:mallory', name, id || '-copy', version, hint, \
             description, hosts, created, updated, last_rotated, rotate_every_secs, kind, public, \
             sealed, generation FROM {s}.records WHERE scope = 'platform'"
        )],
        kept,
    );

    // The digest cleared (to make keyward recompute it over edited rows).
    let s = "cleared";
    check_case(
        &pg,
        Case {
            schema: s,
            expect: "table digest missing",
        },
        two,
        &[format!(
            "UPDATE {s}.meta SET row_digest = NULL, digest_mac = NULL"
        )],
        kept,
    );
}

#[test]
fn concurrent_writes_through_two_replicas_keep_the_digest_valid() {
    let Some(pg) = Pg::start("store_pg_faults::concurrent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, "keyward", dir.path());
    let a = open_store(&cfg).unwrap();
    let b = open_store(&cfg).unwrap();
    const EACH: usize = 20;
    std::thread::scope(|s| {
        for (n, store) in [&a, &b].into_iter().enumerate() {
            s.spawn(move || {
                for i in 0..EACH {
                    // One key both write (rotations race), one of its own.
                    set(
                        &**store,
                        "platform",
                        "SHARED",
                        &format!("v-{n}-{i}-0123456789"),
                    )
                    .unwrap();
                    set(
                        &**store,
                        "platform",
                        &format!("OWN_{n}_{i}"),
                        "own-0123456789",
                    )
                    .unwrap();
                    if i % 4 == 0 {
                        let id = format!("agent-{n}-{i}");
                        store.apply(Change::AddAgent(agent(&id))).unwrap();
                        if i % 8 == 0 {
                            store.apply(Change::RemoveAgent { id }).unwrap();
                        }
                    }
                    if i % 5 == 4 {
                        store
                            .apply(Change::RemoveSecret {
                                scope: "platform".into(),
                                name: format!("OWN_{n}_{}", i - 1),
                            })
                            .unwrap();
                    }
                }
            });
        }
    });
    // A new replica verifies everything; both writers are current and not refused.
    let c = open_store(&cfg).unwrap();
    assert_eq!(
        c.snapshot().meta("platform", "SHARED").unwrap().version,
        2 * EACH as u32
    );
    for s in [&a, &b] {
        let deadline = Instant::now() + PATIENCE;
        while s.generation() != c.generation() {
            assert!(Instant::now() < deadline, "a writer did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
        s.reload().unwrap();
        assert_eq!(s.freshness(), Freshness::Current);
    }
}

#[test]
fn a_store_from_before_migration_4_gets_its_digest_on_first_open() {
    let Some(pg) = Pg::start("store_pg_faults::migration") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, "keyward", dir.path());
    {
        let v = open_store(&cfg).unwrap();
        set(&*v, "platform", "K", "before-the-digest-0123456789").unwrap();
        v.apply(Change::AddAgent(agent("alice"))).unwrap();
    }
    // Back to what schema version 3 was.
    pg.sql(
        "ALTER TABLE keyward.meta DROP COLUMN row_digest, DROP COLUMN digest_mac; \
         DELETE FROM keyward.schema_version WHERE version >= 4",
    );
    let v = open_store(&cfg).unwrap();
    assert_eq!(
        value_of(&*v, "platform", "K").as_deref(),
        Some("before-the-digest-0123456789")
    );
    assert_eq!(
        pg.sql("SELECT row_digest IS NOT NULL AND digest_mac IS NOT NULL FROM keyward.meta"),
        "t"
    );
    // From now on a deletion shows.
    pg.sql("DELETE FROM keyward.agents WHERE id = 'alice'");
    let err = open_store(&cfg).expect_err("opened").to_string();
    assert!(err.contains("table digest mismatch"), "{err}");
}

/// A `keyward serve` child on the cluster with the admin API on `admin`.
struct Serve {
    child: std::process::Child,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    admin: SocketAddr,
    _upstream: common::EchoUpstream,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn replica(pg: &Pg, schema: &str) -> KwBuilder {
    let perms: Vec<&str> = keyward::admin::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    Kw::builder()
        .admin()
        .admin_token("all", ADMIN_TOKEN, &perms)
        .config_toml(&pg.store_toml(schema))
        .before_start(|dir| std::fs::write(dir.join("master.key"), format!("{MASTER}\n")).unwrap())
}

async fn serve_child(pg: &Pg, schema: &str) -> Serve {
    let pki = common::UpstreamPki::new();
    let upstream = common::EchoUpstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let config =
        replica(pg, schema)
            .listen(free_addr())
            .write_files(dir.path(), &pki, upstream.addr);
    // The builder's admin API listens on port 0; the child's must be known.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{admin}\""),
        1,
    );
    assert!(text.contains(&admin.to_string()), "{text}");
    std::fs::write(&config, text).unwrap();
    std::fs::write(dir.path().join("master.key"), format!("{MASTER}\n")).unwrap();
    let child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("KEYWARD_REPLICA_ID", "killed-replica")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(admin).is_err() {
        assert!(Instant::now() < deadline, "keyward serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve {
        child,
        dir,
        config,
        admin,
        _upstream: upstream,
    }
}

/// One admin API call; `None` when the connection fails (the server is gone).
async fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// SIGKILL, and wait for the exit.
fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

/// The number of backends of the cluster still in a transaction (other than
/// the one asking): a killed client's transaction is gone once this is zero.
fn open_transactions(pg: &Pg) -> usize {
    pg.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'keyward' \
         AND xact_start IS NOT NULL AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend' AND query NOT LIKE 'LISTEN%'",
    )
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_write_leaves_the_store_consistent_and_a_new_one_serves() {
    let Some(pg) = Pg::start("store_pg_faults::kill9") else {
        return;
    };
    let mut served = serve_child(&pg, "keyward").await;
    // The secret the new replica will inject, acknowledged before the loop.
    let put = |value: &str| Some(serde_json::json!({ "value": value }));
    let addr = served.admin;
    assert_eq!(
        admin_call(
            addr,
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            put("sk-before-the-kill-0123456789")
        )
        .await,
        Some(201)
    );

    // Writer loop: PUT after PUT; each 201 is an acknowledged write.
    const BEFORE_KILL: usize = 25;
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let path = format!("/v1/secrets/platform/LOOP_{n}");
                match admin_call(
                    addr,
                    "PUT",
                    &path,
                    put(&format!("loop-value-{n}-0123456789")),
                )
                .await
                {
                    Some(201) => {
                        n += 1;
                        acked.store(n, Ordering::SeqCst);
                    }
                    None => break,
                    Some(other) => panic!("PUT {path}: {other}"),
                }
            }
            n
        })
    };
    let deadline = Instant::now() + PATIENCE;
    while acked.load(Ordering::SeqCst) < BEFORE_KILL {
        assert!(Instant::now() < deadline, "the writer loop stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill_9(&mut served.child);
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while open_transactions(&pg) > 0 {
        assert!(
            Instant::now() < deadline,
            "the killed replica's transaction lingers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Every acknowledged write is there; at most the one in flight besides.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, "keyward", dir.path());
    let store = open_store(&cfg).expect("the digest verifies after the kill");
    for i in 0..acked {
        assert_eq!(
            value_of(&*store, "platform", &format!("LOOP_{i}")),
            Some(format!("loop-value-{i}-0123456789")),
            "acknowledged write {i} lost"
        );
    }
    let extra: Vec<String> = store
        .list(Some("platform"))
        .into_iter()
        .map(|m| m.name)
        .filter(|n| n.starts_with("LOOP_"))
        .filter(|n| n[5..].parse::<usize>().unwrap() >= acked)
        .collect();
    assert!(
        extra.is_empty() || extra == [format!("LOOP_{acked}")],
        "{extra:?}"
    );
    eprintln!("killed after {acked} acknowledged PUTs; in flight and applied: {extra:?}");

    // The audit chains verify, the killed replica's included.
    let out = Command::new(BIN)
        .args([
            "--config",
            served.config.to_str().unwrap(),
            "audit",
            "verify",
        ])
        .current_dir(served.dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("killed-replica"), "{text}");
    assert!(!text.contains("tampered"), "{text}");

    // A new replica starts, serves the acknowledged secret and takes writes.
    let kw = replica(&pg, "keyward").start().await;
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer sk-before-the-kill-0123456789"
    );
    let admin = kw.running.admin_addr.expect("admin API listening");
    assert_eq!(
        admin_call(
            admin,
            "PUT",
            "/v1/secrets/platform/AFTER",
            put("after-0123456789")
        )
        .await,
        Some(201)
    );
}

#[test]
fn a_secret_import_killed_mid_transaction_leaves_none_of_its_batch() {
    let Some(pg) = Pg::start("store_pg_faults::import_kill9") else {
        return;
    };
    let env = CliEnv::new();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&pg.store_toml("keyward"));
    std::fs::write(&env.config, text).unwrap();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    std::fs::write(env.path("certs/master.key"), format!("{MASTER}\n")).unwrap();
    env.ok(&["store", "init"], None);
    let acked = env.ok(
        &["secret", "import"],
        Some(b"{\"name\":\"FIRST\",\"value\":\"first-0123456789\"}\n"),
    );
    assert!(acked.contains('1'), "{acked}");

    // A batch big enough that its transaction is seen open.
    const BATCH: usize = 1000;
    let input: String = (0..BATCH)
        .map(|i| format!("{{\"name\":\"BATCH_{i}\",\"value\":\"batch-value-{i}-0123456789\"}}\n"))
        .collect();
    let mut child = env.cmd(&["secret", "import"]);
    let mut child = child
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    // Kill it inside its transaction (reading, sealing or writing the batch,
    // `meta` locked).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let writing: usize = pg
            .sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'keyward' \
                 AND xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                 AND (query LIKE '%keyward.records%FOR UPDATE%' \
                      OR query LIKE 'INSERT INTO keyward.records%')",
            )
            .parse()
            .unwrap();
        if writing > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import finished before its transaction was seen"
        );
        assert!(Instant::now() < deadline, "the import never wrote");
    }
    kill_9(&mut child);
    let deadline = Instant::now() + PATIENCE;
    while open_transactions(&pg) > 0 {
        assert!(
            Instant::now() < deadline,
            "the killed import's transaction lingers"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let n: usize = pg
        .sql("SELECT count(*) FROM keyward.records WHERE name LIKE 'BATCH_%'")
        .parse()
        .unwrap();
    assert_eq!(
        n, 0,
        "a half (or whole) batch of the killed import was committed"
    );
    // The store verifies and takes the same import again, whole.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, "keyward", dir.path());
    let store = open_store(&cfg).unwrap();
    assert_eq!(
        value_of(&*store, "platform", "FIRST").as_deref(),
        Some("first-0123456789")
    );
    let out = env.ok(&["secret", "import"], Some(input.as_bytes()));
    assert!(out.contains(&BATCH.to_string()), "{out}");
    let store = open_store(&cfg).unwrap();
    assert_eq!(store.list(Some("platform")).len(), BATCH + 1);
}

/// `GET /readyz` of an in-process replica: status and body.
async fn readyz(kw: &Kw) -> (u16, serde_json::Value) {
    let addr = kw.running.admin_addr.expect("admin API listening");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/readyz")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_replica_on_tampered_rows_keeps_its_snapshot_and_is_not_ready() {
    let Some(pg) = Pg::start("store_pg_faults::readyz") else {
        return;
    };
    let kw = replica(&pg, "keyward").start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-the-real-one-0123456789");
    kw.set_secret("platform", "OTHER", "other-0123456789");
    assert_eq!(readyz(&kw).await.0, 200);
    // A row deleted with SQL, announced as a change.
    pg.sql(
        "DELETE FROM keyward.records WHERE name = 'OTHER'; \
         UPDATE keyward.meta SET generation = generation + 1; \
         SELECT pg_notify('keyward_changes', 'keyward')",
    );
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let (status, body) = readyz(&kw).await;
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["store"]["state"], "refused", "{body}");
    assert!(
        body["checks"]["store"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{body}"
    );
    // Requests go on from the last good snapshot.
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer sk-the-real-one-0123456789"
    );
    assert!(kw
        .running
        .state
        .vault
        .snapshot()
        .get("platform", "OTHER")
        .unwrap()
        .is_some());
    // Admin writes are refused, nothing is written.
    let admin = kw.running.admin_addr.expect("admin API listening");
    let status = admin_call(
        admin,
        "PUT",
        "/v1/secrets/platform/NEW",
        Some(serde_json::json!({ "value": "new-0123456789" })),
    )
    .await;
    assert_eq!(status, Some(503));
    assert_eq!(
        pg.sql("SELECT count(*) FROM keyward.records WHERE name = 'NEW'"),
        "0"
    );
}
