//! Prometheus metrics (SPEC §9 `/metrics`): one registry per process, held in
//! `State`; counters are cheap clones of atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;

/// Upstream latency buckets: 1 ms … ~33 s.
const LATENCY_START: f64 = 0.001;
const LATENCY_FACTOR: f64 = 2.0;
const LATENCY_BUCKETS: u16 = 16;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabel, Counter>,
    pub injections: Family<ProviderLabel, Counter>,
    pub denials: Family<CodeLabel, Counter>,
    pub redactions: Counter,
    pub upstream_latency: Family<ProviderLabel, Histogram>,
    pub open_tunnels: Gauge,
    pub cert_cache_hits: Counter,
    pub cert_cache_misses: Counter,
    pub vault_reloads: Counter,
    /// Connections and lookups a jail refused (reported by `keyward run`, and
    /// every refusal on `proxy.transparent_listen`).
    pub jail_blocks: Counter,
    /// `requests{outcome="allowed"}` and `{outcome="denied"}`, resolved once: a
    /// family lookup allocates its label and hashes it on every request.
    allowed: Counter,
    denied: Counter,
    /// Per-provider series, resolved at a provider's first request and then found
    /// by name without allocating (bounded by the configured providers).
    by_provider: parking_lot::RwLock<HashMap<Arc<str>, ProviderSeries>>,
}

/// One provider's injection counter and latency histogram (shared handles).
#[derive(Clone)]
struct ProviderSeries {
    injections: Counter,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keyward");
        let requests = Family::<OutcomeLabel, Counter>::default();
        let injections = Family::<ProviderLabel, Counter>::default();
        let denials = Family::<CodeLabel, Counter>::default();
        let redactions = Counter::default();
        let upstream_latency = Family::<ProviderLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(
                LATENCY_START,
                LATENCY_FACTOR,
                LATENCY_BUCKETS,
            ))
        });
        let open_tunnels = Gauge::default();
        let cert_cache_hits = Counter::default();
        let cert_cache_misses = Counter::default();
        let vault_reloads = Counter::default();
        let jail_blocks = Counter::default();
        registry.register("requests", "Requests decided, by outcome", requests.clone());
        registry.register(
            "injections",
            "Credentials injected, by provider",
            injections.clone(),
        );
        registry.register(
            "denials",
            "Requests refused, by error code",
            denials.clone(),
        );
        registry.register(
            "redactions",
            "Responses in which an echoed secret was redacted",
            redactions.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time to the upstream response head, by provider",
            upstream_latency.clone(),
        );
        registry.register(
            "open_tunnels",
            "Tunnels (intercepted or blind) currently open",
            open_tunnels.clone(),
        );
        registry.register(
            "cert_cache_hits",
            "Leaf certificate cache hits",
            cert_cache_hits.clone(),
        );
        registry.register(
            "cert_cache_misses",
            "Leaf certificate cache misses (leaves minted)",
            cert_cache_misses.clone(),
        );
        registry.register(
            "vault_reloads",
            "Vault reloads after a change on disk",
            vault_reloads.clone(),
        );
        let outcome = |o: &str| {
            requests
                .get_or_create(&OutcomeLabel { outcome: o.into() })
                .clone()
        };
        let (allowed, denied) = (outcome("allowed"), outcome("denied"));
        registry.register(
            "jail_blocks",
            "Connections and lookups a jail refused (keyward run reports, transparent_listen refusals)",
            jail_blocks.clone(),
        );
        Metrics {
            registry,
            allowed,
            denied,
            by_provider: parking_lot::RwLock::default(),
            requests,
            injections,
            denials,
            redactions,
            upstream_latency,
            open_tunnels,
            cert_cache_hits,
            cert_cache_misses,
            vault_reloads,
            jail_blocks,
        }
    }

    pub fn deny(&self, code: &str) {
        self.denied.inc();
        self.denials
            .get_or_create(&CodeLabel { code: code.into() })
            .inc();
    }

    pub fn inject(&self, provider: &str, latency_secs: f64) {
        self.allowed.inc();
        let series = self.by_provider.read().get(provider).cloned();
        let series = series.unwrap_or_else(|| self.provider_series(provider));
        series.injections.inc();
        series.latency.observe(latency_secs);
    }

    /// Resolves (once per provider) the family members `inject` counts into.
    fn provider_series(&self, provider: &str) -> ProviderSeries {
        let label = ProviderLabel {
            provider: provider.into(),
        };
        let series = ProviderSeries {
            injections: self.injections.get_or_create(&label).clone(),
            latency: self.upstream_latency.get_or_create(&label).clone(),
        };
        self.by_provider
            .write()
            .insert(Arc::from(provider), series.clone());
        series
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements a gauge when dropped (open tunnels).
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(g: &Gauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
