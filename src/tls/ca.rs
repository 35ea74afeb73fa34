//! The keyward CA: load or create it, and mint short-lived leaves for intercepted
//! hosts, cached in a bounded LRU and generated off the async executor.

use super::{provider, TlsError};
use lru::LruCache;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use std::fs::OpenOptions;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Leaves live this long (short: a leaked leaf key is useless soon).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Re-mint a cached leaf this long before it expires.
pub const LEAF_REFRESH_MARGIN: Duration = Duration::from_secs(24 * 3600);
/// Backdating of `not_before`, for clients with a slightly slow clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// A freshly created CA is valid this long.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// ALPN offered to agents.
pub const AGENT_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

struct Cached {
    config: Arc<ServerConfig>,
    refresh_at: Instant,
}

pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    cache: Mutex<LruCache<String, Cached>>,
    pub hits: Counter,
    pub misses: Counter,
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl CertAuthority {
    /// Loads the CA, creating it (key 0600) when neither file exists.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
        cache_size: usize,
    ) -> Result<CertAuthority, TlsError> {
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => create(cert_path, key_path)?,
            (true, false) => {
                return Err(file_err(
                    key_path,
                    "CA key is missing (the certificate exists)",
                ))
            }
            (false, true) => {
                return Err(file_err(
                    cert_path,
                    "CA certificate is missing (the key exists)",
                ))
            }
            (true, true) => {}
        }
        CertAuthority::load(cert_path, key_path, cache_size)
    }

    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        cache_size: usize,
    ) -> Result<CertAuthority, TlsError> {
        check_key_file_mode(key_path)?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|e| file_err(key_path, e))?;
        let ca_pem = std::fs::read_to_string(cert_path).map_err(|e| file_err(cert_path, e))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| file_err(key_path, format!("cannot parse CA key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| file_err(cert_path, format!("cannot parse CA certificate: {e}")))?;
        let cap = NonZeroUsize::new(cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
        Ok(CertAuthority {
            issuer,
            ca_pem,
            cache: Mutex::new(LruCache::new(cap)),
            hits: Counter::default(),
            misses: Counter::default(),
        })
    }

    /// Counts cache hits and misses into these (shared with the metrics registry).
    pub fn with_counters(mut self, hits: Counter, misses: Counter) -> Self {
        self.hits = hits;
        self.misses = misses;
        self
    }

    /// The CA certificate, PEM, for trust bundles.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server config presenting a leaf for `host`; minted on a blocking thread
    /// when not cached.
    pub async fn server_config(
        self: &Arc<Self>,
        host: &str,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(c) = self.cache.lock().get(host) {
            if c.refresh_at > Instant::now() {
                self.hits.inc();
                return Ok(c.config.clone());
            }
        }
        self.misses.inc();
        let this = self.clone();
        let owned = host.to_string();
        let config = tokio::task::spawn_blocking(move || this.mint(&owned))
            .await
            .map_err(|e| TlsError::Crypto(format!("leaf minting task failed: {e}")))??;
        let refresh_at = Instant::now() + LEAF_VALIDITY - LEAF_REFRESH_MARGIN;
        self.cache.lock().put(
            host.to_string(),
            Cached {
                config: config.clone(),
                refresh_at,
            },
        );
        Ok(config)
    }

    /// Mints a leaf and builds its server config (blocking: key generation).
    pub fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let (chain, key) = self.mint_leaf(host)?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Crypto(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Crypto(e.to_string()))?;
        cfg.alpn_protocols = AGENT_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// A leaf for `host`: CA:false, SAN = the host only, EKU serverAuth, short validity.
    pub fn mint_leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let crypto = |e: rcgen::Error| TlsError::Crypto(e.to_string());
        let key = KeyPair::generate().map_err(crypto)?;
        let mut params = CertificateParams::default();
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(crypto)?),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }
}

/// A CA key others can read lets them mint certificates every sandbox trusts.
/// World access is always refused. Group read is refused too, except for a file we
/// do not own whose group is one of ours: a Kubernetes Secret mounted with
/// `fsGroup` (root-owned, 0440, group = the pod's dedicated group).
pub fn check_key_file_mode(key_path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key_path).map_err(|e| file_err(key_path, e))?;
    let mode = meta.permissions().mode();
    let refuse = || {
        file_err(
            key_path,
            format!(
                "CA key is readable by group/others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        )
    };
    // SECURITY: world-readable or -writable keys are never acceptable.
    if mode & 0o007 != 0 {
        return Err(refuse());
    }
    if mode & 0o070 != 0 {
        // SECURITY: a group-readable key we own is a mistake we can fix (chmod);
        // one we do not own is acceptable only if its group is our own.
        // SAFETY: these libc calls only read the process's credentials.
        let euid = unsafe { libc::geteuid() };
        let dedicated_group = meta.uid() != euid && process_groups().contains(&meta.gid());
        if !dedicated_group {
            return Err(refuse());
        }
    }
    Ok(())
}

/// The effective gid and the supplementary groups of this process.
fn process_groups() -> Vec<u32> {
    // SAFETY: getgroups with a correctly sized buffer; the count it returns is
    // the number of entries written.
    unsafe {
        let mut groups = vec![libc::getegid()];
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n > 0 {
            let mut buf = vec![0 as libc::gid_t; n as usize];
            let got = libc::getgroups(n, buf.as_mut_ptr());
            if got > 0 {
                buf.truncate(got as usize);
                groups.extend(buf);
            }
        }
        groups
    }
}

/// Creates a P-256 CA: basicConstraints CA pathlen:0, keyUsage keyCertSign + cRLSign.
fn create(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let crypto = |e: rcgen::Error| TlsError::Crypto(e.to_string());
    let key = KeyPair::generate().map_err(crypto)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "keyward");
    dn.push(DnType::CommonName, "keyward CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(crypto)?;
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Creates `path` with `mode` from the start (never briefly world-readable);
/// fails if it exists.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_ca_key_is_0600_and_leaves_verify_for_their_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let ca = CertAuthority::load_or_create(&c, &k, 4).unwrap();
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (chain, _) = ca.mint_leaf("api.openai.com").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.ca_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("api.openai.com").unwrap();
        assert!(verifier
            .verify_server_cert(&chain[0], &[], &name, &[], now)
            .is_ok());
        let other = rustls::pki_types::ServerName::try_from("api.anthropic.com").unwrap();
        assert!(verifier
            .verify_server_cert(&chain[0], &[], &other, &[], now)
            .is_err());
    }

    #[test]
    fn group_readable_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        CertAuthority::load_or_create(&c, &k, 4).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = CertAuthority::load_or_create(&c, &k, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("readable by group/others"), "{err}");
    }
}
