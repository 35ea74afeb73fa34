//! `State`: everything a running keyward shares, passed as `Arc<State>` (no globals).
//! Its `runtime` (`runtime.rs`) is the hot-reloadable part, swapped atomically so
//! open tunnels keep working across reloads.

use super::limits::Limiter;
use super::runtime::Runtime;
use super::upstream::{self, Dialer, Resolver, UpstreamClient};
use crate::audit::{AuditError, AuditLog};
use crate::config::{Config, ProxyConfig};
use crate::metrics::Metrics;
use crate::redact;
use crate::tls::{self, ca::CertAuthority, TlsError};
use crate::vault::{open_store, Store, VaultError};
use arc_swap::ArcSwap;
use std::sync::Arc;

/// ALPN offered to upstreams.
pub const UPSTREAM_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN for upgrade (WebSocket) handshakes, which need HTTP/1.1.
pub const UPGRADE_ALPN: [&[u8]; 1] = [b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A listener could not bind: `key` is the config key that names `addr`.
    #[error("{}", listen_message(key, addr, source))]
    Listen {
        key: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn listen(key: &'static str, addr: std::net::SocketAddr, source: std::io::Error) -> Self {
        StartError::Listen { key, addr, source }
    }
}

/// What a failed bind means for the one who set `key = addr`, and what to change.
fn listen_message(key: &str, addr: &std::net::SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::AddrInUse => format!(
            "{key} {addr} is in use — is another keyward running? (stop it, or set {key} to a free port)"
        ),
        ErrorKind::PermissionDenied => format!(
            "{key} {addr}: permission denied (ports below 1024 need privileges); set {key} to a port above 1023"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "{key} {addr}: not an address of this machine; set {key} to one (e.g. 127.0.0.1:{})",
            addr.port()
        ),
        _ => format!("{key} {addr}: cannot listen: {e}"),
    }
}

pub struct State {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub vault: Arc<dyn Store>,
    pub audit: AuditLog,
    pub ca: Arc<CertAuthority>,
    pub dialer: Arc<Dialer>,
    /// Verified TLS toward upstreams (pooled clients).
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Verified TLS toward upstreams for upgrade handshakes (HTTP/1.1 only, unpooled).
    pub upgrade_tls: tokio_rustls::TlsConnector,
    /// Listener limits and timeouts (fixed for the process's life).
    pub limits: ProxyConfig,
    pub metrics: Metrics,
    pub limiter: Limiter,
    /// OAuth2 access tokens, per (scope, secret).
    pub oauth: super::inject::oauth2::TokenCache,
    /// Redaction automatons of recently used secret sets.
    pub patterns: redact::PatternCache,
    /// Per agent, the secret values its responses are redacted of.
    pub scopes: redact::ScopeCache,
}

impl State {
    pub fn new(config: Config, resolver: Arc<dyn Resolver>) -> Result<Arc<State>, StartError> {
        let ca = CertAuthority::load_or_create(
            &config.tls.ca_cert,
            &config.tls.ca_key,
            config.proxy.cert_cache_size,
        )?;
        let metrics = Metrics::new();
        let ca = ca.with_counters(
            metrics.cert_cache_hits.clone(),
            metrics.cert_cache_misses.clone(),
        );
        let vault: Arc<dyn Store> = open_store(&config)?;
        let mut audit = AuditLog::open(&config.audit)?;
        if config.store.backend == crate::config::store::Backend::Postgres {
            audit = audit.with_db(open_audit_db(&config.store)?);
        }
        let roots = tls::upstream_roots(&config.tls.upstream_roots)?;
        let client_tls = tls::client_config(roots.clone(), &UPSTREAM_ALPN)?;
        let upgrade_tls =
            tokio_rustls::TlsConnector::from(tls::client_config(roots, &UPGRADE_ALPN)?);
        let limits = config.proxy.clone();
        let runtime = Arc::new(ArcSwap::from_pointee(Runtime::build(
            Arc::new(config),
            &*vault,
        )));
        let dialer = Arc::new(Dialer {
            runtime: runtime.clone(),
            resolver,
            connect_timeout: limits.connect_timeout.0,
            own_addr: parking_lot::RwLock::new(None),
            other_own_addrs: parking_lot::RwLock::new(Vec::new()),
        });
        Ok(Arc::new(State {
            runtime,
            vault,
            audit,
            ca: Arc::new(ca),
            dialer,
            client_tls,
            upgrade_tls,
            limits,
            metrics,
            limiter: Limiter::default(),
            oauth: Default::default(),
            patterns: redact::PatternCache::new(),
            scopes: redact::ScopeCache::new(),
        }))
    }

    /// A fresh pooled client toward upstreams: one per worker, used by that
    /// worker's tunnels for requests, OAuth2 retries and token calls.
    pub fn new_client(&self) -> UpstreamClient {
        upstream::client(
            self.dialer.clone(),
            self.client_tls.clone(),
            self.limits.pool_idle_per_host,
        )
    }

    /// The current runtime (cheap).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Per-agent request rate check (no-op when no rate is configured).
    pub fn rate_check(&self, agent: &str) -> Result<(), super::error::Deny> {
        match self.limits.max_requests_per_second_per_agent {
            Some(rate) if rate > 0.0 => {
                let burst = self.limits.rate_burst.unwrap_or(rate).max(1.0);
                self.limiter.take(agent, rate, burst)
            }
            _ => Ok(()),
        }
    }

    /// Re-reads the vault file if it changed and rebuilds the agent directory.
    pub fn refresh_vault(&self) -> Result<bool, VaultError> {
        let changed = self.vault.reload()?;
        let current = self.runtime.load();
        if changed || current.vault_generation != self.vault.snapshot().generation() {
            self.runtime
                .store(Arc::new(current.after_vault_change(&*self.vault)));
            return Ok(true);
        }
        Ok(false)
    }

    /// Swaps in a new config (providers, chains, agents, egress). Listener limits,
    /// TLS and vault paths need a restart.
    pub fn apply_config(&self, config: Config) {
        self.runtime
            .store(Arc::new(Runtime::build(Arc::new(config), &*self.vault)));
    }
}

/// Names this process's audit chain in the database (docs/store.md "Audit").
pub const ENV_REPLICA_ID: &str = "KEYWARD_REPLICA_ID";

/// The PostgreSQL audit sink for `[store] backend = "postgres"`; the chain is
/// `$KEYWARD_REPLICA_ID`, else `HOSTNAME-PID-RANDOM` (a new chain per start).
fn open_audit_db(
    store: &crate::config::store::StoreConfig,
) -> Result<crate::audit::PgSink, AuditError> {
    let replica = std::env::var(ENV_REPLICA_ID)
        .ok()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "keyward".into());
            format!("{host}-{}-{}", std::process::id(), crate::ids::request_id())
        });
    let make_pool = || {
        crate::vault::postgres::connect::Target::from_config(store)
            .and_then(|t| t.pool())
            .map_err(|e| e.to_string())
    };
    crate::audit::PgSink::start(make_pool, &store.schema, &replica, &store.spool)
}
