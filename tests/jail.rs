//! `keyward run` (SPEC §12): a real `keyward serve` (in-process) and the real
//! binary jailing real clients (sh, curl, python3, node). Run as root; where a
//! network namespace cannot be made (a dev container), each test skips with a
//! note (under CI it fails).
//!
//! SAFETY of the suite itself: every jailed script starts with a guard that
//! exits 99 unless it is in a network namespace other than the test's, before
//! any lookup or connection. Names are `.test` ones the config's
//! `[egress] resolve` maps to the loopback echo upstream; the only literal
//! outside address is TEST-NET-3 (203.0.113.0/24), used inside the verified jail.

mod common;

use common::tools;
use common::*;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");
/// The PATH the jailed command gets (no per-user shims it could not read as nobody).
const JAIL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Exit code of the guard when the command is not jailed.
const NOT_JAILED: i32 = 99;
/// Longest a jailed command may take before the test gives up on it (a hang
/// is a failure, not a measurement).
const WAIT: Duration = Duration::from_secs(60);
/// The secret the query provider injects (`key=`), grepped for everywhere.
const Q_SECRET: &str = "q-real-jail-0123456789";

fn host_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string()
}

/// Whether this machine can make a jail at all (root, netns, iproute2).
fn jail_possible(test: &str) -> bool {
    if tools::require("ip", test).is_none() || tools::require("unshare", test).is_none() {
        return false;
    }
    let ok = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    ok || tools::skip_or_fail::<()>("cannot create a network namespace (not root?)", test).is_some()
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    kw: Kw,
    /// Holds the token file (0700 root: unreadable in the jail).
    private: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kw = rt.block_on(Kw::builder().start());
    kw.set_secret("platform", "Q_KEY", Q_SECRET);
    let private = tempfile::tempdir().unwrap();
    // As an operator keeps it: the jailed user must not be able to read it.
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(private.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Setup {
        _rt: rt,
        kw,
        private,
    }
}

impl Setup {
    fn token_file(&self) -> PathBuf {
        self.private.path().join("token")
    }

    /// `keyward run … -- bash -c GUARD; script`.
    fn command(&self, script: &str) -> Command {
        self.command_as(script, false)
    }

    /// The same with `keyward run` itself started as nobody (unprivileged
    /// user namespaces), the token in `KEYWARD_TOKEN`.
    fn command_unprivileged(&self, script: &str) -> Command {
        self.command_as(script, true)
    }

    fn command_as(&self, script: &str, unprivileged: bool) -> Command {
        let guard = format!(
            "[ \"$(readlink /proc/self/ns/net)\" != '{}' ] || {{ echo NOT-JAILED >&2; exit {NOT_JAILED}; }}\n",
            host_netns()
        );
        let mut c = if unprivileged {
            self.open_config_to_nobody();
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                BIN,
            ]);
            c.env("KEYWARD_TOKEN", TOKEN);
            c
        } else {
            Command::new(BIN)
        };
        c.arg("--config").arg(&self.kw.config_path).arg("run");
        c.args(["--agent", AGENT]);
        if !unprivileged {
            c.arg("--token-file").arg(self.token_file());
        }
        c.arg("--proxy")
            .arg(format!("http://{}", self.kw.addr()))
            .arg("--")
            .args(["bash", "-c", &format!("{guard}{script}")])
            .current_dir("/tmp")
            .env("PATH", JAIL_PATH)
            .env("HOME", "/tmp")
            .stdin(Stdio::null());
        if !unprivileged {
            c.env_remove("KEYWARD_TOKEN");
        }
        c
    }

    /// What `keyward run` as nobody reads: the config and keyward's CA
    /// certificate (the vault, master key and CA key stay private).
    fn open_config_to_nobody(&self) {
        let mode = |p: &std::path::Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        mode(self.kw.dir.path(), 0o755);
        mode(&self.kw.config_path, 0o644);
        mode(&self.kw.dir.path().join("ca.pem"), 0o644);
    }

    fn run_unprivileged(&self, script: &str) -> Output {
        let child = self
            .command_unprivileged(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child)
    }

    fn run(&self, script: &str) -> Output {
        let child = self
            .command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child)
    }
}

