//! Test helpers shared by the redaction unit tests: a sample secret, patterns
//! for it, and streaming a document through a [`Redactor`] at given cuts.

use super::matcher::Patterns;
use super::stream::Redactor;
use bytes::Bytes;
use std::sync::Arc;

pub(super) const SECRET: &[u8] = b"sk-proj-Ab1+/Cd2?Ef3_gh4~XYZ";

pub(super) fn patterns(secret: &[u8]) -> Arc<Patterns> {
    Arc::new(Patterns::new(&[secret]))
}

/// Streams `data` through a fresh redactor split at `cuts`.
pub(super) fn stream(p: &Arc<Patterns>, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut r = Redactor::new(p.clone());
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        out.extend_from_slice(&r.push(Bytes::copy_from_slice(&data[at..c])));
        at = c;
    }
    out.extend_from_slice(&r.finish());
    out
}

pub(super) fn assert_redacted(p: &Arc<Patterns>, echoed: &[u8]) {
    let doc = [b"before <".as_slice(), echoed, b"> after".as_slice()].concat();
    let want = b"before <[REDACTED]> after".to_vec();
    assert_eq!(
        p.redact_all(&doc).as_deref(),
        Some(&want[..]),
        "{:?}",
        String::from_utf8_lossy(echoed)
    );
    for cut in 0..=doc.len() {
        assert_eq!(
            stream(p, &doc, &[cut]),
            want,
            "cut {cut} in {:?}",
            String::from_utf8_lossy(echoed)
        );
    }
}

/// `SECRET` among enough other secrets that the set is searched by the NFA.
pub(super) fn large_set() -> Arc<Patterns> {
    let others: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("other-secret-{i}-Qw3rTy9zXc").into_bytes())
        .collect();
    let mut all: Vec<&[u8]> = others.iter().map(Vec::as_slice).collect();
    all.push(SECRET);
    Arc::new(Patterns::new(&all))
}
