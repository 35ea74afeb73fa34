//! The vault as the proxy and CLI see it: open, write, read back, reopen, and the
//! ways a file on disk can be wrong (wrong key, corruption, truncation, rollback).

mod common;

use common::vault::{cfg, clone, open, remove, rotate, seeded, set, set_with};
use keyward::config::VaultConfig;
use keyward::secret::Secret;
use keyward::vault::{
    AgentRecord, Applied, Change, MasterKey, MasterSource, SetOptions, Store, Vault, VaultError,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// `SetSecret` of `value` with options.
fn set_opts(
    v: &dyn Store,
    scope: &str,
    name: &str,
    value: Secret,
    options: SetOptions,
) -> Result<keyward::vault::RecordMeta, VaultError> {
    set_with(v, scope, name, value, None, options)
}

/// Runs the vault watcher (the one `keyward serve` runs) over `reader`; dropping
/// the returned sender stops it.
fn watch(
    reader: &Arc<Vault>,
    every: Duration,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let r = reader.clone();
    let handle = tokio::spawn(keyward::vault::watch(every, rx, move || r.reload(), || {}));
    (stop, handle)
}

/// A value with a random marker, so a leak of it anywhere can be searched for.
fn canary() -> (String, Secret) {
    let marker: String = format!("{:016x}{:016x}", rand_u64(), rand_u64());
    let value = format!("sk-canary-{marker}-end");
    (marker, Secret::from_str(&value))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// The value and its marker appear in `haystack` in no leak form.
fn assert_no_leak(haystack: &[u8], value: &Secret, marker: &str, what: &str) {
    common::leaks::assert_no_leak(what, haystack, value.expose());
    common::leaks::assert_no_leak(what, haystack, marker);
}

#[test]
fn set_get_list_remove_round_trip() {
    let (_dir, c, v) = seeded(&[]);
    assert!(v.snapshot().is_empty());
    assert!(
        !c.path.exists(),
        "an empty vault is not written until the first change"
    );

    let opts = SetOptions {
        description: Some("prod key".into()),
        hosts: vec!["API.OpenAI.com.".into()],
        rotate_every: Some(Duration::from_secs(90 * 86_400)),
    };
    let meta = set_opts(
        &v,
        "platform",
        "OPENAI_API_KEY",
        Secret::from_str("sk-proj-abcdefgh9xQz"),
        opts,
    )
    .unwrap();
    assert_eq!(meta.version, 1);
    assert_eq!(meta.hint, "sk-p…9xQz");
    assert_eq!(meta.hosts, vec!["api.openai.com"]);
    assert_eq!(meta.rotate_every.as_deref(), Some("90d"));
    assert!(meta.rotation_due.is_some());
    set(&v, "owner:acme", "OPENAI_API_KEY", "sk-acme-0000000000").unwrap();

    let got = v
        .snapshot()
        .get("platform", "OPENAI_API_KEY")
        .unwrap()
        .unwrap();
    assert_eq!(got.value.expose(), b"sk-proj-abcdefgh9xQz");
    assert_eq!(got.version, 1);
    assert_eq!(got.hosts, vec!["api.openai.com"]);
    assert!(v.snapshot().get("platform", "MISSING").unwrap().is_none());
    assert_eq!(v.list(None).len(), 2);
    assert_eq!(v.list(Some("owner:acme")).len(), 1);

    // Reopen: the file persists it.
    drop(v);
    let v = open(&c).unwrap();
    assert_eq!(v.list(None).len(), 2);
    assert_eq!(
        v.snapshot()
            .get("owner:acme", "OPENAI_API_KEY")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"sk-acme-0000000000"
    );
    assert!(v.snapshot().generation() >= 2);

    remove(&v, "owner:acme", "OPENAI_API_KEY").unwrap();
    assert!(v
        .snapshot()
        .get("owner:acme", "OPENAI_API_KEY")
        .unwrap()
        .is_none());
    assert!(matches!(
        remove(&v, "owner:acme", "OPENAI_API_KEY"),
        Err(VaultError::NotFound { .. })
    ));
    assert_eq!(open(&c).unwrap().list(None).len(), 1);
}

#[test]
fn key_and_vault_files_are_private() {
    let (_dir, c, _) = seeded(&[("platform", "A", "value-1234567890")]);
    for p in [&c.master_key_file, &c.path] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn invalid_names_scopes_values_and_hosts_are_refused() {
    let (_dir, _, v) = seeded(&[]);
    let ok = || Secret::from_str("value-1234567890");
    for scope in [
        "",
        "Platform",
        "owner:",
        "owner",
        "team:x",
        "owner:a b",
        "owner:a:b",
        "owner:a/b",
    ] {
        assert!(
            matches!(
                set_opts(&v, scope, "A", ok(), SetOptions::default()),
                Err(VaultError::Invalid(_))
            ),
            "{scope}"
        );
    }
    for name in ["", "lower", "1ABC", "A-B", "A B"] {
        assert!(
            set_opts(&v, "platform", name, ok(), SetOptions::default()).is_err(),
            "{name}"
        );
    }
    for value in ["", "a\nb", "a\rb", "a\0b"] {
        let e = set_opts(
            &v,
            "platform",
            "A",
            Secret::from_str(value),
            SetOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, VaultError::Invalid(_)));
    }
    for host in ["a.com:443", "a.com/x", "*", "a.*.com", "-a.com", ""] {
        let opts = SetOptions {
            hosts: vec![host.into()],
            ..SetOptions::default()
        };
        assert!(set_opts(&v, "platform", "A", ok(), opts).is_err(), "{host}");
    }
    assert!(v.list(None).is_empty());
    for scope in [
        "platform",
        "owner:acme",
        "builder:botco",
        "chain:support-triage",
        "agent:triage-1",
        "agent:a.b_c",
    ] {
        set_opts(&v, scope, "A", ok(), SetOptions::default()).unwrap();
    }
}

#[test]
fn vault_file_never_contains_the_value() {
    let (_dir, c, v) = seeded(&[]);
    let (marker, value) = canary();
    set_opts(
        &v,
        "platform",
        "CANARY",
        value.clone(),
        SetOptions {
            description: Some("d".into()),
            ..Default::default()
        },
    )
    .unwrap();
    clone(&v, "CANARY", "platform", "owner:acme").unwrap();
    let bytes = std::fs::read(&c.path).unwrap();
    assert_no_leak(&bytes, &value, &marker, "vault file");
    let dbg = format!(
        "{:?} {:?}",
        v.snapshot().get("platform", "CANARY").unwrap(),
        v.list(None)
    );
    assert_no_leak(dbg.as_bytes(), &value, &marker, "Debug output");
    for entry in std::fs::read_dir(c.path.parent().unwrap()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert_no_leak(&bytes, &value, &marker, "files beside the vault");
    }
}

#[test]
fn rotate_bumps_the_version_and_drops_the_old_value() {
    let (_dir, c, v) = seeded(&[]);
    let (old_marker, old) = canary();
    set_opts(&v, "platform", "K", old.clone(), SetOptions::default()).unwrap();
    let m = rotate(
        &v,
        "platform",
        "K",
        Secret::from_str("new-value-1234567890"),
    )
    .unwrap();
    assert_eq!(m.version, 2);
    assert_eq!(m.hint, "new-…7890");
    let got = v.snapshot().get("platform", "K").unwrap().unwrap();
    assert_eq!(got.value.expose(), b"new-value-1234567890");
    assert_eq!(got.version, 2);
    assert!(matches!(
        rotate(&v, "platform", "NOPE", Secret::from_str("x")),
        Err(VaultError::NotFound { .. })
    ));
    // set on an existing name is a new version too, and keeps the metadata not given.
    let opts = SetOptions {
        description: Some("desc".into()),
        ..Default::default()
    };
    set_opts(
        &v,
        "platform",
        "K",
        Secret::from_str("third-value-123456"),
        opts,
    )
    .unwrap();
    let m = set(&v, "platform", "K", "fourth-value-12345").unwrap();
    assert_eq!((m.version, m.description.as_deref()), (4, Some("desc")));
    assert_no_leak(
        &std::fs::read(&c.path).unwrap(),
        &old,
        &old_marker,
        "rotated vault file",
    );
}

#[test]
fn clone_copies_into_another_scope_only_once() {
    let (_dir, _, v) = seeded(&[]);
    let opts = SetOptions {
        description: Some("shared".into()),
        hosts: vec!["api.example.com".into()],
        rotate_every: Some(Duration::from_secs(86_400 * 30)),
    };
    let src = set_opts(
        &v,
        "builder:botco",
        "K",
        Secret::from_str("cloned-value-123456"),
        opts,
    )
    .unwrap();
    let m = clone(&v, "K", "builder:botco", "chain:support-triage").unwrap();
    assert_eq!((m.scope.as_str(), m.version), ("chain:support-triage", 1));
    assert_eq!(m.description.as_deref(), Some("shared"));
    assert_eq!(
        m.rotation_due, src.rotation_due,
        "cloning does not reset the rotation clock"
    );
    let got = v
        .snapshot()
        .get("chain:support-triage", "K")
        .unwrap()
        .unwrap();
    assert_eq!(got.value.expose(), b"cloned-value-123456");
    assert_eq!(got.hosts, vec!["api.example.com"]);
    assert!(matches!(
        clone(&v, "K", "builder:botco", "chain:support-triage"),
        Err(VaultError::Exists { .. })
    ));
    assert!(matches!(
        clone(&v, "X", "builder:botco", "platform"),
        Err(VaultError::NotFound { .. })
    ));
}

#[test]
fn wrong_master_key_is_refused_and_the_file_is_untouched() {
    let (_dir, c, _) = seeded(&[("platform", "A", "value-1234567890")]);
    let before = std::fs::read(&c.path).unwrap();
    let err = Vault::open_with(&c, MasterKey::generate())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&c.path.display().to_string()), "{err}");
    assert!(err.contains("wrong master key"), "{err}");
    assert!(!err.contains('\n'));
    assert_eq!(std::fs::read(&c.path).unwrap(), before);
}

