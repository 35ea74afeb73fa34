//! The admin API (SPEC §9) against a full in-process keyward: permissions (every
//! route × every token kind), secrets that never come back out, agents and sessions
//! that work through the proxy, metrics, health, and the OpenAPI document.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use keyward::admin::{Permission, Route, ERROR_CODES, MAX_BODY_BYTES, ROUTES};
use keyward::vault::Store;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// The admin token called `name` in the test config.
fn tok(name: &str) -> String {
    format!("kwadm-{name}-0123456789abcdef")
}

/// Token name for a single-permission token (`secrets:read` → `secrets-read`).
fn perm_token_name(p: Permission) -> String {
    p.as_str().replace(':', "-")
}

const ALL: &str = "all";
const NO_PERMS: &str = "none";

/// keyward with an all-permissions admin token, one token per single permission
/// and one without any; plus a chain for agents created through the API.
fn with_admin_tokens() -> KwBuilder {
    let all_perms: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
    let mut kw = Kw::builder().admin_token(ALL, &tok(ALL), &all_perms);
    for p in Permission::ALL {
        let name = perm_token_name(p);
        kw = kw.admin_token(&name, &tok(&name), &[p.as_str()]);
    }
    kw.admin_token(NO_PERMS, &tok(NO_PERMS), &[])
        .chain(Chain::new("triage").owner("acme").builder("botco"))
}

/// A plain HTTP/1 client for the admin listener that keeps every byte it received
/// (heads and bodies), for leak checks.
struct Admin {
    addr: SocketAddr,
    received: Mutex<Vec<u8>>,
}

