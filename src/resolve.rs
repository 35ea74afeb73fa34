//! Identity, scope and tier: which credential this agent gets for this provider
//! (SPEC §4, §5). Pure functions over data; the vault is reached only through the
//! [`SecretSource`] trait, so the whole order is table-tested without a vault file.

use crate::config::rules::{self, Rules};
use crate::config::Config;
use crate::secret::Secret;
use crate::vault::{AgentRecord, Opened, Snapshot};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Session tokens start with this, so they are never confused with static tokens.
pub const SESSION_PREFIX: &str = "kws_";
/// Longest session a caller may ask for.
pub const MAX_SESSION_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Agent,
    Chain,
    Owner,
    Builder,
    Platform,
}

impl Tier {
    /// Most specific first: the order resolution walks.
    pub const ORDER: [Tier; 5] = [
        Tier::Agent,
        Tier::Chain,
        Tier::Owner,
        Tier::Builder,
        Tier::Platform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Agent => "agent",
            Tier::Chain => "chain",
            Tier::Owner => "owner",
            Tier::Builder => "builder",
            Tier::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ORDER.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("secret {0} is not in this agent's scope")]
    NotInScope(String),
    #[error("no value for secret {0} in any scope this agent resolves")]
    NotFound(String),
    #[error("secret {0} is restricted to other hosts")]
    HostNotBound(String),
    #[error("vault error: {0}")]
    Vault(String),
}

#[derive(Debug)]
pub struct Agent {
    pub id: String,
    token_sha256: [u8; 32],
    pub chain: Option<String>,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub pins: HashMap<String, Tier>,
    /// Request rules set on this agent (config agents only).
    pub rules: Rules,
}

#[derive(Debug)]
pub struct Chain {
    pub name: String,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub rules: Rules,
}

/// An authenticated agent with its chain resolved. Fixed for a tunnel's life.
#[derive(Debug, Clone)]
pub struct Principal {
    pub agent: Arc<Agent>,
    pub chain: Option<Arc<Chain>>,
    pub run_id: Option<String>,
    /// Unix seconds at which a session token dies (None for static tokens).
    pub expires: Option<u64>,
}

impl Principal {
    /// Agent override, else the chain's.
    pub fn owner(&self) -> Option<&str> {
        self.agent
            .owner
            .as_deref()
            .or_else(|| self.chain.as_ref().and_then(|c| c.owner.as_deref()))
    }

    pub fn builder(&self) -> Option<&str> {
        self.agent
            .builder
            .as_deref()
            .or_else(|| self.chain.as_ref().and_then(|c| c.builder.as_deref()))
    }

    pub fn chain_name(&self) -> Option<&str> {
        self.chain.as_ref().map(|c| c.name.as_str())
    }

    /// `{owner}-{builder}-{provider}` (SPEC §5.3); `_` stands for an absent part.
    pub fn connection_id(&self, provider: &str) -> String {
        // Per request (every audit line names it): pushed, not `format!`ed
        // (callgrind: ~900 instructions per request for the formatting machinery).
        let (owner, builder) = (self.owner().unwrap_or("_"), self.builder().unwrap_or("_"));
        let mut id = String::with_capacity(owner.len() + builder.len() + provider.len() + 2);
        for (i, part) in [owner, builder, provider].into_iter().enumerate() {
            if i > 0 {
                id.push('-');
            }
            id.push_str(part);
        }
        id
    }

    /// Chain and agent request rules for `provider` (both apply).
    pub fn check_rules(
        &self,
        provider: &str,
        method: &str,
        path: &str,
    ) -> Result<(), rules::NotAllowed> {
        rules::check(
            self.chain.as_ref().map(|c| &c.rules),
            &self.agent.rules,
            provider,
            method,
            path,
        )
    }

    /// `C.secrets ∩ A.secrets`, an absent list meaning no limit at that level.
    pub fn in_scope(&self, name: &str) -> bool {
        let allows =
            |list: &Option<Vec<String>>| list.as_ref().is_none_or(|l| l.iter().any(|s| s == name));
        allows(&self.agent.secrets) && self.chain.as_ref().is_none_or(|c| allows(&c.secrets))
    }

