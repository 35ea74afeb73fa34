//! `keyward agent …`: agents registered here live in the vault's agent table (so
//! they work without a config file and reach running proxies like secrets do).
//! Only the token's SHA-256 is stored; the token is printed once.

use super::CliError;
use crate::audit::{AuditLog, Event};
use crate::config::{valid_agent_id, valid_secret_name, Config};
use crate::vault::{AgentRecord, Vault};
use base64::Engine;
use clap::Subcommand;
use sha2::{Digest, Sha256};

/// Prefix of static agent tokens (session tokens use `kws_`).
pub const TOKEN_PREFIX: &str = "kwa_";
/// Random bytes in a fresh token.
pub const TOKEN_BYTES: usize = 32;

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Register an agent and print its token once.
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

/// A fresh random agent token.
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn vault(cfg: &Config) -> Result<Vault, CliError> {
    Vault::open(&cfg.vault).map_err(|e| CliError::User(e.to_string()))
}

fn audit(cfg: &Config, event: &str, agent: &str) {
    let mut ev = Event::new(event, "allowed");
    ev.agent = Some(agent.to_string());
    if let Err(e) = AuditLog::open(&cfg.audit).and_then(|log| log.record(ev)) {
        eprintln!("keyward: warning: {e}");
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
            let token = new_token();
            let record = AgentRecord {
                id: id.clone(),
                token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
                chain,
                owner,
                builder,
                secrets,
                created: crate::audit::now_rfc3339(),
            };
            vault(cfg)?
                .put_agent(record)
                .map_err(|e| CliError::User(e.to_string()))?;
            audit(cfg, "agent_add", &id);
            println!("{token}");
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
            let removed = vault(cfg)?
                .remove_agent(&id)
                .map_err(|e| CliError::User(e.to_string()))?;
            if !removed {
                return Err(CliError::User(format!("no agent {id} in the vault")));
            }
            audit(cfg, "agent_rm", &id);
            println!("removed agent {id}");
            Ok(0)
        }
    }
}
