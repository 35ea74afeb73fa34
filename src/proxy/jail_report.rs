//! Reports from `keyward run`'s relay (SPEC §12 `jail_block`): refusals the jail
//! sees that never reach `keyward serve` as a request of their own (a DNS lookup
//! of a name keyward would refuse, keyward unreachable, a CONNECT keyward
//! refused). The relay sends, rate-limited on its side, an authenticated
//! `CONNECT jail-report.keyward.invalid:9` whose headers carry how many refusals
//! since its last report and the latest one; this records them in the one audit
//! log (`event: jail_block`, the agent is the jail's) and in
//! `keyward_jail_blocks_total`. Nothing is dialled.

use super::error::{Code, Deny};
use super::state::State;
use super::{empty, Body};
use crate::audit::{Event, EventKind, Outcome};
use http::{Request, Response, StatusCode};

/// The CONNECT host a report goes to (`.invalid` never resolves, RFC 6761).
pub const REPORT_HOST: &str = "jail-report.keyward.invalid";
/// How many refusals this report covers (a decimal count).
pub const HEADER_COUNT: &str = "x-keyward-jail-blocks";
/// The latest refusal, as the relay logs it.
pub const HEADER_WHAT: &str = "x-keyward-jail-what";
/// The largest count one report may carry.
pub const MAX_COUNT: u64 = 1_000_000;
/// Longest description kept in the audit line.
pub const MAX_WHAT: usize = 200;

/// Records an authenticated report (`ev` carries the agent) and answers 204.
pub fn record<B>(state: &State, req: &Request<B>, ev: &mut Event) -> Result<Response<Body>, Deny> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let count = header(HEADER_COUNT)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| (1..=MAX_COUNT).contains(n))
        .ok_or_else(|| {
            Deny::new(
                Code::BadRequest,
                "a jail report needs x-keyward-jail-blocks: 1..1000000",
            )
        })?;
    // Printable ASCII only, bounded: the line is the relay's, not the jailed program's.
    let what: String = header(HEADER_WHAT)
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(MAX_WHAT)
        .collect();
    state.metrics.jail_blocks.inc_by(count);
    ev.event = EventKind::JailBlock;
    ev.outcome = Outcome::Denied;
    ev.host = None;
    ev.method = None;
    ev.reason = Some(format!("{count} refused; latest: {what}"));
    // SECURITY: fail closed like every audited decision: an unwritable log is an error.
    state
        .audit
        .record(ev.clone())
        .map_err(|_| Deny::new(Code::AuditUnavailable, "the audit log cannot be written"))?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
