//! The proxy: accept, CONNECT, intercept or tunnel, and the per-request pipeline.

pub mod connect;
pub mod credentials;
pub mod error;
pub mod inject;
pub mod limits;
pub mod listener;
pub mod oauth;
pub mod pipeline;
pub mod redact;
pub mod sign;
pub mod state;
pub mod upstream;
pub mod websocket;
pub mod workers;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every response keyward produces uses.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
