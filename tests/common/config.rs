//! Test config as values — `Provider`, `Chain`, `Agent`, admin tokens — and the one
//! place a `KwBuilder` is written out as the TOML file keyward loads (SPEC §3).
//! keyward's `Config` has no serializer and validates only while loading, and
//! tests reload and edit the file, so the builder's values are rendered here
//! (each value quoted by `toml`, nothing patched) and loaded by `Config::from_file`.

use super::kw::{KwBuilder, AGENT, TOKEN};
use super::{sha256_hex, UPSTREAM_HOSTS};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

/// A `[[providers]]` table. `scheme` is the inline TOML of its `inject` or `sign`.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub hosts: Vec<String>,
    pub secret: String,
    scheme: Option<(&'static str, String)>,
}

impl Provider {
    pub fn new(name: &str, host: &str, secret: &str) -> Provider {
        Provider {
            name: name.into(),
            hosts: vec![host.into()],
            secret: secret.into(),
            scheme: None,
        }
    }

    /// `authorization: Bearer {secret}`.
    pub fn bearer(name: &str, host: &str, secret: &str) -> Provider {
        Provider::new(name, host, secret)
            .inject(r#"{ header = "authorization", value = "Bearer {secret}" }"#)
    }

    /// `inject = <inline table>`.
    pub fn inject(mut self, inline: &str) -> Provider {
        self.scheme = Some(("inject", inline.into()));
        self
    }

    /// `sign = <inline table>`.
    pub fn sign(mut self, inline: &str) -> Provider {
        self.scheme = Some(("sign", inline.into()));
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("\n[[providers]]\n");
        kv(out, "name", self.name.as_str());
        kv(out, "hosts", self.hosts.clone());
        kv(out, "secret", self.secret.as_str());
        if let Some((key, inline)) = &self.scheme {
            let _ = writeln!(out, "{key} = {inline}");
        }
    }
}

/// `rules = [{ provider, allow }]` as a list of pairs.
type Rules = Vec<(String, Vec<String>)>;

fn rule(rules: &mut Rules, provider: &str, allow: &[&str]) {
    rules.push((
        provider.into(),
        allow.iter().map(|a| a.to_string()).collect(),
    ));
}

fn render_rules(out: &mut String, rules: &Rules) {
    if rules.is_empty() {
        return;
    }
    let items: Vec<String> = rules
        .iter()
        .map(|(p, allow)| {
            format!(
                "{{ provider = {}, allow = {} }}",
                toml::Value::from(p.as_str()),
                toml::Value::from(allow.clone())
            )
        })
        .collect();
    let _ = writeln!(out, "rules = [{}]", items.join(", "));
}

/// A `[[chains]]` table.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    pub name: String,
    owner: Option<String>,
    builder: Option<String>,
    secrets: Option<Vec<String>>,
    rules: Rules,
}

impl Chain {
    pub fn new(name: &str) -> Chain {
        Chain {
            name: name.into(),
            ..Chain::default()
        }
    }

    pub fn owner(mut self, owner: &str) -> Chain {
        self.owner = Some(owner.into());
        self
    }

    pub fn builder(mut self, builder: &str) -> Chain {
        self.builder = Some(builder.into());
        self
    }

    pub fn secrets(mut self, names: &[&str]) -> Chain {
        self.secrets = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    pub fn rule(mut self, provider: &str, allow: &[&str]) -> Chain {
        rule(&mut self.rules, provider, allow);
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("\n[[chains]]\n");
        kv(out, "name", self.name.as_str());
        opt(out, "owner", &self.owner);
        opt(out, "builder", &self.builder);
        if let Some(s) = &self.secrets {
            kv(out, "secrets", s.clone());
        }
        render_rules(out, &self.rules);
    }
}

/// An `[[agents]]` table (its token is stored as its SHA-256).
#[derive(Clone, Debug)]
pub struct Agent {
    pub id: String,
    pub token: String,
    chain: Option<String>,
    secrets: Option<Vec<String>>,
    pins: BTreeMap<String, String>,
    rules: Rules,
}

impl Agent {
    pub fn new(id: &str, token: &str) -> Agent {
        Agent {
            id: id.into(),
            token: token.into(),
            chain: None,
            secrets: None,
            pins: BTreeMap::new(),
            rules: Rules::new(),
        }
    }

    /// The default agent (`AGENT` / `TOKEN`); pass a changed one to
    /// `KwBuilder::agent` to replace it.
    pub fn agent_1() -> Agent {
        Agent::new(AGENT, TOKEN)
    }

    pub fn chain(mut self, chain: &str) -> Agent {
        self.chain = Some(chain.into());
        self
    }

