//! Access log: `admin::audit::query` with the filters `Secret`, `Agent`, `Chain`,
//! `Outcome`, `Since`, `Until` (button `Filter`), newest first in pages, and
//! `Export JSONL` (the lines as on disk, as `keyward audit query --json` prints
//! them) / `Export CEF` of everything that matches.

use super::layout::{field, html_response, page, with_code, Errors, Kind};
use super::{param, Page, PageResult};
use crate::admin::audit::{query, AuditQuery};
use crate::admin::caller::Caller;
use crate::admin::vault_io::blocking;
use crate::admin::{Permission, MAX_AUDIT_LIMIT};
use crate::audit::{self, ExportFormat, Filter};
use crate::body::{full, Body};
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use http::{header, HeaderValue, Response, StatusCode};
use maud::{html, Markup};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use time::OffsetDateTime;

/// Lines per page.
pub const PAGE_SIZE: usize = 50;
/// The filter fields: label, query key.
const FILTERS: [(&str, &str); 6] = [
    ("Secret", "secret"),
    ("Agent", "agent"),
    ("Chain", "chain"),
    ("Outcome", "outcome"),
    ("Since", "since"),
    ("Until", "until"),
];
const OUTCOMES: [&str; 3] = ["allowed", "denied", "error"];

/// The filter of the query string, or the errors of its fields.
fn filter_of(q: &[(String, String)]) -> Result<Filter, Errors> {
    let now = OffsetDateTime::now_utc();
    let mut errors = Errors::default();
    let opt = |k: &str| Some(param(q, k).trim().to_string()).filter(|v| !v.is_empty());
    let mut f = Filter {
        secret: opt("secret"),
        agent: opt("agent"),
        chain: opt("chain"),
        outcome: opt("outcome"),
        ..Filter::default()
    };
    if let Some(o) = &f.outcome {
        if !OUTCOMES.contains(&o.as_str()) {
            errors.add("outcome", "Choose allowed, denied or error.");
        }
    }
    for (key, slot) in [("since", &mut f.since), ("until", &mut f.until)] {
        if let Some(v) = opt(key) {
            match audit::parse_time(&v, now) {
                Ok(t) => *slot = Some(t),
                Err(_) => errors.add(
                    if key == "since" { "since" } else { "until" },
                    "Use a time like 2026-05-01T12:00:00Z or an age like 15m, 1h, 2d.",
                ),
            }
        }
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(errors)
    }
}

