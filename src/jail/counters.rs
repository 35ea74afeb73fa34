//! Refusals the jail's own kernel makes, counted (SPEC §12 `jail_block`): TCP to
//! a port no socket listens on (anything outside `egress.ports` and the jail's
//! proxy port, unless CMD itself listens there), UDP other than DNS to the stub,
//! ICMP echo. They never reach a socket of `keyward run`, so an nftables table
//! in the jail's namespace refuses them and counts them in named counters; the
//! relay reads the counters (`nft -j list counters`, run inside the jail) every
//! `POLL_INTERVAL` and reports the deltas to keyward like its own refusals.
//! Without `nft` the kernel still refuses (RST, port unreachable), uncounted.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The nftables table `keyward run` makes in the jail (only there: nothing on the host).
pub const TABLE: &str = "keyward";
/// How often the relay reads the counters.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `/proc/sys/net/ipv4/ping_group_range` of the jail (per namespace): ICMP echo
/// sockets are allowed for every group, so an echo request reaches the output
/// hook, where it is dropped and counted (the sender's `sendto` fails at once).
/// The narrow form is for a user namespace, where only gid 0 is mapped.
const PING_GROUPS: [&str; 2] = ["0 2147483647", "0 0"];
const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// The counters, in the order `read` returns them, with what each refusal was.
pub const COUNTERS: [(&str, &str); 3] = [
    (
        "tcp_refused",
        "tcp port: a connection to a port outside egress.ports, reset by the jail",
    ),
    (
        "udp_refused",
        "udp: a datagram other than DNS to the stub, dropped by the jail",
    ),
    ("icmp_refused", "icmp: an echo request, dropped by the jail"),
];

/// Input: a TCP SYN that finds a socket (the relay's listeners, or one CMD
/// opened itself inside the jail) goes on; any other SYN is counted and reset,
/// as the kernel would. Output: DNS (to the stub and its answers) goes on; any
/// other UDP and every ICMP echo request is counted and dropped, which fails the
/// sender's system call with EPERM at once.
const RULESET: &str = "table inet keyward {
  counter tcp_refused {}
  counter udp_refused {}
  counter icmp_refused {}
  chain input {
    type filter hook input priority 0; policy accept;
    tcp flags & (syn|ack) == syn socket transparent 0 accept
    tcp flags & (syn|ack) == syn socket transparent 1 accept
    tcp flags & (syn|ack) == syn counter name tcp_refused reject with tcp reset
  }
  chain output {
    type filter hook output priority 0; policy accept;
    udp dport 53 accept
    udp sport 53 accept
    meta l4proto udp counter name udp_refused drop
    icmp type echo-request counter name icmp_refused drop
    icmpv6 type echo-request counter name icmp_refused drop
  }
}
";

/// Loads the table into the namespace the calling thread is in (the jail's);
/// whether it is there. Without it (`nft` not installed, or nftables not
/// usable here) the jail still refuses, uncounted: one warning says so.
pub fn install() -> bool {
    match load() {
        Ok(()) => {}
        Err(why) => {
            tracing::warn!(
                "{why}: what the jail's kernel refuses (other ports, UDP, ICMP) \
                 is still refused but not counted or audited"
            );
            return false;
        }
    }
    // SECURITY: ping sockets are opened only with the rules in place: an echo
    // request must be dropped (and counted), not answered by the jail's own loopback.
    for range in PING_GROUPS {
        if std::fs::write(PING_GROUP_RANGE, range).is_ok() {
            break;
        }
    }
    true
}

fn load() -> Result<(), String> {
    let child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("nft not found (install nftables)".into())
        }
        Err(e) => return Err(format!("cannot run nft: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(RULESET.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft could not load the jail's counting rules ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The packet counts of `COUNTERS` in `nft -j list counters` output.
pub fn parse(json: &[u8]) -> Option<[u64; 3]> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let mut out = [0u64; 3];
    let mut seen = 0;
    for item in v.get("nftables")?.as_array()? {
        let Some(c) = item.get("counter") else {
            continue;
        };
        if c.get("table").and_then(|t| t.as_str()) != Some(TABLE) {
            continue;
        }
        let name = c.get("name").and_then(|n| n.as_str());
        if let Some(i) = COUNTERS.iter().position(|(n, _)| Some(*n) == name) {
            out[i] = c.get("packets")?.as_u64()?;
            seen += 1;
        }
    }
    (seen == COUNTERS.len()).then_some(out)
}

/// The counts since the last call, per counter.
#[derive(Default)]
pub struct Tally {
    last: [u64; 3],
}

impl Tally {
    pub fn deltas(&mut self, now: [u64; 3]) -> [u64; 3] {
        let d = std::array::from_fn(|i| now[i].saturating_sub(self.last[i]));
        self.last = now;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_nft_json_and_tallied() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"counter": {"family": "inet", "name": "tcp_refused", "table": "keyward", "packets": 2, "bytes": 140}},
          {"counter": {"family": "inet", "name": "udp_refused", "table": "keyward", "packets": 1, "bytes": 29}},
          {"counter": {"family": "inet", "name": "icmp_refused", "table": "other", "packets": 9, "bytes": 1}},
          {"counter": {"family": "inet", "name": "icmp_refused", "table": "keyward", "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(parse(json), Some([2, 1, 0]));
        assert_eq!(parse(br#"{"nftables": []}"#), None);
        assert_eq!(parse(b"not json"), None);
        let mut t = Tally::default();
        assert_eq!(t.deltas([2, 1, 0]), [2, 1, 0]);
        assert_eq!(t.deltas([5, 1, 1]), [3, 0, 1]);
    }
}
