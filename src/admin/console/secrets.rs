//! Secrets pages: the list (hint, description, version, updated, `Due for
//! rotation`), New secret, Edit (a new value and/or the description; the name
//! is not editable), Clone to a target scope, Delete confirmed by typing the name. Every
//! change is `admin::secrets`'s own function: same checks, same audit lines.

use super::forms::Form;
use super::layout::{
    csrf_field, field, form_error, html_response, page, redirect, with_code, Errors, Kind,
};
use super::{param, Page, PageResult};
use crate::admin::caller::Caller;
use crate::admin::secrets::{self as api, PutSecret, SecretValue};
use crate::admin::Permission;
use crate::config::valid_secret_name;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use crate::vault::{valid_scope, RecordMeta};
use http::StatusCode;
use maud::{html, Markup};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::sync::Arc;
use time::OffsetDateTime;

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn row_link(action: &str, m: &RecordMeta) -> String {
    format!(
        "/ui/secrets/{action}?scope={}&name={}",
        enc(&m.scope),
        enc(&m.name)
    )
}

/// `GET /ui/secrets`.
pub fn list(state: &Arc<State>, p: &Page, caller: &Caller, q: &[(String, String)]) -> PageResult {
    let manage = p.can(Permission::SecretsManage);
    let notice = match param(q, "done") {
        "saved" => Some(format!(
            "Saved {} in {}.",
            param(q, "name"),
            param(q, "scope")
        )),
        "cloned" => Some(format!(
            "Cloned {} to {}.",
            param(q, "name"),
            param(q, "scope")
        )),
        "deleted" => Some(format!(
            "Deleted {} from {}.",
            param(q, "name"),
            param(q, "scope")
        )),
        _ => None,
    };
    let rows = if p.can(Permission::SecretsRead) {
        p.require(state, Permission::SecretsRead, caller)?;
        Some(api::list(state, None))
    } else {
        None
    };
    let now = OffsetDateTime::now_utc();
    let body = html! {
        @if let Some(n) = &notice { p.notice role="status" { (n) } }
        @if manage { p.actions { a.button href="/ui/secrets/new" { "New secret" } } }
        @match &rows {
            None => { p { "This admin token cannot list secrets (it lacks secrets:read)." } }
            Some(rows) if rows.is_empty() => { p { "No secrets yet." } }
            Some(rows) => {
                div.table-wrap {
                    table {
                        caption.visually-hidden { "Secrets" }
                        thead { tr {
                            th scope="col" { "Name" } th scope="col" { "Scope" } th scope="col" { "Hint" }
                            th scope="col" { "Description" } th scope="col" { "Version" }
                            th scope="col" { "Updated" } th scope="col" { "Rotation" }
                            @if manage { th scope="col" { span.visually-hidden { "Actions" } } }
                        } }
                        tbody {
                            @for m in rows {
                                tr {
                                    td data-label="Name" { code { (m.name) } }
                                    td data-label="Scope" { (m.scope) }
                                    td data-label="Hint" { code { (m.hint) } }
                                    td data-label="Description" { (m.description.as_deref().unwrap_or("")) }
                                    td data-label="Version" { (m.version) }
                                    td data-label="Updated" { time datetime=(m.updated) { (short_time(&m.updated)) } }
                                    td data-label="Rotation" { (rotation_cell(m, now)) }
                                    @if manage {
                                        td.row-actions {
                                            a href=(row_link("edit", m)) aria-label=(format!("Edit {} in {}", m.name, m.scope)) { "Edit" }
                                            a href=(row_link("clone", m)) aria-label=(format!("Clone {} in {}", m.name, m.scope)) { "Clone" }
                                            a.danger href=(row_link("delete", m)) aria-label=(format!("Delete {} in {}", m.name, m.scope)) { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(StatusCode::OK, page(p, "Secrets", body)))
}

/// The Rotation column at `now`: the `Due for rotation` badge once the rotation
/// period has passed, the due date before that, `—` without a period.
pub fn rotation_cell(m: &RecordMeta, now: OffsetDateTime) -> Markup {
    html! {
        @if m.due_at().is_some_and(|d| d <= now) {
            span.badge.due { "Due for rotation" }
        } @else if let Some(d) = &m.rotation_due {
            "due " (short_time(d))
        } @else { "—" }
    }
}

/// `2024-05-01T12:00:00Z` → `2024-05-01 12:00`.
pub fn short_time(ts: &str) -> String {
    ts.get(..16)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| ts.to_string())
}

/// What the New secret form holds (never the value).
#[derive(Default)]
struct NewValues {
    name: String,
    scope: String,
    description: String,
    hosts: String,
    rotate_every: String,
}

fn new_markup(p: &Page, v: &NewValues, errors: &Errors) -> Markup {
    html! {
        (form_error(errors))
        form method="post" action="/ui/secrets/new" {
            (csrf_field(&p.csrf))
            (field("Name", "name", &v.name, Kind::Text, Some("Upper case, digits and _, e.g. OPENAI_API_KEY."), errors))
            (field("Scope", "scope", &v.scope, Kind::Text, Some("platform, owner:NAME, builder:NAME, chain:NAME or agent:NAME."), errors))
            (field("Value", "value", "", Kind::Secret, Some("Stored sealed; only a hint is shown afterwards."), errors))
            (field("Description", "description", &v.description, Kind::Text, None, errors))
            (field("Allowed hosts", "hosts", &v.hosts, Kind::Text, Some("Optional, comma separated; empty uses the provider's hosts."), errors))
            (field("Rotate every", "rotate_every", &v.rotate_every, Kind::Text, Some("Optional, e.g. 90d."), errors))
            div.buttons {
                button type="submit" { "Save" }
                a.button.secondary href="/ui/secrets" { "Cancel" }
            }
        }
    }
}

/// `GET /ui/secrets/new`.
pub fn new_form(state: &Arc<State>, p: &Page, caller: &Caller) -> PageResult {
    p.require(state, Permission::SecretsManage, caller)?;
    let v = NewValues {
        scope: "platform".into(),
        ..NewValues::default()
    };
    Ok(html_response(
        StatusCode::OK,
        page(p, "New secret", new_markup(p, &v, &Errors::default())),
    ))
}

/// A refused form: 400 (or the refusal's status) with the errors next to the fields.
fn refused(p: &Page, title: &str, markup: Markup, code: Code) -> PageResult {
    let mut resp = html_response(code.status(), page(p, title, markup));
    with_code(&mut resp, code);
    Ok(resp)
}

fn hosts_of(s: &str) -> Vec<String> {
    s.split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

/// Puts a refusal of `admin::secrets` next to the field it is about.
fn place(errors: &mut Errors, d: &Deny) {
    let m = d.message.as_str();
    let field = if m.contains("rotate_every") || m.contains("rotation") {
        Some("rotate_every")
    } else if m.contains("host") {
        Some("hosts")
    } else if m.contains("\"value\"") || m.contains("value") {
        Some("value")
    } else if m.contains("scope") {
        Some("scope")
    } else if m.contains("name") {
        Some("name")
    } else {
        None
    };
    match field {
        Some(f) => errors.add(f, m.to_string()),
        None => errors.form = Some(m.to_string()),
    }
}

/// `POST /ui/secrets/new`: a new secret (an existing name is refused: use Edit).
pub async fn create(state: &Arc<State>, p: &Page, caller: &Caller, mut form: Form) -> PageResult {
    let v = NewValues {
        name: form.text("name"),
        scope: form.text("scope"),
        description: form.text("description"),
        hosts: form.text("hosts"),
        rotate_every: form.text("rotate_every"),
    };
    let value = form.secret("value");
    let mut errors = Errors::default();
    if !valid_secret_name(&v.name) {
        errors.add(
            "name",
            "Use upper-case letters, digits and _ (e.g. OPENAI_API_KEY).",
        );
    }
    if !valid_scope(&v.scope) {
        errors.add(
            "scope",
            "Unknown scope: use platform, owner:NAME, builder:NAME, chain:NAME or agent:NAME.",
        );
    }
    if value.is_none() {
        errors.add("value", "Enter the value.");
    }
    if !v.rotate_every.is_empty() && humantime::parse_duration(&v.rotate_every).is_err() {
        errors.add("rotate_every", "Use a period such as 90d, 12w or 24h.");
    }
    if errors.is_empty() && api::get(state, &v.scope, &v.name).is_ok() {
        errors.add(
            "name",
            format!(
                "{} already exists in {}; use Edit to change it.",
                v.name, v.scope
            ),
        );
    }
    let Some(value) = value.filter(|_| errors.is_empty()) else {
        let m = new_markup(p, &v, &errors);
        return refused(p, "New secret", m, Code::BadRequest);
    };
    let body = PutSecret {
        value: Some(SecretValue(value)),
        description: (!v.description.is_empty()).then(|| v.description.clone()),
        hosts: Some(hosts_of(&v.hosts)),
        rotate_every: (!v.rotate_every.is_empty()).then(|| v.rotate_every.clone()),
        kind: None,
    };
    match api::put(state, caller, &v.scope, &v.name, body).await {
        Ok(stored) => Ok(redirect(&format!(
            "/ui/secrets?done=saved&scope={}&name={}",
            enc(&stored.meta.scope),
            enc(&stored.meta.name)
        ))),
        Err(d) if d.code == Code::BadRequest => {
            place(&mut errors, &d);
            let m = new_markup(p, &v, &errors);
            refused(p, "New secret", m, d.code)
        }
        Err(d) => Err(d),
    }
}

/// The secret a row action is about (from `?scope=&name=` or the form).
fn target(state: &State, scope: &str, name: &str) -> Result<RecordMeta, Deny> {
    api::get(state, scope, name)
}

/// `GET` of a row action's form (`?scope=&name=`): the manage permission, the
/// secret, and the page titled "VERB name" around `markup`.
fn row_form(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
    verb: &str,
    markup: impl FnOnce(&RecordMeta) -> Markup,
) -> PageResult {
    p.require(state, Permission::SecretsManage, caller)?;
    let m = target(state, param(q, "scope"), param(q, "name"))?;
    let title = format!("{verb} {}", m.name);
    Ok(html_response(StatusCode::OK, page(p, &title, markup(&m))))
}

fn edit_markup(p: &Page, m: &RecordMeta, description: &str, errors: &Errors) -> Markup {
    html! {
        (form_error(errors))
        form method="post" action="/ui/secrets/edit" {
            (csrf_field(&p.csrf))
            input type="hidden" name="scope" value=(m.scope);
            (field("Name", "name", &m.name, Kind::ReadOnly, Some("The name cannot be changed."), errors))
            p.meta { "Scope " strong { (m.scope) } " · version " (m.version) " · hint " code { (m.hint) } }
            (field("Value", "value", "", Kind::Secret, Some("The new value: saving stores it as the next version. Leave it empty to change only the description."), errors))
            (field("Description", "description", description, Kind::Text, None, errors))
            div.buttons {
                button type="submit" { "Save" }
                a.button.secondary href="/ui/secrets" { "Cancel" }
            }
        }
    }
}

/// `GET /ui/secrets/edit?scope=&name=`.
pub fn edit_form(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
) -> PageResult {
    row_form(state, p, caller, q, "Edit", |m| {
        let desc = m.description.clone().unwrap_or_default();
        edit_markup(p, m, &desc, &Errors::default())
    })
}

/// `POST /ui/secrets/edit`: a new value (version + 1) and/or description. With
/// no value, a changed description alone is stored (`secret_describe`, same
/// version): the console never reads a value back to re-store it.
pub async fn edit(state: &Arc<State>, p: &Page, caller: &Caller, mut form: Form) -> PageResult {
    let m = target(state, &form.text("scope"), &form.text("name"))?;
    // An absent field (not sent at all) leaves the description as it is; an
    // empty one clears it.
    let description = match form.raw("description") {
        Some(_) => form.text("description"),
        None => m.description.clone().unwrap_or_default(),
    };
    let title = format!("Edit {}", m.name);
    let refuse = |d: &Deny, description: &str| {
        let mut errors = Errors::default();
        place(&mut errors, d);
        let mk = edit_markup(p, &m, description, &errors);
        refused(p, &title, mk, d.code)
    };
    let saved = |meta: &RecordMeta| {
        redirect(&format!(
            "/ui/secrets?done=saved&scope={}&name={}",
            enc(&meta.scope),
            enc(&meta.name)
        ))
    };
    let Some(value) = form.secret("value") else {
        if m.description.as_deref().unwrap_or("") == description {
            let mut errors = Errors::default();
            errors.add(
                "value",
                "Enter a new value, or change the description (the vault keeps no copy of the value to re-use).",
            );
            let mk = edit_markup(p, &m, &description, &errors);
            return refused(p, &title, mk, Code::BadRequest);
        }
        let new = (!description.is_empty()).then(|| description.clone());
        return match api::describe(state, caller, &m.scope, &m.name, new).await {
            Ok(meta) => Ok(saved(&meta)),
            Err(d) if d.code == Code::BadRequest => {
                let mut errors = Errors::default();
                errors.add("description", d.message.clone());
                let mk = edit_markup(p, &m, &description, &errors);
                refused(p, &title, mk, d.code)
            }
            Err(d) => Err(d),
        };
    };
    let body = PutSecret {
        value: Some(SecretValue(value)),
        description: (!description.is_empty()).then(|| description.clone()),
        hosts: None,
        rotate_every: None,
        kind: None,
    };
    match api::put(state, caller, &m.scope, &m.name, body).await {
        Ok(stored) => Ok(saved(&stored.meta)),
        Err(d) if d.code == Code::BadRequest => refuse(&d, &description),
        Err(d) => Err(d),
    }
}

fn clone_markup(p: &Page, m: &RecordMeta, to: &str, errors: &Errors) -> Markup {
    html! {
        (form_error(errors))
        p { "Copies " code { (m.name) } " from " strong { (m.scope) } " (value, description, hosts and rotation period) into another scope, as version 1." }
        form method="post" action="/ui/secrets/clone" {
            (csrf_field(&p.csrf))
            input type="hidden" name="scope" value=(m.scope);
            input type="hidden" name="name" value=(m.name);
            (field("Target scope", "target", to, Kind::Text, Some("e.g. owner:acme or chain:triage."), errors))
            div.buttons {
                button type="submit" { "Clone" }
                a.button.secondary href="/ui/secrets" { "Cancel" }
            }
        }
    }
}

/// `GET /ui/secrets/clone?scope=&name=`.
pub fn clone_form(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
) -> PageResult {
    row_form(state, p, caller, q, "Clone", |m| {
        clone_markup(p, m, "", &Errors::default())
    })
}

/// `POST /ui/secrets/clone`.
pub async fn clone(state: &Arc<State>, p: &Page, caller: &Caller, form: Form) -> PageResult {
    let m = target(state, &form.text("scope"), &form.text("name"))?;
    let to = form.text("target");
    let title = format!("Clone {}", m.name);
    let mut errors = Errors::default();
    if !valid_scope(&to) {
        errors.add(
            "target",
            "Unknown scope: use platform, owner:NAME, builder:NAME, chain:NAME or agent:NAME.",
        );
    } else if to == m.scope {
        errors.add("target", "Choose a scope other than the secret's own.");
    }
    if !errors.is_empty() {
        let mk = clone_markup(p, &m, &to, &errors);
        return refused(p, &title, mk, Code::BadRequest);
    }
    match api::clone_to(state, caller, &m.scope, &m.name, &to).await {
        Ok(meta) => Ok(redirect(&format!(
            "/ui/secrets?done=cloned&scope={}&name={}",
            enc(&meta.scope),
            enc(&meta.name)
        ))),
        Err(d) if matches!(d.code, Code::BadRequest | Code::Conflict) => {
            errors.add("target", d.message.clone());
            let mk = clone_markup(p, &m, &to, &errors);
            refused(p, &title, mk, d.code)
        }
        Err(d) => Err(d),
    }
}

fn delete_markup(p: &Page, m: &RecordMeta, errors: &Errors) -> Markup {
    html! {
        (form_error(errors))
        p { "Deletes " code { (m.name) } " from " strong { (m.scope) } ". Agents that use it stop getting it at once." }
        form method="post" action="/ui/secrets/delete" {
            (csrf_field(&p.csrf))
            input type="hidden" name="scope" value=(m.scope);
            input type="hidden" name="name" value=(m.name);
            (field("Type the name to confirm", "confirm", "", Kind::Text, None, errors))
            div.buttons {
                button.danger type="submit" { "Delete" }
                a.button.secondary href="/ui/secrets" { "Cancel" }
            }
        }
    }
}

/// `GET /ui/secrets/delete?scope=&name=`.
pub fn delete_form(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
) -> PageResult {
    row_form(state, p, caller, q, "Delete", |m| {
        delete_markup(p, m, &Errors::default())
    })
}

/// `POST /ui/secrets/delete`: only when the typed name matches.
pub async fn delete(state: &Arc<State>, p: &Page, caller: &Caller, form: Form) -> PageResult {
    let m = target(state, &form.text("scope"), &form.text("name"))?;
    if form.text("confirm") != m.name {
        let mut errors = Errors::default();
        errors.add("confirm", format!("Type {} exactly to delete it.", m.name));
        let title = format!("Delete {}", m.name);
        let mk = delete_markup(p, &m, &errors);
        return refused(p, &title, mk, Code::BadRequest);
    }
    match api::delete(state, caller, &m.scope, &m.name).await {
        Ok(meta) => Ok(redirect(&format!(
            "/ui/secrets?done=deleted&scope={}&name={}",
            enc(&meta.scope),
            enc(&meta.name)
        ))),
        Err(d) => Err(d),
    }
}