/// The filter part of the query string, for paging and export links.
fn filter_query(q: &[(String, String)]) -> String {
    FILTERS
        .iter()
        .filter(|(_, k)| !param(q, k).is_empty())
        .map(|(_, k)| format!("{k}={}", utf8_percent_encode(param(q, k), NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

fn filters_markup(q: &[(String, String)], errors: &Errors) -> Markup {
    let outcome = param(q, "outcome");
    let err = errors.get("outcome");
    html! {
        form.filters method="get" action="/ui/access-log" role="search" {
            @for (label, key) in FILTERS {
                @if key == "outcome" {
                    div.field {
                        label for="f-outcome" { (label) }
                        select id="f-outcome" name="outcome" aria-invalid=[err.map(|_| "true")] aria-describedby=[err.map(|_| "f-outcome-err")] {
                            option value="" selected[outcome.is_empty()] { "any" }
                            @for o in OUTCOMES { option value=(o) selected[o == outcome] { (o) } }
                        }
                        @if let Some(e) = err { p.error id="f-outcome-err" role="alert" { (e) } }
                    }
                } @else {
                    (field(label, key, param(q, key), Kind::Text, None, errors))
                }
            }
            div.buttons { button type="submit" { "Filter" } }
        }
    }
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// `GET /ui/access-log?secret=&agent=&chain=&outcome=&since=&until=&page=`.
pub async fn list(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
) -> PageResult {
    p.require(state, Permission::AuditRead, caller)?;
    let filter = match filter_of(q) {
        Ok(f) => f,
        Err(errors) => {
            let m = filters_markup(q, &errors);
            let mut resp = html_response(StatusCode::BAD_REQUEST, page(p, "Access log", m));
            with_code(&mut resp, Code::BadRequest);
            return Ok(resp);
        }
    };
    let aq = AuditQuery {
        filter,
        run_id: None,
        limit: MAX_AUDIT_LIMIT,
    };
    let mut lines = query(state, aq).await?;
    lines.reverse();
    let total = lines.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let n: usize = param(q, "page").parse().unwrap_or(1).clamp(1, pages);
    let shown = &lines[((n - 1) * PAGE_SIZE).min(total)..(n * PAGE_SIZE).min(total)];
    let fq = filter_query(q);
    let link = |page: usize| {
        if fq.is_empty() {
            format!("/ui/access-log?page={page}")
        } else {
            format!("/ui/access-log?{fq}&page={page}")
        }
    };
    let export = |ext: &str| {
        if fq.is_empty() {
            format!("/ui/access-log/export.{ext}")
        } else {
            format!("/ui/access-log/export.{ext}?{fq}")
        }
    };
    let body = html! {
        (filters_markup(q, &Errors::default()))
        p.actions {
            a.button.secondary href=(export("jsonl")) download { "Export JSONL" }
            a.button.secondary href=(export("cef")) download { "Export CEF" }
        }
        p.meta role="status" { (total) " matching line" @if total != 1 { "s" } " · newest first"
            @if total >= MAX_AUDIT_LIMIT { " (the newest " (MAX_AUDIT_LIMIT) "; narrow the filter or export)" } }
        @if !shown.is_empty() {
            div.table-wrap { table {
                caption.visually-hidden { "Access log" }
                thead { tr {
                    th scope="col" { "Time" } th scope="col" { "Event" } th scope="col" { "Outcome" }
                    th scope="col" { "Agent" } th scope="col" { "Secret" } th scope="col" { "Host" }
                    th scope="col" { "Status" } th scope="col" { "Reason" }
                } }
                tbody { @for v in shown { tr {
                    td data-label="Time" { time datetime=(text(v, "ts")) { (super::secrets::short_time(text(v, "ts"))) } }
                    td data-label="Event" { (text(v, "event")) }
                    td data-label="Outcome" { span class=(format!("badge {}", text(v, "outcome"))) { (text(v, "outcome")) } }
                    td data-label="Agent" { (text(v, "agent")) }
                    td data-label="Secret" { @if !text(v, "secret").is_empty() { code { (text(v, "secret")) } } }
                    td data-label="Host" { (text(v, "host")) }
                    td data-label="Status" { (v.get("status").and_then(Value::as_u64).map(|s| s.to_string()).unwrap_or_default()) }
                    td data-label="Reason" { (text(v, "reason")) }
                } } }
            } }
        }
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if n > 1 { a href=(link(n - 1)) { "Newer" } }
                span { "Page " (n) " of " (pages) }
                @if n < pages { a href=(link(n + 1)) { "Older" } }
            }
        }
    };
    Ok(html_response(StatusCode::OK, page(p, "Access log", body)))
}

/// `GET /ui/access-log/export.{jsonl,cef}`: every matching line, as a download.
pub async fn export(
    state: &Arc<State>,
    p: &Page,
    caller: &Caller,
    q: &[(String, String)],
    cef: bool,
) -> PageResult {
    p.require(state, Permission::AuditRead, caller)?;
    let filter = match filter_of(q) {
        Ok(f) => f,
        Err(e) => {
            let msg = e
                .fields
                .first()
                .map(|(f, m)| format!("{f}: {m}"))
                .unwrap_or_default();
            return Err(Deny::new(Code::BadRequest, msg));
        }
    };
    let path = state.audit.path().to_path_buf();
    if path == Path::new("-") {
        return Err(Deny::new(
            Code::AuditNotQueryable,
            "the audit log goes to stdout; query it where it is collected",
        ));
    }
    let format = if cef {
        ExportFormat::Cef
    } else {
        ExportFormat::Jsonl
    };
    let out = blocking(move || {
        let mut out = Vec::new();
        audit::export(&path, &filter, format, &mut out).map_err(|e| {
            tracing::error!(error = %e, "audit log unreadable");
            Deny::new(Code::AuditUnavailable, "the audit log cannot be read")
        })?;
        Ok(out)
    })
    .await;
    let out = out?;
    let (ctype, name) = if cef {
        ("text/plain; charset=utf-8", "keyward-audit.cef")
    } else {
        ("application/x-ndjson", "keyward-audit.jsonl")
    };
    let mut resp: Response<Body> = Response::new(full(out));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
