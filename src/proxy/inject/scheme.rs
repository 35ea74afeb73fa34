//! Strip every client-supplied credential, then write the real one in the
//! provider's scheme (SPEC §6.5). Header values built from a secret are marked
//! sensitive so hyper's HPACK and any `Debug` keep them out of tables and logs.

use crate::config::InjectConfig;
use crate::policy::Provider;
use crate::proxy::error::{Code, Deny};
use crate::secret::Secret;
use base64::Engine;
use http::header::HeaderValue;
use http::{HeaderMap, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

/// Bytes kept as-is in a query value; everything else is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Where a secret goes in a template.
pub const SECRET_SLOT: &str = "{secret}";
/// Placeholder syntax in request headers: `{{NAME}}`.
pub const PLACEHOLDER_OPEN: &str = "{{";
pub const PLACEHOLDER_CLOSE: &str = "}}";

/// Removes the client's credential headers (all case and duplicate variants:
/// `HeaderMap` names are case-insensitive and `remove` drops every value).
pub fn strip_credentials(headers: &mut HeaderMap, provider: &Provider) {
    for name in &provider.strip {
        // SECURITY: the sandbox's dummy key (or a key it found somewhere) must not
        // reach the provider next to, or instead of, the injected one.
        while headers.remove(name).is_some() {}
    }
}

fn fill(template: &str, secret: &Secret) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(template.len() + secret.len()));
    let mut rest = template.as_bytes();
    while let Some(pos) = find(rest, SECRET_SLOT.as_bytes()) {
        out.extend_from_slice(&rest[..pos]);
        out.extend_from_slice(secret.expose());
        rest = &rest[pos + SECRET_SLOT.len()..];
    }
    out.extend_from_slice(rest);
    out
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A sensitive header value; the error never echoes the bytes.
pub fn sensitive_value(bytes: &[u8]) -> Result<HeaderValue, Deny> {
    let mut v = HeaderValue::from_bytes(bytes)
        .map_err(|_| Deny::new(Code::Internal, "stored secret is not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// Writes `secret` into the request in the provider's scheme.
pub fn apply(
    headers: &mut HeaderMap,
    uri: &mut Uri,
    provider: &Provider,
    secret: &Secret,
) -> Result<(), Deny> {
    let Some(inject) = &provider.inject else {
        return Ok(());
    };
    match inject {
        InjectConfig::Header { header, value } => {
            let name = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| Deny::new(Code::Internal, "provider inject header is invalid"))?;
            headers.insert(name, sensitive_value(&fill(value, secret))?);
        }
        InjectConfig::Basic { basic } => {
            let mut pair = fill(&basic.user, secret);
            pair.push(b':');
            pair.extend_from_slice(&fill(&basic.password, secret));
            let mut value = Zeroizing::new(b"Basic ".to_vec());
            value.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&*pair)
                    .as_bytes(),
            );
            headers.insert(http::header::AUTHORIZATION, sensitive_value(&value)?);
        }
        InjectConfig::Query { query } => {
            *uri = with_query_param(uri, query, secret)?;
        }
        InjectConfig::PathPrefix { path_prefix } => {
            *uri = with_path_prefix(uri, path_prefix, secret)?;
        }
    }
    Ok(())
}

/// Replaces any `name=` the client sent and appends `name=<secret>`.
fn with_query_param(uri: &Uri, name: &str, secret: &Secret) -> Result<Uri, Deny> {
    let path = uri.path();
    let mut query = String::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let key = pair.split('=').next().unwrap_or("");
        // SECURITY: drop the client's own value for the credential parameter.
        if key == name {
            continue;
        }
        query.push_str(pair);
        query.push('&');
    }
    let value = Zeroizing::new(
        utf8_percent_encode(&String::from_utf8_lossy(secret.expose()), QUERY_VALUE).to_string(),
    );
    let pq = Zeroizing::new(format!("{path}?{query}{name}={}", value.as_str()));
    rebuild(uri, &pq)
}

