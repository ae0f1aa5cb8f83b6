//! The embedded store: an append-only segment log plus a sled index.
//!
//! Why a log in front of sled: sled can only make writes durable with a full
//! flush (write + fsync), and inserting a record costs tens of microseconds
//! (it rewrites a tree node per key). A gateway waits for the store before it
//! forwards every action, so that cost would sit on the data path. Instead a
//! record is stored by one `write` to the log (the `os` guarantee) or one
//! `write` plus `fdatasync` (the `fsync` guarantee), per batch of records,
//! and `append` returns right after it.
//!
//! sled holds only what is derived from the log, built by an indexer thread
//! behind the acknowledgement: where runs of records start (`spans`), where
//! each session's records are (`session_records`), session summaries and
//! their user/target indexes. The indexer takes everything queued in one
//! pass (lingering briefly so passes are large), so its cost per record
//! shrinks as load grows. Readers first wait until the index holds every
//! record appended before the read, so a read never misses an acknowledged
//! record. Indexing is idempotent, and a marker file records how far the
//! index is known to be flushed: on open the log is re-indexed from there.
//! If indexing fails, the store refuses further appends (the gateway fails
//! closed) and the next open re-indexes from the log.

use std::collections::BTreeMap;

// Indexing runs per batch of records: foldhash, not SipHash (keys are
// session ids the gateway made, not client input).
use foldhash::{HashMap, HashMapExt};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use airlock_core::approvals::{Approval, ApprovalStatus};
use airlock_core::audit::{ChainHead, Checkpoint, Hash, Record, SealedRecord};
use airlock_core::config::Durability;
use airlock_core::store::{RawRecord, SessionFilter, SessionSummary, Store};
use airlock_core::{Decision, Event, SessionId};
use async_trait::async_trait;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::{Error, Result, db, io};
use crate::log::{Log, Position, read_frame, skip_frame};

/// Start a new log segment once the current one holds this much (small in
/// unit tests, so they cross segments).
const SEGMENT_BYTES: u64 = if cfg!(test) { 4096 } else { 64 << 20 };
/// Flush sled and move the re-index marker forward this often.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How long the indexer lets records gather before a pass, unless a reader
/// is waiting.
/// Each pass costs sled a log write or more, whatever its size.
const INDEX_LINGER: Duration = Duration::from_millis(250);
/// At most this many records per index pass while re-indexing on open.
const REPLAY_CHUNK: usize = 16 * 1024;

const HEAD_KEY: &[u8] = b"head";
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"log-v1";
/// The marker file: the log position up to which the index is flushed.
const MARKER: &str = "indexed";

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
    /// Bytes at the end of the log that hold no whole record, left in
    /// place by [`SledStore::open_to_read`].
    torn_end: Option<TornEnd>,
    // Stops and joins the indexer when the last clone is dropped, so the
    // database (and its file lock) is released.
    _indexer: Arc<Indexer>,
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
    log: Log,
    db: sled::Db,
    /// First seq of a run of records → position of its first frame, count.
    spans: sled::Tree,
    checkpoints: sled::Tree,
    sessions: sled::Tree,
    by_user: sled::Tree,
    by_target: sled::Tree,
    /// Session id ++ first seq of an index pass → (seq, position) entries.
    session_records: sled::Tree,
    meta: sled::Tree,
    approvals: sled::Tree,
    approval_changes: tokio::sync::broadcast::Sender<String>,
    journal: Mutex<Journal>,
    queue: Mutex<Queue>,
    /// Wakes the indexer.
    work: Condvar,
    /// Wakes readers waiting for the index.
    done: Condvar,
}

/// The segment being appended to.
struct Journal {
    file: File,
    segment: u64,
    len: u64,
}

/// Records in the log and not yet in the index.
struct Queue {
    pending: Vec<Pending>,
    /// The last sequence number written to the log.
    appended: u64,
    /// Its hash: the next batch must link to it.
    appended_hash: Hash,
    /// The last sequence number in the index.
    indexed: u64,
    /// A reader is waiting: index now instead of lingering.
    urgent: bool,
    /// Why indexing failed; the store refuses appends and reads after it.
    failed: Option<String>,
    stop: bool,
    /// Checkpoints not yet in sled, by the record they seal, with their
    /// JSON: they go in when the log is synced through that record
    /// ([`Inner::flush_index`]).
    checkpoints: Vec<(u64, Vec<u8>)>,
}

/// A record as the indexer needs it.
struct Pending {
    record: Record,
    hash: Hash,
    at: Position,
    /// Where the next frame starts.
    end: u64,
}

