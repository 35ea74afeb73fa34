//! The configuration file (SPEC §3): serde structs, embedded defaults, and
//! validation whose errors name the file, the line and the key.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `--config` points when it is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/keyward.toml";
/// Name of the pseudo-file used in messages about the embedded defaults.
pub const EMBEDDED_NAME: &str = "<embedded defaults>";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub vault: VaultConfig,
    pub audit: AuditConfig,
    pub egress: EgressConfig,
    pub providers: Vec<ProviderConfig>,
    pub chains: Vec<ChainConfig>,
    pub agents: Vec<AgentConfig>,
    /// The file this came from (None for the embedded defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Config {
    /// The settings read once at start that differ in `new`: a reload cannot apply
    /// them (limits, listeners, TLS material and roots, vault and audit files).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.proxy != new.proxy {
            changed.push("[proxy]");
        }
        if self.tls != new.tls {
            changed.push("[tls]");
        }
        if self.vault != new.vault {
            changed.push("[vault]");
        }
        if self.audit != new.audit {
            changed.push("[audit]");
        }
        if self.admin.listen != new.admin.listen {
            changed.push("admin.listen");
        }
        changed
    }
}

/// Upper bound for `proxy.workers` (each is a thread with its own runtime and pool).
pub const MAX_WORKERS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub max_connections_per_agent: usize,
    /// Token-bucket rate per agent (requests/second); off when absent.
    pub max_requests_per_second_per_agent: Option<f64>,
    /// Bucket size (default: one second's worth, at least 1).
    pub rate_burst: Option<f64>,
    pub header_read_timeout: Dur,
    pub idle_timeout: Dur,
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub max_header_bytes: usize,
    pub max_body_bytes: ByteSize,
    pub cert_cache_size: usize,
    pub pool_idle_per_host: usize,
    /// Serving threads (each a single-threaded runtime); 0 = one per core.
    pub workers: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3128)),
            max_connections: 10_000,
            max_connections_per_agent: 1_000,
            max_requests_per_second_per_agent: None,
            rate_burst: None,
            header_read_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(90)),
            connect_timeout: Dur(Duration::from_secs(10)),
            response_timeout: Dur(Duration::from_secs(300)),
            max_header_bytes: 64 * 1024,
            max_body_bytes: ByteSize(64 * 1024 * 1024),
            cert_cache_size: 1_000,
            pool_idle_per_host: 64,
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    pub tokens: Vec<AdminToken>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// `"system"` or a PEM file of roots. There is no "accept anything".
    pub upstream_roots: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_cert: PathBuf::from("certs/ca.pem"),
            ca_key: PathBuf::from("certs/ca.key"),
            upstream_roots: "system".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    pub path: PathBuf,
    pub master_key_file: PathBuf,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            path: PathBuf::from("data/vault.kw"),
            master_key_file: PathBuf::from("certs/master.key"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A file path, or `-` for stdout.
    pub path: PathBuf,
    /// Rotate the file when it grows past this size (0 = never).
    pub rotate_bytes: ByteSize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: PathBuf::from("data/audit.jsonl"),
            rotate_bytes: ByteSize(0),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    pub allow: Vec<String>,
    pub allow_private: Vec<ipnet::IpNet>,
    pub ports: Vec<u16>,
    pub resolve: BTreeMap<String, SocketAddr>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: Vec::new(),
            allow_private: Vec::new(),
            ports: vec![443],
            resolve: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub hosts: Vec<String>,
    pub secret: String,
    /// How the credential is written into a request (optional when `sign` is set).
    #[serde(default)]
    pub inject: Option<InjectConfig>,
    /// Request signing (HMAC webhooks, AWS SigV4), after any injection.
    #[serde(default)]
    pub sign: Option<SignConfig>,
    /// Dummy-key environment variable(s) `keyward env` sets for this provider.
    #[serde(default)]
    pub env: Vec<String>,
}

