//! Request signing: HMAC webhook signatures and AWS Signature Version 4. Pure
//! functions over bytes (no I/O), tested with published vectors.

use crate::config::{HmacSignConfig, SignOver};
use crate::secret::Secret;
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// Template slots of an HMAC signature format.
pub const SLOT_HEX: &str = "{hex}";
pub const SLOT_BASE64: &str = "{base64}";
pub const SLOT_TS: &str = "{ts}";

/// SigV4 constants.
pub const AWS_ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const AWS_TERMINATOR: &str = "aws4_request";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` values of aws-chunked uploads start with this.
pub const STREAMING_PREFIX: &str = "STREAMING-";
pub const X_AMZ_DATE: &str = "x-amz-date";
pub const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
pub const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
/// Headers an agent's SDK computes with its dummy credentials: removed before signing.
pub const AWS_CLIENT_HEADERS: &[&str] = &[
    "authorization",
    X_AMZ_DATE,
    X_AMZ_SECURITY_TOKEN,
    X_AMZ_CONTENT_SHA256,
];

/// RFC 3986 unreserved characters stay as they are; everything else is `%XX`.
const AWS_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn mac(key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    m.update(data);
    Zeroizing::new(m.finalize().into_bytes().to_vec())
}

/// The signature header value for `body` (the exact bytes forwarded) at Unix
/// time `ts`.
pub fn hmac_header(cfg: &HmacSignConfig, key: &Secret, ts: u64, body: &[u8]) -> String {
    let ts = ts.to_string();
    let digest = match cfg.over {
        SignOver::Body => mac(key.expose(), body),
        SignOver::TimestampBody => {
            let mut signed = Vec::with_capacity(ts.len() + 1 + body.len());
            signed.extend_from_slice(ts.as_bytes());
            signed.push(b'.');
            signed.extend_from_slice(body);
            mac(key.expose(), &signed)
        }
    };
    cfg.format
        .replace(SLOT_HEX, &hex::encode(&*digest))
        .replace(
            SLOT_BASE64,
            &base64::engine::general_purpose::STANDARD.encode(&*digest),
        )
        .replace(SLOT_TS, &ts)
}

/// AWS credentials (kind `aws`).
#[derive(Debug)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// One request as SigV4 sees it.
pub struct SigV4Request<'a> {
    pub method: &'a str,
    /// Path as sent on the wire (percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Headers to sign (any case; values are trimmed and inner spaces collapsed).
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the payload, or `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

/// `YYYYMMDD'T'HHMMSS'Z'` of a Unix time.
pub fn amz_date(unix: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, AWS_UNRESERVED).to_string()
}

