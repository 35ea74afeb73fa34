//! The table digest (docs/store.md "What the database can and cannot do to
//! you"): a keyed summary of every `records` and `agents` row, kept in `meta`
//! and moved by every write in the same transaction, checked by every load.
//! AES-GCM already refuses an edited or moved record and the agent MAC an edited
//! agent; the digest adds what a per-row tag cannot see: a row deleted, an old
//! row version put back (from a backup), or a valid row copied in.
//!
//! Each row has a leaf `HMAC(K, kind | canonical JSON of the decoded row)`; the
//! accumulator is the XOR of all leaves, so a write updates it in O(1) per row it
//! changes (XOR the old leaf out, the new one in). `meta.digest_mac` is
//! `HMAC(K, generation | seal state | accumulator)`: the accumulator of one
//! generation cannot be paired with another, so a partial rollback behind a
//! current generation shows. K = HKDF(data key, `keyward/v1/pg-table-digest`):
//! only a holder of the master key can compute a leaf, and K is never stored.

use super::super::crypto::Key;
use super::super::format::{AgentRecord, SealState, StoredRecord};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// HKDF label of the digest key (a sub-key of the data key; used for nothing else).
pub(in crate::vault) const LABEL_DIGEST: &str = "keyward/v1/pg-table-digest";

const LEAF_RECORD: &[u8] = b"keyward/v1/pg-digest/record\0";
const LEAF_AGENT: &[u8] = b"keyward/v1/pg-digest/agent\0";
const META: &[u8] = b"keyward/v1/pg-digest/meta\0";
const LEN: usize = 32;

/// The XOR of the leaves of a set of rows (the empty set is all zeros).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::vault) struct Acc([u8; LEN]);

impl std::fmt::Debug for Acc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Acc({})", hex::encode(self.0))
    }
}

impl Acc {
    fn toggle(&mut self, leaf: [u8; LEN]) {
        for (a, b) in self.0.iter_mut().zip(leaf) {
            *a ^= b;
        }
    }

    pub(in crate::vault) fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub(in crate::vault) fn from_hex(s: &str) -> Option<Acc> {
        let raw = hex::decode(s).ok()?;
        Some(Acc(raw.try_into().ok()?))
    }
}

/// What `meta` holds: the accumulator and its MAC (both hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::vault) struct Digest {
    pub(in crate::vault) acc: Acc,
    pub(in crate::vault) mac: String,
}

/// The digest key of one data key.
pub(in crate::vault) struct Digester {
    key: Key,
}

impl Digester {
    pub(in crate::vault) fn new(data_key: &Key) -> Digester {
        Digester {
            key: data_key.derive(LABEL_DIGEST),
        }
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        match Hmac::<Sha256>::new_from_slice(self.key.expose()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts a 32-byte key"),
        }
    }

