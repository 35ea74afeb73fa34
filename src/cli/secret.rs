//! `keyward secret …` and `keyward vault …`.

use super::CliError;
use crate::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Store a secret; the value is read from stdin.
    Set { name: String },
}

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Re-wrap the data key under a new master key.
    RotateMasterKey,
}

pub fn run(_cmd: SecretCmd, _cfg: &Config) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}

pub fn run_vault(_cmd: VaultCmd, _cfg: &Config) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}
