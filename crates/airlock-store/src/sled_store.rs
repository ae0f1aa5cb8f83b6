//! The embedded store: a write-ahead journal plus a sled index.
//!
//! Why a journal in front of sled: sled can only make writes durable with a
//! full flush (write + fsync), so with sled alone the `os` durability mode
//! would either lose records on a gateway crash or pay an fsync per batch.
//! The journal is a plain append-only file: one `write` per batch puts the
//! records in the operating system (the `os` guarantee), one `fdatasync`
//! puts them on disk (the `fsync` guarantee). sled is then updated in one
//! transaction per batch; a background-free rotation flushes sled and empties
//! the journal. On open, journal frames newer than sled's head are replayed.
//!
//! Journal frame: `u32 LE body length | 32-byte SHA-256 of body | body`. A torn
//! frame at the end (crash mid-write) was never acknowledged and is dropped.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::approvals::{Approval, ApprovalStatus};
use airlock_core::audit::{ChainHead, Checkpoint, Hash, Record, SealedRecord};
use airlock_core::config::Durability;
use airlock_core::store::{RawRecord, SessionFilter, SessionSummary, Store};
use airlock_core::{Decision, Event, SessionId};
use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use crate::error::{Error, Result, db, io};

/// Rotate the journal once it holds this much.
const JOURNAL_ROTATE_BYTES: u64 = 32 << 20;
/// ...or once this much time has passed since the last rotation.
const JOURNAL_ROTATE_AFTER: Duration = Duration::from_secs(30);

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    checkpoints: sled::Tree,
    sessions: sled::Tree,
    by_user: sled::Tree,
    by_target: sled::Tree,
    session_records: sled::Tree,
    meta: sled::Tree,
    approvals: sled::Tree,
    approval_changes: tokio::sync::broadcast::Sender<String>,
    journal: Mutex<Journal>,
}

struct Journal {
    file: File,
    len: u64,
    rotated: Instant,
}

const HEAD_KEY: &[u8] = b"head";

impl SledStore {
    /// Opens (or creates) the store in `data_dir`, replaying any journal
    /// records the index has not seen yet.
    pub fn open(data_dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(data_dir).map_err(io(format!(
            "cannot create data directory {}",
            data_dir.display()
        )))?;
        let db_path = data_dir.join("store");
        let database = open_db(&db_path).map_err(db(format!(
            "cannot open the audit store at {}",
            db_path.display()
        )))?;
        let tree = |name: &str| {
            database
                .open_tree(name)
                .map_err(db(format!("cannot open tree {name}")))
        };
        let journal_path = data_dir.join("journal");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&journal_path)
            .map_err(io(format!(
                "cannot open the journal {}",
                journal_path.display()
            )))?;
        let inner = Inner {
            dir: data_dir.to_path_buf(),
            records: tree("records")?,
            checkpoints: tree("checkpoints")?,
            sessions: tree("sessions")?,
            by_user: tree("by_user")?,
            by_target: tree("by_target")?,
            session_records: tree("session_records")?,
            meta: tree("meta")?,
            approvals: tree("approvals")?,
            approval_changes: tokio::sync::broadcast::channel(1024).0,
            db: database,
            journal: Mutex::new(Journal {
                len: 0,
                rotated: Instant::now(),
                file: file.try_clone().map_err(io("cannot open the journal"))?,
            }),
        };
        let replayed = inner.replay(&mut file)?;
        if replayed > 0 {
            tracing::info!(
                records = replayed,
                "replayed audit records from the journal"
            );
        }
        inner.rotate()?;
        // The journal file itself must survive a machine crash.
        File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync the data directory"))?;
        Ok(SledStore {
            inner: Arc::new(inner),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> airlock_core::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| airlock_core::Error::Internal(format!("store task failed: {e}")))?
            .map_err(Into::into)
    }
}

impl Inner {
    fn head(&self) -> Result<Option<ChainHead>> {
        let Some(v) = self
            .meta
            .get(HEAD_KEY)
            .map_err(db("cannot read the chain head"))?
        else {
            return Ok(None);
        };
        decode_head(&v).map(Some)
    }

