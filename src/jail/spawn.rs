//! Starting CMD inside the jail with nothing that could undo it: in the child,
//! between fork and exec, `setns` into the jail, then drop every capability
//! (bounding set, ambient set, securebits so root regains none at exec, the
//! uid/gid change, `PR_SET_NO_NEW_PRIVS`, an empty `capset`), and die with
//! `keyward run` (`PR_SET_PDEATHSIG`). Only async-signal-safe libc calls here.

use super::netns::Namespace;
use super::JailError;
use std::ffi::OsString;

/// `SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED`: uid 0 gets
/// no capabilities at exec, and that cannot be turned back on.
const SECUREBITS: libc::c_ulong = (1 << 0) | (1 << 1) | (1 << 5);
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// Highest capability number tried in the bounding set (the kernel says EINVAL
/// past its last one).
const CAP_MAX: libc::c_ulong = 63;

/// Who CMD runs as.
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// CMD: `argv` with `env` added to (and `remove` taken from) the current environment.
pub struct Cmd<'a> {
    pub argv: &'a [OsString],
    pub env: &'a [(String, String)],
    pub remove: &'a [&'static str],
}

impl Cmd<'_> {
    fn command(&self) -> Result<std::process::Command, JailError> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| JailError::User("give the command to run after `--`".into()))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        for k in self.remove {
            cmd.env_remove(k);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    fn program(&self) -> String {
        self.argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Spawns CMD into the jail (`keyward run` as root). Call from the thread that
/// lives as long as the child (`PR_SET_PDEATHSIG` is tied to the thread that forks).
pub fn spawn(ns: &Namespace, cmd: &Cmd, run_as: RunAs) -> Result<tokio::process::Child, JailError> {
    let mut command = tokio::process::Command::from(cmd.command()?);
    let (_, jail_fd) = ns.raw();
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on values copied in before the fork.
    unsafe {
        command.pre_exec(move || harden(Some(jail_fd), parent, Some(run_as)));
    }
    command.kill_on_drop(true);
    command
        .spawn()
        .map_err(|e| JailError::User(format!("cannot start {}: {e}", cmd.program())))
}

/// Replaces this process (the unprivileged mode's child, already in the
/// jail's user and network namespaces, uid 0 there) with CMD, hardened the
/// same way. Returns only on failure.
pub fn exec(cmd: &Cmd, parent: libc::pid_t) -> JailError {
    use std::os::unix::process::CommandExt;
    let mut command = match cmd.command() {
        Ok(c) => c,
        Err(e) => return e,
    };
    // SAFETY: as in `spawn` (exec runs the closure in this process just before execve).
    unsafe {
        command.pre_exec(move || harden(None, parent, None));
    }
    let e = command.exec();
    JailError::User(format!("cannot start {}: {e}", cmd.program()))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In the forked child, before exec: into the jail (`jail_fd`, as root), then
/// every capability away; `run_as` is `None` in a user namespace, where the
/// only uid is 0 (mapped to the invoking user) and setgroups is denied.
fn harden(jail_fd: Option<i32>, parent: libc::pid_t, run_as: Option<RunAs>) -> std::io::Result<()> {
    // SAFETY (whole block): plain system calls on integers and on structs that
    // live on this stack frame.
    unsafe {
        // SECURITY: into the jail first, while we still hold CAP_SYS_ADMIN; the
        // rest takes away every way back (setns to /proc/1/ns/net needs it).
        if let Some(fd) = jail_fd {
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
        }
        check(libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0))?;
        for cap in 0..=CAP_MAX {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        check(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if let Some(run_as) = run_as {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(run_as.gid))?;
            check(libc::setuid(run_as.uid))?;
        }
        // After the uid change, which clears the parent-death signal.
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() != parent {
            // keyward run died before the line above: do not run unsupervised.
            libc::_exit(1);
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check(libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int)?;
    }
    Ok(())
}

/// The exit code of `keyward run` for CMD's status: its code, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}