    /// The agent's own scope (`secrets = [...]`).
    pub fn secrets(mut self, names: &[&str]) -> Agent {
        self.secrets = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// `use = { SECRET = "tier" }`: always take `secret` from `tier`.
    pub fn pin(mut self, secret: &str, tier: &str) -> Agent {
        self.pins.insert(secret.into(), tier.into());
        self
    }

    pub fn rule(mut self, provider: &str, allow: &[&str]) -> Agent {
        rule(&mut self.rules, provider, allow);
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("\n[[agents]]\n");
        kv(out, "id", self.id.as_str());
        kv(out, "token_sha256", sha256_hex(&self.token));
        opt(out, "chain", &self.chain);
        if let Some(s) = &self.secrets {
            kv(out, "secrets", s.clone());
        }
        if !self.pins.is_empty() {
            let pins: toml::map::Map<String, toml::Value> = self
                .pins
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::from(v.as_str())))
                .collect();
            kv(out, "use", toml::Value::Table(pins));
        }
        render_rules(out, &self.rules);
    }
}

/// One entry of `admin.tokens`.
#[derive(Clone, Debug)]
pub struct AdminToken {
    name: String,
    token: String,
    permissions: Vec<String>,
}

impl AdminToken {
    pub fn new(name: &str, token: &str, permissions: &[&str]) -> AdminToken {
        AdminToken {
            name: name.into(),
            token: token.into(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn value(&self) -> toml::Value {
        let mut t = toml::map::Map::new();
        t.insert("name".into(), self.name.as_str().into());
        t.insert("sha256".into(), sha256_hex(&self.token).into());
        t.insert("permissions".into(), self.permissions.clone().into());
        toml::Value::Table(t)
    }
}

/// `key = value`, the value quoted as TOML.
fn kv(out: &mut String, key: &str, value: impl Into<toml::Value>) {
    let _ = writeln!(out, "{key} = {}", value.into());
}

fn opt(out: &mut String, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        kv(out, key, v.as_str());
    }
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

impl KwBuilder {
    /// The config file: every state file inside `dir`, every `UPSTREAM_HOSTS`
    /// name (and `resolve` overrides) dialling `upstream`.
    pub fn render(&self, dir: &Path, upstream: SocketAddr) -> String {
        let mut out = String::new();
        out.push_str("[proxy]\n");
        kv(&mut out, "listen", self.listen.to_string());
        for (key, value) in &self.proxy {
            kv(&mut out, key, value.clone());
        }
        out.push_str("\n[tls]\n");
        kv(&mut out, "ca_cert", path(dir, "ca.pem"));
        kv(&mut out, "ca_key", path(dir, "ca.key"));
        kv(&mut out, "upstream_roots", path(dir, "upstream-ca.pem"));
        out.push_str("\n[vault]\n");
        kv(&mut out, "path", path(dir, "vault.kw"));
        kv(&mut out, "master_key_file", path(dir, "master.key"));
        out.push_str("\n[audit]\n");
        kv(&mut out, "path", path(dir, "audit.jsonl"));
        out.push_str("\n[egress]\n");
        kv(&mut out, "allow", self.allow.clone());
        kv(&mut out, "allow_private", self.allow_private.clone());
        let ports: Vec<i64> = self.ports.iter().map(|p| i64::from(*p)).collect();
        kv(&mut out, "ports", ports);
        let mut resolve: BTreeMap<String, SocketAddr> = UPSTREAM_HOSTS
            .iter()
            .map(|h| (h.to_string(), upstream))
            .collect();
        resolve.extend(self.resolve.iter().cloned());
        let resolve: toml::map::Map<String, toml::Value> = resolve
            .into_iter()
            .map(|(h, a)| (h, toml::Value::from(a.to_string())))
            .collect();
        kv(&mut out, "resolve", toml::Value::Table(resolve));
        if self.admin {
            out.push_str("\n[admin]\n");
            kv(&mut out, "listen", "127.0.0.1:0");
            if !self.admin_tokens.is_empty() {
                let tokens: Vec<toml::Value> =
                    self.admin_tokens.iter().map(AdminToken::value).collect();
                kv(&mut out, "tokens", tokens);
            }
            for (key, value) in &self.admin_settings {
                kv(&mut out, key, value.clone());
            }
        }
        Provider::new("query-provider", "q.example.test", "Q_KEY")
            .inject(r#"{ query = "key" }"#)
            .render(&mut out);
        for p in &self.providers {
            p.render(&mut out);
        }
        for c in &self.chains {
            c.render(&mut out);
        }
        for a in &self.agents {
            a.render(&mut out);
        }
        out.push_str(&self.extra);
        out
    }
}
