//! The jail's DNS stub: names keyward would connect to get a synthetic address
//! (198.18.0.0/15, RFC 2544's benchmarking range, and a ULA /64 for AAAA) that
//! the relay maps back to the name; every other name is NXDOMAIN at once. The
//! real lookup and the private-address check stay in keyward, at dial time.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The first synthetic IPv4 address (198.18.0.0/15).
const V4_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// The synthetic IPv6 prefix (a ULA /64: fd6b:7761:7264::/64, "kward").
const V6_BASE: u128 = 0xfd6b_7761_7264_0000_u128 << 64;
/// How many names the stub hands out addresses for (the /15 has 131072).
pub const MAX_NAMES: u32 = 65_536;
/// TTL of synthetic answers, seconds: long enough that clients do not ask
/// again per connection, short enough for a long-running jail.
const TTL_SECS: u32 = 300;
/// Longest DNS message the stub reads or writes (classic UDP size).
pub const MAX_MESSAGE: usize = 512;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;
const RCODE_REFUSED: u16 = 5;

/// name ↔ synthetic address, for the life of one `keyward run`.
#[derive(Default)]
pub struct Names {
    inner: Mutex<NamesInner>,
}

#[derive(Default)]
struct NamesInner {
    by_name: HashMap<String, u32>,
    by_index: Vec<String>,
}

impl Names {
    /// The index of `name`, allocating one; `None` when the range is used up.
    fn index(&self, name: &str) -> Option<u32> {
        let mut g = self.inner.lock();
        if let Some(i) = g.by_name.get(name) {
            return Some(*i);
        }
        let i = u32::try_from(g.by_index.len()).ok()?;
        if i >= MAX_NAMES {
            return None;
        }
        g.by_index.push(name.to_string());
        g.by_name.insert(name.to_string(), i);
        Some(i)
    }

    /// The name the stub gave `ip` out for, if it did.
    pub fn name_of(&self, ip: IpAddr) -> Option<String> {
        let index = match ip {
            IpAddr::V4(v4) => u32::from(v4).checked_sub(V4_BASE + 1)?,
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                if bits >> 64 != V6_BASE >> 64 {
                    return None;
                }
                u32::try_from((bits & u128::from(u64::MAX)).checked_sub(1)?).ok()?
            }
        };
        self.inner.lock().by_index.get(index as usize).cloned()
    }
}

fn v4(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(V4_BASE + 1 + index)
}

fn v6(index: u32) -> Ipv6Addr {
    Ipv6Addr::from(V6_BASE + 1 + u128::from(index))
}

/// What the stub did with one query (for the log).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Answered(String),
    Refused(String),
    Malformed,
}

/// The answer to one query. `reachable` says whether keyward would connect to a
/// (canonical) name.
pub fn answer(
    query: &[u8],
    names: &Names,
    reachable: impl Fn(&str) -> bool,
) -> Option<(Vec<u8>, Verdict)> {
    let q = parse(query);
    let Some(q) = q else {
        // Not even a header: nothing to answer.
        if query.len() < 12 {
            return None;
        }
        return Some((header_only(query, RCODE_FORMERR), Verdict::Malformed));
    };
    let mut out = Vec::with_capacity(MAX_MESSAGE);
    out.extend_from_slice(&query[0..2]);
    let opcode = (u16::from_be_bytes([query[2], query[3]]) >> 11) & 0xf;
    let rd = u16::from_be_bytes([query[2], query[3]]) & 0x0100;
    if opcode != 0 || q.class != CLASS_IN {
        return Some((header_only(query, RCODE_NOTIMP), Verdict::Malformed));
    }
    // SECURITY: only names keyward would route get an address; anything else
    // fails here, so the jailed program learns nothing and sends nothing.
    let known = crate::policy::canonical_host(&q.name).filter(|n| reachable(n));
    let (rcode, record) = match &known {
        None => (RCODE_NXDOMAIN, None),
        Some(name) => match names.index(name) {
            None => (RCODE_REFUSED, None),
            Some(i) if q.qtype == TYPE_A => (0, Some(v4(i).octets().to_vec())),
            Some(i) if q.qtype == TYPE_AAAA => (0, Some(v6(i).octets().to_vec())),
            Some(_) => (0, None),
        },
    };
    let flags = 0x8000 | rd | 0x0080 | rcode | 0x0400;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(record.is_some()).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..q.question_end]);
    if let Some(rdata) = &record {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(rdata);
    }
    let verdict = match known {
        Some(name) if rcode == 0 => Verdict::Answered(name),
        _ => Verdict::Refused(q.name),
    };
    Some((out, verdict))
}

fn header_only(query: &[u8], rcode: u16) -> Vec<u8> {
    let mut out = query[0..2].to_vec();
    out.extend_from_slice(&(0x8000 | rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

struct Question {
    name: String,
    qtype: u16,
    class: u16,
    question_end: usize,
}

/// The single question of a standard query (no compression in the question).
fn parse(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || msg.len() > MAX_MESSAGE * 8 {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    if flags & 0x8000 != 0 || qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = std::str::from_utf8(msg.get(at..at + len)?).ok()?;
        labels.push(label.to_string());
        at += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]);
    let class = u16::from_be_bytes([*msg.get(at + 2)?, *msg.get(at + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        class,
        question_end: at + 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn reachable_names_get_stable_synthetic_addresses() {
        let names = Names::default();
        let ok = |n: &str| n == "q.example.test";
        let (a, v) = answer(&query("Q.example.test", TYPE_A), &names, ok).unwrap();
        assert_eq!(v, Verdict::Answered("q.example.test".into()));
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[3] & 0xf, 0);
        assert_eq!(&a[a.len() - 4..], &[198, 18, 0, 1]);
        let (aaaa, _) = answer(&query("q.example.test", TYPE_AAAA), &names, ok).unwrap();
        let ip6: [u8; 16] = aaaa[aaaa.len() - 16..].try_into().unwrap();
        assert_eq!(
            names.name_of(IpAddr::V6(ip6.into())).as_deref(),
            Some("q.example.test")
        );
        assert_eq!(
            names.name_of("198.18.0.1".parse().unwrap()).as_deref(),
            Some("q.example.test")
        );
        assert_eq!(names.name_of("198.18.0.2".parse().unwrap()), None);
        assert_eq!(names.name_of("203.0.113.5".parse().unwrap()), None);
    }

    #[test]
    fn other_names_are_nxdomain_and_garbage_is_formerr() {
        let names = Names::default();
        let (a, v) = answer(&query("evil.example.test", TYPE_A), &names, |_| false).unwrap();
        assert_eq!(v, Verdict::Refused("evil.example.test".into()));
        assert_eq!(u16::from_be_bytes([a[2], a[3]]) & 0xf, RCODE_NXDOMAIN);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0);
        assert!(answer(&[1, 2, 3], &names, |_| true).is_none());
        let mut bad = query("a.test", TYPE_A);
        bad.truncate(15);
        let (a, v) = answer(&bad, &names, |_| true).unwrap();
        assert_eq!(v, Verdict::Malformed);
        assert_eq!(a[3] & 0xf, RCODE_FORMERR as u8);
    }
}
