//! The durable append path with group commit.
//!
//! Records queue up in one FIFO. Whoever needs a record durable takes the
//! writer lock and writes *everything* queued as one batch: one write and,
//! with `durability = "fsync"`, one fsync for all of them (group commit).
//! Callers that queued while a batch was being written find their record
//! already durable when they get the lock, so under load one caller writes
//! for many, and with a single client the caller writes its own record
//! without handing it to another task (no wake-up on the data path).
//!
//! Records that nobody waits for (`record_later`: outputs, session ends) are
//! written with the next batch, or by a background task shortly after. The
//! writer chains hashes, so the chain order is the order records became
//! durable, and it signs checkpoints.
//!
//! A writer can be cancelled (its connection dropped) only while it waits
//! for the lock or settles what an earlier cancelled writer left — before
//! it takes any record — or while an `fsync` append it handed to a task
//! runs; that task still answers every caller in its batch, and the next
//! writer waits for it. A writer whose append failed leaves the chain head
//! unknown; the next one reloads it from the store, which refuses any batch
//! that does not continue its chain: the chain can stall a record but never
//! fork.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::audit::{ChainHead, CheckpointSigner, Hash, Record, SealedRecord};
use crate::config::Durability;
use crate::store::Store;
use crate::{Error, Event, Result, SessionId, Side};

/// How long a record nobody waits for may sit in the queue before the
/// background task writes it (unless a waited-for record takes it along).
///
/// Under steady traffic there is always a fresh result in the queue, so the
/// background task wakes once per delay however many statements pass. At
/// 2 ms those 500 wake-ups a second cost a single-client session about 5 µs
/// of CPU per statement (`benches/README.md`); at 10 ms about 1 µs. What a
/// crash can lose in that window is results and masking counts of
/// statements already recorded, never the statements themselves.
const LATER_DELAY: Duration = Duration::from_millis(10);

/// How the recorder writes.
#[derive(Clone, Copy, Debug)]
pub struct RecorderOptions {
    /// When a record counts as durable.
    pub durability: Durability,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every: u64,
    /// And at least this often while records arrive.
    pub checkpoint_interval: Duration,
    /// Most records in one batch.
    pub max_batch: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            durability: Durability::Os,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 4096,
        }
    }
}

struct Msg {
    session: Option<SessionId>,
    event: Event,
    done: Option<oneshot::Sender<Result<u64>>>,
}

/// A handle to the recorder. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

impl Recorder {
    /// Why the audit store's last write failed, while no write has
    /// succeeded since: every action is refused meanwhile (what `/readyz`
    /// reports).
    pub fn write_failure(&self) -> Option<String> {
        self.shared
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Why the last write failed, until one succeeds ([`Recorder::write_failure`]).
    failing: Arc<Mutex<Option<String>>>,
    writer: tokio::sync::Mutex<Writer>,
    /// Wakes the background task for records nobody waits for.
    later: Notify,
}

#[derive(Default)]
struct Queue {
    msgs: Vec<Msg>,
    /// The background task has been told about queued records nobody waits
    /// for; it is not told again until the queue has been emptied.
    later_notified: bool,
    /// Counts batches taken from the queue.
    taken: u64,
    closed: bool,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data and no invariant spans a panic.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one batch of what is queued; false if nothing was.
    async fn write_some(&self, writer: &mut Writer) -> bool {
        // Before any record leaves the queue: this is where the writer can
        // be cancelled (its connection dropped) while it waits, and records
        // it had taken would be lost to callers that are still waiting.
        let settled = writer.settle().await;
        let msgs = {
            let mut q = self.queue();
            let n = q.msgs.len().min(writer.options.max_batch.max(1));
            if n == 0 {
                return false;
            }
            let msgs = q.msgs.drain(..n).collect::<Vec<_>>();
            q.taken += 1;
            if q.msgs.is_empty() {
                q.later_notified = false;
            }
            msgs
        };
        match settled {
            Ok(()) => writer.write(msgs).await,
            Err(reason) => {
                for msg in msgs {
                    if let Some(done) = msg.done {
                        let _ = done.send(Err(Error::Store(reason.clone())));
                    }
                }
            }
        }
        true
    }

