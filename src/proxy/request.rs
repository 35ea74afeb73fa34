//! The steps of one request inside a tunnel, each one hop from `pipeline.rs`:
//! host check, who is asking now, which provider and rules, which credential
//! (scope + tier + host binding), the in-scope set for redaction, and the rewrite
//! (strip the agent's credentials and hop-by-hop headers, fill placeholders,
//! point at the upstream, cap the body).

use super::error::{Code, Deny};
use super::runtime::Runtime;
use super::tunnel::TunnelCx;
use super::{inject, Body};
use crate::audit::Event;
use crate::clock::unix_now;
use crate::policy::{self, Provider};
use crate::redact;
use crate::resolve::{self, Grant, Principal};
use crate::secret::Secret;
use crate::vault::{Freshness, Snapshot};
use http::header::{self, HeaderName};
use http::{HeaderMap, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Connection-level headers that never cross a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What one request was resolved to: who asks (now), through which provider,
/// with which credential, from which vault snapshot. Built by [`Call::resolve`]
/// in the order of SPEC §5 and passed to the steps that follow.
pub struct Call<'a> {
    pub cx: &'a TunnelCx,
    pub rt: Arc<Runtime>,
    pub principal: Principal,
    pub provider: Arc<Provider>,
    pub grant: Grant,
    pub snapshot: Arc<Snapshot>,
}

impl<'a> Call<'a> {
    /// Identity (re-checked per request), provider and request rules, then the
    /// credential (scope, tier, host binding), recording each on `ev`.
    pub fn resolve(
        cx: &'a TunnelCx,
        parts: &http::request::Parts,
        ev: &mut Event,
    ) -> Result<Call<'a>, Deny> {
        let rt = cx.state.runtime();
        let principal = current_principal(cx, &rt, ev)?;
        let provider = provider_for(cx, &rt, &principal, parts, ev)?;
        // SECURITY: past `[store] stale_after` without reaching the store, the last
        // snapshot may still hold a revoked secret or agent: no credential from it.
        if let Freshness::Stale { age } = cx.state.vault.freshness() {
            return Err(Deny::new(
                Code::StoreStale,
                format!(
                    "the store has been unreachable for {}s; retry later",
                    age.as_secs()
                ),
            ));
        }
        let snapshot = cx.state.vault.snapshot();
        let grant = credential_for(cx, &principal, &provider, &*snapshot, ev)?;
        Ok(Call {
            cx,
            rt,
            principal,
            provider,
            grant,
            snapshot,
        })
    }
}

/// The tunnel's provider (config reloads may have changed it) and the agent's
/// request rules for it.
fn provider_for(
    cx: &TunnelCx,
    rt: &Runtime,
    principal: &Principal,
    parts: &http::request::Parts,
    ev: &mut Event,
) -> Result<Arc<Provider>, Deny> {
    let provider = rt
        .policy
        .provider_for(&cx.host)
        .cloned()
        .ok_or_else(|| Deny::new(Code::HostNotAllowed, "host is no longer a provider host"))?;
    ev.provider = Some(provider.name.clone());
    ev.connection_id = Some(principal.connection_id(&provider.name));
    ev.secret = Some(provider.secret.clone());
    // SECURITY: request rules are checked before any credential is resolved or
    // attached, so a disallowed endpoint never sees the key.
    principal.check_rules(&provider.name, parts.method.as_str(), parts.uri.path())?;
    Ok(provider)
}

/// Scope + tier resolution, and the record's own host restriction.
fn credential_for(
    cx: &TunnelCx,
    principal: &Principal,
    provider: &Provider,
    snapshot: &dyn resolve::SecretSource,
    ev: &mut Event,
) -> Result<resolve::Grant, Deny> {
    let grant = resolve::grant(principal, &provider.secret, snapshot)?;
    ev.scope = Some(grant.scope.clone());
    ev.tier = Some(grant.tier.as_str().to_string());
    ev.version = Some(grant.version);
    // SECURITY: a record restricted with --hosts goes only to those hosts.
    let bound = grant.hosts.is_empty()
        || grant
            .hosts
            .iter()
            .any(|h| policy::host_matches(h, &cx.host));
    if !bound {
        return Err(resolve::Refusal::HostNotBound(grant.name.clone()).into());
    }
    Ok(grant)
}

/// Every secret value this agent could be granted (SPEC §5), for redaction.
pub fn in_scope_secrets(call: &Call<'_>) -> Result<Arc<redact::InScope>, Deny> {
    let (principal, snapshot) = (&call.principal, &call.snapshot);
    call.cx.state.scopes.get(principal, snapshot, |only| {
        redaction_set(principal, snapshot, only)
    })
}

