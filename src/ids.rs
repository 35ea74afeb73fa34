//! Random identifiers and their text: request ids, agent tokens, hex. A leaf.

use base64::Engine;

/// Every agent token starts with this (`kwa_…`), so a misplaced one is recognisable.
pub const TOKEN_PREFIX: &str = "kwa_";
/// Random bytes in an agent or session token.
pub const TOKEN_BYTES: usize = 32;
/// Lower-case hex digits, indexed by nibble.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A fresh random agent token.
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// 8 random bytes as 16 hex digits.
pub fn request_id() -> String {
    hex_string(&rand::random::<[u8; 8]>())
}

/// Lower-case hex of a short byte string (hashes, ids). A table lookup per
/// nibble into pairs of the output: this runs for every audit line, and
/// `hex::encode_to_slice`'s index iterator cost about twice as much per byte.
pub fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&[
            HEX_DIGITS[usize::from(b >> 4)],
            HEX_DIGITS[usize::from(b & 0xf)],
        ]);
    }
    // Only hex digits were written, so this cannot fail.
    String::from_utf8(out).unwrap_or_default()
}
