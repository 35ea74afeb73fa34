//! `[store]` (SPEC §10): where a replica's state lives, the vault file (default)
//! or PostgreSQL. Parsed and checked here; `vault::open` acts on it. The database
//! URL may carry a password: [`DbUrl`]'s `Debug` and every message show it as `***`.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable naming the database URL when `store.url` is absent.
pub const ENV_DATABASE_URL: &str = "KEYWARD_DATABASE_URL";
/// libpq's password variable, used when the URL carries no password.
pub const ENV_PGPASSWORD: &str = "PGPASSWORD";
/// Longest schema name PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_SCHEMA_LEN: usize = 63;
/// Default `stale_after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    File,
    Postgres,
}

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DbTls {
    /// Plain TCP (a loopback or an otherwise protected network only).
    #[serde(rename = "disable")]
    Disable,
    /// TLS, server certificate not checked (libpq's `require`): stops passive
    /// eavesdropping, not an active man in the middle.
    #[serde(rename = "require")]
    Require,
    /// TLS, certificate chain (`ca`, else the system roots) and host name checked.
    #[default]
    #[serde(rename = "verify-full")]
    VerifyFull,
}

/// A `postgres://` URL that may carry a password; shown redacted everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    pub fn new(url: impl Into<String>) -> DbUrl {
        DbUrl(url.into())
    }

    /// The URL itself (for the driver only: never format it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***` (safe to print).
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "<not a postgres:// URL>".into();
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                let pass = if userinfo.contains(':') { ":***" } else { "" };
                // SECURITY: a password in the query string (`?password=`) is dropped too.
                let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
                format!("{scheme}://{user}{pass}@{host}{tail}")
            }
            None => {
                let tail = tail.split_once('?').map_or(tail, |(t, _)| t);
                format!("{scheme}://{authority}{tail}")
            }
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", self.redacted())
    }
}

impl<'de> Deserialize<'de> for DbUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            // The value is not echoed: it may be a password pasted in the wrong place.
            return Err(serde::de::Error::custom(
                "store.url: must be a postgres://user@host:port/dbname URL",
            ));
        }
        Ok(DbUrl(s))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: Backend,
    /// Else `$KEYWARD_DATABASE_URL`.
    pub url: Option<DbUrl>,
    /// Read when neither the URL nor `$PGPASSWORD` has a password.
    pub password_file: Option<PathBuf>,
    /// The PostgreSQL schema keyward owns (created by `keyward store init`).
    pub schema: String,
    pub tls: DbTls,
    /// PEM roots for `tls = "verify-full"` (default: the system roots).
    pub ca: Option<PathBuf>,
    /// How long requests go on from the last snapshot while the DB is unreachable
    /// (`"30s"`, humantime syntax).
    #[serde(deserialize_with = "duration")]
    pub stale_after: Duration,
    /// Audit lines written while the DB is unreachable, drained in order after.
    pub spool: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::File,
            url: None,
            password_file: None,
            schema: "keyward".into(),
            tls: DbTls::VerifyFull,
            ca: None,
            stale_after: DEFAULT_STALE_AFTER,
            spool: PathBuf::from("data/audit-spool.jsonl"),
        }
    }
}

/// A duration written as `"30s"` or `"2m"` (as `Dur` in `schema.rs`, which this
/// file does not import: schema.rs imports it).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
}

/// `^[a-z_][a-z0-9_]*$`, at most 63 bytes: a schema name that needs no quoting.
pub fn valid_schema(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= MAX_SCHEMA_LEN
}

impl StoreConfig {
    /// Checks what the file alone can tell: `(key, message)` of the first problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        // SECURITY: the schema name is spliced into SQL (identifiers cannot be bound
        // parameters); only plain lower-case identifiers pass.
        if !valid_schema(&self.schema) {
            return Err((
                "schema",
                format!(
                    "store.schema: {:?} must match ^[a-z_][a-z0-9_]*$ (at most {MAX_SCHEMA_LEN} characters)",
                    self.schema
                ),
            ));
        }
        if self.stale_after.is_zero() {
            return Err((
                "stale_after",
                "store.stale_after: must be more than 0s".into(),
            ));
        }
        if self.ca.is_some() && self.tls != DbTls::VerifyFull {
            return Err((
                "ca",
                "store.ca: only used with tls = \"verify-full\"; remove it or set tls".into(),
            ));
        }
        if self.spool.as_os_str().is_empty() {
            return Err(("spool", "store.spool: must be a file path".into()));
        }
        Ok(())
    }

    /// `store.url`, else `$KEYWARD_DATABASE_URL`.
    pub fn resolved_url(&self) -> Result<DbUrl, String> {
        if let Some(u) = &self.url {
            return Ok(u.clone());
        }
        match std::env::var(ENV_DATABASE_URL) {
            Ok(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => Ok(DbUrl(u)),
            Ok(_) => Err(format!(
                "${ENV_DATABASE_URL} must be a postgres://user@host:port/dbname URL"
            )),
            Err(_) => Err(format!(
                "store.backend = \"postgres\" needs store.url or ${ENV_DATABASE_URL}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let u = DbUrl::new("postgres://kw:hunter2secret@db.internal:5432/keyward?sslmode=x");
        assert_eq!(u.redacted(), "postgres://kw:***@db.internal:5432/keyward");
        assert!(!format!("{u:?}").contains("hunter2"));
        let q = DbUrl::new("postgres://kw@db/k?password=hunter2secret");
        assert!(!q.redacted().contains("hunter2"));
        assert_eq!(DbUrl::new("postgres://db/k").redacted(), "postgres://db/k");
        let at = DbUrl::new("postgres://kw:p@ss@w0rd@db/k");
        assert!(!at.redacted().contains("w0rd"), "{}", at.redacted());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("keyward"));
        assert!(valid_schema("kw_2"));
        for bad in ["", "Keyward", "1kw", "kw;drop", "kw\"x", &"a".repeat(64)] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_pass_and_bad_values_name_the_key() {
        assert!(StoreConfig::default().check().is_ok());
        let c = StoreConfig {
            ca: Some("ca.pem".into()),
            tls: DbTls::Disable,
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "ca");
        let c = StoreConfig {
            stale_after: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().0, "stale_after");
    }
}
