//! `TunnelCx`: one intercepted tunnel, with the identity and target fixed when it
//! was opened (by a CONNECT, or by the transparent path from SNI). Every request
//! on it runs `pipeline::handle` with this context.

use super::state::State;
use super::upstream::UpstreamClient;
use std::sync::Arc;

/// One intercepted tunnel: the identity and target fixed at CONNECT time.
pub struct TunnelCx {
    pub state: Arc<State>,
    pub agent_id: String,
    pub run_id: Option<String>,
    pub expires: Option<u64>,
    /// Canonical CONNECT host and port.
    pub host: String,
    pub port: u16,
    /// `host[:port]` toward the upstream (port omitted when 443), built once.
    pub authority: http::uri::Authority,
    /// The upstream pool of the worker this tunnel runs on.
    pub client: UpstreamClient,
}

/// `host[:port]` for the upstream URI (port omitted when 443; IPv6 in brackets).
pub fn upstream_authority(host: &str, port: u16) -> Option<http::uri::Authority> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let text = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    text.parse().ok()
}
