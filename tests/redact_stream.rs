//! Response redaction end to end: bodies in every chunking, SSE latency, compressed
//! bodies, trailers, truncation and the on_redact hook.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use keyward::body::{Body, BoxError};
use keyward::proxy::error::Deny;
use keyward::redact::{
    encoded_forms, read_answer, redact_upstream, Answer, OnRedact, Patterns, RedactError, REDACTED,
    WHOLE_BODY_MAX,
};
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

const SECRET: &[u8] = b"sk-ant-api03-Zx9/Qw+e_r~T";

/// A body fed by the test, frame by frame (data, trailers, errors), like a live
/// upstream connection.
struct ChannelBody(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

fn channel() -> (Tx, Body) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBody(rx).boxed())
}

fn response(headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    for (k, v) in headers {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        resp.headers_mut()
            .append(name, HeaderValue::from_str(v).unwrap());
    }
    resp
}

fn chunked_body(chunks: Vec<Vec<u8>>) -> Body {
    let (tx, body) = channel();
    for c in chunks {
        tx.send(Ok(Frame::data(Bytes::from(c)))).unwrap();
    }
    body
}

fn counter() -> (Arc<AtomicUsize>, Option<OnRedact>) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    (
        n,
        Some(Box::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        })),
    )
}

/// Longer than any test waits on a body: only a test that means to stall hits it.
const NO_STALL: Duration = Duration::from_secs(60);

/// The production path: [`read_answer`] decides up front (a refusal is the proxy's
/// `Deny`) and reads a small sized body whole, then [`redact_upstream`].
async fn redact(
    resp: Response<Body>,
    p: Arc<Patterns>,
    on: Option<OnRedact>,
) -> Result<Response<Body>, Deny> {
    let answer = read_answer(resp, &p, false, NO_STALL).await?;
    Ok(redact_upstream(answer, p, on))
}

async fn collect(resp: Response<Body>) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
    let collected = resp.into_body().collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes().to_vec(), trailers))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The forms an observer could decode back to the secret.
fn assert_no_form(out: &[u8], secret: &[u8]) {
    for form in encoded_forms(secret) {
        assert!(
            !contains(out, &form),
            "form {:?} leaked in {:?}",
            String::from_utf8_lossy(&form),
            String::from_utf8_lossy(out)
        );
    }
}

#[tokio::test]
async fn echoed_key_in_body_and_headers_is_redacted_and_audited_once() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (n, on) = counter();
    let body = [
        b"{\"error\":\"bad key ".as_slice(),
        SECRET,
        b"\"}".as_slice(),
    ]
    .concat();
    let len = body.len().to_string();
    let resp = response(
        &[
            ("content-length", &len),
            ("x-echo", std::str::from_utf8(SECRET).unwrap()),
        ],
        chunked_body(vec![body[..20].to_vec(), body[20..].to_vec()]),
    );
    let resp = redact(resp, p, on).await.unwrap();
    let want = b"{\"error\":\"bad key [REDACTED]\"}";
    assert_eq!(
        resp.headers()["content-length"],
        want.len().to_string().as_str(),
        "the length changed: the redacted one is declared, not the upstream's"
    );
    assert_eq!(resp.headers()["x-echo"], "[REDACTED]");
    let (out, _) = collect(resp).await.unwrap();
    assert_eq!(out, want);
    assert_eq!(
        n.load(Ordering::SeqCst),
        1,
        "on_redact fires once per response"
    );
}

#[tokio::test]
async fn on_redact_fires_for_body_only_redaction_and_not_without_one() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (n, on) = counter();
    let resp = redact(
        response(&[], chunked_body(vec![SECRET.to_vec(), SECRET.to_vec()])),
        p.clone(),
        on,
    )
    .await
    .unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 0);
    collect(resp).await.unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 1);

    let (n, on) = counter();
    let resp = redact(response(&[], chunked_body(vec![b"clean".to_vec()])), p, on)
        .await
        .unwrap();
    collect(resp).await.unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_patterns_means_response_untouched() {
    let p = Arc::new(Patterns::new(&[]));
    let resp = response(
        &[("content-length", "6"), ("content-encoding", "zstd")],
        chunked_body(vec![SECRET.to_vec()]),
    );
    let resp = redact(resp, p, None).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "6");
    assert_eq!(resp.headers()["content-encoding"], "zstd");
}