/// `/bot{secret}`: replaces the client's first path segment when it carries the
/// template's static head (`/bot<dummy>/getMe` → `/bot<real>/getMe`), else prepends.
fn with_path_prefix(uri: &Uri, template: &str, secret: &Secret) -> Result<Uri, Deny> {
    let head = template.split(SECRET_SLOT).next().unwrap_or("");
    let path = uri.path();
    let rest = match path.strip_prefix(head) {
        Some(after) if !head.is_empty() && head != "/" => {
            after.find('/').map(|i| &after[i..]).unwrap_or("")
        }
        _ => path,
    };
    let prefix = fill(template, secret);
    let prefix = String::from_utf8_lossy(&prefix);
    let mut pq = Zeroizing::new(format!("{prefix}{rest}"));
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    rebuild(uri, &pq)
}

fn rebuild(uri: &Uri, path_and_query: &str) -> Result<Uri, Deny> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| Deny::new(Code::Internal, "stored secret cannot be placed in a URL"))?,
    );
    Uri::from_parts(parts).map_err(|_| Deny::new(Code::Internal, "cannot rebuild the request URL"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::Policy;

    fn provider(name: &str) -> std::sync::Arc<Provider> {
        Policy::from_config(&Config::default())
            .provider_named(name)
            .unwrap()
            .clone()
    }

    fn run(name: &str, uri: &str, headers: &[(&str, &str)]) -> (HeaderMap, Uri) {
        let p = provider(name);
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut u: Uri = uri.parse().unwrap();
        strip_credentials(&mut h, &p);
        apply(&mut h, &mut u, &p, &Secret::from_str("REAL-KEY/1")).unwrap();
        (h, u)
    }

    #[test]
    fn bearer_replaces_every_variant_of_the_dummy() {
        let (h, _) = run(
            "openai",
            "https://api.openai.com/v1/models",
            &[
                ("Authorization", "Bearer dummy"),
                ("authorization", "Bearer dummy2"),
                ("X-Api-Key", "k"),
            ],
        );
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        assert_eq!(h["authorization"], "Bearer REAL-KEY/1");
        assert!(h["authorization"].is_sensitive());
        assert!(h.get("x-api-key").is_none());
    }

    #[test]
    fn anthropic_uses_x_api_key_and_drops_authorization() {
        let (h, _) = run(
            "anthropic",
            "https://api.anthropic.com/v1/messages",
            &[("authorization", "Bearer x")],
        );
        assert_eq!(h["x-api-key"], "REAL-KEY/1");
        assert!(h.get("authorization").is_none());
    }

    #[test]
    fn basic_scheme() {
        let (h, _) = run("stripe", "https://api.stripe.com/v1/charges", &[]);
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("REAL-KEY/1:")
        );
        assert_eq!(h["authorization"], want.as_str());
    }

    #[test]
    fn path_prefix_replaces_the_dummy_segment() {
        let (_, u) = run(
            "telegram",
            "https://api.telegram.org/botdummy/getMe?x=1",
            &[],
        );
        assert_eq!(u.path(), "/botREAL-KEY/1/getMe");
        assert_eq!(u.query(), Some("x=1"));
    }

    #[test]
    fn query_param_replaces_the_dummy() {
        let text = r#"
[[providers]]
name = "q"
hosts = ["q.example"]
secret = "Q"
inject = { query = "key" }
"#;
        let p = Policy::from_config(&Config::parse(text, "t").unwrap())
            .provider_named("q")
            .unwrap()
            .clone();
        let mut h = HeaderMap::new();
        let mut u: Uri = "https://q.example/v1?key=dummy&a=b".parse().unwrap();
        apply(&mut h, &mut u, &p, &Secret::from_str("s p/&")).unwrap();
        assert_eq!(u.query(), Some("a=b&key=s%20p%2F%26"));
    }
}