impl Admin {
    fn of(kw: &Kw) -> Admin {
        Admin {
            addr: kw.running.admin_addr.expect("admin API listening"),
            received: Mutex::new(Vec::new()),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Got {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        if let Some(code) = parts.headers.get("x-keyward-error") {
            assert_documented_admin_error(code.to_str().unwrap(), parts.status.as_u16());
        }
        let mut rec = self.received.lock();
        for (k, v) in &parts.headers {
            rec.extend_from_slice(k.as_str().as_bytes());
            rec.extend_from_slice(b": ");
            rec.extend_from_slice(v.as_bytes());
            rec.push(b'\n');
        }
        rec.extend_from_slice(&body);
        rec.push(b'\n');
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A call with the all-permissions token and an optional JSON body.
    async fn as_all(&self, method: &str, path: &str, body: Option<Value>) -> Got {
        let body = body.map(|b| b.to_string());
        self.call(
            method,
            path,
            Some(&tok(ALL)),
            body.as_deref().map(str::as_bytes),
        )
        .await
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().clone()
    }
}

async fn start() -> (Kw, Admin) {
    let kw = with_admin_tokens().start().await;
    let admin = Admin::of(&kw);
    (kw, admin)
}

/// The newest audit line with this `event`.
fn last_event(kw: &Kw, event: &str) -> Value {
    kw.audit_lines()
        .into_iter()
        .rev()
        .find(|l| l["event"] == event)
        .unwrap_or_else(|| panic!("no {event} line in the audit log"))
}

/// `x-keyward-error: code` on a `status` answer is one of the codes the admin API
/// declares (`admin::ERROR_CODES`) and has its row in `docs/errors.md`.
fn assert_documented_admin_error(code: &str, status: u16) {
    let doc = include_str!("../docs/errors.md");
    assert!(
        ERROR_CODES.iter().any(|c| c.as_str() == code),
        "admin answered x-keyward-error {code}, not in admin::ERROR_CODES"
    );
    let row = format!("| `{code}` | {status} |");
    assert!(doc.contains(&row), "docs/errors.md lacks {row}");
}

fn error_type(got: &Got) -> String {
    got.json()["error"]["type"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A concrete request for a route: path and body.
fn sample(route: &Route, n: usize) -> (String, Option<Value>) {
    let path = route
        .path
        .replace("{scope}", "platform")
        .replace("{name}", "MATRIX_KEY");
    let body = match (route.method, route.path) {
        ("PUT", _) => Some(json!({"value": "matrix-value-0123456789"})),
        ("PATCH", _) => Some(json!({"description": "matrix"})),
        ("POST", "/v1/agents") => Some(json!({"id": format!("matrix-agent-{n}")})),
        ("POST", "/v1/sessions") => Some(json!({"agent": AGENT, "run_id": "matrix", "ttl": 60})),
        _ => None,
    };
    (path, body)
}

#[tokio::test]
async fn permission_matrix_every_route_every_token() {
    let (kw, admin) = start().await;
    // Who calls: no header, an unknown token, a token without permissions, and one
    // token per single permission.
    let mut callers: Vec<(String, Option<String>, Option<Permission>)> = vec![
        ("no token".into(), None, None),
        (
            "unknown token".into(),
            Some("kwadm-not-configured".into()),
            None,
        ),
        (NO_PERMS.into(), Some(tok(NO_PERMS)), None),
    ];
    for p in Permission::ALL {
        let name = perm_token_name(p);
        callers.push((name.clone(), Some(tok(&name)), Some(p)));
    }
    let mut n = 0;
    for route in ROUTES {
        for (who, token, has) in &callers {
            n += 1;
            let (path, body) = sample(route, n);
            let body = body.map(|b| b.to_string());
            let lines_before = kw.audit_lines().len();
            let got = admin
                .call(
                    route.method,
                    &path,
                    token.as_deref(),
                    body.as_deref().map(str::as_bytes),
                )
                .await;
            let what = format!("{} {} as {who}", route.method, route.path);
            let Some(need) = route.permission else {
                assert_eq!(got.status, 200, "{what}: {}", got.text());
                continue;
            };
            let known = token.is_some() && who != "unknown token";
            if !known {
                assert_eq!(got.status, 401, "{what}: {}", got.text());
                assert_eq!(error_type(&got), "keyward.unauthorized", "{what}");
                assert!(
                    got.headers["www-authenticate"]
                        .to_str()
                        .unwrap()
                        .starts_with("Bearer"),
                    "{what}"
                );
                let line = kw.last_audit();
                assert_eq!(line["event"], "admin_auth_fail", "{what}");
                assert_eq!(line["outcome"], "denied", "{what}");
                assert_eq!(line["status"], 401, "{what}");
                assert_eq!(line["path"], path.as_str(), "{what}");
                assert_eq!(kw.audit_lines().len(), lines_before + 1, "{what}: one line");
            } else if *has != Some(need) {
                assert_eq!(got.status, 403, "{what}: {}", got.text());
                assert_eq!(error_type(&got), "keyward.forbidden", "{what}");
                let line = kw.last_audit();
                assert_eq!(line["event"], "admin_forbidden", "{what}");
                assert_eq!(line["outcome"], "denied", "{what}");
                assert_eq!(line["status"], 403, "{what}");
                let reason = line["reason"].as_str().unwrap();
                assert!(
                    reason.contains(who.as_str()),
                    "{what}: token name in {reason}"
                );
                assert!(
                    reason.contains(need.as_str()),
                    "{what}: permission in {reason}"
                );
                assert_eq!(kw.audit_lines().len(), lines_before + 1, "{what}: one line");
            } else {
                assert!(
                    got.status.is_success() || got.status == 404,
                    "{what}: {} {}",
                    got.status,
                    got.text()
                );
            }
        }
    }
    // No admin token ever reaches the audit log.
    let audit = std::fs::read(kw.audit_path()).unwrap();
    for (_, token, _) in &callers {
        if let Some(t) = token {
            assert_no_leak("audit log", &audit, t);
        }
    }
    assert_no_leak("audit log", &audit, tok(ALL));
}

#[tokio::test]
async fn put_secret_returns_hint_never_the_value() {
    let (kw, admin) = start().await;
    let value = canary();
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/owner%3Aacme/OPENAI_API_KEY",
            Some(json!({"value": value, "description": "prod key", "hosts": ["api.openai.com"], "rotate_every": "90d"})),
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let meta = got.json();
    assert_eq!(meta["scope"], "owner:acme");
    assert_eq!(meta["name"], "OPENAI_API_KEY");
    assert_eq!(meta["version"], 1);
    assert_eq!(meta["description"], "prod key");
    assert_eq!(meta["hosts"], json!(["api.openai.com"]));
    assert_eq!(meta["rotate_every"], "90d");
    let hint = format!("{}…{}", &value[..4], &value[value.len() - 4..]);
    assert_eq!(meta["hint"], hint.as_str());
    assert!(meta.get("value").is_none());

    let got = admin
        .as_all("GET", "/v1/secrets/owner:acme/OPENAI_API_KEY", None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["hint"], hint.as_str());
    assert!(got.json().get("value").is_none());

    let got = admin
        .as_all("GET", "/v1/secrets?scope=owner:acme", None)
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["secrets"][0]["hint"], hint.as_str());
    let got = admin
        .as_all("GET", "/v1/secrets?scope=platform", None)
        .await;
    assert_eq!(got.json()["secrets"], json!([]));

    // Rotate: same PUT again with a new value → version 2, metadata kept.
    let value2 = canary();
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/owner:acme/OPENAI_API_KEY",
            Some(json!({"value": value2})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["version"], 2);
    assert_eq!(got.json()["description"], "prod key");

    let events: Vec<Value> = kw
        .audit_lines()
        .into_iter()
        .filter(|l| l["secret"] == "OPENAI_API_KEY")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "secret_set");
    assert_eq!(events[0]["scope"], "owner:acme");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["reason"], "admin:all");
    assert_eq!(events[1]["event"], "secret_rotate");
    assert_eq!(events[1]["version"], 2);

    // The audit query hands back lines too: still no value.
    let got = admin
        .as_all("GET", "/v1/audit?secret=OPENAI_API_KEY", None)
        .await;
    assert_eq!(got.json().as_array().unwrap().len(), 2);

    let received = admin.received();
    let audit = std::fs::read(kw.audit_path()).unwrap();
    for v in [&value, &value2] {
        assert_no_leak("admin responses", &received, v);
        assert_no_leak("audit log", &audit, v);
    }
}

#[tokio::test]
async fn put_secret_takes_effect_in_the_proxy_at_once() {
    let (kw, admin) = start().await;
    for (i, value) in ["sk-first-value-0123456789", "sk-second-value-0123456789"]
        .iter()
        .enumerate()
    {
        let got = admin
            .as_all(
                "PUT",
                "/v1/secrets/platform/OPENAI_API_KEY",
                Some(json!({ "value": value })),
            )
            .await;
        assert!(got.status.is_success(), "{}", got.text());
        assert_eq!(got.json()["version"], i + 1);
        let got = kw
            .client()
            .get(
                "api.openai.com",
                "/v1/models",
                &[("authorization", "Bearer keyward")],
            )
            .await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            kw.upstream.last().headers["authorization"],
            format!("Bearer {value}").as_str()
        );
        assert_eq!(last_event(&kw, "inject")["version"], i + 1);
    }
}

#[tokio::test]
async fn put_secret_refuses_bad_values_and_bodies_without_echoing_them() {
    let (kw, admin) = start().await;
    let marker = canary();
    for bad in [
        format!("{marker}\r\nx-injected: 1"),
        format!("{marker}\n"),
        format!("{marker}\0"),
    ] {
        let got = admin
            .as_all(
                "PUT",
                "/v1/secrets/platform/SOME_KEY",
                Some(json!({ "value": bad })),
            )
            .await;
        assert_eq!(got.status, 400, "{}", got.text());
        assert_eq!(error_type(&got), "keyward.bad_request");
    }
    // Malformed bodies: wrong type, unknown field, missing value, not JSON.
    for body in [
        json!({ "value": 12345, "description": marker }),
        json!({ "valeu": marker }),
        json!({ "description": marker }),
        json!({ "value": marker, "hosts": marker }),
    ] {
        let got = admin
            .as_all("PUT", "/v1/secrets/platform/SOME_KEY", Some(body))
            .await;
        assert_eq!(got.status, 400, "{}", got.text());
    }
    let raw = format!("{{\"value\": \"{marker}");
    let got = admin
        .call(
            "PUT",
            "/v1/secrets/platform/SOME_KEY",
            Some(&tok(ALL)),
            Some(raw.as_bytes()),
        )
        .await;
    assert_eq!(got.status, 400);
    // Bad names and scopes.
    for path in [
        "/v1/secrets/platform/lower_case",
        "/v1/secrets/nowhere/SOME_KEY",
    ] {
        let got = admin
            .as_all("PUT", path, Some(json!({ "value": marker })))
            .await;
        assert_eq!(got.status, 400, "{path}: {}", got.text());
    }
    // Oversized body.
    let huge = vec![b'a'; MAX_BODY_BYTES + 1];
    let got = admin
        .call(
            "PUT",
            "/v1/secrets/platform/SOME_KEY",
            Some(&tok(ALL)),
            Some(&huge),
        )
        .await;
    assert_eq!(got.status, 413);
    assert_eq!(error_type(&got), "keyward.payload_too_large");

    let got = admin.as_all("GET", "/v1/secrets", None).await;
    assert_eq!(got.json()["secrets"], json!([]), "nothing was stored");
    assert_no_leak("admin responses", &admin.received(), &marker);
    assert_no_leak(
        "audit log",
        &std::fs::read(kw.audit_path()).unwrap(),
        &marker,
    );
}

#[tokio::test]
async fn delete_secret_removes_it_from_the_running_proxy() {
    let (kw, admin) = start().await;
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"value": "sk-to-be-deleted-0123456789"})),
        )
        .await;
    assert_eq!(got.status, 201);
    let got = admin
        .as_all("DELETE", "/v1/secrets/platform/OPENAI_API_KEY", None)
        .await;
    assert_eq!(got.status, 204, "{}", got.text());
    assert!(got.body.is_empty());
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_rm");
    assert_eq!(line["secret"], "OPENAI_API_KEY");
    assert_eq!(line["scope"], "platform");
    assert_eq!(line["reason"], "admin:all");

    let got = admin
        .as_all("GET", "/v1/secrets/platform/OPENAI_API_KEY", None)
        .await;
    assert_eq!(got.status, 404);
    assert_eq!(error_type(&got), "keyward.not_found");
    let got = admin
        .as_all("DELETE", "/v1/secrets/platform/OPENAI_API_KEY", None)
        .await;
    assert_eq!(got.status, 404);

    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.error_code().as_deref(), Some("secret_not_found"));
}

