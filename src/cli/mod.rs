//! Subcommands other than `serve`, one file per group. Each returns `CliError`,
//! which `main` maps to the exit codes of SPEC §2 (1 user error, 2 internal).
//! Every `run` returns the process exit code on success (0, or 1 where a command
//! reports a finding, e.g. `secret due` with overdue secrets).

pub mod agent;
pub mod audit;
pub mod check;
pub mod env;
pub mod import;
pub mod init;
pub mod run;
pub mod secret;
pub mod store;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something the user can fix: bad input, missing file, wrong key. Exit 1.
    #[error("{0}")]
    User(String),
    /// A bug or an environment failure. Exit 2.
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::User(_) => 1,
            CliError::Internal(_) => 2,
        }
    }
}
