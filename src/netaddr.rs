//! Address classification for egress safety (SPEC §6.3): which IPs a tunnel or an
//! upstream connection may never reach, and lenient parsing of the odd IPv4
//! spellings (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) an agent might use to
//! slip past a string allowlist.
//!
//! Two rules shape this file:
//! * Parsing is deliberately *more* lenient than `std`: anything a C resolver
//!   (`inet_aton`) or a WHATWG URL parser would treat as an IPv4 literal is parsed
//!   as one, so policy sees the address that will really be dialled. A host is an
//!   IPv4 spelling only if *every* label is a number (decimal, octal with a leading
//!   `0`, hex with `0x`), so DNS names with digits (`1e100.net`, `0x1.com`) stay names.
//! * Classification is fail-closed: IPv6 forms that carry an IPv4 address
//!   (mapped, compatible, NAT64, 6to4, Teredo) are judged by the IPv4 inside, and
//!   IPv6 space outside global unicast `2000::/3` is refused outright.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most labels an IPv4 spelling can have (`a.b.c.d`).
const MAX_V4_PARTS: usize = 4;
/// Longest host string worth trying to read as a number (all-octal 32-bit value with
/// generous leading zeros); longer strings are names, and this bounds the work.
const MAX_V4_SPELLING_LEN: usize = 256;

/// AWS/GCP/Azure/OpenStack instance metadata.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Alibaba Cloud instance metadata (inside CGNAT space).
const METADATA_V4_ALIBABA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);
/// Oracle Cloud instance metadata (inside 192.0.0.0/24).
const METADATA_V4_ORACLE: Ipv4Addr = Ipv4Addr::new(192, 0, 0, 192);
/// AWS instance metadata over IPv6 (Nitro).
const METADATA_V6_AWS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Reason strings returned by [`blocked_reason`].
pub mod reason {
    pub const METADATA: &str = "metadata";
    pub const LOOPBACK: &str = "loopback";
    pub const PRIVATE: &str = "private";
    pub const LINK_LOCAL: &str = "link-local";
    pub const CGNAT: &str = "cgnat";
    pub const UNSPECIFIED: &str = "unspecified";
    pub const MULTICAST: &str = "multicast";
    pub const BROADCAST: &str = "broadcast";
    pub const RESERVED: &str = "reserved";
    pub const BENCHMARKING: &str = "benchmarking";
    pub const DOCUMENTATION: &str = "documentation";
    pub const ULA: &str = "unique-local";
    pub const SITE_LOCAL: &str = "site-local";
    pub const NAT64_LOCAL: &str = "nat64-local";
}

/// Parses an IP literal as a resolver or browser would: bracketed or bare IPv6,
/// dotted IPv4, and the legacy IPv4 forms inet_aton accepts. `None` means "a name".
pub fn parse_ip_lenient(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[') {
        // SECURITY: zone ids (`fe80::1%eth0`) select an interface; never accept them.
        let inner = inner.strip_suffix(']')?;
        return parse_v6(inner).map(IpAddr::V6);
    }
    if host.contains(':') {
        return parse_v6(host).map(IpAddr::V6);
    }
    parse_v4_lenient(host).map(IpAddr::V4)
}

fn parse_v6(s: &str) -> Option<Ipv6Addr> {
    // SECURITY: a zone id would make the address mean something interface-local.
    if s.contains('%') {
        return None;
    }
    s.parse().ok()
}