/// The stored value and version of `platform/NAME`, straight from the vault.
fn stored(kw: &Kw, name: &str) -> Option<(String, u32)> {
    kw.running
        .state
        .vault
        .snapshot()
        .get("platform", name)
        .unwrap()
        .map(|o| {
            (
                String::from_utf8(o.value.expose().to_vec()).unwrap(),
                o.version,
            )
        })
}

#[tokio::test]
async fn secret_changes_with_an_unwritable_audit_log_are_undone() {
    let (kw, admin) = start().await;
    let old = "sk-before-the-outage-0123456789";
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"value": old})),
        )
        .await;
    assert_eq!(got.status, 201);
    // The live audit file becomes a directory: nothing can append to it (even as root).
    std::fs::remove_file(kw.audit_path()).unwrap();
    std::fs::create_dir(kw.audit_path()).unwrap();

    let refused = |got: &Got, what: &str| {
        assert_eq!(got.status, 503, "{what}: {}", got.text());
        assert_eq!(error_type(got), "keyward.audit_unavailable", "{what}");
        let msg = got.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("undone") && !msg.contains("NOT"),
            "{what}: {msg}"
        );
    };
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"value": "sk-unaudited-rotation-0123456789"})),
        )
        .await;
    refused(&got, "rotate");
    assert_eq!(stored(&kw, "OPENAI_API_KEY"), Some((old.to_string(), 1)));

    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/platform/ANTHROPIC_API_KEY",
            Some(json!({"value": "kwtest-unaudited-0123456789"})),
        )
        .await;
    refused(&got, "create");
    assert_eq!(stored(&kw, "ANTHROPIC_API_KEY"), None);

    let got = admin
        .as_all(
            "PATCH",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"description": "unaudited"})),
        )
        .await;
    refused(&got, "describe");
    let meta =
        keyward::admin::secrets::get(&kw.running.state, "platform", "OPENAI_API_KEY").unwrap();
    assert_eq!(meta.description, None, "the description change was undone");

    let got = admin
        .as_all("DELETE", "/v1/secrets/platform/OPENAI_API_KEY", None)
        .await;
    refused(&got, "delete");
    assert_eq!(stored(&kw, "OPENAI_API_KEY"), Some((old.to_string(), 1)));

    // A fresh handle on the file sees the same: the undo was written, not just cached.
    let reopened = keyward::vault::Vault::open(&kw.running.state.runtime().config.vault).unwrap();
    let meta = reopened
        .snapshot()
        .meta("platform", "OPENAI_API_KEY")
        .unwrap();
    assert_eq!(meta.version, 1);
    assert!(reopened
        .snapshot()
        .meta("platform", "ANTHROPIC_API_KEY")
        .is_none());
}

