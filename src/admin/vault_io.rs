//! Admin's view of the vault: writes run off the async executor, their errors
//! become refusals, and each write is made visible to the running proxy at once.

use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use crate::vault::VaultError;

impl From<VaultError> for Deny {
    fn from(e: VaultError) -> Deny {
        match e {
            // Vault messages name scopes, names and limits, never values.
            VaultError::Invalid(m) => Deny::new(Code::BadRequest, m),
            e @ VaultError::NotFound { .. } => Deny::new(Code::NotFound, e.to_string()),
            e @ VaultError::AgentExists(_) => Deny::new(Code::Conflict, e.to_string()),
            e => {
                tracing::error!(error = %e, "vault write failed");
                Deny::new(
                    Code::VaultUnavailable,
                    "the vault could not be written (see keyward's log)",
                )
            }
        }
    }
}

/// Runs a blocking vault call off the async executor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Deny> + Send + 'static,
) -> Result<T, Deny> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Deny::new(Code::Internal, "internal error (see keyward's log)"))?
}

/// Makes a vault write visible to the proxy at once (agent table, generation).
pub fn refresh(state: &State) {
    if let Err(e) = state.refresh_vault() {
        tracing::warn!(error = %e, "vault refresh after an admin write failed");
    }
}
