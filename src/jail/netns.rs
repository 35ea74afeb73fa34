//! The jail's network namespace: a fresh one with only `lo`, where every
//! address is local ("AnyIP": `local 0.0.0.0/0 dev lo table local`), so a
//! connection to any address:port lands on a socket `keyward run` bound there,
//! or is refused at once. Nothing is created on the host: the namespace lives as
//! long as a process or socket in it does, and vanishes with the last one.
//!
//! Must run on the main thread before any other thread exists: `unshare` and
//! `setns` change the calling thread only, and threads started later inherit
//! the namespace of the thread that starts them.

use super::JailError;
use socket2::{Domain, Protocol, Socket, Type};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

/// Listen backlog of the jail's TCP sockets.
const BACKLOG: i32 = 1024;
/// The DNS port the stub answers on.
pub const DNS_PORT: u16 = 53;
/// The commands that make every address local inside the jail (run by `ip`,
/// which inherits the namespace). The IPv6 ones may fail where IPv6 is off.
/// The two addresses on `lo` (outside what the DNS stub hands out) are there
/// for `AI_ADDRCONFIG`: glibc answers no A (AAAA) at all while the only IPv4
/// (IPv6) address is the loopback one.
const SETUP: &[(&[&str], bool)] = &[
    (&["link", "set", "lo", "up"], true),
    (&["addr", "add", "198.19.255.254/32", "dev", "lo"], true),
    (
        &["-6", "addr", "add", "fd6b:7761:7264:1::1/128", "dev", "lo"],
        false,
    ),
    (
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "local",
        ],
        true,
    ),
    (
        &[
            "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "local",
        ],
        false,
    ),
];

/// The sockets bound inside the jail, handed to the relay.
pub struct Sockets {
    /// `[::]:P` (dual stack) for each `egress.ports` port: the transparent catch.
    pub transparent: Vec<std::net::TcpListener>,
    /// `127.0.0.1:proxy_port`: what `HTTPS_PROXY` names inside the jail.
    pub proxy: std::net::TcpListener,
    /// UDP :53, on each resolver address of resolv.conf and the wildcard.
    pub dns: Vec<std::net::UdpSocket>,
}

/// Open handles on the jail's namespaces (for `setns` in a child: CMD, `nft`).
pub struct Namespace {
    pub net: OwnedFd,
    /// The jail's user namespace when `keyward run` is not root: entered
    /// first, it gives the capabilities over `net`.
    pub user: Option<OwnedFd>,
    /// Whether the counting rules (`counters`) are loaded.
    pub counting: bool,
}

impl Namespace {
    /// The raw descriptors, for `enter` between fork and exec.
    pub fn raw(&self) -> (Option<i32>, i32) {
        (
            self.user.as_ref().map(|u| u.as_raw_fd()),
            self.net.as_raw_fd(),
        )
    }
}

/// Joins the jail (its user namespace first, where there is one). Only in a
/// forked child before exec: a process with threads cannot join a user namespace.
pub fn enter(user: Option<i32>, net: i32) -> std::io::Result<()> {
    // SAFETY: setns on descriptors the caller keeps open; no memory preconditions.
    unsafe {
        if let Some(user) = user {
            if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if libc::setns(net, libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn os(what: &str) -> impl FnOnce(std::io::Error) -> JailError + '_ {
    move |e| JailError::Setup(format!("{what}: {e}"))
}

/// The inode of the initial user namespace (`PROC_USER_INIT_INO`, fixed by the kernel).
const INITIAL_USER_NAMESPACE: u64 = 0xEFFF_FFFD;

/// Whether this process is in the initial user namespace, where root can
/// leave a new network namespace again and change uid and groups (`create`,
/// `spawn`). uid 0 of some user namespace (`unshare --user --map-root-user`, a
/// rootless container) takes the unprivileged path instead, one level deeper.
pub fn in_initial_user_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/user").is_ok_and(|m| m.ino() == INITIAL_USER_NAMESPACE)
}

/// Creates the jail and binds its sockets, leaving the calling thread back in
/// the host namespace.
pub fn create(
    ports: &[u16],
    proxy_port: u16,
    nameservers: &[IpAddr],
) -> Result<(Namespace, Sockets), JailError> {
    let host = File::open("/proc/thread-self/ns/net").map_err(os("/proc/thread-self/ns/net"))?;
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(JailError::Unsupported(format!(
            "cannot create a network namespace ({e}); keyward run needs root \
             (CAP_SYS_ADMIN) or, as another user, unprivileged user namespaces"
        )));
    }
    let inside = configure(ports, proxy_port, nameservers);
    // SAFETY: `host` is an open namespace fd; setns has no memory preconditions.
    let back = unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
    // SECURITY: never go on half-way: a relay left in the jail's namespace
    // could reach nothing, and a host-side setup error must not start CMD.
    if back != 0 {
        return Err(JailError::Setup(format!(
            "cannot return to the host network namespace: {}",
            std::io::Error::last_os_error()
        )));
    }
    inside
}

/// Sets up the namespace the calling thread is in (a new, empty one) and binds
/// the jail's sockets there.
pub fn configure(
    ports: &[u16],
    proxy_port: u16,
    nameservers: &[IpAddr],
) -> Result<(Namespace, Sockets), JailError> {
    for (args, required) in SETUP {
        let out = Command::new("ip")
            .args(*args)
            .output()
            .map_err(|e| JailError::Setup(format!("cannot run `ip` (install iproute2): {e}")))?;
        if *required && !out.status.success() {
            return Err(JailError::Setup(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let counting = super::counters::install();
    let mut transparent = Vec::new();
    for &port in ports {
        transparent.push(tcp_any(port)?);
    }
    let proxy = tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, proxy_port))).map_err(|e| {
        JailError::Setup(format!(
            "cannot listen on the jail's proxy port 127.0.0.1:{proxy_port}: {e}"
        ))
    })?;
    let mut dns = Vec::new();
    for ip in nameservers {
        // A resolver address that cannot be bound here (a scoped link-local
        // one) is answered by the wildcard socket instead.
        if let Ok(s) = udp(SocketAddr::new(*ip, DNS_PORT)) {
            dns.push(s);
        }
    }
    match udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, DNS_PORT))) {
        Ok(s) => dns.push(s),
        Err(_) => dns.push(
            udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, DNS_PORT))).map_err(os("DNS stub"))?,
        ),
    }
    let fd = File::open("/proc/thread-self/ns/net").map_err(os("jail namespace"))?;
    let sockets = Sockets {
        transparent,
        proxy,
        dns,
    };
    let ns = Namespace {
        net: fd.into(),
        user: None,
        counting,
    };
    Ok((ns, sockets))
}

/// `[::]:port` dual stack, or `0.0.0.0:port` where IPv6 is off.
fn tcp_any(port: u16) -> Result<std::net::TcpListener, JailError> {
    tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .map_err(|e| JailError::Setup(format!("cannot listen on port {port} in the jail: {e}")))
}

fn tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A UDP socket that shares its port with the others (the most specific
/// address wins, so replies leave from the address the client asked).
fn udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// The `nameserver` addresses of a resolv.conf text (plus systemd-resolved's
/// stub address, which many resolv.conf files point at through a symlink).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![Ipv4Addr::new(127, 0, 0, 53).into()];
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_of_resolv_conf() {
        let text = "# c\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nsearch x\n";
        let ns = nameservers(text);
        assert_eq!(
            ns,
            vec![
                IpAddr::from([127, 0, 0, 53]),
                IpAddr::from([10, 255, 255, 53]),
                "fe80::1".parse::<IpAddr>().unwrap()
            ]
        );
    }
}
