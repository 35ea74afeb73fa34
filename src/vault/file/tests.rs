//! Unit tests of the file backend (formats 1 and 2 forged with the real data key).

use super::write::STALE_TEMP_AGE;
use super::*;
use crate::vault::change::SetOptions;
use crate::vault::format::{FileBody, FILE_FORMAT, FILE_FORMAT_V1, FILE_MAGIC, RECORD_ID_BYTES};
use crate::vault::kind::SecretKind;
use crate::vault::snapshot::RecordMeta;
use std::time::Duration;

/// `SetSecret` through the one entry point.
fn set_kind(
    v: &Vault,
    scope: &str,
    name: &str,
    value: Secret,
    kind: Option<SecretKind>,
    options: SetOptions,
) -> Result<RecordMeta, VaultError> {
    let change = Change::SetSecret {
        scope: scope.into(),
        name: name.into(),
        value,
        kind,
        options,
    };
    v.apply(change).and_then(|(a, _)| a.into_meta())
}

fn set(
    v: &Vault,
    scope: &str,
    name: &str,
    value: Secret,
    options: SetOptions,
) -> Result<RecordMeta, VaultError> {
    set_kind(v, scope, name, value, None, options)
}

fn setup() -> (tempfile::TempDir, VaultConfig, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VaultConfig {
        path: dir.path().join("vault.kw"),
        master_key_file: dir.path().join("master.key"),
    };
    let v = Vault::open_with(
        &cfg,
        MasterKey::load_or_create_file(&cfg.master_key_file).unwrap(),
    )
    .unwrap();
    let hosts = SetOptions {
        hosts: vec!["api.a.com".into()],
        ..SetOptions::default()
    };
    set(
        &v,
        "platform",
        "A",
        Secret::from_str("value-of-a-123456"),
        hosts,
    )
    .unwrap();
    set(
        &v,
        "platform",
        "B",
        Secret::from_str("value-of-b-123456"),
        SetOptions::default(),
    )
    .unwrap();
    set(
        &v,
        "owner:acme",
        "A",
        Secret::from_str("value-acme-123456"),
        SetOptions::default(),
    )
    .unwrap();
    (dir, cfg, v)
}

/// Edits the body and re-signs it with the real data key (what an attacker who
/// could forge the file MAC could do): only the per-record AAD stands in the way.
fn forge(v: &Vault, edit: impl FnOnce(&mut FileBody)) {
    let mut d = v.draft();
    edit(&mut d.body);
    d.body.counter += 1;
    let (bytes, _) = d.encode().unwrap();
    fs::write(&v.path, bytes).unwrap();
}

fn idx(body: &FileBody, scope: &str, name: &str) -> usize {
    body.records
        .iter()
        .position(|r| r.scope == scope && r.name == name)
        .unwrap()
}

