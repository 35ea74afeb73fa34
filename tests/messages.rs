//! What a client that shows only a CONNECT's status line still learns (issue 15):
//! every CONNECT refusal carries `Proxy-Status` (RFC 9209) with the keyward code
//! (SPEC §5.4), and the 407 message fits a missing and a wrong token alike.

mod common;

use common::*;

/// The one `Proxy-Status` value a refusal with `code` carries.
fn proxy_status(rfc_type: &str, code: &str) -> String {
    format!("keyward; error={rfc_type}; details=\"{code}\"")
}

/// The value of header `name` in a raw response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Raw CONNECTs refused for a missing token, a wrong token, a host and a port:
/// each answers its status with `x-keyward-error`, `Proxy-Status` and one audit
/// line, and the upstream sees nothing.
#[tokio::test]
async fn connect_refusals_carry_proxy_status_with_the_keyward_code() {
    let kw = Kw::builder().start().await;
    let mut anonymous = kw.client();
    anonymous.auth = None;
    let wrong = kw.client_as(AGENT, "not-the-token");
    let ok = kw.client();
    let cases = [
        (
            &anonymous,
            "api.openai.com:443",
            407,
            "proxy_auth_required",
            "http_request_denied",
            "auth_fail",
        ),
        (
            &wrong,
            "api.openai.com:443",
            407,
            "proxy_auth_required",
            "http_request_denied",
            "auth_fail",
        ),
        (
            &ok,
            "not-allowed.example.test:443",
            403,
            "host_not_allowed",
            "http_request_denied",
            "deny",
        ),
        (
            &ok,
            "api.openai.com:8443",
            403,
            "port_not_allowed",
            "http_request_denied",
            "deny",
        ),
    ];
    let mut auth_messages = Vec::new();
    for (client, authority, status, code, rfc_type, event) in cases {
        let before = kw.audit_lines().len();
        let (got, head, body) = client.connect(authority).await.expect_err("a refusal");
        assert_eq!(got, status, "{authority}: {head}");
        assert_eq!(head_error_code(&head).as_deref(), Some(code), "{head}");
        assert_eq!(
            header(&head, "proxy-status"),
            Some(proxy_status(rfc_type, code).as_str()),
            "{authority}: {head}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], format!("keyward.{code}"));
        if status == 407 {
            assert!(header(&head, "proxy-authenticate").is_some(), "{head}");
            auth_messages.push(json["error"]["message"].as_str().unwrap().to_string());
            assert_no_leak("the 407", &body, "not-the-token");
        }
        let lines = kw.audit_lines();
        assert_eq!(lines.len(), before + 1, "{authority}: {lines:?}");
        let line = &lines[before];
        assert_eq!(line["event"], event);
        assert_eq!(line["reason"], code);
        assert_eq!(line["status"], status);
    }
    // One text for a missing and a wrong token, saying what to send.
    assert_eq!(auth_messages[0], auth_messages[1]);
    let msg = &auth_messages[0];
    assert!(
        msg.contains("Proxy-Authorization: Basic base64(agent_id:token)")
            && msg.contains("missing or wrong"),
        "{msg}"
    );
    assert_eq!(
        kw.upstream.connection_count(),
        0,
        "the upstream saw nothing"
    );
}

/// curl shows only the CONNECT status by default; with `-v` the `Proxy-Status`
/// (the code an operator can look up) is on its screen.
#[tokio::test]
async fn curl_shows_the_proxy_status_of_a_refused_connect() {
    let test = "curl_shows_the_proxy_status_of_a_refused_connect";
    let Some(curl) = tools::require("curl", test) else {
        return;
    };
    let kw = Kw::builder().start().await;
    let ca = kw.dir.path().join("ca.pem");
    let addr = kw.addr();
    for (userinfo, url, code) in [
        (
            format!("{AGENT}:wrong-token"),
            "https://api.openai.com/v1/models",
            "proxy_auth_required",
        ),
        (
            format!("{AGENT}:{TOKEN}"),
            "https://not-allowed.example.test/",
            "host_not_allowed",
        ),
    ] {
        let (curl, ca) = (curl.clone(), ca.clone());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(curl)
                .args(["-sS", "-v", "--noproxy", "", "--cacert"])
                .arg(&ca)
                .arg("--proxy")
                .arg(format!("http://{userinfo}@{addr}"))
                .arg(url)
                .env_remove("HTTPS_PROXY")
                .env_remove("https_proxy")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let want = format!(
            "< {}: {}",
            "proxy-status",
            proxy_status("http_request_denied", code)
        );
        assert!(
            stderr
                .to_ascii_lowercase()
                .contains(&want.to_ascii_lowercase()),
            "{code}: {stderr}"
        );
    }
    assert_eq!(kw.upstream.connection_count(), 0);
}

/// `keyward serve` with `key` set to an address another process holds: exit 1,
/// one line naming the key, the address and the likely cause.
fn serve_on_a_busy_port(key_section: &str, extra: &str) -> (String, std::net::SocketAddr) {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = format!(
        "[proxy]\nlisten = \"{}\"\n{extra}\
         [tls]\nca_cert = \"{d}/certs/ca.pem\"\nca_key = \"{d}/certs/ca.key\"\n\
         [vault]\npath = \"{d}/data/vault.kw\"\nmaster_key_file = \"{d}/certs/master.key\"\n\
         [audit]\npath = \"{d}/data/audit.jsonl\"\n",
        if key_section == "proxy" {
            addr.to_string()
        } else {
            "127.0.0.1:0".into()
        }
    )
    .replace("{busy}", &addr.to_string());
    std::fs::write(dir.path().join("k.toml"), config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["serve", "--config", "k.toml"])
        .current_dir(dir.path())
        .env("KEYWARD_LOG", "off")
        .env_remove("KEYWARD_MASTER_KEY")
        .env_remove("KEYWARD_MASTER_PASSPHRASE")
        .output()
        .unwrap();
    drop(busy);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    (stderr, addr)
}

#[test]
fn serve_on_a_busy_proxy_port_names_proxy_listen() {
    let (err, addr) = serve_on_a_busy_port("proxy", "");
    assert!(
        err.starts_with(&format!(
            "keyward: proxy.listen {addr} is in use — is another keyward running?"
        )),
        "{err}"
    );
}

#[test]
fn serve_on_a_busy_admin_port_names_admin_listen() {
    let (err, addr) = serve_on_a_busy_port("admin", "[admin]\nlisten = \"{busy}\"\n");
    assert!(
        err.starts_with(&format!(
            "keyward: admin.listen {addr} is in use — is another keyward running?"
        )),
        "{err}"
    );
}

/// `allow_private = ["127.0.0.1"]` is the address itself (/32): an intercepted
/// provider on 127.0.0.1 is reached; with another single address it is refused.
#[tokio::test]
async fn allow_private_takes_a_bare_address() {
    const KEY: &str = "sk-openai-real-0123456789abcdef";
    let kw = Kw::builder().allow_private(&["127.0.0.1"]).start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        kw.upstream.last().headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );

    let kw = Kw::builder().allow_private(&["127.0.0.2"]).start().await;
    kw.set_secret("platform", "OPENAI_API_KEY", KEY);
    let got = kw.client().get("api.openai.com", "/v1/models", &[]).await;
    assert_eq!(
        got.error_code().as_deref(),
        Some("private_address"),
        "{}",
        got.text()
    );
    assert!(kw.upstream.requests().is_empty());
}
