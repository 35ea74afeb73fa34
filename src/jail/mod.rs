//! `keyward run` (SPEC §12): CMD in a network namespace whose only way out is
//! keyward. `netns` makes the namespace and binds its sockets (before any
//! thread exists; as root), `userns` does the same from a forked child in a
//! user namespace (without root), `counters` loads the nftables rules that
//! count what the jail's kernel refuses, `spawn` starts CMD in it without the
//! capabilities to leave, `relay` turns every caught connection into an
//! authenticated CONNECT to `keyward serve`, `dns` is the stub that names
//! keyward's hosts, `sniff` reads SNI and `Host`. See docs/jail.md.

pub mod counters;
pub mod dns;
pub mod netns;
pub mod relay;
pub use crate::sniff;
pub mod spawn;
pub mod userns;

use crate::policy::Policy;
use crate::secret::Secret;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Where resolv.conf is (its nameserver addresses get a stub socket each).
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Worker threads of the relay's runtime.
const RELAY_THREADS: usize = 2;
/// Pause after a failed accept (out of file descriptors), so it does not spin.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// Bad input: exit 1.
    #[error("{0}")]
    User(String),
    /// No way to make a namespace here: exit 1.
    #[error("{0}")]
    Unsupported(String),
    /// The jail could not be set up: exit 2.
    #[error("cannot set up the jail: {0}")]
    Setup(String),
}

/// Everything `run` needs, decided by the CLI.
pub struct Options {
    pub argv: Vec<OsString>,
    /// Variables CMD gets (the `keyward env` environment, without credentials).
    pub env: Vec<(String, String)>,
    /// Variables taken out of CMD's environment (the token's).
    pub remove: Vec<&'static str>,
    /// keyward's proxy, as reached from the host.
    pub proxy: SocketAddr,
    /// `Basic base64(agent:token)`.
    pub authorization: Secret,
    /// `egress.ports`: caught transparently.
    pub ports: Vec<u16>,
    /// The jail's own proxy port on its 127.0.0.1 (what `HTTPS_PROXY` names).
    pub proxy_port: u16,
    /// Names the DNS stub answers: the ones this policy would route.
    pub policy: Policy,
    pub run_as: spawn::RunAs,
    /// Whether `--user` was given (only root can honour it).
    pub user_given: bool,
}

/// Runs CMD in the jail; its exit code. Call on the main thread, before any
/// other thread is started.
pub fn run(opts: Options) -> Result<u8, JailError> {
    if opts.ports.contains(&opts.proxy_port) {
        return Err(JailError::User(format!(
            "the jail's proxy port {} is also in egress.ports; pick another with --jail-proxy-port",
            opts.proxy_port
        )));
    }
    let resolv = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let nameservers = netns::nameservers(&resolv);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0 && netns::in_initial_user_namespace();
    let jail = if root {
        let (ns, sockets) = netns::create(&opts.ports, opts.proxy_port, &nameservers)?;
        Jail::Root(ns, sockets)
    } else {
        // SECURITY: without root there is no switching to another uid; refusing
        // `--user` beats silently running CMD as the caller instead.
        if opts.user_given {
            return Err(JailError::User(
                "--user needs root; without it CMD runs as you (uid 0 of its user namespace)"
                    .into(),
            ));
        }
        let cmd = spawn::Cmd {
            argv: &opts.argv,
            env: &opts.env,
            remove: &opts.remove,
        };
        Jail::User(userns::create(
            &opts.ports,
            opts.proxy_port,
            &nameservers,
            &cmd,
        )?)
    };
    // SECURITY: CMD may run with this process's uid (a user namespace, or
    // `--user 0`); a dumpable process of the same uid can be ptraced, or its
    // /proc/<pid>/mem and environ read, by it, and this one holds the token.
    // SAFETY: prctl on this process; no memory preconditions.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(JailError::Setup(format!(
            "cannot make keyward run non-dumpable: {}",
            std::io::Error::last_os_error()
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RELAY_THREADS)
        .enable_all()
        .build()
        .map_err(|e| JailError::Setup(format!("cannot start the runtime: {e}")))?;
    rt.block_on(supervise(opts, jail))
}

/// The jail as made: by this process (root), or by a child waiting to become CMD.
enum Jail {
    Root(netns::Namespace, netns::Sockets),
    User(userns::Jailed),
}

