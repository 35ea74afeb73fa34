//! The admin API (SPEC §9): HTTP/1 JSON on its own listener, bearer tokens with
//! permissions from `[admin].tokens` (re-read on every request, so config reloads
//! apply at once).
//!
//! - `routes`: the one table, [`ROUTES`], that drives routing and authorization,
//!   and the dispatch; `tests/admin_api.rs` checks it against `docs/admin-api.yaml`.
//! - `auth`: permissions, bearer tokens, the audited 401/403.
//! - `caller`: who is calling, and the audit lines written on their behalf.
//! - one file per resource — `secrets`, `agents`, `sessions`, `audit` (query),
//!   `status` (healthz/readyz/metrics) — each with its logic as plain functions
//!   (validate, apply, audit) beside thin `http_*` adapters.
//! - `json` (body limit, responses), `vault_io` (vault writes and their errors),
//!   `listener` (the admin accept loop).
//!
//! Every refusal is a [`Deny`](crate::proxy::error::Deny) with a `Code` from
//! [`ERROR_CODES`], rendered as `{"error":{"type":"keyward.<code>",…}}` with
//! `x-keyward-error`; 401/403 go through the proxy's one refusal path
//! (`proxy::refuse`), so they are audited.
//!
//! Secret values come in (PUT) and never go out: they are wrapped in
//! [`Secret`](crate::secret::Secret) as soon as the body is parsed, and no
//! response, log line or audit line carries one.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod caller;
pub mod console;
pub mod json;
pub mod listener;
pub mod routes;
pub mod secrets;
pub mod sessions;
pub mod status;
pub mod vault_io;

pub use audit::{DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT};
pub use auth::Permission;
pub use json::MAX_BODY_BYTES;
pub use listener::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_HEADER_BYTES};
pub use routes::{handle, Op, Route, ROUTES};
pub use sessions::{DEFAULT_SESSION_TTL_SECS, MAX_RUN_ID_LEN};
pub use status::METRICS_CONTENT_TYPE;

use crate::proxy::error::Code;
use crate::proxy::state::State;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Every `x-keyward-error` the admin API can answer with (each is documented in
/// `docs/errors.md`; a unit test checks the admin sources use no other).
pub const ERROR_CODES: &[Code] = &[
    Code::Unauthorized,
    Code::Forbidden,
    Code::NotFound,
    Code::MethodNotAllowed,
    Code::Conflict,
    Code::AuditNotQueryable,
    Code::BadRequest,
    Code::PayloadTooLarge,
    Code::AuditUnavailable,
    Code::VaultUnavailable,
    Code::Internal,
    Code::CsrfInvalid,
];

/// Binds `listen` and serves the admin API until `stop` flips; returns the bound address.
pub async fn start(
    state: Arc<State>,
    listen: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if state.runtime().config.admin.tokens.is_empty() {
        tracing::warn!(%addr, "admin API has no [admin].tokens: only /healthz, /readyz and /metrics will answer");
    }
    tokio::spawn(listener::run_admin_accept_loop(listener, state, stop));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::ERROR_CODES;
    use crate::proxy::error::Code;

    /// Every `.rs` file under `src/admin/` (outside its tests): name and text.
    fn admin_sources() -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/admin"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
                    out.push((path.display().to_string(), code));
                }
            }
        }
        assert!(out.len() > 5, "admin sources not found: {out:?}");
        out
    }

    /// Every `Code::X` (and shared constructor) an admin file names is in
    /// `ERROR_CODES`, so `ERROR_CODES` is what the admin API can emit.
    #[test]
    fn error_codes_lists_every_code_the_admin_sources_use() {
        for (file, text) in admin_sources() {
            let mut used: Vec<Code> = Vec::new();
            for (at, _) in text.match_indices("Code::") {
                // `StatusCode::CREATED` is not a `Code`.
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let name: String = text[at + "Code::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                let code = Code::ALL
                    .into_iter()
                    .find(|c| format!("{c:?}") == name)
                    .unwrap_or_else(|| panic!("{file}: Code::{name} is not a Code"));
                used.push(code);
            }
            if text.contains("Deny::payload_too_large(") {
                used.push(Code::PayloadTooLarge);
            }
            for c in used {
                assert!(
                    ERROR_CODES.contains(&c),
                    "{file} emits {} but admin::ERROR_CODES lacks it",
                    c.as_str()
                );
            }
        }
    }

    /// Every admin code has its row (code and status) in docs/errors.md.
    #[test]
    fn every_admin_error_code_is_documented() {
        let doc = include_str!("../../docs/errors.md");
        for c in ERROR_CODES {
            let row = format!("| `{}` | {} |", c.as_str(), c.status().as_u16());
            assert!(doc.contains(&row), "docs/errors.md lacks {row}");
        }
    }
}
