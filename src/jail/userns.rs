//! The jail without root (unprivileged user namespaces). A process that has
//! joined a new user namespace cannot `setns` back to the host's network
//! namespace, and the relay must live there to reach keyward. So `keyward run`
//! forks (still single-threaded) a child that makes the namespaces and becomes
//! CMD; the parent stays outside:
//!
//! 1. the child: `unshare(CLONE_NEWUSER | CLONE_NEWNET)`, maps uid/gid 0 in it
//!    to the invoking user (setgroups denied), sets up the network namespace
//!    and binds the jail's sockets exactly as root does (`netns::configure`),
//!    and passes them with its namespace handles to the parent over a
//!    socketpair (`SCM_RIGHTS`);
//! 2. the parent starts the relay on the passed sockets (non-dumpable, see
//!    `jail::run`: CMD has its real uid) and says "go";
//! 3. the child hardens itself like a root-spawned CMD (`spawn::exec`: every
//!    capability dropped, no_new_privs, securebits) and execs CMD.
//!
//! The parent reads the jail's counters by entering the user namespace, then
//! the network one, in a forked `nft` (it owns the user namespace, so it has
//! every capability in it).

use super::netns::{self, Namespace, Sockets};
use super::spawn::{self, Cmd};
use super::JailError;
use std::fs::File;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Most descriptors in the one message from child to parent (the kernel's
/// SCM_MAX_FD is 253).
const MAX_FDS: usize = 200;
/// Longest text part of that message (a status line or an error).
const MAX_MESSAGE: usize = 4096;
/// Exit code of the child when the setup failed (the parent reports the error).
const SETUP_FAILED: i32 = 2;
/// Exit code of the child when CMD could not be started (as a shell's).
const EXEC_FAILED: i32 = 127;

/// The jail made by a child that is waiting to become CMD.
pub struct Jailed {
    pub ns: Namespace,
    pub sockets: Sockets,
    pub child: Waiting,
}

/// The child, before it becomes CMD.
pub struct Waiting {
    pid: libc::pid_t,
    control: UnixStream,
}

impl Waiting {
    /// Lets the child exec CMD (after the relay's signal handlers are in
    /// place); its pid.
    pub fn start(mut self) -> Result<libc::pid_t, JailError> {
        self.control
            .write_all(b"g")
            .map_err(|e| JailError::Setup(format!("cannot start CMD: {e}")))?;
        Ok(self.pid)
    }
}

/// Forks the child (see the module doc) and returns once it has made the jail.
/// Call on the main thread before any other thread exists.
pub fn create(
    ports: &[u16],
    proxy_port: u16,
    nameservers: &[IpAddr],
    cmd: &Cmd,
) -> Result<Jailed, JailError> {
    let (parent_end, child_end) =
        UnixStream::pair().map_err(|e| JailError::Setup(format!("socketpair: {e}")))?;
    // SAFETY: getuid/getgid/getpid have no preconditions.
    let (uid, gid, parent) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
    // SAFETY: the process is single-threaded here (see `jail::run`), so the
    // child may allocate and run commands; it never returns (it execs or exits).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::Setup(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(parent_end);
        child(
            child_end,
            uid,
            gid,
            parent,
            ports,
            proxy_port,
            nameservers,
            cmd,
        );
    }
    drop(child_end);
    let control = parent_end;
    let (text, mut fds) = receive(&control)
        .map_err(|e| JailError::Setup(format!("the jail's helper process did not answer: {e}")))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    if let Some(m) = text.strip_prefix("unsupported ") {
        reap(pid);
        return Err(JailError::Unsupported(m.to_string()));
    }
    if let Some(m) = text.strip_prefix("setup ") {
        reap(pid);
        return Err(JailError::Setup(m.to_string()));
    }
    let bad = || JailError::Setup(format!("the jail's helper said {text:?}"));
    let mut words = text.strip_prefix("ok ").ok_or_else(bad)?.split(' ');
    let mut number = || -> Result<usize, JailError> {
        words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)
    };
    let (n_transparent, n_dns, counting) = (number()?, number()?, number()? == 1);
    if fds.len() != n_transparent + n_dns + 3 {
        return Err(bad());
    }
    let user = fds.pop().ok_or_else(bad)?;
    let net = fds.pop().ok_or_else(bad)?;
    let dns = fds.split_off(n_transparent + 1);
    let proxy = fds.pop().ok_or_else(bad)?;
    let sockets = Sockets {
        transparent: fds.into_iter().map(std::net::TcpListener::from).collect(),
        proxy: std::net::TcpListener::from(proxy),
        dns: dns.into_iter().map(std::net::UdpSocket::from).collect(),
    };
    let ns = Namespace {
        net,
        user: Some(user),
        counting,
    };
    Ok(Jailed {
        ns,
        sockets,
        child: Waiting { pid, control },
    })
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
}

