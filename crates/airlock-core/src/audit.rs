//! The tamper-evident audit chain.
//!
//! Every event becomes a [`Record`] whose serialized body carries the hash of
//! its predecessor; the record's own hash is SHA-256 over that body. Every so
//! often the chain's head is sealed in a [`Checkpoint`] signed with the
//! gateway's ed25519 key (kept in the data directory). [`verify`] walks the
//! stored chain and names the first record that was altered, removed,
//! reordered, or cut off after a checkpoint.
//!
//! A record's body is kept byte for byte as it was hashed, so verification
//! never depends on re-serializing JSON the same way twice.

use std::fmt;
use std::path::Path;

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::{RawRecord, Store};

mod body;
use crate::{Error, Event, Result, SessionId};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash that precedes the first record.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        Hash(out)
    }

    /// From a 32-byte slice.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        Some(Hash(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // On every record's path: encode into a stack buffer, not through a
        // char iterator into a String.
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(serde::ser::Error::custom)?;
        let text = std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?;
        s.serialize_str(text)
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = hex::decode(&s).map_err(serde::de::Error::custom)?;
        Hash::from_slice(&bytes).ok_or_else(|| serde::de::Error::custom("a hash has 32 bytes"))
    }
}

/// One audit record: an event with its place in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the gateway recorded it.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The session it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// What happened.
    pub event: Event,
    /// The hash of the record before it.
    pub prev: Hash,
}

/// A record with its exact stored body and that body's hash.
#[derive(Clone, Debug)]
pub struct SealedRecord {
    /// The record.
    pub record: Record,
    /// The serialized body, as hashed.
    pub body: Vec<u8>,
    /// SHA-256 of `body`.
    pub hash: Hash,
}

impl SealedRecord {
    /// Serializes and hashes a record.
    pub fn seal(record: Record) -> Result<SealedRecord> {
        // Most records fit: one allocation instead of a few doublings.
        let mut body = Vec::with_capacity(512);
        body::write(&record, &mut body)?;
        let hash = Hash::of(&body);
        Ok(SealedRecord { record, body, hash })
    }

    /// Parses a stored body (hash it separately to check it).
    pub fn open(body: Vec<u8>) -> Result<SealedRecord> {
        let record: Record =
            serde_json::from_slice(&body).map_err(|e| Error::store(format!("bad record: {e}")))?;
        let hash = Hash::of(&body);
        Ok(SealedRecord { record, body, hash })
    }
}

/// The sequence number a stored body claims, if it can be read.
fn claimed_seq(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(body).ok().map(|s| s.seq)
}

/// The last record of the chain: where the next one continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
}

/// A signed statement that the chain's record `seq` has hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The record sealed.
    pub seq: u64,
    /// Its hash.
    pub hash: Hash,
    /// When the checkpoint was made.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The signer's ed25519 public key, hex.
    pub key: String,
    /// ed25519 signature over [`Checkpoint::message`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes that are signed: a domain tag, the sequence number and the hash.
    pub fn message(seq: u64, hash: &Hash) -> Vec<u8> {
        let mut m = b"airlock-audit-checkpoint-v1\0".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&hash.0);
        m
    }

    /// Whether the signature is valid for `public_key` (raw 32 bytes).
    pub fn signature_valid(&self, public_key: &[u8]) -> bool {
        let Ok(sig) = hex::decode(&self.signature) else {
            return false;
        };
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&Checkpoint::message(self.seq, &self.hash), &sig)
            .is_ok()
    }
}

/// The gateway's checkpoint signing key.
pub struct CheckpointSigner {
    key: Ed25519KeyPair,
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointSigner({})", self.public_key_hex())
    }
}

/// File name of the checkpoint signing key inside the data directory.
pub const SIGNING_KEY_FILE: &str = "audit-signing.pk8";

impl CheckpointSigner {
    /// Loads the key from `data_dir`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<CheckpointSigner> {
        let pkcs8 = crate::keyfile::load_or_create(&data_dir.join(SIGNING_KEY_FILE), || {
            let rng = ring::rand::SystemRandom::new();
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| Error::Internal("cannot generate an ed25519 key".into()))
        })?;
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| {
            Error::Config(format!(
                "{} is not an ed25519 PKCS#8 key ({e}); restore it from backup",
                data_dir.join(SIGNING_KEY_FILE).display()
            ))
        })?;
        Ok(CheckpointSigner { key })
    }

    /// The public key, hex: pin it outside the gateway to verify independently.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.public_key().as_ref())
    }

    /// The raw public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Signs a checkpoint for the chain head.
    pub fn sign(&self, head: ChainHead) -> Checkpoint {
        let sig = self.key.sign(&Checkpoint::message(head.seq, &head.hash));
        Checkpoint {
            seq: head.seq,
            hash: head.hash,
            time: crate::now(),
            key: self.public_key_hex(),
            signature: hex::encode(sig.as_ref()),
        }
    }
}

