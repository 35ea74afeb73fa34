//! TLS material: the keyward CA that mints leaves toward agents (`ca`), and the
//! verifying client configuration toward upstreams.

pub mod ca;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Crypto(String),
}

/// The crypto provider for everything keyward does with TLS.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots for upstream verification: `"system"` (the OS store, falling back to the
/// bundled webpki roots if it is empty) or a PEM file.
pub fn upstream_roots(spec: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if spec == "system" {
        let loaded = rustls_native_certs::load_native_certs();
        for cert in loaded.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        return Ok(roots);
    }
    let fail = |message: String| TlsError::File {
        path: spec.to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(spec).map_err(|e| fail(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificates in file".into()));
    }
    Ok(roots)
}

/// A client config that verifies upstream certificates against `roots`, with
/// ALPN h2 and http/1.1. There is deliberately no way to turn verification off.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Crypto(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
