//! `keyward agent …`: agents registered here live in the vault's agent table (so
//! they work without a config file and reach running proxies like secrets do).
//! Only the token's SHA-256 is stored; the token is printed once.

use super::CliError;
use crate::audit::{AuditLog, Event, EventKind, Outcome};
use crate::config::{valid_agent_id, valid_secret_name, Config};
use crate::ids::new_token;
use crate::vault::{open_store, AgentRecord, Applied, Change, Store, VaultError};
use clap::Subcommand;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Register a new agent and print its token once (an existing id is refused).
    Add {
        id: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        builder: Option<String>,
        #[arg(long)]
        chain: Option<String>,
        /// Comma-separated secret names this agent may use (default: no limit beyond its chain).
        #[arg(long, value_delimiter = ',')]
        secrets: Option<Vec<String>>,
    },
    /// List registered agents (never tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an agent; its tunnels stop at their next request.
    Rm { id: String },
}

fn vault(cfg: &Config) -> Result<std::sync::Arc<dyn Store>, CliError> {
    open_store(cfg).map_err(|e| CliError::User(e.to_string()))
}

/// Opened before any change: a change that cannot be audited is not made.
fn open_audit(cfg: &Config) -> Result<AuditLog, CliError> {
    super::audit::open_writer(cfg).map_err(|e| {
        CliError::User(format!(
            "{e} (every agent change is audited; nothing was changed)"
        ))
    })
}

fn audit_event(event: EventKind, agent: &AgentRecord) -> Event {
    let mut ev = Event::new(event, Outcome::Allowed);
    ev.agent = Some(agent.id.clone());
    ev.chain = agent.chain.clone();
    ev.owner = agent.owner.clone();
    ev.builder = agent.builder.clone();
    ev
}

/// The error after a change whose audit line could not be written and that was
/// (or could not be) taken back.
fn unaudited(e: crate::audit::AuditError, undone: Result<(), VaultError>, what: &str) -> CliError {
    match undone {
        Ok(()) => CliError::Internal(format!(
            "the audit line could not be written ({e}); {what} was undone, nothing changed"
        )),
        Err(u) => CliError::Internal(format!(
            "the audit line could not be written ({e}) and undoing {what} failed ({u}); check the vault"
        )),
    }
}

pub fn run(cmd: AgentCmd, cfg: &Config) -> Result<u8, CliError> {
    match cmd {
        AgentCmd::Add {
            id,
            owner,
            builder,
            chain,
            secrets,
        } => {
            if !valid_agent_id(&id) {
                return Err(CliError::User(format!(
                    "agent id {id:?}: use letters, digits, '-', '_', '.'"
                )));
            }
            if cfg.agents.iter().any(|a| a.id == id) {
                return Err(CliError::User(format!(
                    "agent {id} is defined in the config file; edit it there"
                )));
            }
            if let Some(c) = &chain {
                if !cfg.chains.iter().any(|x| &x.name == c) {
                    return Err(CliError::User(format!(
                        "no chain named {c:?} in {}",
                        cfg.source_name()
                    )));
                }
            }
            for s in secrets.iter().flatten() {
                if !valid_secret_name(s) {
                    return Err(CliError::User(format!(
                        "secret name {s:?} must match ^[A-Z_][A-Z0-9_]*$"
                    )));
                }
            }
            let log = open_audit(cfg)?;
            let vault = vault(cfg)?;
            let token = Zeroizing::new(new_token());
            let record = AgentRecord {
                id: id.clone(),
                token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
                chain,
                owner,
                builder,
                secrets,
                created: crate::clock::now_rfc3339(),
            };
            let ev = audit_event(EventKind::AgentAdd, &record);
            // SECURITY: create-only, checked inside the vault's locked write:
            // re-adding an id would replace its token and let whoever runs this
            // take over that agent's identity in the audit trail.
            let (_, undo) = vault.apply(Change::AddAgent(record)).map_err(|e| match e {
                VaultError::AgentExists(_) => CliError::User(format!(
                    "agent {id} already exists; to issue a new token, remove it first (keyward agent rm {id})"
                )),
                e => CliError::User(e.to_string()),
            })?;
            if let Err(e) = log.record(ev) {
                // SECURITY: fail closed: an agent whose creation is not on record is
                // removed again, and its token is never shown.
                let undone = vault.undo(undo);
                return Err(unaudited(e, undone, "the registration"));
            }
            println!("{}", token.as_str());
            eprintln!(
                "agent {id} registered; the token above is shown once (only its SHA-256 is stored)"
            );
            Ok(0)
        }
        AgentCmd::List { json } => {
            let v = vault(cfg)?;
            let snap = v.snapshot();
            let mut rows: Vec<serde_json::Value> = snap
                .agents()
                .iter()
                .map(|a| {
                    serde_json::json!({"id": a.id, "chain": a.chain, "owner": a.owner, "builder": a.builder,
                        "secrets": a.secrets, "created": a.created, "source": "vault"})
                })
                .collect();
            for a in &cfg.agents {
                rows.push(serde_json::json!({"id": a.id, "chain": a.chain, "owner": a.owner, "builder": a.builder,
                    "secrets": a.secrets, "source": "config"}));
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<24} {:<20} {:<8}", "ID", "CHAIN", "SOURCE");
                for r in rows {
                    println!(
                        "{:<24} {:<20} {:<8}",
                        r["id"].as_str().unwrap_or(""),
                        r["chain"].as_str().unwrap_or("-"),
                        r["source"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(0)
        }
        AgentCmd::Rm { id } => {
            let log = open_audit(cfg)?;
            let vault = vault(cfg)?;
            let Some(record) = vault
                .snapshot()
                .agents()
                .iter()
                .find(|a| a.id == id)
                .cloned()
            else {
                return Err(CliError::User(format!("no agent {id} in the vault")));
            };
            let ev = audit_event(EventKind::AgentRm, &record);
            let (applied, undo) = vault
                .apply(Change::RemoveAgent { id: id.clone() })
                .map_err(|e| CliError::User(e.to_string()))?;
            if !matches!(applied, Applied::Agent(Some(_))) {
                return Err(CliError::User(format!("no agent {id} in the vault")));
            }
            if let Err(e) = log.record(ev) {
                // SECURITY: fail closed: a removal that is not on record is taken back
                // (same token hash), so the trail never misses who could act when.
                let undone = vault.undo(undo);
                return Err(unaudited(e, undone, "the removal"));
            }
            println!("removed agent {id}");
            Ok(0)
        }
    }
}
