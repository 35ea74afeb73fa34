//! The log-structured vault file (format 3): a base (the whole vault as of one
//! version, MAC'd like formats 1 and 2) followed by one appended entry per write,
//! each MAC-chained to the one before. See docs/vault.md ("File format 3").
//!
//! ```text
//! keyward-vault 3                    magic and format version
//! {…base body, one line…}            counter C, header, seal state, chain value at C,
//!                                    records, agents
//! mac <64 hex>                       HMAC-SHA256 (file-MAC key) over the two lines above
//! e <64 hex> {"counter":C+1,…}       entry: chain value at C+1, then its JSON
//! e <64 hex> {"counter":C+2,…}       chain(n) = HMAC(chain key, chain(n-1) | JSON(n))
//! ```
//!
//! The chain value of the newest version is the file's identity for rollback
//! detection (the `.counter` file): a compacted file carries the chain value of
//! the version it was compacted at, so compaction does not look like a fork.

use crate::vault::crypto::{self, Key, MAC_LEN};
use crate::vault::error::{ferr, VaultError};
use crate::vault::format::{
    unlock_data_key, AgentRecord, FileBody, MasterHeader, SealState, StoredRecord, FILE_MAGIC,
};
use crate::vault::master::{KdfParams, MasterKey};
use crate::vault::snapshot::{Edit, Snapshot};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, Serializer};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;

/// The format number of a log-structured file.
pub(super) const LOG_FORMAT: u32 = 3;
/// A log file larger than this is refused before it is parsed (it is not ours).
pub(super) const MAX_LOG_FILE_BYTES: u64 = 1 << 30;
/// HKDF label of the entry-chain MAC key (derived from the data key).
const LABEL_LOG_CHAIN: &str = "keyward/v1/log-chain";
/// HKDF-style domain label of the chain value of a fresh (empty) vault.
const GENESIS: &[u8] = b"keyward/v1/log-genesis";
/// The domain label of the chain value of a rewrite that changes the header.
const REWRITE: &[u8] = b"keyward/v1/log-rewrite";
const MAC_LINE_PREFIX: &[u8] = b"mac ";
const ENTRY_PREFIX: &[u8] = b"e ";
const HEX_MAC_LEN: usize = MAC_LEN * 2;

/// One appended write: the version it makes, the seal state after it, and what
/// it changed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub(super) counter: u64,
    pub(super) seal: SealState,
    pub(super) edits: Vec<Edit>,
}

/// The base body as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseIn {
    counter: u64,
    master: MasterHeader,
    data_key: String,
    seal: SealState,
    chain: String,
    records: Vec<StoredRecord>,
    #[serde(default)]
    agents: Vec<AgentRecord>,
}

/// The base body as written, borrowing the snapshot's records (no copy of them).
#[derive(Serialize)]
struct BaseOut<'a> {
    counter: u64,
    master: &'a MasterHeader,
    data_key: &'a str,
    seal: &'a SealState,
    chain: &'a str,
    records: Records<'a>,
    agents: &'a [AgentRecord],
}

struct Records<'a>(&'a Snapshot);

impl Serialize for Records<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.stored_records())
    }
}

/// The verified state of a vault at one version: everything a write needs besides
/// the file position.
#[derive(Clone)]
pub(super) struct State {
    pub(super) snap: Arc<Snapshot>,
    pub(super) master: MasterHeader,
    /// The wrapped data key (base64), as in the header.
    pub(super) wrapped: String,
    pub(super) data_key: Arc<Key>,
    pub(super) seal: SealState,
    pub(super) counter: u64,
    /// Identity of this version (hex): the chain value, or a format-1/2 file's MAC.
    pub(super) chain: String,
}

impl State {
    /// The state of a format-1/2 file (its MAC becomes the chain value, so a
    /// migrated file keeps the identity the `.counter` file recorded).
    pub(super) fn of_body(
        body: FileBody,
        data_key: Arc<Key>,
        mac: String,
        path: &Path,
        verify: bool,
    ) -> Result<State, VaultError> {
        let snap = Snapshot::build(&body, &data_key, path, verify)?;
        Ok(State {
            snap: Arc::new(snap),
            master: body.master,
            wrapped: body.data_key,
            data_key,
            seal: body.seal,
            counter: body.counter,
            chain: mac,
        })
    }

