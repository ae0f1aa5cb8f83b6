//! The handles a connector receives: [`Gateway`] authenticates clients and
//! opens sessions; [`Session`] decides operations, records events and masks.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::approvals::{Approval, ApprovalStatus, Approvals, ReviewRequest};
use crate::identity::Verifier;
use crate::mask::{MaskEngine, Masker};
use crate::policy::Policy;
use crate::recorder::Recorder;
use crate::{
    ClientInfo, Decision, Error, Event, Identity, MaskCounts, Operation, Result, SessionId,
};

/// What a gateway is made of. Built by the binary (or a test) from config.
#[derive(Debug)]
pub struct GatewayParts {
    /// Verifies access tokens.
    pub verifier: Verifier,
    /// Grants and rules.
    pub policy: Policy,
    /// The masking engine.
    pub masking: MaskEngine,
    /// The durable append path.
    pub recorder: Recorder,
    /// Target name to protocol.
    pub targets: BTreeMap<String, String>,
    /// Just-in-time approvals.
    pub approvals: Approvals,
}

/// The gateway as a connector sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<GatewayParts>,
    refusals: Arc<Refusals>,
}

/// Refused tokens recorded one by one, per client address and minute.
const REFUSALS_RECORDED_PER_MINUTE: u32 = 20;
/// Addresses tracked at once; past this the oldest windows are dropped.
const REFUSALS_TRACKED: usize = 10_000;

/// How many refused tokens each client address (see
/// [`crate::address_holder`]) had recorded in its current minute. A client
/// that needs no valid token to be refused must not be able to fill the
/// audit store with refusals (the gateway then refuses everyone: it fails
/// closed): past [`REFUSALS_RECORDED_PER_MINUTE`] an address's refusals
/// are counted, and the count is recorded as one record with its next
/// refusal after the minute.
#[derive(Debug)]
struct Refusals {
    windows: Mutex<HashMap<IpAddr, RefusalWindow>>,
    /// A minute (shorter in tests).
    minute: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            windows: Mutex::default(),
            minute: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct RefusalWindow {
    start: Instant,
    recorded: u32,
    unrecorded: u64,
}

/// What to record of one refused token.
enum RefusalRecord {
    /// The refusal, after the count of those of the address's previous
    /// minute that were not recorded (if any).
    Record { unrecorded_before: u64 },
    /// Nothing: it is counted.
    Count,
}

impl Refusals {
    fn note(&self, addr: IpAddr) -> RefusalRecord {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= REFUSALS_TRACKED && !windows.contains_key(&addr) {
            windows.retain(|_, w| now.duration_since(w.start) < self.minute);
            if windows.len() >= REFUSALS_TRACKED {
                windows.clear();
            }
        }
        let w = windows.entry(addr).or_insert(RefusalWindow {
            start: now,
            recorded: 0,
            unrecorded: 0,
        });
        let mut unrecorded_before = 0;
        if now.duration_since(w.start) >= self.minute {
            unrecorded_before = w.unrecorded;
            *w = RefusalWindow {
                start: now,
                recorded: 0,
                unrecorded: 0,
            };
        }
        if w.recorded < REFUSALS_RECORDED_PER_MINUTE {
            w.recorded += 1;
            RefusalRecord::Record { unrecorded_before }
        } else {
            w.unrecorded += 1;
            RefusalRecord::Count
        }
    }
}

impl Gateway {
    /// Assembles a gateway.
    pub fn new(parts: GatewayParts) -> Self {
        Gateway {
            inner: Arc::new(parts),
            refusals: Arc::default(),
        }
    }

    /// The recorder, for events outside any session.
    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// The approval service (for the API).
    pub fn approvals(&self) -> &Approvals {
        &self.inner.approvals
    }

    /// Verifies a token without recording anything (API requests record their own way).
    pub async fn verify_token(&self, token: &str) -> Result<Identity> {
        self.inner.verifier.verify(token).await
    }

