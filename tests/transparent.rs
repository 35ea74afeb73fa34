//! `[proxy] transparent_listen` (issue 19, SPEC §12): a TLS client connecting
//! straight to the transparent listener (as a pod's redirected TCP does) is
//! treated as a CONNECT from `transparent_agent` to its SNI host.

mod common;

use bytes::Bytes;
use common::tools;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FILES_SECRET: &str = "FILES_KEY";
const REAL: &str = "files-real-0123456789abcdef";

async fn start() -> Kw {
    let kw = Kw::builder()
        .provider(Provider::bearer("files", "files.test", FILES_SECRET))
        .proxy("transparent_listen", "127.0.0.1:0")
        .proxy("transparent_agent", AGENT)
        .start()
        .await;
    kw.set_secret("platform", FILES_SECRET, REAL);
    kw
}

fn transparent(kw: &Kw) -> SocketAddr {
    kw.running
        .transparent_addr
        .expect("transparent_listen is bound")
}

/// TLS to the transparent listener with `sni` (none when `None`).
async fn tls(
    kw: &Kw,
    sni: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut cfg = (*kw.client().tls_config()).clone();
    cfg.enable_sni = sni.is_some();
    let name = ServerName::try_from(sni.unwrap_or("files.test").to_string()).unwrap();
    let tcp = TcpStream::connect(transparent(kw)).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// The audit lines that name `host`.
fn audit_for(kw: &Kw, host: &str) -> Vec<serde_json::Value> {
    kw.audit_lines()
        .into_iter()
        .filter(|l| l["host"] == host)
        .collect()
}

#[tokio::test]
async fn sni_of_a_provider_host_is_injected_as_the_transparent_agent() {
    let kw = start().await;
    let stream = tls(&kw, Some("files.test"))
        .await
        .expect("TLS through keyward");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/v1/data")
        .header("host", "files.test")
        .header("authorization", "Bearer keyward-placeholder")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(REAL), "redacted");
    let seen = kw.upstream.last();
    assert_eq!(seen.uri, "/v1/data");
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {REAL}").as_str()]);
    let inject = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject")
        .expect("an inject line");
    assert_eq!(inject["agent"], AGENT);
    assert_eq!(inject["host"], "files.test");
    assert_eq!(inject["provider"], "files");
    assert_no_leak_in_audit(&kw);
}

fn assert_no_leak_in_audit(kw: &Kw) {
    let text = std::fs::read_to_string(kw.audit_path()).unwrap();
    assert!(!text.contains(REAL), "the secret is in the audit log");
}

#[tokio::test]
async fn a_host_outside_the_policy_is_refused_and_audited() {
    let kw = start().await;
    let got = tls(&kw, Some("evil.example.test")).await;
    assert!(got.is_err(), "keyward closes instead of serving TLS");
    assert!(
        kw.upstream.requests().is_empty(),
        "the upstream saw nothing"
    );
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = audit_for(&kw, "evil.example.test");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "deny");
    assert_eq!(lines[0]["reason"], "host_not_allowed");
    assert_eq!(lines[0]["agent"], AGENT);
}

#[tokio::test]
async fn a_client_hello_without_sni_is_refused() {
    let kw = start().await;
    let got = tls(&kw, None).await;
    assert!(got.is_err(), "no SNI, no tunnel");
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = kw.audit_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "deny");
    assert_eq!(lines[0]["reason"], "bad_request");
}

#[tokio::test]
async fn cleartext_toward_a_provider_is_refused() {
    let kw = start().await;
    let mut s = TcpStream::connect(transparent(&kw)).await.unwrap();
    s.write_all(
        b"GET /v1/data HTTP/1.1\r\nHost: files.test\r\nAuthorization: Bearer dummy\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, head, _body) = read_head(&mut s).await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(head_error_code(&head).as_deref(), Some("cleartext_refused"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert_eq!(kw.upstream.connection_count(), 0);
    let lines = audit_for(&kw, "files.test");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "cleartext_refused");
    assert_eq!(lines[0]["agent"], AGENT);
}

#[tokio::test]
async fn transparent_listen_needs_a_known_agent() {
    let err = Kw::builder()
        .proxy("transparent_listen", "127.0.0.1:0")
        .try_start()
        .await
        .err()
        .expect("refused");
    assert!(err.contains("proxy.transparent_agent"), "{err}");
    let err = Kw::builder()
        .proxy("transparent_listen", "127.0.0.1:0")
        .proxy("transparent_agent", "nobody")
        .try_start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("proxy.transparent_agent") && err.contains("nobody"),
        "{err}"
    );
}

