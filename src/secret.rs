//! The one type a credential value lives in while keyward holds it in memory.
//!
//! `Secret` has no `Display`, no `Serialize`, and a redacted `Debug`; its bytes are
//! zeroized on drop. The only ways out are [`Secret::expose`] (for building a
//! sensitive header value or sealing it) and [`Secret::hint`].

use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Number of characters shown at each end of a hint (`sk-p…9xQz`).
pub const HINT_CHARS: usize = 4;
/// Values shorter than this get a fully masked hint: showing 8 characters of a
/// 10-character value would give most of it away.
pub const HINT_MIN_LEN: usize = 12;

/// Clones share one buffer (the request path clones a credential for every
/// request); it is zeroized when the last clone is dropped.
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<Vec<u8>>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Arc::new(Zeroizing::new(bytes)))
    }

    pub fn from_str(s: &str) -> Self {
        Secret::new(s.as_bytes().to_vec())
    }

    /// The raw value. Callers must not log, format or persist it unsealed.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `first4…last4`, or `…` alone for short values.
    pub fn hint(&self) -> String {
        // Walks the value without copying it (no unzeroized buffer of the secret).
        let text = String::from_utf8_lossy(&self.0);
        let count = text.chars().count();
        if count < HINT_MIN_LEN {
            return "…".to_string();
        }
        let head: String = text.chars().take(HINT_CHARS).collect();
        let tail: String = text.chars().skip(count - HINT_CHARS).collect();
        if let std::borrow::Cow::Owned(mut copy) = text {
            zeroize::Zeroize::zeroize(&mut copy);
        }
        format!("{head}…{tail}")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        self.0.len() == other.0.len() && bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::from_str("sk-proj-canary-1234567890");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn hint_is_first_and_last_four() {
        assert_eq!(Secret::from_str("sk-proj-abcdefgh9xQz").hint(), "sk-p…9xQz");
        assert_eq!(Secret::from_str("short").hint(), "…");
    }
}
