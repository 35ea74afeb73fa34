//! The operator console (SPEC §11) over plain HTTP against a full in-process
//! keyward: sign-in/out and idle expiry, CSRF, the read-only token refused on
//! every POST, bad input next to its field, secrets created in the console that
//! the proxy injects, show-once tokens, the access log and its exports — with no
//! secret value in any byte the console sent back.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::net::SocketAddr;
use tokio::net::TcpStream;

const OPS: &str = "ops";
const READER: &str = "reader";

fn tok(name: &str) -> String {
    format!("kwadm-{name}-console-0123456789")
}

/// keyward with a manage-everything token `ops` and a read-only `reader`.
fn console_kw() -> KwBuilder {
    Kw::builder()
        .admin_token(
            OPS,
            &tok(OPS),
            &[
                "secrets:read",
                "secrets:manage",
                "agents:manage",
                "sessions:create",
                "audit:read",
            ],
        )
        .admin_token(READER, &tok(READER), &["secrets:read", "audit:read"])
        .chain(Chain::new("triage").owner("acme"))
}

/// A browser without script: one cookie jar, no redirects followed, every byte
/// received kept for leak checks.
struct Browser {
    addr: SocketAddr,
    cookie: Mutex<Option<String>>,
    received: Mutex<Vec<u8>>,
}

