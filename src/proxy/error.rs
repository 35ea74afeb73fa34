//! Every way keyward refuses a request, and the one place that turns a refusal
//! into a response: status, `x-keyward-error`, and the JSON body of SPEC §5.4.

use super::{full, Body};
use crate::{policy, resolve};
use http::{header, HeaderValue, Response, StatusCode};

/// Stable error codes. The string form (without the `keyward.` prefix) is the
/// `x-keyward-error` header value; `docs/errors.md` documents each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    ProxyAuthRequired,
    AgentRevoked,
    HostNotAllowed,
    PortNotAllowed,
    PrivateAddress,
    SelfLoop,
    SecretNotInScope,
    SecretNotFound,
    SecretHostNotBound,
    PlaceholderNotAllowed,
    RequestNotAllowed,
    HostMismatch,
    CleartextRefused,
    BadRequest,
    PayloadTooLarge,
    RateLimited,
    TooManyConnections,
    AuditUnavailable,
    VaultUnavailable,
    UpstreamTls,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamProtocol,
    UpstreamEncodingUnsupported,
    RedactionUnavailable,
    OauthRefreshFailed,
    Internal,
    /// Admin API: no or unknown admin token.
    Unauthorized,
    /// Admin API: the token lacks the route's permission.
    Forbidden,
    /// Admin API: no such endpoint, secret or agent.
    NotFound,
    /// Admin API: the endpoint exists, not with this method.
    MethodNotAllowed,
    /// Admin API: the agent id exists (create-only).
    Conflict,
    /// Admin API: the audit log goes to stdout and cannot be queried here.
    AuditNotQueryable,
    /// Console: a form without its session's CSRF token, or with a wrong one.
    CsrfInvalid,
    /// The PostgreSQL store has been unreachable longer than `[store] stale_after`.
    StoreStale,
}

