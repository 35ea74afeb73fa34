//! The one refusal path, wherever a refusal happens (CONNECT, a request in a
//! tunnel, a connection over the cap, the admin API): count it, write its one
//! audit line, log it, render it. The decision itself (`Deny`: code + message) is
//! made where the check is; this file only records and answers it.

use super::error::{Code, Deny};
use super::state::State;
use crate::audit::{Event, EventKind, Outcome};
use crate::body::Body;
use http::Response;

/// Records `deny` (metrics, audit, log) on `ev` and renders the answer.
pub fn refuse(state: &State, deny: &Deny, ev: Event) -> Response<Body> {
    let (agent, host) = (ev.agent.clone(), ev.host.clone());
    record(state, deny, ev);
    deny.response(agent.as_deref(), host.as_deref())
}

/// [`refuse`] without the rendering, for a refusal whose answer is written by
/// other means (the pre-rendered 503 over `max_connections`).
pub fn record(state: &State, deny: &Deny, mut ev: Event) {
    state.metrics.deny(deny.code.as_str());
    let status = deny.code.status();
    ev.event = refusal_kind(ev.event, deny.code);
    ev.outcome = if deny.code.is_fault() {
        Outcome::Error
    } else {
        Outcome::Denied
    };
    // Admin refusals carry their own reason ("unknown admin token"); the
    // proxy's reason is the code.
    let admin = matches!(
        ev.event,
        EventKind::AdminAuthFail | EventKind::AdminForbidden
    );
    if !admin || ev.reason.is_none() {
        ev.reason = Some(deny.code.as_str().to_string());
    }
    ev.status = Some(status.as_u16());
    tracing::info!(
        code = deny.code.as_str(),
        agent = ev.agent.as_deref(),
        host = ev.host.as_deref(),
        "refused"
    );
    if let Err(e) = state.audit.record(ev) {
        tracing::error!(error = %e, "audit log unwritable while refusing");
    }
}

/// What kind of line a refusal is: a failed proxy login is `auth_fail`; a request
/// already injected that then failed upstream stays `upstream_error`; admin
/// refusals keep their own kinds; anything else is a policy `deny`.
fn refusal_kind(current: EventKind, code: Code) -> EventKind {
    match current {
        EventKind::UpstreamError | EventKind::AdminAuthFail | EventKind::AdminForbidden => current,
        _ if code == Code::ProxyAuthRequired => EventKind::AuthFail,
        _ => EventKind::Deny,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_a_deny_unless_it_is_a_login_an_upstream_failure_or_admin() {
        let table = [
            (EventKind::Inject, Code::HostNotAllowed, EventKind::Deny),
            (EventKind::Tunnel, Code::AuditUnavailable, EventKind::Deny),
            (
                EventKind::Deny,
                Code::ProxyAuthRequired,
                EventKind::AuthFail,
            ),
            (
                EventKind::UpstreamError,
                Code::UpstreamTimeout,
                EventKind::UpstreamError,
            ),
            (
                EventKind::AdminAuthFail,
                Code::Unauthorized,
                EventKind::AdminAuthFail,
            ),
            (
                EventKind::AdminForbidden,
                Code::Forbidden,
                EventKind::AdminForbidden,
            ),
        ];
        for (current, code, want) in table {
            assert_eq!(refusal_kind(current, code), want, "{current:?} + {code:?}");
        }
    }
}
