//! keyward: an injecting HTTPS forward proxy for AI-agent sandboxes.
//!
//! Arrows point down: `proxy` and `admin` use `policy`, `resolve`, `vault`, `audit`
//! and `tls`; none of those knows about `proxy`. See `STYLE.md` in the shared folder
//! and `README.md` for the tour.

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ids;
pub mod metrics;
pub mod netaddr;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod resolve;
pub mod secret;
pub mod tls;
pub mod vault;

pub use proxy::state::State;
