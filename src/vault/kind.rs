//! Secret kinds: what a sealed value is (`api_key` | `oauth2` | `hmac` | `aws`), the
//! JSON shape of multi-field kinds, and which of their fields may be shown.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Fields of multi-field kinds that are not secret (shown by `secret show`).
pub const PUBLIC_OAUTH2_FIELDS: &[&str] = &["client_id", "token_url", "scope"];
pub const PUBLIC_AWS_FIELDS: &[&str] = &["access_key_id"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    #[default]
    ApiKey,
    Oauth2,
    Hmac,
    Aws,
}

impl SecretKind {
    pub const ALL: [SecretKind; 4] = [
        SecretKind::ApiKey,
        SecretKind::Oauth2,
        SecretKind::Hmac,
        SecretKind::Aws,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::ApiKey => "api_key",
            SecretKind::Oauth2 => "oauth2",
            SecretKind::Hmac => "hmac",
            SecretKind::Aws => "aws",
        }
    }

    pub fn parse(s: &str) -> Option<SecretKind> {
        SecretKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_api_key(&self) -> bool {
        *self == SecretKind::ApiKey
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `oauth2` value.
#[derive(Debug)]
pub struct OAuth2Value {
    pub client_id: String,
    pub client_secret: Secret,
    pub token_url: String,
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
}

/// An `aws` value.
#[derive(Debug)]
pub struct AwsValue {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuth2Raw {
    client_id: String,
    client_secret: String,
    token_url: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AwsRaw {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
}

fn secret_of(s: String) -> Secret {
    // Moves the buffer; no copy is left behind.
    Secret::new(s.into_bytes())
}

impl OAuth2Value {
    /// Parses and checks the JSON value. Errors never quote the input.
    pub fn parse(value: &Secret) -> Result<OAuth2Value, String> {
        let raw: OAuth2Raw = serde_json::from_slice(value.expose()).map_err(|_| {
            "an oauth2 value is JSON {\"client_id\",\"client_secret\",\"token_url\",\"refresh_token\"?,\"scope\"?}".to_string()
        })?;
        // SECURITY: the client secret and refresh token are sent to token_url; only
        // ever over verified TLS.
        if !raw.token_url.starts_with("https://") || raw.token_url.parse::<http::Uri>().is_err() {
            return Err("oauth2 token_url must be an https:// URL".into());
        }
        if raw.client_id.is_empty() || raw.client_secret.is_empty() {
            return Err("oauth2 client_id and client_secret must not be empty".into());
        }
        Ok(OAuth2Value {
            client_id: raw.client_id,
            client_secret: secret_of(raw.client_secret),
            token_url: raw.token_url,
            refresh_token: raw.refresh_token.filter(|s| !s.is_empty()).map(secret_of),
            scope: raw.scope,
        })
    }

    /// The JSON value with `refresh_token` replaced (rotation write-back).
    pub fn with_refresh_token(&self, token: &Secret) -> Result<Secret, String> {
        let refresh = std::str::from_utf8(token.expose())
            .map_err(|_| "refresh token is not UTF-8".to_string())?;
        let client_secret = std::str::from_utf8(self.client_secret.expose())
            .map_err(|_| "client secret is not UTF-8".to_string())?;
        let json = zeroize::Zeroizing::new(
            serde_json::json!({
                "client_id": self.client_id,
                "client_secret": client_secret,
                "token_url": self.token_url,
                "refresh_token": refresh,
                "scope": self.scope,
            })
            .to_string(),
        );
        Ok(Secret::from_str(&json))
    }
}

impl AwsValue {
    pub fn parse(value: &Secret) -> Result<AwsValue, String> {
        let raw: AwsRaw = serde_json::from_slice(value.expose()).map_err(|_| {
            "an aws value is JSON {\"access_key_id\",\"secret_access_key\",\"session_token\"?}"
                .to_string()
        })?;
        if raw.access_key_id.is_empty()
            || raw.secret_access_key.is_empty()
            || !raw.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(
                "aws access_key_id (alphanumeric) and secret_access_key must be set".into(),
            );
        }
        Ok(AwsValue {
            access_key_id: raw.access_key_id,
            secret_access_key: secret_of(raw.secret_access_key),
            session_token: raw.session_token.filter(|s| !s.is_empty()).map(secret_of),
        })
    }
}

/// Checks `value` against `kind`; returns its public fields and its hint (of the
/// part that is secret).
pub fn describe(
    kind: SecretKind,
    value: &Secret,
) -> Result<(BTreeMap<String, String>, String), String> {
    let mut public = BTreeMap::new();
    let hint = match kind {
        SecretKind::ApiKey | SecretKind::Hmac => value.hint(),
        SecretKind::Oauth2 => {
            let v = OAuth2Value::parse(value)?;
            public.insert("client_id".into(), v.client_id.clone());
            public.insert("token_url".into(), v.token_url.clone());
            if let Some(s) = &v.scope {
                public.insert("scope".into(), s.clone());
            }
            public.insert(
                "has_refresh_token".into(),
                if v.refresh_token.is_some() {
                    "set"
                } else {
                    "none"
                }
                .into(),
            );
            v.client_secret.hint()
        }
        SecretKind::Aws => {
            let v = AwsValue::parse(value)?;
            public.insert("access_key_id".into(), v.access_key_id.clone());
            public.insert(
                "has_session_token".into(),
                if v.session_token.is_some() {
                    "set"
                } else {
                    "none"
                }
                .into(),
            );
            // SECURITY: the hint of an AWS record is of its (public) access key id:
            // no part of the secret access key is ever shown (docs/credentials.md).
            Secret::from_str(&v.access_key_id).hint()
        }
    };
    Ok((public, hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_hint_is_of_the_access_key_id_never_the_secret_key() {
        let v = Secret::from_str(
            r#"{"access_key_id":"AKIDEXAMPLE1234","secret_access_key":"wJalrXUtnFEMIK7MDENGbPxRfiCYzzzz"}"#,
        );
        let (public, hint) = describe(SecretKind::Aws, &v).unwrap();
        assert_eq!(hint, "AKID…1234");
        assert!(!format!("{public:?} {hint}").contains("wJal"));
        assert!(!hint.contains("zzzz"));
    }

    #[test]
    fn oauth2_public_fields_exclude_secrets() {
        let v = Secret::from_str(
            r#"{"client_id":"cid","client_secret":"cs-very-secret-1","token_url":"https://auth.example/token","refresh_token":"rt-very-secret-2"}"#,
        );
        let (public, hint) = describe(SecretKind::Oauth2, &v).unwrap();
        let shown = format!("{public:?} {hint}");
        assert!(shown.contains("cid") && shown.contains("https://auth.example/token"));
        assert!(!shown.contains("cs-very-secret-1") && !shown.contains("rt-very-secret-2"));
        assert_eq!(public["has_refresh_token"], "set");
    }

    #[test]
    fn bad_values_are_refused_without_echo() {
        for (kind, v) in [
            (SecretKind::Oauth2, "not json sekrit"),
            (
                SecretKind::Oauth2,
                r#"{"client_id":"a","client_secret":"sekrit","token_url":"http://x/t"}"#,
            ),
            (
                SecretKind::Aws,
                r#"{"access_key_id":"AK","secret":"sekrit"}"#,
            ),
        ] {
            let e = describe(kind, &Secret::from_str(v)).unwrap_err();
            assert!(!e.contains("sekrit"), "{e}");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in SecretKind::ALL {
            assert_eq!(SecretKind::parse(k.as_str()), Some(k));
        }
    }
}
