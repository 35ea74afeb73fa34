//! `keyward check`.

use super::CliError;
use std::path::Path;

pub fn run(_config: Option<&Path>) -> Result<u8, CliError> {
    Err(CliError::Internal("not implemented".into()))
}
