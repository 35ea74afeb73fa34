//! The canonical line and the chain hash: an [`Event`] as the exact JSON bytes
//! on disk (byte-identical to serde_json, written by hand for the request path),
//! `hash = sha256(prev_hash || body)`, and the `,"hash":"…"}` suffix that closes
//! every line.

use super::event::Event;
use crate::ids::hex_string;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first line of a log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Length of a hex SHA-256.
const HASH_HEX_LEN: usize = 64;
/// What precedes the hash at the end of every line.
pub(super) const HASH_FIELD_OPEN: &str = ",\"hash\":\"";
/// What follows the hash at the end of every line (before the newline).
pub(super) const HASH_FIELD_CLOSE: &str = "\"}";

impl Event {
    /// Appends the canonical line of this event without its closing brace (the
    /// bytes the chain hash covers) to `out`. The bytes are exactly those of
    /// `serde_json::to_string(self)` minus the final `}`: every reader parses the
    /// lines with serde, and a log must not change shape with this writer. Written
    /// by hand because it runs for every proxied request and serde's generic map
    /// path costs several times more; `tests::hand_written_json_is_serde_json`
    /// holds the two together.
    pub(super) fn write_canonical_body(&self, out: &mut Vec<u8>) {
        // Destructured, not read field by field, so that a field added to `Event`
        // fails to compile here instead of silently missing from the log.
        let Event {
            ts,
            event,
            request_id,
            agent,
            owner,
            builder,
            chain,
            run_id,
            connection_id,
            provider,
            host,
            method,
            path,
            secret,
            scope,
            tier,
            version,
            outcome,
            reason,
            status,
            prev_hash,
            hash: _,
        } = self;
        // `"{key}":` after a comma; the keys are the field names (no renames).
        macro_rules! key {
            ($field:ident) => {
                concat!(",\"", stringify!($field), "\":").as_bytes()
            };
        }
        out.extend_from_slice(b"{\"ts\":");
        push_json_str(out, ts);
        out.extend_from_slice(key!(event));
        push_json_str(out, event.as_str());
        // Same order as the struct: `skip_serializing_if = "Option::is_none"`.
        let optional = [
            (key!(request_id), request_id),
            (key!(agent), agent),
            (key!(owner), owner),
            (key!(builder), builder),
            (key!(chain), chain),
            (key!(run_id), run_id),
            (key!(connection_id), connection_id),
            (key!(provider), provider),
            (key!(host), host),
            (key!(method), method),
            (key!(path), path),
            (key!(secret), secret),
            (key!(scope), scope),
            (key!(tier), tier),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.extend_from_slice(key);
                push_json_str(out, value);
            }
        }
        if let Some(version) = version {
            out.extend_from_slice(key!(version));
            push_decimal(out, *version);
        }
        out.extend_from_slice(key!(outcome));
        push_json_str(out, outcome.as_str());
        if let Some(reason) = reason {
            out.extend_from_slice(key!(reason));
            push_json_str(out, reason);
        }
        if let Some(status) = status {
            out.extend_from_slice(key!(status));
            push_decimal(out, u32::from(*status));
        }
        out.extend_from_slice(key!(prev_hash));
        push_json_str(out, prev_hash);
    }
}

/// Lower-case hex digits, by value.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Marks a byte that JSON writes as `\u00XX` in [`JSON_ESCAPE`].
const ESCAPE_UNICODE: u8 = b'u';