#[test]
fn swapped_moved_or_edited_records_fail_to_open() {
    type Edit = Box<dyn Fn(&mut FileBody)>;
    let cases: Vec<(&str, &str, &str, Edit)> = vec![
        (
            "sealed values swapped between names",
            "platform",
            "A",
            Box::new(|b| {
                let (a, bb) = (idx(b, "platform", "A"), idx(b, "platform", "B"));
                let tmp = b.records[a].sealed.clone();
                b.records[a].sealed = b.records[bb].sealed.clone();
                b.records[bb].sealed = tmp;
            }),
        ),
        (
            "record moved to another scope",
            "platform",
            "A",
            Box::new(|b| {
                b.records
                    .retain(|r| !(r.scope == "platform" && r.name == "A"));
                let acme = idx(b, "owner:acme", "A");
                b.records[acme].scope = "platform".into();
            }),
        ),
        (
            "record renamed",
            "platform",
            "C",
            Box::new(|b| {
                let i = idx(b, "platform", "B");
                b.records[i].name = "C".into();
            }),
        ),
        (
            "host list edited",
            "platform",
            "A",
            Box::new(|b| {
                let i = idx(b, "platform", "A");
                b.records[i].hosts = vec!["evil.example".into()];
            }),
        ),
        (
            "host list removed",
            "platform",
            "A",
            Box::new(|b| {
                let i = idx(b, "platform", "A");
                b.records[i].hosts.clear();
            }),
        ),
        (
            "version edited",
            "platform",
            "B",
            Box::new(|b| {
                let i = idx(b, "platform", "B");
                b.records[i].version = 7;
            }),
        ),
        (
            "record id changed",
            "platform",
            "B",
            Box::new(|b| {
                let i = idx(b, "platform", "B");
                b.records[i].id = "00".repeat(RECORD_ID_BYTES);
            }),
        ),
    ];
    for (what, scope, name, edit) in cases {
        let (_dir, cfg, v) = setup();
        forge(&v, edit);
        let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
        let err = Vault::open_with(&cfg, key).expect_err(what).to_string();
        assert!(err.contains("fails authentication"), "{what}: {err}");
        // The on-demand path refuses it too (a snapshot built without the load check).
        let (bytes, _) = v.read_file().unwrap().unwrap();
        let master = v.master.read().clone();
        let (d, _) = format::decode(&bytes, &master, &v.path).unwrap();
        let snap = Snapshot::build(&d.body, &d.data_key, &v.path, false).unwrap();
        let err = snap.get(scope, name).expect_err(what).to_string();
        assert!(
            err.contains(&format!("record {scope}/{name} fails authentication")),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_forged_file_without_the_data_key_fails_the_mac() {
    let (_dir, cfg, v) = setup();
    let mut d = v.draft();
    d.body.records.retain(|r| r.name != "B");
    d.body.counter += 1;
    d.data_key = Arc::new(Key::random());
    let (forged, _) = d.encode().unwrap();
    fs::write(&cfg.path, forged).unwrap();
    let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
    let err = Vault::open_with(&cfg, key).unwrap_err().to_string();
    assert!(err.contains("integrity check failed"), "{err}");
}

#[test]
fn same_counter_with_different_content_is_refused() {
    let (_dir, _cfg, v) = setup();
    let mut d = v.draft();
    d.body.records.retain(|r| r.name != "B");
    let (forged, _) = d.encode().unwrap();
    fs::write(&v.path, forged).unwrap();
    let err = v.reload().unwrap_err().to_string();
    assert!(err.contains("forked or replaced"), "{err}");
}

#[test]
fn stale_temp_files_are_cleaned_under_the_lock() {
    let (dir, _cfg, v) = setup();
    let stale = dir.path().join(".vault.kw.abc123.tmp");
    let fresh = dir.path().join(".vault.kw.def456.tmp");
    let counter_tmp = dir.path().join(".vault.kw.counter.x.tmp");
    for p in [&stale, &fresh, &counter_tmp] {
        fs::write(p, b"partial").unwrap();
    }
    let old = std::time::SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(5);
    for p in [&stale, &counter_tmp] {
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    set(
        &v,
        "platform",
        "D",
        Secret::from_str("value-of-d-123456"),
        SetOptions::default(),
    )
    .unwrap();
    assert!(!stale.exists());
    assert!(
        fresh.exists(),
        "a young temp file may belong to a live writer"
    );
    assert!(
        counter_tmp.exists(),
        "counter temp files are written without the lock"
    );
}

fn oauth_value(url: &str) -> Secret {
    Secret::from_str(&format!(
        r#"{{"client_id":"cid","client_secret":"cs-123456789","token_url":"{url}"}}"#
    ))
}

#[test]
fn kind_and_public_fields_are_bound_to_the_value() {
    type Edit = Box<dyn Fn(&mut FileBody)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "kind downgraded to api_key",
            Box::new(|b| {
                let i = idx(b, "platform", "O");
                b.records[i].kind = SecretKind::ApiKey;
                b.records[i].public.clear();
            }),
        ),
        (
            "token_url pointed elsewhere",
            Box::new(|b| {
                let i = idx(b, "platform", "O");
                b.records[i]
                    .public
                    .insert("token_url".into(), "https://evil.example/t".into());
            }),
        ),
        (
            "api_key upgraded to hmac",
            Box::new(|b| {
                let i = idx(b, "platform", "B");
                b.records[i].kind = SecretKind::Hmac;
            }),
        ),
    ];
    for (what, edit) in cases {
        let (_dir, cfg, v) = setup();
        set_kind(
            &v,
            "platform",
            "O",
            oauth_value("https://auth.example/token"),
            Some(SecretKind::Oauth2),
            SetOptions::default(),
        )
        .unwrap();
        forge(&v, edit);
        let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
        let err = Vault::open_with(&cfg, key).expect_err(what).to_string();
        assert!(err.contains("fails authentication"), "{what}: {err}");
    }
}

#[test]
fn formats_1_and_2_are_read_and_replaced_by_format_3_on_the_first_write() {
    let (_dir, cfg, v) = setup();
    let head = |p: &Path| {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} 3"));
    // A format-1 file (what an older keyward wrote) opens and migrates on write.
    forge(&v, |_| {});
    assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} {FILE_FORMAT_V1}"));
    let text = fs::read_to_string(&cfg.path).unwrap();
    assert!(!text.contains("\"kind\""), "format-1 records carry no kind");
    let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
    let v = Vault::open_with(&cfg, key).unwrap();
    assert_eq!(v.snapshot().len(), 3);
    let meta = set_kind(
        &v,
        "platform",
        "O",
        oauth_value("https://auth.example/token"),
        Some(SecretKind::Oauth2),
        SetOptions::default(),
    )
    .unwrap();
    assert_eq!(meta.kind, SecretKind::Oauth2);
    assert_eq!(meta.fields["client_id"], "cid");
    assert!(!format!("{meta:?}").contains("cs-123456789"));
    assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} 3"));
    // A format-2 file (a record with a kind) opens too.
    forge(&v, |_| {});
    assert_eq!(head(&cfg.path), format!("{FILE_MAGIC} {FILE_FORMAT}"));
    // a fresh open reads both old (api_key) and new records
    let key = MasterKey::load_file(&cfg.master_key_file).unwrap();
    let again = Vault::open_with(&cfg, key).unwrap();
    let snap = again.snapshot();
    assert_eq!(
        snap.get("platform", "B").unwrap().unwrap().kind,
        SecretKind::ApiKey
    );
    let o = snap.get("platform", "O").unwrap().unwrap();
    assert_eq!(o.kind, SecretKind::Oauth2);
    // `set` without a kind keeps it; a bad value for the kind is refused
    set(
        &again,
        "platform",
        "O",
        oauth_value("https://auth.example/t2"),
        SetOptions::default(),
    )
    .unwrap();
    assert_eq!(
        again.snapshot().meta("platform", "O").unwrap().kind,
        SecretKind::Oauth2
    );
    assert!(set(
        &again,
        "platform",
        "O",
        Secret::from_str("plain"),
        SetOptions::default()
    )
    .is_err());
    let rotate = Change::RotateSecret {
        scope: "platform".into(),
        name: "O".into(),
        value: Secret::from_str("plain"),
    };
    assert!(again.apply(rotate).is_err());
}

