//! What a connection's first bytes say about where it was going (leaf; the jail
//! relay and the proxy's transparent listener both use it): the SNI
//! of a TLS ClientHello, or the `Host` of a cleartext HTTP request. Pure parsing
//! of untrusted bytes: every length is checked, nothing panics.

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to decide.
    Incomplete,
    /// A TLS ClientHello; its SNI host name, if it sent one.
    Tls(Option<String>),
    /// A cleartext HTTP/1 request head (`head_len` bytes up to and including the
    /// blank line) and its `Host` (without a port).
    Http {
        host: Option<String>,
        head_len: usize,
    },
    /// Something else.
    Other,
}

/// TLS record content type `handshake`.
const TLS_HANDSHAKE: u8 = 0x16;
/// Handshake message type `client_hello`.
const CLIENT_HELLO: u8 = 0x01;
/// Extension `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Methods a cleartext request head may start with.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

pub fn sniff(buf: &[u8]) -> Sniffed {
    let Some(&first) = buf.first() else {
        return Sniffed::Incomplete;
    };
    if first == TLS_HANDSHAKE {
        return client_hello(buf);
    }
    let could_be_http = METHODS.iter().any(|m| {
        let n = m.len().min(buf.len());
        buf[..n] == m[..n]
    });
    if !could_be_http {
        return Sniffed::Other;
    }
    match find(buf, b"\r\n\r\n") {
        Some(end) => Sniffed::Http {
            host: http_host(&buf[..end]),
            head_len: end + 4,
        },
        None if buf.len() < 8 || METHODS.iter().any(|m| buf.starts_with(m)) => Sniffed::Incomplete,
        None => Sniffed::Other,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn http_host(head: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    let value = text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case("host").then(|| v.trim())
    })?;
    let host = match value.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => value.rsplit_once(':').map_or(value, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// A cursor over a byte slice that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// The SNI of a ClientHello that may span several TLS records.
fn client_hello(buf: &[u8]) -> Sniffed {
    // Reassemble handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut rest = Reader(buf);
    let mut complete = false;
    while let Some(header) = rest.take(5) {
        if header[0] != TLS_HANDSHAKE {
            return Sniffed::Other;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(body) = rest.take(len) else {
            hs.extend_from_slice(rest.0);
            break;
        };
        hs.extend_from_slice(body);
        if hs.len() >= 4 {
            let need = Reader(&hs[1..4]).u24().unwrap_or(usize::MAX);
            if hs.len() >= 4 + need {
                complete = true;
                break;
            }
        }
    }
    if hs.len() < 4 {
        return Sniffed::Incomplete;
    }
    if hs[0] != CLIENT_HELLO {
        return Sniffed::Other;
    }
    if !complete {
        return Sniffed::Incomplete;
    }
    Sniffed::Tls(server_name(&hs[4..]))
}

fn server_name(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut exts = Reader(r.vec16()?);
    while let Some(kind) = exts.u16() {
        let data = exts.vec16()?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while let Some(name_type) = list.u8() {
            let name = list.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with `sni` (or none).
    fn hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.len() as u16;
            exts.extend_from_slice(&0u16.to_be_bytes());
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![TLS_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_of_a_client_hello_and_its_prefixes() {
        let h = hello(Some("Q.Example.Test"));
        assert_eq!(sniff(&h), Sniffed::Tls(Some("q.example.test".into())));
        for cut in 0..h.len() {
            assert_eq!(sniff(&h[..cut]), Sniffed::Incomplete, "cut at {cut}");
        }
        assert_eq!(sniff(&hello(None)), Sniffed::Tls(None));
    }

    #[test]
    fn garbage_never_panics() {
        let h = hello(Some("a.test"));
        for i in 0..h.len() {
            let mut bad = h.clone();
            bad[i] ^= 0xff;
            let _ = sniff(&bad);
        }
        assert_eq!(sniff(b"SSH-2.0-OpenSSH\r\n"), Sniffed::Other);
    }

    #[test]
    fn host_of_a_cleartext_request() {
        let req = b"GET /x HTTP/1.1\r\nHost: Pypi.Example.Test:8080\r\n\r\nbody";
        assert_eq!(
            sniff(req),
            Sniffed::Http {
                host: Some("pypi.example.test".into()),
                head_len: req.len() - 4
            }
        );
        assert_eq!(sniff(b"GET /x HTT"), Sniffed::Incomplete);
        assert_eq!(sniff(b"GE"), Sniffed::Incomplete);
        let v6 = b"GET / HTTP/1.1\r\nhost: [::1]:80\r\n\r\n";
        assert!(matches!(sniff(v6), Sniffed::Http { host: Some(h), .. } if h == "::1"));
    }
}