#[test]
fn corrupt_truncated_or_foreign_files_are_refused_untouched() {
    let (_dir, c, v) = seeded(&[
        ("platform", "A", "value-1234567890"),
        ("platform", "B", "value-abcdefghij"),
    ]);
    let good = std::fs::read(&c.path).unwrap();
    let text = String::from_utf8(good.clone()).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated by half", good[..good.len() / 2].to_vec()),
        ("truncated before the MAC", good[..good.len() - 70].to_vec()),
        ("last byte cut", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("foreign", b"hello world\n".to_vec()),
        (
            "future format",
            text.replacen("keyward-vault 3", "keyward-vault 9", 1)
                .into_bytes(),
        ),
        (
            "description edited",
            text.replacen("\"name\":\"B\"", "\"name\":\"C\"", 1)
                .into_bytes(),
        ),
        (
            "counter edited",
            text.replacen("\"counter\":2", "\"counter\":7", 1)
                .into_bytes(),
        ),
    ];
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    cases.push(("bit flip", flipped));
    // A record's entry deleted from the log (and the chain left as is).
    let start = text.find("\ne ").unwrap() + 1;
    let end = text[start..].find('\n').unwrap() + start + 1;
    cases.push((
        "record deleted",
        format!("{}{}", &text[..start], &text[end..]).into_bytes(),
    ));

    for (what, bytes) in cases {
        assert_ne!(bytes, good, "{what}: the case must differ");
        std::fs::write(&c.path, &bytes).unwrap();
        let err = open(&c).expect_err(what).to_string();
        assert!(
            err.starts_with(&c.path.display().to_string()),
            "{what}: {err}"
        );
        assert!(!err.contains('\n'), "{what}: {err}");
        // A write must refuse too, and leave the file as it is.
        assert!(set(&v, "platform", "Z", "zzzzzzzzzzzz").is_err(), "{what}");
        assert_eq!(
            std::fs::read(&c.path).unwrap(),
            bytes,
            "{what}: file changed"
        );
        // The running handle keeps its last good snapshot.
        assert!(v.reload().is_err(), "{what}");
        assert_eq!(
            v.snapshot()
                .get("platform", "B")
                .unwrap()
                .unwrap()
                .value
                .expose(),
            b"value-abcdefghij"
        );
    }
    std::fs::write(&c.path, &good).unwrap();
    assert_eq!(open(&c).unwrap().list(None).len(), 2);
}