#[test]
fn a_description_only_change_is_logged_keeps_the_value_and_can_be_undone() {
    let (_dir, cfg, v) = setup();
    let before = v.snapshot().meta("platform", "A").unwrap();
    let describe = |d: Option<&str>| Change::DescribeSecret {
        scope: "platform".into(),
        name: "A".into(),
        description: d.map(str::to_string),
    };
    let (applied, undo) = v.apply(describe(Some("the A key"))).unwrap();
    let meta = applied.into_meta().unwrap();
    assert_eq!(meta.description.as_deref(), Some("the A key"));
    assert_eq!(
        (meta.version, &meta.hint, &meta.last_rotated, &meta.hosts),
        (
            before.version,
            &before.hint,
            &before.last_rotated,
            &before.hosts
        )
    );
    // On disk, not only in memory: a fresh handle sees it, and the value opens.
    let reopened = Vault::open_with(
        &cfg,
        MasterKey::load_or_create_file(&cfg.master_key_file).unwrap(),
    )
    .unwrap();
    let snap = reopened.snapshot();
    let got = snap.meta("platform", "A").unwrap();
    assert_eq!(got.description.as_deref(), Some("the A key"));
    assert_eq!(got.version, before.version);
    let opened = snap.get("platform", "A").unwrap().unwrap();
    assert_eq!(opened.value.expose(), b"value-of-a-123456");
    drop(reopened);
    // Undone: the description goes back; a missing secret or a bad description is refused.
    v.undo(undo).unwrap();
    assert_eq!(
        v.snapshot().meta("platform", "A").unwrap().description,
        None
    );
    let missing = Change::DescribeSecret {
        scope: "platform".into(),
        name: "NOPE".into(),
        description: None,
    };
    assert!(v.apply(missing).is_err());
    assert!(v.apply(describe(Some("bell\u{7}"))).is_err());
    assert_eq!(
        v.snapshot().meta("platform", "A").unwrap().description,
        None
    );
}