#[tokio::test]
async fn sse_event_is_delivered_before_the_stream_ends() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (tx, body) = channel();
    let resp = redact(
        response(&[("content-type", "text/event-stream")], body),
        p,
        None,
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    tx.send(Ok(Frame::data(Bytes::from_static(
        b"data: {\"delta\":\"Hel\"}\n\n",
    ))))
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first event must not wait");
    let first = first.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: {\"delta\":\"Hel\"}\n\n");
    // An event that ends in a possible secret prefix releases everything before it.
    tx.send(Ok(Frame::data(Bytes::from_static(b"data: sk-ant"))))
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&second.into_data().unwrap()[..], b"data: ");
    tx.send(Ok(Frame::data(Bytes::from_static(b"hropic\n\n"))))
        .unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&third.into_data().unwrap()[..], b"sk-anthropic\n\n");
    drop(tx);
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn upstream_error_is_a_body_error_and_held_bytes_are_not_flushed() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (tx, body) = channel();
    let resp = redact(response(&[], body), p, None).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"ok sk-ant-api03"))))
        .unwrap();
    tx.send(Err("connection reset".into())).unwrap();
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    let mut errored = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => seen.extend_from_slice(&f.into_data().unwrap()),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "a cut-off upstream body must not end cleanly");
    assert_eq!(seen, b"ok ");
}

#[tokio::test]
async fn trailers_are_redacted_and_body_flushed_before_them() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (n, on) = counter();
    let (tx, body) = channel();
    let resp = redact(response(&[], body), p, on).await.unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"tail sk-ant-api03"))))
        .unwrap();
    let mut t = HeaderMap::new();
    t.insert(
        "x-debug",
        HeaderValue::from_bytes(&[b"key=".as_slice(), SECRET].concat()).unwrap(),
    );
    t.insert("grpc-status", HeaderValue::from_static("0"));
    tx.send(Ok(Frame::trailers(t))).unwrap();
    drop(tx);
    let (out, trailers) = collect(resp).await.unwrap();
    assert_eq!(out, b"tail sk-ant-api03");
    let trailers = trailers.expect("trailers forwarded");
    assert_eq!(trailers["x-debug"], "key=[REDACTED]");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn sample_doc() -> Vec<u8> {
    let mut doc = Vec::new();
    for i in 0..2000 {
        doc.extend_from_slice(format!("line {i} lorem ipsum dolor sit amet\n").as_bytes());
        if i % 500 == 7 {
            doc.extend_from_slice(b"echo: ");
            doc.extend_from_slice(SECRET);
            doc.push(b'\n');
        }
    }
    doc
}

fn expected(doc: &[u8]) -> Vec<u8> {
    let s = String::from_utf8(doc.to_vec()).unwrap();
    s.replace(
        std::str::from_utf8(SECRET).unwrap(),
        std::str::from_utf8(REDACTED).unwrap(),
    )
    .into_bytes()
}

fn pieces(data: &[u8], size: usize) -> Vec<Vec<u8>> {
    data.chunks(size).map(|c| c.to_vec()).collect()
}

#[tokio::test]
async fn compressed_bodies_are_decoded_redacted_and_forwarded_decoded() {
    let doc = sample_doc();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", gzip(&doc)),
        ("x-gzip", gzip(&doc)),
        ("deflate", zlib(&doc)),
        ("deflate", raw_deflate(&doc)),
        ("br", brotli(&doc)),
        ("GZIP", gzip(&doc)),
    ];
    for (coding, compressed) in cases {
        for size in [1, 7, 100, 100_000] {
            let p = Arc::new(Patterns::new(&[SECRET]));
            let (n, on) = counter();
            let resp = response(
                &[
                    ("content-encoding", coding),
                    ("content-length", &compressed.len().to_string()),
                ],
                chunked_body(pieces(&compressed, size)),
            );
            let resp = redact(resp, p, on).await.unwrap();
            assert!(
                resp.headers().get("content-encoding").is_none(),
                "{coding}: forwarded decoded"
            );
            assert!(resp.headers().get("content-length").is_none());
            let (out, _) = collect(resp)
                .await
                .unwrap_or_else(|e| panic!("{coding}/{size}: {e}"));
            assert_eq!(out, expected(&doc), "{coding} in pieces of {size}");
            assert_eq!(n.load(Ordering::SeqCst), 1);
        }
    }
}