struct Indexer {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Indexer {
    fn drop(&mut self) {
        if let Ok(mut q) = self.inner.queue.lock() {
            q.stop = true;
        }
        self.inner.work.notify_all();
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// Bytes at the end of the audit log that hold no whole record: the torn
/// end of a write a crash interrupted (never acknowledged), or an altered
/// last record, which the log cannot tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornEnd {
    /// The log segment.
    pub segment: u64,
    /// Where the bytes start in it.
    pub offset: u64,
    /// How many there are.
    pub bytes: u64,
}

impl SledStore {
    /// Opens (or creates) the store in `data_dir`, re-indexing the part of
    /// the log the index may not hold, and cutting a torn end off the log
    /// (so that the next record follows the last whole one).
    pub fn open(data_dir: &Path) -> Result<SledStore> {
        SledStore::open_with(data_dir, true)
    }

    /// Opens the store to read it (`airlock sessions`, `replay`, `audit
    /// verify`): a torn end is left as it is and reported by
    /// [`SledStore::torn_end`], since it may be an altered last record,
    /// which is evidence. Nothing may be appended to a store opened this
    /// way.
    pub fn open_to_read(data_dir: &Path) -> Result<SledStore> {
        SledStore::open_with(data_dir, false)
    }

    /// Bytes at the end of the log that hold no whole record, when the
    /// store was opened with [`SledStore::open_to_read`].
    pub fn torn_end(&self) -> Option<TornEnd> {
        self.torn_end
    }

