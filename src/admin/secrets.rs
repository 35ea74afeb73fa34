//! Secrets through the admin API: list and read metadata, store (set or rotate),
//! remove. Values come in and never go out: they are wrapped in [`Secret`] as the
//! body is parsed, and no response, log line or audit line carries one.
//!
//! [`list`], [`get`], [`put`] and [`delete`] are the logic (validate, apply,
//! audit); the `http_*` functions only parse the request and render the answer.

use super::caller::{record_change, Caller};
use super::json::{json_response, query_pairs, read_json, unknown_parameter};
use super::vault_io::{blocking, refresh};
use crate::audit::{Event, EventKind, Outcome};
use crate::body::{empty, Body};
use crate::config::valid_secret_name;
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use crate::secret::Secret;
use crate::vault::{Change, RecordMeta, SecretKind, SetOptions, Undo};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// `{"value"}`: deserialized straight into a [`Secret`].
pub struct SecretValue(pub Secret);

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SecretValue(Secret::new(s.into_bytes())))
    }
}

/// What `PUT /v1/secrets/{scope}/{name}` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutSecret {
    pub value: Option<SecretValue>,
    pub description: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub rotate_every: Option<String>,
    /// `api_key` | `oauth2` | `hmac` | `aws` (multi-field kinds: `value` is JSON text).
    pub kind: Option<String>,
}

pub const PUT_SECRET_SHAPE: &str = r#"{"value": string, "description"?: string, "hosts"?: [string], "rotate_every"?: "90d", "kind"?: "api_key|oauth2|hmac|aws"}"#;

/// What `PATCH /v1/secrets/{scope}/{name}` takes: `description` is required;
/// `null` or `""` clears it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSecret {
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
}

/// A field that is present (even as `null`) is `Some`; an absent one stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub const PATCH_SECRET_SHAPE: &str = r#"{"description": string | null}"#;

/// A stored secret's metadata, and whether it replaced an earlier value.
#[derive(Debug)]
pub struct Stored {
    pub meta: RecordMeta,
    pub replaced: bool,
}

fn bad(message: impl Into<String>) -> Deny {
    Deny::new(Code::BadRequest, message)
}

fn not_found(scope: &str, name: &str) -> Deny {
    Deny::new(
        Code::NotFound,
        format!("secret {name} not found in scope {scope}"),
    )
}

/// Metadata of every secret, or of those in `scope`.
pub fn list(state: &State, scope: Option<&str>) -> Vec<RecordMeta> {
    state.vault.list(scope)
}

/// Metadata of one secret.
pub fn get(state: &State, scope: &str, name: &str) -> Result<RecordMeta, Deny> {
    state
        .vault
        .list(Some(scope))
        .into_iter()
        .find(|m| m.scope == scope && m.name == name)
        .ok_or_else(|| not_found(scope, name))
}

/// Stores (sets or rotates) `scope/name`, audited; a change that cannot be
/// audited is undone.
pub async fn put(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
    body: PutSecret,
) -> Result<Stored, Deny> {
    let Some(SecretValue(value)) = body.value else {
        return Err(bad(format!(
            "\"value\" is required; expected {PUT_SECRET_SHAPE}"
        )));
    };
    if !valid_secret_name(name) {
        return Err(bad(format!(
            "secret name {name:?} must match ^[A-Z_][A-Z0-9_]*$"
        )));
    }
    if value.is_empty() {
        return Err(bad("\"value\" is empty"));
    }
    // SECURITY: values end up in header lines, URLs and paths; CR/LF would let a
    // stored value split a header, NUL truncates in C clients. The message never
    // contains the value.
    if value
        .expose()
        .iter()
        .any(|&b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(bad("\"value\" contains CR, LF or NUL"));
    }
    let rotate_every = match body.rotate_every.as_deref() {
        None => None,
        Some(s) => Some(humantime::parse_duration(s).map_err(|_| {
            bad(format!(
                "invalid rotate_every {s:?}: use e.g. 90d, 12w, 24h"
            ))
        })?),
    };
    let kind = match body.kind.as_deref() {
        None => None,
        Some(k) => Some(SecretKind::parse(k).ok_or_else(|| {
            bad(format!(
                "invalid kind {k:?}: use api_key, oauth2, hmac or aws"
            ))
        })?),
    };
    let opts = SetOptions {
        description: body.description,
        hosts: body.hosts.unwrap_or_default(),
        rotate_every,
    };
    let change = Change::SetSecret {
        scope: scope.to_string(),
        name: name.to_string(),
        value,
        kind,
        options: opts,
    };
    let (meta, undo) = apply(state, change).await?;
    // Decided inside the vault's locked write, so two concurrent PUTs of a new
    // name are one `secret_set` and one `secret_rotate`.
    let replaced = undo.replaced();
    let (event, status) = if replaced {
        (EventKind::SecretRotate, StatusCode::OK)
    } else {
        (EventKind::SecretSet, StatusCode::CREATED)
    };
    audit_change(state, caller, (event, status), &meta, undo).await?;
    tracing::info!(scope = %meta.scope, name = %meta.name, version = meta.version, actor = ?caller.actor, "{event} via admin API");
    Ok(Stored { meta, replaced })
}

/// Removes `scope/name`, audited; a removal that cannot be audited is undone.
pub async fn delete(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
) -> Result<RecordMeta, Deny> {
    get(state, scope, name)?;
    let change = Change::RemoveSecret {
        scope: scope.to_string(),
        name: name.to_string(),
    };
    let (meta, undo) = apply(state, change).await?;
    let done = (EventKind::SecretRm, StatusCode::NO_CONTENT);
    audit_change(state, caller, done, &meta, undo).await?;
    tracing::info!(scope = %meta.scope, name = %meta.name, actor = ?caller.actor, "secret_rm via admin API");
    Ok(meta)
}

