//! Hostile egress (issue 6): an agent trying to make keyward reach something other
//! than the public internet: private/metadata literals, odd IPv4 spellings, names
//! that resolve inward, DNS rebinding, keyward itself, other ports, glob edges.
//!
//! SAFETY OF THE SUITE: every name goes through the test `MapResolver`; no test
//! dials a non-loopback address. A refused dial sends nothing, which is the point.

mod common;

use common::*;
use keyward::proxy::upstream::{BoxFuture, DialError, Resolver};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A provider whose host is not in `egress.resolve`, so the resolver decides.
fn internal_provider() -> Provider {
    Provider::bearer("internal", "internal.example.test", "INTERNAL_KEY")
}

/// CONNECT to `authority`; asserts a 403 with `code`, a `deny` audit line with
/// that reason, and that the echo upstream was never contacted.
async fn assert_connect_refused(kw: &Kw, authority: &str, status: u16, code: &str) {
    let err = kw
        .client()
        .connect(authority)
        .await
        .err()
        .unwrap_or_else(|| panic!("CONNECT {authority} was accepted"));
    assert_eq!(err.0, status, "CONNECT {authority}: {}", err.1);
    assert_eq!(
        head_error_code(&err.1).as_deref(),
        Some(code),
        "CONNECT {authority}: {}",
        err.1
    );
    let body: serde_json::Value = serde_json::from_slice(&err.2).unwrap();
    assert_eq!(body["error"]["type"], format!("keyward.{code}"));
    let line = kw.last_audit();
    assert_eq!(line["event"], "deny", "CONNECT {authority}");
    assert_eq!(line["reason"], code, "CONNECT {authority}");
    assert_eq!(line["outcome"], "denied");
    assert_eq!(
        kw.upstream.connection_count(),
        0,
        "CONNECT {authority} reached the upstream"
    );
}

#[tokio::test]
async fn connect_to_private_ipv4_literal_is_refused() {
    let kw = Kw::builder().start().await;
    for a in [
        "10.0.0.1:443",
        "172.16.5.4:443",
        "192.168.1.1:443",
        "100.64.0.1:443",
        "0.0.0.0:443",
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
    }
}

#[tokio::test]
async fn connect_to_cloud_metadata_address_is_refused() {
    let kw = Kw::builder().start().await;
    for a in [
        "169.254.169.254:443",
        "100.100.100.200:443",
        "192.0.0.192:443",
        "[fd00:ec2::254]:443",
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
    }
    assert_eq!(
        kw.last_audit()["host"],
        "fd00:ec2::254",
        "the audit names the canonical target"
    );
}

#[tokio::test]
async fn connect_to_ipv4_mapped_private_ipv6_is_refused() {
    let kw = Kw::builder().start().await;
    for a in [
        "[::ffff:10.0.0.1]:443",
        "[::ffff:a00:1]:443",
        "[::ffff:169.254.169.254]:443",
        "[::ffff:127.0.0.1]:443", // allow_private 127/8 is an IPv4 net; the mapped form stays blocked
        "[64:ff9b::a00:1]:443",
        "[2002:a00:1::1]:443",
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
    }
}

#[tokio::test]
async fn connect_to_ipv6_ula_link_local_and_loopback_is_refused() {
    let kw = Kw::builder().start().await;
    for a in [
        "[fd00::1]:443",
        "[fc00::1]:443",
        "[fe80::1]:443",
        "[::1]:443",
        "[::]:443",
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
    }
}

#[tokio::test]
async fn odd_ipv4_spellings_of_loopback_are_refused() {
    // No allow_private here, so loopback is blocked like every private range.
    let kw = Kw::builder().allow_private(&[]).start().await;
    for a in [
        "2130706433:443",
        "0177.0.0.1:443",
        "0x7f.1:443",
        "127.1:443",
        "0x7f000001:443",
        "127.0.0.1.:443",
        "0177.0.0.01:443",
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
        assert_eq!(kw.last_audit()["host"], "127.0.0.1", "{a} is canonicalised");
    }
}

