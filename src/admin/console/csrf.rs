//! The console's CSRF check: every POST of a signed-in session carries the
//! session's token in the hidden field `csrf`, compared in constant time.

use subtle::ConstantTimeEq;

/// Name of the hidden form field.
pub const FIELD: &str = "csrf";

/// Whether `presented` is the session's CSRF token.
pub fn valid(expected: &str, presented: Option<&str>) -> bool {
    let Some(p) = presented else {
        return false;
    };
    // SECURITY: constant-time compare, so response timing does not reveal how
    // much of a guessed token was right; lengths differ → false.
    bool::from(expected.as_bytes().ct_eq(p.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_exact_token_passes() {
        assert!(super::valid("abc", Some("abc")));
        assert!(!super::valid("abc", Some("abd")));
        assert!(!super::valid("abc", Some("ab")));
        assert!(!super::valid("abc", None));
    }
}
