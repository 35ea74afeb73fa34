//! Sealing primitives: AES-256-GCM records under a data key wrapped by the master key.
//!
//! Key hierarchy (see docs/vault.md):
//! ```text
//! master key ──HKDF "wrap"────────► wrapping key ──AES-GCM──► wrapped data key (in the file)
//!            ├─HKDF "master-key-id"► key id (8 bytes, in the file header)
//!            └─HKDF "session-token"► session key (signs session tokens)
//! data key   ──HKDF "record-seal/N"► sealing key of epoch N (records)
//!            └─HKDF "file-mac"─────► HMAC-SHA256 key over the whole file
//! ```
//! Every sealed blob is self-describing: `"KWS" | format | key id | nonce | ciphertext+tag`.

use super::error::VaultError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const KEY_ID_LEN: usize = 8;
pub const MAC_LEN: usize = 32;
/// Magic of every sealed blob (records and the wrapped data key).
pub const SEAL_MAGIC: &[u8; 3] = b"KWS";
/// Format version of a sealed blob.
pub const SEAL_FORMAT: u8 = 1;
const SEAL_HEADER_LEN: usize = SEAL_MAGIC.len() + 1 + KEY_ID_LEN + NONCE_LEN;

/// HKDF labels: one per purpose, so no key is ever used for two things.
pub const LABEL_WRAP: &str = "keyward/v1/data-key-wrap";
pub const LABEL_MASTER_KEY_ID: &str = "keyward/v1/master-key-id";
pub const LABEL_SESSION: &str = "keyward/v1/session-token";
pub const LABEL_RECORD_SEAL: &str = "keyward/v1/record-seal/";
pub const LABEL_FILE_MAC: &str = "keyward/v1/file-mac";
/// Domain separators of the associated data.
const AAD_RECORD: &[u8] = b"keyward/v1/record";
const AAD_WRAP: &[u8] = b"keyward/v1/wrapped-data-key";

/// Argon2id parameters for `KEYWARD_MASTER_PASSPHRASE` (t=3, m=64 MiB, p=4).
pub const ARGON2_T_COST: u32 = 3;
pub const ARGON2_M_COST_KIB: u32 = 64 * 1024;
pub const ARGON2_P_COST: u32 = 4;
pub const ARGON2_SALT_LEN: usize = 16;

/// A 256-bit key, zeroized on drop, never printed.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Key(Zeroizing::new(arr)))
    }

    pub fn random() -> Key {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        Key(k)
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256 sub-key for `label`.
    pub fn derive(&self, label: &str) -> Key {
        let hk = Hkdf::<Sha256>::new(None, &self.0[..]);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        // Cannot fail: 32 bytes is far below HKDF-SHA256's 255*32 limit.
        if hk.expand(label.as_bytes(), &mut out[..]).is_err() {
            unreachable!("HKDF output length is fixed and valid");
        }
        Key(out)
    }

    /// Public identifier of this key (one-way; reveals nothing about it).
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        let d = self.derive(LABEL_MASTER_KEY_ID);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.0[..KEY_ID_LEN]);
        id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

/// Master key derived from a passphrase with Argon2id.
pub fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    t: u32,
    m_kib: u32,
    p: u32,
) -> Result<Key, VaultError> {
    let params = argon2::Params::new(m_kib, t, p, Some(KEY_LEN))
        .map_err(|e| VaultError::Invalid(format!("invalid Argon2id parameters: {e}")))?;
    let a2 = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    a2.hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|e| VaultError::Invalid(format!("Argon2id key derivation failed: {e}")))?;
    Ok(Key(out))
}

/// A sealed blob: `"KWS" | format u8 | key id (8) | nonce (12) | ciphertext+tag`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: [u8; KEY_ID_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key {}, {} bytes)",
            hex::encode(self.key_id),
            self.ciphertext.len()
        )
    }
}

impl Sealed {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SEAL_HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(SEAL_MAGIC);
        out.push(SEAL_FORMAT);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses a blob; the error is a short description of what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Sealed, &'static str> {
        if bytes.len() < SEAL_HEADER_LEN + TAG_LEN {
            return Err("sealed blob too short");
        }
        if &bytes[..SEAL_MAGIC.len()] != SEAL_MAGIC {
            return Err("sealed blob has a bad magic");
        }
        if bytes[SEAL_MAGIC.len()] != SEAL_FORMAT {
            return Err("sealed blob has an unsupported format version");
        }
        let mut at = SEAL_MAGIC.len() + 1;
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&bytes[at..at + KEY_ID_LEN]);
        at += KEY_ID_LEN;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[at..at + NONCE_LEN]);
        at += NONCE_LEN;
        Ok(Sealed {
            key_id,
            nonce,
            ciphertext: bytes[at..].to_vec(),
        })
    }

    /// The key epoch of a record blob (its key id as a big-endian integer).
    pub fn epoch(&self) -> u64 {
        u64::from_be_bytes(self.key_id)
    }
}