#[tokio::test]
async fn odd_ipv4_spellings_of_private_and_metadata_addresses_are_refused() {
    let kw = Kw::builder().start().await;
    for (a, canonical) in [
        ("167772161:443", "10.0.0.1"),
        ("012.0.0.1:443", "10.0.0.1"),
        ("0xa.1:443", "10.0.0.1"),
        ("10.1:443", "10.0.0.1"),
        ("0xA9FEA9FE:443", "169.254.169.254"),
        ("169.254.43518:443", "169.254.169.254"),
        ("0xa9.0376.0xa9fe:443", "169.254.169.254"),
    ] {
        assert_connect_refused(&kw, a, 403, "private_address").await;
        assert_eq!(kw.last_audit()["host"], canonical, "{a}");
    }
}

#[tokio::test]
async fn odd_ipv4_spellings_of_allowed_loopback_are_still_not_allowlisted() {
    // The harness exempts 127/8, so the address check passes; the host must still
    // be refused because no allowlist entry names an IP.
    let kw = Kw::builder().start().await;
    for a in [
        "2130706433:443",
        "0177.0.0.1:443",
        "0x7f.1:443",
        "127.1:443",
    ] {
        assert_connect_refused(&kw, a, 403, "host_not_allowed").await;
    }
}

#[tokio::test]
async fn allowlisted_name_resolving_to_private_addresses_is_refused() {
    for ip in [
        "10.1.2.3",
        "169.254.169.254",
        "100.64.1.1",
        "::1",
        "fd00::5",
    ] {
        let kw = Kw::builder()
            .allow(&["pypi.example.test", "mirror.example.test"])
            .resolve_names(&[("mirror.example.test", &[ip])])
            .start()
            .await;
        assert_connect_refused(&kw, "mirror.example.test:443", 403, "private_address").await;
    }
}

#[tokio::test]
async fn provider_host_resolving_to_metadata_or_cgnat_is_refused_inside_the_tunnel() {
    for ip in [
        "169.254.169.254",
        "100.64.1.1",
        "::1",
        "10.0.0.7",
        "fd00::7",
    ] {
        let kw = Kw::builder()
            .provider(internal_provider())
            .resolve_names(&[("internal.example.test", &[ip])])
            .start()
            .await;
        kw.set_secret("platform", "INTERNAL_KEY", "internal-real-0123456789");
        let got = kw.client().get("internal.example.test", "/x", &[]).await;
        assert_eq!(got.status, 403, "{ip}: {}", got.text());
        assert_eq!(got.error_code().as_deref(), Some("private_address"), "{ip}");
        // The inject decision is logged before the dial (fail closed); the refused
        // dial is its own line.
        let line = kw.last_audit();
        assert_eq!(line["event"], "upstream_error");
        assert_eq!(line["reason"], "private_address", "{ip}");
        assert!(kw.upstream.requests().is_empty());
    }
}

#[tokio::test]
async fn resolve_override_to_private_address_is_still_checked() {
    // `egress.resolve` is operator config, but it must not become a way around the
    // private-address block (only allow_private is).
    let kw = Kw::builder()
        .resolve("api.openai.com", "10.9.9.9:443".parse().unwrap())
        .start()
        .await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 403, "{}", got.text());
    assert_eq!(got.error_code().as_deref(), Some("private_address"));
}

#[tokio::test]
async fn dns_answer_with_only_private_addresses_is_refused() {
    let kw = Kw::builder()
        .allow(&["mirror.example.test"])
        .resolve_names(&[(
            "mirror.example.test",
            &["10.0.0.1", "192.168.0.1", "169.254.169.254", "fd00::1"],
        )])
        .start()
        .await;
    assert_connect_refused(&kw, "mirror.example.test:443", 403, "private_address").await;
}

#[tokio::test]
async fn dns_rebinding_mixed_answer_dials_only_a_checked_address() {
    // [private, public]: the address keyward picks to dial must be the public one.
    // Dialer::resolve is what both paths dial; asserting on it sends no packet.
    let kw = Kw::builder()
        .allow(&["mirror.example.test"])
        .resolve_names(&[(
            "mirror.example.test",
            &["10.0.0.1", "169.254.169.254", "203.0.113.9", "8.8.8.8"],
        )])
        .start()
        .await;
    let picked = kw
        .running
        .state
        .dialer
        .resolve("mirror.example.test", 443)
        .await
        .unwrap();
    assert_eq!(picked, "8.8.8.8:443".parse().unwrap());
}