    /// Writes everything queued.
    async fn drain(&self, writer: &mut Writer) {
        while self.write_some(writer).await {}
    }
}

impl Recorder {
    /// Starts the recorder, continuing the chain the store holds. The handle
    /// is the background task that writes records nobody waits for and signs
    /// checkpoints on a timer; it ends at [`Recorder::shutdown`].
    pub async fn start(
        store: Arc<dyn Store>,
        signer: CheckpointSigner,
        options: RecorderOptions,
    ) -> Result<(Recorder, JoinHandle<()>)> {
        let head = store.head().await?;
        // Records after the newest checkpoint were written by a gateway that
        // stopped without its shutdown checkpoint (a crash). The next
        // checkpoint signs them as they are found now; the chain says so
        // first, so that an auditor knows which records no signature
        // covered while the gateway was down.
        let sealed = store.last_checkpoint().await?.map_or(0, |c| c.seq);
        let head_seq = head.map_or(0, |h| h.seq);
        let failing = Arc::new(Mutex::new(None));
        let writer = Writer {
            store,
            signer,
            options,
            head,
            sealed_seq: sealed.min(head_seq),
            stale: false,
            orphan: None,
            failing: failing.clone(),
            failed: false,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            failing,
            writer: tokio::sync::Mutex::new(writer),
            later: Notify::new(),
        });
        let task = tokio::spawn(background(shared.clone(), options.checkpoint_interval));
        let recorder = Recorder { shared };
        if head_seq > sealed {
            recorder
                .record(
                    None,
                    Event::Error {
                        side: Side::Internal,
                        message: format!(
                            "the gateway started again after records {}..={head_seq}, which no signed checkpoint covers (it stopped without its shutdown checkpoint); the next checkpoint signs them as found: if in doubt, compare them with a copy kept elsewhere",
                            sealed + 1
                        ),
                    },
                )
                .await?;
        }
        Ok((recorder, task))
    }

