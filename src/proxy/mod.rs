//! The proxy: accept, CONNECT, intercept or tunnel, and the per-request pipeline.

pub mod connect;
pub mod error;
pub mod inject;
pub mod intercept;
pub mod jail_report;
pub mod limits;
pub mod listener;
pub mod pipeline;
pub mod refuse;
pub mod relay;
pub mod request;
pub mod runtime;
pub mod state;
pub mod transparent;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod websocket;
pub mod workers;

pub use crate::body::{empty, full, Body, BoxError};
