//! The body type of every response keyward produces, and its two constructors. A leaf.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every response keyward produces uses.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}
