//! Agents through the admin API: registration (create-only). The new agent's
//! token is returned once and stored only as its SHA-256.
//!
//! [`create`] is the logic (validate, apply, audit); [`http_create`] only parses
//! the request and renders the answer.

use super::caller::{record_change, Caller};
use super::json::{json_response, read_json};
use super::vault_io::{blocking, refresh};
use crate::audit::{EventKind, Outcome};
use crate::body::Body;
use crate::config::{valid_agent_id, valid_secret_name};
use crate::proxy::error::{Code, Deny};
use crate::proxy::state::State;
use crate::vault::{AgentRecord, Change, Undo};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use zeroize::Zeroizing;

/// What `POST /v1/agents` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub id: String,
    pub chain: Option<String>,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
}

pub const NEW_AGENT_SHAPE: &str = r#"{"id": string, "chain"?: string, "owner"?: string, "builder"?: string, "secrets"?: [string]}"#;

/// A registered agent: its id and its proxy token (shown once).
pub struct Created {
    pub id: String,
    pub token: Zeroizing<String>,
}

fn bad(message: String) -> Deny {
    Deny::new(Code::BadRequest, message)
}

/// Registers an agent, audited; a registration that cannot be audited is rolled back.
pub async fn create(state: &Arc<State>, caller: &Caller, body: NewAgent) -> Result<Created, Deny> {
    if !valid_agent_id(&body.id) {
        return Err(bad(format!(
            "agent id {:?}: use letters, digits, '-', '_', '.' (at most 128)",
            body.id
        )));
    }
    for (what, v) in [("owner", &body.owner), ("builder", &body.builder)] {
        if let Some(v) = v {
            if !valid_agent_id(v) {
                return Err(bad(format!(
                    "{what} {v:?}: use letters, digits, '-', '_', '.'"
                )));
            }
        }
    }
    let runtime = state.runtime();
    if let Some(c) = &body.chain {
        if !runtime.config.chains.iter().any(|x| &x.name == c) {
            return Err(bad(format!("no chain named {c:?}")));
        }
    }
    for s in body.secrets.iter().flatten() {
        if !valid_secret_name(s) {
            return Err(bad(format!(
                "secret name {s:?} must match ^[A-Z_][A-Z0-9_]*$"
            )));
        }
    }
    // SECURITY: re-registering an existing id would silently replace its token (and
    // hijack its identity in the audit trail); refuse instead.
    if runtime.config.agents.iter().any(|a| a.id == body.id) {
        return Err(Deny::new(
            Code::Conflict,
            format!("agent {} is defined in the config file", body.id),
        ));
    }
    if state
        .vault
        .snapshot()
        .agents()
        .iter()
        .any(|a| a.id == body.id)
    {
        return Err(Deny::new(
            Code::Conflict,
            format!("agent {} already exists", body.id),
        ));
    }
    let token = Zeroizing::new(crate::ids::new_token());
    let record = AgentRecord {
        id: body.id.clone(),
        token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
        chain: body.chain.clone(),
        owner: body.owner.clone(),
        builder: body.builder.clone(),
        secrets: body.secrets.clone(),
        created: crate::clock::now_rfc3339(),
    };
    let st = state.clone();
    // The check above is the fast path; `add_agent` repeats it inside the
    // vault's locked write, so of two concurrent creations only one succeeds.
    let (_, undo) = blocking(move || Ok(st.vault.apply(Change::AddAgent(record))?)).await?;
    let who = Who {
        id: &body.id,
        chain: &body.chain,
        owner: &body.owner,
        builder: &body.builder,
    };
    audit_or_undo(
        state,
        caller,
        (EventKind::AgentAdd, StatusCode::CREATED),
        who,
        undo,
    )
    .await?;
    tracing::info!(agent = %body.id, actor = ?caller.actor, "agent_add via admin API");
    Ok(Created { id: body.id, token })
}

