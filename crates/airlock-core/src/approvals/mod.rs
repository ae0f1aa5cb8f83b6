//! Just-in-time approvals.
//!
//! When policy answers `Review`, the connector asks its session for an
//! approval ([`crate::Session::request_approval`]), tells the client in its
//! own protocol where to approve, and waits on [`PendingApproval::wait`]. The
//! request lives in the store, so it survives a gateway restart; a client that
//! reconnects and repeats the same operation is matched to the request it
//! already has. Waiting uses the store's change notifications, not polling:
//! the wait ends the moment a decision is stored.
//!
//! Every step (requested, notified, approved by whom, denied with reason,
//! expired, executed) is a record in the audit chain.

pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::recorder::Recorder;
use crate::store::Store;
use crate::{Decision, Error, Event, Identity, Operation, Result, SessionId};

/// Where an approval request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for approvers.
    Pending,
    /// Approved: the operation may run (and, with a grant, similar ones until it ends).
    Approved,
    /// Denied by an approver.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// Withdrawn (the client went away before a decision).
    Cancelled,
}

impl std::fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Cancelled => "cancelled",
        })
    }
}

impl std::str::FromStr for ApprovalStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "pending" => ApprovalStatus::Pending,
            "approved" => ApprovalStatus::Approved,
            "denied" => ApprovalStatus::Denied,
            "expired" => ApprovalStatus::Expired,
            "cancelled" => ApprovalStatus::Cancelled,
            other => {
                return Err(format!(
                    "unknown status {other:?} (pending, approved, denied, expired, cancelled)"
                ));
            }
        })
    }
}

/// The most requests one requester may have waiting at once.
pub const MAX_PENDING_PER_REQUESTER: usize = 50;

/// `[approvals]` configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Where to announce new approval requests.
    #[serde(default)]
    pub webhooks: Vec<webhook::WebhookConfig>,
}

/// How a review rule wants its approvals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewSettings {
    /// How long the client waits before the request expires.
    pub timeout: Duration,
    /// How many distinct approvers must approve.
    pub approvals_required: u32,
    /// Whether the requester may approve their own request.
    pub self_approval: bool,
    /// Zero: the approval covers this one operation. Otherwise the requester
    /// may run operations under the same rule on the same target, without
    /// asking again, for this long.
    pub grant: Duration,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        ReviewSettings {
            timeout: Duration::from_secs(15 * 60),
            approvals_required: 1,
            self_approval: false,
            grant: Duration::ZERO,
        }
    }
}

impl From<&crate::policy::CompiledRule> for ReviewSettings {
    fn from(rule: &crate::policy::CompiledRule) -> Self {
        ReviewSettings {
            timeout: Duration::from_secs(rule.timeout_secs),
            approvals_required: rule.approvals_required,
            self_approval: rule.self_approval,
            grant: Duration::from_secs(rule.grant_minutes.saturating_mul(60)),
        }
    }
}

/// One approver's vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The approver's subject.
    pub by: String,
    /// Approve (true) or deny (false).
    pub approve: bool,
    /// The reason given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id (a UUIDv7).
    pub id: String,
    /// Bumped on every change; stores update only if it did not move (compare-and-swap).
    pub version: u64,
    /// Who asked.
    pub requester: Identity,
    /// The target.
    pub target: String,
    /// The protocol.
    pub protocol: String,
    /// The session that asked first.
    pub session: SessionId,
    /// The operation in full, masked.
    pub operation: Operation,
    /// Identifies "the same operation" across reconnects and restarts: a
    /// keyed digest of the operation exactly as the client sent it, so two
    /// operations that differ only in masked values (an email, a password)
    /// never share an approval, and the digest reveals nothing about them.
    pub fingerprint: String,
    /// The rule that asked for review.
    pub rule: String,
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// Approvals needed.
    pub approvals_required: u32,
    /// Whether the requester may approve.
    pub self_approval: bool,
    /// Grant length in seconds (0: this operation only).
    pub grant_secs: u64,
    /// When it was asked.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When it expires if undecided.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// Votes so far.
    pub votes: Vec<Vote>,
    /// For grants: until when similar operations are allowed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub grant_until: Option<OffsetDateTime>,
    /// Whether a one-operation approval was used.
    #[serde(default)]
    pub executed: bool,
}