/// First answer public, every later answer private (the rebinding attacker's DNS).
struct Rebinder(AtomicUsize);

impl Resolver for Rebinder {
    fn lookup(&self, _host: String) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        let ip: IpAddr = if n == 0 {
            "8.8.8.8".parse().unwrap()
        } else {
            "169.254.169.254".parse().unwrap()
        };
        Box::pin(async move { Ok(vec![ip]) })
    }
}

#[tokio::test]
async fn dns_rebinding_second_answer_is_checked_again() {
    let kw = Kw::builder()
        .allow(&["rebind.example.test"])
        .resolver(Arc::new(Rebinder(AtomicUsize::new(0))))
        .start()
        .await;
    let dialer = &kw.running.state.dialer;
    assert_eq!(
        dialer.resolve("rebind.example.test", 443).await.unwrap(),
        "8.8.8.8:443".parse().unwrap()
    );
    // The next dial re-resolves and checks what it will dial: the flip is caught.
    assert!(matches!(
        dialer.resolve("rebind.example.test", 443).await,
        Err(DialError::Private(_))
    ));
    // And through the proxy: a third answer (private) is refused with nothing sent.
    assert_connect_refused(&kw, "rebind.example.test:443", 403, "private_address").await;
}

/// keyward with its own port added to egress.ports and `127.0.0.1`/`loop.example.test`
/// allowlisted (applied after start, since the port is only known then).
async fn kw_allowing_own_port() -> Kw {
    let kw = Kw::builder()
        .resolve_names(&[("loop.example.test", &["127.0.0.1"])])
        .start()
        .await;
    let mut cfg = kw.config();
    cfg.egress.ports.push(kw.addr().port());
    cfg.egress.allow.push("127.0.0.1".into());
    cfg.egress.allow.push("127.0.0.2".into());
    cfg.egress.allow.push("loop.example.test".into());
    kw.running.state.apply_config(cfg);
    kw
}

#[tokio::test]
async fn connect_to_keyward_own_listen_address_is_self_loop() {
    let kw = kw_allowing_own_port().await;
    let port = kw.addr().port();
    assert_connect_refused(&kw, &format!("127.0.0.1:{port}"), 403, "self_loop").await;
    assert_connect_refused(&kw, &format!("2130706433:{port}"), 403, "self_loop").await;
    assert_connect_refused(&kw, &format!("127.0.0.2:{port}"), 403, "self_loop").await;
}

#[tokio::test]
async fn name_resolving_to_keyward_itself_is_self_loop() {
    let kw = kw_allowing_own_port().await;
    let port = kw.addr().port();
    assert_connect_refused(&kw, &format!("loop.example.test:{port}"), 403, "self_loop").await;
}

#[tokio::test]
async fn provider_host_pointed_at_keyward_itself_is_self_loop() {
    // A provider whose resolution lands on keyward's own listener must not loop.
    let kw = Kw::builder()
        .provider(internal_provider())
        .resolve_names(&[("internal.example.test", &["127.0.0.1"])])
        .start()
        .await;
    kw.set_secret("platform", "INTERNAL_KEY", "internal-real-0123456789");
    let mut cfg = kw.config();
    cfg.egress.ports.push(kw.addr().port());
    kw.running.state.apply_config(cfg);
    let c = kw.client();
    let stream = c
        .connect(&format!("internal.example.test:{}", kw.addr().port()))
        .await
        .expect("intercepted");
    let tls = tokio_rustls::TlsConnector::from(c.tls_config())
        .connect(
            rustls::pki_types::ServerName::try_from("internal.example.test").unwrap(),
            stream,
        )
        .await
        .unwrap();
    let mut tls = tls;
    use tokio::io::AsyncWriteExt;
    tls.write_all(
        format!(
            "GET /x HTTP/1.1\r\nHost: internal.example.test:{}\r\n\r\n",
            kw.addr().port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, _) = read_head_from(&mut tls).await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("self_loop"));
    assert_eq!(kw.last_audit()["reason"], "self_loop");
}