#[tokio::test]
async fn created_agent_token_works_for_a_connect_through_the_proxy() {
    let (kw, admin) = start().await;
    kw.set_secret("owner:acme", "OPENAI_API_KEY", "sk-acme-owner-0123456789");
    let got = admin
        .as_all(
            "POST",
            "/v1/agents",
            Some(json!({"id": "api-agent", "chain": "triage", "secrets": ["OPENAI_API_KEY"]})),
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let token = got.json()["token"].as_str().unwrap().to_string();
    assert_eq!(got.json()["id"], "api-agent");

    let line = kw.last_audit();
    assert_eq!(line["event"], "agent_add");
    assert_eq!(line["agent"], "api-agent");
    assert_eq!(line["chain"], "triage");
    assert_eq!(line["reason"], "admin:all");

    let mut client = kw.client();
    client.auth = Some(("api-agent".into(), token.clone()));
    let got = client.get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        "Bearer sk-acme-owner-0123456789"
    );
    let line = last_event(&kw, "inject");
    assert_eq!(line["agent"], "api-agent");
    assert_eq!(line["tier"], "owner");

    // The same id again (vault or config) is refused; the token is never stored or logged.
    let got = admin
        .as_all("POST", "/v1/agents", Some(json!({"id": "api-agent"})))
        .await;
    assert_eq!(got.status, 409);
    let got = admin
        .as_all("POST", "/v1/agents", Some(json!({"id": AGENT})))
        .await;
    assert_eq!(got.status, 409);
    let got = admin
        .as_all(
            "POST",
            "/v1/agents",
            Some(json!({"id": "x", "chain": "nope"})),
        )
        .await;
    assert_eq!(got.status, 400);
    let got = admin
        .as_all("POST", "/v1/agents", Some(json!({"id": "bad id!"})))
        .await;
    assert_eq!(got.status, 400);
    assert_no_leak(
        "audit log",
        &std::fs::read(kw.audit_path()).unwrap(),
        &token,
    );
    assert_no_leak(
        "vault file",
        &std::fs::read(kw.dir.path().join("vault.kw")).unwrap(),
        &token,
    );
}

