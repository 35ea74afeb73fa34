//! keyward: an injecting HTTPS forward proxy for AI-agent sandboxes.
//!
//! The map is `docs/architecture.md`. Arrows point down: `app` builds `State` and
//! starts `proxy`, `admin` and the watchers; `proxy` and `admin` use `policy`,
//! `resolve`, `vault`, `audit`, `redact` and `tls`; those use only the leaves
//! (`config`, `secret`, `netaddr`, `metrics`, `clock`, `ids`, `body`). `proxy` never
//! imports `admin` or `cli`; nothing below imports its users. One request reads top
//! to bottom in `proxy/pipeline.rs`.

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ids;
#[cfg(target_os = "linux")]
pub mod jail;
pub mod metrics;
pub mod netaddr;
pub mod policy;
pub mod proxy;
pub mod redact;
pub mod resolve;
pub mod secret;
pub mod sniff;
pub mod tls;
pub mod vault;

pub use proxy::state::State;
