//! The top of the house: builds `State`, starts the proxy listener, the admin API
//! and the watchers (vault, config, SIGHUP), and shuts them down. `main.rs` calls
//! [`serve`]; tests call [`start`] on `127.0.0.1:0`.

use crate::config::Config;
use crate::proxy::state::{StartError, State};
use crate::proxy::upstream::{Resolver, SystemResolver};
use crate::proxy::workers::{self, Workers};
use crate::proxy::{listener, transparent};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the vault file is checked for changes (CLI writes, Secret swaps).
pub const VAULT_POLL: Duration = Duration::from_millis(250);
/// How often the config file is checked for changes (SIGHUP reloads at once).
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// A running proxy (tests start one on port 0 and read `addr`).
pub struct Running {
    pub addr: SocketAddr,
    /// The admin API's bound address, when `[admin].listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// `[proxy].transparent_listen`'s bound address, when set.
    pub transparent_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    transparent_task: Option<JoinHandle<()>>,
    /// Held so the serving threads live as long as this handle.
    _workers: Arc<Workers>,
}

impl Running {
    /// Stops accepting, waits for open connections (up to the grace period).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(t) = self.transparent_task {
            let _ = t.await;
        }
    }
}

/// Binds and starts serving in the background.
pub async fn start(
    config: Config,
    resolver: Option<Arc<dyn Resolver>>,
) -> Result<Running, StartError> {
    let listen = config.proxy.listen;
    let admin_listen = config.admin.listen;
    let transparent = config
        .proxy
        .transparent_listen
        .zip(config.proxy.transparent_agent.clone());
    let state = State::new(config, resolver.unwrap_or_else(|| Arc::new(SystemResolver)))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| StartError::listen("proxy.listen", listen, e))?;
    let addr = listener.local_addr()?;
    *state.dialer.own_addr.write() = Some(addr);
    let workers = match state.limits.workers {
        0 => workers::default_count(),
        n => n,
    };
    let workers = Arc::new(Workers::start(workers, || state.new_client())?);
    let (tx, rx) = watch::channel(false);
    let task = listener::spawn(listener, state.clone(), workers.clone(), rx);
    let (transparent_addr, transparent_task) = match transparent {
        Some((at, agent)) => {
            // The agent may live in the config or the vault: checked here, once
            // both are loaded.
            if !state.runtime().directory.knows(&agent) {
                return Err(StartError::Io(std::io::Error::other(format!(
                    "proxy.transparent_agent: no agent {agent:?} (add it to [[agents]] or `keyward agent add`)"
                ))));
            }
            let l = TcpListener::bind(at)
                .await
                .map_err(|e| StartError::listen("proxy.transparent_listen", at, e))?;
            let bound = l.local_addr()?;
            state.dialer.other_own_addrs.write().push(bound);
            let t = transparent::spawn(l, state.clone(), workers.clone(), tx.subscribe(), agent);
            (Some(bound), Some(t))
        }
        None => (None, None),
    };
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
            let bound = crate::admin::start(state.clone(), a, tx.subscribe())
                .await
                .map_err(|e| StartError::listen("admin.listen", a, e))?;
            state.dialer.other_own_addrs.write().push(bound);
            Some(bound)
        }
        None => None,
    };
    tracing::info!(%addr, admin = ?admin_addr, "keyward listening");
    Ok(Running {
        addr,
        admin_addr,
        transparent_addr,
        state,
        shutdown: tx,
        task,
        transparent_task,
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

fn spawn_vault_watcher(state: Arc<State>, stop: watch::Receiver<bool>) {
    let reloads = state.clone();
    tokio::spawn(crate::vault::watch(
        VAULT_POLL,
        stop,
        move || state.refresh_vault(),
        move || {
            reloads.metrics.vault_reloads.inc();
        },
    ));
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
