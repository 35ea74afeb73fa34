//! Leak checks: the one `assert_no_leak` (every form a secret, token or marker
//! could leak in) and a capture of keyward's own log (shared by the leak tests).

use base64::Engine;
use std::sync::{Arc, Mutex, OnceLock};

/// Probes shorter than this are not searched (too likely to match by chance).
const MIN_PROBE: usize = 4;
/// Characters cut from each end of an encoding before it is probed: base64 of a
/// value mixes its edges with what surrounds it, and a partial leak of the
/// middle is a leak too.
const EDGE: usize = 4;

/// Every form `canary` could leak in: plain, hex (both cases), percent-encoded,
/// base64/base64url (padded and not) at each 3-byte alignment; each whole and, when
/// long enough, as its middle alone.
pub fn leak_forms(canary: &[u8]) -> Vec<Vec<u8>> {
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let url_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let whole = [
        canary.to_vec(),
        hex::encode(canary).into_bytes(),
        hex::encode_upper(canary).into_bytes(),
        percent_encoding::percent_encode(canary, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .into_bytes(),
        std_b64.encode(canary).into_bytes(),
        url_b64.encode(canary).into_bytes(),
    ];
    let mut forms = Vec::new();
    // Shifted by a prefix of 1 or 2 bytes: only the canary-only middle is its own.
    for pad in 1..3 {
        let mut input = vec![b'#'; pad];
        input.extend_from_slice(canary);
        for enc in [std_b64.encode(&input), url_b64.encode(&input)] {
            forms.extend(middle(enc.as_bytes()).map(<[u8]>::to_vec));
        }
    }
    for form in whole {
        forms.extend(middle(&form).map(<[u8]>::to_vec));
        forms.push(form);
    }
    forms.retain(|f| f.len() >= MIN_PROBE);
    forms.sort();
    forms.dedup();
    forms
}

/// `form` without `EDGE` bytes at each end, if more than `EDGE` are left.
fn middle(form: &[u8]) -> Option<&[u8]> {
    (form.len() > 3 * EDGE).then(|| &form[EDGE..form.len() - EDGE])
}

/// Asserts `canary` (a secret, token or marker) appears in `haystack` in none of
/// [`leak_forms`]; `what` names the haystack in the failure.
pub fn assert_no_leak(what: &str, haystack: &[u8], canary: impl AsRef<[u8]>) {
    let canary = canary.as_ref();
    assert!(!canary.is_empty(), "an empty canary proves nothing");
    for form in leak_forms(canary) {
        assert!(
            !haystack.windows(form.len()).any(|w| w == form.as_slice()),
            "{what} leaks the canary (form {})",
            String::from_utf8_lossy(&form)
        );
    }
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