    /// Verifies an access token and returns who it names. A refusal is
    /// recorded (with `target` and `client`) before the error is returned:
    /// up to 20 a minute for one client address, and past that their
    /// number, recorded with the address's next refusal after the minute.
    pub async fn authenticate(
        &self,
        token: &str,
        target: &str,
        protocol: &str,
        client: &ClientInfo,
    ) -> Result<Identity> {
        match self.inner.verifier.verify(token).await {
            Ok(identity) => Ok(identity),
            Err(e) => {
                match self.refusals.note(crate::address_holder(client.addr.ip())) {
                    RefusalRecord::Record { unrecorded_before } => {
                        if unrecorded_before > 0 {
                            let summary = format!(
                                "{unrecorded_before} more access tokens from this client's address were refused in the minute before and not recorded one by one (at most {REFUSALS_RECORDED_PER_MINUTE} a minute are)"
                            );
                            self.record_refusal(None, target, protocol, client, summary)
                                .await?;
                        }
                        self.refuse(None, target, protocol, client, &e).await?;
                    }
                    RefusalRecord::Count => {}
                }
                Err(e)
            }
        }
    }

    /// Opens a session for `identity` on `target`: checks the target exists,
    /// speaks `protocol` and is granted to the identity, then durably records
    /// the session's start. Refusals are recorded too.
    pub async fn open_session(
        &self,
        identity: Identity,
        target: &str,
        protocol: &str,
        client: ClientInfo,
    ) -> Result<Session> {
        let refusal = match self.inner.targets.get(target) {
            None => Some(format!(
                "there is no target named {target:?} (ask an administrator which targets you may use)"
            )),
            Some(p) if p != protocol => Some(format!(
                "target {target:?} is reached over {p}, not {protocol}"
            )),
            Some(_) => self.inner.policy.check_access(&identity, target).err(),
        };
        if let Some(message) = refusal {
            let e = Error::Forbidden(message);
            self.refuse(Some(&identity.subject), target, protocol, &client, &e)
                .await?;
            return Err(e);
        }
        let id = SessionId::new();
        self.inner
            .recorder
            .record(
                Some(id),
                Event::SessionStart {
                    identity: identity.clone(),
                    target: target.to_string(),
                    protocol: protocol.to_string(),
                    client,
                },
            )
            .await?;
        let masker = self.inner.masking.masker(target, &identity);
        Ok(Session {
            id,
            identity,
            target: target.to_string(),
            protocol: protocol.to_string(),
            masker,
            text_masker: None,
            gateway: self.clone(),
            ended: false,
        })
    }

    async fn refuse(
        &self,
        subject: Option<&str>,
        target: &str,
        protocol: &str,
        client: &ClientInfo,
        error: &Error,
    ) -> Result<()> {
        self.record_refusal(subject, target, protocol, client, error.to_string())
            .await
    }

    async fn record_refusal(
        &self,
        subject: Option<&str>,
        target: &str,
        protocol: &str,
        client: &ClientInfo,
        reason: String,
    ) -> Result<()> {
        self.inner
            .recorder
            .record(
                None,
                Event::AccessDenied {
                    subject: subject.map(str::to_string),
                    target: target.to_string(),
                    protocol: protocol.to_string(),
                    client: client.clone(),
                    reason,
                },
            )
            .await
            .map(|_| ())
    }
}

/// One client session on one target.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    identity: Identity,
    target: String,
    protocol: String,
    masker: Masker,
    /// How the connector masks its statements' text (see
    /// [`Session::set_text_masker`]).
    text_masker: Option<TextMasker>,
    gateway: Gateway,
    ended: bool,
}

/// A connector's way of masking the text of its operations (an SQL
/// statement) for the record and for approvers: `None` when nothing is
/// masked. It must leave the operation's code in sight: masking the text
/// as one string could take code out of it (a detector span that runs from
/// one comment across code into another), and approvers and auditors read
/// that text as what runs.
pub type TextMasker = fn(&Masker, &str, &mut MaskCounts) -> Option<String>;

