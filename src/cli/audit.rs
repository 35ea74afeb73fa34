//! `keyward audit …`.

use super::CliError;
use crate::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; exit 1 and the first bad line on tamper.
    Verify,
}

pub fn run(_cmd: AuditCmd, _cfg: &Config) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}