/// How keyward signs a request with the provider's secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SignConfig {
    Hmac(HmacSignConfig),
    AwsSigv4 { aws_sigv4: AwsSigv4Config },
}

/// `{ hmac = "sha256", header = "X-Signature", format = "sha256={hex}", over = "body" }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacSignConfig {
    /// Digest: `sha256` (the only one for now).
    pub hmac: String,
    pub header: String,
    /// `{hex}`, `{base64}` and `{ts}` are filled in.
    #[serde(default = "default_sign_format")]
    pub format: String,
    #[serde(default)]
    pub over: SignOver,
    /// If set, the Unix timestamp used is also sent in this header.
    #[serde(default)]
    pub timestamp_header: Option<String>,
}

fn default_sign_format() -> String {
    "sha256={hex}".to_string()
}

/// What an HMAC signature covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SignOver {
    /// The exact body bytes forwarded.
    #[default]
    #[serde(rename = "body")]
    Body,
    /// `"{ts}.{body}"` (Stripe, Slack-style).
    #[serde(rename = "timestamp.body")]
    TimestampBody,
}

/// `{ aws_sigv4 = { service = "s3", region = "us-east-1" } }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSigv4Config {
    pub service: String,
    pub region: String,
    /// Sign with `UNSIGNED-PAYLOAD` and stream the body instead of buffering it.
    #[serde(default)]
    pub unsigned_payload: bool,
}

/// How a provider's credential is written into a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum InjectConfig {
    Header { header: String, value: String },
    Basic { basic: BasicConfig },
    Query { query: String },
    PathPrefix { path_prefix: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    pub user: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    pub name: String,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
    /// Request rules per provider (see `crate::rules`); none = no limit.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// `{ provider = "github", allow = ["GET /repos/**"] }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub provider: String,
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub id: String,
    pub token_sha256: String,
    pub chain: Option<String>,
    pub owner: Option<String>,
    pub builder: Option<String>,
    pub secrets: Option<Vec<String>>,
    #[serde(default, rename = "use")]
    pub pins: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// A duration written as `"10s"`, `"90s"`, `"5m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

/// A size written as an integer of bytes or `"64MiB"`, `"512KiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("invalid size {s:?} (e.g. \"64MiB\")"))
            }),
        }
    }
}

/// `^[A-Z_][A-Z0-9_]*$`: the only secret names the vault and config accept.
pub fn valid_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Permissions an admin token may hold (SPEC §9).
pub const ADMIN_PERMISSIONS: &[&str] = &[
    "secrets:read",
    "secrets:manage",
    "agents:manage",
    "sessions:create",
    "audit:read",
];

/// Tier names accepted in an agent's `use` pins.
pub const TIERS: &[&str] = &["agent", "chain", "owner", "builder", "platform"];

