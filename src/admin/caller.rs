//! Who is calling the admin API and what they asked for, and the audit lines
//! written on their behalf: the identity every resource's logic takes, whether the
//! call came over HTTP (`routes`) or, later, from the console.

use crate::audit::{Event, EventKind, Outcome};
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use http::StatusCode;

/// Who is calling and what, for audit lines.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The admin token's name (never the token); `None` before authentication.
    pub actor: Option<String>,
    pub method: String,
    pub path: String,
}

impl Caller {
    /// A caller not (yet) authenticated.
    pub fn anonymous(method: impl Into<String>, path: impl Into<String>) -> Caller {
        Caller {
            actor: None,
            method: method.into(),
            path: path.into(),
        }
    }

    /// This caller, authenticated as the admin token called `actor`.
    pub fn acting_as(self, actor: String) -> Caller {
        Caller {
            actor: Some(actor),
            ..self
        }
    }

    /// An audit line about this call: request id, method, path, status, and
    /// `reason: "admin:<token name>"` once authenticated.
    pub fn event(&self, event: EventKind, outcome: Outcome, status: StatusCode) -> Event {
        let mut ev = Event::new(event, outcome);
        ev.request_id = Some(crate::ids::request_id());
        ev.method = Some(self.method.clone());
        ev.path = Some(self.path.clone());
        ev.status = Some(status.as_u16());
        ev.reason = self.actor.as_ref().map(|a| format!("admin:{a}"));
        ev
    }
}

/// Records an audit line for a change; the caller fails closed when this errors.
pub fn record_change(state: &State, ev: Event) -> Result<(), Deny> {
    state.audit.record(ev).map(|_| ()).map_err(|e| {
        tracing::error!(error = %e, "audit log unwritable");
        Deny::new(Code::AuditUnavailable, "the audit log cannot be written")
    })
}