/// inet_aton/WHATWG IPv4: 1–4 labels, each decimal, `0`-prefixed octal or
/// `0x`-prefixed hex; the last label fills the remaining bytes. One trailing dot is
/// allowed (`127.0.0.1.` is the same host to a resolver).
fn parse_v4_lenient(host: &str) -> Option<Ipv4Addr> {
    if host.is_empty() || host.len() > MAX_V4_SPELLING_LEN {
        return None;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut parts = [0u64; MAX_V4_PARTS];
    let mut n = 0;
    for label in host.split('.') {
        if n == MAX_V4_PARTS {
            return None;
        }
        parts[n] = parse_v4_number(label)?;
        n += 1;
    }
    if n == 0 {
        return None;
    }
    let (head, last) = (&parts[..n - 1], parts[n - 1]);
    // Each leading label is one byte; the last fills the remaining (5 - n) bytes.
    if head.iter().any(|&p| p > 0xff) {
        return None;
    }
    let last_bits = 8 * (MAX_V4_PARTS + 1 - n) as u32;
    if last >= (1u64 << last_bits) {
        return None;
    }
    let mut value: u64 = 0;
    for (i, &p) in head.iter().enumerate() {
        value |= p << (24 - 8 * i as u32);
    }
    value |= last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// One inet_aton number: `0x1f` hex, `017` octal, `17` decimal. `None` for anything
/// else (so the whole host is a name). Values above `u32::MAX` are rejected.
fn parse_v4_number(label: &str) -> Option<u64> {
    if label.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
    {
        // `0x` alone is 0 to inet_aton and WHATWG alike.
        if h.is_empty() {
            return Some(0);
        }
        (h, 16)
    } else if label.len() > 1 && label.starts_with('0') {
        (&label[1..], 8)
    } else {
        (label, 10)
    };
    let mut value: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(d))?;
        if value > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(value)
}

/// Why `ip` may not be dialled, or `None` when it is a public address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    use reason::*;
    // SECURITY: cloud metadata endpoints hand out instance credentials; named first
    // so the audit line says exactly what was attempted.
    if ip == METADATA_V4 || ip == METADATA_V4_ALIBABA || ip == METADATA_V4_ORACLE {
        return Some(METADATA);
    }
    // SECURITY: the rest of this table is every range that reaches the proxy host,
    // the cluster, or nothing public (RFC 6890 special-purpose registry).
    const TABLE: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, UNSPECIFIED),
        ([10, 0, 0, 0], 8, PRIVATE),
        ([100, 64, 0, 0], 10, CGNAT),
        ([127, 0, 0, 0], 8, LOOPBACK),
        ([169, 254, 0, 0], 16, LINK_LOCAL),
        ([172, 16, 0, 0], 12, PRIVATE),
        ([192, 0, 0, 0], 24, RESERVED),
        ([192, 0, 2, 0], 24, DOCUMENTATION),
        ([192, 88, 99, 0], 24, RESERVED),
        ([192, 168, 0, 0], 16, PRIVATE),
        ([198, 18, 0, 0], 15, BENCHMARKING),
        ([198, 51, 100, 0], 24, DOCUMENTATION),
        ([203, 0, 113, 0], 24, DOCUMENTATION),
        ([224, 0, 0, 0], 4, MULTICAST),
        ([255, 255, 255, 255], 32, BROADCAST),
        ([240, 0, 0, 0], 4, RESERVED),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn v4_at(ip: Ipv6Addr, bit_offset: u32) -> Ipv4Addr {
    Ipv4Addr::from(((u128::from(ip) >> (96 - bit_offset)) & u128::from(u32::MAX)) as u32)
}

