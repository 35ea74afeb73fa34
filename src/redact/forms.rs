//! The spellings of a secret an upstream is likely to echo: raw; hex; standard and
//! URL-safe base64 at each of the three byte alignments (only the stable inner
//! part of each); percent-encoding under the common encoder sets; JSON string
//! escaping under the common encoder options. Pure functions over bytes.

use base64::Engine as _;

/// Encoded forms shorter than this are not searched: a 2-character base64 fragment
/// would redact random text everywhere, and reveals nothing useful about the secret.
pub const MIN_ENCODED_PATTERN_LEN: usize = 8;

/// Every spelling of `secret` that is searched for (before case folding/dedup).
pub fn encoded_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![secret.to_vec()];
    let mut derived = Vec::new();
    derived.push(hex::encode(secret).into_bytes());
    derived.extend(base64_inner_forms(secret));
    derived.extend(percent_forms(secret));
    if let Ok(text) = std::str::from_utf8(secret) {
        derived.extend(json_forms(text));
    }
    out.extend(
        derived
            .into_iter()
            .filter(|f| f.len() >= MIN_ENCODED_PATTERN_LEN),
    );
    out
}

/// The characters of base64(prefix ‖ secret ‖ suffix) that depend only on the
/// secret, for a prefix of 0, 1 and 2 bytes (every alignment), in both alphabets.
fn base64_inner_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    const ALIGNMENTS: usize = 3;
    let mut out = Vec::new();
    for k in 0..ALIGNMENTS {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(secret);
        let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&buf);
        // Character i covers bits [6i, 6i+6); the secret covers [8k, 8(k+n)).
        let first = (8 * k).div_ceil(6);
        let end = 8 * (k + secret.len()) / 6;
        if end <= first {
            continue;
        }
        let std_form = enc.as_bytes()[first..end].to_vec();
        let url_form: Vec<u8> = std_form
            .iter()
            .map(|&c| match c {
                b'+' => b'-',
                b'/' => b'_',
                c => c,
            })
            .collect();
        out.push(std_form);
        out.push(url_form);
    }
    out
}

