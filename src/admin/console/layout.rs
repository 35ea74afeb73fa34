//! The console's page chrome and form pieces (maud): the layout with its
//! navigation and Sign out, labelled fields with their error next to them, and
//! the headers every console response carries.

use super::csrf;
use super::Page;
use crate::admin::Permission;
use crate::body::{full, Body};
use http::{header, HeaderValue, Response, StatusCode};
use maud::{html, Markup, DOCTYPE};

/// The strict CSP of every console response: only keyward's own script and
/// styles, no framing, forms post only to keyward.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The navigation: label, path, and the permission whose holders see the link.
const NAV: [(&str, &str, Option<Permission>); 5] = [
    ("Secrets", "/ui/secrets", None),
    ("Agents", "/ui/agents", Some(Permission::AgentsManage)),
    ("Sessions", "/ui/sessions", Some(Permission::SessionsCreate)),
    ("Access log", "/ui/access-log", Some(Permission::AuditRead)),
    ("Status", "/ui/status", None),
];

/// Field errors of a form that was refused, by field name, plus one for the form.
#[derive(Default)]
pub struct Errors {
    pub fields: Vec<(&'static str, String)>,
    pub form: Option<String>,
}

impl Errors {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }

    pub fn add(&mut self, field: &'static str, msg: impl Into<String>) {
        self.fields.push((field, msg.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.form.is_none()
    }
}

/// Security headers of every console response.
pub fn harden(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // SECURITY: console pages show tokens (once) and secret metadata: never cached,
    // so neither a reload nor the back button brings them back from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An HTML response.
pub fn html_response(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut resp = Response::new(full(markup.into_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// `303 See Other` to `location` (POST → redirect → GET).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(token); }
}

/// The hidden single-use field of a show-once form.
pub fn once_field() -> Markup {
    html! { input type="hidden" name=(super::ONCE_FIELD) value=(super::session::random_hex()); }
}

/// A page with the console's chrome: header, navigation, Sign out.
pub fn page(p: &Page, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward console" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "keyward" }
                    nav aria-label="Main" {
                        ul {
                            @for (label, href, perm) in NAV {
                                @if perm.is_none_or(|q| p.can(q)) {
                                    li { a href=(href) aria-current=[(p.nav == label).then_some("page")] { (label) } }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/ui/signout" {
                        span.who { "Signed in as " strong { (p.actor) } }
                        (csrf_field(&p.csrf))
                        button.secondary type="submit" { "Sign out" }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without a session (sign-in).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward console" }
                link rel="stylesheet" href="/ui/assets/console.css";
            }
            body {
                main id="main" class="narrow" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// How an input is rendered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// A password field, never pre-filled, autocomplete off.
    Secret,
    ReadOnly,
}

/// A labelled input with its error (if any) right below it, tied by
/// `aria-describedby`.
pub fn field(
    label: &str,
    name: &str,
    value: &str,
    kind: Kind,
    hint: Option<&str>,
    errors: &Errors,
) -> Markup {
    let id = format!("f-{name}");
    let err = errors.get(name);
    let err_id = format!("{id}-err");
    let hint_id = format!("{id}-hint");
    let described: Vec<&str> = [err.map(|_| err_id.as_str()), hint.map(|_| hint_id.as_str())]
        .into_iter()
        .flatten()
        .collect();
    let described = (!described.is_empty()).then(|| described.join(" "));
    html! {
        div.field {
            label for=(id) { (label) }
            @match kind {
                Kind::Secret => {
                    input type="password" id=(id) name=(name) autocomplete="off" spellcheck="false"
                        aria-invalid=[err.map(|_| "true")] aria-describedby=[described.as_deref()];
                }
                Kind::ReadOnly => {
                    input type="text" id=(id) name=(name) value=(value) readonly
                        aria-describedby=[described.as_deref()];
                }
                Kind::Text => {
                    input type="text" id=(id) name=(name) value=(value) autocomplete="off" spellcheck="false"
                        aria-invalid=[err.map(|_| "true")] aria-describedby=[described.as_deref()];
                }
            }
            @if let Some(h) = hint { p.hint id=(hint_id) { (h) } }
            @if let Some(e) = err { p.error id=(err_id) role="alert" { (e) } }
        }
    }
}

/// The form-level error, if any.
pub fn form_error(errors: &Errors) -> Markup {
    html! {
        @if let Some(e) = &errors.form { p.error.banner role="alert" { (e) } }
    }
}

/// A refusal as a console page: status, `x-keyward-error`, the message.
pub fn refusal(p: Option<&Page>, deny: &crate::proxy::error::Deny) -> Response<Body> {
    let body = html! {
        p.error.banner role="alert" { (deny.message) }
        p { a href="/ui/secrets" { "Back to the console" } }
    };
    let title = match deny.code.status() {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => "Refused",
    };
    let markup = match p {
        Some(p) => page(p, title, body),
        None => bare(title, body),
    };
    let mut resp = html_response(deny.code.status(), markup);
    with_code(&mut resp, deny.code);
    resp
}

/// Sets `x-keyward-error`.
pub fn with_code(resp: &mut Response<Body>, code: crate::proxy::error::Code) {
    resp.headers_mut()
        .insert("x-keyward-error", HeaderValue::from_static(code.as_str()));
}
