//! The keyward under test: `Kw::builder()` arranges a config (see `config.rs`),
//! `.start()` runs an echo upstream and an in-process keyward against it, and the
//! `Kw` it returns is what a test sends through and asserts on (upstream, audit).
//! The one place that starts the library (`keyward::app::start`).

use super::config::{AdminToken, Agent, Chain, Provider};
use super::{EchoUpstream, MapResolver, ProxyClient, UpstreamPki};
use keyward::app::{self, Running};
use keyward::config::Config;
use keyward::proxy::upstream::Resolver;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The agent every test config has, and its proxy token.
pub const AGENT: &str = "agent-1";
pub const TOKEN: &str = "tok-agent-1-secret";

/// The config file's name inside the state dir.
pub const CONFIG_FILE: &str = "keyward.toml";

/// A keyward started in-process against an echo upstream.
pub struct Kw {
    pub running: Running,
    /// The state dir: CA, vault, master key, audit log and config file.
    pub dir: tempfile::TempDir,
    pub upstream: EchoUpstream,
    pub pki: UpstreamPki,
    pub config_path: PathBuf,
}

/// Runs on the state dir after the config is written, before keyward starts.
pub type Prepare = Box<dyn FnOnce(&Path) + Send>;

/// How a test keyward is configured and started. Defaults: proxy on
/// 127.0.0.1:0; every `UPSTREAM_HOSTS` name resolving to the echo upstream;
/// `egress.allow = ["pypi.example.test"]`, `allow_private = ["127.0.0.0/8"]`,
/// `ports = [443]`; a `query-provider` for `q.example.test`; one agent
/// (`Agent::agent_1()`); no admin listener; a resolver that knows no name.
pub struct KwBuilder {
    pub(crate) listen: SocketAddr,
    pub(crate) proxy: Vec<(String, toml::Value)>,
    pub(crate) allow: Vec<String>,
    pub(crate) allow_private: Vec<String>,
    pub(crate) ports: Vec<u16>,
    pub(crate) resolve: Vec<(String, SocketAddr)>,
    pub(crate) admin: bool,
    pub(crate) admin_tokens: Vec<AdminToken>,
    pub(crate) admin_settings: Vec<(String, toml::Value)>,
    pub(crate) providers: Vec<Provider>,
    pub(crate) chains: Vec<Chain>,
    pub(crate) agents: Vec<Agent>,
    pub(crate) extra: String,
    resolver: Option<Arc<dyn Resolver>>,
    pki: Option<UpstreamPki>,
    prepare: Option<Prepare>,
    config_file: bool,
}