    /// Applies journal frames newer than the index; truncates a torn tail.
    fn replay(&self, file: &mut File) -> Result<usize> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io("cannot read the journal"))?;
        let head = self.head()?.map_or(0, |h| h.seq);
        let mut pending = Vec::new();
        let mut pos = 0usize;
        while let Some((hash, body, next)) = next_frame(&bytes, pos) {
            if Hash::of(body) != hash {
                break;
            }
            let sealed = SealedRecord::open(body.to_vec())
                .map_err(|e| Error::Corrupt(format!("journal frame at byte {pos}: {e}")))?;
            if sealed.record.seq > head {
                pending.push(sealed);
            }
            pos = next;
        }
        if pos < bytes.len() {
            tracing::warn!(
                bytes = bytes.len() - pos,
                "dropping a torn journal tail (a write interrupted by a crash; it was never acknowledged)"
            );
        }
        let n = pending.len();
        if n > 0 {
            self.index(&pending)?;
        }
        Ok(n)
    }

    fn append(&self, batch: &[SealedRecord], durability: Durability) -> Result<()> {
        let mut frames = Vec::with_capacity(batch.iter().map(|r| r.body.len() + 36).sum());
        for r in batch {
            let len = u32::try_from(r.body.len())
                .map_err(|_| Error::Corrupt("an audit record is larger than 4 GiB".into()))?;
            frames.extend_from_slice(&len.to_le_bytes());
            frames.extend_from_slice(&r.hash.0);
            frames.extend_from_slice(&r.body);
        }
        let mut journal = self
            .journal
            .lock()
            .map_err(|_| Error::Corrupt("the journal lock is poisoned".into()))?;
        let before = journal.len;
        let written = journal
            .file
            .write_all(&frames)
            .and_then(|()| match durability {
                Durability::Os => Ok(()),
                Durability::Fsync => journal.file.sync_data(),
            });
        if let Err(e) = written {
            // Leave no partial batch behind: the caller will be told it failed.
            let _ = journal.file.set_len(before);
            return Err(Error::Io {
                what: format!("cannot write the audit journal in {}", self.dir.display()),
                source: e,
            });
        }
        if let Err(e) = self.index(batch) {
            // The caller is told the batch failed and will reuse its sequence
            // numbers, so the journal must not keep it either.
            let _ = journal.file.set_len(before);
            return Err(e);
        }
        journal.len += frames.len() as u64;
        if journal.len >= JOURNAL_ROTATE_BYTES || journal.rotated.elapsed() >= JOURNAL_ROTATE_AFTER
        {
            drop(journal);
            self.rotate()?;
        }
        Ok(())
    }

    /// Flushes sled to disk, then empties the journal it made redundant.
    fn rotate(&self) -> Result<()> {
        let mut journal = self
            .journal
            .lock()
            .map_err(|_| Error::Corrupt("the journal lock is poisoned".into()))?;
        self.db
            .flush()
            .map_err(db("cannot flush the audit store"))?;
        journal
            .file
            .set_len(0)
            .and_then(|()| journal.file.sync_data())
            .map_err(io("cannot truncate the audit journal"))?;
        journal.len = 0;
        journal.rotated = Instant::now();
        Ok(())
    }

    /// Writes records and everything derived from them in one transaction.
    fn index(&self, batch: &[SealedRecord]) -> Result<()> {
        let trees = [
            &self.records,
            &self.sessions,
            &self.by_user,
            &self.by_target,
            &self.session_records,
            &self.meta,
        ];
        let result = trees.as_slice().transaction(|t| {
            let [records, sessions, by_user, by_target, session_records, meta] = t.as_slice()
            else {
                return Err(ConflictableTransactionError::Abort(Error::Corrupt(
                    "wrong number of trees".into(),
                )));
            };
            let mut touched: HashMap<SessionId, SessionSummary> = HashMap::new();
            for r in batch {
                let seq = r.record.seq.to_be_bytes();
                let mut value = Vec::with_capacity(32 + r.body.len());
                value.extend_from_slice(&r.hash.0);
                value.extend_from_slice(&r.body);
                records.insert(&seq, value)?;
                let Some(id) = r.record.session else {
                    continue;
                };
                let mut key = id.0.as_bytes().to_vec();
                key.extend_from_slice(&seq);
                session_records.insert(key, &[])?;
                let summary = match touched.remove(&id) {
                    Some(s) => Some(s),
                    None => load_summary(sessions, id)?,
                };
                if let Some(s) = summarize(summary, &r.record, by_user, by_target)? {
                    touched.insert(id, s);
                }
            }
            for (id, s) in &touched {
                let json = serde_json::to_vec(s).map_err(|e| {
                    ConflictableTransactionError::Abort(Error::Corrupt(e.to_string()))
                })?;
                sessions.insert(id.0.as_bytes(), json)?;
            }
            if let Some(last) = batch.last() {
                meta.insert(HEAD_KEY, encode_head(last.record.seq, &last.hash))?;
            }
            Ok(())
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Error::Sled {
                what: "cannot index audit records".into(),
                source: e,
            },
        })
    }
}

