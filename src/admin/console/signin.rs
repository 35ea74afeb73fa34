//! Sign-in (`Admin token`, `Sign in`) and Sign out. A failed sign-in goes through
//! the admin API's authentication, so it is audited as an admin 401
//! (`admin_auth_fail`), without the token.

use super::forms::Form;
use super::layout::{bare, field, html_response, redirect, with_code, Errors, Kind};
use super::{idle, param, params, Console, COOKIE};
use crate::admin::auth;
use crate::admin::caller::Caller;
use crate::body::Body;
use crate::proxy::error::Code;
use crate::proxy::state::State;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use maud::html;
use std::sync::Arc;

/// The sign-in form, with a note when a session ended.
pub fn form(query: Option<&str>) -> Response<Body> {
    let q = params(query);
    let note = if param(&q, "expired") == "1" {
        Some("Your session ended. Sign in again.")
    } else if param(&q, "signed_out") == "1" {
        Some("You are signed out.")
    } else {
        None
    };
    render(note, &Errors::default(), StatusCode::OK)
}

fn render(note: Option<&str>, errors: &Errors, status: StatusCode) -> Response<Body> {
    let body = html! {
        @if let Some(n) = note { p.notice role="status" { (n) } }
        form method="post" action="/ui/signin" {
            (field("Admin token", "token", "", Kind::Secret,
                Some("A token from [admin].tokens; it stays on the server for this session."), errors))
            button type="submit" { "Sign in" }
        }
    };
    html_response(status, bare("Sign in", body))
}

/// `POST /ui/signin`: a session for a configured admin token, or the audited 401.
pub async fn post(state: &Arc<State>, console: &Console, req: Request<Incoming>) -> Response<Body> {
    let mut form = match Form::read(req).await {
        Ok(f) => f,
        Err(d) => return super::layout::refusal(None, &d),
    };
    let token = form.token("token");
    let caller = Caller::anonymous("POST", "/ui/signin");
    // SECURITY: the one admin authentication (constant-time digest compare, live
    // config); a failure is audited like an admin API 401 and the token is not
    // echoed back into the page.
    if let Err(deny) = auth::authenticate(state, token.as_deref().map(String::as_str), &caller) {
        let mut errors = Errors::default();
        let msg = if token.is_some() {
            "That is not a configured admin token."
        } else {
            "Enter an admin token."
        };
        errors.add("token", msg);
        let mut resp = render(None, &errors, deny.code.status());
        with_code(&mut resp, Code::Unauthorized);
        return resp;
    }
    let Some(token) = token else {
        return redirect("/ui/signin");
    };
    let id = console.sessions.create(token, idle(state));
    let mut resp = redirect("/ui/secrets");
    // SECURITY: the session id is readable by no script (HttpOnly), sent by no
    // other site (SameSite=Strict), and only to the console's paths.
    let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// After `Sign out`: the cookie is cleared and the sign-in page says so.
pub fn signed_out() -> Response<Body> {
    let mut resp = redirect("/ui/signin?signed_out=1");
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}