/// IPv4 addresses an IPv6 address carries and that routing may deliver to.
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    const MAPPED: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0);
    const TRANSLATED: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0);
    const COMPAT: Ipv6Addr = Ipv6Addr::UNSPECIFIED;
    const NAT64: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0);
    const NAT64_LOCAL: Ipv6Addr = Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0);
    const SIX_TO_FOUR: Ipv6Addr = Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0);
    const TEREDO: Ipv6Addr = Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0);
    let low32 = v4_at(ip, 96);
    let mut out = Vec::new();
    if in_v6(ip, MAPPED, 96)
        || in_v6(ip, TRANSLATED, 96)
        || in_v6(ip, COMPAT, 96)
        || in_v6(ip, NAT64, 96)
    {
        out.push(low32);
    }
    if in_v6(ip, NAT64_LOCAL, 48) {
        // The whole local-use /48 is refused below; the /96 layout is read here only
        // so the reason names the embedded target.
        out.push(low32);
    }
    if in_v6(ip, SIX_TO_FOUR, 16) {
        out.push(v4_at(ip, 16));
    }
    if in_v6(ip, TEREDO, 32) {
        // Teredo: server address in bits 32..64, client address obfuscated (XOR) in
        // the low 32 bits.
        out.push(v4_at(ip, 32));
        out.push(Ipv4Addr::from(!u32::from(low32)));
    }
    out
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    use reason::*;
    if ip == Ipv6Addr::UNSPECIFIED {
        return Some(UNSPECIFIED);
    }
    if ip == Ipv6Addr::LOCALHOST {
        return Some(LOOPBACK);
    }
    // SECURITY: AWS IMDS over IPv6 hands out instance credentials.
    if ip == METADATA_V6_AWS {
        return Some(METADATA);
    }
    // SECURITY: an IPv6 form that embeds an IPv4 address may be delivered to that
    // IPv4 host (dual-stack mapping, NAT64, 6to4/Teredo relays), so it is blocked
    // whenever the embedded address would be.
    if let Some(why) = embedded_v4(ip).into_iter().find_map(blocked_v4) {
        return Some(why);
    }
    let v6 = |a, b, c, d, e, f, g, h| Ipv6Addr::new(a, b, c, d, e, f, g, h);
    // SECURITY: non-global IPv6 space (RFC 6890 / IANA special-purpose registry).
    let table: [(Ipv6Addr, u32, &str); 12] = [
        (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, NAT64_LOCAL),
        (v6(0x100, 0, 0, 0, 0, 0, 0, 0), 64, RESERVED),
        (v6(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, BENCHMARKING),
        (v6(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28, RESERVED),
        (v6(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28, RESERVED),
        (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, DOCUMENTATION),
        (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, DOCUMENTATION),
        (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, ULA),
        (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, LINK_LOCAL),
        (v6(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, SITE_LOCAL),
        (v6(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, MULTICAST),
        (v6(0, 0, 0, 0, 0, 0, 0, 0), 96, RESERVED),
    ];
    if let Some((_, _, why)) = table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
    {
        return Some(why);
    }
    // SECURITY: only 2000::/3 is global unicast; NAT64 (64:ff9b::/96) and the mapped
    // forms carrying a public IPv4 were judged above and may pass.
    let embedded_ok = !embedded_v4(ip).is_empty();
    if !in_v6(ip, v6(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) && !embedded_ok {
        return Some(RESERVED);
    }
    None
}

/// `Ok` when `ip` is public or exempted by `allow_private`; else the reason.
pub fn check(ip: IpAddr, allow_private: &[IpNet]) -> Result<(), &'static str> {
    match blocked_reason(ip) {
        None => Ok(()),
        // SECURITY: only an operator-listed CIDR exempts a blocked address.
        Some(_) if allow_private.iter().any(|n| n.contains(&ip)) => Ok(()),
        Some(reason) => Err(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Option<IpAddr> {
        Some(IpAddr::V4(s.parse().unwrap()))
    }

    #[test]
    fn lenient_parse_table() {
        let cases: &[(&str, Option<IpAddr>)] = &[
            ("127.0.0.1", v4("127.0.0.1")),
            ("127.0.0.1.", v4("127.0.0.1")),
            ("2130706433", v4("127.0.0.1")),
            ("0177.0.0.1", v4("127.0.0.1")),
            ("0x7f.0.0.1", v4("127.0.0.1")),
            ("0X7F.0.0.1", v4("127.0.0.1")),
            ("0x7f000001", v4("127.0.0.1")),
            ("017700000001", v4("127.0.0.1")),
            ("127.1", v4("127.0.0.1")),
            ("127.0.1", v4("127.0.0.1")),
            ("0x7f.1", v4("127.0.0.1")),
            ("0x7f.0.0x0.01", v4("127.0.0.1")),
            ("0xa9.0376.0xa9fe", v4("169.254.169.254")),
            ("169.254.43518", v4("169.254.169.254")),
            ("0xA9FEA9FE", v4("169.254.169.254")),
            ("0", v4("0.0.0.0")),
            ("0x", v4("0.0.0.0")),
            ("00000000000000000177.1", v4("127.0.0.1")),
            ("8.8.8.8", v4("8.8.8.8")),
            ("4294967295", v4("255.255.255.255")),
            ("4294967296", None),
            ("256.0.0.1", None),
            ("1.2.3.256", None),
            ("1.2.65536", None),
            ("1.16777216", None),
            ("1.2.3.4.5", None),
            ("08.0.0.1", None),
            ("0x7g.0.0.1", None),
            ("1..1", None),
            (".1.1", None),
            ("", None),
            (".", None),
            ("-1", None),
            ("+1", None),
            ("1 ", None),
            ("api.openai.com", None),
            ("1e100.net", None),
            ("0x1.com", None),
            ("123.example.com", None),
            ("example.123", None),
            ("1.2.3.4.example", None),
            ("localhost", None),
            ("::1", Some("::1".parse().unwrap())),
            ("[::1]", Some("::1".parse().unwrap())),
            (
                "[::ffff:127.0.0.1]",
                Some("::ffff:127.0.0.1".parse().unwrap()),
            ),
            ("[fe80::1%eth0]", None),
            ("fe80::1%25eth0", None),
            ("[::1", None),
            ("[127.0.0.1]", None),
            ("::g", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_ip_lenient(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn blocked_reason_table() {
        use reason::*;
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1", Some(LOOPBACK)),
            ("127.255.255.254", Some(LOOPBACK)),
            ("10.1.2.3", Some(PRIVATE)),
            ("172.16.0.1", Some(PRIVATE)),
            ("172.31.255.255", Some(PRIVATE)),
            ("172.32.0.1", None),
            ("192.168.1.1", Some(PRIVATE)),
            ("169.254.169.254", Some(METADATA)),
            ("169.254.170.2", Some(LINK_LOCAL)),
            ("100.100.100.200", Some(METADATA)),
            ("192.0.0.192", Some(METADATA)),
            ("100.64.0.1", Some(CGNAT)),
            ("100.127.255.255", Some(CGNAT)),
            ("100.128.0.1", None),
            ("0.0.0.0", Some(UNSPECIFIED)),
            ("0.1.2.3", Some(UNSPECIFIED)),
            ("224.0.0.1", Some(MULTICAST)),
            ("239.255.255.250", Some(MULTICAST)),
            ("255.255.255.255", Some(BROADCAST)),
            ("240.0.0.1", Some(RESERVED)),
            ("192.0.0.8", Some(RESERVED)),
            ("192.88.99.1", Some(RESERVED)),
            ("198.18.0.1", Some(BENCHMARKING)),
            ("198.19.255.255", Some(BENCHMARKING)),
            ("198.20.0.1", None),
            ("192.0.2.1", Some(DOCUMENTATION)),
            ("198.51.100.7", Some(DOCUMENTATION)),
            ("203.0.113.9", Some(DOCUMENTATION)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("104.18.0.1", None),
            ("::", Some(UNSPECIFIED)),
            ("::1", Some(LOOPBACK)),
            ("fd00:ec2::254", Some(METADATA)),
            ("fd00::1", Some(ULA)),
            ("fc00::1", Some(ULA)),
            ("fe80::1", Some(LINK_LOCAL)),
            ("febf::1", Some(LINK_LOCAL)),
            ("fec0::1", Some(SITE_LOCAL)),
            ("ff02::1", Some(MULTICAST)),
            ("2001:db8::1", Some(DOCUMENTATION)),
            ("3fff::1", Some(DOCUMENTATION)),
            ("2001:2::1", Some(BENCHMARKING)),
            ("100::1", Some(RESERVED)),
            ("4000::1", Some(RESERVED)),
            ("::ffff:127.0.0.1", Some(LOOPBACK)),
            ("::ffff:169.254.169.254", Some(METADATA)),
            ("::ffff:10.0.0.1", Some(PRIVATE)),
            ("::ffff:8.8.8.8", None),
            ("::ffff:0:10.0.0.1", Some(PRIVATE)),
            ("::127.0.0.1", Some(LOOPBACK)),
            ("::8.8.8.8", Some(RESERVED)),
            ("64:ff9b::127.0.0.1", Some(LOOPBACK)),
            ("64:ff9b::169.254.169.254", Some(METADATA)),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::8.8.8.8", Some(NAT64_LOCAL)),
            ("64:ff9b:1::10.0.0.1", Some(PRIVATE)),
            ("2002:7f00:1::", Some(LOOPBACK)),
            ("2002:a9fe:a9fe::1", Some(METADATA)),
            ("2002:808:808::1", None),
            ("2001:0:7f00:1::", Some(LOOPBACK)),
            // Teredo client 10.0.0.1 obfuscated: !0x0a000001 = 0xf5fffffe.
            ("2001:0:808:808::f5ff:fffe", Some(PRIVATE)),
            ("2001:0:808:808::f7f7:f7f7", None),
            ("2606:4700::6810:84e5", None),
            ("2a00:1450:4001:82a::200e", None),
        ];
        for (input, want) in cases {
            let ip: IpAddr = input.parse().unwrap();
            assert_eq!(blocked_reason(ip), *want, "input {input}");
        }
    }

    #[test]
    fn lenient_spellings_of_blocked_addresses_are_blocked() {
        for s in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
            "0xA9FEA9FE",
            "0x0a.0.0.1",
            "[::ffff:7f00:1]",
        ] {
            let ip = parse_ip_lenient(s).unwrap();
            assert!(blocked_reason(ip).is_some(), "{s}");
        }
    }

    #[test]
    fn allow_private_exempts_only_listed_cidr() {
        let allow: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        assert_eq!(check("10.1.2.3".parse().unwrap(), &allow), Ok(()));
        assert_eq!(
            check("10.2.0.1".parse().unwrap(), &allow),
            Err(reason::PRIVATE)
        );
        assert_eq!(check("8.8.8.8".parse().unwrap(), &[]), Ok(()));
        assert_eq!(
            check("127.0.0.1".parse().unwrap(), &[]),
            Err(reason::LOOPBACK)
        );
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn embeddings(v4: Ipv4Addr, hi: u64) -> Vec<Ipv6Addr> {
            let x = u128::from(u32::from(v4));
            let hi16 = (hi & 0xffff) as u128;
            let nat64_local_48 = {
                let b = v4.octets();
                let mut o = [0u8; 16];
                o[..6].copy_from_slice(&[0, 0x64, 0xff, 0x9b, 0, 1]);
                o[6] = b[0];
                o[7] = b[1];
                o[9] = b[2];
                o[10] = b[3];
                Ipv6Addr::from(o)
            };
            vec![
                Ipv6Addr::from((0xffffu128 << 32) | x),
                Ipv6Addr::from((0xffffu128 << 64) | x),
                Ipv6Addr::from(x),
                Ipv6Addr::from((0x64_ff9bu128 << 96) | x),
                Ipv6Addr::from((0x64_ff9b_0001u128 << 80) | (hi16 << 32) | x),
                nat64_local_48,
                Ipv6Addr::from((0x2002u128 << 112) | (x << 80) | u128::from(hi)),
                Ipv6Addr::from((0x2001_0000u128 << 96) | (x << 64) | (hi16 << 32) | 0x1234),
                Ipv6Addr::from(
                    (0x2001_0000u128 << 96)
                        | (0x0808_0808u128 << 64)
                        | (hi16 << 32)
                        | (!(x as u32)) as u128,
                ),
            ]
        }

        fn blocked_v4_strategy() -> impl Strategy<Value = Ipv4Addr> {
            prop_oneof![
                any::<u32>().prop_map(Ipv4Addr::from),
                (any::<[u8; 3]>()).prop_map(|b| Ipv4Addr::new(127, b[0], b[1], b[2])),
                (any::<[u8; 3]>()).prop_map(|b| Ipv4Addr::new(10, b[0], b[1], b[2])),
                (any::<[u8; 2]>()).prop_map(|b| Ipv4Addr::new(169, 254, b[0], b[1])),
                (any::<[u8; 2]>()).prop_map(|b| Ipv4Addr::new(192, 168, b[0], b[1])),
                (0u8..64, any::<[u8; 2]>()).prop_map(|(a, b)| Ipv4Addr::new(
                    100,
                    64 + a,
                    b[0],
                    b[1]
                )),
            ]
            .prop_filter("blocked", |ip| blocked_v4(*ip).is_some())
        }

        proptest! {
            #[test]
            fn blocked_v4_stays_blocked_through_every_v6_embedding(ip in blocked_v4_strategy(), hi in any::<u64>()) {
                for v6 in embeddings(ip, hi) {
                    prop_assert!(blocked_reason(IpAddr::V6(v6)).is_some(), "{ip} via {v6}");
                }
            }

            #[test]
            fn dotted_quad_parses_like_std(ip in any::<u32>().prop_map(Ipv4Addr::from)) {
                prop_assert_eq!(parse_ip_lenient(&ip.to_string()), Some(IpAddr::V4(ip)));
                prop_assert_eq!(parse_ip_lenient(&u32::from(ip).to_string()), Some(IpAddr::V4(ip)));
                prop_assert_eq!(parse_ip_lenient(&format!("{:#x}", u32::from(ip))), Some(IpAddr::V4(ip)));
                prop_assert_eq!(parse_ip_lenient(&format!("0{:o}", u32::from(ip))), Some(IpAddr::V4(ip)));
            }

            #[test]
            fn lenient_parse_never_panics(s in "\\PC{0,40}") {
                let _ = parse_ip_lenient(&s);
            }
        }
    }
}