/// Opens sled, waiting briefly for its file lock: a store closed a moment ago
/// in this process releases the lock from sled's background thread.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let mut attempts = 0;
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && attempts < 30 =>
            {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

fn load_summary(sessions: &TransactionalTree, id: SessionId) -> TxResult<Option<SessionSummary>> {
    match sessions.get(id.0.as_bytes())? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| ConflictableTransactionError::Abort(Error::Corrupt(e.to_string()))),
    }
}

/// Folds one record into its session's summary.
fn summarize(
    summary: Option<SessionSummary>,
    record: &Record,
    by_user: &TransactionalTree,
    by_target: &TransactionalTree,
) -> TxResult<Option<SessionSummary>> {
    let Some(id) = record.session else {
        return Ok(summary);
    };
    match (&record.event, summary) {
        (
            Event::SessionStart {
                identity,
                target,
                protocol,
                client,
            },
            _,
        ) => {
            by_user.insert(index_key(&identity.subject, id), &[])?;
            by_target.insert(index_key(target, id), &[])?;
            Ok(Some(SessionSummary {
                id,
                user: identity.subject.clone(),
                groups: identity.groups.clone(),
                target: target.clone(),
                protocol: protocol.clone(),
                client: client.addr.to_string(),
                started: record.time,
                ended: None,
                operations: 0,
                denied: 0,
                end_reason: None,
            }))
        }
        (Event::Operation { decision, .. }, Some(mut s)) => {
            s.operations += 1;
            if matches!(decision, Decision::Deny { .. }) {
                s.denied += 1;
            }
            Ok(Some(s))
        }
        (Event::SessionEnd { reason }, Some(mut s)) => {
            s.ended = Some(record.time);
            s.end_reason = Some(reason.clone());
            Ok(Some(s))
        }
        (_, s) => Ok(s),
    }
}

fn index_key(prefix: &str, id: SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 17);
    key.extend_from_slice(prefix.as_bytes());
    key.push(0);
    key.extend_from_slice(id.0.as_bytes());
    key
}

fn encode_head(seq: u64, hash: &Hash) -> Vec<u8> {
    let mut v = seq.to_be_bytes().to_vec();
    v.extend_from_slice(&hash.0);
    v
}

fn decode_head(v: &[u8]) -> Result<ChainHead> {
    let (seq, hash) = (v.get(..8), v.get(8..40));
    match (seq, hash.and_then(Hash::from_slice)) {
        (Some(seq), Some(hash)) => Ok(ChainHead {
            seq: u64::from_be_bytes(
                seq.try_into()
                    .map_err(|_| Error::Corrupt("bad head".into()))?,
            ),
            hash,
        }),
        _ => Err(Error::Corrupt("the stored chain head is damaged".into())),
    }
}

