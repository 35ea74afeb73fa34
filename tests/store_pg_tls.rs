//! `[store] tls` against a real PostgreSQL speaking TLS (`common::pg`, `ssl = on`
//! with a certificate from a test CA): `require` connects over TLS (the server's
//! `pg_stat_ssl` says so for keyward's own session); `verify-full` with the CA
//! that signed the server's certificate works, with another CA fails with one
//! line and exit 1; `disable` against a server that accepts only TLS, and
//! `require` against one without TLS, fail the same way. No message carries the
//! password.

mod common;

use common::cli::CliEnv;
use common::pg::{Pg, Tls};
use keyward::config::Config;

const MASTER: &str = "a2V5d2FyZC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXM=";
const SCHEMA: &str = "kwtls";

/// The CLI with `[store]` on the cluster with `tls` (and `ca`).
fn cli_on(pg: &Pg, tls: &str, ca: Option<&std::path::Path>) -> CliEnv {
    let env = CliEnv::new();
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&pg.store_toml_tls(SCHEMA, tls, ca));
    std::fs::write(&env.config, text).unwrap();
    std::fs::create_dir_all(env.path("certs")).unwrap();
    std::fs::write(env.path("certs/master.key"), format!("{MASTER}\n")).unwrap();
    env
}

/// A CA nobody used to sign the server's certificate.
fn other_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

/// `(ssl, version)` of a session opened by keyward's own connector, from the
/// server's `pg_stat_ssl`.
fn session_ssl(env: &CliEnv) -> (bool, Option<String>) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let cfg = Config::parse(&text, "<test>").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = keyward::vault::postgres::connect::Target::from_config(&cfg.store)
            .unwrap()
            .pool()
            .unwrap();
        let c = pool.get().await.unwrap();
        let row = c
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    })
}

fn no_password(pg: &Pg, what: &str, text: &str) {
    assert!(!text.contains(&pg.password), "{what}: {text}");
}

#[test]
fn require_connects_over_tls_and_the_cli_works_through_it() {
    let Some(pg) = Pg::start_with("require_connects_over_tls", Tls::Required) else {
        return;
    };
    let env = cli_on(&pg, "require", None);
    let out = env.ok(&["store", "init"], None);
    no_password(&pg, "store init", &out);
    let (ssl, version) = session_ssl(&env);
    assert!(ssl, "keyward's session is not TLS");
    assert!(
        version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
        "{version:?}"
    );
    // A write and its audit line (the CLI writer's own chain) go over TLS too.
    env.ok(&["secret", "set", "API_KEY"], Some(b"tls-value-0123456789"));
    let verify = env.ok(&["audit", "verify"], None);
    assert!(verify.contains("ok: replica cli-"), "{verify}");
    assert!(env.ok(&["secret", "list"], None).contains("API_KEY"));
}

#[test]
fn verify_full_accepts_the_right_ca_and_refuses_another_in_one_line() {
    let Some(pg) = Pg::start_with("verify_full_checks_the_ca", Tls::On) else {
        return;
    };
    let good = cli_on(&pg, "verify-full", Some(&pg.ca_pem()));
    good.ok(&["store", "init"], None);
    let (ssl, _) = session_ssl(&good);
    assert!(ssl, "verify-full made a session without TLS");
    good.ok(&["secret", "set", "API_KEY"], Some(b"tls-value-0123456789"));

    let dir = tempfile::tempdir().unwrap();
    let bad = cli_on(&pg, "verify-full", Some(&other_ca(dir.path())));
    for args in [&["store", "init"][..], &["secret", "list"][..]] {
        let err = bad.user_error(args, None);
        assert!(err.contains("certificate"), "{args:?}: {err}");
        assert!(err.contains("postgres://keyward:***@"), "{args:?}: {err}");
        no_password(&pg, "wrong CA", &err);
    }
    // Without `ca` the public roots are used: the test CA is not one of them.
    let roots = cli_on(&pg, "verify-full", None);
    let err = roots.user_error(&["secret", "list"], None);
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn disable_against_a_tls_only_server_and_require_against_a_plain_one_fail_clearly() {
    let Some(tls_only) = Pg::start_with("disable_against_tls_only", Tls::Required) else {
        return;
    };
    let env = cli_on(&tls_only, "disable", None);
    let err = env.user_error(&["store", "init"], None);
    assert!(err.contains("no encryption"), "{err}");
    assert!(
        err.contains("store.tls"),
        "the message says what to change: {err}"
    );
    no_password(&tls_only, "disable", &err);
    drop(tls_only);

    let Some(plain) = Pg::start("require_against_plain") else {
        return;
    };
    let env = cli_on(&plain, "require", None);
    let err = env.user_error(&["store", "init"], None);
    assert!(err.contains("does not support TLS"), "{err}");
    no_password(&plain, "require", &err);
}
