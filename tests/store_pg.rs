//! The PostgreSQL store (SPEC §10, issue 17) against a real throwaway cluster
//! (`common::pg`): replicas on one database see each other's changes within the
//! 1 s contract (removals and agent deletion included), concurrent writers lose
//! nothing, create-only holds under a race, the database holds no value in any
//! encoding, an edited row fails to open, import/export round-trips, and a bad
//! password or a database that is down is one clear line, exit 1, no password.

mod common;

use bytes::Bytes;
use common::cli::CliEnv;
use common::pg::Pg;
use common::store::{agent, config, set, value_of, MASTER};
use common::{assert_no_leak, Kw, KwBuilder};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyward::config::{Config, VaultConfig};
use keyward::secret::Secret;
use keyward::vault::{open_store, Change, MasterKey, SetOptions, Store, Vault, VaultError};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// SPEC §10: a change through any replica is in effect on all within this.
const PROPAGATION: Duration = Duration::from_secs(1);
const ADMIN_TOKEN: &str = "kwadm-all-0123456789abcdef";

fn replica(pg: &Pg, schema: &str) -> KwBuilder {
    replica_toml(&pg.store_toml(schema))
}

/// A replica whose `[store]` section is `toml` (the cluster's, plus extra keys).
fn replica_toml(toml: &str) -> KwBuilder {
    let perms: Vec<&str> = keyward::admin::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    Kw::builder()
        .admin_token("all", ADMIN_TOKEN, &perms)
        .config_toml(toml)
        .before_start(|dir| std::fs::write(dir.join("master.key"), format!("{MASTER}\n")).unwrap())
}

/// A cluster for one test, a temp dir and a store config on schema `keyward`.
fn pg_config(name: &str) -> Option<(Pg, tempfile::TempDir, Config)> {
    let pg = Pg::start(name)?;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pg, "keyward", dir.path());
    Some((pg, dir, cfg))
}

/// One admin API call with the all-permissions token.
async fn admin(kw: &Kw, method: &str, path: &str, body: Option<serde_json::Value>) -> u16 {
    admin_full(kw, method, path, body).await.0
}

/// One admin API call: status and `x-keyward-error`.
async fn admin_full(
    kw: &Kw,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, Option<String>) {
    let addr = kw.running.admin_addr.expect("admin API listening");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
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
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let code = resp
        .headers()
        .get("x-keyward-error")
        .map(|v| v.to_str().unwrap().to_string());
    let _ = resp.into_body().collect().await;
    (status, code)
}

/// Polls `check` until it holds or the 1 s contract deadline (from `since`) passes.
async fn within_contract<F, Fut>(since: Instant, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if check().await {
            return;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "{what}: not in effect within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_set_on_one_replica_is_injected_by_the_other_within_a_second_and_removal_too() {
    let Some(pg) = Pg::start("store_pg::propagation") else {
        return;
    };
    let a = replica(&pg, "keyward").admin().start().await;
    let b = replica(&pg, "keyward").start().await;
    let value = "sk-from-replica-a-0123456789";
    let start = Instant::now();
    let status = admin(
        &a,
        "PUT",
        "/v1/secrets/platform/OPENAI_API_KEY",
        Some(serde_json::json!({ "value": value })),
    )
    .await;
    assert_eq!(status, 201);
    let auth = format!("Bearer {value}");
    within_contract(start, "secret set on A, injected by B", || async {
        let got = b.client().get("api.openai.com", "/v1/models", &[]).await;
        got.status == 200 && b.upstream.last().headers["authorization"] == auth.as_str()
    })
    .await;

    let start = Instant::now();
    let status = admin(&a, "DELETE", "/v1/secrets/platform/OPENAI_API_KEY", None).await;
    assert_eq!(status, 204);
    within_contract(start, "secret removed on A, gone on B", || async {
        let got = b.client().get("api.openai.com", "/v1/models", &[]).await;
        got.error_code().as_deref() == Some("secret_not_found")
    })
    .await;
    // From then on B refuses, and its upstream sees nothing more.
    let seen = b.upstream.requests().len();
    let got = b.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.error_code().as_deref(), Some("secret_not_found"));
    assert_eq!(
        b.upstream.requests().len(),
        seen,
        "the upstream saw nothing more"
    );

    // An agent added on A works on B; removed on A, B refuses it within a second.
    a.add_agent("agent-2", "tok-agent-2", None);
    b.set_secret("platform", "OPENAI_API_KEY", "sk-set-on-b-0123456789");
    let start = Instant::now();
    within_contract(start, "agent added on A, accepted by B", || async {
        let got = b
            .client_as("agent-2", "tok-agent-2")
            .get("api.openai.com", "/v1/models", &[])
            .await;
        got.status == 200
    })
    .await;
    let start = Instant::now();
    assert!(a.remove_agent("agent-2"));
    within_contract(start, "agent removed on A, refused by B", || async {
        let c = b.client_as("agent-2", "tok-agent-2");
        matches!(c.open("api.openai.com").await, Err(got) if got.status == 407)
    })
    .await;
    // The value set on B is injected by A too (both directions).
    assert_eq!(
        value_of(&*a.running.state.vault, "platform", "OPENAI_API_KEY").as_deref(),
        Some("sk-set-on-b-0123456789")
    );
}

