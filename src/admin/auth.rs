//! Who may call the admin API: admin-token permissions, the bearer token, the
//! constant-time token lookup, and the one authorization check whose refusals
//! (401/403) are audited.

use super::caller::Caller;
use crate::audit::{EventKind, Outcome};
use crate::config::AdminToken;
use crate::proxy::error::{Code, Deny};
use crate::proxy::refuse;
use crate::proxy::state::State;
use http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an admin token may do. Permissions are exact: `secrets:manage` does not
/// imply `secrets:read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    SecretsRead,
    SecretsManage,
    AgentsManage,
    SessionsCreate,
    AuditRead,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::SecretsRead,
        Permission::SecretsManage,
        Permission::AgentsManage,
        Permission::SessionsCreate,
        Permission::AuditRead,
    ];

    /// The string used in `[admin].tokens[].permissions`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::SecretsRead => "secrets:read",
            Permission::SecretsManage => "secrets:manage",
            Permission::AgentsManage => "agents:manage",
            Permission::SessionsCreate => "sessions:create",
            Permission::AuditRead => "audit:read",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The `Authorization: Bearer …` token, if well-formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The configured token whose SHA-256 matches `presented`.
pub fn find_token<'a>(tokens: &'a [AdminToken], presented: &str) -> Option<&'a AdminToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for t in tokens {
        let mut want = [0u8; 32];
        if hex::decode_to_slice(t.sha256.trim(), &mut want).is_err() {
            continue;
        }
        // SECURITY: digests are compared in constant time and every configured token
        // is checked (no early exit), so timing does not reveal how close a guess was.
        if bool::from(digest.ct_eq(&want)) {
            found = Some(t);
        }
    }
    found
}

/// The configured admin token `presented` is, or the audited 401 `unauthorized`
/// (recorded through the one refusal path; the caller only renders it). The
/// console's sign-in uses this too, so a failed sign-in is audited as an admin 401.
pub fn authenticate(
    state: &State,
    presented: Option<&str>,
    caller: &Caller,
) -> Result<AdminToken, Deny> {
    // SECURITY: tokens are read from the live config on every request, so removing
    // one from the config (and reloading) revokes it at once.
    let runtime = state.runtime();
    let tokens = &runtime.config.admin.tokens;
    // SECURITY: only the SHA-256 of admin tokens is configured; the presented token is
    // hashed and compared, never logged or echoed.
    let Some(token) = presented.and_then(|t| find_token(tokens, t)) else {
        let reason = if presented.is_some() {
            "unknown admin token"
        } else {
            "missing bearer token"
        };
        let deny = Deny::new(
            Code::Unauthorized,
            "send Authorization: Bearer <admin token>",
        );
        let mut ev = caller.event(
            EventKind::AdminAuthFail,
            Outcome::Denied,
            StatusCode::UNAUTHORIZED,
        );
        ev.reason = Some(reason.to_string());
        refuse::record(state, &deny, ev);
        return Err(deny);
    };
    Ok(token.clone())
}

/// Returns the name of the admin token `presented`, if it holds `perm`. A refusal
/// (401 `unauthorized`, 403 `forbidden`) is already audited and counted through
/// the one refusal path; the caller only renders it.
pub fn authorize(
    state: &State,
    presented: Option<&str>,
    perm: Permission,
    caller: &Caller,
) -> Result<String, Deny> {
    let token = authenticate(state, presented, caller)?;
    // SECURITY: permissions are exact strings from the config; a token without the
    // route's permission is refused before any handler (or the vault) runs.
    if !token.permissions.iter().any(|p| p == perm.as_str()) {
        let deny = Deny::new(
            Code::Forbidden,
            format!("admin token {:?} lacks {}", token.name, perm.as_str()),
        );
        let mut ev = caller.event(
            EventKind::AdminForbidden,
            Outcome::Denied,
            StatusCode::FORBIDDEN,
        );
        ev.reason = Some(format!("admin:{} lacks {}", token.name, perm.as_str()));
        refuse::record(state, &deny, ev);
        return Err(deny);
    }
    Ok(token.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_lookup_compares_digests() {
        let tokens = vec![AdminToken {
            name: "ops".into(),
            sha256: hex::encode(Sha256::digest(b"tok")),
            permissions: vec![],
        }];
        assert_eq!(
            find_token(&tokens, "tok").map(|t| t.name.as_str()),
            Some("ops")
        );
        assert!(find_token(&tokens, "tok2").is_none());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  tok ".parse().unwrap());
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "Basic tok".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn permissions_parse_back() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("secrets:*"), None);
    }
}