/// The redaction values per grantable name: of every name (`only` = `None`), or
/// of those of `only` that are grantable (what [`redact::ScopeCache`] updates an
/// agent's set with after a vault change).
pub fn redaction_set(
    principal: &Principal,
    snapshot: &Snapshot,
    only: Option<&std::collections::BTreeSet<String>>,
) -> Result<redact::Resolved, Deny> {
    // SECURITY: a value that cannot be read cannot be redacted: refuse
    // (before anything is sent) rather than answer with a gap in the set.
    let grants = match only {
        None => resolve::grantable(principal, snapshot)?,
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                // Exactly what `grantable` would list for this name: a name
                // outside the lists or stored in no scope it may use is not
                // grantable; any other refusal (an unreadable record) refuses.
                match resolve::grant(principal, name, snapshot) {
                    Ok(g) => out.push(g),
                    Err(resolve::Refusal::NotInScope(_) | resolve::Refusal::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out
        }
    };
    Ok(grants
        .iter()
        .map(|g| {
            let mut values = Vec::new();
            inject::redaction_values(g, &mut values);
            (g.name.clone(), values)
        })
        .collect())
}

/// Removes client credentials and hop-by-hop headers, fills `{{NAME}}`
/// placeholders and points the request at the upstream. Returns every secret the
/// request now carries (for response redaction).
pub fn rewrite(
    call: &Call<'_>,
    parts: &mut http::request::Parts,
    websocket: bool,
) -> Result<Vec<Secret>, Deny> {
    let Call {
        cx,
        rt,
        principal,
        provider,
        grant,
        snapshot,
    } = call;
    inject::strip_credentials(&mut parts.headers, provider);
    strip_hop_by_hop(&mut parts.headers);
    if websocket {
        // SECURITY: no compression extension: the relay must read every frame
        // the upstream sends to redact it (a frame that still claims one ends
        // the connection).
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        parts.headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        parts
            .headers
            .insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
    // Ask for an identity-encoded answer: redaction then never has to decode.
    redact::prepare_request(&mut parts.headers);
    let mut secrets: Vec<Secret> = vec![grant.value.clone()];
    inject::replace_placeholders(&mut parts.headers, |name| {
        let g = placeholder_grant(rt, principal, &cx.host, name, &**snapshot)?;
        secrets.push(g.value.clone());
        Ok(g.value)
    })?;
    parts.uri = upstream_uri(cx, &parts.uri)?;
    parts.version = Version::HTTP_11;
    parts.headers.remove(header::HOST);
    Ok(secrets)
}

/// Caps the request body at `proxy.max_body_bytes`: a declared length over it is
/// refused now, a streamed body when it gets there. The flag records the latter,
/// since hyper may report it as a stream reset (h2).
pub fn limit_body(
    cx: &TunnelCx,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<(Body, Arc<AtomicBool>), Deny> {
    let max_body = cx.state.limits.max_body_bytes.0;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(Deny::payload_too_large(max_body));
    }
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let body: Body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                flag.store(true, Ordering::Relaxed);
            }
            e
        })
        .boxed();
    Ok((body, too_large))
}

pub fn is_websocket_upgrade(req: &http::Request<Incoming>) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

fn current_principal(cx: &TunnelCx, rt: &Runtime, ev: &mut Event) -> Result<Principal, Deny> {
    // SECURITY: identity is fixed per tunnel but re-checked per request, so a
    // removed agent or an expired session stops at the next request.
    let principal = rt
        .directory
        .principal(&cx.agent_id, cx.run_id.clone())
        .ok_or_else(|| Deny::new(Code::AgentRevoked, "this agent is no longer registered"))?;
    if let Some(expires) = cx.expires {
        if expires <= unix_now() {
            return Err(Deny::new(
                Code::AgentRevoked,
                "the session token has expired",
            ));
        }
    }
    cx.state.rate_check(&cx.agent_id)?;
    ev.owner = principal.owner().map(str::to_string);
    ev.builder = principal.builder().map(str::to_string);
    ev.chain = principal.chain_name().map(str::to_string);
    Ok(principal)
}

/// A `{{NAME}}` placeholder may be filled only when NAME is in the agent's scope
/// AND this host is one NAME is bound to.
fn placeholder_grant(
    rt: &Runtime,
    principal: &Principal,
    host: &str,
    name: &str,
    snapshot: &dyn resolve::SecretSource,
) -> Result<resolve::Grant, Deny> {
    let refuse = |why: &str| {
        Deny::new(
            Code::PlaceholderNotAllowed,
            format!("placeholder {{{{{name}}}}}: {why}"),
        )
    };
    let g = resolve::grant(principal, name, snapshot).map_err(|r| refuse(&r.to_string()))?;
    // SECURITY: without the host binding an agent could send {{OPENAI_API_KEY}}
    // to any provider host it can reach and read it back from a logging endpoint.
    if !rt.policy.host_bound_to(name, host, &g.hosts) {
        return Err(refuse("the secret is not bound to this host"));
    }
    // SECURITY: a multi-field value (OAuth2 client secret + refresh token, AWS
    // secret key) must never be pasted into a header as it is stored.
    if !g.kind.is_api_key() {
        return Err(refuse(
            "secrets of this kind cannot be used as placeholders",
        ));
    }
    Ok(g)
}

pub fn check_host(headers: &HeaderMap, uri: &Uri, host: &str, port: u16) -> Result<(), Deny> {
    let mismatch = || {
        Deny::new(
            Code::HostMismatch,
            format!("this tunnel is for {host}; the request names another host"),
        )
    };
    let matches = |authority: &str| -> bool {
        let (h, p) = match policy::split_authority(authority) {
            Some((h, p)) => (h, p),
            None => match policy::canonical_host(authority) {
                Some(h) => (h, 443),
                None => return false,
            },
        };
        h == host && p == port
    };
    let mut seen = false;
    if let Some(auth) = uri.authority() {
        seen = true;
        if !matches(auth.as_str()) {
            return Err(mismatch());
        }
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    if let Some(v) = hosts.next() {
        seen = true;
        // SECURITY: duplicate Host headers are ambiguous (which one does the
        // upstream use?); refuse rather than guess.
        if hosts.next().is_some() || !v.to_str().is_ok_and(matches) {
            return Err(mismatch());
        }
    }
    if !seen {
        return Err(Deny::new(Code::BadRequest, "request has no Host"));
    }
    Ok(())
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn upstream_uri(cx: &TunnelCx, uri: &Uri) -> Result<Uri, Deny> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("https")
        .authority(cx.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Deny::new(Code::BadRequest, "invalid request target"))
}

#[cfg(test)]
#[path = "in_scope_tests.rs"]
mod in_scope_tests;
