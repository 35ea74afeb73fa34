//! The operator console (SPEC §11): server-rendered pages under `/ui/` on the
//! admin listener, on top of the admin API's own logic functions — the same
//! validation, permissions and audit lines (`reason: "admin:<token name>"`).
//!
//! - `session`: in-memory sign-in sessions (random id in an HttpOnly,
//!   SameSite=Strict cookie; idle expiry `[admin].console_idle`).
//! - `csrf`: the per-session token every POST carries.
//! - `forms`: urlencoded bodies, decoded into zeroized memory.
//! - `layout`: page chrome, fields with their errors, security headers.
//! - one file per page: `signin`, `secrets`, `agents`, `sessions`,
//!   `access_log`, `status`; `assets`: the embedded CSS and JS.
//!
//! Every request after sign-in re-authorizes the session's admin token against
//! the live config through [`auth::authorize`], so a token removed from the
//! config ends its sessions, and a refusal is the admin API's audited 401/403.

pub mod access_log;
pub mod agents;
pub mod assets;
pub mod csrf;
pub mod forms;
pub mod layout;
pub mod secrets;
pub mod session;
pub mod sessions;
pub mod signin;
pub mod status;

use super::auth::{self, Permission};
use super::caller::Caller;
use super::json::query_pairs;
use crate::audit::{EventKind, Outcome};
use crate::body::Body;
use crate::proxy::error::{Code, Deny};
use crate::proxy::refuse;
use crate::proxy::state::State;
use forms::Form;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use layout::{redirect, refusal};
use session::SessionStore;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// A console session ends after this long without a request, unless
/// `[admin].console_idle` says otherwise.
pub const DEFAULT_CONSOLE_IDLE: Duration = Duration::from_secs(30 * 60);
/// The session cookie's name.
pub const COOKIE: &str = "kw_console";
/// Forms whose answer shows a token once; each carries a [`ONCE_FIELD`] value
/// that is accepted a single time.
const SHOW_ONCE: [&str; 2] = ["/ui/agents/new", "/ui/sessions/new"];
/// The hidden field of a show-once form.
pub const ONCE_FIELD: &str = "once";
/// Every console path starts with this.
pub const PREFIX: &str = "/ui";

/// The console of one admin listener: its sign-in sessions.
#[derive(Default)]
pub struct Console {
    sessions: SessionStore,
}

impl Console {
    pub fn new() -> Console {
        Console::default()
    }
}

/// Whether `path` is the console's (`/ui`, `/ui/…`).
pub fn is_console(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

/// A signed-in request: who, what they may do, and the session's CSRF token.
pub struct Page {
    /// The admin token's name.
    pub actor: String,
    pub csrf: String,
    pub perms: Vec<Permission>,
    /// The navigation entry to mark current.
    pub nav: &'static str,
    token: Zeroizing<String>,
}

impl Page {
    /// Whether the token holds `perm` (what to show; the server still checks).
    pub fn can(&self, perm: Permission) -> bool {
        self.perms.contains(&perm)
    }

    /// The admin API's authorization of this session's token for `perm`: a
    /// refusal is audited exactly as the API's 403.
    pub fn require(&self, state: &State, perm: Permission, caller: &Caller) -> Result<(), Deny> {
        auth::authorize(state, Some(&self.token), perm, caller).map(|_| ())
    }
}

/// The idle limit from the live config.
fn idle(state: &State) -> Duration {
    state
        .runtime()
        .config
        .admin
        .console_idle
        .map(|d| d.0)
        .unwrap_or(DEFAULT_CONSOLE_IDLE)
}

/// The session id in the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a POST comes from the console's own pages: `Sec-Fetch-Site` (sent by
/// current browsers) is `same-origin` or `none`, and `Origin`, when it names a
/// site, names this listener. (`Referrer-Policy: no-referrer` makes browsers send
/// `Origin: null` for our own forms, so `null` alone decides nothing.) Clients
/// without either header (scripts, tests) are left to the CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |h| {
        headers
            .get(h)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match (text(header::ORIGIN.as_str()), text(header::HOST.as_str())) {
        (None | Some("null"), _) => true,
        (Some(o), Some(h)) => o == format!("http://{h}") || o == format!("https://{h}"),
        (Some(_), None) => false,
    }
}