    fn open_with(data_dir: &Path, cut_torn_end: bool) -> Result<SledStore> {
        airlock_core::create_private_dir(data_dir).map_err(io(format!(
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
        let meta = tree("meta")?;
        check_format(&database, &meta, data_dir)?;
        let log = Log::open(data_dir)?;
        let segments = log.segments()?;
        let (segment, file) = match segments.last() {
            Some(&s) => (s, log.append_to(s)?),
            None => (1, log.append_to(1)?),
        };
        let inner = Inner {
            dir: data_dir.to_path_buf(),
            spans: tree("spans")?,
            checkpoints: tree("checkpoints")?,
            sessions: tree("sessions")?,
            by_user: tree("by_user")?,
            by_target: tree("by_target")?,
            session_records: tree("session_records")?,
            meta,
            approvals: tree("approvals")?,
            approval_changes: tokio::sync::broadcast::channel(1024).0,
            db: database,
            journal: Mutex::new(Journal {
                file,
                segment,
                len: 0,
            }),
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                appended: 0,
                appended_hash: Hash::GENESIS,
                indexed: 0,
                urgent: false,
                failed: None,
                checkpoints: Vec::new(),
                stop: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            log,
        };
        let end = inner.reindex()?;
        let mut torn_end = None;
        {
            let mut journal = inner.journal()?;
            // The log ends in the segment appended to. If the index points
            // elsewhere (its newest segment is gone), cutting would destroy
            // records that are still there: refuse, and leave it all as it
            // is for `airlock audit verify` and the operator.
            if end.segment != journal.segment {
                return Err(Error::Corrupt(format!(
                    "the audit log ends in segment {} but its index has read up to segment {}: a segment is missing or was added; nothing was changed, run `airlock audit verify`",
                    journal.segment, end.segment
                )));
            }
            journal.len = end.offset;
            let size = journal
                .file
                .metadata()
                .map_err(io("cannot read the audit log"))?
                .len();
            if size > end.offset {
                torn_end = Some(TornEnd {
                    segment: end.segment,
                    offset: end.offset,
                    bytes: size - end.offset,
                });
            }
            if cut_torn_end {
                // Cut off a torn frame (never acknowledged) and anything
                // after it.
                let len = journal.len;
                journal
                    .file
                    .set_len(len)
                    .map_err(io("cannot cut the torn end of the audit log"))?;
                torn_end = None;
            }
        }
        let head = inner.head()?;
        {
            let mut q = inner.queue()?;
            q.appended = head.map_or(0, |h| h.seq);
            q.appended_hash = head.map_or(Hash::GENESIS, |h| h.hash);
            q.indexed = q.appended;
        }
        let inner = Arc::new(inner);
        let thread = std::thread::Builder::new()
            .name("airlock-indexer".into())
            .spawn({
                let inner = inner.clone();
                move || inner.run_indexer()
            })
            .map_err(io("cannot start the audit indexer thread"))?;
        Ok(SledStore {
            torn_end,
            _indexer: Arc::new(Indexer {
                inner: inner.clone(),
                thread: Mutex::new(Some(thread)),
            }),
            inner,
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

    /// Like [`Self::blocking`], once the index holds every record appended so far.
    async fn indexed<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> airlock_core::Result<T> {
        self.blocking(move |s| {
            s.caught_up()?;
            f(s)
        })
        .await
    }
}

/// Refuses a data directory written by the earlier store layout, which kept
/// record bodies in sled, rather than silently starting a second chain.
fn check_format(database: &sled::Db, meta: &sled::Tree, dir: &Path) -> Result<()> {
    match meta
        .get(FORMAT_KEY)
        .map_err(db("cannot read the store format"))?
    {
        Some(f) if f.as_ref() == FORMAT => Ok(()),
        Some(f) => Err(Error::Corrupt(format!(
            "the store in {} has format {:?}, which this Airlock does not read",
            dir.display(),
            String::from_utf8_lossy(&f)
        ))),
        None => {
            let old = database
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"records");
            if old {
                return Err(Error::Corrupt(format!(
                    "the store in {} was written by an older Airlock (records inside sled); \
                     keep it for `airlock audit verify` with that version and start this one \
                     with a new data directory",
                    dir.display()
                )));
            }
            meta.insert(FORMAT_KEY, FORMAT)
                .map_err(db("cannot write the store format"))?;
            Ok(())
        }
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

    fn queue(&self) -> Result<MutexGuard<'_, Queue>> {
        self.queue
            .lock()
            .map_err(|_| Error::Corrupt("the index queue lock is poisoned".into()))
    }

    fn journal(&self) -> Result<MutexGuard<'_, Journal>> {
        self.journal
            .lock()
            .map_err(|_| Error::Corrupt("the journal lock is poisoned".into()))
    }

    /// Indexes the log from the flushed marker (or the start) to its end and
    /// returns the position after the last whole frame.
    fn reindex(&self) -> Result<Position> {
        let segments = self.log.segments()?;
        let first = segments.first().copied().unwrap_or(1);
        // The marker says how far *this* index was flushed. An index without
        // a chain head is new (its `store/` was lost, or deleted to rebuild
        // it): it is built from the start of the log, or the next record
        // would begin a second chain inside the same log.
        let marker = match self.head()? {
            Some(_) => self.marker()?,
            None => None,
        };
        let mut pos = marker.unwrap_or(Position {
            segment: first,
            offset: 0,
        });
        let last = segments.last().copied().unwrap_or(first);
        let mut pending = Vec::new();
        let mut replayed = 0usize;
        let mut seq = None::<u64>;
        loop {
            let Some(file) = self.log.open_segment(pos.segment)? else {
                break;
            };
            let size = file
                .metadata()
                .map_err(io("cannot read the audit log"))?
                .len();
            if pos.offset > size {
                // Never extend the file: that would turn the gap into zeros.
                tracing::error!(
                    segment = pos.segment,
                    missing = pos.offset - size,
                    "the audit log is shorter than its index says: records were removed from its end; run `airlock audit verify`"
                );
                pos.offset = size;
            }
            loop {
                let frame = read_frame(&file, pos.offset)?;
                let Some(frame) = frame.filter(|f| Hash::of(&f.body) == f.hash) else {
                    break;
                };
                let sealed = SealedRecord::open(frame.body).map_err(|e| {
                    Error::Corrupt(format!(
                        "audit log segment {} at byte {}: {e}",
                        pos.segment, pos.offset
                    ))
                })?;
                seq = Some(sealed.record.seq);
                pending.push(Pending {
                    hash: sealed.hash,
                    record: sealed.record,
                    at: pos,
                    end: frame.next,
                });
                pos.offset = frame.next;
                if pending.len() >= REPLAY_CHUNK {
                    replayed += pending.len();
                    self.index(&std::mem::take(&mut pending))?;
                }
            }
            if pos.offset < size {
                if pos.segment != last {
                    return Err(Error::Corrupt(format!(
                        "audit log segment {} is damaged at byte {} (of {size}); run `airlock audit verify`",
                        pos.segment, pos.offset
                    )));
                }
                // Only a torn end is cut: bytes after which no record is
                // whole. A record altered in the middle is evidence, and
                // cutting there would destroy every record after it.
                if let Some(at) = altered_before(&file, pos.offset, size)? {
                    return Err(Error::Corrupt(format!(
                        "audit log segment {} does not hold a valid record at byte {} but holds one at byte {at}: the log was altered there, it is not the torn end of a crash (or a machine crash lost part of its last write); nothing was changed: keep a copy of the segment and see \"The log does not open\" in docs/operations.md",
                        pos.segment, pos.offset
                    )));
                }
                tracing::warn!(
                    bytes = size - pos.offset,
                    "the audit log ends in bytes that hold no whole record (a write interrupted by a crash, never acknowledged); opening the store for the gateway cuts them"
                );
            }
            match segments.iter().find(|s| **s > pos.segment) {
                Some(&next) => {
                    pos = Position {
                        segment: next,
                        offset: 0,
                    }
                }
                None => break,
            }
        }
        replayed += pending.len();
        if !pending.is_empty() {
            self.index(&pending)?;
        }
        if replayed > 0 {
            tracing::info!(records = replayed, last = ?seq, "re-indexed audit records from the log");
        }
        // A store just opened holds no checkpoint waiting for the log.
        self.flush_index(pos, 0)?;
        Ok(pos)
    }

    fn marker(&self) -> Result<Option<Position>> {
        match std::fs::read(self.log.dir().join(MARKER)) {
            Ok(bytes) => Ok(Position::decode(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read the audit index marker")(e)),
        }
    }

    /// Flushes sled, then records that the index covers the log up to `pos`.
    ///
    /// The log's segments up to `pos` are synced first. In `os` durability
    /// nothing else syncs them, and sled holds the chain head and the signed
    /// checkpoints: flushed before the records they describe, a power loss
    /// would leave an index and checkpoints ahead of the log, which every
    /// later `audit verify` reports as records removed.
    ///
    /// A failed sync of the log is not a failed flush of the index: records
    /// the gateway acknowledged may not reach the disk (an I/O error, or a
    /// volume that fills up only when pages are written out), so appends are
    /// refused from then on, as after a failed write.
    ///
    /// Checkpoints wait in memory until then ([`Store::put_checkpoint`]):
    /// those that seal records up to `through` (the last record before
    /// `pos`) go into sled here, after the sync and before sled's flush, so
    /// that a checkpoint never reaches the disk before the records it signs.
    fn flush_index(&self, pos: Position, through: u64) -> Result<()> {
        let from = self.marker()?.map_or(pos.segment, |m| m.segment);
        self.sync_log(from..=pos.segment)?;
        let ready: Vec<(u64, Vec<u8>)> = {
            let mut q = self.queue()?;
            let (ready, wait) = std::mem::take(&mut q.checkpoints)
                .into_iter()
                .partition(|(seq, _)| *seq <= through);
            q.checkpoints = wait;
            ready
        };
        for (seq, json) in ready {
            self.checkpoints
                .insert(seq.to_be_bytes(), json)
                .map_err(db("cannot store a checkpoint"))?;
        }
        self.db
            .flush()
            .map_err(db("cannot flush the audit index"))?;
        let dir = self.log.dir();
        let tmp = dir.join(format!("{MARKER}.tmp"));
        std::fs::write(&tmp, pos.encode())
            .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, dir.join(MARKER)))
            .and_then(|()| File::open(dir).and_then(|d| d.sync_all()))
            .map_err(io("cannot write the audit index marker"))
    }

    /// Syncs the log's segments in `segments` to disk.
    fn sync_log(&self, segments: std::ops::RangeInclusive<u64>) -> Result<()> {
        for segment in self.log.segments()? {
            if segments.contains(&segment)
                && let Some(file) = self.log.open_segment(segment)?
                && let Err(e) = file.sync_data()
            {
                let e = io("cannot sync the audit log to disk")(e);
                if let Ok(mut q) = self.queue() {
                    q.failed = Some(e.to_string());
                }
                tracing::error!(error = %e, "the audit log cannot be synced; records may be lost on power failure, refusing further appends");
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes a batch to the log and queues it for the index. Once this
    /// returns the records are stored.
    fn append(&self, batch: Vec<SealedRecord>, durability: Durability) -> Result<()> {
        let Some(first) = batch.first().map(|r| &r.record) else {
            return Ok(());
        };
        let prev = first.prev;
        let first = first.seq;
        let mut bytes = Vec::with_capacity(batch.iter().map(|r| r.body.len() + 36).sum());
        let offsets = crate::log::encode_frames(
            batch.iter().map(|r| (&r.hash, r.body.as_slice())),
            &mut bytes,
        )?;
        let mut journal = self.journal()?;
        {
            let q = self.queue()?;
            if let Some(why) = &q.failed {
                return Err(index_failed(why));
            }
            // The chain must never fork: a writer with a stale head (one
            // that was cancelled mid-append) is refused, not appended.
            if first != q.appended + 1 || prev != q.appended_hash {
                return Err(Error::Corrupt(format!(
                    "refused an audit batch starting at record {first}: the chain ends at record {}",
                    q.appended
                )));
            }
        }
        if journal.len >= SEGMENT_BYTES {
            let file = self.log.append_to(first)?;
            *journal = Journal {
                file,
                segment: first,
                len: 0,
            };
        }
        let base = journal.len;
        let sync = matches!(durability, Durability::Fsync);
        if let Err((e, cut_back)) = crate::log::write_batch(&mut journal.file, base, &bytes, sync) {
            if !cut_back {
                // Refused records (whole, and chained) may stay in the log,
                // where the next batch would follow them: no further writes
                // until the store is opened again, which cuts or refuses
                // what is there.
                let why = format!(
                    "a failed write could not be undone in the audit log in {}: {e}",
                    self.dir.display()
                );
                tracing::error!("{why}; refusing further appends until the gateway is restarted");
                self.queue()?.failed = Some(why);
            }
            return Err(Error::Io {
                what: format!("cannot write the audit log in {}", self.dir.display()),
                source: e,
            });
        }
        journal.len = base + bytes.len() as u64;
        let segment = journal.segment;
        // Queued while the log is still locked, so the queue is in log order.
        let mut q = self.queue()?;
        let wake = q.pending.is_empty();
        if let Some(last) = batch.last() {
            q.appended = last.record.seq;
            q.appended_hash = last.hash;
        }
        for (i, (r, offset)) in batch.into_iter().zip(&offsets).enumerate() {
            let end = offsets.get(i + 1).copied().unwrap_or(bytes.len() as u64);
            q.pending.push(Pending {
                record: r.record,
                hash: r.hash,
                at: Position {
                    segment,
                    offset: base + offset,
                },
                end: base + end,
            });
        }
        drop(q);
        drop(journal);
        // Only the first record of a pass wakes the indexer; it lingers for
        // the rest.
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Waits until the index holds every record appended before the call.
    fn caught_up(&self) -> Result<()> {
        let mut q = self.queue()?;
        let target = q.appended;
        if q.indexed < target {
            q.urgent = true;
            self.work.notify_one();
        }
        loop {
            if let Some(why) = &q.failed {
                return Err(index_failed(why));
            }
            if q.indexed >= target {
                return Ok(());
            }
            q = self
                .done
                .wait(q)
                .map_err(|_| Error::Corrupt("the index queue lock is poisoned".into()))?;
        }
    }

    /// The indexer thread: folds queued records into sled, a pass at a time,
    /// and flushes the index now and then.
    fn run_indexer(&self) {
        let mut flushed = Instant::now();
        // The last record indexed (where it ends, and its seq), and whether
        // the index has changed since the last flush.
        let mut latest: Option<(Position, u64)> = None;
        let mut unflushed = false;
        loop {
            let batch = {
                let Ok(mut q) = self.queue() else { return };
                // Checkpoints waiting for the log's sync count as changes.
                let due = |unflushed: bool, q: &Queue| unflushed || !q.checkpoints.is_empty();
                while q.pending.is_empty() && !q.stop {
                    let wait = if due(unflushed, &q) {
                        FLUSH_EVERY.saturating_sub(flushed.elapsed())
                    } else {
                        FLUSH_EVERY
                    };
                    q = match self.work.wait_timeout(q, wait) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    };
                    if due(unflushed, &q) && flushed.elapsed() >= FLUSH_EVERY {
                        break;
                    }
                }
                let deadline = Instant::now() + INDEX_LINGER;
                while !q.pending.is_empty() && !q.urgent && !q.stop {
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        break;
                    };
                    q = match self.work.wait_timeout(q, left) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    };
                }
                q.urgent = false;
                if q.pending.is_empty() && q.stop {
                    let due = due(unflushed, &q);
                    drop(q);
                    if due
                        && let Some((pos, seq)) = latest
                        && let Err(e) = self.flush_index(pos, seq)
                    {
                        tracing::warn!(error = %e, "cannot flush the audit index on close; it is re-indexed on the next open");
                    }
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            if let Some(last) = batch.last() {
                let result = self.index(&batch);
                if let Ok(mut q) = self.queue() {
                    match result {
                        Ok(()) => {
                            q.indexed = q.indexed.max(last.record.seq);
                            let pos = Position {
                                segment: last.at.segment,
                                offset: last.end,
                            };
                            latest = Some((pos, last.record.seq));
                            unflushed = true;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot index audit records; the log keeps them, refusing further appends");
                            q.failed = Some(e.to_string());
                        }
                    }
                }
                self.done.notify_all();
            }
            let checkpoints = self.queue().is_ok_and(|q| !q.checkpoints.is_empty());
            if (unflushed || checkpoints)
                && flushed.elapsed() >= FLUSH_EVERY
                && let Some((pos, seq)) = latest
            {
                if let Err(e) = self.flush_index(pos, seq) {
                    tracing::warn!(error = %e, "cannot flush the audit index; it is re-indexed from an older point on the next open");
                }
                flushed = Instant::now();
                unflushed = false;
            }
        }
    }

    /// Folds records into the index.
    ///
    /// Every write is idempotent, so a pass applied twice (re-indexing after
    /// a crash) leaves the same index: spans and session entries are keyed by
    /// sequence number and point at fixed log positions, and a session
    /// summary remembers the last record folded into it. The chain head is
    /// written last.
    fn index(&self, batch: &[Pending]) -> Result<()> {
        let mut spans = sled::Batch::default();
        let mut span: Option<(u64, Position, u32)> = None;
        let mut by_session: BTreeMap<SessionId, (u64, Vec<u8>)> = BTreeMap::new();
        let mut by_user = sled::Batch::default();
        let mut by_target = sled::Batch::default();
        let mut touched: HashMap<SessionId, Option<StoredSummary>> = HashMap::new();
        for p in batch {
            let seq = p.record.seq;
            span = match span {
                Some((first, at, n))
                    if at.segment == p.at.segment && first + u64::from(n) == seq =>
                {
                    Some((first, at, n + 1))
                }
                other => {
                    if let Some((first, at, n)) = other {
                        spans.insert(&first.to_be_bytes(), encode_span(at, n));
                    }
                    Some((seq, p.at, 1))
                }
            };
            let Some(id) = p.record.session else {
                continue;
            };
            let entry = by_session.entry(id).or_insert_with(|| (seq, Vec::new()));
            entry.1.extend_from_slice(&seq.to_be_bytes());
            entry.1.extend_from_slice(&p.at.encode());
            // Folded in place: a summary is read at most once per batch.
            let slot = match touched.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.stored_summary(id)?),
            };
            if slot.as_ref().is_none_or(|s| s.last_seq < seq) {
                fold(slot, &p.record, &mut by_user, &mut by_target);
            }
        }
        if let Some((first, at, n)) = span {
            spans.insert(&first.to_be_bytes(), encode_span(at, n));
        }
        let mut session_records = sled::Batch::default();
        for (id, (first, entries)) in by_session {
            let mut key = id.0.as_bytes().to_vec();
            key.extend_from_slice(&first.to_be_bytes());
            session_records.insert(key, entries);
        }
        let mut sessions = sled::Batch::default();
        for (id, s) in touched {
            if let Some(s) = s {
                let json = serde_json::to_vec(&s).map_err(|e| Error::Corrupt(e.to_string()))?;
                sessions.insert(id.0.as_bytes(), json);
            }
        }
        let apply = |tree: &sled::Tree, batch: sled::Batch| {
            tree.apply_batch(batch)
                .map_err(db("cannot index audit records"))
        };
        apply(&self.spans, spans)?;
        apply(&self.session_records, session_records)?;
        apply(&self.by_user, by_user)?;
        apply(&self.by_target, by_target)?;
        apply(&self.sessions, sessions)?;
        if let Some(last) = batch.last() {
            self.meta
                .insert(HEAD_KEY, encode_head(last.record.seq, &last.hash))
                .map_err(db("cannot index audit records"))?;
        }
        Ok(())
    }

    fn stored_summary(&self, id: SessionId) -> Result<Option<StoredSummary>> {
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

    /// Where record `seq` starts, from the span that holds it.
    fn locate(&self, seq: u64) -> Result<Option<Position>> {
        let Some(kv) = self.spans.range(..=seq.to_be_bytes()).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv.map_err(db("cannot read the audit index"))?;
        let first = seq_of(&k)?;
        let (mut at, count) = decode_span(&v).ok_or_else(|| {
            Error::Corrupt(format!("the index entry for record {first} is damaged"))
        })?;
        if seq >= first + u64::from(count) {
            return Ok(None);
        }
        let Some(file) = self.log.open_segment(at.segment)? else {
            return Ok(None);
        };
        for _ in first..seq {
            match skip_frame(&file, at.offset)? {
                Some(next) => at.offset = next,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Up to `limit` records after `after`, in log order, numbered by their
    /// place in the log (not by what they claim: that is for the verifier).
    fn raw_records(&self, after: u64, limit: usize) -> Result<Vec<RawRecord>> {
        let mut out = Vec::new();
        let Some(first) = after.checked_add(1) else {
            return Ok(out);
        };
        let Some(mut pos) = self.locate(first)? else {
            return Ok(out);
        };
        let Some(mut file) = self.log.open_segment(pos.segment)? else {
            return Ok(out);
        };
        let mut seq = first;
        while out.len() < limit {
            match read_frame(&file, pos.offset)? {
                Some(frame) => {
                    out.push(RawRecord {
                        seq,
                        hash: frame.hash,
                        body: frame.body,
                    });
                    seq += 1;
                    pos.offset = frame.next;
                }
                None => {
                    let Some(next) = self.log.next_segment(pos.segment)? else {
                        break;
                    };
                    let Some(f) = self.log.open_segment(next)? else {
                        break;
                    };
                    file = f;
                    pos = Position {
                        segment: next,
                        offset: 0,
                    };
                }
            }
        }
        Ok(out)
    }

    fn session_records(&self, id: SessionId, after: u64, limit: usize) -> Result<Vec<Record>> {
        let take = if limit == 0 { usize::MAX } else { limit };
        // The page's places: the `take` smallest seqs after `after`. Only
        // those are kept, so a page of a long session holds a page, not the
        // session. Re-indexing may have written a record's entry twice
        // (keyed by seq here), and entries are grouped under the seq that
        // began their indexing pass: a group that begins after the largest
        // seq kept, once the page is full, cannot add to it, and ends the
        // scan.
        let mut places = BTreeMap::new();
        for kv in self.session_records.scan_prefix(id.0.as_bytes()) {
            let (k, v) = kv.map_err(db("cannot read session records"))?;
            let first = k.get(16..).map(seq_of).transpose()?;
            if places.len() >= take
                && let (Some(first), Some((&last, _))) = (first, places.last_key_value())
                && first > last
            {
                break;
            }
            for entry in v.chunks(24) {
                let seq = entry.get(..8).map(seq_of).transpose()?;
                match (seq, entry.get(8..).and_then(Position::decode)) {
                    (Some(seq), Some(at)) => {
                        if seq > after {
                            places.insert(seq, at);
                            if places.len() > take {
                                places.pop_last();
                            }
                        }
                    }
                    _ => {
                        return Err(Error::Corrupt(format!(
                            "the index of session {id} is damaged"
                        )));
                    }
                }
            }
        }
        let places: Vec<_> = places.into_iter().collect();
        let mut out = Vec::with_capacity(places.len());
        let mut open: Option<(u64, File)> = None;
        for (seq, at) in places {
            let file = match open.take() {
                Some((s, f)) if s == at.segment => f,
                _ => self.log.open_segment(at.segment)?.ok_or_else(|| {
                    Error::Corrupt(format!(
                        "record {seq} of session {id} is missing; run `airlock audit verify`"
                    ))
                })?,
            };
            let frame = read_frame(&file, at.offset)?.ok_or_else(|| {
                Error::Corrupt(format!(
                    "record {seq} of session {id} is missing; run `airlock audit verify`"
                ))
            })?;
            let sealed = SealedRecord::open(frame.body)
                .map_err(|e| Error::Corrupt(format!("record {seq}: {e}")))?;
            // Both: a record of another session with the same seq sits
            // there when the log was cut and written on past the index.
            if sealed.record.seq != seq || sealed.record.session != Some(id) {
                return Err(Error::Corrupt(format!(
                    "record {seq} of session {id} is not where the index says; run `airlock audit verify`"
                )));
            }
            out.push(sealed.record);
            open = Some((at.segment, file));
        }
        Ok(out)
    }

    /// Makes everything appended durable on disk and flushes the index.
    fn flush(&self) -> Result<()> {
        self.caught_up()?;
        let (pos, through) = {
            let journal = self.journal()?;
            journal
                .file
                .sync_data()
                .map_err(io("cannot sync the audit log"))?;
            let pos = Position {
                segment: journal.segment,
                offset: journal.len,
            };
            (pos, self.queue()?.appended)
        };
        self.flush_index(pos, through)
    }

    /// Stored checkpoints and those waiting for the log's sync, oldest
    /// first.
    fn all_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let waiting = self.queue()?.checkpoints.clone();
        let mut all = self
            .checkpoints
            .iter()
            .values()
            .map(|v| v.map_err(db("cannot read checkpoints")).map(|v| v.to_vec()))
            .chain(waiting.into_iter().map(|(_, json)| Ok(json)))
            .map(|json| {
                serde_json::from_slice::<Checkpoint>(&json?)
                    .map_err(|e| Error::Corrupt(format!("a checkpoint cannot be read: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        all.sort_by_key(|c| c.seq);
        all.dedup_by_key(|c| c.seq);
        Ok(all)
    }
}

/// A session summary as the index keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSummary {
    #[serde(flatten)]
    summary: SessionSummary,
    /// The last record folded in; records up to it are skipped on re-index.
    #[serde(default)]
    last_seq: u64,
}

/// Where a valid record follows the invalid bytes at `from` in the newest
/// segment (of `size` bytes), if one does.
fn altered_before(file: &File, from: u64, size: u64) -> Result<Option<u64>> {
    let mut tail = vec![0u8; usize::try_from(size - from).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut tail, from)
        .map_err(io("cannot read the audit log"))?;
    // The first frame is the invalid one; a valid frame starts after its
    // first byte at the earliest.
    Ok(crate::log::valid_frame_in(&tail, from, from + 1))
}

/// The store refuses appends and reads once indexing has failed.
fn index_failed(why: &str) -> Error {
    Error::Corrupt(format!(
        "the audit index failed ({why}); restart the gateway to re-index the log"
    ))
}

fn encode_span(at: Position, count: u32) -> Vec<u8> {
    let mut v = at.encode().to_vec();
    v.extend_from_slice(&count.to_be_bytes());
    v
}

fn decode_span(v: &[u8]) -> Option<(Position, u32)> {
    Some((
        Position::decode(v)?,
        u32::from_be_bytes(v.get(16..20)?.try_into().ok()?),
    ))
}

/// Opens sled, waiting briefly for its file lock: a store closed a moment ago
/// in this process releases the lock from sled's background thread.
fn open_db(path: &Path) -> sled::Result<sled::Db> {
    let mut attempts = 0;
    loop {
        // No periodic flush: the log makes records durable, and the indexer
        // (and every approval) flushes sled explicitly.
        match sled::Config::new().path(path).flush_every_ms(None).open() {
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

/// Folds one record into its session's summary.
/// Folds a record of a session into that session's stored summary (`None`
/// until its start is seen).
fn fold(
    slot: &mut Option<StoredSummary>,
    record: &Record,
    by_user: &mut sled::Batch,
    by_target: &mut sled::Batch,
) {
    let Some(id) = record.session else {
        return;
    };
    match (&record.event, slot.as_mut()) {
        (
            Event::SessionStart {
                identity,
                target,
                protocol,
                client,
            },
            _,
        ) => {
            by_user.insert(index_key(&identity.subject, id), &[]);
            by_target.insert(index_key(target, id), &[]);
            *slot = Some(StoredSummary {
                summary: SessionSummary {
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
                },
                last_seq: record.seq,
            });
        }
        (_, None) => {}
        (event, Some(stored)) => {
            let s = &mut stored.summary;
            match event {
                Event::Operation { decision, .. } => {
                    s.operations += 1;
                    if matches!(decision, Decision::Deny { .. }) {
                        s.denied += 1;
                    }
                }
                Event::SessionEnd { reason } => {
                    s.ended = Some(record.time);
                    s.end_reason = Some(reason.clone());
                }
                _ => {}
            }
            stored.last_seq = record.seq;
        }
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
    match (
        seq.map(seq_of).transpose()?,
        hash.and_then(Hash::from_slice),
    ) {
        (Some(seq), Some(hash)) => Ok(ChainHead { seq, hash }),
        _ => Err(Error::Corrupt("the stored chain head is damaged".into())),
    }
}

fn seq_of(key: &[u8]) -> Result<u64> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt(format!("a record key has {} bytes, not 8", key.len())))
}

fn id_of(key: &[u8]) -> Option<SessionId> {
    let start = key.len().checked_sub(16)?;
    uuid::Uuid::from_slice(&key[start..]).ok().map(SessionId)
}

#[async_trait]
impl Store for SledStore {
    async fn append(
        &self,
        batch: Vec<SealedRecord>,
        durability: Durability,
    ) -> airlock_core::Result<()> {
        match durability {
            // One buffered write to a file: cheaper than a hop to a blocking
            // thread, and the recorder's writer task is the only caller.
            Durability::Os => self.inner.append(batch, durability).map_err(Into::into),
            Durability::Fsync => self.blocking(move |s| s.append(batch, durability)).await,
        }
    }

    async fn head(&self) -> airlock_core::Result<Option<ChainHead>> {
        // The last record in the log, indexed or not.
        let q = self.inner.queue()?;
        Ok((q.appended > 0).then_some(ChainHead {
            seq: q.appended,
            hash: q.appended_hash,
        }))
    }

    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> airlock_core::Result<()> {
        let json = serde_json::to_vec(checkpoint)
            .map_err(|e| airlock_core::Error::Internal(e.to_string()))?;
        // It waits in memory until the log is synced through the record it
        // seals (at the index's next flush, within a few seconds, and at
        // shutdown): sled may write it out at any time after it is put
        // there, and in `os` durability nothing has synced those records
        // yet. A checkpoint on disk ahead of the log would make every later
        // verify report records removed. A crash before then loses it, and
        // the records it would have sealed are told in the chain as
        // unsealed when the gateway starts again.
        let mut q = self.inner.queue()?;
        q.checkpoints.push((checkpoint.seq, json));
        drop(q);
        self.inner.work.notify_one();
        Ok(())
    }

    async fn checkpoints(&self) -> airlock_core::Result<Vec<Checkpoint>> {
        self.indexed(Inner::all_checkpoints).await
    }

    async fn last_checkpoint(&self) -> airlock_core::Result<Option<Checkpoint>> {
        self.indexed(|s| {
            let waiting = s
                .queue()?
                .checkpoints
                .iter()
                .max_by_key(|(seq, _)| *seq)
                .cloned();
            // Keyed by big-endian seq: the last key is the newest stored.
            let stored = s
                .checkpoints
                .last()
                .map_err(db("cannot read checkpoints"))?
                .map(|(k, v)| Ok::<_, Error>((seq_of(&k)?, v.to_vec())))
                .transpose()?;
            let newest = match (waiting, stored) {
                (Some(w), Some(s)) => Some(if w.0 >= s.0 { w } else { s }),
                (w, s) => w.or(s),
            };
            newest
                .map(|(_, json)| {
                    serde_json::from_slice(&json)
                        .map_err(|e| Error::Corrupt(format!("a checkpoint cannot be read: {e}")))
                })
                .transpose()
        })
        .await
    }

    async fn raw_records(&self, after: u64, limit: usize) -> airlock_core::Result<Vec<RawRecord>> {
        self.indexed(move |s| s.raw_records(after, limit)).await
    }

    async fn sessions(&self, filter: &SessionFilter) -> airlock_core::Result<Vec<SessionSummary>> {
        let filter = filter.clone();
        self.indexed(move |s| s.list_sessions(&filter)).await
    }

    async fn session(&self, id: SessionId) -> airlock_core::Result<Option<SessionSummary>> {
        self.indexed(move |s| s.summary(id)).await
    }

    async fn session_records(
        &self,
        id: SessionId,
        after: u64,
        limit: usize,
    ) -> airlock_core::Result<Vec<Record>> {
        self.indexed(move |s| s.session_records(id, after, limit))
            .await
    }

    async fn flush(&self) -> airlock_core::Result<()> {
        self.blocking(|s| s.flush()).await
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
        Ok(self.stored_summary(id)?.map(|s| s.summary))
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