fn wait_output(mut child: Child) -> Output {
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the jailed command did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(NOT_JAILED), "not jailed: {out:?}");
    out
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_injected(kw: &Kw, path: &str, out: &Output) {
    assert!(out.status.success(), "{}", text(out));
    let seen = kw
        .upstream
        .requests()
        .into_iter()
        .find(|s| s.uri.starts_with(path))
        .unwrap_or_else(|| panic!("upstream never saw {path}: {}", text(out)));
    assert!(
        seen.uri.contains(&format!("key={Q_SECRET}")),
        "not injected: {}",
        seen.uri
    );
    assert!(!seen.uri.contains("keyward-placeholder"), "{}", seen.uri);
    let audit = kw
        .audit_lines()
        .into_iter()
        .find(|l| l["path"].as_str().is_some_and(|p| path.starts_with(p)))
        .unwrap_or_else(|| panic!("no audit line for {path}"));
    assert_eq!(audit["agent"], AGENT);
    assert_eq!(audit["host"], "q.example.test");
    assert_no_leak("jailed client output", &out.stdout, Q_SECRET);
    assert_no_leak("keyward run's stderr", &out.stderr, Q_SECRET);
    assert_no_leak("keyward run's stderr", &out.stderr, TOKEN);
}

#[test]
fn exit_status_and_signals_pass_through() {
    if !jail_possible("exit_status_and_signals_pass_through") {
        return;
    }
    let s = setup();
    assert_eq!(s.run("exit 7").status.code(), Some(7));
    // Killed by a signal: 128 + n, as a shell reports it.
    assert_eq!(s.run("kill -KILL $$").status.code(), Some(128 + 9));

    // SIGTERM to keyward run reaches the command, which decides the status.
    let mut child = s
        .command("trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // SAFETY: kill on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(42), "{rest} {}", text(&out));
    assert!(rest.contains("got-term"));
}

#[test]
fn curl_with_the_env_proxy_is_injected() {
    if !jail_possible("curl_with_the_env_proxy_is_injected")
        || tools::require("curl", "curl_with_the_env_proxy_is_injected").is_none()
    {
        return;
    }
    let s = setup();
    let out = s.run("curl -sS --max-time 20 'https://q.example.test/v1/envproxy?key=dummy'");
    assert_injected(&s.kw, "/v1/envproxy", &out);
}

#[test]
fn curl_noproxy_is_caught_and_injected() {
    if !jail_possible("curl_noproxy_is_caught_and_injected")
        || tools::require("curl", "curl_noproxy_is_caught_and_injected").is_none()
    {
        return;
    }
    let s = setup();
    let out = s.run(
        "unset HTTPS_PROXY https_proxy; \
         curl -sS --max-time 20 --noproxy '*' 'https://q.example.test/v1/noproxy?key=dummy'",
    );
    assert_injected(&s.kw, "/v1/noproxy", &out);
}

#[test]
fn python_http_client_without_proxy_support_is_injected() {
    let test = "python_http_client_without_proxy_support_is_injected";
    if !jail_possible(test) || tools::require("/usr/bin/python3", test).is_none() {
        return;
    }
    let s = setup();
    let py = "import http.client, os, ssl\n\
              ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])\n\
              c = http.client.HTTPSConnection('q.example.test', 443, context=ctx, timeout=20)\n\
              c.request('GET', '/v1/python?key=dummy')\n\
              r = c.getresponse()\n\
              print(r.status, r.read()[:200])\n\
              raise SystemExit(0 if r.status == 200 else 1)\n";
    let out = s.run(&format!("/usr/bin/python3 -c \"{py}\""));
    assert_injected(&s.kw, "/v1/python", &out);
}

#[test]
fn node_plain_https_get_is_injected() {
    let test = "node_plain_https_get_is_injected";
    if !jail_possible(test) || tools::require("node", test).is_none() {
        return;
    }
    let s = setup();
    let js = "require('https').get('https://q.example.test/v1/node?key=dummy', r => { \
              console.log(r.statusCode); r.resume(); r.on('end', () => process.exit(r.statusCode == 200 ? 0 : 1)); }) \
              .on('error', e => { console.error(String(e)); process.exit(1); })";
    let out = s.run(&format!(
        "unset HTTPS_PROXY https_proxy NODE_USE_ENV_PROXY; node -e \"{js}\""
    ));
    assert_injected(&s.kw, "/v1/node", &out);
}

#[test]
fn the_hosts_loopback_and_other_ports_are_unreachable() {
    if !jail_possible("the_hosts_loopback_and_other_ports_are_unreachable") {
        return;
    }
    let s = setup();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let (tp, up) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let script = format!(
        "r=0\n\
         timeout 5 bash -c 'echo hi > /dev/tcp/127.0.0.1/{tp}' 2>/dev/null && {{ echo tcp-loopback-open; r=1; }}\n\
         timeout 5 bash -c 'echo hi > /dev/tcp/203.0.113.5/22' 2>/dev/null && {{ echo tcp-22-open; r=1; }}\n\
         timeout 5 bash -c 'echo hi > /dev/udp/127.0.0.1/{up}' 2>/dev/null\n\
         timeout 5 bash -c 'echo hi > /dev/udp/203.0.113.5/{up}' 2>/dev/null\n\
         ping -c1 -W1 203.0.113.5 >/dev/null 2>&1 && {{ echo ping-answered; r=1; }}\n\
         exit $r"
    );
    let out = s.run(&script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        matches!(tcp.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's loopback server got a connection"
    );
    let mut buf = [0u8; 64];
    assert!(
        matches!(udp.recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's UDP socket got a datagram"
    );
    assert_eq!(s.kw.upstream.connection_count(), 0);
}

/// What the jail's own kernel refuses (a port outside `egress.ports`, UDP other
/// than DNS, ICMP echo) fails at once, reaches nothing on the host, and is
/// counted and audited by keyward serve as `jail_block` (the nftables counters
/// in the jail, read by `keyward run`).
#[test]
fn kernel_refusals_fail_at_once_and_are_counted_and_audited() {
    let test = "kernel_refusals_fail_at_once_and_are_counted_and_audited";
    if !jail_possible(test)
        || tools::require("nft", test).is_none()
        || tools::require("/usr/bin/python3", test).is_none()
    {
        return;
    }
    let s = setup();
    let (tcp, udp) = probes();
    let out = s.run(&kernel_probe_script(&tcp, &udp));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_probes_saw_nothing(&s.kw, &tcp, &udp, 0);
    let reports: Vec<_> =
        s.kw.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "jail_block")
            .collect();
    for kind in ["tcp port", "udp", "icmp"] {
        assert!(
            reports.iter().any(|l| l["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("latest: {kind}")))
                || l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(&format!("x {kind}")))),
            "no jail_block for {kind}: {reports:?}\n{}",
            text(&out)
        );
    }
    assert!(reports.iter().all(|l| l["agent"] == AGENT), "{reports:?}");
    let total = jail_blocks_total(&s.kw);
    assert!(total >= 4, "keyward_jail_blocks_total {total}");
}

/// Without `nft` (a PATH without /usr/sbin, where `ip` is still found in
/// /usr/bin) the jail's kernel still refuses at once; `run` says once that
/// those refusals are not counted.
#[test]
fn without_nft_the_kernel_still_refuses_and_run_says_so_once() {
    let test = "without_nft_the_kernel_still_refuses_and_run_says_so_once";
    if !jail_possible(test) || tools::require("/usr/bin/python3", test).is_none() {
        return;
    }
    if !std::path::Path::new("/usr/bin/ip").exists()
        || std::path::Path::new("/usr/bin/nft").exists()
    {
        eprintln!("skipped {test}: needs ip in /usr/bin and nft outside it");
        return;
    }
    let s = setup();
    let (tcp, udp) = probes();
    let mut cmd = s.command(&kernel_probe_script(&tcp, &udp));
    cmd.env("PATH", "/usr/bin");
    let out = wait_output(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_probes_saw_nothing(&s.kw, &tcp, &udp, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("nft not found").count(), 1, "{stderr}");
}

/// A TCP listener and a UDP socket on the host's loopback: what the jail must
/// never reach.
fn probes() -> (TcpListener, UdpSocket) {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    (tcp, udp)
}

/// Python inside the jail: each attempt must fail with an immediate error
/// (refused / not permitted), not a timeout; prints what it saw, exit 0 when
/// all failed at once.
fn kernel_probe_script(tcp: &TcpListener, udp: &UdpSocket) -> String {
    let (tp, up) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let py = format!(
        "import errno, socket, sys\n\
         bad = 0\n\
         def attempt(what, f):\n\
         \x20   global bad\n\
         \x20   try:\n\
         \x20       f(); print(what, 'went through'); bad = 1\n\
         \x20   except OSError as e:\n\
         \x20       ok = e.errno in (errno.ECONNREFUSED, errno.EPERM, errno.EACCES)\n\
         \x20       print(what, errno.errorcode.get(e.errno, e)); bad |= not ok\n\
         def tcp(host, port):\n\
         \x20   socket.create_connection((host, port), timeout=10).close()\n\
         def udp(host, port):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.settimeout(10); s.connect((host, port)); s.send(b'hi'); s.send(b'hi'); s.recv(10)\n\
         def icmp(host):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n\
         \x20   s.settimeout(10); s.sendto(bytes([8, 0, 0, 0, 0, 1, 0, 1]), (host, 0)); s.recv(64)\n\
         attempt('tcp-loopback', lambda: tcp('127.0.0.1', {tp}))\n\
         attempt('tcp-22', lambda: tcp('203.0.113.5', 22))\n\
         attempt('udp-loopback', lambda: udp('127.0.0.1', {up}))\n\
         attempt('udp-out', lambda: udp('203.0.113.5', {up}))\n\
         attempt('icmp', lambda: icmp('203.0.113.5'))\n\
         sys.exit(bad)\n"
    );
    format!("/usr/bin/python3 -c \"{py}\"")
}

/// `upstream_before`: the echo upstream's connections before the probes.
fn assert_probes_saw_nothing(kw: &Kw, tcp: &TcpListener, udp: &UdpSocket, upstream_before: usize) {
    assert!(
        matches!(tcp.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's loopback server got a connection"
    );
    let mut buf = [0u8; 64];
    assert!(
        matches!(udp.recv_from(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the host's UDP socket got a datagram"
    );
    assert_eq!(kw.upstream.connection_count(), upstream_before);
}

fn jail_blocks_total(kw: &Kw) -> u64 {
    kw.running
        .state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("keyward_jail_blocks_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_host_keyward_would_refuse_is_refused() {
    let test = "a_host_keyward_would_refuse_is_refused";
    if !jail_possible(test) || tools::require("curl", test).is_none() {
        return;
    }
    let s = setup();
    // evil.example.test is in `resolve` (keyward could dial it) but neither a
    // provider nor allowlisted: no address from the stub, and a CONNECT to it
    // (by SNI, through an address the stub never gave out) is refused.
    let script = "r=0\n\
        getent hosts evil.example.test && { echo evil-resolved; r=1; }\n\
        curl -sS --max-time 20 --noproxy '*' --resolve evil.example.test:443:203.0.113.7 \
             https://evil.example.test/x && { echo evil-transparent; r=1; }\n\
        curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' https://evil.example.test/y\n\
        curl -fsS --max-time 20 --noproxy '*' http://203.0.113.7:443/z && { echo cleartext-ok; r=1; }\n\
        exit $r";
    let out = s.run(script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.kw.upstream.connection_count(), 0, "{}", text(&out));
    let denies: Vec<_> =
        s.kw.audit_lines()
            .into_iter()
            .filter(|l| l["host"] == "evil.example.test")
            .collect();
    assert!(denies.len() >= 2, "{denies:?}");
    for d in &denies {
        assert_eq!(d["agent"], AGENT);
        assert_eq!(d["outcome"], "denied");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jail_block"), "{stderr}");
    // The relay reported what it refused to keyward serve: audited and counted there.
    let reports: Vec<_> =
        s.kw.audit_lines()
            .into_iter()
            .filter(|l| l["event"] == "jail_block")
            .collect();
    assert!(!reports.is_empty(), "{stderr}");
    assert!(reports.iter().all(|l| l["agent"] == AGENT), "{reports:?}");
    let metrics = s.kw.running.state.metrics.render();
    assert!(
        !metrics.contains("keyward_jail_blocks_total 0"),
        "{metrics}"
    );
}

#[test]
fn dns_answers_keywards_hosts_and_fails_fast_for_others() {
    if !jail_possible("dns_answers_keywards_hosts_and_fails_fast_for_others") {
        return;
    }
    let s = setup();
    let script = "set -e\n\
        getent ahostsv4 q.example.test | head -1\n\
        getent ahostsv4 pypi.example.test | head -1\n\
        if timeout 5 getent hosts nothing-here.example.test; then exit 1; fi\n\
        if timeout 5 getent hosts evil.example.test; then exit 1; fi\n\
        echo done";
    let out = s.run(script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("198.18."), "{stdout}");
    assert!(lines[1].starts_with("198.18."), "{stdout}");
    assert_ne!(lines[0].split(' ').next(), lines[1].split(' ').next());
    assert_eq!(lines.last(), Some(&"done"));
}

#[test]
fn no_secret_or_way_back_inside_the_jail() {
    if !jail_possible("no_secret_or_way_back_inside_the_jail") {
        return;
    }
    let s = setup();
    let dir = s.kw.dir.path().display().to_string();
    let script = format!(
        "env\n\
         id\n\
         grep -h Cap /proc/self/status\n\
         cat /proc/$PPID/environ /proc/1/environ 2>&1\n\
         cat {dir}/* {tok} 2>&1\n\
         ls -la {dir} 2>&1\n\
         r=0\n\
         nsenter --net=/proc/1/ns/net true 2>/dev/null && {{ echo escaped-pid1; r=1; }}\n\
         nsenter --net=/proc/$PPID/ns/net true 2>/dev/null && {{ echo escaped-ppid; r=1; }}\n\
         unshare -n true 2>/dev/null && {{ echo unshared; r=1; }}\n\
         ip route del local 0.0.0.0/0 dev lo table local 2>/dev/null && {{ echo route-changed; r=1; }}\n\
         ip link add dummy0 type dummy 2>/dev/null && {{ echo link-added; r=1; }}\n\
         exit $r",
        tok = s.token_file().display()
    );
    let mut cmd = s.command(&script);
    // The token also given through the environment: it must not reach CMD.
    cmd.env("KEYWARD_TOKEN", TOKEN);
    let out = wait_output(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapBnd:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("uid=65534"), "{stdout}");
    assert!(
        stdout.contains("HTTPS_PROXY=http://127.0.0.1:3128\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Q_KEY=keyward-placeholder"), "{stdout}");
    assert_no_leak("the jail's view", &out.stdout, Q_SECRET);
    assert_no_leak("the jail's view", &out.stdout, TOKEN);
    let master = std::fs::read(s.kw.dir.path().join("master.key")).unwrap_or_default();
    if master.len() >= 16 {
        assert_no_leak("the jail's view", &out.stdout, &master[..16]);
    }
}

/// Host-side state a jail must not change: interfaces, named namespaces, mounts.
fn host_state() -> String {
    let run = |args: &[&str]| {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let links: Vec<String> = run(&["ip", "-o", "link"])
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .collect();
    format!(
        "links {links:?}\nnetns {}\nmounts {}",
        run(&["ip", "netns", "list"]),
        std::fs::read_to_string("/proc/self/mounts").unwrap()
    )
}

/// Whether any process is in the namespace `ns` (`net:[…]`).
fn namespace_in_use(ns: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read_link(e.path().join("ns/net")).is_ok_and(|l| l.display().to_string() == ns)
    })
}

#[test]
fn nothing_is_left_after_exit_or_kill_9() {
    if !jail_possible("nothing_is_left_after_exit_or_kill_9") {
        return;
    }
    let s = setup();
    let before = host_state();
    let out = s.run("readlink /proc/self/ns/net");
    assert!(out.status.success(), "{}", text(&out));
    let ns = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(ns.starts_with("net:["), "{ns}");
    assert!(!namespace_in_use(&ns), "{ns} still in use after exit");
    assert_eq!(host_state(), before);

    let mut child = s
        .command("readlink /proc/self/ns/net; exec sleep 600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ns = line.trim().to_string();
    assert!(namespace_in_use(&ns));
    let killed = child.id();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The jailed sleep dies with keyward run (PR_SET_PDEATHSIG); wait for it.
    let deadline = Instant::now() + WAIT;
    while namespace_in_use(&ns) {
        assert!(Instant::now() < deadline, "{ns} survived kill -9");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_state(), before);
    // Its CA-bundle directory is the one left-over; the next run removes it.
    let stale = "/tmp/keyward-run-";
    let dirs = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.display().to_string().starts_with(stale))
            .filter(|p| {
                std::fs::read_to_string(p.join("keyward-run.pid"))
                    .is_ok_and(|s| s.trim() == pid.to_string())
            })
            .collect()
    };
    assert_eq!(dirs(killed).len(), 1);
    assert!(s.run("true").status.success());
    assert!(dirs(killed).is_empty(), "left-over of the kill -9'd run");
}

#[test]
fn bad_input_is_one_line_and_exit_1() {
    let s = setup();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&s.kw.config_path)
        .args([
            "run",
            "--agent",
            AGENT,
            "--token-file",
            "/nonexistent/token",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--token-file"), "{err}");
    let wrong = s.private.path().join("wrong");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&s.kw.config_path)
        .args(["run", "--agent", AGENT, "--token-file"])
        .arg(&wrong)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not authenticate"));
}

/// Whether nobody may make a user + network namespace here.
fn userns_possible(test: &str) -> bool {
    if !jail_possible(test) || tools::require("setpriv", test).is_none() {
        return false;
    }
    let ok = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    ok || tools::skip_or_fail::<()>("no unprivileged user namespaces here", test).is_some()
}

/// `keyward run` as nobody: the jail made in a user namespace, the core cases
/// of the root jail again (status, env-proxy and `--noproxy` curl injected, the
/// host's loopback unreachable, kernel refusals counted, no way back).
#[test]
fn unprivileged_run_jails_and_injects() {
    let test = "unprivileged_run_jails_and_injects";
    if !userns_possible(test) || tools::require("curl", test).is_none() {
        return;
    }
    let s = setup();
    assert_eq!(s.run_unprivileged("exit 7").status.code(), Some(7));
    assert_eq!(
        s.run_unprivileged("kill -KILL $$").status.code(),
        Some(128 + 9)
    );
    // SIGTERM to keyward run reaches CMD (here the forked child that became CMD).
    let mut child = s
        .command_unprivileged(
            "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    // SAFETY: kill on our own child's pid (setpriv execs keyward run).
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = wait_output(child);
    assert_eq!(out.status.code(), Some(42), "{rest} {}", text(&out));
    assert!(rest.contains("got-term"));
    let out = s.run_unprivileged(
        "curl -sS --max-time 20 'https://q.example.test/v1/userns-env?key=dummy'",
    );
    assert_injected(&s.kw, "/v1/userns-env", &out);
    let out = s.run_unprivileged(
        "unset HTTPS_PROXY https_proxy; \
         curl -sS --max-time 20 --noproxy '*' 'https://q.example.test/v1/userns-noproxy?key=dummy'",
    );
    assert_injected(&s.kw, "/v1/userns-noproxy", &out);

    let (tcp, udp) = probes();
    let upstream_before = s.kw.upstream.connection_count();
    let out = s.run_unprivileged(&kernel_probe_script(&tcp, &udp));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_probes_saw_nothing(&s.kw, &tcp, &udp, upstream_before);
    if tools::find("nft").is_some() {
        let blocks =
            s.kw.audit_lines()
                .into_iter()
                .filter(|l| l["event"] == "jail_block" && l["agent"] == AGENT)
                .count();
        assert!(blocks >= 3, "{}", text(&out));
    }

    let script = "cat /proc/self/uid_map\n\
         grep -h Cap /proc/self/status\n\
         cat /proc/$PPID/environ /proc/$PPID/mem 2>&1 | head -c 2000\n\
         r=0\n\
         nsenter --net=/proc/1/ns/net true 2>/dev/null && { echo escaped-pid1; r=1; }\n\
         nsenter --net=/proc/$PPID/ns/net true 2>/dev/null && { echo escaped-ppid; r=1; }\n\
         ip route del local 0.0.0.0/0 dev lo table local 2>/dev/null && { echo route-changed; r=1; }\n\
         nft flush ruleset 2>/dev/null && { echo rules-flushed; r=1; }\n\
         exit $r";
    let out = s.run_unprivileged(script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A user namespace of nobody's: uid 0 inside is 65534 outside, and only it.
    let map: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(map, ["0", "65534", "1"], "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapBnd:\t0000000000000000"), "{stdout}");
    assert_no_leak("the jail's view", &out.stdout, TOKEN);
    assert_no_leak("the jail's view", &out.stdout, Q_SECRET);
}

#[test]
fn unprivileged_run_leaves_nothing_after_kill_9() {
    let test = "unprivileged_run_leaves_nothing_after_kill_9";
    if !userns_possible(test) {
        return;
    }
    let s = setup();
    let before = host_state();
    let mut child = s
        .command_unprivileged("readlink /proc/self/ns/net; exec sleep 600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ns = line.trim().to_string();
    assert!(ns.starts_with("net:["), "{ns}");
    assert!(namespace_in_use(&ns));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    while namespace_in_use(&ns) {
        assert!(Instant::now() < deadline, "{ns} survived kill -9");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_state(), before);
}

#[test]
fn unprivileged_user_option_is_refused() {
    let test = "unprivileged_user_option_is_refused";
    if !userns_possible(test) {
        return;
    }
    let s = setup();
    s.open_config_to_nobody();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .arg("--config")
        .arg(&s.kw.config_path)
        .args(["run", "--agent", AGENT, "--user", "1000", "--", "true"])
        .env("KEYWARD_TOKEN", TOKEN)
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--user needs root"), "{err}");
}

/// Where no namespace can be made — here uid 0 of a user namespace that does
/// not own its network namespace and may not make another user namespace
/// (`user.max_user_namespaces = 0` inside it) — `run` says so in one line, exit 1.
#[test]
fn without_root_or_user_namespaces_it_is_one_line_and_exit_1() {
    let test = "without_root_or_user_namespaces_it_is_one_line_and_exit_1";
    if !userns_possible(test) {
        return;
    }
    let s = setup();
    s.open_config_to_nobody();
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces || exit 98\n\
         exec {BIN} --config {} run --agent {AGENT} -- true",
        s.kw.config_path.display()
    );
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "sh", "-c", &script])
        .env("KEYWARD_TOKEN", TOKEN)
        .env("PATH", JAIL_PATH)
        .current_dir("/tmp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot create a network namespace"), "{err}");
}