    fn leaf(&self, domain: &[u8], json: &str) -> [u8; LEN] {
        let mut m = self.hmac();
        m.update(domain);
        m.update(json.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Every field of the record, as the file stores it.
    fn record_leaf(&self, r: &StoredRecord) -> [u8; LEN] {
        self.leaf(LEAF_RECORD, &serde_json::to_string(r).unwrap_or_default())
    }

    fn agent_leaf(&self, a: &AgentRecord) -> [u8; LEN] {
        self.leaf(LEAF_AGENT, &serde_json::to_string(a).unwrap_or_default())
    }

    pub(in crate::vault) fn toggle_record(&self, acc: &mut Acc, r: &StoredRecord) {
        acc.toggle(self.record_leaf(r));
    }

    /// The same, from the record's JSON already at hand (`serde_json::to_string`).
    pub(in crate::vault) fn toggle_record_json(&self, acc: &mut Acc, json: &str) {
        acc.toggle(self.leaf(LEAF_RECORD, json));
    }

    pub(in crate::vault) fn toggle_agent(&self, acc: &mut Acc, a: &AgentRecord) {
        acc.toggle(self.agent_leaf(a));
    }

    /// The accumulator of a whole table set (a load, a migration, an import).
    pub(in crate::vault) fn of(&self, records: &[StoredRecord], agents: &[AgentRecord]) -> Acc {
        let mut acc = Acc::default();
        for r in records {
            self.toggle_record(&mut acc, r);
        }
        for a in agents {
            self.toggle_agent(&mut acc, a);
        }
        acc
    }

    fn mac(&self, generation: u64, seal: &SealState, acc: Acc) -> [u8; LEN] {
        let mut m = self.hmac();
        m.update(META);
        m.update(&generation.to_be_bytes());
        m.update(&seal.epoch.to_be_bytes());
        m.update(&seal.count.to_be_bytes());
        m.update(&acc.0);
        m.finalize().into_bytes().into()
    }

    /// The `meta` digest of `acc` at `generation` with `seal`.
    pub(in crate::vault) fn seal(&self, generation: u64, seal: &SealState, acc: Acc) -> Digest {
        Digest {
            acc,
            mac: hex::encode(self.mac(generation, seal, acc)),
        }
    }

    /// Checks `stored` (from `meta`) against the rows read in the same snapshot.
    /// The error says what it means; the caller names the store.
    pub(in crate::vault) fn check(
        &self,
        stored: Option<&Digest>,
        generation: u64,
        seal: &SealState,
        records: &[StoredRecord],
        agents: &[AgentRecord],
    ) -> Result<(), String> {
        let Some(stored) = stored else {
            return Err(format!(
                "table digest missing in meta at generation {generation} (cleared outside keyward)"
            ));
        };
        // SECURITY: a deleted row, an older row version put back or a valid row
        // copied in changes the set of leaves, which only the key can recompute.
        if self.of(records, agents) != stored.acc {
            return Err(format!(
                "table digest mismatch at generation {generation}: a record or agent row \
                 was deleted, added or put back from an older state outside keyward"
            ));
        }
        let tag = hex::decode(&stored.mac).unwrap_or_default();
        let want = self.mac(generation, seal, stored.acc);
        // SECURITY: the MAC binds the accumulator to this generation: an older
        // accumulator (with the rows of its time) behind a current generation is
        // a partial rollback and is refused.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&tag[..], &want[..])) {
            return Err(format!(
                "table digest in meta fails authentication at generation {generation} \
                 (meta edited or restored outside keyward)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accumulator_moves_in_o1_and_the_mac_binds_the_generation() {
        let d = Digester::new(&Key::random());
        let a = AgentRecord {
            id: "a".into(),
            token_sha256: "00".into(),
            chain: None,
            owner: None,
            builder: None,
            secrets: None,
            created: "t".into(),
        };
        let mut b = a.clone();
        b.id = "b".into();
        let mut acc = Acc::default();
        d.toggle_agent(&mut acc, &a);
        d.toggle_agent(&mut acc, &b);
        assert_eq!(acc, d.of(&[], &[a.clone(), b.clone()]));
        d.toggle_agent(&mut acc, &a);
        assert_eq!(acc, d.of(&[], &[b.clone()]));
        let seal = SealState { epoch: 0, count: 3 };
        let dg = d.seal(7, &seal, acc);
        assert_eq!(Acc::from_hex(&dg.acc.to_hex()), Some(acc));
        assert!(d.check(Some(&dg), 7, &seal, &[], &[b.clone()]).is_ok());
        let e = d.check(Some(&dg), 8, &seal, &[], &[b.clone()]).unwrap_err();
        assert!(e.contains("fails authentication"), "{e}");
        let e = d.check(Some(&dg), 7, &seal, &[], &[]).unwrap_err();
        assert!(e.contains("mismatch"), "{e}");
        assert!(d.check(None, 7, &seal, &[], &[]).is_err());
        let other = Digester::new(&Key::random());
        assert!(other.check(Some(&dg), 7, &seal, &[], &[b]).is_err());
    }
}