#[tokio::test]
async fn multi_member_gzip_is_decoded_whole() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let body = [gzip(b"first sk-ant-api03-"), gzip(b"Zx9/Qw+e_r~T second")].concat();
    let resp = redact(
        response(&[("content-encoding", "gzip")], chunked_body(vec![body])),
        p,
        None,
    )
    .await
    .unwrap();
    let (out, _) = collect(resp).await.unwrap();
    assert_eq!(out, b"first [REDACTED] second");
}

#[tokio::test]
async fn truncated_or_corrupt_compressed_body_is_an_error_never_a_clean_end() {
    let doc = sample_doc();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip", gzip(&doc)),
        ("deflate", zlib(&doc)),
        ("br", brotli(&doc)),
    ];
    for (coding, compressed) in cases {
        for cut in [1, 2, 10, compressed.len() / 2, compressed.len() - 1] {
            let p = Arc::new(Patterns::new(&[SECRET]));
            let resp = response(
                &[("content-encoding", coding)],
                chunked_body(vec![compressed[..cut].to_vec()]),
            );
            let result = collect(redact(resp, p, None).await.unwrap()).await;
            assert!(result.is_err(), "{coding} cut at {cut} must fail");
        }
        let mut corrupt = compressed.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid..mid + 8].copy_from_slice(b"\xff\x00\xff\x00garb");
        let p = Arc::new(Patterns::new(&[SECRET]));
        let resp = response(&[("content-encoding", coding)], chunked_body(vec![corrupt]));
        if let Ok((out, _)) = collect(redact(resp, p, None).await.unwrap()).await {
            panic!(
                "{coding}: corrupt body passed as complete ({} bytes)",
                out.len()
            );
        }
    }
}

#[tokio::test]
async fn empty_body_with_content_encoding_is_fine() {
    for coding in ["gzip", "deflate", "br"] {
        let p = Arc::new(Patterns::new(&[SECRET]));
        let resp = response(&[("content-encoding", coding)], chunked_body(vec![]));
        let (out, _) = collect(redact(resp, p, None).await.unwrap()).await.unwrap();
        assert!(out.is_empty());
    }
}

/// An encoding keyward cannot decode is a refusal the caller renders and audits,
/// decided before any of the response is sent, whatever its framing.
#[tokio::test]
async fn unknown_or_stacked_encoding_is_refused_not_passed_through() {
    for coding in ["zstd", "compress", "gzip, br", "weird"] {
        let p = Arc::new(Patterns::new(&[SECRET]));
        let resp = response(
            &[("content-encoding", coding)],
            chunked_body(vec![SECRET.to_vec()]),
        );
        let deny = redact(resp, p.clone(), None).await.expect_err("a refusal");
        assert_eq!(
            deny.code.as_str(),
            "upstream_encoding_unsupported",
            "{coding}"
        );
        assert_eq!(deny.code.status(), StatusCode::BAD_GATEWAY);
        let rendered = deny.response(None, None);
        assert_eq!(
            rendered.headers()["x-keyward-error"],
            "upstream_encoding_unsupported"
        );
        let (out, _) = collect(rendered).await.unwrap();
        assert!(!contains(&out, SECRET));

        // Small, sized or not: read_answer refuses before anything is read.
        for len in [Some("6"), None] {
            let mut headers = vec![("content-encoding", coding)];
            headers.extend(len.map(|l| ("content-length", l)));
            let resp = response(&headers, chunked_body(vec![SECRET.to_vec()]));
            let deny = read_answer(resp, &p, false, Duration::from_secs(5))
                .await
                .err()
                .map(Deny::from)
                .expect("a refusal");
            assert_eq!(deny.code.as_str(), "upstream_encoding_unsupported");
        }
    }
}

/// Bodiless answers (204, 304) have nothing to decode: an odd encoding is fine.
#[tokio::test]
async fn bodiless_answer_with_unknown_encoding_is_not_refused() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let mut resp = response(&[("content-encoding", "zstd")], chunked_body(vec![]));
        *resp.status_mut() = status;
        let answer = read_answer(resp, &p, false, Duration::from_secs(5))
            .await
            .expect("no refusal");
        let resp = redact_upstream(answer, p.clone(), None);
        assert_eq!(resp.status(), status);
    }
}