/// Encrypts `plaintext` with a fresh random 96-bit nonce.
pub fn seal(
    key: &Key,
    key_id: [u8; KEY_ID_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, VaultError> {
    // SECURITY: a fresh random nonce per encryption; GCM loses both confidentiality
    // and authenticity if a (key, nonce) pair ever repeats (see SEAL_LIMIT_PER_KEY).
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| VaultError::Invalid("encryption failed".into()))?;
    Ok(Sealed {
        key_id,
        nonce,
        ciphertext,
    })
}

/// Decrypts and authenticates; `None` if the key, blob or associated data is wrong.
pub fn open(key: &Key, sealed: &Sealed, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    key.cipher()
        .decrypt(
            Nonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Sealing key of records in `epoch`.
pub fn record_key(data_key: &Key, epoch: u64) -> Key {
    data_key.derive(&format!("{LABEL_RECORD_SEAL}{epoch}"))
}

/// Associated data of a record: binds the value to its identity and host list, so a
/// blob moved to another record, name, scope or version, or whose hosts were
/// edited, fails to open. Every field is length-prefixed (no ambiguity).
pub fn record_aad(id: &str, scope: &str, name: &str, version: u32, hosts: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    push_field(&mut out, AAD_RECORD);
    push_field(&mut out, id.as_bytes());
    push_field(&mut out, scope.as_bytes());
    push_field(&mut out, name.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(hosts.len() as u32).to_be_bytes());
    for h in hosts {
        push_field(&mut out, h.as_bytes());
    }
    out
}

/// Associated data of the wrapped data key: binds it to the master key id.
pub fn wrap_aad(master_key_id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    push_field(&mut out, AAD_WRAP);
    push_field(&mut out, master_key_id);
    out
}

/// Domain separator of the kind extension of a record's associated data.
const AAD_KIND: &[u8] = b"keyward/v1/record-kind";

/// Extends a record's associated data with its kind and public fields. Records of
/// the default kind (`api_key`) carry no extension, so files written before kinds
/// existed keep opening; any other kind, and its fields (an OAuth2 token URL), are
/// bound: editing them in the file makes the record fail to open.
pub fn extend_record_aad(
    aad: &mut Vec<u8>,
    kind: &str,
    public: &std::collections::BTreeMap<String, String>,
) {
    push_field(aad, AAD_KIND);
    push_field(aad, kind.as_bytes());
    aad.extend_from_slice(&(public.len() as u32).to_be_bytes());
    for (k, v) in public {
        push_field(aad, k.as_bytes());
        push_field(aad, v.as_bytes());
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// Wraps `data_key` under `master`.
pub fn wrap_data_key(master: &Key, data_key: &Key) -> Result<Sealed, VaultError> {
    let id = master.key_id();
    seal(
        &master.derive(LABEL_WRAP),
        id,
        &wrap_aad(&id),
        data_key.expose(),
    )
}

/// Unwraps the data key; `None` if `master` is not the key it was wrapped under.
pub fn unwrap_data_key(master: &Key, wrapped: &Sealed) -> Option<Key> {
    let id = master.key_id();
    let plain = open(&master.derive(LABEL_WRAP), wrapped, &wrap_aad(&id))?;
    Key::from_bytes(&plain)
}

/// HMAC-SHA256 of the file body.
pub fn file_mac(data_key: &Key, bytes: &[u8]) -> [u8; MAC_LEN] {
    let mac_key = data_key.derive(LABEL_FILE_MAC);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.expose())
        .unwrap_or_else(|_| unreachable!("any key length"));
    m.update(bytes);
    m.finalize().into_bytes().into()
}

/// Constant-time check of a file MAC.
pub fn verify_file_mac(data_key: &Key, bytes: &[u8], tag: &[u8]) -> bool {
    let mac_key = data_key.derive(LABEL_FILE_MAC);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.expose())
        .unwrap_or_else(|_| unreachable!("any key length"));
    m.update(bytes);
    m.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// AES-256-GCM known answers: test cases 13–16 of McGrew & Viega, "The Galois/Counter
    /// Mode of Operation (GCM)" (the NIST submission), which pin the primitive and our use
    /// of it (nonce length, tag appended to the ciphertext, AAD handling).
    #[test]
    fn aes_256_gcm_known_answer_vectors() {
        let k0 = "0000000000000000000000000000000000000000000000000000000000000000";
        let kf = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let p64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
        let c64 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                   8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";
        let cases: &[(&str, &str, &str, &str, &str, &str)] = &[
            // (key, iv, plaintext, aad, ciphertext, tag)
            (
                k0,
                "000000000000000000000000",
                "",
                "",
                "",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                k0,
                "000000000000000000000000",
                "00000000000000000000000000000000",
                "",
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                kf,
                "cafebabefacedbaddecaf888",
                p64,
                "",
                c64,
                "b094dac5d93471bdec1a502270e3cc6c",
            ),
            (
                kf,
                "cafebabefacedbaddecaf888",
                &p64[..120],
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                &c64[..120],
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (i, (k, iv, p, a, c, t)) in cases.iter().enumerate() {
            let key = Key::from_bytes(&h(k)).unwrap();
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&h(iv));
            let ct = key
                .cipher()
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &h(p),
                        aad: &h(a),
                    },
                )
                .unwrap();
            let mut want = h(c);
            want.extend_from_slice(&h(t));
            assert_eq!(hex::encode(&ct), hex::encode(&want), "vector {i}");
            let sealed = Sealed {
                key_id: [0; KEY_ID_LEN],
                nonce,
                ciphertext: ct,
            };
            assert_eq!(
                open(&key, &sealed, &h(a)).unwrap().as_slice(),
                h(p).as_slice(),
                "vector {i}"
            );
            let mut bad = sealed.clone();
            bad.ciphertext[0] ^= 1;
            assert!(
                open(&key, &bad, &h(a)).is_none(),
                "vector {i}: tampered ciphertext opened"
            );
        }
    }

    #[test]
    fn sealed_blob_round_trips_and_rejects_garbage() {
        let key = Key::random();
        let s = seal(&key, 7u64.to_be_bytes(), b"aad", b"value").unwrap();
        let enc = s.encode();
        assert_eq!(&enc[..3], SEAL_MAGIC);
        let back = Sealed::decode(&enc).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.epoch(), 7);
        assert_eq!(open(&key, &back, b"aad").unwrap().as_slice(), b"value");
        assert!(open(&key, &back, b"other").is_none());
        assert!(Sealed::decode(&enc[..10]).is_err());
        let mut bad = enc.clone();
        bad[0] = b'X';
        assert!(Sealed::decode(&bad).is_err());
        let mut bad = enc;
        bad[3] = 9;
        assert!(Sealed::decode(&bad).is_err());
    }

    #[test]
    fn nonces_are_fresh_per_seal() {
        let key = Key::random();
        let a = seal(&key, [0; 8], b"", b"same").unwrap();
        let b = seal(&key, [0; 8], b"", b"same").unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn subkeys_are_distinct_per_label() {
        let k = Key::random();
        let labels = [
            LABEL_WRAP,
            LABEL_MASTER_KEY_ID,
            LABEL_SESSION,
            LABEL_FILE_MAC,
        ];
        let mut seen: Vec<[u8; KEY_LEN]> = labels.iter().map(|l| *k.derive(l).expose()).collect();
        seen.push(*record_key(&k, 0).expose());
        seen.push(*record_key(&k, 1).expose());
        seen.push(*k.expose());
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n);
    }

    #[test]
    fn wrapped_data_key_needs_the_right_master() {
        let m1 = Key::random();
        let m2 = Key::random();
        let dk = Key::random();
        let w = wrap_data_key(&m1, &dk).unwrap();
        assert_eq!(unwrap_data_key(&m1, &w).unwrap().expose(), dk.expose());
        assert!(unwrap_data_key(&m2, &w).is_none());
    }

    #[test]
    fn record_aad_is_unambiguous() {
        let a = record_aad("id", "platform", "AB", 1, &[]);
        let b = record_aad("id", "platfor", "mAB", 1, &[]);
        assert_ne!(a, b);
        let c = record_aad("id", "platform", "AB", 1, &["a.com".into(), "b.com".into()]);
        let d = record_aad("id", "platform", "AB", 1, &["a.comb.com".into()]);
        assert_ne!(c, d);
    }

    #[test]
    fn file_mac_detects_any_change() {
        let k = Key::random();
        let tag = file_mac(&k, b"body");
        assert!(verify_file_mac(&k, b"body", &tag));
        assert!(!verify_file_mac(&k, b"bodY", &tag));
        assert!(!verify_file_mac(&Key::random(), b"body", &tag));
    }

    #[test]
    fn debug_of_keys_is_redacted() {
        let k = Key::from_bytes(&[0x41; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "Key(***)");
    }
}