/// Canonical URI: S3 normalises nothing and encodes once; every other service
/// encodes the (already encoded) path once more.
fn canonical_uri(path: &str, service: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| {
            let decoded = percent_decode_str(seg).decode_utf8_lossy();
            let once = uri_encode(&decoded);
            if service == "s3" {
                once
            } else {
                uri_encode(seg)
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode_str(&s.replace('+', "%20"))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (uri_encode(&dec(k)), uri_encode(&dec(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `(canonical headers, signed header list)`; names lower-cased and sorted, values
/// trimmed with inner whitespace runs collapsed, repeated names joined by `,`.
fn canonical_headers(headers: &[(String, String)]) -> (String, String) {
    let mut map: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers {
        let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
        map.entry(k.to_ascii_lowercase()).or_default().push(v);
    }
    let canonical = map
        .iter()
        .map(|(k, vs)| format!("{k}:{}\n", vs.join(",")))
        .collect::<String>();
    let signed = map.keys().cloned().collect::<Vec<_>>().join(";");
    (canonical, signed)
}

/// The `Authorization` header value for `req` signed at `amz_date`.
pub fn sigv4_authorization(
    req: &SigV4Request<'_>,
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let (headers, signed) = canonical_headers(req.headers);
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path, service),
        canonical_query(req.query),
        headers,
        signed,
        req.payload_hash
    );
    let scope = format!("{date}/{region}/{service}/{AWS_TERMINATOR}");
    let string_to_sign = format!(
        "{AWS_ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut k_secret = Zeroizing::new(b"AWS4".to_vec());
    k_secret.extend_from_slice(creds.secret_access_key.expose());
    let k_date = mac(&k_secret, date.as_bytes());
    let k_region = mac(&k_date, region.as_bytes());
    let k_service = mac(&k_region, service.as_bytes());
    let k_signing = mac(&k_service, AWS_TERMINATOR.as_bytes());
    let signature = hex::encode(&*mac(&k_signing, string_to_sign.as_bytes()));
    format!(
        "{AWS_ALGORITHM} Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hmac_cfg(header: &str, format: &str, over: SignOver) -> HmacSignConfig {
        HmacSignConfig {
            hmac: "sha256".into(),
            header: header.into(),
            format: format.into(),
            over,
            timestamp_header: None,
        }
    }

    /// GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn github_webhook_vector() {
        let cfg = hmac_cfg("X-Hub-Signature-256", "sha256={hex}", SignOver::Body);
        let got = hmac_header(
            &cfg,
            &Secret::from_str("It's a Secret to Everybody"),
            0,
            b"Hello, World!",
        );
        assert_eq!(
            got,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    /// Stripe: `t=<ts>,v1=<hex HMAC over "{ts}.{body}">`.
    #[test]
    fn stripe_webhook_vector() {
        let cfg = hmac_cfg(
            "Stripe-Signature",
            "t={ts},v1={hex}",
            SignOver::TimestampBody,
        );
        let got = hmac_header(
            &cfg,
            &Secret::from_str("whsec_test_secret"),
            1_700_000_000,
            br#"{"id":"evt_1","object":"event"}"#,
        );
        assert_eq!(got, format!("t=1700000000,v1={STRIPE_V1}"));
    }
    const STRIPE_V1: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

    fn suite_creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::from_str("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: None,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// AWS SigV4 test suite (aws-sig-v4-test-suite), region us-east-1, service
    /// "service", 20150830T123600Z.
    #[test]
    fn aws_test_suite_vectors() {
        const DATE: &str = "20150830T123600Z";
        let empty = sha256_hex(b"");
        let base = h(&[("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)]);
        let form = h(&[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", DATE),
        ]);
        let form_hash = sha256_hex(b"Param1=value1");
        /// (name, method, path, query, headers, payload hash, expected signature)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a [(String, String)],
            &'a str,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "get-vanilla",
                "GET",
                "/",
                None,
                &base,
                &empty,
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "/",
                Some("Param2=value2&Param1=value1"),
                &base,
                &empty,
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "post-vanilla",
                "POST",
                "/",
                None,
                &base,
                &empty,
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "post-x-www-form-urlencoded",
                "POST",
                "/",
                None,
                &form,
                &form_hash,
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
        ];
        for (name, method, path, query, headers, payload, want) in cases {
            let req = SigV4Request {
                method,
                path,
                query: *query,
                headers,
                payload_hash: payload,
            };
            let got = sigv4_authorization(&req, &suite_creds(), "us-east-1", "service", DATE);
            let signed = if headers.len() == 3 {
                "content-type;host;x-amz-date"
            } else {
                "host;x-amz-date"
            };
            assert_eq!(
                got,
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={want}"
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn amz_date_formats() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
    }

    #[test]
    fn canonical_uri_encoding() {
        assert_eq!(canonical_uri("/a b/%2Fc", "s3"), "/a%20b/%2Fc");
        assert_eq!(canonical_uri("/a%20b", "service"), "/a%2520b");
        assert_eq!(canonical_query(Some("b=2&a=1&a=0&c")), "a=0&a=1&b=2&c=");
    }
}
