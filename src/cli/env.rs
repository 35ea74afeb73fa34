//! `keyward env`.

use super::CliError;
use crate::config::Config;

#[derive(clap::Args)]
pub struct EnvArgs {
    #[arg(long)]
    pub agent: String,
    #[arg(long)]
    pub token: String,
}

pub fn run(_args: EnvArgs, _cfg: &Config) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}