#[tokio::test]
async fn session_token_carries_run_id_and_dies_at_its_ttl() {
    let (kw, admin) = start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-platform-0123456789");
    let got = admin
        .as_all(
            "POST",
            "/v1/sessions",
            Some(json!({"agent": AGENT, "run_id": "run-42", "ttl": 2})),
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let body = got.json();
    let token = body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kws_"));
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::seconds(2) && left > time::Duration::ZERO,
        "{left}"
    );
    assert_eq!(
        body["proxy_url"],
        format!("http://{AGENT}:{token}@{}", kw.addr()).as_str()
    );
    let line = kw.last_audit();
    assert_eq!(line["event"], "session_create");
    assert_eq!(line["agent"], AGENT);
    assert_eq!(line["run_id"], "run-42");

    let mut client = kw.client();
    client.auth = Some((AGENT.into(), token.clone()));
    let got = client.get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // Every line of that request (the injection, and the redaction of the echoed
    // key) carries the session's run_id.
    let lines = kw.audit_lines();
    let since_session = lines
        .iter()
        .rposition(|l| l["event"] == "session_create")
        .unwrap();
    let request_lines = &lines[since_session + 1..];
    assert!(request_lines.iter().any(|l| l["event"] == "inject"));
    for l in request_lines {
        assert_eq!(l["run_id"], "run-42", "{l}");
    }

    let got = admin.as_all("GET", "/v1/audit?run_id=run-42", None).await;
    let events: Vec<String> = got
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events.iter().any(|e| e == "session_create") && events.iter().any(|e| e == "inject"),
        "{events:?}"
    );

    tokio::time::sleep(left.unsigned_abs() + Duration::from_millis(1100)).await;
    let err = client
        .open("api.openai.com")
        .await
        .err()
        .expect("an expired session token is refused");
    assert_eq!(err.status, 407);
    let audit = std::fs::read(kw.audit_path()).unwrap();
    assert_no_leak("audit log", &audit, &token[4..]);
}