#[tokio::test]
async fn identity_coding_is_not_decoded() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let resp = response(
        &[("content-encoding", "identity")],
        chunked_body(vec![SECRET.to_vec()]),
    );
    let (out, _) = collect(redact(resp, p, None).await.unwrap()).await.unwrap();
    assert_eq!(out, REDACTED);
}

#[tokio::test]
async fn not_modified_keeps_its_headers_and_is_not_wrapped() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let mut resp = response(
        &[("content-length", "1234"), ("etag", "\"abc\"")],
        chunked_body(vec![]),
    );
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let resp = redact(resp, p, None).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1234");
}

#[tokio::test]
async fn gzip_bomb_is_emitted_in_bounded_frames() {
    let zeros = vec![b'a'; 8 * 1024 * 1024];
    let compressed = gzip(&zeros);
    assert!(compressed.len() < 64 * 1024);
    let p = Arc::new(Patterns::new(&[SECRET]));
    let resp = response(
        &[("content-encoding", "gzip")],
        chunked_body(vec![compressed]),
    );
    let mut body = redact(resp, p, None).await.unwrap().into_body();
    let mut total = 0;
    let mut largest = 0;
    while let Some(f) = body.frame().await {
        let d = f.unwrap().into_data().unwrap();
        largest = largest.max(d.len());
        total += d.len();
    }
    assert_eq!(total, zeros.len());
    assert!(largest <= 2 * 1024 * 1024, "largest frame {largest}");
}

mod prop {
    use super::*;
    use base64::Engine as _;
    use proptest::prelude::*;

    /// Every way an upstream might spell the secret, as (description, bytes).
    fn spellings(secret: &[u8], pad: &[u8]) -> Vec<Vec<u8>> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let mut blob = pad.to_vec();
        blob.extend_from_slice(secret);
        blob.extend_from_slice(pad);
        let text = std::str::from_utf8(secret).unwrap();
        vec![
            secret.to_vec(),
            hex::encode(secret).into_bytes(),
            hex::encode_upper(secret).into_bytes(),
            STANDARD.encode(secret).into_bytes(),
            URL_SAFE_NO_PAD.encode(secret).into_bytes(),
            STANDARD_NO_PAD
                .encode(&blob[..pad.len() + secret.len()])
                .into_bytes(),
            URL_SAFE.encode(&blob).into_bytes(),
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .into_bytes(),
            text.bytes()
                .map(|b| format!("%{b:02x}"))
                .collect::<String>()
                .into_bytes(),
            serde_json::to_string(text).unwrap().into_bytes(),
            serde_json::to_string(text)
                .unwrap()
                .replace('/', "\\/")
                .into_bytes(),
        ]
    }

    fn secret_strategy() -> impl Strategy<Value = Vec<u8>> {
        // API-key-like: printable ASCII with the characters encoders care about.
        proptest::collection::vec(
            prop_oneof![8 => proptest::char::range('a', 'z'), 2 => proptest::char::range('0', '9'), 1 => proptest::sample::select(vec!['-', '_', '/', '+', '=', '.', '~', '"', ' '])],
            12..48,
        )
        .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes())
    }

    /// Filler that often looks like the start of a secret.
    fn filler(secret: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let prefix_len = secret.len() - 1;
        proptest::collection::vec(
            prop_oneof![
                3 => proptest::collection::vec(any::<u8>(), 0..20),
                2 => (1..prefix_len).prop_map(move |n| secret[..n].to_vec()),
                1 => Just(b"data: {\"x\":\"\"}\n\n".to_vec()),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    fn chunk(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain(std::iter::once(data.len())) {
            out.push(data[at..c].to_vec());
            at = c;
        }
        out
    }

    fn run(p: &Arc<Patterns>, chunks: Vec<Vec<u8>>) -> Vec<u8> {
        let mut r = keyward::redact::Redactor::new(p.clone());
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.push(Bytes::from(c)));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn secret_in_any_form_and_any_chunking_never_leaks(
            (secret, a, b) in secret_strategy().prop_flat_map(|s| (Just(s.clone()), filler(s.clone()), filler(s))),
            form in 0usize..11,
            pad in proptest::collection::vec(any::<u8>(), 0..3),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let p = Arc::new(Patterns::new(&[&secret]));
            let spelled = spellings(&secret, &pad)[form].clone();
            let data = [a.clone(), spelled, b.clone()].concat();
            let out = run(&p, chunk(&data, &cuts));
            // Nothing decodable back to the secret remains...
            prop_assert!(!p.contains_secret(&out), "leak: {:?}", String::from_utf8_lossy(&out));
            assert_no_form(&out, &secret);
            // ...and the stream is redacted exactly as the whole document would be.
            prop_assert_eq!(out, p.redact_all(&data).unwrap_or(data.clone()));
        }

        #[test]
        fn data_without_the_secret_passes_unchanged(
            (secret, data) in secret_strategy().prop_flat_map(|s| (Just(s.clone()), filler(s))),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let p = Arc::new(Patterns::new(&[&secret]));
            prop_assume!(p.redact_all(&data).is_none());
            prop_assert_eq!(run(&p, chunk(&data, &cuts)), data);
        }
    }
}

/// A small body of declared length is read whole and sent with its exact new
/// length; HEAD, encoded, oversized or unsized answers stream as before.
#[tokio::test]
async fn small_sized_body_is_redacted_whole_with_an_exact_length() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let body = [b"{\"key\":\"".as_slice(), SECRET, b"\"}".as_slice()].concat();
    let len = body.len().to_string();
    let resp = response(
        &[("content-length", &len)],
        chunked_body(vec![body[..7].to_vec(), body[7..].to_vec()]),
    );
    let (n, on) = counter();
    let answer = read_answer(resp, &p, false, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(answer, Answer::Whole { .. }));
    let resp = redact_upstream(answer, p.clone(), on);
    let want = b"{\"key\":\"[REDACTED]\"}";
    assert_eq!(
        resp.headers()["content-length"],
        want.len().to_string().as_str()
    );
    let (out, _) = collect(resp).await.unwrap();
    assert_eq!(out, want);
    assert_eq!(n.load(Ordering::SeqCst), 1);

    let streams = |headers: &[(&str, &str)]| response(headers, chunked_body(vec![b"x".to_vec()]));
    let big = (WHOLE_BODY_MAX + 1).to_string();
    for (resp, head) in [
        (streams(&[("content-length", "1")]), true),
        (
            streams(&[("content-length", "1"), ("content-encoding", "gzip")]),
            false,
        ),
        (streams(&[("content-length", &big)]), false),
        (streams(&[]), false),
    ] {
        let answer = read_answer(resp, &p, head, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(answer, Answer::Streaming(_)));
    }
}

