//! Sessions page: New session (`Agent`, `Run id`, `TTL`) through
//! `admin::sessions::create`; the token is shown once on the response page.

use super::agents::token_once;
use super::forms::Form;
use super::layout::{
    csrf_field, field, form_error, html_response, once_field, page, with_code, Errors, Kind,
};
use super::{Page, PageResult};
use crate::admin::caller::Caller;
use crate::admin::sessions::{self as api, NewSession, Ttl};
use crate::admin::{Permission, DEFAULT_SESSION_TTL_SECS};
use crate::proxy::error::Code;
use crate::proxy::state::State;
use http::StatusCode;
use maud::{html, Markup};
use std::sync::Arc;

fn markup(p: &Page, agent: &str, run_id: &str, ttl: &str, errors: &Errors) -> Markup {
    html! {
        p { "A session token is a short-lived proxy token for one agent and one run; its run id is in every audit line the run causes." }
        (form_error(errors))
        form method="post" action="/ui/sessions/new" {
            (csrf_field(&p.csrf))
            (once_field())
            (field("Agent", "agent", agent, Kind::Text, None, errors))
            (field("Run id", "run_id", run_id, Kind::Text, Some("Letters, digits, '-', '_', '.', ':'."), errors))
            (field("TTL", "ttl", ttl, Kind::Text, Some("e.g. 15m or 1h."), errors))
            div.buttons { button type="submit" { "New session" } }
        }
    }
}

fn default_ttl() -> String {
    format!("{}m", DEFAULT_SESSION_TTL_SECS / 60)
}

/// `GET /ui/sessions`.
pub fn form(state: &Arc<State>, p: &Page, caller: &Caller) -> PageResult {
    p.require(state, Permission::SessionsCreate, caller)?;
    let m = markup(p, "", "", &default_ttl(), &Errors::default());
    Ok(html_response(StatusCode::OK, page(p, "Sessions", m)))
}

/// `POST /ui/sessions/new`: 201 with the token on this page only.
pub fn create(state: &Arc<State>, p: &Page, caller: &Caller, form: Form) -> PageResult {
    let (agent, run_id, ttl) = (form.text("agent"), form.text("run_id"), form.text("ttl"));
    let mut errors = Errors::default();
    if agent.is_empty() {
        errors.add("agent", "Enter an agent id.");
    }
    if run_id.is_empty() {
        errors.add("run_id", "Enter a run id.");
    }
    if !ttl.is_empty() && humantime::parse_duration(&ttl).is_err() {
        errors.add("ttl", "Use a duration such as 15m or 1h.");
    }
    let refused = |errors: &Errors, code: Code| {
        let m = markup(p, &agent, &run_id, &ttl, errors);
        let mut resp = html_response(code.status(), page(p, "Sessions", m));
        with_code(&mut resp, code);
        Ok(resp)
    };
    if !errors.is_empty() {
        return refused(&errors, Code::BadRequest);
    }
    let body = NewSession {
        agent: agent.clone(),
        run_id: run_id.clone(),
        ttl: (!ttl.is_empty()).then(|| Ttl::Text(ttl.clone())),
    };
    match api::create(state, caller, body) {
        Ok(issued) => {
            let url = issued.proxy_url();
            let m = html! {
                p { "Session for " code { (issued.agent) } " (run " code { (run_id) } "), valid until "
                    (crate::clock::rfc3339(issued.expires)) "." }
                (token_once("Session token", &issued.token))
                div.field {
                    label for="f-proxy-url" { "HTTPS_PROXY" }
                    input.token type="text" id="f-proxy-url" value=(url.as_str()) readonly autocomplete="off" spellcheck="false";
                }
                p { a href="/ui/sessions" { "Back to sessions" } }
            };
            Ok(html_response(
                StatusCode::CREATED,
                page(p, "Session created", m),
            ))
        }
        Err(d) if matches!(d.code, Code::BadRequest | Code::NotFound) => {
            let f = if d.code == Code::NotFound {
                "agent"
            } else if d.message.contains("run_id") {
                "run_id"
            } else {
                "ttl"
            };
            errors.add(f, d.message.clone());
            refused(&errors, d.code)
        }
        Err(d) => Err(d),
    }
}
