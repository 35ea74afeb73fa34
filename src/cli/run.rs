//! `keyward run`: CMD in a jail whose only way out is keyward (SPEC §12; the
//! mechanism is `jail`, docs/jail.md). This file turns the command line and the
//! config into `jail::Options`: the token, the environment CMD gets (the
//! `keyward env` one, but naming the jail's own proxy port and carrying no
//! credential), and who CMD runs as.

use super::CliError;
use std::ffi::OsString;
use std::path::PathBuf;

/// The temporary directory of a run (the CA bundle CMD reads) and the file in
/// it naming the run's pid.
const DIR_PREFIX: &str = "keyward-run-";
const PID_FILE: &str = "keyward-run.pid";

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long)]
    pub agent: String,
    /// File holding the agent's (or a session's) token; else `KEYWARD_TOKEN`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// keyward's proxy as this host reaches it (default: the configured listen address).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// The port of the proxy on the jail's own 127.0.0.1 (what `HTTPS_PROXY` names).
    #[arg(long, default_value_t = 3128)]
    pub jail_proxy_port: u16,
    /// Run CMD as UID[:GID] (default: SUDO_UID/SUDO_GID, else 65534 when root).
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[cfg(not(target_os = "linux"))]
pub fn run(_args: RunArgs, _cfg: &crate::config::Config) -> Result<u8, CliError> {
    Err(CliError::User(
        "keyward run needs Linux (network namespaces)".into(),
    ))
}

#[cfg(target_os = "linux")]
pub use linux::run;

