//! Egress policy over the CONNECT authority (SPEC §6.2): host canonicalisation,
//! provider match, the blind-tunnel allowlist and allowed ports. Pure functions
//! over data, so it is table-tested without sockets.

use crate::config::{Config, InjectConfig, ProviderConfig, SignConfig};
use crate::netaddr;
use http::HeaderName;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Longest host name DNS allows.
pub const MAX_HOST_LEN: usize = 253;

/// Request headers that carry a client credential: stripped from every
/// intercepted request, whatever the provider's own scheme.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("host is not a valid DNS name or IP literal")]
    BadHost,
    #[error("host is not in the egress allowlist")]
    HostNotAllowed,
    #[error("port {0} is not allowed")]
    PortNotAllowed(u16),
    #[error("target address is {0}")]
    PrivateAddress(&'static str),
}

/// A provider, compiled for the request path.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub hosts: Vec<String>,
    pub secret: String,
    pub inject: Option<InjectConfig>,
    pub sign: Option<SignConfig>,
    pub env: Vec<String>,
    /// Credential headers to remove before injecting: the common set plus the
    /// provider's own inject header.
    pub strip: Vec<HeaderName>,
}

/// What to do with a CONNECT.
#[derive(Debug, Clone)]
pub enum Route {
    /// Terminate TLS and inject this provider's credential.
    Intercept(Arc<Provider>),
    /// Allowlisted: relay bytes, no injection.
    Tunnel,
}

#[derive(Debug)]
pub struct Policy {
    providers: Vec<Arc<Provider>>,
    by_name: HashMap<String, Arc<Provider>>,
    exact: HashMap<String, Arc<Provider>>,
    /// `*.example.com` stored as `example.com`; looked up label by label, so a
    /// route costs the host's label count, not the number of wildcard hosts.
    suffix: HashMap<String, Arc<Provider>>,
    allow_exact: HashSet<String>,
    allow_suffix: HashSet<String>,
    ports: Vec<u16>,
    pub allow_private: Vec<IpNet>,
    pub resolve: BTreeMap<String, SocketAddr>,
}

