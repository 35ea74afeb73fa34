//! The console's CSS and JS, embedded in the binary (`cargo build` needs no node,
//! the page loads nothing from outside keyward).

use crate::body::{full, Body};
use http::{header, HeaderValue, Response};

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(text));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `GET /ui/assets/console.css`.
pub fn css() -> Response<Body> {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /ui/assets/console.js`.
pub fn js() -> Response<Body> {
    asset(JS, "text/javascript; charset=utf-8")
}