#[tokio::test]
async fn connect_to_keyward_admin_port_is_self_loop() {
    let kw = Kw::builder().admin().start().await;
    let admin = kw.running.admin_addr.expect("admin listening");
    let mut cfg = kw.config();
    cfg.egress.ports.push(admin.port());
    cfg.egress.allow.push("127.0.0.1".into());
    kw.running.state.apply_config(cfg);
    // Refused before dialling: the admin API is keyward too, and must not be reachable
    // from a sandbox through the proxy whenever allow_private covers its address.
    assert_connect_refused(
        &kw,
        &format!("127.0.0.1:{}", admin.port()),
        403,
        "self_loop",
    )
    .await;
}

#[tokio::test]
async fn port_not_in_egress_ports_is_refused_for_every_route() {
    let kw = Kw::builder().start().await;
    for a in [
        "api.openai.com:80",
        "api.openai.com:8443",
        "pypi.example.test:22",
        "pypi.example.test:25",
        "evil.example.test:6379",
    ] {
        assert_connect_refused(&kw, a, 403, "port_not_allowed").await;
    }
}

#[tokio::test]
async fn malformed_connect_authority_is_a_bad_request() {
    let kw = Kw::builder().start().await;
    for a in [
        "api.openai.com:0",
        "api.openai.com:65536",
        "api.openai.com:https",
        "user@evil.example.test:443",
        "evil.example.test%2f:443",
        "exa_mple..test:443",
        "-bad.example.test:443",
        "xn--80ak6aa92e.com.:99999",
        "[fe80::1%eth0]:443",
        "[fe80::1%25eth0]:443",
        "[::1]443",
    ] {
        let err = kw.client().connect(a).await.expect_err("refused");
        assert!(
            err.0 == 400,
            "CONNECT {a}: want 400, got {} {}",
            err.0,
            err.1
        );
        assert_eq!(kw.upstream.connection_count(), 0);
    }
}

#[tokio::test]
async fn wildcard_allow_needs_a_label_boundary() {
    let kw = Kw::builder()
        .allow(&["*.allowed.example.test"])
        .start()
        .await;
    for a in [
        "evilallowed.example.test:443",
        "allowed.example.test:443",
        "allowed.example.test.evil.example.test:443",
        "xallowed.example.test:443",
    ] {
        assert_connect_refused(&kw, a, 403, "host_not_allowed").await;
    }
}

#[tokio::test]
async fn wildcard_allow_evilgithub_does_not_match_star_github() {
    // The example from the spec: `*.github.com` must not admit `evilgithub.com`.
    let kw = Kw::builder().allow(&["*.github.com"]).start().await;
    for a in [
        "evilgithub.com:443",
        "xgithub.com:443",
        "github.com.evil.test:443",
    ] {
        assert_connect_refused(&kw, a, 403, "host_not_allowed").await;
    }
}

#[tokio::test]
async fn host_case_and_trailing_dot_do_not_bypass_provider_interception() {
    // A provider host spelled differently must still be intercepted and injected,
    // never treated as an unknown host or a blind tunnel.
    let kw = Kw::builder().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    for spelled in ["API.OpenAI.com", "api.openai.com."] {
        let got = kw
            .client()
            .get(spelled, "/v1/models", &[("authorization", "Bearer dummy")])
            .await;
        assert_eq!(got.status, 200, "{spelled}: {}", got.text());
        assert_eq!(
            kw.upstream.last().headers["authorization"],
            "Bearer sk-real-openai-0123456789",
            "{spelled}"
        );
        let line = kw
            .audit_lines()
            .into_iter()
            .rev()
            .find(|l| l["event"] == "inject")
            .expect("inject line");
        assert_eq!(line["host"], "api.openai.com", "{spelled}");
    }
}

#[tokio::test]
async fn unknown_host_is_refused_whatever_the_resolver_says() {
    // A name that is neither a provider nor allowlisted is refused before DNS.
    struct Panics;
    impl Resolver for Panics {
        fn lookup(&self, host: String) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
            panic!("resolved {host} for a refused CONNECT")
        }
    }
    let kw = Kw::builder().resolver(Arc::new(Panics)).start().await;
    assert_connect_refused(&kw, "evil.example.test:443", 403, "host_not_allowed").await;
    assert_connect_refused(&kw, "metadata.google.internal:443", 403, "host_not_allowed").await;
    let _ = HashMap::<(), ()>::new();
}
