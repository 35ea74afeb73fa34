//! Accept loop, connection limit, vault watcher, graceful shutdown.

use super::connect;
use super::error::{Code, Deny};
use super::pipeline;
use super::state::{StartError, State};
use super::upstream::{Resolver, SystemResolver, UpstreamClient};
use super::workers::{self, Workers};
use crate::audit::Event;
use crate::config::Config;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// How often the vault file is checked for changes (CLI writes, Secret swaps).
pub const VAULT_POLL: Duration = Duration::from_millis(250);
/// How often the config file is checked for changes (SIGHUP reloads at once).
pub const CONFIG_POLL: Duration = Duration::from_secs(1);
/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most one audit line per this interval for connections refused over
/// `max_connections` (the metric counts every one).
pub const BUSY_AUDIT_INTERVAL: Duration = Duration::from_secs(1);
/// How long writing the 503 to a connection over `max_connections` may take.
pub const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A running proxy (tests start one on port 0 and read `addr`).
pub struct Running {
    pub addr: SocketAddr,
    /// The admin API's bound address, when `[admin].listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Held so the serving threads live as long as this handle.
    _workers: Arc<Workers>,
}

impl Running {
    /// Stops accepting, waits for open connections (up to the grace period).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds and starts serving in the background.
pub async fn start(
    config: Config,
    resolver: Option<Arc<dyn Resolver>>,
) -> Result<Running, StartError> {
    let listen = config.proxy.listen;
    let admin_listen = config.admin.listen;
    let state = State::new(config, resolver.unwrap_or_else(|| Arc::new(SystemResolver)))?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    *state.dialer.own_addr.write() = Some(addr);
    let workers = match state.limits.workers {
        0 => workers::default_count(),
        n => n,
    };
    let workers = Arc::new(Workers::start(workers, || state.new_client())?);
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, state.clone(), workers.clone(), rx));
    spawn_vault_watcher(state.clone(), tx.subscribe());
    // The handler is installed here, before `start` returns, and whether or not
    // there is a config file: SIGHUP's default action is to end the process, and
    // "reload" must never mean "stop" (nor depend on when a task first runs).
    let hangup = hangup_signal();
    spawn_config_watcher(
        state.clone(),
        state.runtime().config.source.clone(),
        hangup,
        tx.subscribe(),
    );
    let admin_addr = match admin_listen {
        Some(a) => {
            let bound = crate::admin::start(state.clone(), a, tx.subscribe()).await?;
            state.dialer.other_own_addrs.write().push(bound);
            Some(bound)
        }
        None => None,
    };
    tracing::info!(%addr, admin = ?admin_addr, "keyward listening");
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown: tx,
        task,
        _workers: workers,
    })
}

/// Raises the open-file soft limit to the hard limit: every tunnel holds a socket
/// (two while a request is in flight), and the common default of 1024 would cap
/// keyward far below `max_connections`.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on RLIMIT_NOFILE with a properly initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = lim.rlim_max;
            lim.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

/// `keyward serve`: start, then run until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartError> {
    raise_fd_limit();
    let running = start(config, None).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn spawn_vault_watcher(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(VAULT_POLL);
        let mut failures = ReloadFailures::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match state.refresh_vault() {
                Ok(changed) => {
                    if changed {
                        state.metrics.vault_reloads.inc();
                        tracing::info!("vault reloaded");
                    }
                    if failures.recovered() {
                        tracing::info!("vault readable again");
                    }
                }
                Err(e) => {
                    if failures.failed(e.to_string()) {
                        tracing::warn!(error = %e, "vault reload failed; keeping the last good vault");
                    }
                }
            }
        }
    });
}

/// The last reload failure, so that a failure that persists is logged once (not
/// every poll) and a different failure or a recovery is logged when it happens.
#[derive(Debug, Default)]
struct ReloadFailures {
    last: Option<String>,
}

impl ReloadFailures {
    /// Records a failure; true when it differs from the one before (log it).
    fn failed(&mut self, error: String) -> bool {
        if self.last.as_deref() == Some(error.as_str()) {
            return false;
        }
        self.last = Some(error);
        true
    }

    /// Records a success; true when it ends a run of failures.
    fn recovered(&mut self) -> bool {
        self.last.take().is_some()
    }
}

/// (dev, inode, len, mtime) of a path, following symlinks (Kubernetes ConfigMap swaps).
fn file_stamp(path: &std::path::Path) -> Option<(u64, u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
}

/// SIGHUP, caught (see `start`); `None` when the handler cannot be installed.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; reload by editing the config file");
            None
        }
    }
}