impl Session {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Who is on the other end.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The target's name.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The masker for this session's target and identity.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// Masks the text of this session's SQL operations with `masker`
    /// instead of as one plain string (which is what happens without it).
    pub fn set_text_masker(&mut self, masker: TextMasker) {
        self.text_masker = Some(masker);
    }

    /// Decides an operation and durably records it with the decision. When
    /// this returns `Ok(Decision::Allow)` the record is durable and the
    /// connector may forward the operation; on `Err` it must refuse it (the
    /// gateway fails closed).
    pub async fn authorize(&self, operation: &Operation) -> Result<Decision> {
        let decision = self.decide(operation);
        self.record_decision(operation.clone(), &decision).await?;
        Ok(decision)
    }

    /// Policy's decision on an operation of this session, not yet recorded:
    /// the connector must [`Session::record_decision`] before it acts on it.
    /// ([`Session::authorize`] does both; this pair lets a connector hand
    /// over an operation it does not need back, instead of a copy.)
    pub fn decide(&self, operation: &Operation) -> Decision {
        self.gateway
            .inner
            .policy
            .decide(&self.identity, &self.target, &self.protocol, operation)
    }

    /// Durably records an operation (masked here) with its decision. When
    /// this returns `Ok` a connector may act on an `Allow`; on `Err` it
    /// must refuse the operation (the gateway fails closed).
    pub async fn record_decision(&self, operation: Operation, decision: &Decision) -> Result<()> {
        let mut counts = MaskCounts::new();
        let masked = self.mask_operation(operation, &mut counts);
        self.record(Event::Operation {
            operation: masked,
            decision: decision.clone(),
        })
        .await?;
        if !counts.is_empty() {
            self.record_later(Event::Masked { counts });
        }
        Ok(())
    }

    /// Asks for approval of an operation that policy sent to review. Returns
    /// at once with the request (an existing one when this identity already
    /// asked for the same operation, even before a restart); tell the client
    /// its id and URL, then await [`PendingApproval::wait`]. An active
    /// time-boxed grant from an earlier approval makes the wait return `Allow`
    /// immediately.
    ///
    /// `operation` is unmasked (approvers see it masked). `exact_parameters`
    /// holds, exactly as sent, any values that the operation's text
    /// shows only masked (such as bind parameters). An approval covers
    /// only the exact operation, so one approved with an email or
    /// password that approvers saw masked does not also run with another.
    pub async fn request_approval(
        &self,
        operation: &Operation,
        exact_parameters: &[u8],
        decision: &Decision,
    ) -> Result<PendingApproval> {
        let Decision::Review {
            rule, approvers, ..
        } = decision
        else {
            return Err(Error::Internal(
                "request_approval needs a Review decision".into(),
            ));
        };
        let approvals = &self.gateway.inner.approvals;
        let approval = match approvals
            .active_grant(&self.identity.subject, &self.target, rule)
            .await?
        {
            Some(grant) => grant,
            None => {
                let settings = self
                    .gateway
                    .inner
                    .policy
                    .rule(rule)
                    .map(crate::approvals::ReviewSettings::from)
                    .unwrap_or_default();
                let mut counts = MaskCounts::new();
                let masked = self.mask_operation(operation.clone(), &mut counts);
                approvals
                    .request(ReviewRequest {
                        requester: &self.identity,
                        target: &self.target,
                        protocol: &self.protocol,
                        session: self.id,
                        operation: masked,
                        exact: operation,
                        exact_parameters,
                        rule,
                        approvers,
                        settings: &settings,
                    })
                    .await?
            }
        };
        Ok(PendingApproval {
            url: approvals.url(&approval.id),
            approval,
            approvals: approvals.clone(),
            session: self.id,
        })
    }

    /// Durably records an event of this session.
    pub async fn record(&self, event: Event) -> Result<()> {
        self.gateway
            .inner
            .recorder
            .record(Some(self.id), event)
            .await
            .map(|_| ())
    }