#[test]
fn concurrent_rotations_through_two_replicas_lose_no_update() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::concurrent_rotations") else {
        return;
    };
    let a = open_store(&cfg).unwrap();
    let b = open_store(&cfg).unwrap();
    set(&*a, "platform", "K", "initial-value-0").unwrap();
    const EACH: usize = 15;
    let barrier = Arc::new(Barrier::new(2));
    let run = |store: Arc<dyn Store>, tag: &'static str| {
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            barrier.wait();
            (0..EACH)
                .map(|i| set(&*store, "platform", "K", &format!("{tag}-value-{i}")).unwrap())
                .collect::<Vec<u32>>()
        })
    };
    let ta = run(a.clone(), "a");
    let tb = run(b.clone(), "b");
    let mut versions = ta.join().unwrap();
    versions.extend(tb.join().unwrap());
    versions.sort();
    let expected: Vec<u32> = (2..=(2 * EACH as u32 + 1)).collect();
    assert_eq!(versions, expected, "every rotation got its own version");
    // Both replicas converge on the last write (within the propagation contract).
    let since = Instant::now();
    for s in [&a, &b] {
        while s.snapshot().meta("platform", "K").unwrap().version != 2 * EACH as u32 + 1 {
            assert!(since.elapsed() < PROPAGATION, "replicas did not converge");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(
        pg.sql("SELECT version FROM keyward.records WHERE name = 'K'"),
        (2 * EACH + 1).to_string()
    );
}

#[test]
fn a_create_only_agent_under_a_race_has_exactly_one_winner() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::agent_race") else {
        return;
    };
    let stores: Vec<Arc<dyn Store>> = (0..4).map(|_| open_store(&cfg).unwrap()).collect();
    for round in 0..5 {
        let id = format!("racer-{round}");
        let barrier = Arc::new(Barrier::new(stores.len()));
        let handles: Vec<_> = stores
            .iter()
            .cloned()
            .map(|s| {
                let (barrier, id) = (barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.apply(Change::AddAgent(agent(&id))).map(|_| ())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(
                matches!(r, Err(VaultError::AgentExists(x)) if *x == id),
                "{r:?}"
            );
        }
    }
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.agents"), "5");
}

#[test]
fn replicas_starting_together_share_one_schema_and_one_data_key() {
    let Some(pg) = Pg::start("store_pg::start_together") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config(&pg, "fresh", dir.path()));
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, barrier) = (cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                open_store(&cfg).map_err(|e| e.to_string())
            })
        })
        .collect();
    let stores: Vec<Arc<dyn Store>> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(pg.sql("SELECT count(*) FROM fresh.meta"), "1");
    assert_eq!(
        pg.sql("SELECT max(version) FROM fresh.schema_version"),
        keyward::vault::postgres::schema::latest().to_string()
    );
    set(&*stores[0], "platform", "K", "written-by-the-first-0123").unwrap();
    for s in &stores[1..] {
        // A write reloads the writer; the others read it on their next load.
        set(&**s, "platform", "OTHER", "x-0123456789abc").unwrap();
        assert_eq!(
            value_of(&**s, "platform", "K").as_deref(),
            Some("written-by-the-first-0123")
        );
    }
}

#[test]
fn a_pg_dump_holds_no_value_in_any_encoding() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::dump_leak") else {
        return;
    };
    let store = open_store(&cfg).unwrap();
    let canary = common::canary();
    set(&*store, "platform", "OPENAI_API_KEY", &canary).unwrap();
    set(&*store, "agent:agent-1", "OPENAI_API_KEY", &canary).unwrap();
    store
        .apply(Change::RotateSecret {
            scope: "platform".into(),
            name: "OPENAI_API_KEY".into(),
            value: Secret::from_str(&format!("{canary}-v2")),
        })
        .unwrap();
    store.apply(Change::AddAgent(agent("dumped"))).unwrap();
    let dump = pg.dump();
    assert!(String::from_utf8_lossy(&dump).contains("OPENAI_API_KEY"));
    assert_no_leak("pg_dump", &dump, &canary);
    let master =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, MASTER).unwrap();
    assert_no_leak("pg_dump (master key)", &dump, &master);
    assert_no_leak("pg_dump (master key, base64)", &dump, MASTER);
}