impl Browser {
    fn of(kw: &Kw) -> Browser {
        Browser {
            addr: kw.running.admin_addr.expect("admin listener"),
            cookie: Mutex::new(None),
            received: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, method: &str, path: &str, form: Option<String>) -> Got {
        self.send_with(method, path, form, &[]).await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        form: Option<String>,
        headers: &[(&str, &str)],
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
        if let Some(c) = self.cookie.lock().as_deref() {
            b = b.header("cookie", c);
        }
        if form.is_some() {
            b = b.header("content-type", "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        if let Some(sc) = parts.headers.get("set-cookie") {
            let sc = sc.to_str().unwrap();
            let pair = sc.split(';').next().unwrap().to_string();
            *self.cookie.lock() = if sc.contains("Max-Age=0") {
                None
            } else {
                Some(pair)
            };
        }
        let mut rec = self.received.lock();
        for (k, v) in &parts.headers {
            rec.extend_from_slice(k.as_str().as_bytes());
            rec.extend_from_slice(b": ");
            rec.extend_from_slice(v.as_bytes());
            rec.push(b'\n');
        }
        rec.extend_from_slice(&body);
        let got = Got {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        if path.starts_with("/ui") {
            assert_console_headers(&got);
        }
        got
    }

    async fn get(&self, path: &str) -> Got {
        self.send("GET", path, None).await
    }

    /// POSTs `fields` (urlencoded) as they are: no CSRF token added.
    async fn post_raw(&self, path: &str, fields: &[(&str, &str)]) -> Got {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send("POST", path, Some(body)).await
    }

    /// POSTs `fields` with the session's CSRF token and, for a show-once form,
    /// its single-use `once` value, both read off the page the form is on.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Got {
        let (csrf, once) = self.form_tokens(path).await;
        let mut all = fields.to_vec();
        all.push(("csrf", &csrf));
        if let Some(once) = &once {
            all.push(("once", once));
        }
        self.post_raw(path, &all).await
    }

    /// The CSRF token, and the `once` value of the form posting to `path`.
    async fn form_tokens(&self, path: &str) -> (String, Option<String>) {
        let source = match path {
            "/ui/agents/new" => "/ui/agents/new",
            "/ui/sessions/new" => "/ui/sessions",
            _ => "/ui/status",
        };
        let page = self.get(source).await.text();
        let csrf = hidden(&page, "csrf").expect("a CSRF field on a signed-in page");
        (csrf, hidden(&page, "once"))
    }

    async fn sign_in(&self, token: &str) -> Got {
        self.post_raw("/ui/signin", &[("token", token)]).await
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().clone()
    }
}

/// A console POST: path, fields, the permission it needs.
type Post<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The value of the hidden input `name` in `html`.
fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Every console response: strict CSP, no framing, no referrer, never cached.
fn assert_console_headers(got: &Got) {
    let h = |k: &str| got.headers.get(k).map(|v| v.to_str().unwrap().to_string());
    let csp = h("content-security-policy").expect("CSP");
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(csp.contains(part), "CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(h("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(h("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(h("cache-control").as_deref(), Some("no-store"));
}

fn location(got: &Got) -> String {
    got.headers["location"].to_str().unwrap().to_string()
}

fn code(got: &Got) -> Option<String> {
    got.headers
        .get("x-keyward-error")
        .map(|v| v.to_str().unwrap().to_string())
}

/// The error paragraph tied to field `name`, if any.
fn field_error(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("id=\"f-{name}-err\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    Some(rest[start..start + rest[start..].find('<')?].to_string())
}

fn vault_names(kw: &Kw) -> Vec<(String, String)> {
    kw.running
        .state
        .vault
        .list(None)
        .into_iter()
        .map(|m| (m.scope, m.name))
        .collect()
}

#[tokio::test]
async fn sign_in_ok_and_bad_is_audited_and_sign_out_ends_the_session() {
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);

    let got = b.get("/ui/secrets").await;
    assert_eq!(got.status, 303);
    assert_eq!(location(&got), "/ui/signin");
    let got = b.get("/ui/").await;
    assert_eq!(got.status, 303);

    let got = b.get("/ui/signin").await;
    assert_eq!(got.status, 200);
    let page = got.text();
    assert!(page.contains("<label for=\"f-token\">Admin token</label>"));
    assert!(page.contains("type=\"password\""));
    assert!(page.contains("autocomplete=\"off\""));
    assert!(page.contains(">Sign in</button>"));
    assert!(!page.contains("<script>"), "no inline script");

    let wrong = "kwadm-wrong-token-that-is-not-configured";
    let got = b.sign_in(wrong).await;
    assert_eq!(got.status, 401);
    assert_eq!(code(&got).as_deref(), Some("unauthorized"));
    assert!(field_error(&got.text(), "token").is_some());
    assert!(got.headers.get("set-cookie").is_none());
    let line = kw.last_audit();
    assert_eq!(line["event"], "admin_auth_fail");
    assert_eq!(line["outcome"], "denied");
    assert_eq!(line["status"], 401);
    assert_eq!(line["path"], "/ui/signin");
    assert_eq!(line["reason"], "unknown admin token");
    assert_no_leak("audit log", &std::fs::read(kw.audit_path()).unwrap(), wrong);
    assert_no_leak("console responses", &b.received(), wrong);

    // A sign-in posted from another site is refused before the token is looked at.
    let body = format!("token={}", enc(&tok(OPS)));
    let got = b
        .send_with(
            "POST",
            "/ui/signin",
            Some(body.clone()),
            &[("origin", "http://evil.test")],
        )
        .await;
    assert_eq!(got.status, 403);
    assert_eq!(code(&got).as_deref(), Some("csrf_invalid"));
    assert!(got.headers.get("set-cookie").is_none());
    assert_eq!(kw.last_audit()["reason"], "cross-site console POST");
    let got = b
        .send_with(
            "POST",
            "/ui/signin",
            Some(body.clone()),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(got.status, 403);
    assert_eq!(code(&got).as_deref(), Some("csrf_invalid"));
    let same = format!("http://{}", b.addr);
    let got = b
        .send_with(
            "POST",
            "/ui/signin",
            Some("token=x".into()),
            &[("origin", &same)],
        )
        .await;
    assert_eq!(
        got.status, 401,
        "same-origin POSTs go on to the token check"
    );

    let got = b.sign_in("").await;
    assert_eq!(got.status, 401);
    assert_eq!(kw.last_audit()["reason"], "missing bearer token");

    let got = b.sign_in(&tok(OPS)).await;
    assert_eq!(got.status, 303);
    assert_eq!(location(&got), "/ui/secrets");
    let cookie = got.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui/"] {
        assert!(cookie.contains(attr), "cookie {cookie:?} lacks {attr}");
    }
    let id = cookie.split(';').next().unwrap().split('=').nth(1).unwrap();
    assert_eq!(id.len(), 64, "a 256-bit random session id");

    let got = b.get("/ui/secrets").await;
    assert_eq!(got.status, 200);
    let page = got.text();
    for nav in ["Secrets", "Agents", "Sessions", "Access log", "Status"] {
        assert!(page.contains(&format!(">{nav}</a>")), "nav link {nav}");
    }
    assert!(page.contains("Signed in as <strong>ops</strong>"));
    assert!(page.contains(">Sign out</button>"));

    let got = b.post("/ui/signout", &[]).await;
    assert_eq!(got.status, 303);
    assert_eq!(location(&got), "/ui/signin?signed_out=1");
    assert!(got.headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // The old cookie is dead on the server too, not only cleared in the browser.
    *b.cookie.lock() = Some(format!("kw_console={id}"));
    let got = b.get("/ui/secrets").await;
    assert_eq!(got.status, 303);
    assert!(location(&got).starts_with("/ui/signin"));
    assert_no_leak("console responses", &b.received(), tok(OPS));
}

#[tokio::test]
async fn an_idle_session_expires() {
    let kw = console_kw()
        .admin_setting("console_idle", "1s")
        .start()
        .await;
    let b = Browser::of(&kw);
    assert_eq!(b.sign_in(&tok(OPS)).await.status, 303);
    assert_eq!(b.get("/ui/status").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let got = b.get("/ui/status").await;
    assert_eq!(got.status, 303);
    assert_eq!(location(&got), "/ui/signin?expired=1");
    let got = b.get("/ui/signin?expired=1").await;
    assert!(got.text().contains("Your session ended"));
}

#[tokio::test]
async fn csrf_missing_or_wrong_is_refused_and_changes_nothing() {
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);
    b.sign_in(&tok(OPS)).await;
    let value = canary();
    let fields = [
        ("name", "OPENAI_API_KEY"),
        ("scope", "platform"),
        ("value", value.as_str()),
    ];
    let before = kw.audit_lines().len();
    let got = b.post_raw("/ui/secrets/new", &fields).await;
    assert_eq!(got.status, 403);
    assert_eq!(code(&got).as_deref(), Some("csrf_invalid"));
    let mut wrong = fields.to_vec();
    wrong.push((
        "csrf",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ));
    let got = b.post_raw("/ui/secrets/new", &wrong).await;
    assert_eq!(got.status, 403);
    assert_eq!(code(&got).as_deref(), Some("csrf_invalid"));
    // Sign out is a POST too.
    let got = b.post_raw("/ui/signout", &[]).await;
    assert_eq!(code(&got).as_deref(), Some("csrf_invalid"));
    assert_eq!(b.get("/ui/status").await.status, 200, "still signed in");

    assert!(vault_names(&kw).is_empty(), "nothing was stored");
    let lines = kw.audit_lines();
    assert_eq!(lines.len(), before + 3);
    for l in &lines[before..] {
        assert_eq!(l["event"], "admin_forbidden");
        assert_eq!(l["status"], 403);
        assert_eq!(l["reason"], "admin:ops csrf token missing or wrong");
    }
    assert_no_leak("console responses", &b.received(), &value);
}

#[tokio::test]
async fn a_read_only_token_sees_no_manage_controls_and_every_post_is_refused() {
    let kw = console_kw().start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", &canary());
    let b = Browser::of(&kw);
    b.sign_in(&tok(READER)).await;
    let page = b.get("/ui/secrets").await.text();
    assert!(page.contains("OPENAI_API_KEY"));
    for control in ["New secret", ">Edit<", ">Clone<", ">Delete<"] {
        assert!(!page.contains(control), "reader sees {control}");
    }
    assert!(!page.contains(">Agents</a>") && !page.contains(">Sessions</a>"));
    assert!(page.contains(">Access log</a>"));
    for path in [
        "/ui/secrets/new",
        "/ui/secrets/edit?scope=platform&name=OPENAI_API_KEY",
        "/ui/agents",
        "/ui/agents/remove?id=agent-1",
        "/ui/sessions",
    ] {
        let got = b.get(path).await;
        assert_eq!(got.status, 403, "GET {path}");
        assert_eq!(code(&got).as_deref(), Some("forbidden"));
    }

    let value = canary();
    let posts: [Post; 7] = [
        (
            "/ui/secrets/new",
            vec![
                ("name", "NEW_KEY"),
                ("scope", "platform"),
                ("value", &value),
            ],
            "secrets:manage",
        ),
        (
            "/ui/secrets/edit",
            vec![
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", &value),
            ],
            "secrets:manage",
        ),
        (
            "/ui/secrets/clone",
            vec![
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("target", "owner:acme"),
            ],
            "secrets:manage",
        ),
        (
            "/ui/secrets/delete",
            vec![
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("confirm", "OPENAI_API_KEY"),
            ],
            "secrets:manage",
        ),
        ("/ui/agents/new", vec![("id", "bot-9")], "agents:manage"),
        (
            "/ui/agents/remove",
            vec![("id", "agent-1")],
            "agents:manage",
        ),
        (
            "/ui/sessions/new",
            vec![("agent", "agent-1"), ("run_id", "r1"), ("ttl", "15m")],
            "sessions:create",
        ),
    ];
    let version = kw.running.state.vault.list(None)[0].version;
    for (path, fields, perm) in posts {
        let got = b.post(path, &fields).await;
        assert_eq!(got.status, 403, "POST {path}");
        assert_eq!(code(&got).as_deref(), Some("forbidden"), "POST {path}");
        let line = kw.last_audit();
        assert_eq!(line["event"], "admin_forbidden");
        assert_eq!(line["path"], path);
        assert_eq!(line["reason"], format!("admin:reader lacks {perm}"));
    }
    assert_eq!(
        vault_names(&kw),
        vec![("platform".to_string(), "OPENAI_API_KEY".to_string())]
    );
    assert_eq!(kw.running.state.vault.list(None)[0].version, version);
    assert!(kw.running.state.vault.snapshot().agents().is_empty());
    assert_no_leak("console responses", &b.received(), &value);
}

#[tokio::test]
async fn a_secret_created_in_the_console_is_injected_rotated_cloned_deleted_and_never_shown() {
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);
    b.sign_in(&tok(OPS)).await;
    let (v1, v2) = (canary(), canary());

    // Bad input: shown next to its field, nothing stored.
    let cases: [(Vec<(&str, &str)>, &str); 4] = [
        (
            vec![("name", "bad-name"), ("scope", "platform"), ("value", &v1)],
            "name",
        ),
        (
            vec![
                ("name", "OPENAI_API_KEY"),
                ("scope", "team:x"),
                ("value", &v1),
            ],
            "scope",
        ),
        (
            vec![
                ("name", "OPENAI_API_KEY"),
                ("scope", "platform"),
                ("value", ""),
            ],
            "value",
        ),
        (
            vec![
                ("name", "OPENAI_API_KEY"),
                ("scope", "platform"),
                ("value", &v1),
                ("rotate_every", "often"),
            ],
            "rotate_every",
        ),
    ];
    let audit_before = kw.audit_lines().len();
    for (fields, bad) in cases {
        let got = b.post("/ui/secrets/new", &fields).await;
        assert_eq!(got.status, 400, "{bad}");
        assert_eq!(code(&got).as_deref(), Some("bad_request"));
        let page = got.text();
        assert!(
            field_error(&page, bad).is_some(),
            "error next to {bad}: {page}"
        );
        assert!(page.contains("aria-invalid=\"true\""));
    }
    assert!(vault_names(&kw).is_empty());
    assert_eq!(kw.audit_lines().len(), audit_before);

    let got = b.get("/ui/secrets/new").await.text();
    for label in [
        "Name",
        "Scope",
        "Value",
        "Description",
        "Allowed hosts",
        "Rotate every",
    ] {
        assert!(got.contains(&format!(">{label}</label>")), "field {label}");
    }
    assert!(got.contains(">Save</button>"));
    let got = b
        .post(
            "/ui/secrets/new",
            &[
                ("name", "OPENAI_API_KEY"),
                ("scope", "platform"),
                ("value", &v1),
                ("description", "prod key"),
                ("rotate_every", "90d"),
            ],
        )
        .await;
    assert_eq!(got.status, 303);
    assert!(location(&got).starts_with("/ui/secrets?done=saved"));
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_set");
    assert_eq!(line["reason"], "admin:ops");
    assert_eq!(line["path"], "/ui/secrets/new");

    let meta = kw.running.state.vault.list(None).remove(0);
    let page = b.get("/ui/secrets").await.text();
    assert!(page.contains(&meta.hint), "hint shown");
    assert!(page.contains("prod key"));
    assert!(
        page.contains(">Edit</a>") && page.contains(">Clone</a>") && page.contains(">Delete</a>")
    );

    // The same name again is refused (Edit changes it), nothing changes.
    let got = b
        .post(
            "/ui/secrets/new",
            &[
                ("name", "OPENAI_API_KEY"),
                ("scope", "platform"),
                ("value", &v2),
            ],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "name")
        .unwrap()
        .contains("already exists"));

    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {v1}")
    );

    // Edit: the name is read-only; a new value is the next version, injected at once.
    let page = b
        .get("/ui/secrets/edit?scope=platform&name=OPENAI_API_KEY")
        .await
        .text();
    assert!(page.contains("readonly"));
    assert!(!page.contains(&v1));
    let got = b
        .post(
            "/ui/secrets/edit",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", ""),
            ],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "value").is_some());
    let got = b
        .post(
            "/ui/secrets/edit",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", &v2),
                ("description", "rotated"),
            ],
        )
        .await;
    assert_eq!(got.status, 303);
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_rotate");
    assert_eq!(line["version"], 2);
    assert_eq!(line["reason"], "admin:ops");
    kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {v2}")
    );

    // Edit without a value: the description alone changes (same version, same
    // value injected), audited as `secret_describe`.
    let page = b
        .get("/ui/secrets/edit?scope=platform&name=OPENAI_API_KEY")
        .await
        .text();
    assert!(page.contains("Leave it empty to change only the description"));
    let audit_before = kw.audit_lines().len();
    let got = b
        .post(
            "/ui/secrets/edit",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", ""),
                ("description", "rotated"),
            ],
        )
        .await;
    assert_eq!(got.status, 400, "nothing to change");
    assert!(field_error(&got.text(), "value").is_some());
    assert_eq!(kw.audit_lines().len(), audit_before);
    let got = b
        .post(
            "/ui/secrets/edit",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", ""),
                ("description", "prod key, rotated by ops"),
            ],
        )
        .await;
    assert_eq!(got.status, 303);
    assert!(location(&got).starts_with("/ui/secrets?done=saved"));
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_describe");
    assert_eq!(line["version"], 2);
    assert_eq!(line["reason"], "admin:ops");
    assert_eq!(line["path"], "/ui/secrets/edit");
    let meta = kw.running.state.vault.list(Some("platform")).remove(0);
    assert_eq!(meta.version, 2);
    assert_eq!(
        meta.description.as_deref(),
        Some("prod key, rotated by ops")
    );
    assert!(b
        .get("/ui/secrets")
        .await
        .text()
        .contains("prod key, rotated by ops"));
    kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {v2}"),
        "the value is untouched"
    );
    // A bad description is refused next to its field; nothing changes.
    let audit_before = kw.audit_lines().len();
    let long = "d".repeat(2000);
    let got = b
        .post(
            "/ui/secrets/edit",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("value", ""),
                ("description", &long),
            ],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "description").is_some());
    assert_eq!(kw.audit_lines().len(), audit_before);

    // Clone: bad target next to the field, then a real one.
    let got = b
        .post(
            "/ui/secrets/clone",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("target", "nowhere"),
            ],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "target").is_some());
    let got = b
        .post(
            "/ui/secrets/clone",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("target", "owner:acme"),
            ],
        )
        .await;
    assert_eq!(got.status, 303);
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_clone");
    assert_eq!(line["scope"], "owner:acme");
    assert_eq!(line["reason"], "admin:ops");
    let got = b
        .post(
            "/ui/secrets/clone",
            &[
                ("scope", "platform"),
                ("name", "OPENAI_API_KEY"),
                ("target", "owner:acme"),
            ],
        )
        .await;
    assert_eq!(got.status, 409);
    assert!(field_error(&got.text(), "target").is_some());

    // Delete: only when the typed name matches.
    let page = b
        .get("/ui/secrets/delete?scope=owner%3Aacme&name=OPENAI_API_KEY")
        .await
        .text();
    assert!(page.contains(">Type the name to confirm</label>"));
    let got = b
        .post(
            "/ui/secrets/delete",
            &[
                ("scope", "owner:acme"),
                ("name", "OPENAI_API_KEY"),
                ("confirm", "OPENAI"),
            ],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "confirm").is_some());
    assert_eq!(vault_names(&kw).len(), 2);
    let got = b
        .post(
            "/ui/secrets/delete",
            &[
                ("scope", "owner:acme"),
                ("name", "OPENAI_API_KEY"),
                ("confirm", "OPENAI_API_KEY"),
            ],
        )
        .await;
    assert_eq!(got.status, 303);
    let line = kw.last_audit();
    assert_eq!(line["event"], "secret_rm");
    assert_eq!(line["scope"], "owner:acme");
    assert_eq!(line["reason"], "admin:ops");
    assert_eq!(
        vault_names(&kw),
        vec![("platform".to_string(), "OPENAI_API_KEY".to_string())]
    );
    let got = b
        .get("/ui/secrets/edit?scope=owner%3Aacme&name=OPENAI_API_KEY")
        .await;
    assert_eq!(got.status, 404);
    assert_eq!(code(&got).as_deref(), Some("not_found"));

    for v in [&v1, &v2] {
        assert_no_leak("console responses", &b.received(), v);
        assert_no_leak("audit log", &std::fs::read(kw.audit_path()).unwrap(), v);
    }
}

