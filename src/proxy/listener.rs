//! Accept loop, connection limit, vault watcher, graceful shutdown.

use super::connect;
use super::state::{StartError, State};
use super::upstream::{Resolver, SystemResolver, UpstreamClient};
use super::workers::{self, Workers};
use crate::config::Config;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
/// Answer for connections over `max_connections`.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nx-keyward-error: too_many_connections\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

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
    if let Some(path) = state.runtime().config.source.clone() {
        spawn_config_watcher(state.clone(), path, tx.subscribe());
    }
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
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match state.refresh_vault() {
                Ok(true) => tracing::info!("vault reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "vault reload failed; keeping the last good vault")
                }
            }
        }
    });
}

/// (dev, inode, len, mtime) of a path, following symlinks (Kubernetes ConfigMap swaps).
fn file_stamp(path: &std::path::Path) -> Option<(u64, u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.modified().ok()?))
}

/// Reloads providers, chains, agents and egress rules on SIGHUP or when the file
/// changes. A config that fails to parse is logged and the running one kept;
/// open tunnels are never dropped (they read the runtime per request).
fn spawn_config_watcher(
    state: Arc<State>,
    path: std::path::PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut hup = {
            use tokio::signal::unix::{signal, SignalKind};
            signal(SignalKind::hangup()).ok()
        };
        let mut stamp = file_stamp(&path);
        let mut tick = tokio::time::interval(CONFIG_POLL);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
                _ = stop.changed() => return,
            };
            let now = file_stamp(&path);
            if !forced && now == stamp {
                continue;
            }
            stamp = now;
            reload_config(&state, &path);
        }
    });
}

/// Applies the config at `path` if it is valid; returns whether it was applied.
pub fn reload_config(state: &State, path: &std::path::Path) -> bool {
    match Config::from_file(path) {
        Ok(new) => {
            let old = state.runtime().config.clone();
            if new.proxy.listen != old.proxy.listen
                || new.tls.ca_cert != old.tls.ca_cert
                || new.vault.path != old.vault.path
            {
                tracing::warn!("listen address, TLS and vault paths change only on restart");
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
            tokio::spawn(refuse_busy(stream));
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

async fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.write_all(BUSY_RESPONSE).await;
    let _ = stream.shutdown().await;
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
