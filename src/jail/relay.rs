//! Every connection caught in the jail becomes an authenticated CONNECT to
//! keyward (`--proxy`), so policy, injection, redaction and audit stay in
//! `keyward serve`, one place. The transparent catch names the host from the
//! ClientHello's SNI, else the name the DNS stub gave the address out for, else
//! the literal address; cleartext HTTP is handed to keyward as a proxy request
//! (which refuses it, §6). The jail's proxy port relays proxy-aware clients,
//! with the agent's credentials added here: the token never enters the jail.

use super::dns::Names;
use crate::secret::Secret;
use crate::sniff::{sniff, Sniffed};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// How long a caught connection may take to send the bytes that name its host
/// (a server-speaks-first protocol sends none and goes by the address).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(3);
/// Most bytes read to find the SNI or the request head.
const MAX_SNIFF: usize = 16 * 1024;
/// Longest CONNECT answer head read from keyward.
const MAX_ANSWER_HEAD: usize = 16 * 1024;
/// How long keyward may take to answer a CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Blocked connections logged one by one before only every `BLOCK_LOG_EVERY`th.
const BLOCK_LOG_BURST: u64 = 20;
const BLOCK_LOG_EVERY: u64 = 100;

/// Where caught connections go, and as whom.
pub struct Upstream {
    pub proxy: SocketAddr,
    /// `Basic base64(agent:token)`.
    pub authorization: Secret,
    pub names: Arc<Names>,
    pub blocked: AtomicU64,
    /// `blocked` as of the last report to keyward.
    pub reported: AtomicU64,
    /// Reports on their way, awaited at exit so none is lost.
    pub sending: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Upstream {
    /// Logs a refusal (rate-limited: a loop of blocked connects is one line per
    /// hundred after the first few).
    pub fn block(&self, what: &str) {
        self.block_n(1, what);
    }

    /// `n` refusals of one kind at once (the jail's kernel counters).
    pub fn block_n(&self, n: u64, what: &str) {
        if n == 0 {
            return;
        }
        let after = self.blocked.fetch_add(n, Ordering::Relaxed) + n;
        let before = after - n;
        // Logged when this batch reaches into the first few, or past a hundred mark.
        if before < BLOCK_LOG_BURST || before / BLOCK_LOG_EVERY != after / BLOCK_LOG_EVERY {
            let what = if n == 1 {
                what.to_string()
            } else {
                format!("{n} x {what}")
            };
            let what = what.as_str();
            tracing::warn!(blocked = after, "jail_block: {what}");
            // Reported at the same (rate-limited) moments: keyward serve writes
            // the `jail_block` audit line and counts keyward_jail_blocks_total.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                if let Some(report) = self.report(what) {
                    let mut sending = self.sending.lock();
                    sending.retain(|t| !t.is_finished());
                    sending.push(rt.spawn(report));
                }
            }
        }
    }

    /// The report of the refusals since the last one, to send to keyward
    /// (`None` when there are none).
    pub fn report(&self, what: &str) -> Option<impl std::future::Future<Output = ()> + Send> {
        let now = self.blocked.load(Ordering::Relaxed);
        let before = self.reported.swap(now, Ordering::Relaxed);
        let count = now.saturating_sub(before);
        if count == 0 {
            return None;
        }
        let what: String = what
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(MAX_WHAT)
            .collect();
        let mut head = Zeroizing::new(
            format!(
                "CONNECT {REPORT_HOST}:9 HTTP/1.1\r\nHost: {REPORT_HOST}:9\r\n\
                 x-keyward-jail-blocks: {count}\r\nx-keyward-jail-what: {what}\r\n"
            )
            .into_bytes(),
        );
        head.extend_from_slice(&headers_with_auth(std::iter::empty(), self));
        let proxy = self.proxy;
        Some(async move {
            let send = async {
                let mut s = TcpStream::connect(proxy).await.ok()?;
                s.write_all(&head).await.ok()?;
                let mut answer = [0u8; 64];
                let n = s.read(&mut answer).await.ok()?;
                (answer[..n].starts_with(b"HTTP/1.1 204")).then_some(())
            };
            if tokio::time::timeout(REPORT_TIMEOUT, send)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                tracing::warn!("could not report {count} jail_block(s) to keyward at {proxy}");
            }
        })
    }
}

/// The CONNECT host of a report (`proxy::jail_report::REPORT_HOST`; the jail
/// does not import `proxy`).
const REPORT_HOST: &str = "jail-report.keyward.invalid";
/// How long one report to keyward may take (CMD's exit waits for the last ones).
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest description sent in a report.
const MAX_WHAT: usize = 200;

/// The address a caught connection was headed for (AnyIP: its local address).
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    Ok(match local.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), local.port()),
            None => local,
        },
        IpAddr::V4(_) => local,
    })
}

/// A connection caught on one of the `egress.ports` listeners.
pub async fn transparent(up: Arc<Upstream>, mut client: TcpStream) {
    let Ok(dst) = original_destination(&client) else {
        return;
    };
    // Small writes (a TLS handshake's) go at once, both ways: Nagle plus a
    // delayed ACK would add ~40 ms to every new connection.
    let _ = client.set_nodelay(true);
    let mut first = Vec::new();
    let sniffed = read_sniff(&mut client, &mut first).await;
    let by_address = || {
        up.names
            .name_of(dst.ip())
            .unwrap_or_else(|| match dst.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            })
    };
    match sniffed {
        Sniffed::Http {
            host: Some(host),
            head_len,
        } => {
            let Some(head) = absolute_form(&first[..head_len], &host, dst.port(), &up) else {
                up.block(&format!("unreadable cleartext request to {dst}"));
                return;
            };
            let mut rest = head;
            rest.extend_from_slice(&first[head_len..]);
            forward(&up, client, &rest, &format!("http://{host}:{}", dst.port())).await;
        }
        Sniffed::Tls(Some(sni)) => tunnel(&up, client, &sni, dst.port(), &first).await,
        _ => tunnel(&up, client, &by_address(), dst.port(), &first).await,
    }
}

