//! Address classification for egress safety (SPEC §6.3): which IPs a tunnel or an
//! upstream connection may never reach, and lenient parsing of the odd IPv4
//! spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) an agent might use to
//! slip past a string allowlist.

use ipnet::IpNet;
use std::net::IpAddr;

/// Parses an IP literal as a resolver or browser would: bracketed or bare IPv6,
/// dotted IPv4, and the legacy IPv4 forms inet_aton accepts.
pub fn parse_ip_lenient(host: &str) -> Option<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse().ok()
}

/// Why `ip` may not be dialled, or `None` when it is a public address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_private() => Some("private"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        _ => None,
    }
}

/// `Ok` when `ip` is public or exempted by `allow_private`; else the reason.
pub fn check(ip: IpAddr, allow_private: &[IpNet]) -> Result<(), &'static str> {
    match blocked_reason(ip) {
        None => Ok(()),
        Some(_) if allow_private.iter().any(|n| n.contains(&ip)) => Ok(()),
        Some(reason) => Err(reason),
    }
}