#[tokio::test]
async fn agents_and_sessions_show_their_token_once() {
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);
    b.sign_in(&tok(OPS)).await;
    let page = b.get("/ui/agents").await.text();
    assert!(page.contains("agent-1") && page.contains("in config file"));
    assert!(page.contains(">New agent</a>"));
    let page = b.get("/ui/agents/new").await.text();
    assert!(page.contains(">Agent id</label>") && page.contains(">Chain</label>"));

    for (fields, bad, status) in [
        (vec![("id", "bad id!")], "id", 400),
        (vec![("id", "bot-1"), ("chain", "nochain")], "chain", 400),
        (vec![("id", "agent-1")], "id", 409),
    ] {
        let got = b.post("/ui/agents/new", &fields).await;
        assert_eq!(got.status, status, "{fields:?}");
        assert!(field_error(&got.text(), bad).is_some(), "{fields:?}");
    }
    assert!(kw.running.state.vault.snapshot().agents().is_empty());

    let (csrf, once) = b.form_tokens("/ui/agents/new").await;
    let once = once.expect("a show-once form carries a once value");
    let form = [
        ("id", "bot-1"),
        ("chain", "triage"),
        ("csrf", &csrf),
        ("once", &once),
    ];
    let got = b.post_raw("/ui/agents/new", &form).await;
    assert_eq!(got.status, 201);
    let page = got.text();
    let token = page
        .split("id=\"f-token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the token, once")
        .to_string();
    assert!(token.len() >= 32);
    let line = kw.last_audit();
    assert_eq!(line["event"], "agent_add");
    assert_eq!(line["agent"], "bot-1");
    assert_eq!(line["reason"], "admin:ops");
    // The new agent's token works through the proxy.
    kw.set_secret("platform", "OPENAI_API_KEY", &canary());
    let got = kw
        .client_as("bot-1", &token)
        .get("api.openai.com", "/v1/models", &[])
        .await;
    assert_eq!(got.status, 200);
    // Never again: not in the list, not on the form.
    let before = b.received().len();
    for path in [
        "/ui/agents",
        "/ui/agents/new",
        "/ui/secrets",
        "/ui/access-log",
    ] {
        b.get(path).await;
    }
    assert_no_leak("later pages", &b.received()[before..], &token);

    // A reload (the same form again) is refused before anything runs.
    let audit_before = kw.audit_lines().len();
    let got = b.post_raw("/ui/agents/new", &form).await;
    assert_eq!(got.status, 409, "resubmitted");
    assert!(got.text().contains("already submitted"));
    assert_eq!(kw.audit_lines().len(), audit_before);
    let got = b.post("/ui/agents/new", &[("id", "bot-1")]).await;
    assert_eq!(got.status, 409, "duplicate id");
    assert!(field_error(&got.text(), "id")
        .unwrap()
        .contains("already exists"));

    // Sessions.
    let page = b.get("/ui/sessions").await.text();
    for label in ["Agent", "Run id", "TTL"] {
        assert!(page.contains(&format!(">{label}</label>")));
    }
    let got = b
        .post(
            "/ui/sessions/new",
            &[("agent", "nobody"), ("run_id", "r1"), ("ttl", "15m")],
        )
        .await;
    assert_eq!(got.status, 404);
    assert!(field_error(&got.text(), "agent").is_some());
    let got = b
        .post(
            "/ui/sessions/new",
            &[("agent", "bot-1"), ("run_id", "r 1"), ("ttl", "15m")],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "run_id").is_some());
    let got = b
        .post(
            "/ui/sessions/new",
            &[("agent", "bot-1"), ("run_id", "run-7"), ("ttl", "soon")],
        )
        .await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "ttl").is_some());
    let (csrf, once) = b.form_tokens("/ui/sessions/new").await;
    let once = once.unwrap();
    let form = [
        ("agent", "bot-1"),
        ("run_id", "run-7"),
        ("ttl", "10m"),
        ("csrf", &csrf),
        ("once", &once),
    ];
    let got = b.post_raw("/ui/sessions/new", &form).await;
    assert_eq!(got.status, 201);
    let page = got.text();
    let session = page
        .split("id=\"f-token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let line = kw.last_audit();
    assert_eq!(line["event"], "session_create");
    assert_eq!(line["run_id"], "run-7");
    assert_eq!(line["reason"], "admin:ops");
    let audit_before = kw.audit_lines().len();
    let got = b.post_raw("/ui/sessions/new", &form).await;
    assert_eq!(got.status, 409, "a reload mints no second session");
    assert_eq!(kw.audit_lines().len(), audit_before);
    let got = kw
        .client_as("bot-1", &session)
        .get("api.openai.com", "/v1/models", &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(kw.last_audit()["run_id"], "run-7");

    // Remove: the agent's token stops working.
    let got = b.post("/ui/agents/remove", &[("id", "agent-1")]).await;
    assert_eq!(
        got.status, 409,
        "config agents are removed in the config file"
    );
    // Remove asks for the id to be typed; a mismatch changes nothing.
    let page = b.get("/ui/agents").await.text();
    assert!(
        page.contains("href=\"/ui/agents/remove?id=bot%2D1\""),
        "{page}"
    );
    assert!(page.contains("aria-label=\"Remove bot-1\""));
    let page = b.get("/ui/agents/remove?id=bot-1").await;
    assert_eq!(page.status, 200);
    let page = page.text();
    assert!(page.contains(">Type the agent id to confirm</label>"));
    assert!(page.contains(">Remove</button>"));
    assert_eq!(b.get("/ui/agents/remove?id=agent-1").await.status, 409);
    assert_eq!(b.get("/ui/agents/remove?id=nobody").await.status, 404);
    let audit_before = kw.audit_lines().len();
    let got = b
        .post("/ui/agents/remove", &[("id", "bot-1"), ("confirm", "bot")])
        .await;
    assert_eq!(got.status, 400);
    assert_eq!(code(&got).as_deref(), Some("bad_request"));
    assert!(field_error(&got.text(), "confirm").is_some());
    assert_eq!(kw.audit_lines().len(), audit_before);
    let still = kw
        .client_as("bot-1", &token)
        .get("api.openai.com", "/v1/models", &[])
        .await;
    assert_eq!(
        still.status, 200,
        "a refused removal leaves the agent working"
    );
    let got = b
        .post(
            "/ui/agents/remove",
            &[("id", "bot-1"), ("confirm", "bot-1")],
        )
        .await;
    assert_eq!(got.status, 303);
    let line = kw.last_audit();
    assert_eq!(line["event"], "agent_rm");
    assert_eq!(line["agent"], "bot-1");
    assert_eq!(line["reason"], "admin:ops");
    let refused = kw
        .client_as("bot-1", &token)
        .connect("api.openai.com:443")
        .await;
    assert_eq!(refused.err().map(|(status, _, _)| status), Some(407));
}

#[tokio::test]
async fn the_access_log_filters_pages_and_exports_what_audit_query_returns() {
    let kw = console_kw().start().await;
    let value = canary();
    kw.set_secret("platform", "OPENAI_API_KEY", &value);
    for _ in 0..3 {
        kw.client().get("api.openai.com", "/v1/models", &[]).await;
    }
    let refused = kw.client().connect("blocked.example.test:443").await;
    assert_eq!(refused.err().map(|(status, _, _)| status), Some(403));
    let b = Browser::of(&kw);
    b.sign_in(&tok(READER)).await;

    let page = b.get("/ui/access-log").await.text();
    for label in ["Secret", "Agent", "Chain", "Outcome", "Since", "Until"] {
        assert!(
            page.contains(&format!(">{label}</label>")),
            "filter {label}"
        );
    }
    assert!(page.contains(">Filter</button>"));
    assert!(page.contains(">Export JSONL</a>") && page.contains(">Export CEF</a>"));

    let page = b
        .get("/ui/access-log?secret=OPENAI_API_KEY&outcome=allowed")
        .await
        .text();
    // Each injection, and the echo upstream's echo of it redacted.
    assert!(page.contains("6 matching lines"), "{page}");
    assert_eq!(page.matches(">inject<").count(), 3);
    assert!(page.contains(">inject<"));
    let page = b.get("/ui/access-log?outcome=denied").await.text();
    assert!(!page.contains(">inject<"));

    let got = b.get("/ui/access-log?since=yesterday-ish").await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "since").is_some());
    let got = b.get("/ui/access-log?outcome=maybe").await;
    assert_eq!(got.status, 400);
    assert!(field_error(&got.text(), "outcome").is_some());

    let got = b
        .get("/ui/access-log/export.jsonl?secret=OPENAI_API_KEY")
        .await;
    assert_eq!(got.status, 200);
    assert!(got.headers["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let want: Vec<String> = std::fs::read_to_string(kw.audit_path())
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["secret"] == "OPENAI_API_KEY"
        })
        .map(str::to_string)
        .collect();
    assert_eq!(want.len(), 6);
    assert_eq!(got.text().lines().collect::<Vec<_>>(), want);
    let got = b
        .get("/ui/access-log/export.cef?secret=OPENAI_API_KEY")
        .await;
    assert_eq!(got.text().lines().count(), 6);
    assert!(got
        .text()
        .lines()
        .all(|l| l.starts_with("CEF:0|keyward|keyward|")));

    // Paging: 50 per page, newest first (53 injections, 53 redactions).
    for _ in 0..50 {
        kw.client().get("api.openai.com", "/v1/models", &[]).await;
    }
    let page = b.get("/ui/access-log?secret=OPENAI_API_KEY").await.text();
    assert!(page.contains("Page 1 of 3"));
    assert!(page.contains(">Older</a>"));
    let page = b
        .get("/ui/access-log?secret=OPENAI_API_KEY&page=3")
        .await
        .text();
    assert!(page.contains("Page 3 of 3") && page.contains(">Newer</a>"));
    assert!(!page.contains(">Older</a>"));

    let page = b.get("/ui/status").await.text();
    assert!(page.contains("Readiness checks"));
    assert!(page.contains(">Injections</dt><dd>53</dd>"), "{page}");
    assert_no_leak("console responses", &b.received(), &value);
}