/// The frame at `pos`: (hash, body, next position), or `None` if incomplete.
fn next_frame(bytes: &[u8], pos: usize) -> Option<(Hash, &[u8], usize)> {
    let len = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let hash = Hash::from_slice(bytes.get(pos + 4..pos + 36)?)?;
    let end = pos.checked_add(36)?.checked_add(len)?;
    let body = bytes.get(pos + 36..end)?;
    Some((hash, body, end))
}

fn seq_of(key: &[u8]) -> Result<u64> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt(format!("a record key has {} bytes, not 8", key.len())))
}

fn raw(key: &[u8], value: &[u8]) -> Result<RawRecord> {
    let seq = seq_of(key)?;
    let hash = value
        .get(..32)
        .and_then(Hash::from_slice)
        .ok_or_else(|| Error::Corrupt(format!("record {seq} is shorter than its hash")))?;
    Ok(RawRecord {
        seq,
        hash,
        body: value[32..].to_vec(),
    })
}

fn id_of(key: &[u8]) -> Option<SessionId> {
    let start = key.len().checked_sub(16)?;
    uuid::Uuid::from_slice(&key[start..]).ok().map(SessionId)
}

#[async_trait]
impl Store for SledStore {
    async fn append(
        &self,
        batch: &[SealedRecord],
        durability: Durability,
    ) -> airlock_core::Result<()> {
        let batch = batch.to_vec();
        self.blocking(move |s| s.append(&batch, durability)).await
    }