#[cfg(target_os = "linux")]
mod linux {
    use super::{CliError, RunArgs, DIR_PREFIX, PID_FILE};
    use crate::cli::env;
    use crate::config::Config;
    use crate::jail::{self, spawn::RunAs, JailError};
    use crate::policy::{Policy, Provider};
    use crate::resolve::Directory;
    use crate::secret::Secret;
    use base64::Engine;
    use std::net::{SocketAddr, ToSocketAddrs};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// The variable the token may come in; never passed to CMD.
    const TOKEN_VAR: &str = "KEYWARD_TOKEN";
    /// Who CMD runs as when `keyward run` is root and no `--user`/`SUDO_UID` says
    /// otherwise: `nobody`, which cannot read root's vault, master key or config.
    const NOBODY: u32 = 65_534;
    pub fn run(args: RunArgs, cfg: &Config) -> Result<u8, CliError> {
        let token = token(&args)?;
        let proxy = proxy_addr(args.proxy.as_deref(), cfg)?;
        let run_as = run_as(args.user.as_deref())?;
        let policy = Policy::from_config(cfg);
        let providers = providers_in_scope(cfg, &policy, &args.agent, &token)?;
        // The bundle must be readable by CMD's user: a directory of our own,
        // marked with our pid so the next run removes it if we are kill -9'd.
        remove_stale_dirs(&std::env::temp_dir());
        let bundle_dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| CliError::Internal(format!("temporary directory: {e}")))?;
        std::fs::write(
            bundle_dir.path().join(PID_FILE),
            std::process::id().to_string(),
        )
        .map_err(|e| CliError::Internal(format!("temporary directory: {e}")))?;
        let bundle = write_bundle(cfg, bundle_dir.path())?;
        let wgetrc = env::write_wgetrc(&bundle)?;
        let env = environment(args.jail_proxy_port, &bundle, &wgetrc, &providers);
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{token}", args.agent));
        let opts = jail::Options {
            argv: args.command,
            env,
            // SECURITY: the token stays outside the jail; CMD gets a proxy URL
            // without userinfo and the relay adds the credentials.
            remove: vec![TOKEN_VAR],
            proxy,
            authorization: Secret::from_str(&format!("Basic {basic}")),
            ports: cfg.egress.ports.clone(),
            proxy_port: args.jail_proxy_port,
            policy,
            run_as,
            user_given: args.user.is_some(),
        };
        let code = jail::run(opts).map_err(|e| match e {
            JailError::User(m) | JailError::Unsupported(m) => CliError::User(m),
            e @ JailError::Setup(_) => CliError::Internal(e.to_string()),
        })?;
        drop(bundle_dir);
        Ok(code)
    }

    fn token(args: &RunArgs) -> Result<String, CliError> {
        let raw = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| CliError::User(format!("--token-file {}: {e}", path.display())))?,
            None => std::env::var(TOKEN_VAR).map_err(|_| {
                CliError::User(format!("give --token-file FILE or set {TOKEN_VAR}"))
            })?,
        };
        let token = raw.trim().to_string();
        if token.is_empty() {
            return Err(CliError::User("the token is empty".into()));
        }
        Ok(token)
    }

    /// `--proxy http://host:port` (or the listen address) as a socket address.
    fn proxy_addr(url: Option<&str>, cfg: &Config) -> Result<SocketAddr, CliError> {
        let Some(url) = url else {
            let mut listen = cfg.proxy.listen;
            if listen.ip().is_unspecified() {
                listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            return Ok(listen);
        };
        let bad = || CliError::User(format!("--proxy {url:?}: expected http://host:port"));
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('@') || authority.contains('/') {
            return Err(bad());
        }
        authority
            .to_socket_addrs()
            .map_err(|e| CliError::User(format!("--proxy {url:?}: {e}")))?
            .next()
            .ok_or_else(bad)
    }

    fn run_as(user: Option<&str>) -> Result<RunAs, CliError> {
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| CliError::User(format!("--user {s:?}: expected UID[:GID] (numbers)")))
        };
        if let Some(spec) = user {
            let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
            return Ok(RunAs {
                uid: parse(u)?,
                gid: parse(g)?,
            });
        }
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if uid != 0 {
            return Ok(RunAs { uid, gid });
        }
        let sudo = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        Ok(match (sudo("SUDO_UID"), sudo("SUDO_GID")) {
            (Some(uid), Some(gid)) if uid != 0 => RunAs { uid, gid },
            _ => RunAs {
                uid: NOBODY,
                gid: NOBODY,
            },
        })
    }

    /// The providers in the agent's scope, whose dummy key variables CMD gets.
    /// Where the vault is not readable here (keyward serve on another host),
    /// every configured provider: keyward authenticates each connection anyway.
    fn providers_in_scope(
        cfg: &Config,
        policy: &Policy,
        agent: &str,
        token: &str,
    ) -> Result<Vec<Arc<Provider>>, CliError> {
        let principal = match crate::vault::open_store(cfg) {
            Ok(vault) => {
                let snapshot = vault.snapshot();
                let directory = Directory::build(cfg, snapshot.agents(), Some(vault.session_key()));
                let p = directory
                    .authenticate(agent, token, crate::clock::unix_now())
                    .ok_or_else(|| {
                        CliError::User(format!("the token does not authenticate agent {agent:?}"))
                    })?;
                Some(p)
            }
            Err(_) => None,
        };
        Ok(policy
            .providers()
            .iter()
            .filter(|p| principal.as_ref().is_none_or(|pr| pr.in_scope(&p.secret)))
            .cloned()
            .collect())
    }

    /// Removes the directories of runs that are gone (kill -9 skips the clean-up).
    /// A directory without a pid file yet (a run starting now) is left alone.
    fn remove_stale_dirs(tmp: &std::path::Path) {
        let Ok(entries) = std::fs::read_dir(tmp) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let pid = std::fs::read_to_string(entry.path().join(PID_FILE))
                .ok()
                .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
            let Some(pid) = pid.filter(|p| *p > 0) else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// System roots plus keyward's CA, world-readable, in `dir`.
    fn write_bundle(cfg: &Config, dir: &std::path::Path) -> Result<PathBuf, CliError> {
        let ca = std::fs::read_to_string(&cfg.tls.ca_cert).map_err(|e| {
        CliError::User(format!(
            "cannot read keyward's CA certificate {}: {e} (run `keyward serve` once, or set tls.ca_cert)",
            cfg.tls.ca_cert.display()
        ))
    })?;
        let bundle = env::bundle_text(&ca);
        let path = dir.join("ca-bundle.pem");
        let io = |e: std::io::Error| CliError::Internal(format!("{}: {e}", path.display()));
        std::fs::write(&path, bundle).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
        Ok(path)
    }

    /// The `keyward env` environment for the jail; the proxy URL has no
    /// userinfo: the jail's proxy port adds the credentials outside the jail.
    fn environment(
        proxy_port: u16,
        bundle: &std::path::Path,
        wgetrc: &std::path::Path,
        providers: &[Arc<Provider>],
    ) -> Vec<(String, String)> {
        let proxy = format!("http://127.0.0.1:{proxy_port}");
        let mut vars = env::client_vars(&proxy, bundle, wgetrc);
        env::add_dummy_keys(&mut vars, providers.iter().map(|p| &**p));
        vars
    }
}