impl Policy {
    pub fn from_config(cfg: &Config) -> Policy {
        let providers: Vec<Arc<Provider>> = crate::config::catalog::merged(&cfg.providers)
            .iter()
            .map(|p| Arc::new(compile(p)))
            .collect();
        let mut by_name = HashMap::new();
        let mut exact = HashMap::new();
        let mut suffix = HashMap::new();
        for p in &providers {
            by_name.entry(p.name.clone()).or_insert_with(|| p.clone());
            for h in &p.hosts {
                // The first provider listing a host keeps it, as a linear scan would.
                match h.strip_prefix("*.") {
                    Some(s) => suffix.entry(s.to_string()).or_insert_with(|| p.clone()),
                    None => exact.entry(h.clone()).or_insert_with(|| p.clone()),
                };
            }
        }
        let mut allow_exact = HashSet::new();
        let mut allow_suffix = HashSet::new();
        for a in &cfg.egress.allow {
            let a = a.trim_end_matches('.').to_ascii_lowercase();
            match a.strip_prefix("*.") {
                Some(s) => {
                    allow_suffix.insert(s.to_string());
                }
                None => {
                    allow_exact.insert(a);
                }
            }
        }
        let resolve = cfg
            .egress
            .resolve
            .iter()
            .filter_map(|(h, a)| canonical_host(h).map(|h| (h, *a)))
            .collect();
        Policy {
            providers,
            by_name,
            exact,
            suffix,
            allow_exact,
            allow_suffix,
            ports: cfg.egress.ports.clone(),
            allow_private: cfg.egress.allow_private.clone(),
            resolve,
        }
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub fn provider_named(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// The provider whose hosts include `host` (canonical), if any.
    pub fn provider_for(&self, host: &str) -> Option<&Arc<Provider>> {
        self.exact
            .get(host)
            .or_else(|| parent_domains(host).find_map(|s| self.suffix.get(s)))
    }

    fn allowlisted(&self, host: &str) -> bool {
        self.allow_exact.contains(host)
            || parent_domains(host).any(|s| self.allow_suffix.contains(s))
    }

    /// The decision for a CONNECT to `host:port` (`host` canonical).
    pub fn route(&self, host: &str, port: u16) -> Result<Route, Refusal> {
        // SECURITY: only listed ports; a CONNECT to :22 or :25 would make keyward a
        // general-purpose relay out of the sandbox.
        if !self.ports.contains(&port) {
            return Err(Refusal::PortNotAllowed(port));
        }
        // SECURITY: an IP literal in a private range is refused before any policy
        // match, so no allowlist glob can be tricked into reaching an internal address.
        if let Some(ip) = netaddr::parse_ip_lenient(host) {
            netaddr::check(ip, &self.allow_private).map_err(Refusal::PrivateAddress)?;
        }
        if let Some(p) = self.provider_for(host) {
            return Ok(Route::Intercept(p.clone()));
        }
        if self.allowlisted(host) {
            return Ok(Route::Tunnel);
        }
        Err(Refusal::HostNotAllowed)
    }

    /// Whether `host` is one of the hosts a secret `name` is bound to, through
    /// a provider that uses it or its own `hosts` list.
    pub fn host_bound_to(&self, name: &str, host: &str, extra_hosts: &[String]) -> bool {
        let via_provider = self.provider_for(host).is_some_and(|p| p.secret == name);
        via_provider || extra_hosts.iter().any(|h| host_matches(h, host))
    }
}

/// The domains `*.d` would have to name to match `host`, most specific first:
/// `a.b.example.com` → `b.example.com`, `example.com`, `com`. A suffix always has a
/// non-empty label before it, as a `*.` glob requires.
fn parent_domains(host: &str) -> impl Iterator<Item = &str> {
    host.match_indices('.')
        .filter(|(i, _)| *i > 0)
        .map(move |(i, _)| &host[i + 1..])
        .filter(|s| !s.is_empty())
}

/// `pattern` is an exact host or `*.suffix`; `host` is canonical.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(s) => {
            host.len() > s.len() + 1
                && host.ends_with(s)
                && host.as_bytes()[host.len() - s.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

fn compile(p: &ProviderConfig) -> Provider {
    let mut strip: Vec<HeaderName> = CREDENTIAL_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect();
    if let Some(InjectConfig::Header { header, .. }) = &p.inject {
        if let Ok(h) = HeaderName::from_bytes(header.as_bytes()) {
            if !strip.contains(&h) {
                strip.push(h);
            }
        }
    }
    Provider {
        name: p.name.clone(),
        hosts: p
            .hosts
            .iter()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        secret: p.secret.clone(),
        inject: p.inject.clone(),
        sign: p.sign.clone(),
        env: p.env.clone(),
        strip,
    }
}

/// Lower-cases, trims one trailing dot, unwraps `[v6]`, turns odd IPv4 spellings
/// into dotted quads, and rejects anything that is not a plausible DNS name.
pub fn canonical_host(raw: &str) -> Option<String> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() || trimmed.len() > MAX_HOST_LEN {
        return None;
    }
    if let Some(ip) = netaddr::parse_ip_lenient(trimmed) {
        return Some(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string(),
        });
    }
    let host = trimmed.to_ascii_lowercase();
    let labels_ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok.then_some(host)
}

/// Splits a CONNECT authority (`host:port`, `[v6]:port`) into canonical host and port.
pub fn split_authority(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        authority.rsplit_once(':')?
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((canonical_host(host)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> Policy {
        Policy::from_config(&Config::parse(toml, "t.toml").unwrap())
    }

    #[test]
    fn canonical_host_table() {
        let cases = [
            ("API.OpenAI.com", Some("api.openai.com")),
            ("api.openai.com.", Some("api.openai.com")),
            ("", None),
            (".", None),
            ("a..b", None),
            ("exa mple.com", None),
            ("evil.com/x", None),
            ("[::1]", Some("::1")),
            ("-bad.com", None),
        ];
        for (input, want) in cases {
            assert_eq!(canonical_host(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn split_authority_table() {
        assert_eq!(
            split_authority("api.openai.com:443"),
            Some(("api.openai.com".into(), 443))
        );
        assert_eq!(split_authority("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(split_authority("api.openai.com"), None);
        assert_eq!(split_authority("api.openai.com:0"), None);
        assert_eq!(split_authority("api.openai.com:99999"), None);
    }

    #[test]
    fn route_table() {
        let p = policy(
            r#"
[egress]
allow = ["pypi.org", "*.github.com"]
ports = [443, 8443]
"#,
        );
        let intercept = |h: &str, port| matches!(p.route(h, port), Ok(Route::Intercept(_)));
        assert!(intercept("api.openai.com", 443));
        assert!(
            intercept("api.github.com", 443),
            "provider beats allowlist glob"
        );
        assert!(intercept("myres.openai.azure.com", 443));
        assert!(matches!(p.route("pypi.org", 443), Ok(Route::Tunnel)));
        assert!(matches!(
            p.route("codeload.github.com", 8443),
            Ok(Route::Tunnel)
        ));
        assert_eq!(
            p.route("github.com.evil.com", 443).unwrap_err(),
            Refusal::HostNotAllowed
        );
        assert_eq!(
            p.route("evilpypi.org", 443).unwrap_err(),
            Refusal::HostNotAllowed
        );
        assert_eq!(
            p.route("api.openai.com", 22).unwrap_err(),
            Refusal::PortNotAllowed(22)
        );
        assert!(matches!(
            p.route("127.0.0.1", 443),
            Err(Refusal::PrivateAddress(_))
        ));
    }

    #[test]
    fn glob_needs_a_label_boundary() {
        assert!(host_matches("*.github.com", "api.github.com"));
        assert!(!host_matches("*.github.com", "github.com"));
        assert!(!host_matches("*.github.com", "evilgithub.com"));
    }

    #[test]
    fn wildcard_lookup_agrees_with_the_glob_rule() {
        let mut toml = String::from("[egress]\nallow = [\"*.b.example\", \"x.example\"]\n");
        for i in 0..1000 {
            toml.push_str(&format!(
                "[[providers]]\nname = \"p{i}\"\nhosts = [\"*.w{i}.test\"]\nsecret = \"S{i}\"\ninject = {{ header = \"x-k\", value = \"{{secret}}\" }}\n"
            ));
        }
        toml.push_str("[[providers]]\nname = \"deep\"\nhosts = [\"*.in.w7.test\"]\nsecret = \"D\"\ninject = { header = \"x-k\", value = \"{secret}\" }\n");
        let p = policy(&toml);
        let name = |h: &str| p.provider_for(h).map(|p| p.name.clone());
        assert_eq!(name("api.w999.test").as_deref(), Some("p999"));
        assert_eq!(name("a.b.w3.test").as_deref(), Some("p3"));
        assert_eq!(name("w3.test"), None, "a glob needs a label before it");
        assert_eq!(name("evilw3.test"), None);
        assert_eq!(
            name("x.in.w7.test").as_deref(),
            Some("deep"),
            "most specific wins"
        );
        assert_eq!(
            p.provider_named("p500").map(|p| p.secret.as_str()),
            Some("S500")
        );
        assert!(p.allowlisted("c.b.example"));
        assert!(!p.allowlisted("b.example"));
        assert!(p.allowlisted("x.example"));
        assert!(!p.allowlisted("y.x.example"));
    }

    #[test]
    fn provider_inject_header_is_stripped_too() {
        let p = policy(
            r#"
[[providers]]
name = "custom"
hosts = ["api.custom.dev"]
secret = "CUSTOM_KEY"
inject = { header = "x-custom-token", value = "{secret}" }
"#,
        );
        let prov = p.provider_for("api.custom.dev").unwrap();
        assert!(prov.strip.iter().any(|h| h == "x-custom-token"));
        assert!(prov.strip.iter().any(|h| h == "authorization"));
    }
}
