//! `keyward env`: the environment a sandbox needs, as shell `export` lines.

use super::CliError;
use crate::config::Config;
use crate::policy::Policy;
use crate::resolve::Directory;
use crate::tls::ca::CertAuthority;
use clap::ValueEnum;
use std::path::PathBuf;

/// The dummy value SDK key variables get; keyward replaces it on the wire.
pub const DUMMY_KEY: &str = "keyward-placeholder";
/// Where the system's CA bundle usually is (Debian/Ubuntu, then RHEL/Fedora, Alpine).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

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
    /// Where to write the CA bundle (default: beside the CA certificate).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
}

pub fn run(args: EnvArgs, cfg: &Config) -> Result<u8, CliError> {
    let user = |e: &dyn std::fmt::Display| CliError::User(e.to_string());
    let vault = crate::vault::open_store(cfg).map_err(|e| user(&e))?;
    let snapshot = vault.snapshot();
    let directory = Directory::build(cfg, snapshot.agents(), Some(vault.session_key()));
    let principal = directory
        .authenticate(&args.agent, &args.token, crate::clock::unix_now())
        .ok_or_else(|| {
            CliError::User(format!(
                "the token does not authenticate agent {:?}",
                args.agent
            ))
        })?;

    let ca = CertAuthority::load_or_create(&cfg.tls.ca_cert, &cfg.tls.ca_key, 1)
        .map_err(|e| user(&e))?;
    let bundle_path = args.bundle.clone().unwrap_or_else(|| {
        cfg.tls
            .ca_cert
            .parent()
            .map(|d| d.join("ca-bundle.pem"))
            .unwrap_or_else(|| PathBuf::from("ca-bundle.pem"))
    });
    let mut bundle = String::new();
    if let Some(system) = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
    {
        bundle.push_str(&system);
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
    }
    bundle.push_str(ca.ca_pem());
    std::fs::write(&bundle_path, bundle)
        .map_err(|e| user(&format!("{}: {e}", bundle_path.display())))?;
    let bundle_abs = std::fs::canonicalize(&bundle_path).unwrap_or(bundle_path);

    let proxy_base = args.proxy.clone().unwrap_or_else(|| {
        let mut listen = cfg.proxy.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{listen}")
    });
    let proxy_url = with_userinfo(&proxy_base, &args.agent, &args.token)?;

    let mut vars: Vec<(String, String)> = Vec::new();
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        vars.push((name.into(), proxy_url.clone()));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        vars.push((name.into(), "localhost,127.0.0.1,::1".into()));
    }
    let bundle_str = bundle_abs.display().to_string();
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
    ] {
        vars.push((name.into(), bundle_str.clone()));
    }
    vars.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    let policy = Policy::from_config(cfg);
    for p in policy.providers() {
        if principal.in_scope(&p.secret) {
            // A provider without `env` (one from the config file, usually) gets
            // its secret's name, the variable its SDK most likely reads.
            let names = if p.env.is_empty() && is_env_name(&p.secret) {
                std::slice::from_ref(&p.secret)
            } else {
                &p.env[..]
            };
            for var in names {
                if !vars.iter().any(|(k, _)| k == var) {
                    vars.push((var.clone(), DUMMY_KEY.into()));
                }
            }
        }
    }
    for (k, v) in vars {
        match args.shell {
            Shell::Sh => println!("export {k}={}", sh_quote(&v)),
            Shell::Fish => println!("set -gx {k} {}", sh_quote(&v)),
            Shell::Dotenv => println!("{k}={v}"),
        }
    }
    Ok(0)
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
}
