//! Status page: health, the readiness checks of `/readyz`, and the counts of
//! injections and denials since start.

use super::layout::{html_response, page};
use super::Page;
use crate::admin::status::readiness;
use crate::body::Body;
use crate::metrics::OutcomeLabel;
use crate::proxy::state::State;
use http::{Response, StatusCode};
use maud::html;
use std::sync::Arc;

fn count(state: &State, outcome: &str) -> u64 {
    state
        .metrics
        .requests
        .get_or_create(&OutcomeLabel {
            outcome: outcome.into(),
        })
        .get()
}

/// `GET /ui/status`.
pub fn show(state: &Arc<State>, p: &Page) -> Response<Body> {
    let checks = readiness(state);
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body = html! {
        dl.stats {
            div { dt { "Health" } dd { span.badge.allowed { "ok" } } }
            div { dt { "Readiness" } dd {
                @if ready { span.badge.allowed { "ready" } } @else { span.badge.denied { "not ready" } }
            } }
            div { dt { "Injections" } dd { (count(state, "allowed")) } }
            div { dt { "Denials" } dd { (count(state, "denied")) } }
        }
        h2 { "Readiness checks" }
        div.table-wrap { table {
            thead { tr { th scope="col" { "Check" } th scope="col" { "Result" } } }
            tbody { @for (name, r) in &checks { tr {
                td data-label="Check" { (name) }
                td data-label="Result" { @match r {
                    Ok(()) => { span.badge.allowed { "ok" } }
                    Err(m) => { span.badge.denied { (m) } }
                } }
            } } }
        } }
        p.meta { "Counts are since this keyward started; " a href="/metrics" { "/metrics" } " has them per provider and code." }
    };
    html_response(StatusCode::OK, page(p, "Status", body))
}