    /// Records an event of this session without waiting for durability (for
    /// things that already happened: outputs, results).
    pub fn record_later(&self, event: Event) {
        self.gateway
            .inner
            .recorder
            .record_later(Some(self.id), event);
    }

    /// Records the end of the session and waits for it to be durable.
    pub async fn end(mut self, reason: &str) -> Result<()> {
        self.ended = true;
        self.record(Event::SessionEnd {
            reason: reason.to_string(),
        })
        .await
    }

    fn mask_operation(&self, mut op: Operation, counts: &mut MaskCounts) -> Operation {
        let m = &self.masker;
        // Only text that had something masked is replaced (no copy otherwise).
        let mut mask = |text: &mut String| {
            if let Cow::Owned(masked) = m.mask_str(None, text, counts) {
                *text = masked;
            }
        };
        match &mut op {
            Operation::Sql(sql) => match self.text_masker {
                Some(text_masker) => {
                    if let Some(masked) = text_masker(m, &sql.text, counts) {
                        sql.text = masked;
                    }
                }
                None => mask(&mut sql.text),
            },
            Operation::Command(cmd) => mask(&mut cmd.line),
            Operation::Http(http) => {
                if let Some(q) = &mut http.query {
                    mask(q);
                }
            }
            Operation::Kube(_) => {}
        }
        op
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.ended {
            // The connector returned without ending the session (an error
            // path): still close it in the record.
            self.gateway.inner.recorder.record_later(
                Some(self.id),
                Event::SessionEnd {
                    reason: "connection closed".into(),
                },
            );
        }
    }
}

/// An approval request a connector waits on.
#[derive(Debug)]
pub struct PendingApproval {
    approval: Approval,
    url: String,
    approvals: Approvals,
    /// The session that waits: its trail records the approval's use.
    session: SessionId,
}

impl PendingApproval {
    /// The approval's id.
    pub fn id(&self) -> &str {
        &self.approval.id
    }

    /// Where to approve it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request as stored when it was made or found.
    pub fn approval(&self) -> &Approval {
        &self.approval
    }

    /// Whether it is already decided (a grant, or a decision made while the client was away).
    pub fn is_decided(&self) -> bool {
        self.approval.status != ApprovalStatus::Pending
    }

    /// Waits for the decision: `Allow` once approved (its use recorded in
    /// the waiting session before it returns), `Deny` with the approver's
    /// reason, or `Deny` when the request expired. Bounded by the rule's
    /// timeout.
    pub async fn wait(self) -> Result<Decision> {
        self.approvals.wait(&self.approval.id, self.session).await
    }
}

#[cfg(test)]
mod tests {
    use super::{REFUSALS_RECORDED_PER_MINUTE, RefusalRecord, Refusals};
    use std::net::IpAddr;
    use std::time::Duration;

    /// One address has its first refusals of a minute recorded and the
    /// rest counted; the count comes with its first refusal of the next
    /// minute. Another address is recorded meanwhile.
    #[test]
    fn refusals_are_recorded_up_to_a_limit_per_address_and_minute() {
        let r = Refusals {
            minute: Duration::from_millis(300),
            ..Refusals::default()
        };
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let recorded = |n: u32| {
            (0..n)
                .filter(|_| {
                    matches!(
                        r.note(a),
                        RefusalRecord::Record {
                            unrecorded_before: 0
                        }
                    )
                })
                .count()
        };
        assert_eq!(
            recorded(REFUSALS_RECORDED_PER_MINUTE + 5),
            REFUSALS_RECORDED_PER_MINUTE as usize
        );
        assert!(matches!(
            r.note(b),
            RefusalRecord::Record {
                unrecorded_before: 0
            }
        ));
        std::thread::sleep(Duration::from_millis(350));
        assert!(matches!(
            r.note(a),
            RefusalRecord::Record {
                unrecorded_before: 5
            }
        ));
        assert!(matches!(
            r.note(a),
            RefusalRecord::Record {
                unrecorded_before: 0
            }
        ));
    }
}