#[tokio::test]
async fn session_requests_are_checked() {
    let (_kw, admin) = start().await;
    let got = admin
        .as_all(
            "POST",
            "/v1/sessions",
            Some(json!({"agent": "nobody", "run_id": "r1", "ttl": "15m"})),
        )
        .await;
    assert_eq!(got.status, 404, "{}", got.text());
    for bad in [
        json!({"agent": AGENT, "run_id": "", "ttl": 60}),
        json!({"agent": AGENT, "run_id": "has space", "ttl": 60}),
        json!({"agent": AGENT, "run_id": "r1", "ttl": 0}),
        json!({"agent": AGENT, "run_id": "r1", "ttl": "soon"}),
        json!({"agent": AGENT}),
    ] {
        let got = admin
            .as_all("POST", "/v1/sessions", Some(bad.clone()))
            .await;
        assert_eq!(got.status, 400, "{bad}: {}", got.text());
    }
    // Over the cap: capped at 7 days, not refused.
    let got = admin
        .as_all(
            "POST",
            "/v1/sessions",
            Some(json!({"agent": AGENT, "run_id": "long", "ttl": "400d"})),
        )
        .await;
    assert_eq!(got.status, 201);
    let expires = time::OffsetDateTime::parse(
        got.json()["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let max = keyward::resolve::MAX_SESSION_TTL_SECS as i64;
    assert!(expires - time::OffsetDateTime::now_utc() <= time::Duration::seconds(max));
}

#[tokio::test]
async fn metrics_count_injections_and_denials() {
    let (kw, admin) = start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", "sk-metrics-0123456789");
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    let refused = kw.client().open("evil.example.test").await;
    assert!(refused.is_err());

    let got = admin.call("GET", "/metrics", None, None).await;
    assert_eq!(got.status, 200);
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = got.text();
    assert!(
        text.contains("keyward_injections_total{provider=\"openai\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("keyward_denials_total{code=\"host_not_allowed\"} 1"),
        "{text}"
    );
    assert!(text.contains("keyward_upstream_latency_seconds"), "{text}");
    assert!(text.contains("keyward_open_tunnels"), "{text}");
    assert!(text.contains("keyward_cert_cache"), "{text}");
}

#[tokio::test]
async fn healthz_and_readyz() {
    let (kw, admin) = start().await;
    let got = admin.call("GET", "/healthz", None, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), json!({"status": "ok"}));
    let got = admin.call("GET", "/readyz", None, None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["status"], "ready");
    assert_eq!(got.json()["checks"]["audit"], "ok");

    // The audit file vanishes (unlinked under a running writer): not ready.
    std::fs::remove_file(kw.audit_path()).unwrap();
    let got = admin.call("GET", "/readyz", None, None).await;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(got.json()["status"], "not_ready");
    assert_ne!(got.json()["checks"]["audit"], "ok");
    assert_eq!(got.json()["checks"]["vault"], "ok");
    assert_eq!(got.json()["checks"]["ca"], "ok");
}

#[tokio::test]
async fn audit_query_filters_and_limits() {
    let (kw, admin) = start().await;
    // Two denials for the agent, one refusal without credentials.
    for _ in 0..2 {
        assert!(kw.client().open("evil.example.test").await.is_err());
    }
    let mut anon = kw.client();
    anon.auth = None;
    assert!(anon.open("api.openai.com").await.is_err());

    let got = admin
        .as_all(
            "GET",
            &format!("/v1/audit?agent={AGENT}&outcome=denied"),
            None,
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let lines = got.json().as_array().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["agent"], AGENT);
        assert_eq!(l["outcome"], "denied");
        assert_eq!(l["hash"].as_str().unwrap().len(), 64, "lines as written");
    }
    let got = admin
        .as_all("GET", "/v1/audit?outcome=denied&limit=1", None)
        .await;
    let one = got.json().as_array().unwrap().clone();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["event"], "auth_fail", "the newest match");
    let got = admin
        .as_all("GET", "/v1/audit?since=2999-01-01T00:00:00Z", None)
        .await;
    assert_eq!(got.json(), json!([]));
    let got = admin.as_all("GET", "/v1/audit?since=1h", None).await;
    assert_eq!(got.json().as_array().unwrap().len(), kw.audit_lines().len());
    for bad in [
        "/v1/audit?agnet=x",
        "/v1/audit?since=whenever",
        "/v1/audit?limit=lots",
    ] {
        let got = admin.as_all("GET", bad, None).await;
        assert_eq!(got.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let (_kw, admin) = start().await;
    let got = admin.as_all("GET", "/v1/nothing", None).await;
    assert_eq!(got.status, 404);
    assert_eq!(error_type(&got), "keyward.not_found");
    let got = admin.as_all("POST", "/v1/secrets", None).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "GET");
    let got = admin.as_all("POST", "/v1/secrets/platform/X", None).await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "GET, PUT, DELETE, PATCH");
}

