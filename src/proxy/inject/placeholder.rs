//! `{{NAME}}` placeholders in request headers: found, and filled by a caller that
//! decides (scope + host binding) whether NAME may be used here.

use super::scheme::{find, sensitive_value, PLACEHOLDER_CLOSE, PLACEHOLDER_OPEN};
use crate::proxy::error::Deny;
use crate::secret::Secret;
use http::HeaderMap;
use zeroize::Zeroizing;

/// The placeholder names (`{{NAME}}`) in a header value, in order.
pub fn placeholder_names(value: &[u8]) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = find(rest, PLACEHOLDER_OPEN.as_bytes()) {
        let after = &rest[start + PLACEHOLDER_OPEN.len()..];
        let Some(end) = find(after, PLACEHOLDER_CLOSE.as_bytes()) else {
            break;
        };
        if let Ok(name) = std::str::from_utf8(&after[..end]) {
            if crate::config::valid_secret_name(name) {
                names.push(name);
            }
        }
        rest = &after[end + PLACEHOLDER_CLOSE.len()..];
    }
    names
}

/// Replaces every `{{NAME}}` in every header value with `lookup(NAME)`. The lookup
/// decides whether NAME may go to this host; any refusal refuses the request.
pub fn replace_placeholders(
    headers: &mut HeaderMap,
    mut lookup: impl FnMut(&str) -> Result<Secret, Deny>,
) -> Result<Vec<String>, Deny> {
    let mut used = Vec::new();
    for value in headers.values_mut() {
        let names: Vec<String> = placeholder_names(value.as_bytes())
            .into_iter()
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut out = Zeroizing::new(value.as_bytes().to_vec());
        for name in names {
            let secret = lookup(&name)?;
            let token = format!("{PLACEHOLDER_OPEN}{name}{PLACEHOLDER_CLOSE}");
            let mut next = Zeroizing::new(Vec::with_capacity(out.len() + secret.len()));
            let mut rest: &[u8] = &out;
            while let Some(pos) = find(rest, token.as_bytes()) {
                next.extend_from_slice(&rest[..pos]);
                next.extend_from_slice(secret.expose());
                rest = &rest[pos + token.len()..];
            }
            next.extend_from_slice(rest);
            out = next;
            if !used.contains(&name) {
                used.push(name);
            }
        }
        *value = sensitive_value(&out)?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn placeholders_are_found_and_replaced() {
        assert_eq!(
            placeholder_names(b"Bearer {{A_KEY}} and {{B}} {{bad}}"),
            vec!["A_KEY", "B"]
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-token",
            HeaderValue::from_static("t={{A_KEY}};u={{A_KEY}}"),
        );
        let used = replace_placeholders(&mut h, |_| Ok(Secret::from_str("S3"))).unwrap();
        assert_eq!(used, vec!["A_KEY"]);
        assert_eq!(h["x-token"], "t=S3;u=S3");
    }
}