impl Config {
    /// `--config PATH` if given, else `config/keyward.toml` if present, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::from_file(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &file)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates TOML text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                message: e.message().to_string(),
            }
        })?;
        cfg.validate(text, file)?;
        Ok(cfg)
    }

    /// Where a file's messages point: the file name, or the embedded-defaults label.
    pub fn source_name(&self) -> String {
        self.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| EMBEDDED_NAME.into())
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let fail = |needle: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: find_line(text, needle, Occurrence::First),
            message,
        };
        // A duplicate is reported where it is defined again, not at the original.
        let duplicate = |needle: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: find_line(text, needle, Occurrence::Last),
            message,
        };
        if self.tls.upstream_roots.is_empty() {
            return Err(fail(
                "upstream_roots",
                "tls.upstream_roots: must be \"system\" or a PEM path".into(),
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(fail(
                "max_connections",
                "proxy.max_connections: must be at least 1".into(),
            ));
        }
        if self.proxy.workers > MAX_WORKERS {
            return Err(fail(
                "workers",
                format!("proxy.workers: at most {MAX_WORKERS} (0 = one per core)"),
            ));
        }
        for (i, host) in self.egress.allow.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(':') {
                return Err(fail(
                    host,
                    format!("egress.allow[{i}]: {host:?} is not a host or a \"*.suffix\" glob"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if !names.insert(p.name.as_str()) {
                return Err(duplicate(
                    &p.name,
                    format!("providers: duplicate provider name {:?}", p.name),
                ));
            }
            if !valid_secret_name(&p.secret) {
                return Err(fail(
                    &p.secret,
                    format!(
                        "providers.{}.secret: {:?} must match ^[A-Z_][A-Z0-9_]*$",
                        p.name, p.secret
                    ),
                ));
            }
            if p.hosts.is_empty() {
                return Err(fail(
                    &p.name,
                    format!("providers.{}.hosts: at least one host", p.name),
                ));
            }
            match &p.sign {
                None if p.inject.is_none() => {
                    return Err(fail(
                        &p.name,
                        format!("providers.{}: needs `inject` or `sign`", p.name),
                    ))
                }
                Some(SignConfig::Hmac(h)) => {
                    if h.hmac != "sha256" {
                        return Err(fail(
                            &h.hmac,
                            format!(
                                "providers.{}.sign.hmac: only \"sha256\" is supported",
                                p.name
                            ),
                        ));
                    }
                    let names = std::iter::once(&h.header).chain(h.timestamp_header.iter());
                    for name in names {
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(fail(
                                name,
                                format!("providers.{}.sign: invalid header name {name:?}", p.name),
                            ));
                        }
                    }
                    if !h.format.contains("{hex}") && !h.format.contains("{base64}") {
                        return Err(fail(
                            &h.format,
                            format!(
                                "providers.{}.sign.format: must contain {{hex}} or {{base64}}",
                                p.name
                            ),
                        ));
                    }
                }
                Some(SignConfig::AwsSigv4 { aws_sigv4 }) => {
                    let ok = |s: &str| {
                        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    };
                    if !ok(&aws_sigv4.service) || !ok(&aws_sigv4.region) {
                        return Err(fail(
                            &p.name,
                            format!(
                                "providers.{}.sign.aws_sigv4: service and region must be plain names",
                                p.name
                            ),
                        ));
                    }
                }
                None => {}
            }
            let Some(inject) = &p.inject else { continue };
            let template = match inject {
                InjectConfig::Header { header, value } => {
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(fail(
                            header,
                            format!("providers.{}.inject.header: invalid header name", p.name),
                        ));
                    }
                    value.as_str()
                }
                InjectConfig::Basic { basic } => {
                    if basic.user.contains("{secret}") || basic.password.contains("{secret}") {
                        ""
                    } else {
                        "missing"
                    }
                }
                InjectConfig::Query { query } => {
                    if query.is_empty() {
                        "missing"
                    } else {
                        ""
                    }
                }
                InjectConfig::PathPrefix { path_prefix } => {
                    if !path_prefix.starts_with('/') {
                        return Err(fail(
                            path_prefix,
                            format!("providers.{}.inject.path_prefix: must start with /", p.name),
                        ));
                    }
                    path_prefix.as_str()
                }
            };
            if template == "missing" || (!template.is_empty() && !template.contains("{secret}")) {
                return Err(fail(
                    &p.name,
                    format!(
                        "providers.{}.inject: the template must contain {{secret}}",
                        p.name
                    ),
                ));
            }
        }
        let mut chains = std::collections::HashSet::new();
        for c in &self.chains {
            if !chains.insert(c.name.as_str()) {
                return Err(duplicate(
                    &c.name,
                    format!("chains: duplicate chain {:?}", c.name),
                ));
            }
            for s in c.secrets.iter().flatten() {
                if !valid_secret_name(s) {
                    return Err(fail(
                        s,
                        format!(
                            "chains.{}.secrets: {s:?} must match ^[A-Z_][A-Z0-9_]*$",
                            c.name
                        ),
                    ));
                }
            }
        }
        let mut agents = std::collections::HashSet::new();
        for a in &self.agents {
            if !agents.insert(a.id.as_str()) {
                return Err(duplicate(
                    &a.id,
                    format!("agents: duplicate agent id {:?}", a.id),
                ));
            }
            if !valid_agent_id(&a.id) {
                return Err(fail(
                    &a.id,
                    format!("agents.{}.id: use letters, digits, '-', '_', '.'", a.id),
                ));
            }
            if a.token_sha256.len() != 64
                || !a
                    .token_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(fail(
                    &a.token_sha256,
                    format!(
                        "agents.{}.token_sha256: must be 64 lowercase hex characters",
                        a.id
                    ),
                ));
            }
            if let Some(chain) = &a.chain {
                if !chains.contains(chain.as_str()) {
                    return Err(fail(
                        chain,
                        format!("agents.{}.chain: no chain named {chain:?}", a.id),
                    ));
                }
            }
            for (secret, tier) in &a.pins {
                if !TIERS.contains(&tier.as_str()) {
                    return Err(fail(
                        tier,
                        format!(
                            "agents.{}.use.{secret}: tier {tier:?} is not one of {}",
                            a.id,
                            TIERS.join(", ")
                        ),
                    ));
                }
            }
        }
        let known: std::collections::HashSet<String> = crate::catalog::merged(&self.providers)
            .into_iter()
            .map(|p| p.name)
            .collect();
        let levels = self
            .chains
            .iter()
            .map(|c| ("chains", &c.name, &c.rules))
            .chain(self.agents.iter().map(|a| ("agents", &a.id, &a.rules)));
        for (level, name, rules) in levels {
            for r in rules {
                if !known.contains(&r.provider) {
                    return Err(fail(
                        &r.provider,
                        format!("{level}.{name}.rules: no provider named {:?}", r.provider),
                    ));
                }
                for text in &r.allow {
                    if let Err(e) = crate::rules::Rule::parse(text) {
                        return Err(fail(text, format!("{level}.{name}.rules: {e}")));
                    }
                }
            }
        }
        for t in &self.admin.tokens {
            for p in &t.permissions {
                if !ADMIN_PERMISSIONS.contains(&p.as_str()) {
                    return Err(fail(
                        p,
                        format!(
                            "admin.tokens.{}.permissions: {p:?} is not one of {}",
                            t.name,
                            ADMIN_PERMISSIONS.join(", ")
                        ),
                    ));
                }
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail(
                    &t.sha256,
                    format!("admin.tokens.{}.sha256: must be 64 hex characters", t.name),
                ));
            }
        }
        Ok(())
    }
}