/// Percent-encodings under the encoder sets in common use.
fn percent_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    fn unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    }
    fn uri_component(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
    }
    fn uri(b: u8) -> bool {
        uri_component(b) || b";,/?:@&=+$#".contains(&b)
    }
    fn form(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"*-._".contains(&b)
    }
    fn php(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._".contains(&b)
    }
    fn alphanumeric(b: u8) -> bool {
        b.is_ascii_alphanumeric()
    }
    fn nothing(_: u8) -> bool {
        false
    }
    /// Which bytes are kept literal, and whether space is written as '+'.
    type Encoding = (fn(u8) -> bool, bool);
    let sets: [Encoding; 9] = [
        (unreserved, false),    // RFC 3986, Go url.PathEscape-like, Python quote
        (unreserved, true),     // Python quote_plus
        (uri_component, false), // JavaScript encodeURIComponent
        (uri, false),           // JavaScript encodeURI
        (form, true),           // WHATWG application/x-www-form-urlencoded
        (php, true),            // PHP urlencode
        (alphanumeric, false),  // Rust percent_encoding NON_ALPHANUMERIC
        (alphanumeric, true),
        (nothing, false), // every byte
    ];
    sets.iter()
        .map(|(keep, space_plus)| {
            let mut out = Vec::with_capacity(secret.len() * 3);
            for &b in secret {
                if keep(b) {
                    out.push(b);
                } else if b == b' ' && *space_plus {
                    out.push(b'+');
                } else {
                    out.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
            out
        })
        .collect()
}

/// JSON string escapings under the encoder options in common use.
fn json_forms(text: &str) -> Vec<Vec<u8>> {
    const OPTION_COUNT: u32 = 5;
    let mut out = Vec::new();
    for bits in 0..(1u32 << OPTION_COUNT) {
        let escape_slash = bits & 1 != 0;
        let html_safe = bits & 2 != 0;
        let ascii_only = bits & 4 != 0;
        let unicode_controls = bits & 8 != 0;
        let unicode_quotes = bits & 16 != 0;
        let mut s = String::with_capacity(text.len() * 2);
        for c in text.chars() {
            let u = |s: &mut String, c: u32| s.push_str(&format!("\\u{c:04x}"));
            match c {
                '"' | '\\' if unicode_quotes => u(&mut s, c as u32),
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '/' if escape_slash => s.push_str("\\/"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if html_safe => u(&mut s, c as u32),
                '\u{8}' if !unicode_controls => s.push_str("\\b"),
                '\u{c}' if !unicode_controls => s.push_str("\\f"),
                '\n' if !unicode_controls => s.push_str("\\n"),
                '\r' if !unicode_controls => s.push_str("\\r"),
                '\t' if !unicode_controls => s.push_str("\\t"),
                c if (c as u32) < 0x20 || c == '\u{7f}' && unicode_controls => u(&mut s, c as u32),
                c if !c.is_ascii() && ascii_only => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        u(&mut s, u32::from(*unit));
                    }
                }
                c => s.push(c),
            }
        }
        out.push(s.into_bytes());
    }
    // Some encoders (and hand-rolled serializers) escape every character; the
    // automaton is case-insensitive, so `\u00XX` and `\u00xx` are both covered.
    let mut every = String::with_capacity(text.len() * 6);
    for c in text.chars() {
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            every.push_str(&format!("\\u{:04x}", unit));
        }
    }
    out.push(every.into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::super::matcher::REDACTED;
    use super::super::test_util::{assert_redacted, patterns, SECRET};
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;

    #[test]
    fn raw_secret_is_redacted() {
        assert_redacted(&patterns(SECRET), SECRET);
    }

    #[test]
    fn hex_lower_upper_and_mixed_are_redacted() {
        let p = patterns(SECRET);
        let lower = hex::encode(SECRET);
        assert_redacted(&p, lower.as_bytes());
        assert_redacted(&p, hex::encode_upper(SECRET).as_bytes());
        let mixed: String = lower
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 3 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_redacted(&p, mixed.as_bytes());
    }

    #[test]
    fn base64_whole_value_in_every_alphabet_and_padding_is_redacted() {
        let p = patterns(SECRET);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(SECRET);
            let out = p.redact_all(enc.as_bytes()).expect("matched");
            assert!(!p.contains_secret(&out));
            // Only the (at most 2) boundary characters that mix in padding bits remain.
            assert!(
                out.len() <= REDACTED.len() + 3,
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn base64_at_every_alignment_inside_a_larger_blob_is_redacted() {
        let p = patterns(SECRET);
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let blob = [
                    vec![0xA5u8; prefix_len],
                    SECRET.to_vec(),
                    vec![0x5Au8; suffix_len],
                ]
                .concat();
                for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                    let enc = engine.encode(&blob);
                    let out = p.redact_all(enc.as_bytes()).expect("matched");
                    assert!(out.windows(REDACTED.len()).any(|w| w == REDACTED));
                    // What is left encodes the prefix, the suffix, at most one mixed
                    // character at each edge, and padding.
                    assert!(!p.contains_secret(&out));
                    let left = String::from_utf8_lossy(&out).replace("[REDACTED]", "");
                    let bound = (prefix_len * 4).div_ceil(3) + (suffix_len * 4).div_ceil(3) + 2 + 2;
                    assert!(
                        left.len() <= bound,
                        "prefix {prefix_len} suffix {suffix_len}: {left}"
                    );
                }
            }
        }
    }

    #[test]
    fn url_encoded_forms_are_redacted() {
        let p = patterns(SECRET);
        let upper: String = SECRET
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_redacted(&p, upper.as_bytes());
        assert_redacted(&p, upper.to_lowercase().as_bytes());
        let lower_hex: String = SECRET
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
        assert_redacted(&p, lower_hex.as_bytes());
        let every: String = SECRET.iter().map(|b| format!("%{b:02X}")).collect();
        assert_redacted(&p, every.as_bytes());
        let component = percent_encoding::utf8_percent_encode(
            std::str::from_utf8(SECRET).unwrap(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        assert_redacted(&p, component.as_bytes());
    }

    #[test]
    fn form_encoding_with_space_as_plus_is_redacted() {
        let p = patterns(b"pass word&more=1");
        assert_redacted(&p, b"pass+word%26more%3D1");
    }

    #[test]
    fn json_escaped_forms_are_redacted() {
        let secret = "k/\"ey<\\>&\u{1}é\tz";
        let p = patterns(secret.as_bytes());
        let serde = serde_json::to_string(secret).unwrap();
        assert_redacted(&p, serde.trim_matches('"').as_bytes());
        assert_redacted(&p, br#"k\/\"ey<\\>&\u0001\u00e9\tz"#);
        assert_redacted(&p, br#"k/\"ey\u003c\\\u003e\u0026\u0001\u00E9\tz"#);
        assert_redacted(
            &p,
            br#"k\/\u0022ey\u003c\u005c\u003e\u0026\u0001\u00e9\u0009z"#,
        );
    }

    #[test]
    fn json_with_every_character_unicode_escaped_is_redacted() {
        let p = patterns("sk-live-é9".as_bytes());
        assert_redacted(
            &p,
            br"\u0073\u006b\u002d\u006c\u0069\u0076\u0065\u002d\u00e9\u0039",
        );
        assert_redacted(
            &p,
            br"\u0073\u006B\u002D\u006C\u0069\u0076\u0065\u002D\u00E9\u0039",
        );
    }

    #[test]
    fn json_slash_escape_of_a_url_like_key_is_redacted() {
        let p = patterns(b"https://user:tok3n@example.com/x");
        assert_redacted(&p, br"https:\/\/user:tok3n@example.com\/x");
    }
}