/// One console request, start to end; every answer carries the console's
/// security headers.
pub async fn handle(
    state: Arc<State>,
    console: &Console,
    req: Request<Incoming>,
) -> Response<Body> {
    let mut resp = route(&state, console, req).await;
    layout::harden(&mut resp);
    resp
}

async fn route(state: &Arc<State>, console: &Console, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    // SECURITY: browsers send `Origin` with every POST; a form posted from another
    // site (login CSRF, or a forged change) is refused before anything runs. The
    // session's CSRF token is checked on top of this.
    if method == Method::POST && !same_origin(req.headers()) {
        let deny = Deny::new(Code::CsrfInvalid, "this form was posted from another site");
        let mut ev = Caller::anonymous("POST", path.clone()).event(
            EventKind::AdminForbidden,
            Outcome::Denied,
            StatusCode::FORBIDDEN,
        );
        ev.reason = Some("cross-site console POST".into());
        refuse::record(state, &deny, ev);
        return refusal(None, &deny);
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/ui" | "/ui/") => return redirect("/ui/secrets"),
        (&Method::GET, "/ui/assets/console.css") => return assets::css(),
        (&Method::GET, "/ui/assets/console.js") => return assets::js(),
        (&Method::GET, "/ui/signin") => return signin::form(query.as_deref()),
        (&Method::POST, "/ui/signin") => return signin::post(state, console, req).await,
        _ => {}
    }
    let idle = idle(state);
    // SECURITY: every other console page needs a live session.
    let Some(signed) = cookie(req.headers()).and_then(|id| console.sessions.touch(&id, idle))
    else {
        let to = if cookie(req.headers()).is_some() {
            "/ui/signin?expired=1"
        } else {
            "/ui/signin"
        };
        return redirect(to);
    };
    let caller = Caller::anonymous(method.as_str(), path.clone());
    // SECURITY: the session's token is checked against the live config on every
    // request: a token removed from the config ends its console sessions too.
    let token = match auth::authenticate(state, Some(&signed.token), &caller) {
        Ok(t) => t,
        Err(_) => {
            console.sessions.remove(&signed.id);
            return redirect("/ui/signin?expired=1");
        }
    };
    let caller = caller.acting_as(token.name.clone());
    let page = Page {
        actor: token.name.clone(),
        csrf: signed.csrf.clone(),
        perms: token
            .permissions
            .iter()
            .filter_map(|p| Permission::parse(p))
            .collect(),
        nav: nav_of(&path),
        token: signed.token.clone(),
    };
    let resp = match method {
        Method::GET => get(state, &page, &caller, &path, query.as_deref()).await,
        Method::POST => {
            let form = match Form::read(req).await {
                Ok(f) => f,
                Err(d) => return refusal(Some(&page), &d),
            };
            // SECURITY: a state-changing request must carry this session's CSRF
            // token (a cross-site form cannot read it); nothing runs without it.
            if !csrf::valid(&signed.csrf, form.raw(csrf::FIELD)) {
                let deny = Deny::new(
                    Code::CsrfInvalid,
                    "this form is stale or was not sent by the console; reload the page and try again",
                );
                let mut ev = caller.event(
                    EventKind::AdminForbidden,
                    Outcome::Denied,
                    StatusCode::FORBIDDEN,
                );
                ev.reason = Some(format!("admin:{} csrf token missing or wrong", page.actor));
                refuse::record(state, &deny, ev);
                return refusal(Some(&page), &deny);
            }
            if path == "/ui/signout" {
                console.sessions.remove(&signed.id);
                return signin::signed_out();
            }
            let fresh = SHOW_ONCE.contains(&path.as_str())
                && console.sessions.spend(&signed.id, form.raw(ONCE_FIELD));
            post(state, &page, &caller, &path, form, fresh).await
        }
        _ => Err(Deny::new(
            Code::MethodNotAllowed,
            format!("{path} accepts GET or POST"),
        )),
    };
    resp.unwrap_or_else(|deny| refusal(Some(&page), &deny))
}