/// What is wrong with a stored chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// Record `seq`'s body does not match its hash: its content was altered.
    Altered {
        /// The record.
        seq: u64,
    },
    /// Record `seq` is missing: the chain jumps from `seq - 1` to `found`.
    Removed {
        /// The missing record.
        seq: u64,
        /// The next record present.
        found: u64,
    },
    /// The record stored at position `seq` is not the one that belongs there.
    Reordered {
        /// The position.
        seq: u64,
        /// The sequence number the record there claims.
        claims: u64,
    },
    /// Record `seq` does not follow its predecessor's hash (inserted or rewritten chain).
    Broken {
        /// The record.
        seq: u64,
    },
    /// The chain ends at `last` but a checkpoint sealed record `sealed`: the tail was cut off.
    Truncated {
        /// The last record present.
        last: u64,
        /// The highest sealed record.
        sealed: u64,
    },
    /// A checkpoint's signature is invalid or made with another key.
    BadCheckpoint {
        /// The record the checkpoint claims to seal.
        seq: u64,
    },
    /// A checkpoint seals a hash that is not the stored record's hash.
    CheckpointMismatch {
        /// The record.
        seq: u64,
    },
    /// The store's head is record `head`, but the chain cannot be read on
    /// from record `seq`: records were removed (a segment of the log, say)
    /// and the index rebuilt without them, or the index no longer matches
    /// the log.
    Unreachable {
        /// The first record that cannot be read.
        seq: u64,
        /// The store's last record.
        head: u64,
    },
    /// A record could not be parsed at all.
    Unreadable {
        /// The record.
        seq: u64,
        /// Why.
        detail: String,
    },
}

impl Problem {
    /// The first bad record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Problem::Altered { seq }
            | Problem::Removed { seq, .. }
            | Problem::Reordered { seq, .. }
            | Problem::Broken { seq }
            | Problem::BadCheckpoint { seq }
            | Problem::CheckpointMismatch { seq }
            | Problem::Unreachable { seq, .. }
            | Problem::Unreadable { seq, .. } => *seq,
            Problem::Truncated { last, .. } => last + 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { seq } => write!(
                f,
                "record {seq} was altered: its content does not match its hash"
            ),
            Problem::Removed { seq, found } => write!(
                f,
                "record {seq} was removed: the chain jumps from {} to {found}",
                seq - 1
            ),
            Problem::Reordered { seq, claims } => write!(
                f,
                "record {seq} is out of order: the record stored there is record {claims}"
            ),
            Problem::Broken { seq } => write!(
                f,
                "record {seq} does not follow record {}: the chain was rewritten from here",
                seq - 1
            ),
            Problem::Truncated { last, sealed } => write!(
                f,
                "the chain was truncated: it ends at record {last}, but a signed checkpoint covers record {sealed}"
            ),
            Problem::BadCheckpoint { seq } => write!(
                f,
                "the checkpoint for record {seq} has an invalid signature"
            ),
            Problem::CheckpointMismatch { seq } => write!(
                f,
                "record {seq} does not match its signed checkpoint: the chain was rewritten"
            ),
            Problem::Unreachable { seq, head } => write!(
                f,
                "record {seq} cannot be read, though the store's last record is {head}: records were removed, or the index no longer matches the log"
            ),
            Problem::Unreadable { seq, detail } => {
                write!(f, "record {seq} cannot be read: {detail}")
            }
        }
    }
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last record's sequence number.
    pub last_seq: u64,
    /// The last record's hash, when the chain verified: keep it outside the
    /// gateway, and a later cut of the tail shows against it.
    pub head: Option<Hash>,
    /// The last record a signed checkpoint covers (0: none). A cut of the
    /// records after it shows only against a copy kept elsewhere.
    pub sealed_through: u64,
    /// The first problem found, if any.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the chain verified clean.
    pub fn is_clean(&self) -> bool {
        self.problem.is_none()
    }
}

