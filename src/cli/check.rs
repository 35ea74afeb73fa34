//! `keyward check`: validate config, vault and CA without starting anything.
//! Creates nothing: a missing CA or vault is reported as "will be created".

use super::CliError;
use crate::config::Config;
use crate::policy::Policy;
use crate::tls::ca::CertAuthority;
use crate::vault::{Store, Vault};
use std::path::Path;

pub fn run(path: Option<&Path>) -> Result<u8, CliError> {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            println!("error: {e}");
            return Ok(1);
        }
    };
    let mut errors = 0;
    println!("ok: config {}", cfg.source_name());
    let policy = Policy::from_config(&cfg);
    println!("ok: {} providers", policy.providers().len());

    if cfg.tls.ca_cert.exists() || cfg.tls.ca_key.exists() {
        match CertAuthority::load(&cfg.tls.ca_cert, &cfg.tls.ca_key, 1) {
            Ok(_) => println!("ok: CA {}", cfg.tls.ca_cert.display()),
            Err(e) => {
                println!("error: {e}");
                errors += 1;
            }
        }
    } else {
        println!(
            "note: no CA yet at {}; `keyward serve` creates it",
            cfg.tls.ca_cert.display()
        );
    }
    if cfg.tls.upstream_roots != "system" {
        if let Err(e) = crate::tls::upstream_roots(&cfg.tls.upstream_roots) {
            println!("error: tls.upstream_roots: {e}");
            errors += 1;
        }
    }

    if cfg.store.backend == crate::config::Backend::Postgres {
        let failed = check_postgres(&cfg, &policy) > 0;
        return Ok(if errors > 0 || failed { 1 } else { 0 });
    }
    let has_key = std::env::var_os("KEYWARD_MASTER_KEY").is_some()
        || std::env::var_os("KEYWARD_MASTER_PASSPHRASE").is_some()
        // An unreadable key file is there: opening the vault says why it fails.
        || cfg.vault.master_key_file.try_exists().unwrap_or(true);
    if cfg.vault.path.exists() && has_key {
        match Vault::open(&cfg.vault) {
            Ok(v) => {
                let records = v.list(None);
                println!(
                    "ok: vault {} ({} secrets)",
                    cfg.vault.path.display(),
                    records.len()
                );
                warn_unset(&cfg, &policy, &records);
            }
            Err(e) => {
                println!("error: {e}");
                errors += 1;
            }
        }
    } else if cfg.vault.path.exists() {
        println!(
            "error: {}: vault exists but no master key is available",
            cfg.vault.path.display()
        );
        errors += 1;
    } else {
        println!(
            "note: no vault yet at {}; the first `keyward secret set` creates it",
            cfg.vault.path.display()
        );
    }
    Ok(if errors > 0 { 1 } else { 0 })
}

/// `[store] backend = "postgres"`: connects to an initialised schema (nothing is
/// created or migrated) and counts; 1 on error. Messages show the URL with its password as `***`.
fn check_postgres(cfg: &Config, policy: &Policy) -> u8 {
    // Creates nothing: a schema that is not initialised is reported, not created.
    match crate::vault::open::open_existing_store(cfg) {
        Ok(store) => {
            let records = store.list(None);
            println!(
                "ok: store {} ({} secrets, {} agents)",
                crate::vault::postgres::label(&cfg.store),
                records.len(),
                store.snapshot().agents().len()
            );
            warn_unset(cfg, policy, &records);
            0
        }
        Err(e) => {
            println!("error: {e}");
            1
        }
    }
}

/// Warns about each provider secret a chain uses that has no value in any scope.
fn warn_unset(cfg: &Config, policy: &Policy, records: &[crate::vault::RecordMeta]) {
    for p in policy.providers() {
        let referenced = cfg
            .chains
            .iter()
            .any(|c| c.secrets.iter().flatten().any(|s| *s == p.secret));
        if referenced && !records.iter().any(|r| r.name == p.secret) {
            println!(
                "warning: {} is used by a chain but has no value in any scope",
                p.secret
            );
        }
    }
}