async fn supervise(opts: Options, jail: Jail) -> Result<u8, JailError> {
    let (ns, sockets, pending) = match jail {
        Jail::Root(ns, sockets) => (ns, sockets, None),
        Jail::User(j) => (j.ns, j.sockets, Some(j.child)),
    };
    let up = Arc::new(relay::Upstream {
        proxy: opts.proxy,
        authorization: opts.authorization,
        names: Arc::new(dns::Names::default()),
        blocked: AtomicU64::new(0),
        reported: AtomicU64::new(0),
        sending: parking_lot::Mutex::new(Vec::new()),
    });
    let adopt = |e: std::io::Error| JailError::Setup(format!("socket: {e}"));
    for l in sockets.transparent {
        let l = tokio::net::TcpListener::from_std(l).map_err(adopt)?;
        tokio::spawn(accept(l, up.clone(), false));
    }
    let l = tokio::net::TcpListener::from_std(sockets.proxy).map_err(adopt)?;
    tokio::spawn(accept(l, up.clone(), true));
    let policy = Arc::new((opts.policy, opts.ports.clone()));
    for s in sockets.dns {
        let s = tokio::net::UdpSocket::from_std(s).map_err(adopt)?;
        tokio::spawn(serve_dns(s, up.clone(), policy.clone()));
    }
    let kernel = Arc::new(parking_lot::Mutex::new(counters::Tally::default()));
    let poller = ns.counting.then(|| {
        let (up, kernel, entry) = (up.clone(), kernel.clone(), ns.raw());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(counters::POLL_INTERVAL).await;
                count_kernel(entry, &up, &kernel).await;
            }
        })
    });
    // Handlers first: a signal that arrives while CMD starts is CMD's, not a
    // kill of `keyward run` (which would take CMD down with it).
    let signals = Signals::new()?;
    let status = match pending {
        None => {
            let cmd = spawn::Cmd {
                argv: &opts.argv,
                env: &opts.env,
                remove: &opts.remove,
            };
            // Spawned from this (the main) thread, which outlives the child.
            let mut child = spawn::spawn(&ns, &cmd, opts.run_as)?;
            let pid = child.id().map(|p| p as libc::pid_t);
            let wait = async move { child.wait().await };
            signals.forward(pid, wait).await?
        }
        Some(child) => {
            let pid = child.start()?;
            let wait = async move {
                tokio::task::spawn_blocking(move || wait_pid(pid))
                    .await
                    .map_err(std::io::Error::other)?
            };
            signals.forward(Some(pid), wait).await?
        }
    };
    if let Some(p) = poller {
        p.abort();
        // The last refusals, up to CMD's exit.
        count_kernel(ns.raw(), &up, &kernel).await;
    }
    drop(ns);
    let blocked = up.blocked.load(std::sync::atomic::Ordering::Relaxed);
    if blocked > 0 {
        tracing::warn!("jail_block: {blocked} connection(s) or lookup(s) refused in total");
        // Reports still on their way, then the refusals not reported yet
        // (between two rate-limited reports).
        let sending = std::mem::take(&mut *up.sending.lock());
        for t in sending {
            let _ = t.await;
        }
        if let Some(report) = up.report("at exit") {
            report.await;
        }
    }
    Ok(spawn::exit_code(status))
}

/// Reads the jail's counters (`nft` run inside it) and reports what is new.
async fn count_kernel(
    (user, net): (Option<i32>, i32),
    up: &relay::Upstream,
    tally: &parking_lot::Mutex<counters::Tally>,
) {
    let mut nft = tokio::process::Command::new("nft");
    nft.args(["-j", "list", "counters", "table", "inet", counters::TABLE])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec, setns only (async-signal-safe) on
    // descriptors the caller keeps open.
    unsafe {
        nft.pre_exec(move || netns::enter(user, net));
    }
    let Ok(out) = nft.output().await else {
        return;
    };
    let Some(now) = counters::parse(&out.stdout) else {
        return;
    };
    let deltas = tally.lock().deltas(now);
    for (n, (_, what)) in deltas.into_iter().zip(counters::COUNTERS) {
        up.block_n(n, what);
    }
}

/// Waits for a child that is not a `tokio::process::Child` (the user-namespace one).
fn wait_pid(pid: libc::pid_t) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` lives on this frame.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

async fn accept(l: tokio::net::TcpListener, up: Arc<relay::Upstream>, proxy_aware: bool) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let up = up.clone();
        if proxy_aware {
            tokio::spawn(relay::proxy_aware(up, stream));
        } else {
            tokio::spawn(relay::transparent(up, stream));
        }
    }
}

async fn serve_dns(
    s: tokio::net::UdpSocket,
    up: Arc<relay::Upstream>,
    policy: Arc<(Policy, Vec<u16>)>,
) {
    let mut buf = [0u8; dns::MAX_MESSAGE * 8];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf).await else {
            continue;
        };
        // A name is reachable when keyward would route it on some allowed port.
        let (policy, ports) = &*policy;
        let reachable = |name: &str| ports.iter().any(|p| policy.route(name, *p).is_ok());
        let Some((answer, verdict)) = dns::answer(&buf[..n], &up.names, reachable) else {
            continue;
        };
        if let dns::Verdict::Refused(name) = &verdict {
            up.block(&format!(
                "DNS lookup of {name:?} (not a host keyward reaches)"
            ));
        }
        let _ = s.send_to(&answer, from).await;
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught for CMD.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, JailError> {
        use tokio::signal::unix::{signal, SignalKind};
        let setup = |e: std::io::Error| JailError::Setup(format!("signal handler: {e}"));
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(setup)?,
            term: signal(SignalKind::terminate()).map_err(setup)?,
            hup: signal(SignalKind::hangup()).map_err(setup)?,
        })
    }

    /// Waits for CMD (`wait`), passing the signals on to `pid`.
    async fn forward(
        mut self,
        pid: Option<libc::pid_t>,
        wait: impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>>,
    ) -> Result<std::process::ExitStatus, JailError> {
        tokio::pin!(wait);
        loop {
            let sig = tokio::select! {
                status = &mut wait => {
                    return status.map_err(|e| JailError::Setup(format!("wait: {e}")));
                }
                _ = self.int.recv() => libc::SIGINT,
                _ = self.term.recv() => libc::SIGTERM,
                _ = self.hup.recv() => libc::SIGHUP,
            };
            if let Some(pid) = pid {
                // SAFETY: kill has no memory preconditions; pid is our child's.
                unsafe {
                    libc::kill(pid, sig);
                }
            }
        }
    }
}