    /// Records an event and returns its sequence number once it is durable.
    /// An error means the record is not stored: the caller must not go on
    /// with the action it describes.
    pub async fn record(&self, session: Option<SessionId>, event: Event) -> Result<u64> {
        let (done, mut wait) = oneshot::channel();
        {
            let mut q = self.shared.queue();
            if q.closed {
                return Err(Error::store("the recorder has stopped"));
            }
            q.msgs.push(Msg {
                session,
                event,
                done: Some(done),
            });
        }
        if others_may_record() {
            // Let the other connections that are ready on this worker queue
            // their records first, so one write carries them all.
            tokio::task::yield_now().await;
        }
        loop {
            // Either a writer takes our record along (and answers us
            // directly), or we get the lock first and write it ourselves.
            let mut writer = tokio::select! {
                biased;
                result = &mut wait => return result.map_err(|_| not_durable())?,
                writer = self.shared.writer.lock() => writer,
            };
            match wait.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(not_durable()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            // One batch, then the lock goes to the next caller rather than
            // this one writing everyone else's records indefinitely.
            if !self.shared.write_some(&mut writer).await {
                // Our record is not queued. Either the write of a writer
                // that took it and was cancelled finished while this one
                // settled it (and answered us), or that writer dropped it.
                return match wait.try_recv() {
                    Ok(result) => result,
                    Err(_) => Err(not_durable()),
                };
            }
        }
    }

    /// Queues an event without waiting for it to be durable (outputs and
    /// session ends, which describe what already happened). Order with other
    /// records of the same task is kept.
    pub fn record_later(&self, session: Option<SessionId>, event: Event) {
        let wake = {
            let mut q = self.shared.queue();
            if q.closed {
                tracing::warn!("an audit record arrived after the recorder stopped; dropped");
                return;
            }
            q.msgs.push(Msg {
                session,
                event,
                done: None,
            });
            !std::mem::replace(&mut q.later_notified, true)
        };
        // One wake-up per queue-full, not per record: most of these records
        // leave with the next waited-for batch anyway.
        if wake {
            self.shared.later.notify_one();
        }
    }

    /// Writes what is queued and a final checkpoint, flushes the store to
    /// disk and stops the recorder.
    pub async fn shutdown(&self) -> Result<()> {
        let mut writer = self.shared.writer.lock().await;
        self.shared.queue().closed = true;
        self.shared.drain(&mut writer).await;
        let result = writer.close().await;
        self.shared.later.notify_one();
        result
    }
}

/// Writes records nobody waits for, shortly after they arrive, and signs a
/// checkpoint on a timer.
async fn background(shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.later.notified() => {
                // Give a waited-for record the chance to take these along;
                // if one did, records queued since woke us again themselves.
                loop {
                    let taken = {
                        let q = shared.queue();
                        if q.msgs.is_empty() {
                            break;
                        }
                        q.taken
                    };
                    tokio::time::sleep(LATER_DELAY).await;
                    if shared.queue().taken == taken {
                        let mut writer = shared.writer.lock().await;
                        shared.drain(&mut writer).await;
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let mut writer = shared.writer.lock().await;
                if let Err(e) = writer.checkpoint().await {
                    tracing::error!(error = %e, "cannot write an audit checkpoint");
                }
            }
        }
        if shared.queue().closed {
            return;
        }
    }
}

struct Writer {
    store: Arc<dyn Store>,
    signer: CheckpointSigner,
    options: RecorderOptions,
    head: Option<ChainHead>,
    sealed_seq: u64,
    /// A write was cancelled or failed: reload the head before the next one.
    stale: bool,
    /// An fsync-mode append whose writer was cancelled, and the head it
    /// leads to: it still completes, and the next writer waits for it.
    orphan: Option<(JoinHandle<Result<()>>, ChainHead)>,
    /// Shared with [`Shared::failing`].
    failing: Arc<Mutex<Option<String>>>,
    /// Whether `failing` holds a failure.
    failed: bool,
}

impl Writer {
    /// Settles what an earlier, cancelled writer left: waits for its
    /// orphaned append (kept for the next writer if this one is cancelled
    /// too) and reloads the chain head if it is unknown. The reason on
    /// `Err` fails the next batch.
    async fn settle(&mut self) -> std::result::Result<(), String> {
        if let Some((orphan, head)) = &mut self.orphan {
            let head = *head;
            let done = orphan.await;
            self.orphan = None;
            if let Ok(Ok(())) = done {
                self.head = Some(head);
                self.stale = false;
            }
        }
        if self.stale {
            let head = self.store.head().await.map_err(|e| store_reason(&e))?;
            self.head = head;
            self.stale = false;
        }
        Ok(())
    }