/// A page, or the refusal to render in the console's chrome instead.
type PageResult = Result<Response<Body>, Deny>;

/// The navigation entry a path belongs to.
fn nav_of(path: &str) -> &'static str {
    let section = path
        .trim_start_matches("/ui/")
        .split('/')
        .next()
        .unwrap_or("");
    match section {
        "secrets" => "Secrets",
        "agents" => "Agents",
        "sessions" => "Sessions",
        "access-log" => "Access log",
        "status" => "Status",
        _ => "",
    }
}

fn not_found(path: &str) -> Deny {
    Deny::new(Code::NotFound, format!("no console page {path}"))
}

/// The `?a=b` pairs of a query string.
pub fn params(query: Option<&str>) -> Vec<(String, String)> {
    query_pairs(query)
}

/// The value of `key` in `params`, or `""`.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

async fn get(
    state: &Arc<State>,
    page: &Page,
    caller: &Caller,
    path: &str,
    query: Option<&str>,
) -> PageResult {
    let q = params(query);
    match path {
        "/ui/secrets" => secrets::list(state, page, caller, &q),
        "/ui/secrets/new" => secrets::new_form(state, page, caller),
        "/ui/secrets/edit" => secrets::edit_form(state, page, caller, &q),
        "/ui/secrets/clone" => secrets::clone_form(state, page, caller, &q),
        "/ui/secrets/delete" => secrets::delete_form(state, page, caller, &q),
        "/ui/agents" => agents::list(state, page, caller, &q),
        "/ui/agents/new" => agents::new_form(state, page, caller),
        "/ui/agents/remove" => agents::remove_form(state, page, caller, &q),
        "/ui/sessions" => sessions::form(state, page, caller),
        "/ui/access-log" => access_log::list(state, page, caller, &q).await,
        "/ui/access-log/export.jsonl" => access_log::export(state, page, caller, &q, false).await,
        "/ui/access-log/export.cef" => access_log::export(state, page, caller, &q, true).await,
        "/ui/status" => Ok(status::show(state, page)),
        _ => Err(not_found(path)),
    }
}

async fn post(
    state: &Arc<State>,
    page: &Page,
    caller: &Caller,
    path: &str,
    form: Form,
    fresh: bool,
) -> PageResult {
    let need = match path {
        "/ui/secrets/new" | "/ui/secrets/edit" | "/ui/secrets/clone" | "/ui/secrets/delete" => {
            Permission::SecretsManage
        }
        "/ui/agents/new" | "/ui/agents/remove" => Permission::AgentsManage,
        "/ui/sessions/new" => Permission::SessionsCreate,
        _ => return Err(not_found(path)),
    };
    // SECURITY: the token's permissions decide what the server accepts, whatever
    // the page showed: the admin API's own (audited) check.
    page.require(state, need, caller)?;
    // SECURITY: a reload or back-and-resubmit of a show-once form must not mint a
    // second token and put it on the page.
    if SHOW_ONCE.contains(&path) && !fresh {
        return Err(Deny::new(
            Code::Conflict,
            "this form was already submitted; open it again to create another",
        ));
    }
    match path {
        "/ui/secrets/new" => secrets::create(state, page, caller, form).await,
        "/ui/secrets/edit" => secrets::edit(state, page, caller, form).await,
        "/ui/secrets/clone" => secrets::clone(state, page, caller, form).await,
        "/ui/secrets/delete" => secrets::delete(state, page, caller, form).await,
        "/ui/agents/new" => agents::create(state, page, caller, form).await,
        "/ui/agents/remove" => agents::remove(state, page, caller, form).await,
        "/ui/sessions/new" => sessions::create(state, page, caller, form),
        _ => Err(not_found(path)),
    }
}