#[test]
fn an_edited_row_fails_to_open_and_a_running_replica_keeps_its_last_good_snapshot() {
    let Some(pg) = Pg::start("store_pg::tamper") else {
        return;
    };
    let edits = [
        // The ciphertext edited (one base64 character of the body flipped).
        "UPDATE keyward.records SET sealed = overlay(sealed placing \
         (CASE WHEN substr(sealed, 30, 1) = 'A' THEN 'B' ELSE 'A' END) from 30 for 1) \
         WHERE scope = 'platform'",
        // A value moved to another scope.
        "UPDATE keyward.records SET scope = 'agent:mallory' WHERE scope = 'agent:bob'",
        // Hosts widened.
        "UPDATE keyward.records SET hosts = ARRAY['evil.example.test'] WHERE scope = 'platform'",
        // An agent row inserted with SQL.
        "INSERT INTO keyward.agents (id, record, mac, generation) VALUES ('mallory', \
         '{\"id\":\"mallory\",\"token_sha256\":\"aaaa\",\"chain\":null,\"owner\":null,\"builder\":null,\"secrets\":null,\"created\":\"x\"}', \
         '00', 99)",
    ];
    // Each edit on a schema of its own (refused contents stay refused: the table
    // digest keeps any difference, so there is no putting rows back by hand).
    for (n, edit) in edits.into_iter().enumerate() {
        let schema = format!("edit{n}");
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&pg, &schema, dir.path());
        let running = open_store(&cfg).unwrap();
        set(&*running, "platform", "K", "the-real-value-0123456789").unwrap();
        set(&*running, "agent:bob", "K", "bob-value-0123456789").unwrap();
        let edit = edit.replace("keyward.", &format!("{schema}."));
        let edit = edit.as_str();
        pg.sql(edit);
        pg.sql(&format!(
            "UPDATE {schema}.meta SET generation = generation + 1"
        ));
        let err = open_store(&cfg)
            .err()
            .unwrap_or_else(|| panic!("opened after: {edit}"));
        let msg = err.to_string();
        assert!(msg.contains("fails authentication"), "{edit}: {msg}");
        assert!(!msg.contains(&pg.password));
        // The running replica refuses the new generation and keeps serving.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running.reload().is_ok() {
            assert!(
                Instant::now() < deadline,
                "the edit was not noticed: {edit}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            value_of(&*running, "platform", "K").as_deref(),
            Some("the-real-value-0123456789")
        );
        assert!(running
            .snapshot()
            .agents()
            .iter()
            .all(|a| a.id != "mallory"));
        // Writes refuse to launder the edited row.
        let rotate = Change::RotateSecret {
            scope: "platform".into(),
            name: "K".into(),
            value: Secret::from_str("a-new-value-0123456789"),
        };
        if edit.contains("'platform'") {
            assert!(running.apply(rotate).is_err(), "{edit}");
        }
    }
}

fn cli_with_store(pg: &Pg, url: &str) -> CliEnv {
    let env = CliEnv::new();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\ntls = \"disable\"\n"
    ));
    let _ = pg;
    std::fs::write(&env.config, text).unwrap();
    shared_master(&env);
    env
}

/// The test's one master key as the CLI's key file.
fn shared_master(env: &CliEnv) {
    std::fs::create_dir_all(env.path("certs")).unwrap();
    std::fs::write(env.path("certs/master.key"), format!("{MASTER}\n")).unwrap();
}

