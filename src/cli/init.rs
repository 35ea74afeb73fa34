//! `keyward init`.

use super::CliError;
use std::path::Path;

pub fn run(_dir: Option<&Path>) -> Result<(), CliError> {
    Err(CliError::Internal("not implemented".into()))
}
