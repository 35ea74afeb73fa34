//! `inject::placeholder_names`: never panics, returns only valid secret names,
//! each of which really occurs as `{{NAME}}` in the value, in order.
#![no_main]

use keyward::proxy::inject::placeholder_names;
use libfuzzer_sys::fuzz_target;

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let names = placeholder_names(data);
    let mut rest = data;
    for name in names {
        assert!(valid_name(name), "invalid name {name:?}");
        let token = format!("{{{{{name}}}}}");
        let at = find(rest, token.as_bytes()).unwrap_or_else(|| panic!("{token} not found in order"));
        rest = &rest[at + token.len()..];
    }
});
