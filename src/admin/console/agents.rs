//! Agents pages: the list (config-file and registered agents), New agent (its
//! token is shown once, on the response page itself, never stored or shown
//! again) and Remove (confirmed by typing the id), through `admin::agents`'s own functions.

use super::forms::Form;
use super::layout::{
    csrf_field, field, form_error, html_response, once_field, page, redirect, with_code, Errors,
    Kind,
};
use super::{param, Page, PageResult};
use crate::admin::agents::{self as api, NewAgent};
use crate::admin::caller::Caller;
use crate::admin::Permission;
use crate::config::valid_agent_id;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use http::StatusCode;
use maud::{html, Markup};
use std::sync::Arc;

/// `GET /ui/agents`.
pub fn list(state: &Arc<State>, p: &Page, caller: &Caller, q: &[(String, String)]) -> PageResult {
    p.require(state, Permission::AgentsManage, caller)?;
    let rows = api::list(state);
    let notice =
        (param(q, "done") == "removed").then(|| format!("Removed agent {}.", param(q, "id")));
    let body = html! {
        @if let Some(n) = &notice { p.notice role="status" { (n) } }
        p.actions { a.button href="/ui/agents/new" { "New agent" } }
        @if rows.is_empty() { p { "No agents." } } @else {
            div.table-wrap { table {
                caption.visually-hidden { "Agents" }
                thead { tr {
                    th scope="col" { "Agent id" } th scope="col" { "Chain" } th scope="col" { "Owner" }
                    th scope="col" { "Source" } th scope="col" { "Created" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody { @for a in &rows { tr {
                    td data-label="Agent id" { code { (a.id) } }
                    td data-label="Chain" { (a.chain.as_deref().unwrap_or("—")) }
                    td data-label="Owner" { (a.owner.as_deref().unwrap_or("—")) }
                    td data-label="Source" { (a.source) }
                    td data-label="Created" { (a.created.as_deref().map(super::secrets::short_time).unwrap_or_else(|| "—".into())) }
                    td.row-actions {
                        @if a.source == "vault" {
                            a.danger href=(format!("/ui/agents/remove?id={}", enc(&a.id))) aria-label=(format!("Remove {}", a.id)) { "Remove" }
                        } @else { span.muted { "in config file" } }
                    }
                } } }
            } }
        }
    };
    Ok(html_response(StatusCode::OK, page(p, "Agents", body)))
}

fn new_markup(state: &State, p: &Page, id: &str, chain: &str, errors: &Errors) -> Markup {
    let chains: Vec<String> = state
        .runtime()
        .config
        .chains
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let err = errors.get("chain");
    html! {
        (form_error(errors))
        form method="post" action="/ui/agents/new" {
            (csrf_field(&p.csrf))
            (once_field())
            (field("Agent id", "id", id, Kind::Text, Some("Letters, digits, '-', '_', '.'."), errors))
            div.field {
                label for="f-chain" { "Chain" }
                select id="f-chain" name="chain" aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| "f-chain-err")] {
                    option value="" selected[chain.is_empty()] { "(none)" }
                    @for c in &chains { option value=(c) selected[c == chain] { (c) } }
                }
                @if let Some(e) = err { p.error id="f-chain-err" role="alert" { (e) } }
            }
            div.buttons {
                button type="submit" { "Create" }
                a.button.secondary href="/ui/agents" { "Cancel" }
            }
        }
    }
}

/// `GET /ui/agents/new`.
pub fn new_form(state: &Arc<State>, p: &Page, caller: &Caller) -> PageResult {
    p.require(state, Permission::AgentsManage, caller)?;
    let m = new_markup(state, p, "", "", &Errors::default());
    Ok(html_response(StatusCode::OK, page(p, "New agent", m)))
}

/// The show-once token block.
pub fn token_once(label: &str, token: &str) -> Markup {
    html! {
        p.notice role="status" { "Copy the token now: it is shown only once and keyward keeps only its hash." }
        div.field {
            label for="f-token" { (label) }
            input.token type="text" id="f-token" value=(token) readonly autocomplete="off" spellcheck="false";
        }
        button.secondary type="button" data-copy="f-token" { "Copy" }
    }
}

/// `POST /ui/agents/new`: 201 with the token on this page only (no redirect, so
/// no URL or later page carries it; `no-store`, so back/reload cannot show it).
pub async fn create(state: &Arc<State>, p: &Page, caller: &Caller, form: Form) -> PageResult {
    let id = form.text("id");
    let chain = form.text("chain");
    let mut errors = Errors::default();
    if !valid_agent_id(&id) {
        errors.add("id", "Use letters, digits, '-', '_', '.' (at most 128).");
    }
    if !chain.is_empty()
        && !state
            .runtime()
            .config
            .chains
            .iter()
            .any(|c| c.name == chain)
    {
        errors.add("chain", format!("No chain named {chain:?}."));
    }
    let refused = |errors: &Errors, code: Code| {
        let m = new_markup(state, p, &id, &chain, errors);
        let mut resp = html_response(code.status(), page(p, "New agent", m));
        with_code(&mut resp, code);
        resp
    };
    if !errors.is_empty() {
        return Ok(refused(&errors, Code::BadRequest));
    }
    let body = NewAgent {
        id: id.clone(),
        chain: (!chain.is_empty()).then(|| chain.clone()),
        owner: None,
        builder: None,
        secrets: None,
    };
    match api::create(state, caller, body).await {
        Ok(created) => {
            let m = html! {
                p { "Agent " code { (created.id) } " is registered. Give it this proxy token:" }
                (token_once("Agent token", &created.token))
                p { a href="/ui/agents" { "Back to agents" } }
            };
            Ok(html_response(
                StatusCode::CREATED,
                page(p, "Agent created", m),
            ))
        }
        Err(d) if matches!(d.code, Code::BadRequest | Code::Conflict) => {
            errors.add("id", d.message.clone());
            Ok(refused(&errors, d.code))
        }
        Err(d) => Err(d),
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn remove_markup(p: &Page, id: &str, errors: &Errors) -> Markup {
    html! {
        (form_error(errors))
        p { "Removes agent " code { (id) } ". Its proxy token stops working at once." }
        form method="post" action="/ui/agents/remove" {
            (csrf_field(&p.csrf))
            input type="hidden" name="id" value=(id);
            (field("Type the agent id to confirm", "confirm", "", Kind::Text, None, errors))
            div.buttons {
                button.danger type="submit" { "Remove" }
                a.button.secondary href="/ui/agents" { "Cancel" }
            }
        }
    }
}

/// A registered agent (config-file agents are removed in the config file).
fn registered(state: &State, id: &str) -> Result<(), Deny> {
    match api::list(state).into_iter().find(|a| a.id == id) {
        Some(a) if a.source == "vault" => Ok(()),
        Some(_) => Err(Deny::new(
            Code::Conflict,
            format!("agent {id} is defined in the config file; remove it there"),
        )),
        None => Err(Deny::new(Code::NotFound, format!("agent {id} not found"))),
    }
}

/// `GET /ui/agents/remove?id=`: the confirmation page.
pub fn remove_form(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
) -> PageResult {
    p.require(state, Permission::AgentsManage, caller)?;
    let id = param(q, "id");
    registered(state, id)?;
    let m = remove_markup(p, id, &Errors::default());
    Ok(html_response(
        StatusCode::OK,
        page(p, &format!("Remove {id}"), m),
    ))
}

/// `POST /ui/agents/remove`: only when the typed id matches.
pub async fn remove(state: &Arc<State>, p: &Page, caller: &Caller, form: Form) -> PageResult {
    let id = form.text("id");
    if form.text("confirm") != id {
        registered(state, &id)?;
        let mut errors = Errors::default();
        errors.add("confirm", format!("Type {id} exactly to remove it."));
        let m = remove_markup(p, &id, &errors);
        let mut resp = html_response(
            Code::BadRequest.status(),
            page(p, &format!("Remove {id}"), m),
        );
        with_code(&mut resp, Code::BadRequest);
        return Ok(resp);
    }
    match api::remove(state, caller, &id).await {
        Ok(()) => Ok(redirect(&format!(
            "/ui/agents?done=removed&id={}",
            enc(&id)
        ))),
        Err(d) => Err(d),
    }
}