/// Walks the whole stored chain and its checkpoints. `public_key` is the raw
/// ed25519 key checkpoints must be signed with.
pub async fn verify(store: &dyn Store, public_key: &[u8]) -> Result<VerifyReport> {
    let checkpoints = store.checkpoints().await?;
    let mut sealed: std::collections::BTreeMap<u64, Hash> = std::collections::BTreeMap::new();
    for cp in &checkpoints {
        if !cp.signature_valid(public_key) {
            return Ok(report(
                0,
                checkpoints.len(),
                0,
                Problem::BadCheckpoint { seq: cp.seq },
            ));
        }
        sealed.insert(cp.seq, cp.hash);
    }

    // Read before the walk: records appended while it runs (a gateway
    // verifying its own store) are not expected of it.
    let head = store.head().await?;
    let mut expected = 1u64;
    let mut prev = Hash::GENESIS;
    let mut count = 0u64;
    let mut after = 0u64;
    loop {
        let batch = store.raw_records(after, 4096).await?;
        if batch.is_empty() {
            break;
        }
        let mut records = batch.into_iter().peekable();
        while let Some(RawRecord { seq, hash, body }) = records.next() {
            after = seq;
            let cps = checkpoints.len();
            if seq != expected {
                let problem = if seq > expected {
                    Problem::Removed {
                        seq: expected,
                        found: seq,
                    }
                } else {
                    Problem::Reordered { seq, claims: seq }
                };
                return Ok(report(count, cps, expected - 1, problem));
            }
            let record: Record = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    let problem = Problem::Unreadable {
                        seq,
                        detail: e.to_string(),
                    };
                    return Ok(report(count, cps, seq, problem));
                }
            };
            if record.seq != seq {
                // A store that numbers records by their place (a log) shows a
                // removal as a later record sitting in the gap; it is a swap
                // only if the missing record turns up right after.
                let next = records.peek().and_then(|r| claimed_seq(&r.body));
                if record.seq > seq && next != Some(seq) {
                    let problem = Problem::Removed {
                        seq,
                        found: record.seq,
                    };
                    return Ok(report(count, cps, seq - 1, problem));
                }
                let problem = Problem::Reordered {
                    seq,
                    claims: record.seq,
                };
                return Ok(report(count, cps, seq, problem));
            }
            if Hash::of(&body) != hash {
                return Ok(report(count, cps, seq, Problem::Altered { seq }));
            }
            if record.prev != prev {
                return Ok(report(count, cps, seq, Problem::Broken { seq }));
            }
            if sealed.get(&seq).is_some_and(|h| *h != hash) {
                return Ok(report(count, cps, seq, Problem::CheckpointMismatch { seq }));
            }
            prev = hash;
            expected += 1;
            count += 1;
        }
    }
    let last = expected - 1;
    if let Some((&max_sealed, _)) = sealed.iter().next_back()
        && max_sealed > last
    {
        let problem = Problem::Truncated {
            last,
            sealed: max_sealed,
        };
        return Ok(report(count, checkpoints.len(), last, problem));
    }
    // The walk follows the index from record to record: a chain it could
    // not read to the store's own head ends early, and nothing after that
    // point would be checked.
    if let Some(head) = head
        && head.seq > last
    {
        let problem = Problem::Unreachable {
            seq: last + 1,
            head: head.seq,
        };
        return Ok(report(count, checkpoints.len(), last, problem));
    }
    Ok(VerifyReport {
        records: count,
        checkpoints: checkpoints.len() as u64,
        last_seq: last,
        head: (count > 0).then_some(prev),
        sealed_through: sealed.keys().next_back().copied().unwrap_or(0),
        problem: None,
    })
}

fn report(records: u64, checkpoints: usize, last_seq: u64, problem: Problem) -> VerifyReport {
    VerifyReport {
        records,
        checkpoints: checkpoints as u64,
        last_seq,
        head: None,
        sealed_through: 0,
        problem: Some(problem),
    }
}

/// The checkpoint public key of the gateway whose data directory is `data_dir`.
pub fn public_key_in(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    let pkcs8 = std::fs::read(&path).map_err(|e| {
        Error::Config(format!(
            "cannot read the checkpoint signing key {} ({e}); pass --public-key to verify with a pinned key",
            path.display()
        ))
    })?;
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| {
        Error::Config(format!(
            "{} is not an ed25519 PKCS#8 key: {e}",
            path.display()
        ))
    })?;
    Ok(key.public_key().as_ref().to_vec())
}

/// Decodes a hex public key given on the command line.
pub fn decode_public_key(hex_key: &str) -> Result<Vec<u8>> {
    match hex::decode(hex_key.trim()) {
        Ok(k) if k.len() == 32 => Ok(k),
        _ => Err(Error::Config(
            "the public key must be 64 hex digits (an ed25519 key, as printed by the gateway at start-up)".into(),
        )),
    }
}
