//! The config file's sections as serde structs (SPEC §3), with their defaults, and
//! the value types (`Dur`, `ByteSize`) and name rules they use.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Where the vault lives: the file (default) or PostgreSQL (SPEC §10).
    pub store: super::store::StoreConfig,
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
        if self.store != new.store {
            changed.push("[store]");
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
    /// A second listener for redirected connections (a pod's TCP sent here by
    /// iptables REDIRECT): the host comes from SNI, the identity is
    /// `transparent_agent` (SPEC §12).
    pub transparent_listen: Option<SocketAddr>,
    /// The agent every connection on `transparent_listen` acts as.
    pub transparent_agent: Option<String>,
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
            transparent_listen: None,
            transparent_agent: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
    pub tokens: Vec<AdminToken>,
    /// A console session ends after this long without a request (default 30 min).
    pub console_idle: Option<Dur>,
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
    /// CIDR networks; a bare address means itself (/32, or /128 for IPv6).
    #[serde(deserialize_with = "private_nets")]
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

/// `egress.allow_private`: each entry a CIDR network or a bare address (its /32
/// or /128), so `["127.0.0.1"]` means what it says.
fn private_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            parse_net(text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an address or a CIDR network \
                     (write e.g. \"10.0.0.0/8\" or \"127.0.0.1\")"
                ))
            })
        })
        .collect()
}

/// A CIDR network, or a bare IPv4/IPv6 address as the network of just itself.
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}
