//! `keyward secret …` (owned by the vault work).