#[tokio::test]
async fn unknown_console_paths_are_404_and_assets_are_embedded() {
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);
    let css = b.get("/ui/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert!(css.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let js = b.get("/ui/assets/console.js").await;
    assert!(js.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    for text in [css.text(), js.text()] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no external URL"
        );
    }
    b.sign_in(&tok(OPS)).await;
    let got = b.get("/ui/nothing").await;
    assert_eq!(got.status, 404);
    assert_eq!(code(&got).as_deref(), Some("not_found"));
    let got = b.post("/ui/nothing", &[]).await;
    assert_eq!(got.status, 404);
    let got = b.send("DELETE", "/ui/secrets", None).await;
    assert_eq!(got.status, 405);
    // The JSON API is untouched beside it.
    let got = b.get("/healthz").await;
    assert_eq!(got.status, 200);
}

/// `Due for rotation`: a secret with a rotation period shows its due date until
/// the period has passed, then the badge (the list renders the Rotation column
/// with `rotation_cell` at the current time; here at a time past the due date).
#[tokio::test]
async fn a_secret_past_its_rotation_period_is_due_for_rotation() {
    use keyward::admin::console::secrets::rotation_cell;
    let kw = console_kw().start().await;
    let b = Browser::of(&kw);
    b.sign_in(&tok(OPS)).await;
    let v = canary();
    for (name, every) in [("SHORT_KEY", "1h"), ("NO_PERIOD_KEY", "")] {
        let got = b
            .post(
                "/ui/secrets/new",
                &[
                    ("name", name),
                    ("scope", "platform"),
                    ("value", &v),
                    ("rotate_every", every),
                ],
            )
            .await;
        assert_eq!(got.status, 303, "{name}");
    }
    let meta = |name: &str| {
        kw.running
            .state
            .vault
            .list(Some("platform"))
            .into_iter()
            .find(|m| m.name == name)
            .unwrap()
    };
    let short = meta("SHORT_KEY");
    let due = short.due_at().expect("a rotation period gives a due time");
    let last = time::OffsetDateTime::parse(
        &short.last_rotated,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(due - last, time::Duration::hours(1));

    // Not yet due (the page renders at the current time, within the hour).
    let before = rotation_cell(&short, last).into_string();
    assert!(before.starts_with("due "), "{before}");
    assert!(!before.contains("Due for rotation"));
    let page = b.get("/ui/secrets").await.text();
    assert!(
        page.contains(&before),
        "the list shows the due date: {page}"
    );
    // Once the period has passed: the badge.
    for at in [due, due + time::Duration::days(30)] {
        let cell = rotation_cell(&short, at).into_string();
        assert!(cell.contains("badge due"), "{cell}");
        assert!(cell.contains(">Due for rotation<"), "{cell}");
    }
    // No period: never due.
    let none = meta("NO_PERIOD_KEY");
    assert!(none.due_at().is_none());
    let cell = rotation_cell(&none, due + time::Duration::days(365 * 10)).into_string();
    assert_eq!(cell, "—");
    assert_no_leak("console responses", &b.received(), &v);
}