#[test]
fn rollback_to_an_older_file_is_detected() {
    let (_dir, c, v) = seeded(&[("platform", "A", "old-value-1234567")]);
    let old = std::fs::read(&c.path).unwrap();
    rotate(&v, "platform", "A", Secret::from_str("new-value-1234567")).unwrap();
    std::fs::write(&c.path, &old).unwrap();
    let err = open(&c).unwrap_err().to_string();
    assert!(err.contains("rollback"), "{err}");
    // Even a process that cannot read the counter file remembers in memory.
    std::fs::remove_file(c.path.with_extension("kw.counter")).unwrap();
    assert!(v.reload().unwrap_err().to_string().contains("rollback"));
    assert_eq!(
        v.snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"new-value-1234567"
    );
}

#[test]
fn deleting_the_vault_file_does_not_reset_it_silently() {
    let (_dir, c, v) = seeded(&[("platform", "A", "value-1234567890")]);
    std::fs::remove_file(&c.path).unwrap();
    assert!(open(&c).unwrap_err().to_string().contains("missing"));
    assert!(v.reload().is_err());
    assert!(v.snapshot().get("platform", "A").unwrap().is_some());
    assert!(set(&v, "platform", "B", "value-1234567890").is_err());
    assert!(!c.path.exists());
}

