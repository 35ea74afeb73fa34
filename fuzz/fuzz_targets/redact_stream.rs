//! Streaming redaction: for a secret and a document that contains it (raw or in one
//! of its encoded forms) between arbitrary bytes, split into arbitrary chunks, the
//! output contains no searched form of the secret and equals the redaction of the
//! whole document (chunking never changes the result).
#![no_main]

use bytes::Bytes;
use keyward::redact::{encoded_forms, Patterns, Redactor};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Printable key-like alphabet (no `[`/`]`, which the marker itself uses).
const ALPHABET: &[u8] =
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/+=.~\"\\ %:";
const MIN_SECRET: usize = 4;
const MAX_SECRET: usize = 48;

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fuzz_target!(|data: &[u8]| {
    // Layout: [secret_len][form][n_cuts][cuts..][secret..][filler a..][0xff-split][filler b..]
    if data.len() < 3 {
        return;
    }
    let secret_len = MIN_SECRET + usize::from(data[0]) % MAX_SECRET;
    let form = usize::from(data[1]);
    let n_cuts = usize::from(data[2] % 16);
    let rest = &data[3..];
    if rest.len() < n_cuts + secret_len {
        return;
    }
    let (cut_bytes, rest) = rest.split_at(n_cuts);
    let (secret_raw, filler) = rest.split_at(secret_len);
    let secret: Vec<u8> = secret_raw
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
        .collect();
    let forms = encoded_forms(&secret);
    // A secret spelled inside the marker itself would be "found" in clean output.
    if forms
        .iter()
        .any(|f| contains_ci(keyward::redact::REDACTED, f))
    {
        return;
    }
    let spelled = &forms[form % forms.len()];
    let split = filler
        .iter()
        .position(|&b| b == 0xff)
        .unwrap_or(filler.len());
    let doc = [
        &filler[..split],
        spelled.as_slice(),
        filler.get(split + 1..).unwrap_or(&[]),
    ]
    .concat();

    let patterns = Arc::new(Patterns::new(&[&secret]));
    let mut redactor = Redactor::new(patterns.clone());
    let mut cuts: Vec<usize> = cut_bytes
        .iter()
        .map(|&c| usize::from(c) * doc.len() / 255)
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(doc.len());
    let mut at = 0;
    for c in cuts.into_iter().chain(std::iter::once(doc.len())) {
        let piece = Bytes::copy_from_slice(&doc[at..c]);
        out.extend_from_slice(&redactor.push(piece));
        // Never more held back than a pattern could need.
        assert!(redactor.held_len() < patterns.max_pattern_len().max(1));
        at = c;
    }
    out.extend_from_slice(&redactor.finish());

    assert!(!patterns.contains_secret(&out), "secret survived");
    for f in &forms {
        // Encoded forms shorter than the search minimum are not searched.
        if f.len() >= keyward::redact::MIN_ENCODED_PATTERN_LEN || f == &secret {
            assert!(
                !contains_ci(&out, f),
                "form {:?} survived",
                String::from_utf8_lossy(f)
            );
        }
    }
    let whole = patterns.redact_all(&doc).unwrap_or_else(|| doc.clone());
    assert_eq!(out, whole, "chunking changed the result");
});