    /// Writes one batch and answers its waiters. Nothing in here awaits
    /// before the batch is either handed to the append task (`fsync`) or
    /// appended (`os`, one synchronous write), so a cancelled writer never
    /// strands the records it took.
    async fn write(&mut self, msgs: Vec<Msg>) {
        let mut sealed = Vec::with_capacity(msgs.len());
        let mut waiters = Vec::with_capacity(msgs.len());
        let mut head = self.head;
        for msg in msgs {
            let seq = head.map_or(1, |h| h.seq + 1);
            let prev = head.map_or(Hash::GENESIS, |h| h.hash);
            let record = Record {
                seq,
                time: crate::now(),
                session: msg.session,
                event: msg.event,
                prev,
            };
            match SealedRecord::seal(record) {
                Ok(s) => {
                    head = Some(ChainHead { seq, hash: s.hash });
                    sealed.push(s);
                    waiters.push((seq, msg.done));
                }
                Err(e) => {
                    if let Some(done) = msg.done {
                        let _ = done.send(Err(e));
                    }
                }
            }
        }
        if sealed.is_empty() {
            return;
        }
        // Until the outcome is known: if this future is dropped mid-append,
        // the next writer must learn where the chain ends.
        self.stale = true;
        let durability = self.options.durability;
        let committed = match (durability, head) {
            // An fsync takes milliseconds, so handing it to a task costs
            // nothing, and the task finishes (and answers every waiter) even
            // if this writer is dropped.
            (Durability::Fsync, Some(new_head)) => {
                let store = self.store.clone();
                let task = tokio::spawn(async move {
                    commit(store.as_ref(), sealed, waiters, Durability::Fsync).await
                });
                let (task, _) = self.orphan.insert((task, new_head));
                let result = task
                    .await
                    .unwrap_or_else(|e| Err(Error::Internal(format!("audit append task: {e}"))));
                self.orphan = None;
                result
            }
            (durability, _) => commit(self.store.as_ref(), sealed, waiters, durability).await,
        };
        // Only a change takes the lock: a write that succeeds after one that
        // did costs nothing more.
        if committed.is_err() || self.failed {
            *self.failing.lock().unwrap_or_else(PoisonError::into_inner) =
                committed.as_ref().err().map(ToString::to_string);
            self.failed = committed.is_err();
        }
        if committed.is_ok() {
            self.stale = false;
            self.head = head;
            let due = self
                .head
                .is_some_and(|h| h.seq - self.sealed_seq >= self.options.checkpoint_every);
            if due && let Err(e) = self.checkpoint().await {
                tracing::error!(error = %e, "cannot write an audit checkpoint");
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<()> {
        let Some(head) = self.head else {
            return Ok(());
        };
        if head.seq == self.sealed_seq || self.stale {
            return Ok(());
        }
        let cp = self.signer.sign(head);
        self.store.put_checkpoint(&cp).await?;
        self.sealed_seq = head.seq;
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.checkpoint().await?;
        self.store.flush().await
    }
}

/// Appends a sealed batch and answers its waiters: the sequence number
/// once durable, or the reason it is not.
async fn commit(
    store: &dyn Store,
    sealed: Vec<SealedRecord>,
    waiters: Vec<(u64, Option<oneshot::Sender<Result<u64>>>)>,
    durability: Durability,
) -> Result<()> {
    let counters = sealed
        .iter()
        .map(|r| crate::telemetry::counter(&r.record.event))
        .collect::<Vec<_>>();
    match store.append(sealed, durability).await {
        Ok(()) => {
            crate::telemetry::count_batch(&counters);
            for (seq, done) in waiters {
                if let Some(done) = done {
                    let _ = done.send(Ok(seq));
                }
            }
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, records = counters.len(), "audit store append failed; refusing the actions");
            crate::telemetry::METRICS
                .append_failures
                .fetch_add(counters.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let reason = store_reason(&e);
            for (_, done) in waiters {
                if let Some(done) = done {
                    let _ = done.send(Err(Error::Store(reason.clone())));
                }
            }
            Err(e)
        }
    }
}

/// Whether other tasks on this thread could queue records before this one is
/// written: on a single-threaded runtime (a connection worker) that runs more
/// than this task. Waiting one turn for them costs a poll of the I/O driver;
/// with nobody else there, it would cost that for nothing.
fn others_may_record() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| {
        h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
            && h.metrics().num_alive_tasks() > 1
    })
}

/// A waited-for record whose fate is unknown: the caller must not act.
fn not_durable() -> Error {
    Error::store("the recorder stopped before the record was durable")
}

fn store_reason(e: &Error) -> String {
    match e {
        Error::Store(s) => s.clone(),
        other => other.to_string(),
    }
}