/// Reloads providers, chains, agents and egress rules on SIGHUP or when the file
/// changes. A config that fails to parse is logged and the running one kept;
/// open tunnels are never dropped (they read the runtime per request). With no
/// config file (embedded defaults) a SIGHUP only says there is nothing to reload.
fn spawn_config_watcher(
    state: Arc<State>,
    path: Option<std::path::PathBuf>,
    mut hup: Option<tokio::signal::unix::Signal>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut stamp = path.as_deref().and_then(file_stamp);
        let mut tick = tokio::time::interval(CONFIG_POLL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick(), if path.is_some() => false,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
                _ = stop.changed() => return,
            };
            let Some(path) = path.as_deref() else {
                tracing::info!("SIGHUP: no config file (embedded defaults); nothing to reload");
                continue;
            };
            let now = file_stamp(path);
            if !forced && now == stamp {
                continue;
            }
            stamp = now;
            reload_config(&state, path);
        }
    });
}

/// Applies the config at `path` if it is valid; returns whether it was applied.
pub fn reload_config(state: &State, path: &std::path::Path) -> bool {
    match Config::from_file(path) {
        Ok(new) => {
            let old = state.runtime().config.clone();
            let restart_only = old.restart_only_changes(&new);
            if !restart_only.is_empty() {
                tracing::warn!(
                    sections = ?restart_only,
                    "these settings change only on restart; the running values are kept"
                );
            }
            state.apply_config(new);
            tracing::info!(path = %path.display(), "config reloaded");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "config reload failed; keeping the running config");
            false
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    let busy = Bytes::from(busy_response().await);
    let mut last_busy_audit: Option<Instant> = None;
    loop {
        let (stream, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // SECURITY: refusals over the cap come as fast as a flood of connects,
            // and an audit line for each would turn the flood into disk writes (and
            // lock contention with real decisions). Every refusal is counted in
            // metrics; one audit line per BUSY_AUDIT_INTERVAL records that it happens.
            let now = Instant::now();
            let audit =
                last_busy_audit.is_none_or(|t| now.duration_since(t) >= BUSY_AUDIT_INTERVAL);
            if audit {
                last_busy_audit = Some(now);
            }
            tokio::spawn(refuse_busy(state.clone(), stream, busy.clone(), audit));
            continue;
        };
        let state = state.clone();
        // The slot is shared with any tunnel this connection becomes, so it is
        // only released when both are gone.
        let slot = Arc::new(permit);
        // The connection moves to a worker's own reactor and stays there.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                continue;
            }
        };
        let worker = workers.pick();
        let client = worker.client.clone();
        worker.handle.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_connection(state, stream, slot, client).await,
                Err(e) => tracing::warn!(error = %e, "worker cannot take a connection"),
            }
        });
    }
    // Stop accepting at once; then wait until every connection slot is back (open
    // requests and tunnels finished), or the grace period ends.
    drop(listener);
    let all = u32::try_from(state.limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
}

/// The refusal for connections over `max_connections`, rendered once by `Deny`
/// like every other refusal, as HTTP/1.1 bytes. The request is never read: a
/// connection over the cap gets no buffer and no header timer of its own.
async fn busy_response() -> Vec<u8> {
    let resp = Deny::new(
        Code::TooManyConnections,
        "keyward is at proxy.max_connections; retry later",
    )
    .response(None, None);
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_str(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

async fn refuse_busy(state: Arc<State>, mut stream: TcpStream, busy: Bytes, audit: bool) {
    let code = Code::TooManyConnections;
    state.metrics.deny(code.as_str());
    if audit {
        tracing::warn!("connection refused: proxy.max_connections reached");
        let mut ev = Event::new("deny", "denied");
        ev.request_id = Some(pipeline::request_id());
        ev.reason = Some(code.as_str().to_string());
        ev.status = Some(code.status().as_u16());
        if let Err(e) = state.audit.record(ev) {
            tracing::error!(error = %e, "audit log unwritable while refusing");
        }
    }
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        let _ = stream.write_all(&busy).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    state: Arc<State>,
    stream: TcpStream,
    slot: connect::ConnSlot,
    client: UpstreamClient,
) {
    let _ = stream.set_nodelay(true);
    let limits = &state.limits;
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        connect::handle(svc_state.clone(), req, slot.clone(), client.clone())
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(limits.max_header_bytes.max(connect::MIN_BUF))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_failure_is_logged_once_until_it_changes_or_recovers() {
        let mut f = ReloadFailures::default();
        assert!(!f.recovered(), "nothing to recover from");
        assert!(f.failed("bad mac".into()));
        assert!(
            !f.failed("bad mac".into()),
            "the same failure again is quiet"
        );
        assert!(f.failed("truncated".into()), "a different failure is news");
        assert!(f.recovered());
        assert!(!f.recovered());
        assert!(
            f.failed("truncated".into()),
            "after a success it is news again"
        );
    }

    #[tokio::test]
    async fn the_busy_refusal_is_rendered_by_deny() {
        let text = String::from_utf8(busy_response().await).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains("x-keyward-error: too_many_connections"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "keyward.too_many_connections");
    }
}
