//! TLS and CA hygiene (issue 6): what the keyward CA and its leaves may sign and
//! for how long, that leaves are minted only for hosts policy allows, that the CA
//! key is private, and that upstream certificates are really verified.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::*;

/// The certificate chain keyward presents for `host` inside a tunnel.
async fn presented_chain(kw: &Kw, host: &str) -> Vec<CertificateDer<'static>> {
    let c = kw.client();
    let stream = c.connect(&format!("{host}:443")).await.expect("CONNECT");
    let tls = tokio_rustls::TlsConnector::from(c.tls_config())
        .connect(ServerName::try_from(host.to_string()).unwrap(), stream)
        .await
        .expect("TLS");
    tls.get_ref().1.peer_certificates().unwrap().to_vec()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const DAY: i64 = 24 * 3600;

#[tokio::test]
async fn ca_certificate_is_pathlen_0_with_key_cert_sign() {
    let kw = Kw::builder().start().await;
    let pem = kw.ca_pem();
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let ca = pem.parse_x509().unwrap();
    let bc = ca.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical, "basicConstraints must be critical on a CA");
    assert!(bc.value.ca);
    assert_eq!(
        bc.value.path_len_constraint,
        Some(0),
        "the CA may sign leaves only, never another CA"
    );
    let ku = ca.key_usage().unwrap().expect("keyUsage");
    assert!(ku.value.key_cert_sign());
    assert!(
        !ku.value.digital_signature() && !ku.value.key_encipherment(),
        "the CA key is for signing certificates, not for TLS"
    );
    assert!(
        ca.extended_key_usage().unwrap().is_none()
            || !ca.extended_key_usage().unwrap().unwrap().value.any,
        "no anyExtendedKeyUsage on the CA"
    );
    assert_eq!(ca.subject(), ca.issuer(), "self-signed root");
}

#[tokio::test]
async fn leaf_is_not_a_ca_is_server_auth_only_and_names_only_the_host() {
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let chain = presented_chain(&kw, "api.openai.com").await;
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    assert!(!leaf.is_ca());
    if let Some(bc) = leaf.basic_constraints().unwrap() {
        assert!(!bc.value.ca, "leaf claims to be a CA");
    }
    let eku = leaf.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth);
    assert!(
        !eku.any && !eku.client_auth && !eku.code_signing && !eku.email_protection,
        "leaf EKU wider than serverAuth: {eku:?}"
    );
    if let Some(ku) = leaf.key_usage().unwrap() {
        assert!(!ku.value.key_cert_sign(), "leaf may sign certificates");
        assert!(!ku.value.crl_sign());
    }
    let san = leaf.subject_alternative_name().unwrap().expect("SAN").value;
    let names: Vec<String> = san.general_names.iter().map(|g| g.to_string()).collect();
    assert_eq!(
        names,
        vec!["DNSName(api.openai.com)".to_string()],
        "{names:?}"
    );
    // Signed by the keyward CA (not self-signed).
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(kw.ca_pem().as_bytes()).unwrap();
    let ca = ca_pem.parse_x509().unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key())).unwrap();
}

#[tokio::test]
async fn leaf_is_valid_for_at_most_seven_days() {
    let kw = Kw::builder().start().await;
    let chain = presented_chain(&kw, "api.openai.com").await;
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let v = leaf.validity();
    let (nb, na, now) = (
        v.not_before.timestamp(),
        v.not_after.timestamp(),
        now_unix(),
    );
    assert!(
        na <= now + 7 * DAY + 60,
        "leaf expires more than 7 days from now"
    );
    assert!(na > now + 6 * DAY, "leaf is suspiciously short-lived");
    assert!(
        nb >= now - 2 * 3600 && nb <= now + 60,
        "not_before backdated by more than the clock-skew allowance"
    );
}

#[tokio::test]
async fn each_host_gets_its_own_leaf_key() {
    let kw = Kw::builder().start().await;
    let a = presented_chain(&kw, "api.openai.com").await;
    let b = presented_chain(&kw, "api.anthropic.com").await;
    let (_, a) = X509Certificate::from_der(a[0].as_ref()).unwrap();
    let (_, b) = X509Certificate::from_der(b[0].as_ref()).unwrap();
    assert_ne!(
        a.public_key().raw,
        b.public_key().raw,
        "one leaf key for several hosts widens what a leaked key can impersonate"
    );
    assert_ne!(a.raw_serial(), b.raw_serial());
}

fn minted(kw: &Kw) -> (u64, u64) {
    let ca = &kw.running.state.ca;
    (ca.misses.get(), ca.hits.get())
}

#[tokio::test]
async fn refused_connect_mints_no_leaf() {
    let kw = Kw::builder().start().await;
    // Not allowed, private, wrong port, blind tunnel host, no auth, wrong auth.
    for a in [
        "evil.example.test:443",
        "10.0.0.1:443",
        "169.254.169.254:443",
        "api.openai.com:22",
    ] {
        assert!(kw.client().connect(a).await.is_err(), "{a}");
    }
    let mut anon = kw.client();
    anon.auth = None;
    assert!(anon.connect("api.openai.com:443").await.is_err());
    let mut wrong = kw.client();
    wrong.auth = Some((AGENT.into(), "nope".into()));
    assert!(wrong.connect("api.openai.com:443").await.is_err());
    // A blind tunnel is allowed but never intercepted: no leaf either.
    let mut c = kw.client();
    c.ca_pem = kw.pki.ca_pem.clone();
    assert_eq!(
        c.get("pypi.example.test", "/simple/", &[]).await.status,
        200
    );
    assert_eq!(minted(&kw), (0, 0), "a leaf was minted for a refused host");
}

