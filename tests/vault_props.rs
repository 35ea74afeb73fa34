//! Property tests: whatever valid name, scope, value and host list goes in comes
//! back out, through the sealing layer and through the file.

use keyward::config::VaultConfig;
use keyward::secret::Secret;
use keyward::vault::crypto::{self, Key, Sealed};
use keyward::vault::{Change, MasterKey, SetOptions, Store, Vault};
use proptest::prelude::*;

fn scope() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("platform".to_string()),
        ("(agent|chain|owner|builder)", "[A-Za-z0-9._-]{1,40}")
            .prop_map(|(k, n)| format!("{k}:{n}")),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,40}"
}

/// Any bytes but CR, LF and NUL (which the vault refuses), 1..2000 long.
fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no CR/LF/NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
        1..2000,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sealing_round_trips_and_binds_every_aad_field(
        scope in scope(), name in name(), value in proptest::collection::vec(any::<u8>(), 0..3000),
        version in 1u32.., hosts in proptest::collection::vec("[a-z0-9]{1,10}\\.[a-z]{2,5}", 0..4),
    ) {
        let key = Key::random();
        let aad = crypto::record_aad("id1", &scope, &name, version, &hosts);
        let sealed = crypto::seal(&key, 0u64.to_be_bytes(), &aad, &value).unwrap();
        let back = Sealed::decode(&sealed.encode()).unwrap();
        let opened = crypto::open(&key, &back, &aad).unwrap();
        prop_assert_eq!(opened.as_slice(), value.as_slice());
        let other_name = format!("{name}X");
        let other_version = version.wrapping_add(1);
        let mut more_hosts = hosts.clone();
        more_hosts.push("evil.example".into());
        for wrong in [
            crypto::record_aad("id2", &scope, &name, version, &hosts),
            crypto::record_aad("id1", &format!("{scope}x"), &name, version, &hosts),
            crypto::record_aad("id1", &scope, &other_name, version, &hosts),
            crypto::record_aad("id1", &scope, &name, other_version, &hosts),
            crypto::record_aad("id1", &scope, &name, version, &more_hosts),
        ] {
            prop_assert!(crypto::open(&key, &back, &wrong).is_none());
        }
    }
}

proptest! {
    // Each case writes files and fsyncs: fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn vault_round_trips_arbitrary_records_through_the_file(
        records in proptest::collection::vec((scope(), name(), value()), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = VaultConfig { path: dir.path().join("vault.kw"), master_key_file: dir.path().join("master.key") };
        let key = || MasterKey::load_or_create_file(&cfg.master_key_file).unwrap();
        let v = Vault::open_with(&cfg, key()).unwrap();
        let mut want = std::collections::BTreeMap::new();
        for (scope, name, value) in &records {
            let secret = Secret::new(value.clone());
            let change = Change::SetSecret {
                scope: scope.clone(),
                name: name.clone(),
                value: secret.clone(),
                kind: None,
                options: SetOptions::default(),
            };
            let meta = v.apply(change).unwrap().0.into_meta().unwrap();
            prop_assert_eq!(&meta.hint, &secret.hint());
            want.insert((scope.clone(), name.clone()), value.clone());
        }
        let reopened = Vault::open_with(&cfg, key()).unwrap();
        let snap = reopened.snapshot();
        prop_assert_eq!(snap.len(), want.len());
        for ((scope, name), value) in &want {
            let got = snap.get(scope, name).unwrap().unwrap();
            prop_assert_eq!(got.value.expose(), value.as_slice());
        }
    }
}
