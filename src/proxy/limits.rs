//! Per-agent limits: open tunnels and request rate (token bucket). Counters live
//! in `State`, keyed by agent id, so they hold across an agent's tunnels.
//!
//! Also the idle clock of one intercepted tunnel (`proxy.idle_timeout`): an
//! [`Activity`] shared by the tunnel's stream ([`Tracked`]), its requests
//! ([`InFlight`]) and a watcher ([`Activity::idle`]).

use super::error::{Code, Deny};
use bytes::Bytes;
use dashmap::DashMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// How many times per `idle_timeout` an idle watcher looks at its tunnel: a tunnel
/// is closed between `idle_timeout` and `idle_timeout × (1 + 1/IDLE_CHECKS)` after
/// its last byte (give or take the few milliseconds a timer tick may slip).
pub const IDLE_CHECKS: u32 = 4;
/// The shortest interval between two looks, however short `idle_timeout` is.
pub const MIN_IDLE_CHECK: Duration = Duration::from_millis(50);

/// What an intercepted tunnel has been doing. Idle means no request in flight
/// and no byte read or written for `idle_timeout`.
///
/// A request counts as in flight from the moment the pipeline gets it until its
/// response body has ended (or was dropped). So a slow upstream (bounded by
/// `response_timeout` for the head) and a streamed answer with long silences
/// (SSE, a model thinking before its first token) are never cut by this clock;
/// only a tunnel with nothing outstanding is. An exchange that stalls with a
/// request in flight is the upstream's and the response timeout's business.
#[derive(Debug, Default)]
pub struct Activity {
    /// Set on every byte moved; the watcher clears it when it looks. A flag rather
    /// than a timestamp, so the I/O path pays one relaxed store, no clock read.
    touched: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the tunnel has been idle for at least `idle`.
    pub async fn idle(&self, idle: Duration) {
        let every = (idle / IDLE_CHECKS).max(MIN_IDLE_CHECK);
        // Quiet looks in a row needed to span `idle`: the last byte may have moved
        // just after the look that found the flag set.
        let needed = idle.as_nanos().div_ceil(every.as_nanos().max(1)).max(1);
        let mut quiet: u128 = 0;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let touched = self.touched.swap(false, Ordering::Relaxed);
            if touched || self.in_flight.load(Ordering::Relaxed) > 0 {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= needed {
                return;
            }
        }
    }
}

/// A request in flight on a tunnel (see [`Activity`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock starts when the exchange ends, not at its last byte.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request [`InFlight`] until it ends or is dropped.
pub struct InFlightBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> InFlightBody<B> {
        InFlightBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for InFlightBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that records on its [`Activity`] every time bytes move.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Tracked<T> {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (no paused clock in this crate's tokio features), generous bounds.
    const IDLE: Duration = Duration::from_millis(400);
    /// A late tick (under 5 ms late is not "missed" for tokio) keeps the schedule,
    /// so the next look can come that much sooner than a full period after it.
    const SLACK: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn idle_waits_for_quiet_and_no_request_in_flight() {
        let a = Activity::new();
        let started = Instant::now();
        a.idle(IDLE).await;
        let took = started.elapsed();
        assert!(took + SLACK >= IDLE && took < IDLE * 5, "{took:?}");

        // A request in flight keeps the tunnel busy however long it is silent.
        let guard = a.begin();
        let watcher = tokio::spawn({
            let a = a.clone();
            async move { a.idle(IDLE).await }
        });
        tokio::time::sleep(IDLE * 3).await;
        assert!(!watcher.is_finished(), "closed with a request in flight");
        let ended = Instant::now();
        drop(guard);
        watcher.await.unwrap();
        let quiet_for = ended.elapsed();
        assert!(
            quiet_for + SLACK >= IDLE,
            "idle counts from the end of the exchange: {quiet_for:?}"
        );
    }

    #[tokio::test]
    async fn bytes_moving_keep_a_tunnel_open() {
        let a = Activity::new();
        let watcher = tokio::spawn({
            let a = a.clone();
            async move { a.idle(IDLE).await }
        });
        for _ in 0..10 {
            tokio::time::sleep(IDLE / 4).await;
            a.touch();
        }
        assert!(!watcher.is_finished(), "closed while bytes were moving");
        tokio::time::timeout(IDLE * 5, watcher)
            .await
            .expect("closed once quiet")
            .unwrap();
    }

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
