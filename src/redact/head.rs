//! The response head: header values and trailers redacted whole, the HTTP/1
//! reason phrase, which statuses carry a body, and the request-side
//! `accept-encoding: identity` that makes decoding rare.

use super::matcher::Patterns;
use http::header::{HeaderName, HeaderValue, ACCEPT_ENCODING};
use http::{HeaderMap, StatusCode};

/// Asks the upstream for an unencoded response, so redaction rarely has to decode.
/// Call it on every request whose response will go through [`read_answer`].
///
/// [`read_answer`]: super::read_answer
pub fn prepare_request(headers: &mut HeaderMap) {
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
}

/// Redacts every header value in place (names are kept; a header whose *name*
/// carries a secret is dropped). Returns the number of redactions.
pub fn redact_headers(patterns: &Patterns, headers: &mut HeaderMap) -> usize {
    if patterns.is_empty() {
        return 0;
    }
    let mut count = 0;
    // SECURITY: a header name cannot hold "[REDACTED]", so an echoing name goes.
    let bad_names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| patterns.contains_secret(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in bad_names {
        headers.remove(&name);
        count += 1;
    }
    let mut invalid: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter_mut() {
        // SECURITY: any header value may echo the injected credential.
        if let Some(clean) = patterns.redact_all(value.as_bytes()) {
            count += 1;
            match HeaderValue::from_bytes(&clean) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    *value = v;
                }
                Err(_) => invalid.push(name.clone()),
            }
        }
    }
    for name in invalid {
        headers.remove(&name);
    }
    count
}

/// Redacts the response head: every header, and the HTTP/1 reason phrase.
/// Returns whether anything was redacted.
pub(super) fn redact_head(patterns: &Patterns, parts: &mut http::response::Parts) -> bool {
    let mut redacted = redact_headers(patterns, &mut parts.headers) > 0;
    // SECURITY: hyper relays the upstream's HTTP/1 reason phrase verbatim.
    if let Some(reason) = parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        if patterns.contains_secret(reason.as_bytes()) {
            parts.extensions.remove::<hyper::ext::ReasonPhrase>();
            redacted = true;
        }
    }
    redacted
}

/// 1xx, 204 and 304 carry no body (and a 304's content-length describes the
/// representation, not this message).
pub(super) fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::patterns;
    use super::*;

    #[test]
    fn headers_values_are_redacted_and_names_carrying_secrets_dropped() {
        let p = patterns(b"tok_1234567890abcdef");
        let mut h = HeaderMap::new();
        h.insert(
            "location",
            HeaderValue::from_static("https://x.test/cb?key=tok_1234567890abcdef&a=1"),
        );
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append(
            "set-cookie",
            HeaderValue::from_static("k=dG9rXzEyMzQ1Njc4OTBhYmNkZWY"),
        );
        h.insert("tok_1234567890abcdef", HeaderValue::from_static("x"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(redact_headers(&p, &mut h), 3);
        assert_eq!(h["location"], "https://x.test/cb?key=[REDACTED]&a=1");
        assert!(h["location"].is_sensitive());
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies[0], "a=1");
        assert!(cookies[1].to_str().unwrap().contains("[REDACTED]"));
        assert!(!h.contains_key("tok_1234567890abcdef"));
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn prepare_request_asks_for_identity() {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, zstd"));
        prepare_request(&mut h);
        assert_eq!(h[ACCEPT_ENCODING], "identity");
    }
}