#[test]
fn reload_picks_up_changes_by_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let reader = open(&c).unwrap();
    let writer = open(&c).unwrap();
    assert!(!reader.reload().unwrap());
    set(&writer, "platform", "A", "value-1234567890").unwrap();
    assert!(reader.reload().unwrap());
    assert!(!reader.reload().unwrap(), "unchanged file: no reload");
    assert_eq!(
        reader.snapshot().generation(),
        writer.snapshot().generation()
    );
    rotate(
        &writer,
        "platform",
        "A",
        Secret::from_str("value-rotated-123"),
    )
    .unwrap();
    assert!(reader.reload().unwrap());
    assert_eq!(
        reader
            .snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-rotated-123"
    );
}

/// Kubernetes mounts a Secret as `vault.kw -> ..data/vault.kw`, `..data -> ..2024_x`,
/// and updates it by swapping the `..data` symlink.
#[test]
fn kubernetes_style_symlink_swap_is_reloaded_and_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = cfg(&dir.path().join("src"));
    let w = open(&src).unwrap();
    set(&w, "platform", "A", "value-one-1234567").unwrap();
    let mount = dir.path().join("mount");
    std::fs::create_dir_all(mount.join("..v1")).unwrap();
    std::fs::copy(&src.path, mount.join("..v1/vault.kw")).unwrap();
    std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/vault.kw", mount.join("vault.kw")).unwrap();
    let replica_cfg = VaultConfig {
        path: mount.join("vault.kw"),
        master_key_file: src.master_key_file.clone(),
    };
    let replica = open(&replica_cfg).unwrap();
    assert_eq!(
        replica
            .snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-one-1234567"
    );

    rotate(&w, "platform", "A", Secret::from_str("value-two-1234567")).unwrap();
    std::fs::create_dir_all(mount.join("..v2")).unwrap();
    std::fs::copy(&src.path, mount.join("..v2/vault.kw")).unwrap();
    std::os::unix::fs::symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    assert!(replica.reload().unwrap());
    assert_eq!(
        replica
            .snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-two-1234567"
    );

    let err = set(&replica, "platform", "B", "value-1234567890").unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn agents_are_stored_and_replaced_by_id() {
    let (_dir, c, v) = seeded(&[]);
    let mut a = AgentRecord {
        id: "triage-1".into(),
        token_sha256: "a".repeat(64),
        chain: Some("support-triage".into()),
        owner: None,
        builder: None,
        secrets: Some(vec!["OPENAI_API_KEY".into()]),
        created: "2025-01-01T00:00:00Z".into(),
    };
    let remove_agent = |v: &Vault| {
        let change = Change::RemoveAgent {
            id: "triage-1".into(),
        };
        matches!(v.apply(change).unwrap().0, Applied::Agent(Some(_)))
    };
    v.apply(Change::AddAgent(a.clone())).unwrap();
    // Create-only: the same id again is refused; replacing is remove, then add.
    a.token_sha256 = "b".repeat(64);
    assert!(matches!(
        v.apply(Change::AddAgent(a.clone())),
        Err(VaultError::AgentExists(_))
    ));
    assert!(remove_agent(&v));
    v.apply(Change::AddAgent(a.clone())).unwrap();
    assert_eq!(v.snapshot().agents(), &[a.clone()]);
    assert_eq!(open(&c).unwrap().snapshot().agents(), &[a]);
    assert!(remove_agent(&v));
    assert!(!remove_agent(&v));
    let bad = AgentRecord {
        id: "x".into(),
        token_sha256: "raw-token".into(),
        chain: None,
        owner: None,
        builder: None,
        secrets: None,
        created: String::new(),
    };
    assert!(v.apply(Change::AddAgent(bad)).is_err());
}

