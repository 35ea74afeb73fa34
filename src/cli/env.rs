//! `keyward env`: the environment a sandbox needs. `environment` writes the CA
//! bundle (and a wgetrc beside it) where a sandbox user can read them and returns
//! the (name, value) pairs; `run` prints them for a shell. Other commands that
//! start a client themselves (`keyward run`) call `environment` directly.

use super::CliError;
use crate::config::{Config, SignConfig};
use crate::policy::Policy;
use crate::resolve::Directory;
use crate::tls::ca::CertAuthority;
use clap::ValueEnum;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The dummy value SDK key variables get; keyward replaces it on the wire.
pub const DUMMY_KEY: &str = "keyward-placeholder";
/// Where the system's CA bundle usually is (Debian/Ubuntu, then RHEL/Fedora, Alpine).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// The bundle's file name when `--bundle` is not given (beside the vault).
pub const BUNDLE_FILE: &str = "ca-bundle.pem";
/// The bundle and the wgetrc hold no secret: a sandbox user must read them.
const PUBLIC_MODE: u32 = 0o644;
/// Hosts no client should send through the proxy.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";
/// Names every client family reads the proxy URL from: curl/Python/Go (upper),
/// wget/git/older tools (lower only), Node's global-agent.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "GLOBAL_AGENT_HTTPS_PROXY",
    "GLOBAL_AGENT_HTTP_PROXY",
];
const NO_PROXY_VARS: &[&str] = &["NO_PROXY", "no_proxy", "GLOBAL_AGENT_NO_PROXY"];
/// Names clients read a CA bundle path from.
const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "AWS_CA_BUNDLE",
];
/// The dummy credentials AWS SDKs and the CLI read; keyward re-signs with the real key.
const AWS_KEY_VARS: &[&str] = &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"];

#[derive(Clone, Copy, ValueEnum)]
pub enum Shell {
    Sh,
    Fish,
    Dotenv,
}

#[derive(clap::Args)]
pub struct EnvArgs {
    #[arg(long)]
    pub agent: String,
    #[arg(long)]
    pub token: String,
    /// Proxy URL as the sandbox reaches keyward (default: the configured listen address).
    #[arg(long)]
    pub proxy: Option<String>,
    #[arg(long, value_enum, default_value = "sh")]
    pub shell: Shell,
    /// Where to write the CA bundle, readable by all (default: ca-bundle.pem beside
    /// the vault). A wgetrc naming it is written beside it.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
}

pub fn run(args: EnvArgs, cfg: &Config) -> Result<u8, CliError> {
    for (k, v) in environment(&args, cfg)? {
        match args.shell {
            Shell::Sh => println!("export {k}={}", sh_quote(&v)),
            Shell::Fish => println!("set -gx {k} {}", sh_quote(&v)),
            Shell::Dotenv => println!("{k}={v}"),
        }
    }
    Ok(0)
}

/// Authenticates the agent, writes the CA bundle and its wgetrc (0644), and
/// returns the variables a sandboxed client needs, in a stable order.
pub fn environment(args: &EnvArgs, cfg: &Config) -> Result<Vec<(String, String)>, CliError> {
    let user = |e: &dyn std::fmt::Display| CliError::User(e.to_string());
    let vault = crate::vault::open_store(cfg).map_err(|e| user(&e))?;
    let snapshot = vault.snapshot();
    let directory = Directory::build(cfg, snapshot.agents(), Some(vault.session_key()));
    // SECURITY: only a token that authenticates the agent gets an environment
    // (and its proxy URL); a wrong one changes nothing on disk.
    let principal = directory
        .authenticate(&args.agent, &args.token, crate::clock::unix_now())
        .ok_or_else(|| {
            CliError::User(format!(
                "the token does not authenticate agent {:?}",
                args.agent
            ))
        })?;

    // Every argument is checked before anything is written.
    let proxy_base = args.proxy.clone().unwrap_or_else(|| {
        let mut listen = cfg.proxy.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}")
    });
    let proxy_url = with_userinfo(&proxy_base, &args.agent, &args.token)?;

    let ca = CertAuthority::load_or_create(&cfg.tls.ca_cert, &cfg.tls.ca_key, 1)
        .map_err(|e| user(&e))?;
    let bundle_path = args.bundle.clone().unwrap_or_else(|| {
        cfg.vault
            .path
            .parent()
            .map(|d| d.join(BUNDLE_FILE))
            .unwrap_or_else(|| PathBuf::from(BUNDLE_FILE))
    });
    write_public(&bundle_path, bundle_text(ca.ca_pem()).as_bytes())?;
    let bundle_abs = std::fs::canonicalize(&bundle_path).unwrap_or(bundle_path);
    let wgetrc = write_wgetrc(&bundle_abs)?;

    let policy = Policy::from_config(cfg);
    let in_scope = policy
        .providers()
        .iter()
        .filter(|p| principal.in_scope(&p.secret));
    let mut vars = client_vars(&proxy_url, &bundle_abs, &wgetrc);
    add_dummy_keys(&mut vars, in_scope.map(|p| &**p));
    Ok(vars)
}

