//! `GET /v1/audit`: the newest matching lines of the audit log, as written (hash
//! included), filtered by `audit::Filter` plus `run_id`, at most a limit.
//!
//! [`AuditQuery::parse`] and [`query`] are the logic; [`http_query`] only renders.

use super::json::{json_response, query_pairs, unknown_parameter};
use super::vault_io::blocking;
use crate::audit::{self, Event};
use crate::body::Body;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use http::{Response, StatusCode};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;

/// `GET /v1/audit` returns at most this many lines when `limit` is absent …
pub const DEFAULT_AUDIT_LIMIT: usize = 1_000;
/// … and never more than this.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// Which audit lines `GET /v1/audit` returns: `audit::Filter` plus `run_id` and a
/// limit. Every set field must match.
#[derive(Debug)]
pub struct AuditQuery {
    pub filter: audit::Filter,
    pub run_id: Option<String>,
    pub limit: usize,
}

impl AuditQuery {
    /// Parses `secret=…&agent=…&since=1h&limit=…`; unknown keys are refused.
    pub fn parse(query: Option<&str>) -> Result<AuditQuery, Deny> {
        let mut q = AuditQuery {
            filter: audit::Filter::default(),
            run_id: None,
            limit: DEFAULT_AUDIT_LIMIT,
        };
        let now = OffsetDateTime::now_utc();
        let time = |v: &str| {
            audit::parse_time(v, now).map_err(|e| Deny::new(Code::BadRequest, e.to_string()))
        };
        for (k, v) in query_pairs(query) {
            let f = &mut q.filter;
            match k.as_str() {
                "secret" => f.secret = Some(v),
                "agent" => f.agent = Some(v),
                "chain" => f.chain = Some(v),
                "outcome" => f.outcome = Some(v),
                "event" => f.event = Some(v),
                "run_id" => q.run_id = Some(v),
                "since" => f.since = Some(time(&v)?),
                "until" => f.until = Some(time(&v)?),
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| Deny::new(Code::BadRequest, format!("invalid limit {v:?}")))?;
                    q.limit = n.clamp(1, MAX_AUDIT_LIMIT);
                }
                other => return Err(unknown_parameter(other)),
            }
        }
        Ok(q)
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.filter.matches(ev)
            && self
                .run_id
                .as_deref()
                .is_none_or(|r| ev.run_id.as_deref() == Some(r))
    }
}

/// The newest `limit` matching lines of the audit file set, oldest first, each as
/// written (hash included). Unreadable lines are skipped (`audit verify` reports them).
fn read_audit(path: &Path, q: &AuditQuery) -> Result<Vec<Value>, audit::AuditError> {
    let mut out = VecDeque::new();
    for rec in audit::query_iter(path, &q.filter)? {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable audit line");
                continue;
            }
        };
        if !q.matches(&rec.event) {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(&rec.line) else {
            continue;
        };
        if out.len() == q.limit {
            out.pop_front();
        }
        out.push_back(v);
    }
    Ok(out.into())
}

/// The lines matching `q` (read off the async executor).
pub async fn query(state: &State, q: AuditQuery) -> Result<Vec<Value>, Deny> {
    let path: PathBuf = state.audit.path().to_path_buf();
    if path == Path::new("-") {
        return Err(Deny::new(
            Code::AuditNotQueryable,
            "the audit log goes to stdout; query it where it is collected",
        ));
    }
    blocking(move || {
        read_audit(&path, &q).map_err(|e| {
            tracing::error!(error = %e, "audit log unreadable");
            Deny::new(Code::AuditUnavailable, "the audit log cannot be read")
        })
    })
    .await
}

/// `GET /v1/audit?…`: 200 with a JSON array of lines.
pub async fn http_query(state: &State, query_string: Option<&str>) -> Result<Response<Body>, Deny> {
    let q = AuditQuery::parse(query_string)?;
    let lines = query(state, q).await?;
    Ok(json_response(StatusCode::OK, Value::Array(lines)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventKind, Outcome};

    #[test]
    fn audit_query_parses_and_matches() {
        let q = AuditQuery::parse(Some("agent=a1&outcome=denied&run_id=r%3A1&limit=5")).unwrap();
        assert_eq!(q.limit, 5);
        let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
        ev.agent = Some("a1".into());
        ev.run_id = Some("r:1".into());
        assert!(q.matches(&ev));
        ev.run_id = Some("r:2".into());
        assert!(!q.matches(&ev));
        assert!(AuditQuery::parse(Some("agnet=a1")).is_err());
        assert!(AuditQuery::parse(Some("since=yesterday-ish")).is_err());
    }
}
