//! The durable append path with group commit.
//!
//! All records go through one writer task. A caller hands it an event and
//! awaits the moment the record is durable; meanwhile other sessions' records
//! queue up, and the writer takes everything queued as one batch: one write
//! and, with `durability = "fsync"`, one fsync for all of them (group commit).
//! The writer chains hashes, so the chain order is the order records became
//! durable. It also signs checkpoints.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::{ChainHead, CheckpointSigner, Hash, Record, SealedRecord};
use crate::config::Durability;
use crate::store::Store;
use crate::{Error, Event, Result, SessionId};

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

enum Msg {
    Record {
        session: Option<SessionId>,
        // Boxed: events are large and the channel holds many messages.
        event: Box<Event>,
        done: Option<oneshot::Sender<Result<u64>>>,
    },
    Shutdown(oneshot::Sender<Result<()>>),
}

/// A handle to the writer task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Recorder {
    /// Starts the writer task, continuing the chain the store holds.
    pub async fn start(
        store: Arc<dyn Store>,
        signer: CheckpointSigner,
        options: RecorderOptions,
    ) -> Result<(Recorder, JoinHandle<()>)> {
        let head = store.head().await?;
        let (tx, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let writer = Writer {
            store,
            signer,
            options,
            head,
            sealed_seq: head.map_or(0, |h| h.seq),
        };
        let task = tokio::spawn(writer.run(rx));
        Ok((Recorder { tx }, task))
    }

    /// Records an event and returns its sequence number once it is durable.
    /// An error means the record is not stored: the caller must not go on
    /// with the action it describes.
    pub async fn record(&self, session: Option<SessionId>, event: Event) -> Result<u64> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Record {
                session,
                event: Box::new(event),
                done: Some(done),
            })
            .await
            .map_err(|_| Error::store("the recorder has stopped"))?;
        wait.await
            .map_err(|_| Error::store("the recorder stopped before the record was durable"))?
    }

    /// Queues an event without waiting for it to be durable (outputs and
    /// session ends, which describe what already happened). Order with other
    /// records of the same task is kept.
    pub fn record_later(&self, session: Option<SessionId>, event: Event) {
        let msg = Msg::Record {
            session,
            event: Box::new(event),
            done: None,
        };
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(msg) {
            // The queue is full: hand it over from a task rather than drop it.
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Writes a final checkpoint, flushes the store to disk and stops the writer.
    pub async fn shutdown(&self) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Shutdown(done))
            .await
            .map_err(|_| Error::store("the recorder has stopped"))?;
        wait.await
            .map_err(|_| Error::store("the recorder stopped during shutdown"))?
    }
}

struct Writer {
    store: Arc<dyn Store>,
    signer: CheckpointSigner,
    options: RecorderOptions,
    head: Option<ChainHead>,
    sealed_seq: u64,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(self.options.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.options.max_batch);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, self.options.max_batch) => {
                    if n == 0 {
                        let _ = self.checkpoint().await;
                        return;
                    }
                    if let Some(stop) = self.write(&mut batch).await {
                        let result = self.close().await;
                        let _ = stop.send(result);
                        return;
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.checkpoint().await {
                        tracing::error!(error = %e, "cannot write an audit checkpoint");
                    }
                }
            }
        }
    }

    /// Writes one batch; returns the shutdown reply channel if one was queued.
    async fn write(&mut self, msgs: &mut Vec<Msg>) -> Option<oneshot::Sender<Result<()>>> {
        let mut sealed = Vec::with_capacity(msgs.len());
        let mut waiters = Vec::with_capacity(msgs.len());
        let mut shutdown = None;
        let mut head = self.head;
        for msg in msgs.drain(..) {
            match msg {
                Msg::Record {
                    session,
                    event,
                    done,
                } => {
                    let seq = head.map_or(1, |h| h.seq + 1);
                    let prev = head.map_or(Hash::GENESIS, |h| h.hash);
                    let record = Record {
                        seq,
                        time: crate::now(),
                        session,
                        event: *event,
                        prev,
                    };
                    match SealedRecord::seal(record) {
                        Ok(s) => {
                            head = Some(ChainHead { seq, hash: s.hash });
                            sealed.push(s);
                            waiters.push((seq, done));
                        }
                        Err(e) => {
                            if let Some(done) = done {
                                let _ = done.send(Err(e));
                            }
                        }
                    }
                }
                Msg::Shutdown(reply) => shutdown = Some(reply),
            }
        }
        if sealed.is_empty() {
            return shutdown;
        }
        match self.store.append(&sealed, self.options.durability).await {
            Ok(()) => {
                self.head = head;
                crate::telemetry::METRICS
                    .batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for record in &sealed {
                    crate::telemetry::count(&record.record.event);
                }
                for (seq, done) in waiters {
                    if let Some(done) = done {
                        let _ = done.send(Ok(seq));
                    }
                }
                let due = self
                    .head
                    .is_some_and(|h| h.seq - self.sealed_seq >= self.options.checkpoint_every);
                if due && let Err(e) = self.checkpoint().await {
                    tracing::error!(error = %e, "cannot write an audit checkpoint");
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, records = sealed.len(), "audit store append failed; refusing the actions");
                crate::telemetry::METRICS
                    .append_failures
                    .fetch_add(sealed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for (_, done) in waiters {
                    if let Some(done) = done {
                        let _ = done.send(Err(Error::Store(store_reason(&e))));
                    }
                }
            }
        }
        shutdown
    }

    async fn checkpoint(&mut self) -> Result<()> {
        let Some(head) = self.head else {
            return Ok(());
        };
        if head.seq == self.sealed_seq {
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

fn store_reason(e: &Error) -> String {
    match e {
        Error::Store(s) => s.clone(),
        other => other.to_string(),
    }
}
