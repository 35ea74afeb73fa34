//! The unauthenticated status endpoints: `/healthz` (the process is up),
//! `/readyz` (vault, CA and audit log usable) and `/metrics` (Prometheus).

use super::json::json_response;
use crate::body::{full, Body};
use crate::proxy::state::State;
use crate::vault::Freshness;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use std::path::Path;

/// Content type of `/metrics` (Prometheus text exposition).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One readiness check: its name and `Ok` or what is wrong.
pub type Check = (&'static str, Result<(), &'static str>);

/// Whether keyward can serve: the vault is loaded, the CA is loaded, the audit
/// log can be appended to, the store is not past `stale_after`.
pub fn readiness(state: &State) -> [Check; 4] {
    let vault = {
        // Loaded at start; a snapshot is always there once `State` exists.
        let _ = state.vault.snapshot().generation();
        Ok(())
    };
    let ca = if state.ca.ca_pem().is_empty() {
        Err("CA certificate not loaded")
    } else {
        Ok(())
    };
    let audit = audit_writable(state.audit.path());
    let store = match state.vault.freshness() {
        Freshness::Stale { .. } => Err("store stale (unreachable past stale_after)"),
        // SECURITY: contents that failed verification (tampering) take the replica
        // out of service; it still answers from its last good snapshot.
        Freshness::Refused { .. } => {
            Err("store refused: its contents failed verification (see the log)")
        }
        Freshness::Current | Freshness::Unreachable { .. } => Ok(()),
    };
    [
        ("vault", vault),
        ("ca", ca),
        ("audit", audit),
        ("store", store),
    ]
}

/// The store's state for `/readyz`: `ok`, or `unreachable`/`stale`/`refused`
/// with the seconds since it was last read and verified.
fn store_detail(state: &State) -> Value {
    match state.vault.freshness() {
        Freshness::Current => json!({"state": "ok"}),
        Freshness::Unreachable { age } => {
            json!({"state": "unreachable", "age_secs": age.as_secs()})
        }
        Freshness::Stale { age } => json!({"state": "stale", "age_secs": age.as_secs()}),
        Freshness::Refused { age } => json!({"state": "refused", "age_secs": age.as_secs()}),
    }
}

/// Cheap check: the audit file can still be opened for appending.
fn audit_writable(path: &Path) -> Result<(), &'static str> {
    if path == Path::new("-") {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map(|_| ())
        .map_err(|_| "audit log not writable")
}

/// `GET /healthz`.
pub fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`: 200 `ready` or 503 `not_ready`, with each check's result.
pub fn readyz(state: &State) -> Response<Body> {
    let checks = readiness(state);
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(k, r)| {
            let v = match r {
                Ok(()) => "ok".to_string(),
                Err(m) => m.to_string(),
            };
            (k.to_string(), Value::String(v))
        })
        .collect();
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    json_response(
        status,
        json!({"status": word, "checks": body, "store": store_detail(state)}),
    )
}

/// `GET /metrics`.
pub fn metrics(state: &State) -> Response<Body> {
    let mut resp = Response::new(full(state.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    resp
}