/// The agent an `agent_add`/`agent_rm` line is about.
struct Who<'a> {
    id: &'a str,
    chain: &'a Option<String>,
    owner: &'a Option<String>,
    builder: &'a Option<String>,
}

/// Writes the audit line of an applied agent change, or takes the change back.
async fn audit_or_undo(
    state: &Arc<State>,
    caller: &Caller,
    (kind, status): (EventKind, StatusCode),
    who: Who<'_>,
    undo: Undo,
) -> Result<(), Deny> {
    let mut ev = caller.event(kind, Outcome::Allowed, status);
    ev.agent = Some(who.id.to_string());
    ev.chain = who.chain.clone();
    ev.owner = who.owner.clone();
    ev.builder = who.builder.clone();
    let recorded = record_change(state, ev);
    if recorded.is_err() {
        // SECURITY: fail closed: an agent change that is not on record (a creation
        // or a removal) is taken back, so the trail never misses who could act when.
        let st = state.clone();
        let _ = blocking(move || Ok(st.vault.undo(undo)?)).await;
    }
    refresh(state);
    recorded
}

/// One row of the agent list: from the config file or registered in the vault.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub chain: Option<String>,
    pub owner: Option<String>,
    pub builder: Option<String>,
    /// `config` (only the file can change it) or `vault` (removable here).
    pub source: &'static str,
    pub created: Option<String>,
}

/// Every agent keyward knows: config-file agents first, then registered ones.
pub fn list(state: &State) -> Vec<AgentRow> {
    let runtime = state.runtime();
    let mut rows: Vec<AgentRow> = runtime
        .config
        .agents
        .iter()
        .map(|a| AgentRow {
            id: a.id.clone(),
            chain: a.chain.clone(),
            owner: a.owner.clone(),
            builder: a.builder.clone(),
            source: "config",
            created: None,
        })
        .collect();
    rows.extend(state.vault.snapshot().agents().iter().map(|a| AgentRow {
        id: a.id.clone(),
        chain: a.chain.clone(),
        owner: a.owner.clone(),
        builder: a.builder.clone(),
        source: "vault",
        created: Some(a.created.clone()),
    }));
    rows
}

/// Removes a registered agent (its token stops working at once), audited as
/// `agent_rm`; a removal that cannot be audited is taken back.
pub async fn remove(state: &Arc<State>, caller: &Caller, id: &str) -> Result<(), Deny> {
    let runtime = state.runtime();
    if runtime.config.agents.iter().any(|a| a.id == id) {
        return Err(Deny::new(
            Code::Conflict,
            format!("agent {id} is defined in the config file; remove it there"),
        ));
    }
    let Some(record) = state
        .vault
        .snapshot()
        .agents()
        .iter()
        .find(|a| a.id == id)
        .cloned()
    else {
        return Err(Deny::new(Code::NotFound, format!("no agent {id:?}")));
    };
    let (st, rid) = (state.clone(), id.to_string());
    let (applied, undo) =
        blocking(move || Ok(st.vault.apply(Change::RemoveAgent { id: rid })?)).await?;
    if !matches!(applied, crate::vault::Applied::Agent(Some(_))) {
        return Err(Deny::new(Code::NotFound, format!("no agent {id:?}")));
    }
    let who = Who {
        id: &record.id,
        chain: &record.chain,
        owner: &record.owner,
        builder: &record.builder,
    };
    audit_or_undo(
        state,
        caller,
        (EventKind::AgentRm, StatusCode::OK),
        who,
        undo,
    )
    .await?;
    tracing::info!(agent = %id, actor = ?caller.actor, "agent_rm via admin console");
    Ok(())
}

/// `POST /v1/agents`: 201 `{id, token}`.
pub async fn http_create(
    state: &Arc<State>,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Response<Body>, Deny> {
    let body: NewAgent = read_json(req, NEW_AGENT_SHAPE).await?;
    let created = create(state, caller, body).await?;
    Ok(json_response(
        StatusCode::CREATED,
        json!({"id": created.id, "token": created.token.as_str()}),
    ))
}
