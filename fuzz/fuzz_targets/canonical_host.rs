//! `policy::canonical_host`: never panics, is idempotent, yields only DNS-name or
//! IP-literal characters, and agrees with `netaddr` on what an IP literal is.
#![no_main]

use keyward::netaddr::parse_ip_lenient;
use keyward::policy::canonical_host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Some(host) = canonical_host(raw) else { return };
    assert!(!host.is_empty());
    assert_eq!(canonical_host(&host).as_deref(), Some(host.as_str()), "not idempotent for {raw:?}");
    assert!(
        host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.:".contains(&b)),
        "odd characters in {host:?}"
    );
    // SECURITY: an IP spelling must canonicalise to that IP, so allowlists and the
    // private-address check see the address that will be dialled.
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if let Some(ip) = parse_ip_lenient(trimmed) {
        assert_eq!(parse_ip_lenient(&host), Some(ip), "{raw:?} -> {host:?}");
    }
});
