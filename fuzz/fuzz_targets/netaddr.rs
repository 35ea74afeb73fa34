//! `netaddr`: lenient parsing never panics, agrees with `std` on canonical
//! spellings, round-trips, and a blocked IPv4 stays blocked in every IPv6 form.
#![no_main]

use keyward::netaddr::{blocked_reason, check, parse_ip_lenient};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn v6_embeddings(v4: Ipv4Addr, noise: u64) -> [Ipv6Addr; 6] {
    let x = u128::from(u32::from(v4));
    let n16 = u128::from(noise & 0xffff);
    [
        Ipv6Addr::from((0xffffu128 << 32) | x),
        Ipv6Addr::from((0xffffu128 << 64) | x),
        Ipv6Addr::from(x),
        Ipv6Addr::from((0x64_ff9bu128 << 96) | x),
        Ipv6Addr::from((0x2002u128 << 112) | (x << 80) | u128::from(noise)),
        Ipv6Addr::from((0x2001_0000u128 << 96) | (x << 64) | (n16 << 32) | 0x0101),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // Text: parse like a hostname.
        0 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            let parsed = parse_ip_lenient(s);
            if let Ok(std_ip) = s.parse::<IpAddr>() {
                assert_eq!(parsed, Some(std_ip), "std and lenient disagree on {s:?}");
            }
            if let Some(ip) = parsed {
                // Every parsed address round-trips through its canonical spelling.
                let canonical = match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                assert_eq!(parse_ip_lenient(&canonical), Some(ip));
                let _ = check(ip, &[]);
            }
        }
        // Raw IPv4: blocked stays blocked through every IPv6 embedding.
        1 => {
            if rest.len() < 12 {
                return;
            }
            let v4 = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let noise = u64::from_le_bytes(rest[4..12].try_into().unwrap_or([0; 8]));
            if blocked_reason(IpAddr::V4(v4)).is_some() {
                for v6 in v6_embeddings(v4, noise) {
                    assert!(
                        blocked_reason(IpAddr::V6(v6)).is_some(),
                        "{v4} escaped via {v6}"
                    );
                }
            }
            // Every inet_aton spelling of the address parses back to it.
            let n = u32::from(v4);
            for s in [
                format!("{n}"),
                format!("{n:#x}"),
                format!("0{n:o}"),
                format!("{}.{}", rest[0], n & 0xff_ffff),
            ] {
                assert_eq!(parse_ip_lenient(&s), Some(IpAddr::V4(v4)), "{s}");
            }
        }
        // Raw IPv6: classification never panics; mapped forms agree with IPv4.
        _ => {
            if rest.len() < 16 {
                return;
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&rest[..16]);
            let v6 = Ipv6Addr::from(o);
            let reason = blocked_reason(IpAddr::V6(v6));
            if let Some(v4) = v6.to_ipv4_mapped() {
                if blocked_reason(IpAddr::V4(v4)).is_some() {
                    assert!(reason.is_some(), "{v6}");
                }
            }
        }
    }
});