#[tokio::test]
async fn allowed_connect_mints_one_leaf_then_reuses_it() {
    let kw = Kw::builder().start().await;
    presented_chain(&kw, "api.openai.com").await;
    assert_eq!(minted(&kw), (1, 0));
    presented_chain(&kw, "api.openai.com").await;
    assert_eq!(minted(&kw), (1, 1));
}

#[tokio::test]
async fn ca_key_is_created_0600() {
    let kw = Kw::builder().start().await;
    let mode = std::fs::metadata(kw.dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let master = std::fs::metadata(kw.dir.path().join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(master & 0o077, 0, "master key readable by group/others");
}

fn ca_with_mode(mode: u32) -> Box<dyn FnOnce(&Path) + Send> {
    Box::new(move |dir: &Path| {
        let key = dir.join("ca.key");
        keyward::tls::ca::CertAuthority::load_or_create(&dir.join("ca.pem"), &key, 4).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    })
}

#[tokio::test]
async fn group_or_world_readable_ca_key_refuses_to_start() {
    for mode in [0o640, 0o604, 0o644, 0o660, 0o666] {
        let err = Kw::builder()
            .before_start(ca_with_mode(mode))
            .try_start()
            .await
            .err()
            .unwrap_or_else(|| panic!("started with a CA key of mode {mode:o}"));
        assert!(err.contains("ca.key"), "{mode:o}: {err}");
        assert!(err.contains("chmod 600"), "{mode:o}: {err}");
    }
}

#[tokio::test]
async fn owner_only_ca_key_modes_are_accepted() {
    for mode in [0o600, 0o400] {
        let kw = Kw::builder()
            .before_start(ca_with_mode(mode))
            .try_start()
            .await;
        assert!(kw.is_ok(), "{mode:o}: {:?}", kw.err());
    }
}

/// An upstream PKI whose leaf covers `hosts` and is valid for `days` from now
/// (negative = already expired).
fn custom_pki(hosts: &[&str], days: i64) -> UpstreamPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "custom upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let now = ::time::OffsetDateTime::now_utc();
    if days < 0 {
        leaf.not_before = now - ::time::Duration::days(30);
        leaf.not_after = now + ::time::Duration::days(days);
    } else {
        leaf.not_before = now - ::time::Duration::days(1);
        leaf.not_after = now + ::time::Duration::days(days);
    }
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    UpstreamPki {
        ca_pem: ca_cert.pem(),
        leaf: vec![cert.der().clone()],
        key_der: key.serialize_der(),
    }
}

async fn assert_upstream_tls_refused(kw: &Kw, rogue: Option<&EchoUpstream>) {
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_tls"));
    let line = kw.last_audit();
    assert_eq!(line["reason"], "upstream_tls");
    assert_eq!(line["outcome"], "error");
    let upstream = rogue.unwrap_or(&kw.upstream);
    assert!(
        upstream.requests().is_empty(),
        "the credential was sent to an unverified upstream"
    );
}

#[tokio::test]
async fn upstream_with_certificate_from_untrusted_ca_gets_502_upstream_tls() {
    let rogue_pki = UpstreamPki::new();
    let rogue = EchoUpstream::start(&rogue_pki).await;
    let kw = Kw::builder()
        .resolve("api.openai.com", rogue.addr)
        .start()
        .await;
    assert_upstream_tls_refused(&kw, Some(&rogue)).await;
}

#[tokio::test]
async fn upstream_certificate_for_another_name_gets_502_upstream_tls() {
    let kw = Kw::builder()
        .upstream_pki(custom_pki(&["other.example.test"], 30))
        .start()
        .await;
    assert_upstream_tls_refused(&kw, None).await;
}

#[tokio::test]
async fn expired_upstream_certificate_gets_502_upstream_tls() {
    let kw = Kw::builder()
        .upstream_pki(custom_pki(&["api.openai.com"], -1))
        .start()
        .await;
    assert_upstream_tls_refused(&kw, None).await;
}

#[tokio::test]
async fn upstream_presenting_a_keyward_minted_leaf_is_not_trusted() {
    // keyward's own CA must never be an upstream root: a leaf it minted (which an
    // agent could obtain) must not let anything impersonate a provider upstream.
    let kw = Kw::builder().start().await;
    let ca = keyward::tls::ca::CertAuthority::load(
        &kw.dir.path().join("ca.pem"),
        &kw.dir.path().join("ca.key"),
        4,
    )
    .unwrap();
    let (chain, key) = ca.mint_leaf("api.openai.com").unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if acceptor.accept(tcp).await.is_ok() {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let mut cfg = kw.config();
    cfg.egress.resolve.insert("api.openai.com".into(), addr);
    kw.running.state.apply_config(cfg);
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("upstream_tls"));
    assert_eq!(
        handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "keyward completed a handshake with an upstream holding its own leaf"
    );
}