async fn read_sniff(client: &mut TcpStream, buf: &mut Vec<u8>) -> Sniffed {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut chunk = [0u8; 4096];
    loop {
        let s = sniff(buf);
        if s != Sniffed::Incomplete || buf.len() >= MAX_SNIFF {
            return s;
        }
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Sniffed::Other,
        }
    }
}

/// `GET /p HTTP/1.1` → `GET http://host:port/p HTTP/1.1` with our
/// `Proxy-Authorization` (the client's own is dropped).
fn absolute_form(head: &[u8], host: &str, port: u16, up: &Upstream) -> Option<Zeroizing<Vec<u8>>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request = lines.next()?;
    let mut parts = request.splitn(3, ' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !target.starts_with('/') {
        return None;
    }
    let mut out =
        Zeroizing::new(format!("{method} http://{host}:{port}{target} {version}\r\n").into_bytes());
    out.extend_from_slice(&headers_with_auth(lines, up));
    Some(out)
}

/// The remaining header lines (up to the blank one) with our credentials
/// (wiped when dropped, as everything that holds the token).
fn headers_with_auth<'a>(
    lines: impl Iterator<Item = &'a str>,
    up: &Upstream,
) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::new());
    for line in lines.take_while(|l| !l.is_empty()) {
        // SECURITY: whatever credential the jailed program sends is dropped;
        // the jail's identity is the one `keyward run` was started with.
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("proxy-authorization") {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Proxy-Authorization: ");
    out.extend_from_slice(up.authorization.expose());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// CONNECT host:port, then `first` and the rest of the client's bytes.
async fn tunnel(up: &Upstream, mut client: TcpStream, host: &str, port: u16, first: &[u8]) {
    let mut head = Zeroizing::new(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n").into_bytes(),
    );
    head.extend_from_slice(&headers_with_auth(std::iter::empty(), up));
    let Some((mut proxy, status, leftover)) = open(up, &head, host, port).await else {
        return;
    };
    if status != 200 {
        up.block(&format!("keyward refused {host}:{port} ({status})"));
        return;
    }
    if proxy.write_all(first).await.is_err() || client.write_all(&leftover).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut proxy).await;
}

/// Sends `bytes` to keyward and relays both ways (keyward answers the client).
async fn forward(up: &Upstream, mut client: TcpStream, bytes: &[u8], what: &str) {
    let Ok(Ok(mut proxy)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(up.proxy)).await
    else {
        up.block(&format!(
            "keyward at {} is unreachable for {what}",
            up.proxy
        ));
        return;
    };
    let _ = proxy.set_nodelay(true);
    if proxy.write_all(bytes).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut proxy).await;
}

/// Connects to keyward, sends `head`, reads the answer's status.
async fn open(
    up: &Upstream,
    head: &[u8],
    host: &str,
    port: u16,
) -> Option<(TcpStream, u16, Vec<u8>)> {
    let attempt = async {
        let mut proxy = TcpStream::connect(up.proxy).await.ok()?;
        proxy.set_nodelay(true).ok()?;
        proxy.write_all(head).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = proxy.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let status = std::str::from_utf8(&buf[..end])
                    .ok()?
                    .split(' ')
                    .nth(1)?
                    .parse()
                    .ok()?;
                return Some((proxy, status, buf[end + 4..].to_vec()));
            }
            if buf.len() > MAX_ANSWER_HEAD {
                return None;
            }
        }
    };
    let got = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .ok()
        .flatten();
    if got.is_none() {
        up.block(&format!(
            "no answer from keyward at {} for {host}:{port}",
            up.proxy
        ));
    }
    got
}

/// A connection to the jail's proxy port: a proxy-aware client. Its request
/// head gets our credentials; then bytes are relayed as they are.
pub async fn proxy_aware(up: Arc<Upstream>, mut client: TcpStream) {
    let _ = client.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() >= MAX_SNIFF {
            return;
        }
        match tokio::time::timeout(SNIFF_TIMEOUT, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return;
    };
    let mut lines = text.split("\r\n");
    let Some(request) = lines.next() else {
        return;
    };
    let mut bytes = Zeroizing::new(format!("{request}\r\n").into_bytes());
    bytes.extend_from_slice(&headers_with_auth(lines, &up));
    bytes.extend_from_slice(&buf[end + 4..]);
    forward(&up, client, &bytes, request).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Upstream {
        Upstream {
            proxy: "127.0.0.1:1".parse().unwrap(),
            authorization: Secret::from_str("Basic YTpi"),
            names: Arc::new(Names::default()),
            blocked: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            sending: parking_lot::Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn cleartext_becomes_absolute_form_with_only_our_credentials() {
        let head = b"GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic evil\r\nX: y\r\n\r\n";
        let out = absolute_form(head, "a.test", 80, &up()).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            "GET http://a.test:80/p?q=1 HTTP/1.1\r\nHost: a.test\r\nX: y\r\n\
             Proxy-Authorization: Basic YTpi\r\n\r\n"
        );
        assert!(absolute_form(b"GET http://x/ HTTP/1.1\r\n\r\n", "x", 80, &up()).is_none());
    }

    #[test]
    fn blocks_are_counted() {
        let u = up();
        for _ in 0..3 {
            u.block("x");
        }
        assert_eq!(u.blocked.load(Ordering::Relaxed), 3);
    }
}