impl Code {
    pub const ALL: [Code; 35] = [
        Code::ProxyAuthRequired,
        Code::AgentRevoked,
        Code::HostNotAllowed,
        Code::PortNotAllowed,
        Code::PrivateAddress,
        Code::SelfLoop,
        Code::SecretNotInScope,
        Code::SecretNotFound,
        Code::SecretHostNotBound,
        Code::PlaceholderNotAllowed,
        Code::RequestNotAllowed,
        Code::HostMismatch,
        Code::CleartextRefused,
        Code::BadRequest,
        Code::PayloadTooLarge,
        Code::RateLimited,
        Code::TooManyConnections,
        Code::AuditUnavailable,
        Code::VaultUnavailable,
        Code::UpstreamTls,
        Code::UpstreamUnreachable,
        Code::UpstreamTimeout,
        Code::UpstreamProtocol,
        Code::UpstreamEncodingUnsupported,
        Code::RedactionUnavailable,
        Code::OauthRefreshFailed,
        Code::Internal,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::Conflict,
        Code::AuditNotQueryable,
        Code::CsrfInvalid,
        Code::StoreStale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::ProxyAuthRequired => "proxy_auth_required",
            Code::AgentRevoked => "agent_revoked",
            Code::HostNotAllowed => "host_not_allowed",
            Code::PortNotAllowed => "port_not_allowed",
            Code::PrivateAddress => "private_address",
            Code::SelfLoop => "self_loop",
            Code::SecretNotInScope => "secret_not_in_scope",
            Code::SecretNotFound => "secret_not_found",
            Code::SecretHostNotBound => "secret_host_not_bound",
            Code::PlaceholderNotAllowed => "placeholder_not_allowed",
            Code::RequestNotAllowed => "request_not_allowed",
            Code::HostMismatch => "host_mismatch",
            Code::CleartextRefused => "cleartext_refused",
            Code::BadRequest => "bad_request",
            Code::PayloadTooLarge => "payload_too_large",
            Code::RateLimited => "rate_limited",
            Code::TooManyConnections => "too_many_connections",
            Code::AuditUnavailable => "audit_unavailable",
            Code::VaultUnavailable => "vault_unavailable",
            Code::UpstreamTls => "upstream_tls",
            Code::UpstreamUnreachable => "upstream_unreachable",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::UpstreamProtocol => "upstream_protocol",
            Code::UpstreamEncodingUnsupported => "upstream_encoding_unsupported",
            Code::RedactionUnavailable => "redaction_unavailable",
            Code::OauthRefreshFailed => "oauth_refresh_failed",
            Code::Internal => "internal",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::AuditNotQueryable => "audit_not_queryable",
            Code::CsrfInvalid => "csrf_invalid",
            Code::StoreStale => "store_stale",
        }
    }

    /// A failure of keyward or the upstream (audited `outcome: error`), as opposed
    /// to a refusal by policy or capacity (`denied`).
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            Code::AuditUnavailable
                | Code::VaultUnavailable
                | Code::StoreStale
                | Code::UpstreamTls
                | Code::UpstreamUnreachable
                | Code::UpstreamTimeout
                | Code::UpstreamProtocol
                | Code::UpstreamEncodingUnsupported
                | Code::RedactionUnavailable
                | Code::OauthRefreshFailed
                | Code::Internal
        )
    }

    /// The RFC 9209 error type of a refusal, for `Proxy-Status` (SPEC §5.4).
    pub fn proxy_status_type(self) -> &'static str {
        match self {
            Code::PrivateAddress => "destination_ip_prohibited",
            Code::SelfLoop => "proxy_loop_detected",
            Code::BadRequest | Code::PayloadTooLarge => "http_request_error",
            Code::RateLimited | Code::TooManyConnections => "connection_limit_reached",
            Code::AuditUnavailable
            | Code::VaultUnavailable
            | Code::StoreStale
            | Code::RedactionUnavailable
            | Code::OauthRefreshFailed
            | Code::Internal => "proxy_internal_error",
            Code::UpstreamTls => "tls_protocol_error",
            Code::UpstreamUnreachable => "destination_unavailable",
            Code::UpstreamTimeout => "connection_timeout",
            Code::UpstreamProtocol => "http_protocol_error",
            Code::UpstreamEncodingUnsupported => "http_response_content_coding",
            Code::Unauthorized
            | Code::Forbidden
            | Code::NotFound
            | Code::MethodNotAllowed
            | Code::Conflict
            | Code::AuditNotQueryable
            | Code::CsrfInvalid => "proxy_internal_response",
            Code::ProxyAuthRequired
            | Code::AgentRevoked
            | Code::HostNotAllowed
            | Code::PortNotAllowed
            | Code::SecretNotInScope
            | Code::SecretNotFound
            | Code::SecretHostNotBound
            | Code::PlaceholderNotAllowed
            | Code::RequestNotAllowed
            | Code::HostMismatch
            | Code::CleartextRefused => "http_request_denied",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::ProxyAuthRequired => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Code::HostMismatch => StatusCode::MISDIRECTED_REQUEST,
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::TooManyConnections
            | Code::AuditUnavailable
            | Code::VaultUnavailable
            | Code::StoreStale => StatusCode::SERVICE_UNAVAILABLE,
            Code::UpstreamTls
            | Code::UpstreamUnreachable
            | Code::UpstreamProtocol
            | Code::UpstreamEncodingUnsupported
            | Code::RedactionUnavailable
            | Code::OauthRefreshFailed => StatusCode::BAD_GATEWAY,
            Code::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict | Code::AuditNotQueryable => StatusCode::CONFLICT,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// A refusal: a code plus a message for the agent. Messages never contain a
/// secret value, a token or a query string.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Deny {
    pub code: Code,
    pub message: String,
    /// Seconds, for `rate_limited`.
    pub retry_after: Option<u64>,
}