/// Every error the admin API answers with is a documented `Code`, in the proxy's
/// error shape: `x-keyward-error` and `{"error": {"type": "keyward.<code>", …}}`.
#[tokio::test]
async fn every_admin_error_is_a_documented_code() {
    for c in ERROR_CODES {
        assert_documented_admin_error(c.as_str(), c.status().as_u16());
    }
    let (_kw, admin) = start().await;
    let huge = vec![b'a'; MAX_BODY_BYTES + 1];
    let agent = json!({"id": "dup-agent"}).to_string();
    let calls = [
        ("GET", "/v1/secrets", None, None),
        ("GET", "/v1/secrets", Some(tok(NO_PERMS)), None),
        ("GET", "/v1/nothing", Some(tok(ALL)), None),
        ("POST", "/v1/secrets", Some(tok(ALL)), None),
        ("GET", "/v1/secrets?nope=1", Some(tok(ALL)), None),
        (
            "PUT",
            "/v1/secrets/platform/K",
            Some(tok(ALL)),
            Some(&huge[..]),
        ),
        ("POST", "/v1/agents", Some(tok(ALL)), Some(agent.as_bytes())),
        ("POST", "/v1/agents", Some(tok(ALL)), Some(agent.as_bytes())),
    ];
    let mut seen = BTreeSet::new();
    for (method, path, token, body) in calls {
        let got = admin.call(method, path, token.as_deref(), body).await;
        let Some(code) = got.error_code() else {
            assert_eq!(got.status, 201, "{method} {path}: {}", got.text());
            continue;
        };
        assert_eq!(
            error_type(&got),
            format!("keyward.{code}"),
            "{method} {path}"
        );
        assert!(
            got.json()["error"]["message"].is_string(),
            "{method} {path}"
        );
        seen.insert(code);
    }
    let want: BTreeSet<String> = [
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "bad_request",
        "payload_too_large",
        "conflict",
    ]
    .map(String::from)
    .into();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn removing_a_token_from_the_config_revokes_it_at_once() {
    let (kw, admin) = start().await;
    let got = admin.as_all("GET", "/v1/secrets", None).await;
    assert_eq!(got.status, 200);
    let mut cfg = (*kw.running.state.runtime().config).clone();
    cfg.admin.tokens.retain(|t| t.name != ALL);
    kw.running.state.apply_config(cfg);
    let got = admin.as_all("GET", "/v1/secrets", None).await;
    assert_eq!(got.status, 401);
    let got = admin
        .call("GET", "/v1/secrets", Some(&tok("secrets-read")), None)
        .await;
    assert_eq!(got.status, 200);
}

/// `docs/admin-api.yaml` documents exactly the routes in `admin::ROUTES`, with
/// the same permission (`x-keyward-permission`) and no-auth marking (`security: []`).
#[test]
fn openapi_document_matches_the_route_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    let mut documented = BTreeSet::new();
    for (p, item) in doc["paths"].as_mapping().expect("paths").iter() {
        let p = p.as_str().unwrap();
        for (m, op) in item.as_mapping().unwrap() {
            let m = m.as_str().unwrap();
            if !METHODS.contains(&m) {
                continue;
            }
            let perm = op
                .get("x-keyward-permission")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let open = op
                .get("security")
                .and_then(|s| s.as_sequence())
                .is_some_and(|s| s.is_empty());
            documented.insert((m.to_uppercase(), p.to_string(), perm, open));
        }
    }
    let implemented: BTreeSet<_> = ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path.to_string(),
                r.permission.map(|p| p.as_str().to_string()),
                r.permission.is_none(),
            )
        })
        .collect();
    let missing: Vec<_> = implemented.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&implemented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "implemented but not documented (or documented differently): {missing:?}\n\
         documented but not implemented: {extra:?}"
    );
}

