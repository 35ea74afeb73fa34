//! The typed audit event: what a line records ([`EventKind`]), how the decision
//! ended ([`Outcome`]), and the [`Event`] itself, whose field order is the order
//! on disk. Built where a decision is made, written once by the writer.

use serde::{Deserialize, Serialize};

/// What a line records. The text on disk is [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum EventKind {
    /// A credential was written into a request and sent upstream.
    #[default]
    Inject,
    /// A blind tunnel (egress allow list) was opened.
    Tunnel,
    /// A request or CONNECT was refused by policy.
    Deny,
    /// Proxy authentication failed (407).
    AuthFail,
    /// A request was injected, then failed upstream.
    UpstreamError,
    /// An upstream echoed an in-scope secret and it was redacted.
    Redact,
    SecretSet,
    SecretRotate,
    SecretRm,
    SecretClone,
    AgentAdd,
    AgentRm,
    SessionCreate,
    /// An admin API or console request without a valid token.
    AdminAuthFail,
    /// An admin token without the permission a request needs.
    AdminForbidden,
    VaultRotateMasterKey,
    /// The jail refused a packet or connection that was not for keyward.
    JailBlock,
    /// A secret's description changed (no new value, same version).
    SecretDescribe,
}

impl EventKind {
    /// Every kind, for parsing and for docs tests.
    pub const ALL: [EventKind; 18] = [
        EventKind::Inject,
        EventKind::Tunnel,
        EventKind::Deny,
        EventKind::AuthFail,
        EventKind::UpstreamError,
        EventKind::Redact,
        EventKind::SecretSet,
        EventKind::SecretRotate,
        EventKind::SecretRm,
        EventKind::SecretClone,
        EventKind::AgentAdd,
        EventKind::AgentRm,
        EventKind::SessionCreate,
        EventKind::AdminAuthFail,
        EventKind::AdminForbidden,
        EventKind::VaultRotateMasterKey,
        EventKind::JailBlock,
        EventKind::SecretDescribe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Inject => "inject",
            EventKind::Tunnel => "tunnel",
            EventKind::Deny => "deny",
            EventKind::AuthFail => "auth_fail",
            EventKind::UpstreamError => "upstream_error",
            EventKind::Redact => "redact",
            EventKind::SecretSet => "secret_set",
            EventKind::SecretRotate => "secret_rotate",
            EventKind::SecretRm => "secret_rm",
            EventKind::SecretClone => "secret_clone",
            EventKind::AgentAdd => "agent_add",
            EventKind::AgentRm => "agent_rm",
            EventKind::SessionCreate => "session_create",
            EventKind::AdminAuthFail => "admin_auth_fail",
            EventKind::AdminForbidden => "admin_forbidden",
            EventKind::VaultRotateMasterKey => "vault_rotate_master_key",
            EventKind::JailBlock => "jail_block",
            EventKind::SecretDescribe => "secret_describe",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A change to the vault's secrets or agents (CEF severity, console).
    pub fn is_admin_change(self) -> bool {
        matches!(
            self,
            EventKind::SecretSet
                | EventKind::SecretRotate
                | EventKind::SecretRm
                | EventKind::SecretClone
                | EventKind::SecretDescribe
                | EventKind::AgentAdd
                | EventKind::AgentRm
        )
    }
}

/// How a decision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Outcome {
    #[default]
    Allowed,
    Denied,
    /// keyward or the upstream failed (5xx).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Allowed, Outcome::Denied, Outcome::Error]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// Both enums are written as their text and read back from it.
macro_rules! serde_as_str {
    ($t:ty, $what:literal) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                <$t>::parse(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(concat!("unknown ", $what, " {:?}"), text))
                })
            }
        }
    };
}
serde_as_str!(EventKind, "event");
impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
serde_as_str!(Outcome, "outcome");

/// One decision. Field order here is the order on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub ts: String,
    pub event: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path only: the query string is never logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Set by the writer.
    #[serde(default)]
    pub prev_hash: String,
    /// Set by the writer; never serialized as part of the canonical line.
    #[serde(default, skip_serializing)]
    pub hash: String,
}

impl Event {
    pub fn new(event: EventKind, outcome: Outcome) -> Event {
        Event {
            event,
            outcome,
            ..Event::default()
        }
    }
}
