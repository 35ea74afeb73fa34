//! Thread-per-core serving. Each worker is a single-threaded tokio runtime on its
//! own thread, with its own pool of upstream connections: a client connection, the
//! tunnel it becomes and the upstream connections its requests use all stay on one
//! worker. There is no work stealing and no cross-thread wake-up on the request
//! path (on the 2-core benchmark machine that was ~18% of keyward's CPU per
//! request; bench/notes.md).

use super::upstream::UpstreamClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// One serving thread.
pub struct Worker {
    pub handle: tokio::runtime::Handle,
    /// The upstream pool of this worker's requests.
    pub client: UpstreamClient,
}

/// The serving threads; dropping this stops them (and ends what they still serve).
pub struct Workers {
    workers: Vec<Worker>,
    next: AtomicUsize,
    _stop: watch::Sender<()>,
}

/// `proxy.workers = 0`: one worker per core this process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Workers {
    /// Starts `count` workers (at least one), each with a client from `client`.
    pub fn start(count: usize, client: impl Fn() -> UpstreamClient) -> std::io::Result<Workers> {
        let (stop, _) = watch::channel(());
        let mut workers = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let mut stopped = stop.subscribe();
            std::thread::Builder::new()
                .name(format!("keyward-worker-{i}"))
                .spawn(move || {
                    // Runs the spawned connections until the sender is dropped.
                    rt.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
            workers.push(Worker {
                handle,
                client: client(),
            });
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// The next worker, round-robin.
    pub fn pick(&self) -> &Worker {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        &self.workers[i]
    }
}
