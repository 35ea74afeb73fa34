//! Leak canaries: every form a secret or token could leak in, and a capture of
//! keyward's own log (shared by the leak tests).

use base64::Engine;
use std::sync::{Arc, Mutex, OnceLock};

/// Every form `needle` could leak in: plain, hex (both cases), percent-encoded,
/// and base64/base64url at each alignment (only the needle-only middle is probed).
pub fn leak_forms(needle: &str) -> Vec<String> {
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut forms = vec![
        needle.to_string(),
        hex::encode(needle),
        hex::encode_upper(needle),
        percent_encoding::utf8_percent_encode(needle, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    ];
    for pad in 0..3 {
        let mut input = vec![b'#'; pad];
        input.extend_from_slice(needle.as_bytes());
        for enc in [std_b64.encode(&input), url_b64.encode(&input)] {
            // Skip the chars mixing in the prefix and the (padded) tail.
            forms.push(enc[4..enc.len() - 4].to_string());
        }
    }
    forms
}

/// Asserts `needle` appears in `haystack` in none of [`leak_forms`].
pub fn assert_no_leak_any(what: &str, haystack: &[u8], needle: &str) {
    let hay = String::from_utf8_lossy(haystack);
    for form in leak_forms(needle) {
        assert!(
            !hay.contains(&form),
            "{what} leaks the canary (form {form})"
        );
    }
    super::assert_no_leak(what, haystack, needle);
}

/// keyward's own log for this test binary (all keyward targets, trace).
pub fn log_capture() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("keyward=trace,hyper_util=debug,rustls=debug")
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
