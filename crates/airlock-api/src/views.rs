//! The API's wire types. They are the API's contract, kept apart from the
//! store's types so storage can change without breaking API clients.

use airlock_core::approvals::Approval;
use airlock_core::audit::{Record, VerifyReport};
use airlock_core::store::SessionSummary;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A session in listings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Session id (UUIDv7).
    pub id: String,
    /// Token subject.
    pub user: String,
    /// The identity's groups.
    pub groups: Vec<String>,
    /// Target name.
    pub target: String,
    /// Protocol.
    pub protocol: String,
    /// Client address.
    pub client: String,
    /// Start time, RFC 3339.
    pub started: String,
    /// End time, RFC 3339, if ended.
    pub ended: Option<String>,
    /// Operations decided.
    pub operations: u64,
    /// Operations denied.
    pub denied: u64,
    /// Why it ended.
    pub end_reason: Option<String>,
}

impl From<&SessionSummary> for SessionView {
    fn from(s: &SessionSummary) -> Self {
        SessionView {
            id: s.id.to_string(),
            user: s.user.clone(),
            groups: s.groups.clone(),
            target: s.target.clone(),
            protocol: s.protocol.clone(),
            client: s.client.clone(),
            started: rfc3339(s.started),
            ended: s.ended.map(rfc3339),
            operations: s.operations,
            denied: s.denied,
            end_reason: s.end_reason.clone(),
        }
    }
}

/// One audit record of a session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    /// Position in the audit chain.
    pub seq: u64,
    /// Time, RFC 3339.
    pub time: String,
    /// Event type: session_start, operation, input, output, result, masked, approval, error, session_end.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event as recorded (masked).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

impl From<&Record> for RecordView {
    fn from(r: &Record) -> Self {
        RecordView {
            seq: r.seq,
            time: rfc3339(r.time),
            kind: r.event.type_name().to_string(),
            event: serde_json::to_value(&r.event).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A session with its events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    /// The session.
    pub session: SessionView,
    /// Its records, in order (one page of them).
    pub events: Vec<RecordView>,
    /// When the page is full: pass this as `after` for the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// Which of a session's records to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only records after this one (its `seq`; default: from the start).
    pub after: Option<u64>,
    /// At most this many (default and most 10000).
    pub limit: Option<usize>,
}

/// Filters for listing sessions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// Only this user (token subject).
    pub user: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this protocol.
    pub protocol: Option<String>,
    /// Only sessions started at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only sessions started before this RFC 3339 time.
    pub until: Option<String>,
    /// Only sessions with an operation containing this text (case-insensitive).
    pub q: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

/// One approver's vote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    /// Who.
    pub by: String,
    /// Approve or deny.
    pub approve: bool,
    /// Reason given.
    pub reason: Option<String>,
    /// When, RFC 3339.
    pub at: String,
}

/// An approval request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// Approval id.
    pub id: String,
    /// pending, approved, denied, expired or cancelled.
    pub status: String,
    /// Who asked.
    pub requester: String,
    /// The requester's groups.
    pub requester_groups: Vec<String>,
    /// Target.
    pub target: String,
    /// Protocol.
    pub protocol: String,
    /// The session that asked.
    pub session: String,
    /// The operation in one line (masked).
    pub summary: String,
    /// The operation in full (masked).
    #[schema(value_type = Object)]
    pub operation: serde_json::Value,
    /// The rule that asked for review.
    pub rule: String,
    /// Groups that may approve.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub approvals_required: u32,
    /// Votes so far.
    pub votes: Vec<VoteView>,
    /// Created, RFC 3339.
    pub created: String,
    /// Expires, RFC 3339.
    pub expires: String,
    /// Seconds for which approving also lets the requester's further
    /// operations under the same rule and target through (0: approving
    /// covers only this operation). Shown so an approver knows what an
    /// approval gives.
    pub grant_secs: u64,
    /// Whether the requester may approve it too.
    pub self_approval: bool,
    /// For time-boxed grants: until when.
    pub grant_until: Option<String>,
    /// Whether a one-operation approval was used.
    pub executed: bool,
}

impl From<&Approval> for ApprovalView {
    fn from(a: &Approval) -> Self {
        ApprovalView {
            id: a.id.clone(),
            status: a.status.to_string(),
            requester: a.requester.subject.clone(),
            requester_groups: a.requester.groups.clone(),
            target: a.target.clone(),
            protocol: a.protocol.clone(),
            session: a.session.to_string(),
            summary: a.operation.summary(),
            operation: serde_json::to_value(&a.operation).unwrap_or(serde_json::Value::Null),
            rule: a.rule.clone(),
            approvers: a.approvers.clone(),
            approvals_required: a.approvals_required,
            votes: a
                .votes
                .iter()
                .map(|v| VoteView {
                    by: v.by.clone(),
                    approve: v.approve,
                    reason: v.reason.clone(),
                    at: rfc3339(v.at),
                })
                .collect(),
            created: rfc3339(a.created),
            expires: rfc3339(a.expires),
            grant_secs: a.grant_secs,
            self_approval: a.self_approval,
            grant_until: a.grant_until.map(rfc3339),
            executed: a.executed,
        }
    }
}

/// Filter for listing approvals.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Only approvals with this status: pending, approved, denied, expired, cancelled.
    pub status: Option<String>,
    /// At most this many, newest first (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// An approver's decision.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct DecideBody {
    /// Why (required to deny; shown to the requester).
    pub reason: Option<String>,
}

/// The result of verifying the audit chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerifyView {
    /// Whether the chain verified clean.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// Last record's sequence number.
    pub last_seq: u64,
    /// The first bad record, if any.
    pub problem: Option<ProblemView>,
}

/// What is wrong with the chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProblemView {
    /// The first bad record.
    pub seq: u64,
    /// What is wrong, for people.
    pub message: String,
}

impl From<&VerifyReport> for VerifyView {
    fn from(r: &VerifyReport) -> Self {
        VerifyView {
            ok: r.is_clean(),
            records: r.records,
            checkpoints: r.checkpoints,
            last_seq: r.last_seq,
            problem: r.problem.as_ref().map(|p| ProblemView {
                seq: p.seq(),
                message: p.to_string(),
            }),
        }
    }
}

/// Health and readiness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok", or what is wrong.
    pub status: String,
}