#[test]
fn import_and_export_round_trip_through_the_cli() {
    let Some(pg) = Pg::start("store_pg::import_export") else {
        return;
    };
    // A file vault made with the CLI.
    let file = CliEnv::new();
    file.ok(
        &["secret", "set", "OPENAI_API_KEY"],
        Some(b"sk-file-value-0123456789"),
    );
    file.ok(
        &[
            "secret",
            "set",
            "GITHUB_TOKEN",
            "--scope",
            "agent:agent-1",
            "--rotate-every",
            "30d",
        ],
        Some(b"ghp-file-value-0123456789"),
    );
    file.ok(&["agent", "add", "agent-7"], None);
    let store = cli_with_store(&pg, &pg.url());
    std::fs::create_dir_all(store.path("certs")).unwrap();
    std::fs::copy(
        file.path("certs/master.key"),
        store.path("certs/master.key"),
    )
    .unwrap();
    let out = store.ok(&["store", "init"], None);
    let latest = keyward::vault::postgres::schema::latest();
    assert!(out.contains(&format!("schema version {latest}")), "{out}");
    assert!(!out.contains(&pg.password), "{out}");
    let vault = file.path("data/vault.kw");
    let out = store.ok(
        &["store", "import", "--vault", vault.to_str().unwrap()],
        None,
    );
    assert!(out.contains("imported 2 secrets and 1 agents"), "{out}");
    // A second import into a non-empty store is refused, nothing changes.
    let err = store.user_error(
        &["store", "import", "--vault", vault.to_str().unwrap()],
        None,
    );
    assert!(err.contains("empty store"), "{err}");
    let list = store.ok(&["secret", "list", "--json"], None);
    assert!(
        list.contains("OPENAI_API_KEY") && list.contains("GITHUB_TOKEN"),
        "{list}"
    );
    // The CLI writes through the store too.
    store.ok(
        &["secret", "rotate", "OPENAI_API_KEY"],
        Some(b"sk-rotated-in-pg-0123456789"),
    );

    let out_path = store.path("exported.kw");
    let out = store.ok(
        &["store", "export", "--vault", out_path.to_str().unwrap()],
        None,
    );
    assert!(out.contains("exported 2 secrets and 1 agents"), "{out}");
    let err = store.user_error(
        &["store", "export", "--vault", out_path.to_str().unwrap()],
        None,
    );
    assert!(err.contains("already exists"), "{err}");
    let exported = Vault::open_with(
        &VaultConfig {
            path: out_path.clone(),
            master_key_file: store.path("certs/master.key"),
        },
        MasterKey::load_file(&store.path("certs/master.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        value_of(&exported, "platform", "OPENAI_API_KEY").as_deref(),
        Some("sk-rotated-in-pg-0123456789")
    );
    assert_eq!(
        exported
            .snapshot()
            .meta("platform", "OPENAI_API_KEY")
            .unwrap()
            .version,
        2
    );
    let gh = exported
        .snapshot()
        .meta("agent:agent-1", "GITHUB_TOKEN")
        .unwrap();
    assert_eq!(gh.version, 1);
    assert_eq!(gh.rotate_every.as_deref(), Some("30d"));
    assert_eq!(
        value_of(&exported, "agent:agent-1", "GITHUB_TOKEN").as_deref(),
        Some("ghp-file-value-0123456789")
    );
    assert_eq!(exported.snapshot().agents().len(), 1);
    assert_eq!(exported.snapshot().agents()[0].id, "agent-7");
}

#[test]
fn a_wrong_password_or_a_database_that_is_down_is_one_line_exit_1_without_the_password() {
    let Some(pg) = Pg::start("store_pg::bad_start") else {
        return;
    };
    let wrong = "wrong-password-4242";
    let bad_url = pg.url().replace(&pg.password, wrong);
    let env = cli_with_store(&pg, &bad_url);
    for args in [&["secret", "list"][..], &["store", "init"][..]] {
        let err = env.user_error(args, None);
        assert!(err.contains("password authentication failed"), "{err}");
        assert!(!err.contains(wrong), "{err}");
        assert!(err.contains("postgres://keyward:***@"), "{err}");
    }
    // `check` reports it and exits 1, without the password.
    let out = env.run(&["check"], None);
    assert_eq!(out.status.code(), Some(1));
    let all = env.everything(&[&out]);
    assert!(!String::from_utf8_lossy(&all).contains(wrong));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error: "));

    // The right password in the URL: `store init` and `check` never print it.
    let env = cli_with_store(&pg, &pg.url());
    // `check` on a schema nobody initialised reports it and creates nothing.
    let out = env.run(&["check"], None);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("run `keyward store init`"), "{text}");
    assert_eq!(
        pg.sql("SELECT coalesce(to_regclass('keyward.meta')::text, 'none')"),
        "none"
    );
    let init = env.run(&["store", "init"], None);
    let check = env.run(&["check"], None);
    assert!(init.status.success() && check.status.success());
    let all = env.everything(&[&init, &check]);
    assert_no_leak("store init + check output", &all, &pg.password);
    assert!(String::from_utf8_lossy(&check.stdout).contains("postgres://keyward:***@"));

    // The URL from $KEYWARD_DATABASE_URL when store.url is absent; neither: one line.
    let env = CliEnv::new();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("\n[store]\nbackend = \"postgres\"\ntls = \"disable\"\n");
    std::fs::write(&env.config, text).unwrap();
    shared_master(&env);
    let mut c = env.cmd(&["secret", "list"]);
    c.env("KEYWARD_DATABASE_URL", pg.url());
    let out = CliEnv::run_cmd(c, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = env.cmd(&["secret", "list"]);
    c.env_remove("KEYWARD_DATABASE_URL");
    let out = CliEnv::run_cmd(c, None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("needs store.url or $KEYWARD_DATABASE_URL"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // The password from password_file; the database stopped.
    let env = cli_with_store(&pg, &pg.url_no_password());
    let pwfile = env.path("db-password");
    std::fs::write(&pwfile, format!("{}\n", pg.password)).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace(
            "tls = \"disable\"\n",
            &format!(
                "tls = \"disable\"\npassword_file = \"{}\"\n",
                pwfile.display()
            ),
        ),
    )
    .unwrap();
    env.ok(&["store", "init"], None);
    let out = env.ok(&["check"], None);
    assert!(
        out.contains("ok: store postgres://keyward@127.0.0.1"),
        "{out}"
    );
    pg.stop_server();
    let err = env.user_error(&["secret", "list"], None);
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
    pg.start_server();
    env.ok(&["secret", "list"], None);

    // `serve` fails to start the same way (in-process start error).
    let url = format!("postgres://keyward:{wrong}@127.0.0.1:{}/keyward", pg.port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        Kw::builder()
            .config_toml(&format!(
                "\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\ntls = \"disable\"\n"
            ))
            .try_start()
            .await
            .err()
            .expect("start refused")
    });
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(wrong), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn undo_puts_the_sealed_row_back_and_never_overwrites_a_later_change() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::undo") else {
        return;
    };
    let a = open_store(&cfg).unwrap();
    let b = open_store(&cfg).unwrap();
    set(&*a, "platform", "K", "first-value-0123456789").unwrap();
    let sealed = pg.sql("SELECT sealed FROM keyward.records WHERE name = 'K'");
    // A rotation undone: the very row (same ciphertext) is back, version 1.
    let (_, undo) = a
        .apply(Change::RotateSecret {
            scope: "platform".into(),
            name: "K".into(),
            value: Secret::from_str("second-value-0123456789"),
        })
        .unwrap();
    a.undo(undo).unwrap();
    assert_eq!(
        pg.sql("SELECT sealed FROM keyward.records WHERE name = 'K'"),
        sealed
    );
    assert_eq!(
        value_of(&*a, "platform", "K").as_deref(),
        Some("first-value-0123456789")
    );
    assert_eq!(a.snapshot().meta("platform", "K").unwrap().version, 1);
    // A removal undone; an agent addition undone.
    let (_, undo) = a
        .apply(Change::RemoveSecret {
            scope: "platform".into(),
            name: "K".into(),
        })
        .unwrap();
    a.undo(undo).unwrap();
    assert_eq!(
        value_of(&*a, "platform", "K").as_deref(),
        Some("first-value-0123456789")
    );
    let (_, undo) = a.apply(Change::AddAgent(agent("undone"))).unwrap();
    a.undo(undo).unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.agents"), "0");
    // Changed again through another replica in between: the undo is refused.
    let (_, undo) = a
        .apply(Change::RotateSecret {
            scope: "platform".into(),
            name: "K".into(),
            value: Secret::from_str("third-value-0123456789"),
        })
        .unwrap();
    set(&*b, "platform", "K", "from-b-value-0123456789").unwrap();
    let err = a.undo(undo).unwrap_err().to_string();
    assert!(err.contains("changed again since"), "{err}");
    assert_eq!(
        value_of(&*b, "platform", "K").as_deref(),
        Some("from-b-value-0123456789")
    );
}

#[test]
fn a_replica_serves_its_last_snapshot_while_the_database_is_down_and_catches_up_after() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::db_down") else {
        return;
    };
    let a = open_store(&cfg).unwrap();
    let b = open_store(&cfg).unwrap();
    set(&*a, "platform", "K", "before-the-outage-0123456789").unwrap();
    let since = Instant::now();
    while value_of(&*b, "platform", "K").is_none() {
        assert!(since.elapsed() < PROPAGATION, "not propagated");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop_server();
    // Reads go on from the last snapshot; a write fails and changes nothing.
    assert_eq!(
        value_of(&*b, "platform", "K").as_deref(),
        Some("before-the-outage-0123456789")
    );
    let err = set(&*a, "platform", "K", "during-the-outage-0123456789")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
    // The failure reaches the watcher through `reload` (logged, last snapshot kept).
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.reload().is_ok() {
        assert!(Instant::now() < deadline, "the outage was not reported");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.start_server();
    // Back: the pool and the LISTEN connection reconnect; a write on A reaches B.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match set(&*a, "platform", "K", "after-the-outage-0123456789") {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let since = Instant::now();
    while value_of(&*b, "platform", "K").as_deref() != Some("after-the-outage-0123456789") {
        assert!(
            since.elapsed() < PROPAGATION * 3,
            "B did not catch up after the outage"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.snapshot().meta("platform", "K").unwrap().version, 2);
    b.reload().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_while_the_database_is_down_is_503_and_never_applied_later() {
    let Some(pg) = Pg::start("store_pg::admin_outage") else {
        return;
    };
    let a = replica(&pg, "keyward").admin().start().await;
    let b = replica(&pg, "keyward").start().await;
    let old = "sk-before-outage-0123456789";
    assert_eq!(
        admin(
            &a,
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(serde_json::json!({ "value": old }))
        )
        .await,
        201
    );
    let auth = format!("Bearer {old}");
    within_contract(Instant::now(), "set on A, injected by B", || async {
        let got = b.client().get("api.openai.com", "/v1/models", &[]).await;
        got.status == 200 && b.upstream.last().headers["authorization"] == auth.as_str()
    })
    .await;
    let audit_before = a.audit_lines().len();
    pg.stop_server();
    let new = "sk-during-outage-0123456789";
    let (status, code) = admin_full(
        &a,
        "PUT",
        "/v1/secrets/platform/OPENAI_API_KEY",
        Some(serde_json::json!({ "value": new })),
    )
    .await;
    assert_eq!((status, code.as_deref()), (503, Some("vault_unavailable")));
    // B goes on injecting from its last snapshot.
    let got = b.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(b.upstream.last().headers["authorization"], auth.as_str());
    assert!(
        a.audit_lines()[audit_before..]
            .iter()
            .all(|l| l["event"] != "secret_set"),
        "nothing was audited as set"
    );
    pg.start_server();
    // Nothing is applied later: the value and version are the ones from before.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = pg_version(&pg);
        if let Some(v) = v {
            assert_eq!(v, "1");
            break;
        }
        assert!(Instant::now() < deadline, "database did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(RESYNC_WAIT).await;
    assert_eq!(
        value_of(&*b.running.state.vault, "platform", "OPENAI_API_KEY").as_deref(),
        Some(old)
    );
    let dump = pg.dump();
    assert_no_leak("pg_dump after the refused write", &dump, new);
}

/// Longer than one resync period of the store.
const RESYNC_WAIT: Duration = Duration::from_millis(1200);

fn pg_version(pg: &Pg) -> Option<String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pg.sql("SELECT version FROM keyward.records WHERE name = 'OPENAI_API_KEY'")
    }))
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_changes_and_sessions_minted_on_one_work_on_the_others() {
    let Some(pg) = Pg::start("store_pg::three_replicas") else {
        return;
    };
    let a = replica(&pg, "keyward").start().await;
    let b = replica(&pg, "keyward").start().await;
    let c = replica(&pg, "keyward").start().await;
    let value = "sk-set-on-c-0123456789";
    let start = Instant::now();
    c.set_secret("platform", "OPENAI_API_KEY", value);
    let auth = format!("Bearer {value}");
    for kw in [&a, &b] {
        within_contract(start, "set on C, injected by A and B", || async {
            let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
            got.status == 200 && kw.upstream.last().headers["authorization"] == auth.as_str()
        })
        .await;
    }
    // One session key across replicas (derived from the shared master key).
    let key = a.running.state.vault.session_key();
    assert_eq!(key.expose(), b.running.state.vault.session_key().expose());
    let now = keyward::clock::unix_now();
    let token = keyward::resolve::mint_session(&key, common::AGENT, "run-3r", now + 60);
    for kw in [&b, &c] {
        let mut client = kw.client();
        client.auth = Some((common::AGENT.into(), token.clone()));
        let got = client.get("api.openai.com", "/v1/models", &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let line = kw
            .audit_lines()
            .into_iter()
            .rev()
            .find(|l| l["event"] == "inject")
            .unwrap();
        assert_eq!(line["run_id"], "run-3r");
    }
}

#[test]
fn after_store_init_by_the_owner_a_replica_runs_as_a_role_without_create() {
    let Some(pg) = Pg::start("store_pg::restricted_role") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let owner = config(&pg, "keyward", dir.path());
    drop(open_store(&owner).unwrap());
    pg.sql("CREATE ROLE kwapp LOGIN PASSWORD 'kwapp-pass-0123'");
    pg.sql("REVOKE CREATE ON DATABASE keyward FROM PUBLIC");
    pg.sql("GRANT USAGE ON SCHEMA keyward TO kwapp");
    pg.sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA keyward TO kwapp");
    let mut app = owner.clone();
    app.store.url = Some(keyward::config::DbUrl::new(format!(
        "postgres://kwapp:kwapp-pass-0123@127.0.0.1:{}/keyward",
        pg.port
    )));
    let store = open_store(&app).unwrap();
    set(&*store, "platform", "K", "written-by-kwapp-0123456789").unwrap();
    assert_eq!(
        value_of(&*store, "platform", "K").as_deref(),
        Some("written-by-kwapp-0123456789")
    );
    // A fresh schema needs the owner: the error says so in one line.
    app.store.schema = "other".into();
    let err = open_store(&app).err().unwrap().to_string();
    assert!(err.contains("permission denied"), "{err}");
    assert!(!err.contains("kwapp-pass"), "{err}");
}

/// `GET /readyz`: status and body.
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

/// `[store] stale_after` of the staleness test: long enough that a request made
/// right after the outage is noticed is served well inside it.
const STALE_AFTER_SECS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_stale_after_without_the_database_credentials_fail_closed_until_it_is_back() {
    let Some(pg) = Pg::start("store_pg::stale_after") else {
        return;
    };
    let toml = format!(
        "{}stale_after = \"{STALE_AFTER_SECS}s\"\n",
        pg.store_toml("keyward")
    );
    let a = replica_toml(&toml).admin().start().await;
    let key = "sk-stale-window-0123456789";
    let put = Some(serde_json::json!({ "value": key }));
    assert_eq!(
        admin(&a, "PUT", "/v1/secrets/platform/OPENAI_API_KEY", put).await,
        201
    );
    let auth = format!("Bearer {key}");
    let got = a.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(a.upstream.last().headers["authorization"], auth.as_str());
    let (status, body) = readyz(&a).await;
    assert_eq!(
        (status, &body["store"]["state"]),
        (200, &"ok".into()),
        "{body}"
    );

    pg.stop_server();
    // Noticed by the next resync: still ready, still injecting from the snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&a).await;
        if body["store"]["state"] == "unreachable" {
            assert_eq!(status, 200, "{body}");
            assert!(body["store"]["age_secs"].as_u64().unwrap() < STALE_AFTER_SECS);
            break;
        }
        assert!(Instant::now() < deadline, "outage not reported: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = a.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "inside stale_after: {}", got.text());
    assert_eq!(a.upstream.last().headers["authorization"], auth.as_str());

    // Past stale_after: 503 store_stale, audited, the upstream sees nothing.
    let seen = a.upstream.requests().len();
    let deadline = Instant::now() + Duration::from_secs(STALE_AFTER_SECS * 4);
    let got = loop {
        let got = a.client().get("api.openai.com", "/v1/models", &[]).await;
        if got.status != 200 {
            break got;
        }
        assert!(Instant::now() < deadline, "never failed closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.headers["x-keyward-error"], "store_stale");
    assert_no_leak("store_stale response", &got.body, key);
    let line = a.last_audit();
    assert_eq!(line["event"], "deny", "{line}");
    assert_eq!(line["reason"], "store_stale", "{line}");
    assert_eq!(line["outcome"], "error", "{line}");
    let passed = a.upstream.requests().len();
    let got = a.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 503);
    assert_eq!(
        a.upstream.requests().len(),
        passed,
        "the upstream saw a stale request"
    );
    assert!(passed >= seen);
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["store"]["state"], "stale", "{body}");
    assert!(body["store"]["age_secs"].as_u64().unwrap() >= STALE_AFTER_SECS);
    assert_eq!(
        body["checks"]["store"],
        "store stale (unreachable past stale_after)"
    );

    // Back: the next resync succeeds and injection resumes.
    pg.start_server();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = a.client().get("api.openai.com", "/v1/models", &[]).await;
        if got.status == 200 {
            break;
        }
        assert_eq!(got.headers["x-keyward-error"], "store_stale");
        assert!(Instant::now() < deadline, "did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.upstream.last().headers["authorization"], auth.as_str());
    let (status, body) = readyz(&a).await;
    assert_eq!(
        (status, &body["store"]["state"]),
        (200, &"ok".into()),
        "{body}"
    );
}

fn set_change(name: &str, value: &str) -> Change {
    Change::SetSecret {
        scope: "platform".into(),
        name: name.into(),
        value: Secret::from_str(value),
        kind: None,
        options: SetOptions::default(),
    }
}

#[test]
fn a_batch_is_one_transaction_all_or_nothing_and_undone_as_one() {
    let Some((pg, _dir, cfg)) = pg_config("store_pg::batch") else {
        return;
    };
    let a = open_store(&cfg).unwrap();
    let b = open_store(&cfg).unwrap();
    let gen = || pg.sql("SELECT generation FROM keyward.meta");
    let before = gen();
    // The fourth change fails (create-only agent): nothing of the first three stays.
    let err = a
        .apply_batch(vec![
            set_change("A", "batch-value-a-0123456789"),
            set_change("B", "batch-value-b-0123456789"),
            Change::AddAgent(agent("batcher")),
            Change::AddAgent(agent("batcher")),
        ])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("change 4:"), "{err}");
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.records"), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.agents"), "0");
    assert_eq!(gen(), before, "a failed batch moved the generation");
    assert!(value_of(&*a, "platform", "A").is_none());

    // A good batch: every change, one generation, seen by the other replica whole.
    let applied = a
        .apply_batch(vec![
            set_change("A", "batch-value-a-0123456789"),
            set_change("B", "batch-value-b-0123456789"),
            set_change("A", "batch-value-a2-0123456789"),
            Change::AddAgent(agent("batcher")),
        ])
        .unwrap();
    assert_eq!(applied.len(), 4);
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.records"), "2");
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.agents"), "1");
    let after: u64 = gen().parse().unwrap();
    assert_eq!(after, before.parse::<u64>().unwrap() + 1, "one transaction");
    assert_eq!(a.snapshot().meta("platform", "A").unwrap().version, 2);
    let since = Instant::now();
    while value_of(&*b, "platform", "B").is_none() {
        assert!(since.elapsed() < PROPAGATION, "batch not propagated");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        value_of(&*b, "platform", "A").as_deref(),
        Some("batch-value-a2-0123456789")
    );

    // Undone as one (the audit of an import failed): back to empty, one generation.
    let undos = applied.into_iter().map(|(_, u)| u).collect();
    a.undo_all(undos).unwrap();
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.records"), "0");
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.agents"), "0");
    assert_eq!(gen().parse::<u64>().unwrap(), after + 1);
}

const OAUTH_TOKEN_HOST: &str = "pypi.example.test";

/// Token calls seen by every replica's token server (one per replica: each has
/// its own upstream PKI), answered slowly so that refreshes overlap.
struct TokenCalls(std::sync::atomic::AtomicUsize);

async fn token_server(pki: &common::UpstreamPki, calls: Arc<TokenCalls>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = (*pki.server_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, calls) = (acceptor.clone(), calls.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    let calls = calls.clone();
                    async move {
                        let n = calls.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let body = serde_json::json!({
                            "access_token": format!("at-shared-{n}-0123456789"),
                            "token_type": "Bearer",
                            "expires_in": 3600,
                        });
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

async fn oauth_replica(pg: &Pg, calls: Arc<TokenCalls>) -> Kw {
    let pki = common::UpstreamPki::new();
    let addr = token_server(&pki, calls).await;
    replica(pg, "keyward")
        .provider(common::Provider::bearer(
            "github",
            "api.github.com",
            "GH_OAUTH",
        ))
        .resolve(OAUTH_TOKEN_HOST, addr)
        .upstream_pki(pki)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_two_replicas_make_one_token_call_and_share_the_token() {
    let Some(pg) = Pg::start("store_pg::oauth_lock") else {
        return;
    };
    let calls = Arc::new(TokenCalls(std::sync::atomic::AtomicUsize::new(0)));
    let a = oauth_replica(&pg, calls.clone()).await;
    let b = oauth_replica(&pg, calls.clone()).await;
    let value = serde_json::json!({
        "client_id": "cid-1",
        "client_secret": "oauth-client-secret-0123456789",
        "token_url": format!("https://{OAUTH_TOKEN_HOST}/oauth/token"),
    });
    a.set_secret_of_kind(
        "platform",
        "GH_OAUTH",
        keyward::vault::SecretKind::Oauth2,
        &value.to_string(),
    );
    within_contract(Instant::now(), "oauth2 secret on B", || async {
        b.running
            .state
            .vault
            .snapshot()
            .meta("platform", "GH_OAUTH")
            .is_some()
    })
    .await;
    b.running.state.refresh_vault().unwrap();
    let mut reqs = Vec::new();
    for kw in [&a, &b, &a, &b, &a, &b] {
        reqs.push(async move { kw.client().get("api.github.com", "/user", &[]).await });
    }
    for got in futures_util::future::join_all(reqs).await {
        assert_eq!(got.status, 200, "{}", got.text());
    }
    assert_eq!(
        calls.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the token endpoint saw more than one refresh"
    );
    for kw in [&a, &b] {
        for seen in kw.upstream.requests() {
            assert_eq!(
                seen.headers["authorization"],
                "Bearer at-shared-1-0123456789"
            );
        }
    }
    // Stored sealed: the token is not in the database in any encoding.
    assert_eq!(pg.sql("SELECT count(*) FROM keyward.oauth_tokens"), "1");
    assert_no_leak(
        "pg_dump with a shared token",
        &pg.dump(),
        "at-shared-1-0123456789",
    );
}

#[test]
fn a_description_only_change_is_stored_in_postgres_with_the_same_value_and_version() {
    let Some((_pg, _dir, cfg)) = pg_config("store_pg::describe") else {
        return;
    };
    let a = open_store(&cfg).unwrap();
    assert_eq!(set(&*a, "platform", "K", "described-value-0").unwrap(), 1);
    let change = Change::DescribeSecret {
        scope: "platform".into(),
        name: "K".into(),
        description: Some("the K key".into()),
    };
    let meta = a.apply(change).unwrap().0.into_meta().unwrap();
    assert_eq!(
        (meta.version, meta.description.as_deref()),
        (1, Some("the K key"))
    );
    // A store opened afresh reads it from the database.
    let b = open_store(&cfg).unwrap();
    let got = b.snapshot().meta("platform", "K").unwrap();
    assert_eq!(
        (got.version, got.description.as_deref()),
        (1, Some("the K key"))
    );
    assert_eq!(
        value_of(&*b, "platform", "K").as_deref(),
        Some("described-value-0")
    );
}