impl Approval {
    /// The denial reason, if an approver denied.
    pub fn denial(&self) -> Option<&Vote> {
        self.votes.iter().find(|v| !v.approve)
    }

    /// Approvals so far.
    pub fn approvals(&self) -> usize {
        self.votes.iter().filter(|v| v.approve).count()
    }

    /// Until when an approved one-operation request may be used: as long
    /// after the decision as the request could wait for it. A client that
    /// left (or a gateway that restarted) can run the approved operation
    /// when it comes back soon, not weeks later. `None` while undecided, and
    /// for a grant, which has its own end.
    pub fn usable_until(&self) -> Option<OffsetDateTime> {
        if self.status != ApprovalStatus::Approved || self.grant_until.is_some() {
            return None;
        }
        let decided = self
            .votes
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.at)
            .max()?;
        Some(decided + (self.expires - self.created))
    }
}

/// The HKDF salt that makes the fingerprint key from the masking key. The
/// masking key is HKDF's input, never an HMAC key over a label: a pseudonym
/// is HMAC(masking key, value), so a key derived as HMAC(masking key,
/// label) would be the pseudonym of the label, which anyone able to put the
/// label into a pseudonymised column could read.
const FINGERPRINT_SALT: &[u8] = b"airlock approval fingerprint";

/// Receives approval notifications (webhooks). Must never block the request:
/// implementations queue and retry on their own.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    /// A new request was made; `url` is where to approve it.
    fn requested(&self, approval: &Approval, url: &str);
}

/// The approval service shared by all sessions.
#[derive(Clone)]
pub struct Approvals {
    store: Arc<dyn Store>,
    recorder: Recorder,
    notifier: Option<Arc<dyn Notifier>>,
    public_url: String,
    /// Serializes decisions within this gateway, so the store's
    /// compare-and-swap only ever loses to another gateway.
    deciding: Arc<tokio::sync::Mutex<()>>,
    /// Keys the fingerprints (see [`Approval::fingerprint`]).
    fingerprint_key: ring::hmac::Key,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approvals")
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// What a session asks approval for. (Its `Debug` leaves out the unmasked
/// parts, so no log line can carry them.)
#[derive(Clone)]
pub struct ReviewRequest<'a> {
    /// Who asks.
    pub requester: &'a Identity,
    /// Which target.
    pub target: &'a str,
    /// Which protocol.
    pub protocol: &'a str,
    /// From which session.
    pub session: SessionId,
    /// The operation, masked: what approvers see.
    pub operation: Operation,
    /// The operation exactly as the client sent it. Only a keyed digest of
    /// it is kept, as the fingerprint.
    pub exact: &'a Operation,
    /// Values the operation's text shows only masked (bind parameters),
    /// exactly as sent; part of the fingerprint, never stored.
    pub exact_parameters: &'a [u8],
    /// The rule that asked for review.
    pub rule: &'a str,
    /// Who may approve.
    pub approvers: &'a [String],
    /// The rule's settings.
    pub settings: &'a ReviewSettings,
}

impl std::fmt::Debug for ReviewRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewRequest")
            .field("requester", &self.requester.subject)
            .field("target", &self.target)
            .field("protocol", &self.protocol)
            .field("session", &self.session)
            .field("operation", &self.operation)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