/// The system's roots followed by keyward's CA: what clients in the sandbox trust.
pub fn bundle_text(ca_pem: &str) -> String {
    let mut bundle = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    bundle
}

/// Writes `<stem>.wgetrc` naming `bundle` beside it (0644): wget ignores
/// `SSL_CERT_FILE`.
pub fn write_wgetrc(bundle: &Path) -> Result<PathBuf, CliError> {
    let wgetrc = wgetrc_path(bundle);
    let line = format!("ca_certificate = {}\n", bundle.display());
    write_public(&wgetrc, line.as_bytes())?;
    Ok(wgetrc)
}

/// The variables every client family reads, for one proxy URL and CA bundle, in
/// a stable order (`keyward env` and `keyward run` both start from these).
pub fn client_vars(proxy_url: &str, bundle: &Path, wgetrc: &Path) -> Vec<(String, String)> {
    let bundle = bundle.display().to_string();
    let mut vars: Vec<(String, String)> = Vec::new();
    for name in PROXY_VARS {
        vars.push((name.to_string(), proxy_url.to_string()));
    }
    for name in NO_PROXY_VARS {
        vars.push((name.to_string(), NO_PROXY.into()));
    }
    for name in BUNDLE_VARS {
        vars.push((name.to_string(), bundle.clone()));
    }
    vars.push(("WGETRC".into(), wgetrc.display().to_string()));
    vars.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    // git probes each command without proxy credentials first unless told the
    // method: one 407 and one auth_fail audit line per command otherwise.
    vars.push(("GIT_HTTP_PROXY_AUTHMETHOD".into(), "basic".into()));
    vars
}

/// Adds the dummy key variables SDKs read for these providers (not already set).
pub fn add_dummy_keys<'a>(
    vars: &mut Vec<(String, String)>,
    providers: impl Iterator<Item = &'a crate::policy::Provider>,
) {
    for p in providers {
        let sigv4 = matches!(p.sign, Some(SignConfig::AwsSigv4 { .. }));
        // A SigV4 provider's secret (an access key pair) is read by SDKs as
        // two variables; any other provider without `env` (one from the config
        // file, usually) gets its secret's name, the variable its SDK most
        // likely reads.
        let fallback: &[&str] = if sigv4 { AWS_KEY_VARS } else { &[] };
        let own = if p.env.is_empty() && !sigv4 && is_env_name(&p.secret) {
            std::slice::from_ref(&p.secret)
        } else {
            &p.env[..]
        };
        let names = fallback
            .iter()
            .copied()
            .chain(own.iter().map(String::as_str));
        for var in names {
            if !vars.iter().any(|(k, _)| k == var) {
                vars.push((var.to_string(), DUMMY_KEY.into()));
            }
        }
    }
}

/// `data/ca-bundle.pem` → `data/ca-bundle.wgetrc`.
fn wgetrc_path(bundle: &Path) -> PathBuf {
    let stem = bundle
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "ca-bundle".into());
    bundle.with_file_name(format!("{stem}.wgetrc"))
}

/// Writes a file every user may read (whatever the umask), naming the path and
/// the option to change on failure.
fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let fail = |e: std::io::Error| {
        CliError::User(format!(
            "cannot write {}: {e} (choose another place with --bundle PATH)",
            path.display()
        ))
    };
    std::fs::write(path, bytes).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PUBLIC_MODE)).map_err(fail)
}

/// Percent-encoded in the proxy URL's userinfo: everything but RFC 3986's
/// unreserved characters. `dev-1:kwa_…` stays as it is; clients that send the
/// userinfo undecoded (global-agent) would otherwise present `dev%2D1` and get 407.
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn with_userinfo(base: &str, agent: &str, token: &str) -> Result<String, CliError> {
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| CliError::User(format!("--proxy {base:?}: expected http://host:port")))?;
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, USERINFO).to_string();
    Ok(format!(
        "{scheme}://{}:{}@{}",
        enc(agent),
        enc(token),
        rest.trim_end_matches('/')
    ))
}

/// A portable environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_userinfo_is_encoded_only_where_rfc_3986_requires() {
        let url = with_userinfo("http://127.0.0.1:3128/", "dev-1", "kwa_a.b~c").unwrap();
        assert_eq!(url, "http://dev-1:kwa_a.b~c@127.0.0.1:3128");
        let url = with_userinfo("http://k:3128", "a:b", "t@/ %").unwrap();
        assert_eq!(url, "http://a%3Ab:t%40%2F%20%25@k:3128");
    }

    #[test]
    fn the_wgetrc_is_named_after_the_bundle_beside_it() {
        assert_eq!(
            wgetrc_path(Path::new("/srv/kw/data/ca-bundle.pem")),
            Path::new("/srv/kw/data/ca-bundle.wgetrc")
        );
        assert_eq!(
            wgetrc_path(Path::new("/x/roots")),
            Path::new("/x/roots.wgetrc")
        );
    }
}