#[test]
fn session_key_is_stable_per_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let a = open(&c).unwrap().session_key();
    let b = open(&c).unwrap().session_key();
    assert_eq!(a, b);
    assert_eq!(a.len(), 32);
    let other = tempfile::tempdir().unwrap();
    assert_ne!(open(&cfg(other.path())).unwrap().session_key(), a);
    assert_eq!(format!("{a:?}"), "Secret(***)");
}

#[test]
fn master_key_rotation_rewraps_without_rewriting_records() {
    let (dir, c, v) = seeded(&[
        ("platform", "A", "value-1234567890"),
        ("owner:acme", "B", "value-abcdefghij"),
    ]);
    let sealed = |p: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(p).unwrap();
        let mut blobs: Vec<String> = text
            .split("\"sealed\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect();
        blobs.sort();
        blobs
    };
    let before = sealed(&c.path);
    let old_id = v.master_key_id().unwrap();
    let new_file = dir.path().join("certs/master-2.key");
    let new_id = v
        .rotate_master_key(MasterKey::load_or_create_file(&new_file).unwrap())
        .unwrap();
    assert_ne!(old_id, new_id);
    assert_eq!(sealed(&c.path), before, "records are not re-encrypted");
    assert_eq!(
        v.snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-1234567890"
    );

    assert!(
        open(&c)
            .unwrap_err()
            .to_string()
            .contains("wrong master key"),
        "the old key no longer opens it"
    );
    let c2 = VaultConfig {
        master_key_file: new_file,
        ..c.clone()
    };
    let v2 = open(&c2).unwrap();
    assert_eq!(
        v2.snapshot()
            .get("owner:acme", "B")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-abcdefghij"
    );
    set(&v2, "platform", "C", "value-after-rotate").unwrap();
}

#[test]
fn master_key_from_passphrase_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let pass = |p: &str| {
        MasterKey::from_passphrase(p.as_bytes(), MasterSource::Given("test passphrase".into()))
            .unwrap()
    };
    let v = Vault::open_with(&c, pass("correct horse battery staple")).unwrap();
    set(&v, "platform", "A", "value-1234567890").unwrap();
    let text = std::fs::read_to_string(&c.path).unwrap();
    assert!(
        text.contains("argon2id") && text.contains("\"m_kib\":65536"),
        "salt and params in the header"
    );
    let v2 = Vault::open_with(&c, pass("correct horse battery staple")).unwrap();
    assert_eq!(
        v2.snapshot()
            .get("platform", "A")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-1234567890"
    );
    assert_eq!(v.session_key(), v2.session_key());
    let err = Vault::open_with(&c, pass("wrong")).unwrap_err().to_string();
    assert!(err.contains("wrong master key"), "{err}");
    let err = open(&c).unwrap_err().to_string();
    assert!(
        err.contains("KEYWARD_MASTER_PASSPHRASE"),
        "names the fix: {err}"
    );
}