/// How serde_json writes each byte inside a string (its `ESCAPE` table): 0 = as
/// it is, [`ESCAPE_UNICODE`] = `\u00XX` (lower-case hex), any other value `c` =
/// backslash then `c`. Only `"`, `\` and control bytes below 0x20 are escaped;
/// `/`, DEL (0x7f) and non-ASCII UTF-8 stay as they are.
const JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    // The C0 control bytes, 0x00 to 0x1f; five of them have short forms.
    let mut b = 0;
    while b < 0x20 {
        table[b] = ESCAPE_UNICODE;
        b += 1;
    }
    table[b'\x08' as usize] = b'b';
    table[b'\t' as usize] = b't';
    table[b'\n' as usize] = b'n';
    table[b'\x0c' as usize] = b'f';
    table[b'\r' as usize] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a quoted JSON string, escaped exactly as serde_json does.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Start of the run of bytes that need no escape: copied in one go. Typical
    // fields need none, so whole words are checked first and only the rest (from
    // the first word with a byte to escape, or the tail) goes byte by byte.
    let mut run = 0;
    let clean = clean_prefix_len(bytes);
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape = JSON_ESCAPE[usize::from(b)];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        if escape == ESCAPE_UNICODE {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_DIGITS[usize::from(b >> 4)],
                HEX_DIGITS[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Bytes per word of [`clean_prefix_len`].
const WORD: usize = 8;
/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([1; WORD]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = ONES * 0x80;

/// True if a byte of `w` is below 0x20 (`hasless(w, 0x20)`: exact for "any
/// byte", bytes >= 0x80 never count).
fn word_has_control(w: u64) -> bool {
    w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0
}

/// True if a byte of `w` is `b` (`haszero(w ^ b…b)`: exact for "any byte").
fn word_has_byte(w: u64, b: u8) -> bool {
    let x = w ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// How many leading bytes of `bytes` are whole words none of whose bytes JSON
/// escapes (a control byte, `"` or a backslash); a multiple of [`WORD`].
fn clean_prefix_len(bytes: &[u8]) -> usize {
    let mut clean = 0;
    for chunk in bytes.chunks_exact(WORD) {
        let mut word = [0u8; WORD];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        if word_has_control(w) || word_has_byte(w, b'"') || word_has_byte(w, b'\\') {
            break;
        }
        clean += WORD;
    }
    clean
}

/// Appends `n` in decimal, as serde_json writes integers.
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    // u32::MAX has 10 digits.
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Sets `ev.prev_hash`, appends the event's full line (canonical body, hash
/// field, newline) to `buf` and returns the line's hash.
pub(super) fn render(ev: &mut Event, prev_hash: &str, buf: &mut Vec<u8>) -> String {
    // Refilled rather than replaced: the event keeps its string's capacity (a
    // request's later lines reuse the same event).
    ev.prev_hash.clear();
    ev.prev_hash.push_str(prev_hash);
    let start = buf.len();
    ev.write_canonical_body(buf);
    let hash = chain_hash_bytes(prev_hash, &buf[start..]);
    buf.extend_from_slice(HASH_FIELD_OPEN.as_bytes());
    buf.extend_from_slice(hash.as_bytes());
    buf.extend_from_slice(HASH_FIELD_CLOSE.as_bytes());
    buf.push(b'\n');
    hash
}

pub fn chain_hash(prev_hash: &str, body: &str) -> String {
    chain_hash_bytes(prev_hash, body.as_bytes())
}

/// [`chain_hash`] of a body still in the writer's byte buffer.
fn chain_hash_bytes(prev_hash: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(body);
    hex_string(&h.finalize())
}

fn is_hash(s: &str) -> bool {
    s.len() == HASH_HEX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits a line (without its newline) into the hashed body and the hash.
pub(super) fn split_hash(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_suffix(HASH_FIELD_CLOSE)?;
    let cut = rest.len().checked_sub(HASH_HEX_LEN)?;
    let hash = rest.get(cut..)?;
    let body = rest.get(..cut)?.strip_suffix(HASH_FIELD_OPEN)?;
    is_hash(hash).then_some((body, hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventKind, Outcome};
    use crate::clock::{
        now_rfc3339, rfc3339_millis, RFC3339_MILLIS_FORMAT, RFC3339_MILLIS_TEMPLATE,
    };
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    /// Text that exercises every escaping rule: quotes, backslashes, all C0
    /// control bytes, DEL, `/`, and multi-byte UTF-8, mixed with plain runs.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let tricky = prop::sample::select(vec!['"', '\\', '/', '\u{7f}', 'é', '€', '😀', 'a']);
        let piece = prop_oneof![(0u8..0x80).prop_map(char::from), tricky, any::<char>(),];
        prop::collection::vec(piece, 0..24).prop_map(String::from_iter)
    }

    /// Any event, with each optional field present or absent at random.
    fn any_event() -> impl proptest::strategy::Strategy<Value = Event> {
        use proptest::prelude::*;
        // One per `Option<String>` field of `Event`.
        const OPTIONAL_STRINGS: usize = 15;
        (
            prop::collection::vec(json_text(), 3),
            prop::collection::vec(proptest::option::of(json_text()), OPTIONAL_STRINGS),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u16>()),
            prop::sample::select(EventKind::ALL.to_vec()),
            prop::sample::select(vec![Outcome::Allowed, Outcome::Denied, Outcome::Error]),
        )
            .prop_map(|(always, optional, version, status, kind, outcome)| {
                let mut always = always.into_iter();
                let mut optional = optional.into_iter();
                let mut text = || always.next().unwrap();
                let (ts, prev_hash, hash) = (text(), text(), text());
                let (event, outcome) = (kind, outcome);
                let mut opt = || optional.next().unwrap();
                Event {
                    ts,
                    event,
                    request_id: opt(),
                    agent: opt(),
                    owner: opt(),
                    builder: opt(),
                    chain: opt(),
                    run_id: opt(),
                    connection_id: opt(),
                    provider: opt(),
                    host: opt(),
                    method: opt(),
                    path: opt(),
                    secret: opt(),
                    scope: opt(),
                    tier: opt(),
                    version,
                    outcome,
                    reason: opt(),
                    status,
                    prev_hash,
                    hash,
                }
            })
    }

    proptest::proptest! {
        /// The line on disk must not depend on which writer produced it: the
        /// hand-written serializer is serde_json's output, byte for byte.
        #[test]
        fn hand_written_json_is_serde_json(ev in any_event()) {
            let mut body = Vec::new();
            ev.write_canonical_body(&mut body);
            body.push(b'}');
            proptest::prop_assert_eq!(
                String::from_utf8(body).unwrap(),
                serde_json::to_string(&ev).unwrap()
            );
        }

        /// Any instant from year 0 to 9999 formats as `time` formats it.
        #[test]
        fn hand_written_timestamp_is_time_formatting(
            secs in -62_167_219_200i64..=253_402_300_799,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = OffsetDateTime::from_unix_timestamp(secs)
                .unwrap()
                .replace_nanosecond(nanos)
                .unwrap();
            let by_time = t.format(RFC3339_MILLIS_FORMAT).unwrap();
            proptest::prop_assert_eq!(rfc3339_millis(t), by_time);
        }
    }

    #[test]
    fn hand_written_json_escapes_every_control_byte_like_serde() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let mut e = Event::new(EventKind::Deny, Outcome::Allowed);
        e.reason = Some(all_ascii);
        e.status = Some(u16::MAX);
        e.version = Some(u32::MAX);
        let mut body = Vec::new();
        e.write_canonical_body(&mut body);
        body.push(b'}');
        assert_eq!(body, serde_json::to_vec(&e).unwrap());
    }

    /// The word-at-a-time scan finds a byte to escape at any position of any
    /// word, next to any neighbour (high bytes of UTF-8 included).
    #[test]
    fn an_escape_at_any_position_is_written_like_serde() {
        for special in ['"', '\\', '\u{0}', '\u{1f}', '\n'] {
            for neighbour in ['a', '\u{7f}', 'é', ' ', '!', '#', '[', ']'] {
                for at in 0..24 {
                    let mut text: String = std::iter::repeat_n(neighbour, 24).collect();
                    let cut = text.char_indices().nth(at).unwrap().0;
                    text.insert(cut, special);
                    let mut out = Vec::new();
                    push_json_str(&mut out, &text);
                    assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn hand_written_timestamp_matches_time_formatting() {
        let instants = [
            time::macros::datetime!(2024-02-29 23:59:59.999 UTC), // leap day
            time::macros::datetime!(2023-12-31 23:59:59.999_999_999 UTC), // end of year
            time::macros::datetime!(2024-01-01 00:00:00 UTC),
            time::macros::datetime!(1970-01-01 00:00:00.001 UTC),
            time::macros::datetime!(2000-02-29 12:34:56.078 UTC), // leap century
            time::macros::datetime!(0001-01-01 00:00:00 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.999 UTC),
            time::macros::datetime!(2024-06-30 10:00:00.5 +02:00), // fields as given
        ];
        for t in instants {
            assert_eq!(
                rfc3339_millis(t),
                t.format(RFC3339_MILLIS_FORMAT).unwrap(),
                "{t}"
            );
        }
        // The cases `time` still formats.
        for t in [
            time::macros::datetime!(-0001-12-31 23:00:00 UTC),
            time::macros::datetime!(-9999-01-01 00:00:00 UTC),
        ] {
            assert_eq!(
                rfc3339_millis(t),
                t.format(RFC3339_MILLIS_FORMAT).unwrap(),
                "{t}"
            );
        }
        // Truncated, not rounded, like `time`.
        assert_eq!(
            rfc3339_millis(time::macros::datetime!(2023-12-31 23:59:59.999_999_999 UTC)),
            "2023-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(time::macros::datetime!(2024-02-29 01:02:03.04 UTC)),
            "2024-02-29T01:02:03.040Z"
        );
        let now = now_rfc3339();
        assert_eq!(now.len(), RFC3339_MILLIS_TEMPLATE.len());
        assert!(OffsetDateTime::parse(&now, &Rfc3339).is_ok(), "{now}");
    }

    #[test]
    fn hex_string_is_lower_case_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_string(&bytes), hex::encode(&bytes));
        assert_eq!(hex_string(&[]), "");
    }
}
