//! `keyward agent …`.

use super::CliError;
use crate::config::Config;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Register an agent and print its token once.
    Add { id: String },
}

pub fn run(_cmd: AgentCmd, _cfg: &Config) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}
