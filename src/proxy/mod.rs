//! The proxy: accept, CONNECT, intercept or tunnel, and the per-request pipeline.

pub mod connect;
pub mod credentials;
pub mod error;
pub mod inject;
pub mod limits;
pub mod listener;
pub mod oauth;
pub mod pipeline;
pub mod sign;
pub mod state;
pub mod upstream;
pub mod websocket;
pub mod workers;

pub use crate::body::{empty, full, Body, BoxError};