/// Agent ids appear in URLs (`http://ID:TOKEN@…`) and audit lines: keep them plain.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Which occurrence [`find_line`] reports.
#[derive(Clone, Copy)]
enum Occurrence {
    First,
    Last,
}

/// Best-effort line of `needle` (for semantic errors): the value as a quoted TOML
/// string if it appears so (`"triage"` is not found inside `"triage-x"`), else the
/// bare text; line 1 when it is not in the file (a default).
fn find_line(text: &str, needle: &str, which: Occurrence) -> usize {
    let find = |n: &str| match which {
        Occurrence::First => text.find(n),
        Occurrence::Last => text.rfind(n),
    };
    find(&format!("\"{needle}\""))
        .or_else(|| find(needle))
        .map(|o| line_of(text, o))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.proxy.listen.port(), 3128);
        assert_eq!(c.egress.ports, vec![443]);
        assert_eq!(c.proxy.max_body_bytes.0, 64 << 20);
    }

    #[test]
    fn reload_names_the_sections_only_a_restart_applies() {
        let old = Config::parse("", "t.toml").unwrap();
        let same = Config::parse("[egress]\nallow = [\"pypi.org\"]\n", "t.toml").unwrap();
        assert!(old.restart_only_changes(&same).is_empty());
        let new = Config::parse(
            "[proxy]\nidle_timeout = \"5s\"\n[audit]\nrotate_bytes = 1000\n\
             [tls]\nupstream_roots = \"roots.pem\"\n[admin]\nlisten = \"127.0.0.1:9\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            vec!["[proxy]", "[tls]", "[audit]", "admin.listen"]
        );
    }

    #[test]
    fn semantic_errors_point_at_the_exact_value_and_the_duplicate() {
        let sha =
            "token_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
        let text = format!(
            "[[chains]]\nname = \"triage-x\"\n\n[[agents]]\nid = \"a1\"\n{sha}chain = \"triage\"\n"
        );
        let text = text.as_str();
        let err = Config::parse(text, "k.toml").unwrap_err().to_string();
        assert!(err.starts_with("k.toml:7:"), "{err}");
        let text = format!("[[agents]]\nid = \"a1\"\n{sha}\n[[agents]]\nid = \"a1\"\n{sha}");
        let err = Config::parse(&text, "k.toml").unwrap_err().to_string();
        assert!(err.starts_with("k.toml:6:"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err =
            Config::parse("[proxy]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "k.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("k.toml:3:"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn bad_duration_is_rejected_with_line() {
        let err = Config::parse("[proxy]\n\nidle_timeout = \"soon\"\n", "k.toml").unwrap_err();
        assert!(err.to_string().starts_with("k.toml:3:"), "{err}");
    }

    #[test]
    fn workers_default_to_one_per_core_and_are_bounded() {
        assert_eq!(Config::parse("", "k.toml").unwrap().proxy.workers, 0);
        let ok = Config::parse("[proxy]\nworkers = 3\n", "k.toml").unwrap();
        assert_eq!(ok.proxy.workers, 3);
        let err = Config::parse("[proxy]\nworkers = 100000\n", "k.toml").unwrap_err();
        assert!(err.to_string().contains("k.toml:2:"), "{err}");
        assert!(err.to_string().contains("proxy.workers"), "{err}");
    }

    #[test]
    fn agent_with_unknown_chain_is_rejected() {
        let text = "[[agents]]\nid = \"a\"\ntoken_sha256 = \"".to_string()
            + &"0".repeat(64)
            + "\"\nchain = \"nope\"\n";
        let err = Config::parse(&text, "k.toml").unwrap_err();
        assert!(err.to_string().contains("k.toml:4:"), "{err}");
    }

    #[test]
    fn inject_schemes_parse() {
        let text = r#"
[[providers]]
name = "a"
hosts = ["a.example"]
secret = "A"
inject = { header = "authorization", value = "Bearer {secret}" }
[[providers]]
name = "b"
hosts = ["b.example"]
secret = "B"
inject = { basic = { user = "{secret}" } }
[[providers]]
name = "c"
hosts = ["c.example"]
secret = "C"
inject = { query = "key" }
[[providers]]
name = "d"
hosts = ["d.example"]
secret = "D"
inject = { path_prefix = "/bot{secret}" }
"#;
        let c = Config::parse(text, "k.toml").unwrap();
        assert!(matches!(
            c.providers[3].inject,
            Some(InjectConfig::PathPrefix { .. })
        ));
        assert!(matches!(
            c.providers[1].inject,
            Some(InjectConfig::Basic { .. })
        ));
    }

    #[test]
    fn unknown_admin_permission_is_rejected() {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{{ name = \"ops\", sha256 = \"{}\", permissions = [\"secret:read\"] }}]\n",
            "0".repeat(64)
        );
        let err = Config::parse(&text, "k.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("k.toml:3:") && err.contains("secret:read"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("64MiB"), Some(64 << 20));
        assert_eq!(ByteSize::parse("12"), Some(12));
        assert_eq!(ByteSize::parse("1TiB"), None);
    }
}
