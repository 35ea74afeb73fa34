//! From `[store]` to a connection: the driver config (URL, password from the URL,
//! `$PGPASSWORD` or `password_file`), TLS over rustls with the ring provider, the
//! pool, and error messages that never carry the password.

use super::super::error::VaultError;
use crate::config::store::{DbTls, StoreConfig, ENV_PGPASSWORD};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::tls::NoTls;
use zeroize::Zeroizing;

/// TCP connect + startup to the database.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection.
pub const POOL_WAIT: Duration = Duration::from_secs(10);
/// Connections per replica (writes are serialised on one row; reads are rare).
pub const POOL_SIZE: usize = 4;
/// A password file larger than this is not one.
const MAX_PASSWORD_FILE: u64 = 4096;

/// Everything needed to open connections; `Debug` shows no password.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// `postgres://user:***@host/db` for messages.
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.shown)
    }
}

/// A store error naming the database (never the password).
pub fn dberr(shown: &str, message: impl Into<String>) -> VaultError {
    VaultError::File {
        path: shown.to_string(),
        message: message.into(),
    }
}

/// The driver's error as one line: the server's message (code and text) or the
/// client-side cause. Neither contains the password: the driver never echoes it.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption")
        {
            text.push_str(HINT_SERVER_WANTS_TLS);
        }
        return text;
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if text.contains("server does not support TLS") {
        text.push_str(HINT_SERVER_HAS_NO_TLS);
    } else if text.contains("invalid peer certificate") {
        text.push_str(HINT_CERTIFICATE);
    }
    text
}

/// What to change when the server's `pg_hba.conf` has only `hostssl` lines.
const HINT_SERVER_WANTS_TLS: &str =
    "; the server accepts TLS connections only: set store.tls = \"verify-full\" (with store.ca) or \"require\"";
/// What to change when `tls` asks for TLS of a server without it.
const HINT_SERVER_HAS_NO_TLS: &str =
    "; turn ssl on in the server, or set store.tls = \"disable\" on a loopback or otherwise protected network only";
/// What to check when verify-full refuses the server's certificate.
const HINT_CERTIFICATE: &str =
    "; store.ca must hold the CA that signed the server's certificate, and store.url's host must be in it";

impl Target {
    pub fn from_config(cfg: &StoreConfig) -> Result<Target, VaultError> {
        let url = cfg.resolved_url().map_err(|m| dberr("store", m))?;
        let shown = url.redacted();
        // SECURITY: the driver's parse error may quote the URL; it is replaced by ours.
        let mut pg = tokio_postgres::Config::from_str(url.expose()).map_err(|_| {
            dberr(
                &shown,
                "store.url: not a valid postgres://user@host:port/dbname URL",
            )
        })?;
        if pg.get_password().is_none() {
            if let Ok(p) = std::env::var(ENV_PGPASSWORD) {
                pg.password(Zeroizing::new(p).as_bytes());
            } else if let Some(file) = &cfg.password_file {
                pg.password(read_password_file(file, &shown)?.as_bytes());
            }
        }
        pg.connect_timeout(CONNECT_TIMEOUT);
        pg.application_name("keyward");
        let tls = match cfg.tls {
            DbTls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            DbTls::Require | DbTls::VerifyFull => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                    rustls_config(cfg, &shown)?,
                ))
            }
        };
        Ok(Target { pg, tls, shown })
    }

    /// A pool of connections (opened lazily, one by one).
    pub fn pool(&self) -> Result<Pool, VaultError> {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &self.tls {
            None => Manager::from_config(self.pg.clone(), NoTls, mc),
            Some(t) => Manager::from_config(self.pg.clone(), t.clone(), mc),
        };
        Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT * 2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| dberr(&self.shown, format!("cannot build the pool: {e}")))
    }

    /// One connection of its own (LISTEN), its driver spawned; notifications go to `tx`.
    pub async fn connect_listener(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<tokio_postgres::Client, VaultError> {
        let map = |e: tokio_postgres::Error| dberr(&self.shown, describe(&e));
        match &self.tls {
            None => {
                let (client, conn) = self.pg.connect(NoTls).await.map_err(map)?;
                tokio::spawn(drive(conn, tx));
                Ok(client)
            }
            Some(t) => {
                let (client, conn) = self.pg.connect(t.clone()).await.map_err(map)?;
                tokio::spawn(drive(conn, tx));
                Ok(client)
            }
        }
    }
}

/// Runs a connection, forwarding each notification's payload; ends with it.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(msg) = futures_util::StreamExt::next(&mut messages).await {
        match msg {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx.send(n.payload().to_string()).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn read_password_file(
    path: &std::path::Path,
    shown: &str,
) -> Result<Zeroizing<String>, VaultError> {
    use std::io::Read;
    let err = |m: String| {
        dberr(
            shown,
            format!("store.password_file {}: {m}", path.display()),
        )
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = Zeroizing::new(String::new());
    f.take(MAX_PASSWORD_FILE)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    let trimmed = Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string());
    if trimmed.is_empty() {
        return Err(err("is empty".into()));
    }
    Ok(trimmed)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_config(cfg: &StoreConfig, shown: &str) -> Result<rustls::ClientConfig, VaultError> {
    let err = |m: String| dberr(shown, m);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS setup: {e}")))?;
    if cfg.tls == DbTls::Require {
        // SECURITY: `require` (libpq's meaning) encrypts but does not authenticate the
        // server; docs/store.md says to use verify-full outside a trusted network.
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| err(format!("store.ca {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| err(format!("store.ca {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| err(format!("store.ca {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(err(format!(
                    "store.ca {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // SECURITY: verify-full checks the chain and the host name of the URL.
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `tls = "require"`: any certificate, but the handshake signature is still checked.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