#[test]
fn master_key_file_formats_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, [7u8; 32]).unwrap();
    assert!(MasterKey::load_file(&p).is_ok(), "32 raw bytes");
    std::fs::write(&p, "not a key\n").unwrap();
    let err = MasterKey::load_or_create_file(&p).unwrap_err().to_string();
    assert!(err.starts_with(&p.display().to_string()), "{err}");
    assert!(MasterKey::from_base64("AAAA", MasterSource::EnvKey)
        .unwrap_err()
        .to_string()
        .contains("KEYWARD_MASTER_KEY"));
}

#[test]
fn concurrent_writers_in_threads_never_lose_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(cfg(dir.path()));
    open(&c).unwrap();
    let shared = Arc::new(open(&c).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            let shared = shared.clone();
            std::thread::spawn(move || {
                // Half the threads use their own handle (file lock), half share one.
                let own = open(&c).unwrap();
                for i in 0..6 {
                    let v = if t % 2 == 0 { &own } else { &*shared };
                    set_opts(
                        v,
                        "platform",
                        &format!("T{t}_{i}"),
                        Secret::from_str(&format!("value-{t}-{i}-xxxx")),
                        SetOptions::default(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let v = open(&c).unwrap();
    assert_eq!(v.list(None).len(), 48);
    assert_eq!(v.snapshot().generation(), 48);
    assert_eq!(
        v.snapshot()
            .get("platform", "T3_5")
            .unwrap()
            .unwrap()
            .value
            .expose(),
        b"value-3-5-xxxx"
    );
}

#[test]
fn seal_key_epochs_rotate_before_the_nonce_limit() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let v = open(&c).unwrap().with_seal_limit(3);
    for i in 0..10 {
        set_opts(
            &v,
            "platform",
            &format!("K{i}"),
            Secret::from_str(&format!("value-{i}-abcdefgh")),
            SetOptions::default(),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(&c.path).unwrap();
    assert!(
        text.contains("\"epoch\":3"),
        "10 seals at 3 per key = epoch 3"
    );
    let v = open(&c).unwrap();
    for i in 0..10 {
        assert_eq!(
            v.snapshot()
                .get("platform", &format!("K{i}"))
                .unwrap()
                .unwrap()
                .value
                .expose(),
            format!("value-{i}-abcdefgh").as_bytes()
        );
    }
}

#[tokio::test]
async fn watcher_reloads_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let reader = Arc::new(open(&c).unwrap());
    let (stop, handle) = watch(&reader, Duration::from_millis(20));
    let writer = open(&c).unwrap();
    set(&writer, "platform", "A", "value-1234567890").unwrap();
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if reader.snapshot().get("platform", "A").unwrap().is_some() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the watcher picked up the change");
    drop(stop);
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("watcher stops when its stop channel closes")
        .unwrap();
}

#[test]
fn error_messages_never_contain_the_value() {
    let (_dir, c, v) = seeded(&[]);
    let (marker, value) = canary();
    set_opts(&v, "platform", "K", value.clone(), SetOptions::default()).unwrap();
    let mut errors = Vec::new();
    for bad in [
        format!("{marker}\n"),
        format!("x{marker}\r"),
        format!("{marker}\0"),
    ] {
        errors.push(
            set_opts(
                &v,
                "platform",
                "K",
                Secret::from_str(&bad),
                SetOptions::default(),
            )
            .unwrap_err()
            .to_string(),
        );
        errors.push(
            rotate(&v, "platform", "K", Secret::from_str(&bad))
                .unwrap_err()
                .to_string(),
        );
    }
    let long = format!("{marker}{}", "x".repeat(keyward::vault::MAX_VALUE_BYTES));
    errors.push(
        set_opts(
            &v,
            "platform",
            "K",
            Secret::from_str(&long),
            SetOptions::default(),
        )
        .unwrap_err()
        .to_string(),
    );
    errors.push(
        Vault::open_with(&c, MasterKey::generate())
            .unwrap_err()
            .to_string(),
    );
    let good = std::fs::read(&c.path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 3] ^= 0x20;
    std::fs::write(&c.path, &bad).unwrap();
    errors.push(open(&c).unwrap_err().to_string());
    errors.push(format!("{:?}", open(&c).unwrap_err()));
    for e in &errors {
        assert_no_leak(e.as_bytes(), &value, &marker, e);
    }
}

/// A writer the test can read back: the tracing output of the watcher.
#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn watcher_logs_a_failed_reload_once_without_the_value_and_keeps_serving() {
    let logs = LogBuf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let (marker, value) = canary();
    set_opts(
        &open(&c).unwrap(),
        "platform",
        "K",
        value.clone(),
        SetOptions::default(),
    )
    .unwrap();
    let reader = Arc::new(open(&c).unwrap());
    let (_stop, handle) = watch(&reader, Duration::from_millis(10));
    std::fs::write(&c.path, b"keyward-vault 1\n{ not json\nmac 00\n").unwrap();
    let mut text = String::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        if text.contains("vault reload failed") {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text_after = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("vault reload failed"), "{text}");
    assert!(
        text.contains(&c.path.display().to_string()),
        "names the file: {text}"
    );
    assert_eq!(
        text_after.matches("vault reload failed").count(),
        1,
        "logged once per distinct error"
    );
    assert_no_leak(text_after.as_bytes(), &value, &marker, "watcher log");
    let got = reader.snapshot().get("platform", "K").unwrap().unwrap();
    assert_eq!(got.value, value, "the last good snapshot keeps serving");
    handle.abort();
}

#[test]
fn a_writer_waits_for_the_lock_held_by_another() {
    let (_dir, c, _) = seeded(&[("platform", "A", "value-1234567890")]);
    let lock = std::fs::File::open(c.path.with_extension("kw.lock")).unwrap();
    fs4::fs_std::FileExt::lock_exclusive(&lock).unwrap();
    let c2 = c.clone();
    let writer = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        set(&open(&c2).unwrap(), "platform", "B", "value-1234567890").unwrap();
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!writer.is_finished(), "the writer must wait for the lock");
    drop(lock);
    assert!(writer.join().unwrap() >= Duration::from_millis(250));
    assert_eq!(open(&c).unwrap().list(None).len(), 2);
}

#[test]
fn undo_puts_back_the_record_as_it_was_and_never_clobbers_a_later_change() {
    let (_dir, c, v) = seeded(&[]);
    let get = |v: &Vault| {
        v.snapshot()
            .get("platform", "K")
            .unwrap()
            .map(|o| (o.value.expose().to_vec(), o.version))
    };
    // A new name: undo removes it.
    let set_undoable = |value: &str| {
        let change = Change::SetSecret {
            scope: "platform".into(),
            name: "K".into(),
            value: Secret::from_str(value),
            kind: None,
            options: SetOptions::default(),
        };
        let (applied, undo) = v.apply(change).unwrap();
        (applied.into_meta().unwrap(), undo)
    };
    let (_, undo) = set_undoable("one");
    assert!(!undo.replaced());
    v.undo(undo).unwrap();
    assert_eq!(get(&v), None);
    // A replaced value: undo restores the old value and version, and it still opens
    // after a reopen (same sealed record, same AAD).
    set(&v, "platform", "K", "one").unwrap();
    let (meta, undo) = set_undoable("two");
    assert!(undo.replaced());
    assert_eq!(meta.version, 2);
    v.undo(undo).unwrap();
    assert_eq!(get(&v), Some((b"one".to_vec(), 1)));
    assert_eq!(get(&open(&c).unwrap()), Some((b"one".to_vec(), 1)));
    // A removal: undo brings the record back.
    let rm = Change::RemoveSecret {
        scope: "platform".into(),
        name: "K".into(),
    };
    let (_, undo) = v.apply(rm).unwrap();
    v.undo(undo).unwrap();
    assert_eq!(get(&v), Some((b"one".to_vec(), 1)));
    // Changed again in between: the later change stays.
    let rot = Change::RotateSecret {
        scope: "platform".into(),
        name: "K".into(),
        value: Secret::from_str("two"),
    };
    let (_, undo) = v.apply(rot).unwrap();
    rotate(&v, "platform", "K", Secret::from_str("three")).unwrap();
    assert!(matches!(v.undo(undo), Err(VaultError::Invalid(_))));
    assert_eq!(get(&v), Some((b"three".to_vec(), 3)));
}
