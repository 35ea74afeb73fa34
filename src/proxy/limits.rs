//! Per-agent limits: open tunnels and request rate (token bucket). Counters live
//! in `State`, keyed by agent id, so they hold across an agent's tunnels.

use super::error::{Code, Deny};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
pub struct AgentLimits {
    tunnels: AtomicUsize,
    bucket: Mutex<Bucket>,
}

#[derive(Default)]
pub struct Limiter {
    agents: DashMap<String, Arc<AgentLimits>>,
}

/// Held while a tunnel is open; releases the agent's slot on drop.
pub struct TunnelSlot(Arc<AgentLimits>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    fn agent(&self, id: &str) -> Arc<AgentLimits> {
        if let Some(a) = self.agents.get(id) {
            return a.clone();
        }
        self.agents
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(AgentLimits {
                    tunnels: AtomicUsize::new(0),
                    // A new bucket starts full; `take` caps it at the burst size.
                    bucket: Mutex::new(Bucket {
                        tokens: f64::MAX,
                        last: Instant::now(),
                    }),
                })
            })
            .clone()
    }

    /// Takes one of the agent's `max` tunnel slots.
    pub fn open_tunnel(&self, id: &str, max: usize) -> Result<TunnelSlot, Deny> {
        let a = self.agent(id);
        let before = a.tunnels.fetch_add(1, Ordering::Relaxed);
        let slot = TunnelSlot(a);
        // SECURITY: one agent cannot exhaust the process's connections for all others.
        if before >= max {
            let mut d = Deny::new(
                Code::RateLimited,
                format!("this agent already has {max} open tunnels"),
            );
            d.retry_after = Some(1);
            return Err(d);
        }
        Ok(slot)
    }

    /// Takes one request token; `rate` per second, bursts up to `burst`.
    pub fn take(&self, id: &str, rate: f64, burst: f64) -> Result<(), Deny> {
        let a = self.agent(id);
        let mut b = a.bucket.lock();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
        let mut d = Deny::new(
            Code::RateLimited,
            format!("more than {rate} requests per second"),
        );
        d.retry_after = Some(wait);
        Err(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_with_retry_after() {
        let l = Limiter::default();
        assert!(l.take("a", 1.0, 2.0).is_ok());
        assert!(l.take("a", 1.0, 2.0).is_ok());
        let d = l.take("a", 1.0, 2.0).unwrap_err();
        assert_eq!(d.code, Code::RateLimited);
        assert_eq!(d.retry_after, Some(1));
        assert!(l.take("b", 1.0, 2.0).is_ok(), "buckets are per agent");
    }

    #[test]
    fn tunnel_slots_are_released_on_drop() {
        let l = Limiter::default();
        let s1 = l.open_tunnel("a", 1).unwrap();
        assert!(l.open_tunnel("a", 1).is_err());
        drop(s1);
        assert!(l.open_tunnel("a", 1).is_ok());
    }
}