    /// The vault scope this principal resolves `tier` to, if it has one.
    pub fn scope_of(&self, tier: Tier) -> Option<String> {
        match tier {
            Tier::Agent => Some(format!("agent:{}", self.agent.id)),
            Tier::Chain => self.chain_name().map(|c| format!("chain:{c}")),
            Tier::Owner => self.owner().map(|o| format!("owner:{o}")),
            Tier::Builder => self.builder().map(|b| format!("builder:{b}")),
            Tier::Platform => Some("platform".to_string()),
        }
    }

    /// Vault scopes to look in, most specific first (or the pinned one alone).
    pub fn candidate_scopes(&self, name: &str) -> Vec<(Tier, String)> {
        match self.agent.pins.get(name) {
            Some(&pin) => self
                .scope_of(pin)
                .map(|s| vec![(pin, s)])
                .unwrap_or_default(),
            None => Tier::ORDER
                .into_iter()
                .filter_map(|t| self.scope_of(t).map(|s| (t, s)))
                .collect(),
        }
    }
}

/// Where resolution reads values from (the vault snapshot in production).
pub trait SecretSource {
    fn find(&self, scope: &str, name: &str) -> Result<Option<Opened>, String>;
    /// Names of the records stored in `scope` (for [`grantable`]).
    fn names(&self, scope: &str) -> Vec<String>;
}

impl SecretSource for Snapshot {
    fn find(&self, scope: &str, name: &str) -> Result<Option<Opened>, String> {
        self.get(scope, name).map_err(|e| e.to_string())
    }

    fn names(&self, scope: &str) -> Vec<String> {
        self.names_in(scope)
    }
}

/// The credential chosen for one request.
#[derive(Debug)]
pub struct Grant {
    pub name: String,
    pub value: Secret,
    pub version: u32,
    pub tier: Tier,
    pub scope: String,
    /// The record's own host restriction (empty = none beyond the provider's).
    pub hosts: Vec<String>,
    /// What the value is (`api_key`, `oauth2`, `hmac`, `aws`).
    pub kind: crate::vault::SecretKind,
}

/// Scope check, then the first tier that has a value (SPEC §5.1–5.2).
pub fn grant(
    principal: &Principal,
    name: &str,
    source: &dyn SecretSource,
) -> Result<Grant, Refusal> {
    // SECURITY: the scope check comes first and does not depend on what the vault
    // holds, so an agent cannot probe for secrets outside its chain.
    if !principal.in_scope(name) {
        return Err(Refusal::NotInScope(name.to_string()));
    }
    for (tier, scope) in principal.candidate_scopes(name) {
        if let Some(opened) = source.find(&scope, name).map_err(Refusal::Vault)? {
            return Ok(Grant {
                name: name.to_string(),
                value: opened.value,
                version: opened.version,
                tier,
                scope,
                hosts: opened.hosts,
                kind: opened.kind,
            });
        }
    }
    Err(Refusal::NotFound(name.to_string()))
}