/// Changes only the description of `scope/name` (`None` or empty clears it): no
/// new value, same version; audited as `secret_describe`, undone if it cannot be.
pub async fn describe(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
    description: Option<String>,
) -> Result<RecordMeta, Deny> {
    get(state, scope, name)?;
    let description = description.filter(|d| !d.is_empty());
    let change = Change::DescribeSecret {
        scope: scope.to_string(),
        name: name.to_string(),
        description,
    };
    let (meta, undo) = apply(state, change).await?;
    let done = (EventKind::SecretDescribe, StatusCode::OK);
    audit_change(state, caller, done, &meta, undo).await?;
    tracing::info!(scope = %meta.scope, name = %meta.name, actor = ?caller.actor, "secret_describe via admin API");
    Ok(meta)
}

/// Copies `name` from scope `from` into scope `to` (which must not have it),
/// audited as `secret_clone`; a clone that cannot be audited is undone.
pub async fn clone_to(
    state: &Arc<State>,
    caller: &Caller,
    from: &str,
    name: &str,
    to: &str,
) -> Result<RecordMeta, Deny> {
    get(state, from, name)?;
    if !crate::vault::valid_scope(to) {
        return Err(bad(format!(
            "invalid scope {to:?}: use platform, owner:NAME, builder:NAME, chain:NAME or agent:NAME"
        )));
    }
    if get(state, to, name).is_ok() {
        return Err(Deny::new(
            Code::Conflict,
            format!("scope {to} already has a secret {name}"),
        ));
    }
    let change = Change::CloneSecret {
        name: name.to_string(),
        from: from.to_string(),
        to: to.to_string(),
    };
    let (meta, undo) = apply(state, change).await?;
    let done = (EventKind::SecretClone, StatusCode::CREATED);
    audit_change(state, caller, done, &meta, undo).await?;
    tracing::info!(from = %from, to = %meta.scope, name = %meta.name, actor = ?caller.actor, "secret_clone via admin console");
    Ok(meta)
}

/// Makes one vault change off the executor: the record it left and its undo.
async fn apply(state: &Arc<State>, change: Change) -> Result<(RecordMeta, Undo), Deny> {
    let st = state.clone();
    blocking(move || {
        let (applied, undo) = st.vault.apply(change)?;
        Ok((applied.into_meta()?, undo))
    })
    .await
}

/// The audit line of a secret change (`done`: its event and the status
/// answered), or the change taken back; then the proxy sees the new vault.
async fn audit_change(
    state: &Arc<State>,
    caller: &Caller,
    done: (EventKind, StatusCode),
    meta: &RecordMeta,
    undo: Undo,
) -> Result<(), Deny> {
    let mut ev = caller.event(done.0, Outcome::Allowed, done.1);
    ev.secret = Some(meta.name.clone());
    ev.scope = Some(meta.scope.clone());
    ev.version = Some(meta.version);
    audit_or_undo(state, ev, undo).await?;
    refresh(state);
    Ok(())
}

/// Records the audit line for a secret change, or takes the change back.
async fn audit_or_undo(state: &Arc<State>, ev: Event, undo: Undo) -> Result<(), Deny> {
    let Err(e) = record_change(state, ev) else {
        return Ok(());
    };
    // SECURITY: fail closed: a vault change that is not on record is undone (the
    // previous record goes back, still sealed), as agent creation is rolled back.
    let st = state.clone();
    let undone = blocking(move || Ok(st.vault.undo(undo)?)).await;
    refresh(state);
    Err(match undone {
        Ok(()) => Deny {
            message: format!("{}; the change was undone", e.message),
            ..e
        },
        Err(u) => {
            tracing::error!(error = %u.message, "an unaudited vault change could not be undone");
            Deny {
                message: format!("{}; the change could NOT be undone", e.message),
                ..e
            }
        }
    })
}

// ---------------------------------------------------------------------------
// HTTP

/// `GET /v1/secrets[?scope=S]`.
pub fn http_list(state: &State, query: Option<&str>) -> Result<Response<Body>, Deny> {
    let mut scope = None;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "scope" => scope = Some(v),
            other => return Err(unknown_parameter(other)),
        }
    }
    let list = list(state, scope.as_deref());
    Ok(json_response(StatusCode::OK, json!({ "secrets": list })))
}

/// `GET /v1/secrets/{scope}/{name}`.
pub fn http_get(state: &State, scope: &str, name: &str) -> Result<Response<Body>, Deny> {
    let meta = get(state, scope, name)?;
    Ok(json_response(StatusCode::OK, json!(meta)))
}

/// `PUT /v1/secrets/{scope}/{name}`: 201 when new, 200 when rotated.
pub async fn http_put(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Deny> {
    let body: PutSecret = read_json(req, PUT_SECRET_SHAPE).await?;
    let stored = put(state, caller, scope, name, body).await?;
    let status = if stored.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, json!(stored.meta)))
}

/// `PATCH /v1/secrets/{scope}/{name}`: 200 with the new metadata.
pub async fn http_patch(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Deny> {
    let body: PatchSecret = read_json(req, PATCH_SECRET_SHAPE).await?;
    let Some(description) = body.description else {
        return Err(bad(format!(
            "\"description\" is required; expected {PATCH_SECRET_SHAPE}"
        )));
    };
    let meta = describe(state, caller, scope, name, description).await?;
    Ok(json_response(StatusCode::OK, json!(meta)))
}

/// `DELETE /v1/secrets/{scope}/{name}`: 204.
pub async fn http_delete(
    state: &Arc<State>,
    caller: &Caller,
    scope: &str,
    name: &str,
) -> Result<Response<Body>, Deny> {
    delete(state, caller, scope, name).await?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
