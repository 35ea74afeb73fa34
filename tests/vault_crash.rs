//! `kill -9` at any point of a write leaves either the old or the new vault.
//!
//! The parent test re-runs this test binary as a child that writes in a tight loop
//! (`crash_child_writer`, ignored unless `KW_CRASH_DIR` is set), kills it with SIGKILL
//! after a random delay, and checks that the vault still opens, that every record
//! opens, and that the file version only moves forward.

mod common;

use common::vault::{remove, rotate, set, set_with};
use keyward::config::VaultConfig;
use keyward::secret::Secret;
use keyward::vault::{MasterKey, SetOptions, Store, Vault};
use rand::Rng;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const ROUNDS: usize = 30;
const NAMES: usize = 12;

fn cfg(dir: &Path) -> VaultConfig {
    VaultConfig {
        path: dir.join("vault.kw"),
        master_key_file: dir.join("master.key"),
    }
}

fn open(c: &VaultConfig) -> Vault {
    let key = MasterKey::load_or_create_file(&c.master_key_file).unwrap();
    match Vault::open_with(c, key) {
        Ok(v) => v,
        Err(e) => panic!("vault does not open after kill -9: {e}"),
    }
}

/// The child: writes until killed.
#[test]
#[ignore = "child process of kill_9_during_writes_leaves_old_or_new_vault"]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os("KW_CRASH_DIR") else {
        return;
    };
    let c = cfg(Path::new(&dir));
    let v = open(&c);
    let mut rng = rand::thread_rng();
    for i in 0u64.. {
        let n = rng.gen_range(0..NAMES);
        let name = format!("K{n}");
        let value = Secret::from_str(&format!(
            "v-{name}-{i}-{}",
            "x".repeat(rng.gen_range(1..400))
        ));
        match i % 5 {
            0 if v.snapshot().get("platform", &name).unwrap().is_some() => {
                rotate(&v, "platform", &name, value).unwrap();
            }
            1 => {
                let _ = remove(&v, "platform", &name);
            }
            _ => {
                set_with(&v, "platform", &name, value, None, SetOptions::default()).unwrap();
            }
        }
    }
}

#[test]
fn kill_9_during_writes_leaves_old_or_new_vault() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    set(&open(&c), "platform", "K0", "v-K0-seed").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut last_generation = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KW_CRASH_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let v = open(&c);
        let snap = v.snapshot();
        assert!(
            snap.generation() >= last_generation,
            "round {round}: the version went backwards"
        );
        last_generation = snap.generation();
        for m in v.list(None) {
            let got = snap.get(&m.scope, &m.name).unwrap().unwrap();
            let text = String::from_utf8(got.value.expose().to_vec()).unwrap();
            assert!(
                text.starts_with(&format!("v-{}-", m.name)),
                "round {round}: {} holds another value",
                m.name
            );
        }
    }
    eprintln!("{ROUNDS} kills, file version {last_generation}");
    assert!(
        last_generation > 1,
        "the child never managed to write; the test proved nothing"
    );
    // A writer after all that still works, and cleans up nothing it should keep.
    set(&open(&c), "platform", "AFTER", "v-AFTER-1").unwrap();
}