/// Every credential this principal could be granted (SPEC §5): each name stored
/// in a vault scope the principal resolves through that is in `C.secrets ∩
/// A.secrets`, resolved exactly as [`grant`] would (first tier wins, pins obeyed).
/// A value shadowed by a more specific tier is not grantable, so not listed. Sorted
/// by name. This is the set a response to this principal is redacted of.
pub fn grantable(principal: &Principal, source: &dyn SecretSource) -> Result<Vec<Grant>, Refusal> {
    let mut names: Vec<String> = Tier::ORDER
        .into_iter()
        .filter_map(|tier| principal.scope_of(tier))
        .flat_map(|scope| source.names(&scope))
        .filter(|name| principal.in_scope(name))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match grant(principal, &name, source) {
            Ok(g) => out.push(g),
            // Stored only in a tier a pin excludes: not grantable to this agent.
            Err(Refusal::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// All agents and chains, from the config and the vault's agent table.
#[derive(Debug, Default)]
pub struct Directory {
    agents: HashMap<String, Arc<Agent>>,
    chains: HashMap<String, Arc<Chain>>,
    session_key: Option<Secret>,
}

/// Rules are validated with the config; should one still fail to compile, the
/// level gets a rule for that provider that matches nothing (fail closed).
fn compile_rules(cfg: &[crate::config::RuleConfig]) -> Rules {
    Rules::compile(cfg).unwrap_or_else(|_| {
        let deny_all: Vec<crate::config::RuleConfig> = cfg
            .iter()
            .map(|r| crate::config::RuleConfig {
                provider: r.provider.clone(),
                allow: Vec::new(),
            })
            .collect();
        Rules::compile(&deny_all).unwrap_or_default()
    })
}

fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl Directory {
    /// Config agents win over vault agents with the same id.
    pub fn build(
        cfg: &Config,
        vault_agents: &[AgentRecord],
        session_key: Option<Secret>,
    ) -> Directory {
        let chains: HashMap<String, Arc<Chain>> = cfg
            .chains
            .iter()
            .map(|c| {
                let chain = Chain {
                    name: c.name.clone(),
                    owner: c.owner.clone(),
                    builder: c.builder.clone(),
                    secrets: c.secrets.clone(),
                    // Validated with the config; a bad rule here denies everything.
                    rules: compile_rules(&c.rules),
                };
                (c.name.clone(), Arc::new(chain))
            })
            .collect();
        let mut agents = HashMap::new();
        for a in vault_agents {
            let Some(token_sha256) = parse_sha256_hex(&a.token_sha256) else {
                continue;
            };
            let agent = Agent {
                id: a.id.clone(),
                token_sha256,
                chain: a.chain.clone(),
                owner: a.owner.clone(),
                builder: a.builder.clone(),
                secrets: a.secrets.clone(),
                pins: HashMap::new(),
                rules: Rules::default(),
            };
            agents.insert(a.id.clone(), Arc::new(agent));
        }
        for a in &cfg.agents {
            let Some(token_sha256) = parse_sha256_hex(&a.token_sha256) else {
                continue;
            };
            let agent = Agent {
                id: a.id.clone(),
                token_sha256,
                chain: a.chain.clone(),
                owner: a.owner.clone(),
                builder: a.builder.clone(),
                secrets: a.secrets.clone(),
                pins: a
                    .pins
                    .iter()
                    .filter_map(|(k, v)| Tier::parse(v).map(|t| (k.clone(), t)))
                    .collect(),
                rules: compile_rules(&a.rules),
            };
            agents.insert(a.id.clone(), Arc::new(agent));
        }
        Directory {
            agents,
            chains,
            session_key,
        }
    }

    /// An agent with this id exists (in the config or the vault).
    pub fn knows(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    pub fn agent_ids(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// The agent as it is now (for per-request revocation checks).
    pub fn principal(&self, id: &str, run_id: Option<String>) -> Option<Principal> {
        let agent = self.agents.get(id)?.clone();
        // SECURITY: an agent naming a chain that no longer exists resolves nothing.
        let chain = match &agent.chain {
            Some(name) => Some(self.chains.get(name)?.clone()),
            None => None,
        };
        Some(Principal {
            agent,
            chain,
            run_id,
            expires: None,
        })
    }

    /// Checks a static token (SHA-256 compared in constant time) or a session token.
    pub fn authenticate(&self, id: &str, token: &str, now_unix: u64) -> Option<Principal> {
        if let Some(rest) = token.strip_prefix(SESSION_PREFIX) {
            let key = self.session_key.as_ref()?;
            let claims = verify_session(key, rest, now_unix)?;
            // SECURITY: a session token is bound to one agent; it cannot be replayed
            // under another agent id.
            if claims.agent != id {
                return None;
            }
            let mut p = self.principal(id, Some(claims.run_id))?;
            p.expires = Some(claims.expires);
            return Some(p);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let known = self.agents.get(id);
        // SECURITY: compare in constant time, and do the same work for unknown ids
        // so response timing does not reveal which agent ids exist.
        let expected = known.map(|a| a.token_sha256).unwrap_or([0u8; 32]);
        let ok: bool = digest.ct_eq(&expected).into();
        if ok && known.is_some() {
            self.principal(id, None)
        } else {
            None
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionClaims {
    #[serde(rename = "a")]
    agent: String,
    #[serde(rename = "r")]
    run_id: String,
    #[serde(rename = "e")]
    expires: u64,
}

/// Mints `kws_<claims>.<mac>`: stateless, so any replica sharing the master key
/// accepts it until `expires` (unix seconds).
pub fn mint_session(key: &Secret, agent: &str, run_id: &str, expires: u64) -> String {
    let claims = SessionClaims {
        agent: agent.to_string(),
        run_id: run_id.to_string(),
        expires,
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let mac = session_mac(key, body.as_bytes());
    format!("{SESSION_PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(mac))
}

fn session_mac(key: &Secret, body: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn verify_session(key: &Secret, token: &str, now_unix: u64) -> Option<SessionClaims> {
    let (body, mac) = token.split_once('.')?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    let mut check = <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).ok()?;
    check.update(body.as_bytes());
    // SECURITY: verify_slice compares in constant time.
    check.verify_slice(&mac).ok()?;
    let claims: SessionClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    // SECURITY: an expired session token is dead, whatever else it says.
    (claims.expires > now_unix).then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fake(BTreeMap<(String, String), u32>);

    impl SecretSource for Fake {
        fn find(&self, scope: &str, name: &str) -> Result<Option<Opened>, String> {
            Ok(self
                .0
                .get(&(scope.to_string(), name.to_string()))
                .map(|v| Opened {
                    value: Secret::from_str(&format!("{scope}/{name}")),
                    version: *v,
                    hosts: vec![],
                    kind: Default::default(),
                }))
        }

        fn names(&self, scope: &str) -> Vec<String> {
            self.0
                .keys()
                .filter(|(s, _)| s == scope)
                .map(|(_, n)| n.clone())
                .collect()
        }
    }

    fn sha(t: &str) -> String {
        hex::encode(Sha256::digest(t.as_bytes()))
    }

    fn fixture() -> Directory {
        let text = format!(
            r#"
[[chains]]
name = "triage"
owner = "acme"
builder = "botco"
secrets = ["OPENAI_API_KEY", "SLACK_BOT_TOKEN"]

[[chains]]
name = "open"
owner = "globex"

[[agents]]
id = "t1"
token_sha256 = "{t1}"
chain = "triage"
secrets = ["OPENAI_API_KEY"]

[[agents]]
id = "t2"
token_sha256 = "{t2}"
chain = "triage"
use = {{ OPENAI_API_KEY = "builder" }}

[[agents]]
id = "o1"
token_sha256 = "{o1}"
chain = "open"
"#,
            t1 = sha("tok1"),
            t2 = sha("tok2"),
            o1 = sha("tok3")
        );
        let cfg = Config::parse(&text, "fixture.toml").unwrap();
        Directory::build(&cfg, &[], Some(Secret::new(vec![7u8; 32])))
    }

    fn vault(entries: &[(&str, &str)]) -> Fake {
        Fake(
            entries
                .iter()
                .map(|(s, n)| ((s.to_string(), n.to_string()), 1))
                .collect(),
        )
    }

    #[test]
    fn resolution_table() {
        let dir = fixture();
        let all = vault(&[
            ("owner:acme", "OPENAI_API_KEY"),
            ("builder:botco", "OPENAI_API_KEY"),
            ("platform", "OPENAI_API_KEY"),
            ("platform", "SLACK_BOT_TOKEN"),
            ("platform", "GITHUB_TOKEN"),
            ("agent:o1", "GITHUB_TOKEN"),
        ]);
        let platform_only = vault(&[("platform", "OPENAI_API_KEY")]);
        type Want = Result<(&'static str, Tier), Refusal>;
        let cases: Vec<(&str, &str, &Fake, Want)> = vec![
            // owner tier wins over builder and platform
            (
                "t1",
                "OPENAI_API_KEY",
                &all,
                Ok(("owner:acme", Tier::Owner)),
            ),
            // agent list narrows the chain: SLACK is in the chain but not in t1's list
            (
                "t1",
                "SLACK_BOT_TOKEN",
                &all,
                Err(Refusal::NotInScope("SLACK_BOT_TOKEN".into())),
            ),
            // t2 has no list: the chain's applies
            (
                "t2",
                "SLACK_BOT_TOKEN",
                &all,
                Ok(("platform", Tier::Platform)),
            ),
            // not in the chain at all
            (
                "t2",
                "GITHUB_TOKEN",
                &all,
                Err(Refusal::NotInScope("GITHUB_TOKEN".into())),
            ),
            // pin forces the builder tier even though the owner has a key
            (
                "t2",
                "OPENAI_API_KEY",
                &all,
                Ok(("builder:botco", Tier::Builder)),
            ),
            // pin with no value in the pinned tier: no fallback
            (
                "t2",
                "OPENAI_API_KEY",
                &platform_only,
                Err(Refusal::NotFound("OPENAI_API_KEY".into())),
            ),
            // fallback all the way to platform
            (
                "t1",
                "OPENAI_API_KEY",
                &platform_only,
                Ok(("platform", Tier::Platform)),
            ),
            // agent-scoped secret beats platform (per-node credentials)
            ("o1", "GITHUB_TOKEN", &all, Ok(("agent:o1", Tier::Agent))),
            // open chain: no limit, but nothing stored
            (
                "o1",
                "STRIPE_API_KEY",
                &all,
                Err(Refusal::NotFound("STRIPE_API_KEY".into())),
            ),
        ];
        for (agent, name, src, want) in cases {
            let p = dir.principal(agent, None).unwrap();
            let got = grant(&p, name, src).map(|g| (g.scope, g.tier));
            let want = want.map(|(s, t)| (s.to_string(), t));
            assert_eq!(got, want, "{agent} {name}");
        }
    }

    /// What a response to each agent is redacted of: every name it may use,
    /// resolved as a request for it would be, and nothing it may not use.
    #[test]
    fn grantable_table() {
        let dir = fixture();
        let all = vault(&[
            ("owner:acme", "OPENAI_API_KEY"),
            ("builder:botco", "OPENAI_API_KEY"),
            ("platform", "OPENAI_API_KEY"),
            ("platform", "SLACK_BOT_TOKEN"),
            ("platform", "GITHUB_TOKEN"),
            ("agent:o1", "GITHUB_TOKEN"),
            ("agent:t1", "GITHUB_TOKEN"),
            ("owner:globex", "STRIPE_API_KEY"),
            ("chain:triage", "SLACK_BOT_TOKEN"),
        ]);
        let cases: Vec<(&str, Vec<&str>)> = vec![
            // t1's list narrows the chain to OPENAI; its own agent-tier GITHUB key
            // is not in that list either.
            ("t1", vec!["owner:acme/OPENAI_API_KEY"]),
            // t2: the chain's list; OPENAI pinned to builder, SLACK from the chain.
            (
                "t2",
                vec![
                    "builder:botco/OPENAI_API_KEY",
                    "chain:triage/SLACK_BOT_TOKEN",
                ],
            ),
            // o1: no list at all; every name its scopes hold, most specific first.
            (
                "o1",
                vec![
                    "agent:o1/GITHUB_TOKEN",
                    "platform/OPENAI_API_KEY",
                    "platform/SLACK_BOT_TOKEN",
                    "owner:globex/STRIPE_API_KEY",
                ],
            ),
        ];
        for (agent, want) in cases {
            let p = dir.principal(agent, None).unwrap();
            let got: Vec<String> = grantable(&p, &all)
                .unwrap()
                .into_iter()
                .map(|g| format!("{}/{}", g.scope, g.name))
                .collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            let mut want: Vec<String> = want.into_iter().map(String::from).collect();
            want.sort();
            assert_eq!(got_sorted, want, "{agent}");
        }
        // A pin to a tier that holds nothing: not grantable, not an error.
        let p = dir.principal("t2", None).unwrap();
        let only_platform = vault(&[("platform", "OPENAI_API_KEY")]);
        assert!(grantable(&p, &only_platform).unwrap().is_empty());
    }

    #[test]
    fn connection_id_names_owner_builder_provider() {
        let p = fixture().principal("t1", None).unwrap();
        assert_eq!(p.connection_id("openai"), "acme-botco-openai");
        let o = fixture().principal("o1", None).unwrap();
        assert_eq!(o.connection_id("github"), "globex-_-github");
    }

    #[test]
    fn static_tokens_authenticate_only_their_agent() {
        let dir = fixture();
        assert!(dir.authenticate("t1", "tok1", 0).is_some());
        assert!(dir.authenticate("t1", "tok2", 0).is_none());
        assert!(dir.authenticate("nobody", "tok1", 0).is_none());
    }

    #[test]
    fn session_tokens_bind_agent_and_expire() {
        let dir = fixture();
        let key = Secret::new(vec![7u8; 32]);
        let tok = mint_session(&key, "t1", "run-42", 1_000);
        let p = dir.authenticate("t1", &tok, 999).unwrap();
        assert_eq!(p.run_id.as_deref(), Some("run-42"));
        assert!(dir.authenticate("t1", &tok, 1_000).is_none(), "expired");
        assert!(dir.authenticate("t2", &tok, 10).is_none(), "other agent");
        let forged = tok.replace("kws_", "kws_x");
        assert!(dir.authenticate("t1", &forged, 10).is_none());
        let other_key = mint_session(&Secret::new(vec![8u8; 32]), "t1", "r", 1_000);
        assert!(dir.authenticate("t1", &other_key, 10).is_none());
    }
}