impl Kw {
    pub fn builder() -> KwBuilder {
        KwBuilder {
            listen: "127.0.0.1:0".parse().expect("an address"),
            proxy: Vec::new(),
            allow: vec!["pypi.example.test".into()],
            allow_private: vec!["127.0.0.0/8".into()],
            ports: vec![443],
            resolve: Vec::new(),
            admin: false,
            admin_tokens: Vec::new(),
            admin_settings: Vec::new(),
            providers: Vec::new(),
            chains: Vec::new(),
            agents: vec![Agent::agent_1()],
            extra: String::new(),
            resolver: None,
            pki: None,
            prepare: None,
            config_file: true,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The config as keyward loads it from `config_path` now (to change and
    /// apply, or to open the vault it names).
    pub fn config(&self) -> Config {
        Config::from_file(&self.config_path).expect("the test config loads")
    }

    /// Replaces the config file with `config` (as an operator editing it would);
    /// keyward's watcher picks it up.
    pub fn rewrite_config(&self, config: &KwBuilder) {
        let text = config.render(self.dir.path(), self.upstream.addr);
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn last_audit(&self) -> serde_json::Value {
        self.audit_lines().pop().expect("no audit line")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.pem")).unwrap()
    }

    /// A client that authenticates as `AGENT`.
    pub fn client(&self) -> ProxyClient {
        self.client_as(AGENT, TOKEN)
    }

    /// A client that authenticates as `agent` with `token`.
    pub fn client_as(&self, agent: &str, token: &str) -> ProxyClient {
        ProxyClient {
            proxy: self.addr(),
            auth: Some((agent.into(), token.into())),
            ca_pem: self.ca_pem(),
            h2: false,
        }
    }
}

impl KwBuilder {
    /// Sets a `[proxy]` key (`.proxy("max_connections", 2)`,
    /// `.proxy("idle_timeout", "1s")`).
    pub fn proxy(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.proxy.push((key.into(), value.into()));
        self
    }

    /// The proxy's listen address (for a `keyward serve` child on a fixed port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Replaces `egress.allow`.
    pub fn allow(mut self, hosts: &[&str]) -> Self {
        self.allow = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Replaces `egress.allow_private`.
    pub fn allow_private(mut self, nets: &[&str]) -> Self {
        self.allow_private = nets.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Replaces `egress.ports`.
    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports = ports.to_vec();
        self
    }

    /// An `egress.resolve` entry: `host` dials `addr` instead of the echo upstream.
    pub fn resolve(mut self, host: &str, addr: SocketAddr) -> Self {
        self.resolve.push((host.into(), addr));
        self
    }

    /// Turns on the admin listener (127.0.0.1:0), with no tokens yet.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// An admin token (turns on the admin listener).
    pub fn admin_token(mut self, name: &str, token: &str, permissions: &[&str]) -> Self {
        self.admin = true;
        self.admin_tokens
            .push(AdminToken::new(name, token, permissions));
        self
    }

    /// Sets an `[admin]` key (`.admin_setting("console_idle", "1s")`).
    pub fn admin_setting(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.admin = true;
        self.admin_settings.push((key.into(), value.into()));
        self
    }

    /// A `[[providers]]` table after the built-in catalog.
    pub fn provider(mut self, provider: Provider) -> Self {
        self.providers.push(provider);
        self
    }

    /// A `[[chains]]` table.
    pub fn chain(mut self, chain: Chain) -> Self {
        self.chains.push(chain);
        self
    }

    /// An `[[agents]]` table; one with `AGENT`'s id replaces the default agent.
    pub fn agent(mut self, agent: Agent) -> Self {
        match self.agents.iter_mut().find(|a| a.id == agent.id) {
            Some(existing) => *existing = agent,
            None => self.agents.push(agent),
        }
        self
    }

    /// No `[[agents]]` at all (agents come from the vault, e.g. `keyward agent add`).
    pub fn without_agents(mut self) -> Self {
        self.agents.clear();
        self
    }

    /// Further TOML tables, appended verbatim after everything the builder writes.
    pub fn config_toml(mut self, extra: &str) -> Self {
        self.extra.push('\n');
        self.extra.push_str(extra);
        self
    }

    /// The resolver keyward uses for names outside `egress.resolve`.
    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// `names` resolve to these IPs; every other name fails to resolve.
    pub fn resolve_names(self, names: &[(&str, &[&str])]) -> Self {
        let map = names
            .iter()
            .map(|(host, ips)| {
                let ips = ips.iter().map(|ip| ip.parse().expect("an IP")).collect();
                (host.to_string(), ips)
            })
            .collect::<HashMap<_, _>>();
        self.resolver(Arc::new(MapResolver(map)))
    }

    /// The echo upstream's PKI (its CA is what keyward trusts upstream).
    pub fn upstream_pki(mut self, pki: UpstreamPki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Runs `f` on the state dir after the config is written, before keyward starts.
    pub fn before_start(mut self, f: impl FnOnce(&Path) + Send + 'static) -> Self {
        self.prepare = Some(Box::new(f));
        self
    }

    /// Hands keyward the config parsed from text: no file it could reload.
    pub fn without_config_file(mut self) -> Self {
        self.config_file = false;
        self
    }

    /// Writes `upstream-ca.pem` and the config file into `dir` for a `keyward`
    /// child process (no in-process start); returns the config file's path.
    pub fn write_files(&self, dir: &Path, pki: &UpstreamPki, upstream: SocketAddr) -> PathBuf {
        std::fs::write(dir.join("upstream-ca.pem"), &pki.ca_pem).unwrap();
        let path = dir.join(CONFIG_FILE);
        std::fs::write(&path, self.render(dir, upstream)).unwrap();
        path
    }

    /// Starts upstream + keyward; panics with keyward's error if it does not start.
    pub async fn start(self) -> Kw {
        match self.try_start().await {
            Ok(kw) => kw,
            Err(e) => panic!("keyward did not start: {e}"),
        }
    }

    /// Starts upstream + keyward; `Err` is keyward's start-up (or config) error text.
    pub async fn try_start(mut self) -> Result<Kw, String> {
        let pki = self.pki.take().unwrap_or_else(UpstreamPki::new);
        let upstream = EchoUpstream::start(&pki).await;
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join(CONFIG_FILE);
        let text = self.render(dir.path(), upstream.addr);
        std::fs::write(dir.path().join("upstream-ca.pem"), &pki.ca_pem).unwrap();
        if self.config_file {
            std::fs::write(&config_path, &text).unwrap();
        }
        if let Some(prepare) = self.prepare.take() {
            prepare(dir.path());
        }
        let config = if self.config_file {
            Config::from_file(&config_path)
        } else {
            Config::parse(&text, "<text>")
        }
        .map_err(|e| e.to_string())?;
        let resolver = self
            .resolver
            .take()
            .unwrap_or_else(|| Arc::new(MapResolver(HashMap::new())));
        let running = app::start(config, Some(resolver))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Kw {
            running,
            dir,
            upstream,
            pki,
            config_path,
        })
    }
}
