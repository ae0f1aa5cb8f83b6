//! The storage interface: the audit chain, its checkpoints, and the session
//! index derived from it.
//!
//! The chain is the source of truth. A store derives its session index from the
//! records it appends, so the index can never disagree with the chain. The
//! embedded implementation (sled) and a shared one (PostgreSQL) live in
//! `airlock-store`; connectors never see the store, only the [`crate::Session`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::approvals::{Approval, ApprovalStatus};
use crate::audit::{ChainHead, Checkpoint, Hash, Record, SealedRecord};
use crate::config::Durability;
use crate::{Result, SessionId};

/// A record as stored, unparsed: what [`crate::audit::verify`] checks.
#[derive(Clone, Debug)]
pub struct RawRecord {
    /// The position the store keeps it at.
    pub seq: u64,
    /// The hash stored beside it.
    pub hash: Hash,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// One row of the session index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session.
    pub id: SessionId,
    /// The identity's subject.
    pub user: String,
    /// The identity's groups.
    pub groups: Vec<String>,
    /// The target.
    pub target: String,
    /// The protocol.
    pub protocol: String,
    /// The client's address.
    pub client: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// When it ended, if it has.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ended: Option<OffsetDateTime>,
    /// Operations decided.
    pub operations: u64,
    /// Operations denied.
    pub denied: u64,
    /// Why it ended.
    #[serde(default)]
    pub end_reason: Option<String>,
}

/// Which sessions to list. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only this subject.
    pub user: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this protocol.
    pub protocol: Option<String>,
    /// Only sessions started at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only sessions started before this time.
    pub until: Option<OffsetDateTime>,
    /// At most this many, newest first (0 = no limit).
    pub limit: usize,
}

impl SessionFilter {
    /// Whether a summary passes the filter (limits aside).
    pub fn matches(&self, s: &SessionSummary) -> bool {
        self.user.as_ref().is_none_or(|u| *u == s.user)
            && self.target.as_ref().is_none_or(|t| *t == s.target)
            && self.protocol.as_ref().is_none_or(|p| *p == s.protocol)
            && self.since.is_none_or(|t| s.started >= t)
            && self.until.is_none_or(|t| s.started < t)
    }
}

/// Where the gateway keeps its audit chain and what is derived from it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends consecutive records that continue the chain, and returns once
    /// they are durable as `durability` asks. On error nothing of the batch is
    /// kept, so the caller may retry the same sequence numbers. A batch that
    /// does not continue the stored chain (sequence number and back-link) is
    /// refused: the chain can never fork, whatever a writer believes. The
    /// batch is handed over, so a store can keep its records (for an index)
    /// without copying them.
    async fn append(&self, batch: Vec<SealedRecord>, durability: Durability) -> Result<()>;

    /// The last record of the chain (every completed append counts, whether
    /// or not it is indexed yet), or `None` for an empty store.
    async fn head(&self) -> Result<Option<ChainHead>>;

    /// Stores a signed checkpoint.
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()>;

    /// All checkpoints, oldest first.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>>;

    /// The newest checkpoint (the one with the highest `seq`). A store that
    /// keeps them in order should answer without reading them all: the
    /// recorder asks at every start, and checkpoints accumulate for as long
    /// as the trail is kept.
    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        Ok(self.checkpoints().await?.into_iter().max_by_key(|c| c.seq))
    }

    /// Up to `limit` stored records with a position after `after`, in
    /// position order, unparsed.
    async fn raw_records(&self, after: u64, limit: usize) -> Result<Vec<RawRecord>>;

    /// Sessions matching `filter`, newest first.
    async fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>>;

    /// One session's summary.
    async fn session(&self, id: SessionId) -> Result<Option<SessionSummary>>;

    /// One session's records after record `after` (by chain sequence; 0:
    /// from its start), in order, at most `limit` of them (0: all). A long
    /// session is read page by page, so that no caller holds it whole.
    async fn session_records(&self, id: SessionId, after: u64, limit: usize)
    -> Result<Vec<Record>>;

    /// Makes everything written so far durable on disk (called at shutdown).
    async fn flush(&self) -> Result<()>;

    /// Stores an approval if the stored one has version `expected` (`None`:
    /// only if none is stored). Returns false, storing nothing, otherwise.
    /// Subscribers of [`Store::subscribe_approvals`] hear about every change.
    async fn put_approval(&self, approval: &Approval, expected: Option<u64>) -> Result<bool>;

    /// One approval by id.
    async fn approval(&self, id: &str) -> Result<Option<Approval>>;

    /// All approvals, optionally only those with `status`.
    async fn approvals(&self, status: Option<ApprovalStatus>) -> Result<Vec<Approval>>;

    /// A stream of the ids of approvals as they change.
    fn subscribe_approvals(&self) -> tokio::sync::broadcast::Receiver<String>;
}