impl Deny {
    pub fn new(code: Code, message: impl Into<String>) -> Deny {
        Deny {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `413 payload_too_large`: a request body over `limit_bytes` (the proxy's
    /// `proxy.max_body_bytes`, the admin API's own limit). One message everywhere.
    pub fn payload_too_large(limit_bytes: u64) -> Deny {
        Deny::new(
            Code::PayloadTooLarge,
            format!("request body is larger than {limit_bytes} bytes"),
        )
    }

    /// The response an agent sees. `agent`/`host` go into the body so that an
    /// agent reading it knows who was refused for what.
    pub fn response(&self, agent: Option<&str>, host: Option<&str>) -> Response<Body> {
        // SECURITY: a caller that failed to authenticate is not told which id it
        // was taken for: echoing it only for known ids would reveal which agent
        // ids exist, and the "id" may be a misplaced token.
        let agent = agent.filter(|_| self.code != Code::ProxyAuthRequired);
        let body = serde_json::json!({
            "error": {
                "type": format!("keyward.{}", self.code.as_str()),
                "message": self.message,
                "agent": agent,
                "host": host,
            }
        });
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.code.status();
        let h = resp.headers_mut();
        h.insert(
            "x-keyward-error",
            HeaderValue::from_static(self.code.as_str()),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.code == Code::ProxyAuthRequired {
            h.insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keyward\""),
            );
        }
        if self.code == Code::Unauthorized {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward-admin\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The `Proxy-Status` header name (RFC 9209).
pub const PROXY_STATUS: &str = "proxy-status";

impl Deny {
    /// `Proxy-Status: keyward; error=<RFC 9209 type>; details="<code>"`: what a
    /// client that shows only a CONNECT's status line (git, Go, curl) can still
    /// report (SPEC §5.4).
    pub fn proxy_status(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "keyward; error={}; details=\"{}\"",
            self.code.proxy_status_type(),
            self.code.as_str()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("keyward; error=proxy_internal_error"))
    }

    /// [`Deny::response`] for a refusal of the proxy request itself (a CONNECT,
    /// or a request in absolute form): with its `Proxy-Status`.
    pub fn add_proxy_status(&self, resp: &mut Response<Body>) {
        resp.headers_mut().insert(PROXY_STATUS, self.proxy_status());
    }
}

impl From<policy::Refusal> for Deny {
    fn from(r: policy::Refusal) -> Deny {
        let code = match r {
            policy::Refusal::BadHost => Code::BadRequest,
            policy::Refusal::HostNotAllowed => Code::HostNotAllowed,
            policy::Refusal::PortNotAllowed(_) => Code::PortNotAllowed,
            policy::Refusal::PrivateAddress(_) => Code::PrivateAddress,
        };
        Deny::new(code, r.to_string())
    }
}

impl From<crate::config::rules::NotAllowed> for Deny {
    fn from(r: crate::config::rules::NotAllowed) -> Deny {
        Deny::new(Code::RequestNotAllowed, r.to_string())
    }
}

impl From<resolve::Refusal> for Deny {
    fn from(r: resolve::Refusal) -> Deny {
        let code = match r {
            resolve::Refusal::NotInScope(_) => Code::SecretNotInScope,
            resolve::Refusal::NotFound(_) => Code::SecretNotFound,
            resolve::Refusal::HostNotBound(_) => Code::SecretHostNotBound,
            resolve::Refusal::Vault(_) => Code::VaultUnavailable,
        };
        let message = match &r {
            // The vault's own error text stays in keyward's log, not the agent's view.
            resolve::Refusal::Vault(_) => "the vault could not be read".to_string(),
            other => other.to_string(),
        };
        Deny::new(code, message)
    }
}

impl From<crate::redact::RedactError> for Deny {
    fn from(e: crate::redact::RedactError) -> Deny {
        use crate::redact::RedactError;
        let code = match e {
            RedactError::Unavailable => Code::RedactionUnavailable,
            RedactError::EncodingUnsupported(_) => Code::UpstreamEncodingUnsupported,
            RedactError::TimedOut => Code::UpstreamTimeout,
            RedactError::Truncated => Code::UpstreamProtocol,
        };
        Deny::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{}", c.as_str());
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn body_too_large_has_one_message() {
        let d = Deny::payload_too_large(1000);
        assert_eq!(d.code, Code::PayloadTooLarge);
        assert_eq!(d.message, "request body is larger than 1000 bytes");
        assert_eq!(d.response(None, None).status(), 413);
    }

    #[test]
    fn proxy_status_names_the_rfc9209_type_and_the_code() {
        let d = Deny::new(Code::HostNotAllowed, "x");
        assert_eq!(
            d.proxy_status(),
            "keyward; error=http_request_denied; details=\"host_not_allowed\""
        );
        for c in Code::ALL {
            let v = Deny::new(c, "x").proxy_status();
            let want = format!(
                "error={}; details=\"{}\"",
                c.proxy_status_type(),
                c.as_str()
            );
            assert!(v.to_str().unwrap().ends_with(&want), "{v:?}");
        }
    }

    #[test]
    fn auth_denial_carries_proxy_authenticate() {
        let r = Deny::new(Code::ProxyAuthRequired, "x").response(None, None);
        assert_eq!(r.status(), 407);
        assert_eq!(r.headers()["proxy-authenticate"], "Basic realm=\"keyward\"");
        assert_eq!(r.headers()["x-keyward-error"], "proxy_auth_required");
    }
}

#[cfg(test)]
mod doc_tests {
    use super::Code;

    /// docs/errors.md is the agent-facing contract: every code is documented with
    /// its status, and nothing undocumented is emitted.
    #[test]
    fn every_code_is_documented_with_its_status() {
        let doc = include_str!("../../docs/errors.md");
        for c in Code::ALL {
            let row = format!("| `{}` | {} |", c.as_str(), c.status().as_u16());
            assert!(
                doc.contains(&row),
                "docs/errors.md lacks the row for {}",
                c.as_str()
            );
        }
        let documented = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            documented,
            Code::ALL.len(),
            "docs/errors.md documents codes keyward does not have"
        );
    }
}