/// Why an approver's decision was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    /// No such approval.
    #[error("there is no approval {0}")]
    NotFound(String),
    /// The approval is not pending any more.
    #[error("approval {id} is already {status}")]
    NotPending {
        /// The approval.
        id: String,
        /// Its status.
        status: ApprovalStatus,
    },
    /// The approver is not in the rule's approver groups.
    #[error("{by} may not decide approval {id}: only members of {groups} may")]
    NotAnApprover {
        /// The approval.
        id: String,
        /// Who tried.
        by: String,
        /// The approver groups.
        groups: String,
    },
    /// The requester tried to approve their own request.
    #[error("{by} asked for approval {id} and may not approve it themselves")]
    SelfApproval {
        /// The approval.
        id: String,
        /// Who tried.
        by: String,
    },
    /// The approver already voted.
    #[error("{by} has already voted on approval {id}")]
    AlreadyVoted {
        /// The approval.
        id: String,
        /// Who tried.
        by: String,
    },
    /// A denial needs a reason for the requester.
    #[error("a denial needs a reason, which is shown to the requester")]
    ReasonRequired,
}

impl Approvals {
    /// Creates the service. `public_url` is where people reach the API
    /// (links); `mask_key` is the masking key
    /// ([`crate::mask::load_or_create_key`]), from which the fingerprint
    /// key is derived.
    pub fn new(
        store: Arc<dyn Store>,
        recorder: Recorder,
        notifier: Option<Arc<dyn Notifier>>,
        public_url: impl Into<String>,
        mask_key: &[u8; 32],
    ) -> Result<Self> {
        let fingerprint_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, FINGERPRINT_SALT)
            .extract(mask_key)
            .expand(&[b"v1"], ring::hmac::HMAC_SHA256)
            .map(ring::hmac::Key::from)
            .map_err(|_| Error::Internal("cannot derive the approval fingerprint key".into()))?;
        Ok(Approvals {
            store,
            recorder,
            notifier,
            public_url: public_url.into().trim_end_matches('/').to_string(),
            deciding: Arc::new(tokio::sync::Mutex::new(())),
            fingerprint_key,
        })
    }

    /// The fingerprint of "this identity asks this target for exactly this
    /// operation under this rule".
    fn fingerprint(&self, req: &ReviewRequest<'_>) -> Result<String> {
        let json = serde_json::to_vec(req.exact)
            .map_err(|e| Error::Internal(format!("cannot serialize the operation: {e}")))?;
        let mut ctx = ring::hmac::Context::with_key(&self.fingerprint_key);
        // Length-prefixed, so no two different lists of parts run together
        // into the same bytes.
        for part in [
            req.requester.subject.as_bytes(),
            req.target.as_bytes(),
            req.rule.as_bytes(),
            &json,
            req.exact_parameters,
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        Ok(hex::encode(ctx.sign().as_ref()))
    }

    /// Where a person approves `id`.
    pub fn url(&self, id: &str) -> String {
        format!("{}/approvals/{id}", self.public_url)
    }

    /// An active time-boxed grant that covers `subject` on `target` under `rule`.
    pub async fn active_grant(
        &self,
        subject: &str,
        target: &str,
        rule: &str,
    ) -> Result<Option<Approval>> {
        let now = crate::now();
        Ok(self
            .store
            .approvals(Some(ApprovalStatus::Approved))
            .await?
            .into_iter()
            .find(|a| {
                a.requester.subject == subject
                    && a.target == target
                    && a.rule == rule
                    && a.grant_until.is_some_and(|t| t > now)
            }))
    }

    /// Finds the request for this operation (made before a reconnect or a
    /// restart) or creates one. The creation is recorded and notified.
    pub async fn request(&self, req: ReviewRequest<'_>) -> Result<Approval> {
        let fp = self.fingerprint(&req)?;
        let ReviewRequest {
            requester,
            target,
            protocol,
            session,
            operation,
            rule,
            approvers,
            settings,
            ..
        } = req;
        let now = crate::now();
        let all = self.store.approvals(None).await?;
        // An approval still to be used; a grant only while it lasts.
        let existing = all.iter().find(|a| {
            a.fingerprint == fp
                && ((a.status == ApprovalStatus::Pending && a.expires > now)
                    || (a.status == ApprovalStatus::Approved
                        && !a.executed
                        && a.grant_until.is_none_or(|t| t > now)
                        && a.usable_until().is_none_or(|t| t > now)))
        });
        if let Some(a) = existing {
            return Ok(a.clone());
        }
        // Each request is stored, notified and listed for approvers: one
        // requester looping over new statements under review must not pile
        // them up without end.
        let waiting = all
            .iter()
            .filter(|a| {
                a.status == ApprovalStatus::Pending
                    && a.expires > now
                    && a.requester.subject == requester.subject
            })
            .count();
        if waiting >= MAX_PENDING_PER_REQUESTER {
            return Err(Error::Forbidden(format!(
                "{} already has {waiting} requests waiting for approval, the most one requester may have; wait until they are decided or expire, then ask again",
                requester.subject
            )));
        }
        let expires = time::Duration::try_from(settings.timeout)
            .ok()
            .and_then(|timeout| now.checked_add(timeout))
            .ok_or_else(|| {
                Error::Config(format!(
                    "rule {rule:?}: its review timeout ({} s) is out of range",
                    settings.timeout.as_secs()
                ))
            })?;
        let approval = Approval {
            id: uuid::Uuid::now_v7().to_string(),
            version: 0,
            requester: requester.clone(),
            target: target.to_string(),
            protocol: protocol.to_string(),
            session,
            operation,
            fingerprint: fp,
            rule: rule.to_string(),
            approvers: approvers.to_vec(),
            approvals_required: settings.approvals_required.max(1),
            self_approval: settings.self_approval,
            grant_secs: settings.grant.as_secs(),
            created: now,
            expires,
            status: ApprovalStatus::Pending,
            votes: Vec::new(),
            grant_until: None,
            executed: false,
        };
        // The request is in the chain before anyone can act on it.
        self.recorder
            .record(
                Some(session),
                approval_event(&approval, "requested", None, None),
            )
            .await?;
        if !self.store.put_approval(&approval, None).await? {
            return Err(Error::Internal(format!(
                "approval {} already exists",
                approval.id
            )));
        }
        if let Some(n) = &self.notifier {
            n.requested(&approval, &self.url(&approval.id));
        }
        Ok(approval)
    }

    /// Records an approver's vote. Refusals say why.
    pub async fn decide(
        &self,
        id: &str,
        by: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<std::result::Result<Approval, DecideError>> {
        if !approve && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Ok(Err(DecideError::ReasonRequired));
        }
        let _one_at_a_time = self.deciding.lock().await;
        // Compare-and-swap loop: another gateway sharing the store may vote at the same moment.
        loop {
            let Some(mut a) = self.store.approval(id).await? else {
                return Ok(Err(DecideError::NotFound(id.to_string())));
            };
            let a = match self.expire_if_due(a.clone()).await? {
                // A vote on a request whose time ran out counts for nothing:
                // the voter is told so, as for any decided request.
                Some(expired) if expired.status == ApprovalStatus::Expired => {
                    return Ok(Err(DecideError::NotPending {
                        id: expired.id,
                        status: expired.status,
                    }));
                }
                // It changed before it could be marked expired (another
                // gateway's vote): judge the vote on what is stored now.
                Some(_) => continue,
                None => {
                    if a.status != ApprovalStatus::Pending {
                        return Ok(Err(DecideError::NotPending {
                            id: a.id,
                            status: a.status,
                        }));
                    }
                    if !by.in_any(&a.approvers) {
                        return Ok(Err(DecideError::NotAnApprover {
                            id: a.id,
                            by: by.subject.clone(),
                            groups: a.approvers.join(", "),
                        }));
                    }
                    if by.subject == a.requester.subject && !a.self_approval {
                        return Ok(Err(DecideError::SelfApproval {
                            id: a.id,
                            by: by.subject.clone(),
                        }));
                    }
                    if a.votes.iter().any(|v| v.by == by.subject) {
                        return Ok(Err(DecideError::AlreadyVoted {
                            id: a.id,
                            by: by.subject.clone(),
                        }));
                    }
                    let now = crate::now();
                    a.votes.push(Vote {
                        by: by.subject.clone(),
                        approve,
                        reason: reason.clone(),
                        at: now,
                    });
                    if !approve {
                        a.status = ApprovalStatus::Denied;
                    } else if a.approvals() as u32 >= a.approvals_required {
                        a.status = ApprovalStatus::Approved;
                        if a.grant_secs > 0 {
                            // Out of range (a grant of an older, unchecked
                            // configuration): no grant rather than a panic.
                            a.grant_until = i64::try_from(a.grant_secs)
                                .ok()
                                .and_then(|secs| now.checked_add(time::Duration::seconds(secs)));
                        }
                    }
                    let expected = a.version;
                    a.version += 1;
                    let step = if approve { "approved" } else { "denied" };
                    // The vote is in the chain before it takes effect.
                    self.recorder
                        .record(
                            Some(a.session),
                            approval_event(&a, step, Some(&by.subject), reason.as_deref()),
                        )
                        .await?;
                    if !self.store.put_approval(&a, Some(expected)).await? {
                        // The approval changed between reading and storing
                        // (an expiry, a use, another gateway's vote): the
                        // vote is in the chain but did not count. Say so
                        // before trying again on what is stored now, so the
                        // chain never shows a vote that decided nothing as
                        // if it had.
                        self.recorder
                            .record(
                                Some(a.session),
                                approval_event(
                                    &a,
                                    "vote_void",
                                    Some(&by.subject),
                                    Some("the approval changed before this vote was stored; it did not count"),
                                ),
                            )
                            .await?;
                        continue;
                    }
                    a
                }
            };
            return Ok(Ok(a));
        }
    }

    /// One approval.
    pub async fn get(&self, id: &str) -> Result<Option<Approval>> {
        match self.store.approval(id).await? {
            Some(a) => Ok(Some(self.expire_if_due(a.clone()).await?.unwrap_or(a))),
            None => Ok(None),
        }
    }

    /// Approvals, newest first, optionally only those with `status`.
    pub async fn list(&self, status: Option<ApprovalStatus>) -> Result<Vec<Approval>> {
        let mut all = self.store.approvals(None).await?;
        let mut out = Vec::with_capacity(all.len());
        for a in all.drain(..) {
            let a = match self.expire_if_due(a.clone()).await? {
                Some(e) => e,
                None => a,
            };
            if status.is_none_or(|s| s == a.status) {
                out.push(a);
            }
        }
        out.sort_by_key(|a| std::cmp::Reverse(a.created));
        Ok(out)
    }

    /// Waits until `id` is decided or expires, and turns the outcome into a
    /// decision for the connector. On `Allow` the approval is marked executed
    /// (a grant: used), recorded in `session`, the one that runs the
    /// operation (which need not be the one that asked).
    pub async fn wait(&self, id: &str, session: SessionId) -> Result<Decision> {
        let mut changes = self.store.subscribe_approvals();
        loop {
            let Some(a) = self.store.approval(id).await? else {
                return Err(Error::Internal(format!("approval {id} vanished")));
            };
            match a.status {
                ApprovalStatus::Pending => {}
                ApprovalStatus::Approved => return self.execute(a, session).await,
                _ => return Ok(outcome(&a)),
            }
            let left = (a.expires - crate::now())
                .try_into()
                .unwrap_or(Duration::ZERO);
            if left.is_zero() {
                // Expired, or a vote stored just before the expiry could be
                // (its approval counts): either way the request is read
                // again above and its status decides.
                self.expire_if_due(a).await?;
                continue;
            }
            tokio::select! {
                changed = changes.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changed {
                        return Err(Error::store("approval notifications stopped"));
                    }
                }
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// Uses an approved request for one operation. A one-operation
    /// approval lets exactly one waiter through: the first to mark it used
    /// (several sessions can wait on one request, since the same operation
    /// from the same identity finds the same request). A grant lets
    /// operations through until it ends, and none after.
    async fn execute(&self, mut a: Approval, session: SessionId) -> Result<Decision> {
        loop {
            if let Some(until) = a.grant_until {
                if until > crate::now() {
                    // Each operation the grant lets through names it in its
                    // own session's trail.
                    self.recorder
                        .record(Some(session), approval_event(&a, "granted", None, None))
                        .await?;
                    return Ok(Decision::Allow);
                }
                return Ok(Decision::Deny {
                    rule: a.rule.clone(),
                    message: format!(
                        "approval {} was a grant that has ended; run the operation again to ask for a new approval",
                        a.id
                    ),
                });
            }
            if a.executed {
                return Ok(Decision::Deny {
                    rule: a.rule.clone(),
                    message: format!(
                        "approval {} was for one operation and another one used it; run the operation again to ask for a new approval",
                        a.id
                    ),
                });
            }
            if a.usable_until().is_some_and(|t| t <= crate::now()) {
                return Ok(Decision::Deny {
                    rule: a.rule.clone(),
                    message: format!(
                        "approval {} was not used in time after it was given; run the operation again to ask for a new approval",
                        a.id
                    ),
                });
            }
            let expected = a.version;
            a.executed = true;
            a.version += 1;
            if self.store.put_approval(&a, Some(expected)).await? {
                self.recorder
                    .record(Some(session), approval_event(&a, "executed", None, None))
                    .await?;
                return Ok(Decision::Allow);
            }
            // Changed since it was read (another waiter used it, say): look again.
            a = match self.store.approval(&a.id).await? {
                Some(fresh) => fresh,
                None => return Err(Error::Internal(format!("approval {} vanished", a.id))),
            };
        }
    }

    /// Marks a pending approval past its expiry as expired (recorded).
    async fn expire_if_due(&self, mut a: Approval) -> Result<Option<Approval>> {
        if a.status != ApprovalStatus::Pending || a.expires > crate::now() {
            return Ok(None);
        }
        let expected = a.version;
        a.status = ApprovalStatus::Expired;
        a.version += 1;
        if self.store.put_approval(&a, Some(expected)).await? {
            self.recorder
                .record(Some(a.session), approval_event(&a, "expired", None, None))
                .await?;
            Ok(Some(a))
        } else {
            Ok(self.store.approval(&a.id).await?)
        }
    }
}

fn outcome(a: &Approval) -> Decision {
    let message = match a.status {
        ApprovalStatus::Denied => {
            let vote = a.denial();
            format!(
                "approval {} was denied by {}: {}",
                a.id,
                vote.map_or("an approver", |v| v.by.as_str()),
                vote.and_then(|v| v.reason.as_deref())
                    .unwrap_or("no reason given")
            )
        }
        ApprovalStatus::Expired => format!(
            "approval {} expired: nobody in {} decided in time; ask an approver and retry",
            a.id,
            a.approvers.join(", ")
        ),
        ApprovalStatus::Cancelled => format!("approval {} was cancelled", a.id),
        ApprovalStatus::Pending | ApprovalStatus::Approved => {
            format!("approval {} is {}", a.id, a.status)
        }
    };
    Decision::Deny {
        rule: a.rule.clone(),
        message,
    }
}

fn approval_event(a: &Approval, status: &str, by: Option<&str>, reason: Option<&str>) -> Event {
    Event::Approval {
        id: a.id.clone(),
        status: status.to_string(),
        by: by.map(str::to_string),
        reason: reason.map(str::to_string),
    }
}