#[tokio::test]
async fn admin_listener_stops_with_the_proxy() {
    let (kw, admin) = start().await;
    assert_eq!(admin.call("GET", "/healthz", None, None).await.status, 200);
    let addr = admin.addr;
    kw.running.shutdown().await;
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the admin port still accepts after shutdown");
}

/// Two operators creating the same agent id at once: exactly one gets the token,
/// the others 409; the vault holds one record for the id.
#[tokio::test]
async fn concurrent_creations_of_one_agent_id_give_one_token() {
    let (kw, admin) = start().await;
    let admin = std::sync::Arc::new(admin);
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let admin = admin.clone();
            tokio::spawn(async move {
                admin
                    .as_all("POST", "/v1/agents", Some(json!({"id": "racer"})))
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    let records = kw
        .running
        .state
        .vault
        .snapshot()
        .agents()
        .iter()
        .filter(|a| a.id == "racer")
        .count();
    assert_eq!(records, 1);
}

#[tokio::test]
async fn patch_secret_changes_only_the_description() {
    let (kw, admin) = start().await;
    let value = "sk-described-value-0123456789";
    let got = admin
        .as_all(
            "PUT",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"value": value, "description": "old", "rotate_every": "90d"})),
        )
        .await;
    assert_eq!(got.status, 201);
    let before = got.json();

    let got = admin
        .as_all(
            "PATCH",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"description": "prod key for triage"})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let after = got.json();
    assert_eq!(after["description"], "prod key for triage");
    for same in [
        "version",
        "hint",
        "created",
        "rotation_due",
        "last_rotated",
        "rotate_every",
    ] {
        assert_eq!(after[same], before[same], "{same} unchanged");
    }
    let line = last_event(&kw, "secret_describe");
    assert_eq!(line["scope"], "platform");
    assert_eq!(line["secret"], "OPENAI_API_KEY");
    assert_eq!(line["version"], 1);
    assert_eq!(line["outcome"], "allowed");
    assert_eq!(line["reason"], format!("admin:{ALL}"));
    assert_eq!(stored(&kw, "OPENAI_API_KEY"), Some((value.to_string(), 1)));
    kw.client()
        .get(
            "api.openai.com",
            "/v1/models",
            &[("authorization", "Bearer keyward")],
        )
        .await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {value}").as_str()
    );

    // null clears it.
    let got = admin
        .as_all(
            "PATCH",
            "/v1/secrets/platform/OPENAI_API_KEY",
            Some(json!({"description": null})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.json()["description"].is_null());

    // Refused, nothing changed, nothing audited: no description, a value (use
    // PUT), a bad description, a missing secret.
    let lines = kw.audit_lines().len();
    for (path, body, status) in [
        ("/v1/secrets/platform/OPENAI_API_KEY", json!({}), 400),
        (
            "/v1/secrets/platform/OPENAI_API_KEY",
            json!({"description": "x", "value": "sk-not-through-patch-0123"}),
            400,
        ),
        (
            "/v1/secrets/platform/OPENAI_API_KEY",
            json!({"description": "a\u{7}bell"}),
            400,
        ),
        (
            "/v1/secrets/platform/OPENAI_API_KEY",
            json!({"description": "d".repeat(2000)}),
            400,
        ),
        (
            "/v1/secrets/platform/NO_SUCH_KEY",
            json!({"description": "x"}),
            404,
        ),
    ] {
        let got = admin.as_all("PATCH", path, Some(body.clone())).await;
        assert_eq!(got.status, status, "{body}: {}", got.text());
    }
    assert_eq!(kw.audit_lines().len(), lines);
    let meta =
        keyward::admin::secrets::get(&kw.running.state, "platform", "OPENAI_API_KEY").unwrap();
    assert_eq!(meta.description, None);
    assert_no_leak("admin responses", &admin.received(), value);
    assert_no_leak(
        "admin responses",
        &admin.received(),
        "sk-not-through-patch-0123",
    );
}
