//! Input checks for everything stored: scopes, secret names, values, host lists,
//! descriptions, rotation periods and agent records. Pure; messages never carry a value.

use super::error::VaultError;
use super::format::AgentRecord;
use crate::config::{valid_agent_id, valid_secret_name};
use crate::secret::Secret;
use std::time::Duration;

pub const MAX_VALUE_BYTES: usize = 64 << 10;
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
pub const MAX_HOSTS: usize = 64;
pub const MAX_HOST_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_SCOPE_LEN: usize = 160;
pub const MAX_RECORDS: usize = 100_000;
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(60);
pub const MAX_ROTATE_EVERY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `platform`, or `kind:name` with kind in agent|chain|owner|builder and name made of
/// letters, digits, `-`, `_`, `.`.
pub fn valid_scope(scope: &str) -> bool {
    if scope == "platform" {
        return true;
    }
    if scope.len() > MAX_SCOPE_LEN {
        return false;
    }
    let Some((kind, name)) = scope.split_once(':') else {
        return false;
    };
    matches!(kind, "agent" | "chain" | "owner" | "builder")
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn check_scope(scope: &str) -> Result<(), VaultError> {
    // SECURITY: scopes select whose key an agent gets; a malformed one could alias
    // another tier (`owner:acme:x`) or smuggle separators into audit lines.
    if valid_scope(scope) {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid scope {scope:?}: use `platform` or `owner:NAME`, `builder:NAME`, `chain:NAME`, `agent:NAME`"
        )))
    }
}

pub(super) fn check_name(name: &str) -> Result<(), VaultError> {
    if valid_secret_name(name) && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid secret name {name:?}: must match ^[A-Z_][A-Z0-9_]*$"
        )))
    }
}

/// Refuses values that cannot be injected safely. The message never contains the value.
pub fn check_value(value: &Secret) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::Invalid("secret value is empty".into()));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(VaultError::Invalid(format!(
            "secret value is longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    // SECURITY: values end up in header lines, URLs and paths; CR/LF would let a stored
    // value split a header or smuggle a second one, NUL truncates in C clients.
    if value
        .expose()
        .iter()
        .any(|&b| matches!(b, b'\r' | b'\n' | 0))
    {
        return Err(VaultError::Invalid(
            "secret value contains CR, LF or NUL".into(),
        ));
    }
    Ok(())
}

/// Lowercases, validates, sorts and dedups a host list (`api.example.com`, `*.example.com`).
pub fn normalize_hosts(hosts: &[String]) -> Result<Vec<String>, VaultError> {
    if hosts.len() > MAX_HOSTS {
        return Err(VaultError::Invalid(format!(
            "at most {MAX_HOSTS} hosts per secret"
        )));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = h.strip_prefix("*.").unwrap_or(&h);
        // SECURITY: the host list restricts where a value may be sent; anything that is
        // not a plain DNS name (ports, paths, wildcards in the middle) is refused rather
        // than matched loosely.
        let ok = !bare.is_empty()
            && h.len() <= MAX_HOST_LEN
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= MAX_DNS_LABEL_LEN
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(VaultError::Invalid(format!(
                "invalid host {h:?}: expected a DNS name like api.example.com"
            )));
        }
        out.push(h);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub(super) fn check_description(d: &Option<String>) -> Result<(), VaultError> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION_BYTES => Err(VaultError::Invalid(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        ))),
        Some(d) if d.chars().any(char::is_control) => Err(VaultError::Invalid(
            "description contains control characters".into(),
        )),
        _ => Ok(()),
    }
}

pub(super) fn rotate_secs(d: Option<Duration>) -> Result<Option<u64>, VaultError> {
    match d {
        None => Ok(None),
        Some(d) if d < MIN_ROTATE_EVERY || d > MAX_ROTATE_EVERY => Err(VaultError::Invalid(
            "rotation period must be between 1 minute and 100 years (e.g. 90d)".into(),
        )),
        Some(d) => Ok(Some(d.as_secs())),
    }
}

/// `90d`, `12h`, `30m` or `45s`: the shortest exact form.
pub fn format_period(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What every stored agent must satisfy.
pub(super) fn check_agent(agent: &AgentRecord) -> Result<(), VaultError> {
    if !valid_agent_id(&agent.id) {
        return Err(VaultError::Invalid(format!(
            "invalid agent id {:?}",
            agent.id
        )));
    }
    // SECURITY: only a digest is stored; refuse anything that looks like a raw token.
    if agent.token_sha256.len() != 64
        || !agent
            .token_sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(VaultError::Invalid(
            "token_sha256 must be 64 lowercase hex digits".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_formatting() {
        assert_eq!(format_period(90 * 86_400), "90d");
        assert_eq!(format_period(7_200), "2h");
        assert_eq!(format_period(120), "2m");
        assert_eq!(format_period(61), "61s");
    }
}
