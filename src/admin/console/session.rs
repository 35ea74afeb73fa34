//! Console sign-in sessions, held in memory by the admin listener: a random id in
//! the cookie (only its SHA-256 is a key here), the admin token it signed in with
//! (zeroized), a per-session CSRF token, and an idle clock.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Most sessions held at once; past this the least recently used one ends.
pub const MAX_SESSIONS: usize = 1_024;
/// Bytes of randomness in a session id and in a CSRF token.
const ID_BYTES: usize = 32;
/// Show-once forms a session remembers having accepted (their `once` field).
const MAX_SPENT: usize = 64;

/// One signed-in browser.
struct Entry {
    /// The admin token it signed in with: every request is re-authorized with it
    /// against the live config, through the same check as the admin API.
    token: Zeroizing<String>,
    csrf: String,
    last_seen: Instant,
    /// `once` values of show-once forms already accepted, newest last.
    spent: VecDeque<String>,
}

/// What a request learns about its session.
pub struct Signed {
    /// The cookie value (to end the session).
    pub id: String,
    pub token: Zeroizing<String>,
    pub csrf: String,
}

/// The sessions of one admin listener.
#[derive(Default)]
pub struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
}

/// A new random hex string of [`ID_BYTES`] bytes.
pub fn random_hex() -> String {
    let mut b = [0u8; ID_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    hex::encode(b)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl SessionStore {
    /// Starts a session for `token`; returns the cookie value.
    pub fn create(&self, token: Zeroizing<String>, idle: Duration) -> String {
        let id = random_hex();
        let mut map = self.sessions.lock();
        let now = Instant::now();
        map.retain(|_, e| now.duration_since(e.last_seen) <= idle);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            key(&id),
            Entry {
                token,
                csrf: random_hex(),
                last_seen: now,
                spent: VecDeque::new(),
            },
        );
        id
    }

    /// The live session `id`, its idle clock restarted; `None` when unknown or
    /// idle for longer than `idle` (then it is gone).
    pub fn touch(&self, id: &str, idle: Duration) -> Option<Signed> {
        let k = key(id);
        let mut map = self.sessions.lock();
        let now = Instant::now();
        let entry = map.get_mut(&k)?;
        // SECURITY: an idle session ends for good; the next request must sign in.
        if now.duration_since(entry.last_seen) > idle {
            map.remove(&k);
            return None;
        }
        entry.last_seen = now;
        Some(Signed {
            id: id.to_string(),
            token: entry.token.clone(),
            csrf: entry.csrf.clone(),
        })
    }

    /// Accepts a show-once form's `once` value the first time only, so a reload or
    /// a resubmission of "New agent"/"New session" cannot mint (and show) a token.
    pub fn spend(&self, id: &str, once: Option<&str>) -> bool {
        let Some(once) = once.filter(|o| o.len() == 2 * ID_BYTES) else {
            return false;
        };
        let mut map = self.sessions.lock();
        let Some(entry) = map.get_mut(&key(id)) else {
            return false;
        };
        if entry.spent.iter().any(|s| s == once) {
            return false;
        }
        if entry.spent.len() == MAX_SPENT {
            entry.spent.pop_front();
        }
        entry.spent.push_back(once.to_string());
        true
    }

    /// Ends session `id` (Sign out, or its token was revoked).
    pub fn remove(&self, id: &str) {
        self.sessions.lock().remove(&key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_end_on_remove() {
        let store = SessionStore::default();
        let long = Duration::from_secs(60);
        let id = store.create(Zeroizing::new("tok".into()), long);
        assert_eq!(id.len(), 64);
        let s = store.touch(&id, long).expect("live");
        assert_eq!(s.token.as_str(), "tok");
        assert!(store.touch("nope", long).is_none());
        let once = random_hex();
        assert!(store.spend(&id, Some(&once)));
        assert!(!store.spend(&id, Some(&once)), "a form is accepted once");
        assert!(!store.spend(&id, None) && !store.spend(&id, Some("short")));
        store.remove(&id);
        assert!(store.touch(&id, long).is_none());

        let id = store.create(Zeroizing::new("tok".into()), long);
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            store.touch(&id, Duration::from_millis(1)).is_none(),
            "idle: gone"
        );
        assert!(store.touch(&id, long).is_none(), "and gone for good");
    }
}
