//! Process-level limits and lifecycle: the connection cap counts open tunnels,
//! and SIGTERM drains in-flight requests without losing an audit line.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn connections_over_max_connections_get_503_and_tunnels_count() {
    let kw = Kw::builder().proxy("max_connections", 2).start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-real-openai-0123456789");
    let mut t1 = kw.client().open("api.openai.com").await.unwrap();
    let _t2 = kw.client().open("api.openai.com").await.unwrap();
    // Both tunnels are established; the CONNECT connections are now tunnels and
    // still hold their slots.
    let mut s = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    let (status, head, _) = read_head(&mut s).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("too_many_connections"));
    assert_eq!(t1.get("api.openai.com", "/v1/ok").await.status, 200);
}

/// A `keyward serve` child with a secret stored, against an echo upstream.
struct Served {
    _rt: tokio::runtime::Runtime,
    upstream: EchoUpstream,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    port: u16,
    child: std::process::Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn served() -> Served {
    served_with(Stdio::null())
}

fn served_with(stderr: Stdio) -> Served {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = UpstreamPki::new();
    let upstream = rt.block_on(EchoUpstream::start(&pki));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Kw::builder()
        .listen(([127, 0, 0, 1], port).into())
        .write_files(dir.path(), &pki, upstream.addr);
    let mut set = Command::new(BIN)
        .args([
            "--config",
            config.to_str().unwrap(),
            "secret",
            "set",
            "OPENAI_API_KEY",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    set.stdin
        .take()
        .unwrap()
        .write_all(b"sk-real-openai-0123456789")
        .unwrap();
    assert!(set.wait().unwrap().success());
    let child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "keyward did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served {
        _rt: rt,
        upstream,
        dir,
        config,
        port,
        child,
    }
}

fn have_curl() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

fn curl(s: &Served, max_time: &str, path: &str) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        max_time,
        "--proxy",
        &format!("http://{AGENT}:{TOKEN}@127.0.0.1:{}", s.port),
        "--cacert",
        s.dir.path().join("ca.pem").to_str().unwrap(),
        &format!("https://api.openai.com{path}"),
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    c
}

#[test]
fn sigterm_drains_an_inflight_stream_and_keeps_its_audit_line() {
    if !have_curl() {
        eprintln!("skipped: curl not installed");
        return;
    }
    let mut s = served();
    let client = curl(&s, "20", "/sse").spawn().unwrap();
    // Wait until the request is in flight, then ask keyward to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.upstream.requests().is_empty() {
        assert!(Instant::now() < deadline, "request never reached upstream");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending SIGTERM to our own child process.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let out = client.wait_with_output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("first") && body.contains("second"),
        "stream completed during drain: {body}"
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let audit = std::fs::read_to_string(s.dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"event\":\"inject\""), "{audit}");
    let verify = Command::new(BIN)
        .args(["--config", s.config.to_str().unwrap(), "audit", "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn client_hanging_up_mid_stream_does_not_kill_the_proxy() {
    if !have_curl() {
        eprintln!("skipped: curl not installed");
        return;
    }
    let mut s = served();
    // curl gives up after 0.5 s; the upstream's second event arrives at 1.5 s and
    // keyward's write to the closed socket must fail quietly.
    let _ = curl(&s, "0.5", "/sse").output().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "keyward died after a client hung up"
    );
    let out = curl(&s, "10", "/v1/models").output().unwrap();
    assert!(out.status.success(), "keyward still serves");
}

#[test]
fn closed_log_pipe_does_not_kill_the_proxy() {
    if !have_curl() {
        eprintln!("skipped: curl not installed");
        return;
    }
    // keyward's stderr is a pipe whose reader has gone (a log shipper that died):
    // writing a log line must not SIGPIPE the proxy.
    let mut s = served_with(Stdio::piped());
    drop(s.child.stderr.take());
    for _ in 0..3 {
        // Each refusal writes an info line to stderr.
        let _ = curl(&s, "5", "/v1/models")
            .arg("--proxy-user")
            .arg("nobody:wrong")
            .output()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "keyward died writing to a closed log pipe"
    );
}