    async fn head(&self) -> airlock_core::Result<Option<ChainHead>> {
        self.blocking(|s| s.head()).await
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> airlock_core::Result<()> {
        let json = serde_json::to_vec(checkpoint)
            .map_err(|e| airlock_core::Error::Internal(e.to_string()))?;
        let seq = checkpoint.seq;
        self.blocking(move |s| {
            s.checkpoints
                .insert(seq.to_be_bytes(), json)
                .map_err(db("cannot store a checkpoint"))?;
            Ok(())
        })
        .await
    }

    async fn checkpoints(&self) -> airlock_core::Result<Vec<Checkpoint>> {
        self.blocking(|s| {
            s.checkpoints
                .iter()
                .values()
                .map(|v| {
                    let v = v.map_err(db("cannot read checkpoints"))?;
                    serde_json::from_slice(&v)
                        .map_err(|e| Error::Corrupt(format!("a checkpoint cannot be read: {e}")))
                })
                .collect()
        })
        .await
    }

    async fn raw_records(&self, after: u64, limit: usize) -> airlock_core::Result<Vec<RawRecord>> {
        self.blocking(move |s| {
            let start = after.saturating_add(1).to_be_bytes();
            let mut out = Vec::new();
            if after == u64::MAX {
                return Ok(out);
            }
            for kv in s.records.range(start..).take(limit) {
                let (k, v) = kv.map_err(db("cannot read audit records"))?;
                out.push(raw(&k, &v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn sessions(&self, filter: &SessionFilter) -> airlock_core::Result<Vec<SessionSummary>> {
        let filter = filter.clone();
        self.blocking(move |s| s.list_sessions(&filter)).await
    }

    async fn session(&self, id: SessionId) -> airlock_core::Result<Option<SessionSummary>> {
        self.blocking(move |s| s.summary(id)).await
    }

    async fn session_records(&self, id: SessionId) -> airlock_core::Result<Vec<Record>> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            for kv in s.session_records.scan_prefix(id.0.as_bytes()) {
                let (k, _) = kv.map_err(db("cannot read session records"))?;
                let seq = seq_of(&k[16..])?;
                let Some(v) = s
                    .records
                    .get(seq.to_be_bytes())
                    .map_err(db("cannot read a record"))?
                else {
                    return Err(Error::Corrupt(format!(
                        "record {seq} of session {id} is missing; run `airlock audit verify`"
                    )));
                };
                let r = raw(&seq.to_be_bytes(), &v)?;
                let sealed = SealedRecord::open(r.body)
                    .map_err(|e| Error::Corrupt(format!("record {seq}: {e}")))?;
                out.push(sealed.record);
            }
            Ok(out)
        })
        .await
    }

    async fn flush(&self) -> airlock_core::Result<()> {
        self.blocking(|s| s.rotate()).await
    }

    async fn put_approval(
        &self,
        approval: &Approval,
        expected: Option<u64>,
    ) -> airlock_core::Result<bool> {
        let json = serde_json::to_vec(approval)
            .map_err(|e| airlock_core::Error::Internal(e.to_string()))?;
        let id = approval.id.clone();
        let stored = self
            .blocking(move |s| {
                let result = s.approvals.transaction(|t| {
                    let current = match t.get(id.as_bytes())? {
                        None => None,
                        Some(v) => Some(serde_json::from_slice::<Approval>(&v).map_err(|e| {
                            ConflictableTransactionError::Abort(Error::Corrupt(format!(
                                "approval {id}: {e}"
                            )))
                        })?),
                    };
                    if current.map(|a| a.version) != expected {
                        return Ok(false);
                    }
                    t.insert(id.as_bytes(), json.as_slice())?;
                    Ok(true)
                });
                let stored = result.map_err(|e| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => Error::Sled {
                        what: "cannot store an approval".into(),
                        source: e,
                    },
                })?;
                if stored {
                    // Approvals must survive a restart the moment they are acknowledged.
                    s.db.flush().map_err(db("cannot flush an approval"))?;
                }
                Ok(stored)
            })
            .await?;
        if stored {
            let _ = self.inner.approval_changes.send(approval.id.clone());
        }
        Ok(stored)
    }

    async fn approval(&self, id: &str) -> airlock_core::Result<Option<Approval>> {
        let id = id.to_string();
        self.blocking(move |s| {
            match s
                .approvals
                .get(id.as_bytes())
                .map_err(db("cannot read an approval"))?
            {
                None => Ok(None),
                Some(v) => serde_json::from_slice(&v)
                    .map(Some)
                    .map_err(|e| Error::Corrupt(format!("approval {id}: {e}"))),
            }
        })
        .await
    }

    async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> airlock_core::Result<Vec<Approval>> {
        self.blocking(move |s| {
            let mut out = Vec::new();
            for v in s.approvals.iter().values() {
                let v = v.map_err(db("cannot list approvals"))?;
                let a: Approval = serde_json::from_slice(&v)
                    .map_err(|e| Error::Corrupt(format!("an approval: {e}")))?;
                if status.is_none_or(|st| st == a.status) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    fn subscribe_approvals(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.approval_changes.subscribe()
    }
}

impl Inner {
    fn summary(&self, id: SessionId) -> Result<Option<SessionSummary>> {
        match self
            .sessions
            .get(id.0.as_bytes())
            .map_err(db("cannot read a session"))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("session {id} cannot be read: {e}"))),
        }
    }

    fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>> {
        // Session ids are UUIDv7, so every index below iterates in start order;
        // walking backwards gives newest first and lets `since` stop the scan.
        let ids: Box<dyn Iterator<Item = sled::Result<sled::IVec>>> =
            match (&filter.user, &filter.target) {
                (Some(user), _) => Box::new(self.by_user.scan_prefix(prefix(user)).keys().rev()),
                (None, Some(target)) => {
                    Box::new(self.by_target.scan_prefix(prefix(target)).keys().rev())
                }
                (None, None) => Box::new(self.sessions.iter().keys().rev()),
            };
        let mut out = Vec::new();
        for key in ids {
            let key = key.map_err(db("cannot list sessions"))?;
            let Some(id) = id_of(&key) else { continue };
            if let (Some(since), Some((secs, nanos))) =
                (filter.since, id.0.get_timestamp().map(|t| t.to_unix()))
            {
                // An id is minted a moment before its start is recorded.
                let minted = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
                if minted + 1_000_000_000 < since.unix_timestamp_nanos() {
                    break;
                }
            }
            let Some(summary) = self.summary(id)? else {
                continue;
            };
            if filter.matches(&summary) {
                out.push(summary);
                if filter.limit > 0 && out.len() >= filter.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn prefix(s: &str) -> Vec<u8> {
    let mut p = s.as_bytes().to_vec();
    p.push(0);
    p
}

#[cfg(test)]
mod tests;