/// `keyward run`'s relay reports what the jail refused as an authenticated
/// CONNECT to `jail-report.keyward.invalid`; serve audits and counts it.
async fn report(kw: &Kw, auth: Option<String>, count: &str) -> (u16, String) {
    let mut s = TcpStream::connect(kw.addr()).await.unwrap();
    let mut req = format!(
        "CONNECT jail-report.keyward.invalid:9 HTTP/1.1\r\nHost: jail-report.keyward.invalid:9\r\n\
         x-keyward-jail-blocks: {count}\r\nx-keyward-jail-what: DNS lookup of \"x.test\"\r\n"
    );
    if let Some(b) = auth {
        req.push_str(&format!("Proxy-Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, head, _) = read_head(&mut s).await;
    (status, head)
}

#[tokio::test]
async fn jail_reports_are_audited_as_jail_block_and_counted() {
    let kw = start().await;
    let (status, head) = report(&kw, kw.client().basic(), "3").await;
    assert_eq!(status, 204, "{head}");
    let line = kw.last_audit();
    assert_eq!(line["event"], "jail_block");
    assert_eq!(line["agent"], AGENT);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .starts_with("3 refused; latest: DNS lookup"),
        "{line}"
    );
    // A refusal on the transparent path is a jail block too.
    let _ = tls(&kw, Some("evil.example.test")).await;
    let metrics = kw.running.state.metrics.render();
    assert!(metrics.contains("keyward_jail_blocks_total 4"), "{metrics}");
    // Unauthenticated or malformed reports are refused and count nothing.
    let (status, _) = report(&kw, None, "5").await;
    assert_eq!(status, 407);
    let (status, _) = report(&kw, kw.client().basic(), "lots").await;
    assert_eq!(status, 400);
    let metrics = kw.running.state.metrics.render();
    assert!(metrics.contains("keyward_jail_blocks_total 4"), "{metrics}");
    assert!(kw.upstream.requests().is_empty());
}

/// The pod setup for real (deploy/kubernetes/pod-sidecar): in a network
/// namespace this test makes, the init container's script from pod.yaml, as it
/// is, sends the pod's TCP to `transparent_listen` (127.0.0.1:15001, as in the
/// example's configmap); a curl that knows nothing of keyward (no proxy)
/// connects to `files.test` at a TEST-NET-3 address and is injected as
/// `transparent_agent`. The namespace's only links are `lo` and a veth pair
/// whose both ends are in it (the pod's "eth0", for the default route): a
/// packet no rule catches goes nowhere, even if the rules were wrong.
#[test]
fn the_pod_init_script_redirects_tcp_to_the_transparent_listener() {
    let test = "the_pod_init_script_redirects_tcp_to_the_transparent_listener";
    for tool in ["iptables", "ip6tables", "ip", "curl"] {
        if tools::require(tool, test).is_none() {
            return;
        }
    }
    let inside = std::thread::spawn(move || redirected_in_own_namespace(test));
    inside.join().expect("the namespace thread");
}

/// The `transparent_listen` of deploy/kubernetes/pod-sidecar/configmap.yaml.
const POD_TRANSPARENT_LISTEN: &str = "127.0.0.1:15001";
/// Where the pod's "eth0" sends everything: only inside the test's namespace.
const POD_ADDR: &str = "192.0.2.1/24";
const FAR_ADDR: &str = "203.0.113.5";

fn thread_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

/// The init container's shell script (the `- |` block of `keyward-redirect`).
fn pod_init_script() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/pod-sidecar/pod.yaml"
    );
    let yaml = std::fs::read_to_string(path).unwrap();
    let from = yaml
        .find("name: keyward-redirect")
        .expect("the init container");
    let mut lines = yaml[from..]
        .lines()
        .skip_while(|l| l.trim() != "- |")
        .skip(1);
    let first = lines.next().expect("the script");
    let indent = first.len() - first.trim_start().len();
    let mut script = format!("{}\n", first.trim_start());
    for l in lines {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() < indent {
            break;
        }
        script.push_str(l.get(indent..).unwrap_or(""));
        script.push('\n');
    }
    assert!(script.contains("REDIRECT"), "{script}");
    script
}

/// On a thread of its own: `unshare(CLONE_NEWNET)` moves only this thread (and
/// the threads and processes it starts) into the new namespace.
fn redirected_in_own_namespace(test: &str) {
    let host = thread_netns();
    // SAFETY: unshare on this thread; no memory preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        tools::skip_or_fail::<()>("cannot create a network namespace (not root?)", test);
        return;
    }
    let ours = thread_netns();
    // SECURITY of the test: nothing is configured or started before we know
    // we are in the namespace we made.
    assert_ne!(ours, host, "still in the host's network namespace");
    let sh = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip", "link", "add", "kw0", "type", "veth", "peer", "name", "kw1",
    ]);
    sh(&["ip", "addr", "add", POD_ADDR, "dev", "kw0"]);
    sh(&["ip", "link", "set", "kw1", "up"]);
    sh(&["ip", "link", "set", "kw0", "up"]);
    sh(&["ip", "route", "add", "default", "dev", "kw0"]);
    sh(&["sh", "-c", &pod_init_script()]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kw = rt.block_on(async {
        let kw = Kw::builder()
            .provider(Provider::bearer("files", "files.test", FILES_SECRET))
            .proxy("transparent_listen", POD_TRANSPARENT_LISTEN)
            .proxy("transparent_agent", AGENT)
            .start()
            .await;
        kw.set_secret("platform", FILES_SECRET, REAL);
        kw
    });
    let ca = kw.dir.path().join("ca.pem");
    let script = format!(
        "[ \"$(readlink /proc/self/ns/net)\" = '{ours}' ] || {{ echo NOT-IN-OUR-NAMESPACE >&2; exit 99; }}\n\
         exec curl -sS --max-time 20 --noproxy '*' --cacert {ca} \
           --resolve files.test:443:{FAR_ADDR} \
           -H 'authorization: Bearer keyward-placeholder' https://files.test/v1/redirected",
        ca = ca.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(REAL),
        "the secret reached the client"
    );
    let seen = kw.upstream.last();
    assert_eq!(seen.uri, "/v1/redirected");
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, vec![format!("Bearer {REAL}").as_str()]);
    let inject = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["event"] == "inject" && l["path"] == "/v1/redirected")
        .expect("an inject line");
    assert_eq!(inject["agent"], AGENT);
    assert_eq!(inject["host"], "files.test");
    assert_no_leak_in_audit(&kw);
    drop(kw);
    drop(rt);
}
