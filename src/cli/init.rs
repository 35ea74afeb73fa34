//! `keyward init [DIR]`: an example config, the CA and the master key. Never
//! overwrites: an existing file is kept and reported. `--config PATH` puts the
//! config there instead of `DIR/config/keyward.toml`.

use super::CliError;
use crate::config::VaultConfig;
use crate::tls::ca::CertAuthority;
use crate::vault::Vault;
use crate::vault::{ENV_MASTER_KEY, ENV_MASTER_PASSPHRASE};
use std::path::Path;

/// The commented example config shipped with keyward.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/keyward.example.toml");

pub fn run(dir: Option<&Path>, config: Option<&Path>) -> Result<(), CliError> {
    let root = dir.unwrap_or(Path::new("."));
    let io = |p: &Path, e: std::io::Error| CliError::User(format!("{}: {e}", p.display()));
    let config = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("config/keyward.toml"));
    if config.exists() {
        println!("kept    {}", config.display());
    } else {
        if let Some(parent) = config.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&config, EXAMPLE_CONFIG).map_err(|e| io(&config, e))?;
        println!("wrote   {}", config.display());
    }
    let (cert, key) = (root.join("certs/ca.pem"), root.join("certs/ca.key"));
    let existed = cert.exists();
    CertAuthority::load_or_create(&cert, &key, 1).map_err(|e| CliError::User(e.to_string()))?;
    println!(
        "{}{}",
        if existed { "kept    " } else { "wrote   " },
        cert.display()
    );
    let vault = VaultConfig {
        path: root.join("data/vault.kw"),
        master_key_file: root.join("certs/master.key"),
    };
    let existed = vault.master_key_file.exists();
    Vault::open(&vault).map_err(|e| CliError::User(e.to_string()))?;
    // With the key in the environment no key file is read or written.
    let from_env = [ENV_MASTER_KEY, ENV_MASTER_PASSPHRASE]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    match from_env {
        Some(var) => println!("using   ${var} as the master key (no key file)"),
        None => println!(
            "{}{}",
            if existed { "kept    " } else { "wrote   " },
            vault.master_key_file.display()
        ),
    }
    println!(
        "next: edit {} and run `keyward serve --config {}`",
        config.display(),
        config.display()
    );
    Ok(())
}