    /// A fresh, empty vault (version 0).
    pub(super) fn genesis(body: FileBody, data_key: Arc<Key>, path: &Path) -> State {
        let chain = hex::encode(chain_mac(&data_key, &[], GENESIS));
        State {
            snap: Arc::new(Snapshot::empty(path, 0)),
            master: body.master,
            wrapped: body.data_key,
            data_key,
            seal: body.seal,
            counter: 0,
            chain,
        }
    }

    /// The whole vault as a `FileBody` (a store import copies it; tests forge
    /// format-1/2 files from it).
    pub(super) fn body(&self) -> FileBody {
        FileBody {
            counter: self.counter,
            master: self.master.clone(),
            data_key: self.wrapped.clone(),
            seal: self.seal.clone(),
            records: self.snap.stored_records().cloned().collect(),
            agents: self.snap.agents().to_vec(),
        }
    }

    /// Applies one entry read from the file (or just written), checking that it
    /// is the next version.
    pub(super) fn apply(
        &self,
        entry: Entry,
        chain: String,
        path: &Path,
        verify: bool,
    ) -> Result<State, VaultError> {
        if Some(entry.counter) != self.counter.checked_add(1) {
            return Err(ferr(
                path,
                format!(
                    "log entry for version {} follows version {} (entries reordered or dropped)",
                    entry.counter, self.counter
                ),
            ));
        }
        let snap = self
            .snap
            .edited(entry.edits, &self.data_key, entry.counter, verify)?;
        Ok(State {
            snap: Arc::new(snap),
            seal: entry.seal,
            counter: entry.counter,
            chain,
            ..self.clone()
        })
    }

    /// The chain value of a rewrite to version `counter` under a new header.
    pub(super) fn rewrite_chain(&self, counter: u64) -> String {
        let mut msg = REWRITE.to_vec();
        msg.extend_from_slice(&counter.to_be_bytes());
        hex::encode(chain_mac(&self.data_key, self.chain.as_bytes(), &msg))
    }
}

/// `chain(prev, msg)` = HMAC-SHA256(chain key, len(prev) | prev | msg).
fn chain_mac(data_key: &Key, prev: &[u8], msg: &[u8]) -> [u8; MAC_LEN] {
    let key = data_key.derive(LABEL_LOG_CHAIN);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("any key length"));
    m.update(&(prev.len() as u64).to_be_bytes());
    m.update(prev);
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// The first line of a format-3 file.
pub(super) fn is_log(bytes: &[u8]) -> bool {
    let magic = format!("{FILE_MAGIC} {LOG_FORMAT}\n");
    bytes.starts_with(magic.as_bytes())
}

/// The base of a file: everything up to the end of its MAC line.
pub(super) fn encode_base(state: &State) -> Result<Vec<u8>, VaultError> {
    let mut out = format!("{FILE_MAGIC} {LOG_FORMAT}\n").into_bytes();
    let body = BaseOut {
        counter: state.counter,
        master: &state.master,
        data_key: &state.wrapped,
        seal: &state.seal,
        chain: &state.chain,
        records: Records(&state.snap),
        agents: state.snap.agents(),
    };
    serde_json::to_writer(&mut out, &body)
        .map_err(|e| VaultError::Invalid(format!("cannot encode the vault: {e}")))?;
    out.push(b'\n');
    let mac = hex::encode(crypto::file_mac(&state.data_key, &out));
    out.extend_from_slice(MAC_LINE_PREFIX);
    out.extend_from_slice(mac.as_bytes());
    out.push(b'\n');
    Ok(out)
}

/// One entry line and the chain value it makes.
pub(super) fn encode_entry(
    entry: &Entry,
    data_key: &Key,
    prev_chain: &str,
) -> Result<(Vec<u8>, String), VaultError> {
    let json = serde_json::to_vec(entry)
        .map_err(|e| VaultError::Invalid(format!("cannot encode a vault entry: {e}")))?;
    let chain = hex::encode(chain_mac(data_key, prev_chain.as_bytes(), &json));
    let mut line = Vec::with_capacity(json.len() + HEX_MAC_LEN + 4);
    line.extend_from_slice(ENTRY_PREFIX);
    line.extend_from_slice(chain.as_bytes());
    line.push(b' ');
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok((line, chain))
}

