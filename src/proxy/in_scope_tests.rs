//! An agent's redaction set updated from a vault diff (`ScopeCache` after a
//! change) equals the set resolved from scratch, for every sequence of changes:
//! an incremental update must never under-redact.

use super::redaction_set;
use crate::config::Config;
use crate::config::VaultConfig;
use crate::redact::ScopeCache;
use crate::resolve::Directory;
use crate::secret::Secret;
use crate::vault::{Change, MasterKey, SetOptions, Store, Vault};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const SCOPES: [&str; 6] = [
    "platform",
    "owner:acme",
    "builder:botco",
    "chain:triage",
    "agent:c",
    "agent:u",
];
const NAMES: [&str; 5] = ["N0", "N1", "N2", "N3", "N4"];
const AGENTS: [&str; 3] = ["u", "c", "d"];

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// `u`: no chain, no list (every name); `c`: a chain with a list and a pin;
/// `d`: the chain alone.
fn directory() -> Directory {
    let text = format!(
        r#"
[[chains]]
name = "triage"
owner = "acme"
builder = "botco"
secrets = ["N0", "N1", "N2", "N3"]

[[agents]]
id = "u"
token_sha256 = "{a}"

[[agents]]
id = "c"
token_sha256 = "{b}"
chain = "triage"
secrets = ["N0", "N1", "N2"]
use = {{ N1 = "builder" }}

[[agents]]
id = "d"
token_sha256 = "{c}"
chain = "triage"
"#,
        a = sha("ta"),
        b = sha("tb"),
        c = sha("tc"),
    );
    let cfg = Config::parse(&text, "scope-test.toml").unwrap();
    Directory::build(&cfg, &[], Some(Secret::new(vec![7u8; 32])))
}

#[derive(Debug, Clone)]
enum Op {
    /// Value index from a small pool, so names share values.
    Set(usize, usize, usize),
    Remove(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SCOPES.len(), 0..NAMES.len(), 0..8usize).prop_map(|(s, n, v)| Op::Set(s, n, v)),
        1 => (0..SCOPES.len(), 0..NAMES.len()).prop_map(|(s, n)| Op::Remove(s, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn incremental_set_equals_full_resolve(ops in proptest::collection::vec(op(), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VaultConfig {
            path: dir.path().join("vault.kw"),
            master_key_file: dir.path().join("master.key"),
        };
        let vault = Vault::open_with(
            &cfg,
            MasterKey::load_or_create_file(&cfg.master_key_file).unwrap(),
        )
        .unwrap();
        let directory = directory();
        let incremental = ScopeCache::new();
        for (step, op) in ops.into_iter().enumerate() {
            let change = match op {
                Op::Set(s, n, v) => Change::SetSecret {
                    scope: SCOPES[s].into(),
                    name: NAMES[n].into(),
                    value: Secret::from_str(&format!("value-{v}-0123456789")),
                    kind: None,
                    options: SetOptions::default(),
                },
                Op::Remove(s, n) => Change::RemoveSecret {
                    scope: SCOPES[s].into(),
                    name: NAMES[n].into(),
                },
            };
            // Removing an absent record is refused and changes nothing.
            let _ = vault.apply(change);
            let snap = vault.snapshot();
            for id in AGENTS {
                let p = directory.principal(id, None).unwrap();
                let inc = incremental
                    .get(&p, &snap, |only| redaction_set(&p, &snap, only))
                    .unwrap();
                let full = ScopeCache::new()
                    .get(&p, &snap, |only| {
                        assert!(only.is_none());
                        redaction_set(&p, &snap, only)
                    })
                    .unwrap();
                prop_assert_eq!(inc.fingerprint(), full.fingerprint(), "agent {} after step {}", id, step);
                prop_assert_eq!(inc.len(), full.len());
            }
        }
    }
}

/// A change outside an agent's names keeps its set (same `Arc`, nothing resolved).
#[test]
fn change_elsewhere_resolves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VaultConfig {
        path: dir.path().join("vault.kw"),
        master_key_file: dir.path().join("master.key"),
    };
    let vault = Vault::open_with(
        &cfg,
        MasterKey::load_or_create_file(&cfg.master_key_file).unwrap(),
    )
    .unwrap();
    let set = |scope: &str, name: &str, v: &str| {
        vault
            .apply(Change::SetSecret {
                scope: scope.into(),
                name: name.into(),
                value: Secret::from_str(v),
                kind: None,
                options: SetOptions::default(),
            })
            .unwrap();
    };
    set("platform", "N0", "value-zero-0123456789");
    set("platform", "N4", "value-four-0123456789");
    let directory = directory();
    let cache = ScopeCache::new();
    let p = directory.principal("c", None).unwrap();
    let snap = vault.snapshot();
    let first = cache
        .get(&p, &snap, |only| redaction_set(&p, &snap, only))
        .unwrap();
    assert_eq!(first.len(), 1);
    // N4 is outside c's list: nothing to resolve, the same set.
    set("platform", "N4", "value-four-rotated-0123");
    let snap = vault.snapshot();
    let mut asked = None;
    let second = cache
        .get(&p, &snap, |only| {
            asked = Some(only.cloned());
            redaction_set(&p, &snap, only)
        })
        .unwrap();
    assert_eq!(asked, Some(Some(["N4".to_string()].into_iter().collect())));
    assert_eq!(second.fingerprint(), first.fingerprint());
    // A rotation of N0: only N0 is resolved again, and the new value is in.
    set("platform", "N0", "value-zero-rotated-0123");
    let snap = vault.snapshot();
    let third = cache
        .get(&p, &snap, |only| {
            assert_eq!(only.map(|s| s.len()), Some(1));
            redaction_set(&p, &snap, only)
        })
        .unwrap();
    assert_ne!(third.fingerprint(), first.fingerprint());
    assert_eq!(third.len(), 1);
}