/// A small sized body that stalls is a timeout, not a half answer.
#[tokio::test]
async fn small_sized_body_that_stalls_is_a_timeout() {
    let p = Arc::new(Patterns::new(&[SECRET]));
    let (tx, body) = channel();
    tx.send(Ok(Frame::data(Bytes::from_static(b"par"))))
        .unwrap();
    let resp = response(&[("content-length", "10")], body);
    let deny = read_answer(resp, &p, false, Duration::from_millis(50))
        .await
        .err()
        .map(Deny::from)
        .expect("a refusal");
    assert_eq!(deny.code.as_str(), "upstream_timeout");
    drop(tx);
}

/// Each reason to withhold an answer is the same refusal clients saw before the
/// redaction module had its own error: code, status and message.
#[test]
fn redaction_refusals_keep_their_codes_and_statuses() {
    for (err, code, status, message) in [
        (
            RedactError::Unavailable,
            "redaction_unavailable",
            StatusCode::BAD_GATEWAY,
            "keyward could not prepare response redaction",
        ),
        (
            RedactError::EncodingUnsupported("zstd".into()),
            "upstream_encoding_unsupported",
            StatusCode::BAD_GATEWAY,
            "upstream response uses content-encoding \"zstd\", which keyward cannot inspect",
        ),
        (
            RedactError::TimedOut,
            "upstream_timeout",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream did not finish its response in time",
        ),
        (
            RedactError::Truncated,
            "upstream_protocol",
            StatusCode::BAD_GATEWAY,
            "upstream response body ended early or failed",
        ),
    ] {
        let deny = Deny::from(err);
        assert_eq!(deny.code.as_str(), code);
        assert_eq!(deny.code.status(), status);
        assert_eq!(deny.message, message);
        let resp = deny.response(None, None);
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["x-keyward-error"], code);
    }
}