/// Splits off the next line (with its newline); `None` if no full line is left.
fn next_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nl = memchr(bytes)?;
    Some((&bytes[..nl], &bytes[nl + 1..]))
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// The KDF parameters of a format-3 file's header, read without authenticating it.
pub(super) fn header_kdf(bytes: &[u8], path: &Path) -> Result<Option<KdfParams>, VaultError> {
    let (_, rest) = next_line(bytes).ok_or_else(|| ferr(path, "truncated (no body)"))?;
    let (body, _) = next_line(rest).ok_or_else(|| ferr(path, "truncated (no body)"))?;
    let base: BaseIn =
        serde_json::from_slice(body).map_err(|e| ferr(path, format!("corrupt: {e}")))?;
    Ok(base.master.kdf)
}

/// Parses and authenticates the base of a format-3 file. Returns the state at the
/// base's version and the length of the base.
pub(super) fn decode_base(
    bytes: &[u8],
    master: &MasterKey,
    path: &Path,
    verify: bool,
) -> Result<(State, usize), VaultError> {
    let truncated = || ferr(path, "truncated (the base of the log is incomplete)");
    let (_, rest) = next_line(bytes).ok_or_else(truncated)?;
    let (body, rest) = next_line(rest).ok_or_else(truncated)?;
    let (mac_line, _) = next_line(rest).ok_or_else(truncated)?;
    let signed_len = bytes.len() - rest.len();
    let base_len = signed_len + mac_line.len() + 1;
    let base: BaseIn =
        serde_json::from_slice(body).map_err(|e| ferr(path, format!("corrupt vault body: {e}")))?;
    let data_key = unlock_data_key(&base.master, &base.data_key, master, path)?;
    let tag = mac_line
        .strip_prefix(MAC_LINE_PREFIX)
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| ferr(path, "corrupt MAC line"))?;
    // SECURITY: the base MAC catches any edit of the base before it is trusted.
    if !crypto::verify_file_mac(&data_key, &bytes[..signed_len], &tag) {
        return Err(ferr(
            path,
            "integrity check failed: the file was modified, truncated or corrupted",
        ));
    }
    let body = FileBody {
        counter: base.counter,
        master: base.master,
        data_key: base.data_key,
        seal: base.seal,
        records: base.records,
        agents: base.agents,
    };
    let state = State::of_body(body, Arc::new(data_key), base.chain, path, verify)?;
    Ok((state, base_len))
}

/// What reading a run of entries found.
pub(super) struct Tail {
    pub(super) state: State,
    /// Bytes consumed (complete, verified entries).
    pub(super) used: usize,
    /// Entries applied.
    pub(super) entries: usize,
    /// Bytes after the last complete line: a torn append (never acknowledged).
    pub(super) torn: usize,
}

/// Verifies and applies the entries in `bytes` (which start at byte `offset` of
/// the file) on top of `state`. An incomplete last line is a torn append and is
/// left out; anything else that does not verify refuses the file.
pub(super) fn apply_entries(
    mut state: State,
    bytes: &[u8],
    offset: u64,
    path: &Path,
    verify: bool,
) -> Result<Tail, VaultError> {
    let mut rest = bytes;
    let mut entries = 0;
    while let Some((line, after)) = next_line(rest) {
        let at = offset + (bytes.len() - rest.len()) as u64;
        let bad = |what: &str| {
            ferr(
                path,
                format!(
                    "integrity check failed: log entry at byte {at} {what} (edited, dropped, reordered or corrupted)"
                ),
            )
        };
        let (mac_hex, json) = line
            .strip_prefix(ENTRY_PREFIX)
            .filter(|l| l.len() > HEX_MAC_LEN + 1 && l[HEX_MAC_LEN] == b' ')
            .map(|l| (&l[..HEX_MAC_LEN], &l[HEX_MAC_LEN + 1..]))
            .ok_or_else(|| bad("is malformed"))?;
        let want = chain_mac(&state.data_key, state.chain.as_bytes(), json);
        let got = hex::decode(mac_hex).map_err(|_| bad("is malformed"))?;
        // SECURITY: every entry is chained to the one before under a key derived
        // from the data key: an edited, dropped, reordered or foreign entry fails.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &got[..])) {
            return Err(bad("fails its MAC"));
        }
        let entry: Entry = serde_json::from_slice(json).map_err(|_| bad("is corrupt"))?;
        state = state.apply(entry, hex::encode(want), path, verify)?;
        entries += 1;
        rest = after;
    }
    Ok(Tail {
        state,
        used: bytes.len() - rest.len(),
        entries,
        torn: rest.len(),
    })
}
