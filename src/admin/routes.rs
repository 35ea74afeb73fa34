//! The admin API's one route table, [`ROUTES`], and the dispatch it drives:
//! match the path, authenticate and authorize (the route names the permission),
//! run the resource's handler, render a refusal as `Deny`.
//!
//! `tests/admin_api.rs` checks the table against `docs/admin-api.yaml` (OpenAPI 3)
//! in both directions.

use super::auth::{authorize, bearer, Permission};
use super::caller::Caller;
use super::{agents, audit, secrets, sessions, status};
use crate::body::Body;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    ListSecrets,
    GetSecret,
    PutSecret,
    DeleteSecret,
    CreateAgent,
    CreateSession,
    QueryAudit,
    PatchSecret,
}

/// One endpoint: method, OpenAPI path template, the permission it needs (`None`:
/// no authentication) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub permission: Option<Permission>,
    pub op: Op,
}

const fn route(
    method: &'static str,
    path: &'static str,
    permission: Option<Permission>,
    op: Op,
) -> Route {
    Route {
        method,
        path,
        permission,
        op,
    }
}

/// Every endpoint the server implements. Path templates use OpenAPI syntax.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", None, Op::Healthz),
    route("GET", "/readyz", None, Op::Readyz),
    route("GET", "/metrics", None, Op::Metrics),
    route(
        "GET",
        "/v1/secrets",
        Some(Permission::SecretsRead),
        Op::ListSecrets,
    ),
    route(
        "GET",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsRead),
        Op::GetSecret,
    ),
    route(
        "PUT",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsManage),
        Op::PutSecret,
    ),
    route(
        "DELETE",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsManage),
        Op::DeleteSecret,
    ),
    route(
        "PATCH",
        "/v1/secrets/{scope}/{name}",
        Some(Permission::SecretsManage),
        Op::PatchSecret,
    ),
    route(
        "POST",
        "/v1/agents",
        Some(Permission::AgentsManage),
        Op::CreateAgent,
    ),
    route(
        "POST",
        "/v1/sessions",
        Some(Permission::SessionsCreate),
        Op::CreateSession,
    ),
    route(
        "GET",
        "/v1/audit",
        Some(Permission::AuditRead),
        Op::QueryAudit,
    ),
];

/// One admin request, start to end.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let mut resp = match dispatch(state, req).await {
        Ok(resp) => resp,
        // Audited refusals (401/403) were recorded by `authorize`; the rest are
        // answers to a malformed or impossible request, not proxy denials.
        Err(deny) => deny.response(None, None),
    };
    // Answers may carry tokens or secret metadata: never cache them.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Routes, authenticates, authorizes, then runs the handler.
async fn dispatch(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Deny> {
    let path = req.uri().path().to_string();
    let (route, params) = match find_route(req.method().as_str(), &path) {
        Ok(hit) => hit,
        Err(miss) => return Ok(miss.response()),
    };
    let caller = Caller::anonymous(req.method().as_str(), path);
    let caller = match route.permission {
        None => caller,
        Some(perm) => {
            let name = authorize(&state, bearer(req.headers()), perm, &caller)?;
            caller.acting_as(name)
        }
    };
    let query = req.uri().query();
    match route.op {
        Op::Healthz => Ok(status::healthz()),
        Op::Readyz => Ok(status::readyz(&state)),
        Op::Metrics => Ok(status::metrics(&state)),
        Op::ListSecrets => secrets::http_list(&state, query),
        Op::GetSecret => secrets::http_get(&state, &params[0], &params[1]),
        Op::PutSecret => secrets::http_put(&state, &caller, &params[0], &params[1], req).await,
        Op::DeleteSecret => secrets::http_delete(&state, &caller, &params[0], &params[1]).await,
        Op::CreateAgent => agents::http_create(&state, &caller, req).await,
        Op::CreateSession => sessions::http_create(&state, &caller, req).await,
        Op::QueryAudit => audit::http_query(&state, query).await,
        Op::PatchSecret => secrets::http_patch(&state, &caller, &params[0], &params[1], req).await,
    }
}

/// No route for a request: 404, or 405 with the methods the path does take.
struct NoRoute {
    deny: Deny,
    /// `Allow` for a 405.
    allow: Option<String>,
}

impl NoRoute {
    fn response(&self) -> Response<Body> {
        let mut resp = self.deny.response(None, None);
        if let Some(v) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        resp
    }
}

/// The route for `method path` and its decoded path parameters.
fn find_route(method: &str, path: &str) -> Result<(&'static Route, Vec<String>), NoRoute> {
    let mut allowed: Vec<&str> = Vec::new();
    for r in ROUTES {
        if let Some(params) = match_path(r.path, path) {
            if r.method == method {
                return Ok((r, params));
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        return Err(NoRoute {
            deny: Deny::new(Code::NotFound, format!("no admin endpoint {path}")),
            allow: None,
        });
    }
    let allow = allowed.join(", ");
    Err(NoRoute {
        deny: Deny::new(Code::MethodNotAllowed, format!("{path} accepts {allow}")),
        allow: Some(allow),
    })
}

/// Matches `/v1/secrets/{scope}/{name}` against a request path; returns the
/// percent-decoded parameters.
fn match_path(template: &str, path: &str) -> Option<Vec<String>> {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.len() != p.len() {
        return None;
    }
    let mut params = Vec::new();
    for (ts, ps) in t.iter().zip(&p) {
        if ts.starts_with('{') && ts.ends_with('}') {
            let v = percent_encoding::percent_decode_str(ps)
                .decode_utf8()
                .ok()?;
            if v.is_empty() {
                return None;
            }
            params.push(v.into_owned());
        } else if ts != ps {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_templates_match_and_decode() {
        assert_eq!(
            match_path("/v1/secrets/{scope}/{name}", "/v1/secrets/owner%3Aacme/KEY"),
            Some(vec!["owner:acme".to_string(), "KEY".to_string()])
        );
        assert_eq!(
            match_path("/v1/secrets/{scope}/{name}", "/v1/secrets/platform/"),
            None
        );
        assert_eq!(match_path("/v1/secrets", "/v1/secrets/"), None);
        assert_eq!(match_path("/healthz", "/healthz"), Some(vec![]));
    }

    #[test]
    fn routes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(seen.insert((r.method, r.path)), "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405_with_allow() {
        let miss = find_route("GET", "/v1/nothing").err().map(|m| m.deny.code);
        assert_eq!(miss, Some(Code::NotFound));
        let Err(miss) = find_route("POST", "/v1/secrets/platform/X") else {
            panic!("POST matched a route");
        };
        assert_eq!(miss.deny.code, Code::MethodNotAllowed);
        assert_eq!(
            miss.response().headers()["allow"],
            "GET, PUT, DELETE, PATCH"
        );
    }
}
