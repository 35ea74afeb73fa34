//! Agent tokens in the wrong place of `Proxy-Authorization` (the common slip
//! `HTTPS_PROXY=http://kwa_TOKEN@keyward:3128` sends the token as the user name)
//! must not land in the audit log, keyward's log or the 407 answer (SPEC §8: the
//! audit log never contains a token).

mod common;

use base64::Engine;
use common::leaks::log_capture;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A fresh token shaped like the real ones (`kwa_` + 43 base64url chars).
fn token_canary() -> String {
    keyward::ids::new_token()
}

/// The token in every leak form, and its random part alone (should a prefix be
/// stripped on the way).
fn assert_no_token(what: &str, haystack: &[u8], needle: &str) {
    assert_no_leak(what, haystack, needle);
    let hay = String::from_utf8_lossy(haystack);
    let random = needle.trim_start_matches("kwa_");
    assert!(
        !hay.contains(random),
        "{what} leaks the token's random part"
    );
}

/// CONNECT with `user:password` as Basic credentials; the whole answer, raw.
async fn connect_as(kw: &Kw, user: &str, password: &str) -> (u16, Vec<u8>) {
    let mut c = kw.client();
    c.auth = Some((user.to_string(), password.to_string()));
    match c.connect("api.openai.com:443").await {
        Ok(_) => panic!("{user:?} was let in"),
        Err((status, head, body)) => {
            let mut all = head.into_bytes();
            all.extend_from_slice(&body);
            (status, all)
        }
    }
}

/// The same mistake on a plain-HTTP (absolute-form) request.
async fn plain_http_as(kw: &Kw, user: &str, password: &str) -> (u16, Vec<u8>) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut s = TcpStream::connect(kw.addr()).await.unwrap();
    let req = format!(
        "GET http://pypi.example.test/simple/ HTTP/1.1\r\nHost: pypi.example.test\r\n\
         Proxy-Authorization: Basic {basic}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, head, body) = read_head(&mut s).await;
    let mut all = head.into_bytes();
    all.extend_from_slice(&body);
    (status, all)
}

#[tokio::test]
async fn token_sent_as_the_user_name_or_with_an_unknown_id_leaks_nowhere() {
    let log = log_capture();
    let kw = Kw::builder().start().await;
    let token = token_canary();
    let mut answers = Vec::new();
    // `http://kwa_TOKEN@keyward:3128`: curl sends `kwa_TOKEN:`.
    answers.push(connect_as(&kw, &token, "").await);
    answers.push(plain_http_as(&kw, &token, "").await);
    // The token where it belongs, under an id nobody registered.
    answers.push(connect_as(&kw, "nobody", &token).await);
    // The token in both places.
    answers.push(connect_as(&kw, &token, &token).await);

    for (i, (status, raw)) in answers.iter().enumerate() {
        assert_eq!(*status, 407, "answer {i}: {}", String::from_utf8_lossy(raw));
        assert_no_token(&format!("407 answer {i}"), raw, &token);
    }
    let lines = kw.audit_lines();
    assert_eq!(
        lines.len(),
        answers.len(),
        "one line per refusal: {lines:?}"
    );
    for l in &lines {
        assert_eq!(l["event"], "auth_fail");
        assert!(
            l.get("agent").is_none(),
            "no agent named for an unknown id: {l}"
        );
    }
    let audit = std::fs::read(kw.audit_path()).unwrap();
    assert_no_token("audit log", &audit, &token);
    let text = log.lock().unwrap().clone();
    assert!(!text.is_empty(), "the log capture works");
    assert_no_token("keyward log", &text, &token);
}

#[tokio::test]
async fn wrong_token_for_a_known_agent_names_it_in_the_audit_but_not_in_the_answer() {
    let kw = Kw::builder().start().await;
    let wrong = token_canary();
    let (status, raw) = connect_as(&kw, AGENT, &wrong).await;
    assert_eq!(status, 407);
    assert_no_token("407 answer", &raw, &wrong);
    // The answer is the same whether or not the id exists, so it does not tell a
    // caller which agent ids are real.
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body: serde_json::Value = serde_json::from_slice(&raw[body_start..]).unwrap();
    assert!(body["error"]["agent"].is_null(), "{body}");
    let line = kw.last_audit();
    assert_eq!(line["event"], "auth_fail");
    assert_eq!(line["agent"], AGENT, "forensics: who was tried");
    assert_no_token(
        "audit log",
        &std::fs::read(kw.audit_path()).unwrap(),
        &wrong,
    );
}