/// The forked child: makes the jail, hands it over, becomes CMD.
#[allow(clippy::too_many_arguments)]
fn child(
    mut control: UnixStream,
    uid: u32,
    gid: u32,
    parent: libc::pid_t,
    ports: &[u16],
    proxy_port: u16,
    nameservers: &[IpAddr],
    cmd: &Cmd,
) -> ! {
    // SAFETY: prctl/getppid on this process.
    unsafe {
        // Die with `keyward run` during the setup too (exec keeps it set;
        // `spawn::exec` sets it again after the credential changes).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    match make(uid, gid, ports, proxy_port, nameservers) {
        Ok((ns, sockets)) => {
            let status = format!(
                "ok {} {} {}",
                sockets.transparent.len(),
                sockets.dns.len(),
                u8::from(ns.counting)
            );
            let mut fds: Vec<OwnedFd> =
                sockets.transparent.into_iter().map(OwnedFd::from).collect();
            fds.push(sockets.proxy.into());
            fds.extend(sockets.dns.into_iter().map(OwnedFd::from));
            fds.push(ns.net);
            if let Some(user) = ns.user {
                fds.push(user);
            }
            if send(&control, status.as_bytes(), &fds).is_err() {
                exit(SETUP_FAILED);
            }
            // Our copies: CMD must not inherit them (they are close-on-exec too).
            drop(fds);
        }
        Err(e) => {
            let text = match e {
                JailError::Unsupported(m) => format!("unsupported {m}"),
                e => format!(
                    "setup {}",
                    e.to_string().trim_start_matches("cannot set up the jail: ")
                ),
            };
            let _ = send(&control, text.as_bytes(), &[]);
            exit(SETUP_FAILED);
        }
    }
    let mut go = [0u8; 1];
    if control.read_exact(&mut go).is_err() {
        // keyward run is gone or gave up: CMD never runs unsupervised.
        exit(1);
    }
    drop(control);
    let e = spawn::exec(cmd, parent);
    eprintln!("keyward run: {e}");
    exit(EXEC_FAILED)
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends this (forked) process at once, without running the
    // parent's atexit handlers or flushing its copied buffers.
    unsafe { libc::_exit(code) }
}

/// In the child: the user and network namespaces, the maps, the jail.
fn make(
    uid: u32,
    gid: u32,
    ports: &[u16],
    proxy_port: u16,
    nameservers: &[IpAddr],
) -> Result<(Namespace, Sockets), JailError> {
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(JailError::Unsupported(format!(
            "cannot create a network namespace: not root, and no unprivileged user \
             namespace either ({e}); run as root or allow them (user.max_user_namespaces)"
        )));
    }
    let write = |path: &str, text: String| {
        std::fs::write(path, text).map_err(|e| JailError::Setup(format!("{path}: {e}")))
    };
    // SECURITY: uid/gid 0 inside map to the invoking user only, and setgroups is
    // denied (else CMD could drop a group that a file's permissions deny it).
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    let (mut ns, sockets) = netns::configure(ports, proxy_port, nameservers)?;
    let user = File::open("/proc/self/ns/user")
        .map_err(|e| JailError::Setup(format!("/proc/self/ns/user: {e}")))?;
    ns.user = Some(user.into());
    Ok((ns, sockets))
}

/// One message with descriptors attached.
fn send(sock: &UnixStream, data: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below points into
    // buffers that outlive the sendmsg call, with the lengths given.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), bytes);
        }
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The one message of `send`, with its descriptors (close-on-exec).
fn receive(sock: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; MAX_MESSAGE];
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<i32>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in `send`; the kernel writes at most the lengths given, and
    // each descriptor it passes is new and ours (owned once, here).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<i32>();
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other("too many descriptors"));
        }
        n as usize
    };
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "it exited",
        ));
    }
    data.truncate(n);
    Ok((data, fds))
}
