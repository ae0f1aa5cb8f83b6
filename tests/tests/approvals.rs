//! Just-in-time approvals end to end through a real connector (the example
//! line connector), a real gateway and its store: the operation waits, an
//! approver decides, and the client's request proceeds or is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_core::approvals::{
    Approval, ApprovalStatus, Approvals, DecideError, MAX_PENDING_PER_REQUESTER, ReviewRequest,
    ReviewSettings, Vote,
};
use airlock_core::audit::{ChainHead, Checkpoint, CheckpointSigner, Record, SealedRecord};
use airlock_core::config::Durability;
use airlock_core::recorder::{Recorder, RecorderOptions};
use airlock_core::store::{RawRecord, SessionFilter, SessionSummary, Store};
use airlock_core::{CommandOperation, Decision, Event, Identity, Operation, SessionId};
use airlock_tests::postgres::events_in;
use airlock_tests::{EchoTarget, LineClient, TestGateway, approval_id, line_config};

fn review_rule(extra: &str) -> String {
    format!(
        r#"
[[grants]]
groups = ["dba"]
targets = ["echo"]

[[rules]]
name = "deploys-need-approval"
action = "review"
approvers = ["dba"]
message = "deploys need a DBA's approval"
{extra}
[rules.command]
line = ["^deploy "]
"#
    )
}

fn person(name: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "airlock-local".into(),
    }
}

/// Connects as `sub` and sends `line`; returns the client and the approval id from the WAIT line.
async fn ask(gw: &TestGateway, sub: &str, groups: &[&str], line: &str) -> (LineClient, String) {
    let mut client = gw.login(sub, groups).await.unwrap();
    let wait = client.send(line).await.unwrap();
    assert!(
        wait.starts_with("WAIT deploys need a DBA's approval: approval "),
        "{wait}"
    );
    assert!(
        wait.contains(" at http://"),
        "the client is told where to approve: {wait}"
    );
    let id = approval_id(&wait).unwrap();
    (client, id)
}

async fn gateway(extra: &str) -> (tempfile::TempDir, EchoTarget, TestGateway) {
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(&line_config(target.addr, &review_rule(extra)), dir.path())
        .await
        .unwrap();
    (dir, target, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_operation_waits_then_proceeds() {
    let (_dir, target, gw) = gateway("").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v2").await;
    // Operations outside the rule are not held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        target.received().is_empty(),
        "nothing reaches the target before approval"
    );

    let approvals = gw.runtime.gateway.approvals();
    let a = approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, ApprovalStatus::Approved);
    assert_eq!(client.next().await.unwrap(), "deploy v2");
    assert_eq!(target.received(), vec!["deploy v2".to_string()]);
    // A one-operation approval is used up: the same command asks again.
    let again = client.send("deploy v2").await.unwrap();
    assert!(again.starts_with("WAIT "), "{again}");
    assert!(
        !again.contains(&id),
        "a new request, not the used one: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_reason_reaches_the_client() {
    let (_dir, target, gw) = gateway("").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v3").await;
    let approvals = gw.runtime.gateway.approvals();
    assert_eq!(
        approvals
            .decide(&id, &person("dana", &["dba"]), false, None)
            .await
            .unwrap()
            .unwrap_err(),
        DecideError::ReasonRequired
    );
    approvals
        .decide(
            &id,
            &person("dana", &["dba"]),
            false,
            Some("change freeze until Monday".into()),
        )
        .await
        .unwrap()
        .unwrap();
    let answer = client.next().await.unwrap();
    assert_eq!(
        answer,
        format!(
            "ERR denied by rule deploys-need-approval: approval {id} was denied by dana: change freeze until Monday"
        )
    );
    assert!(target.received().is_empty());
    // The session is still usable.
    assert_eq!(client.send("status").await.unwrap(), "status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_request_expires() {
    let (_dir, target, gw) = gateway("timeout_secs = 1").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v4").await;
    let answer = client.next().await.unwrap();
    assert!(
        answer.starts_with(&format!(
            "ERR denied by rule deploys-need-approval: approval {id} expired"
        )),
        "{answer}"
    );
    let a = gw
        .runtime
        .gateway
        .approvals()
        .get(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, ApprovalStatus::Expired);
    assert!(target.received().is_empty());
}

/// Approvals over `store`, with a recorder of their own (no gateway).
async fn approvals_on(store: Arc<dyn Store>, dir: &std::path::Path) -> Approvals {
    let signer = CheckpointSigner::load_or_create(dir).unwrap();
    let (recorder, _task) = Recorder::start(store.clone(), signer, RecorderOptions::default())
        .await
        .unwrap();
    Approvals::new(store, recorder, None, "http://127.0.0.1", &[7; 32]).unwrap()
}

/// `who` (of group agents) asks `approvals` directly to run `line` on the
/// echo target under the deploy rule.
async fn ask_as(
    approvals: &Approvals,
    who: &str,
    line: &str,
    settings: &ReviewSettings,
) -> airlock_core::Result<Approval> {
    let operation = Operation::Command(CommandOperation {
        line: line.into(),
        interactive: false,
    });
    approvals
        .request(ReviewRequest {
            requester: &person(who, &["agents"]),
            target: "echo",
            protocol: "line",
            session: SessionId::new(),
            operation: operation.clone(),
            exact: &operation,
            exact_parameters: &[],
            rule: "deploys-need-approval",
            approvers: &["dba".to_string()],
            settings,
        })
        .await
}

/// agent-1 asks `approvals` directly to run `line`; returns the request's id.
async fn ask_directly(approvals: &Approvals, line: &str, settings: &ReviewSettings) -> String {
    ask_as(approvals, "agent-1", line, settings)
        .await
        .unwrap()
        .id
}

/// One requester cannot pile up requests without end: past the most it
/// may have waiting, the next is refused with a reason, while another
/// requester still asks, and a decision makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_has_at_most_so_many_requests_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(airlock_store::SledStore::open(dir.path()).unwrap());
    let approvals = approvals_on(store, dir.path()).await;
    let settings = ReviewSettings::default();
    let ask = async |who: &str, line: &str| ask_as(&approvals, who, line, &settings).await;
    let mut first = None;
    for i in 0..MAX_PENDING_PER_REQUESTER {
        let id = ask("agent-1", &format!("deploy v{i}")).await.unwrap().id;
        first.get_or_insert(id);
    }
    let refused = ask("agent-1", "deploy one-too-many").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("requests waiting for approval"),
        "{refused}"
    );
    // The same operation again is the request it already has.
    assert!(ask("agent-1", "deploy v3").await.is_ok());
    assert!(
        ask("agent-2", "deploy v0").await.is_ok(),
        "another requester"
    );
    let first = first.unwrap();
    approvals
        .decide(&first, &person("dana", &["dba"]), false, Some("no".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(ask("agent-1", "deploy one-too-many").await.is_ok());
}

/// A vote that comes after a request's time ran out, with nobody left
/// waiting to mark it expired (the gateway that asked restarted, say), is
/// refused as for any decided request, not answered as if it had been
/// recorded; the same vote in time counts. And an approval that nobody used
/// lapses as long after it was given as the request could wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_after_the_request_timed_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(airlock_store::SledStore::open(dir.path()).unwrap());
    let approvals = approvals_on(store, dir.path()).await;
    let settings = ReviewSettings {
        timeout: Duration::from_secs(1),
        ..ReviewSettings::default()
    };
    let ask = async |line: &str| ask_directly(&approvals, line, &settings).await;
    let dana = person("dana", &["dba"]);
    let late = ask("deploy v6").await;
    let in_time = ask("deploy v7").await;
    let approved = approvals.decide(&in_time, &dana, true, None).await.unwrap();
    assert_eq!(approved.unwrap().status, ApprovalStatus::Approved);
    // An approval given but not used (its client had gone) lets the same
    // operation through when it comes back soon...
    let soon = ask("deploy v7").await;
    assert_eq!(soon, in_time, "the approved request is found again");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        approvals.decide(&late, &dana, true, None).await.unwrap(),
        Err(DecideError::NotPending {
            id: late.clone(),
            status: ApprovalStatus::Expired
        })
    );
    assert_eq!(
        approvals.get(&late).await.unwrap().unwrap().status,
        ApprovalStatus::Expired
    );

    // ...but not once as long has passed as the request could wait: the
    // operation then asks anew.
    let anew = ask("deploy v7").await;
    assert_ne!(anew, in_time);
    assert_eq!(
        approvals.get(&anew).await.unwrap().unwrap().status,
        ApprovalStatus::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requester_cannot_approve_their_own_request_and_non_approvers_cannot_either() {
    let (_dir, target, gw) = gateway("").await;
    let (mut client, id) = ask(&gw, "dana", &["dba"], "deploy v5").await;
    let approvals = gw.runtime.gateway.approvals();
    let refused = approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap();
    assert_eq!(
        refused.unwrap_err(),
        DecideError::SelfApproval {
            id: id.clone(),
            by: "dana".into()
        }
    );
    let refused = approvals
        .decide(&id, &person("mallory", &["agents"]), true, None)
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(DecideError::NotAnApprover { .. })),
        "{refused:?}"
    );
    assert!(target.received().is_empty());
    // The same approval by someone else goes through.
    approvals
        .decide(&id, &person("erik", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next().await.unwrap(), "deploy v5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approver_rule_needs_both() {
    let (_dir, target, gw) = gateway("approvals_required = 2").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v6").await;
    let approvals = gw.runtime.gateway.approvals();
    let a = approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, ApprovalStatus::Pending);
    let dup = approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap();
    assert!(matches!(dup, Err(DecideError::AlreadyVoted { .. })));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        target.received().is_empty(),
        "one approval of two is not enough"
    );
    let a = approvals
        .decide(&id, &person("erik", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, ApprovalStatus::Approved);
    assert_eq!(client.next().await.unwrap(), "deploy v6");
}

/// The approval steps in one session's trail: `(approval id, status)`.
async fn approval_steps(gw: &TestGateway, session: SessionId) -> Vec<(String, String)> {
    gw.runtime
        .store
        .session_records(session, 0, 0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Approval { id, status, .. } => Some((id, status)),
            _ => None,
        })
        .collect()
}

/// Every session of the gateway but `except`.
async fn other_sessions(gw: &TestGateway, except: SessionId) -> Vec<SessionId> {
    gw.runtime
        .store
        .sessions(&SessionFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .filter(|id| *id != except)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_boxed_grant_covers_later_operations() {
    let (_dir, target, gw) = gateway("grant_minutes = 30").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v7").await;
    gw.runtime
        .gateway
        .approvals()
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next().await.unwrap(), "deploy v7");
    // Another deploy under the same rule runs without asking again.
    assert_eq!(client.send("deploy v8").await.unwrap(), "deploy v8");
    assert_eq!(
        target.received(),
        vec!["deploy v7".to_string(), "deploy v8".to_string()]
    );
    // The session's trail names the grant for each operation it let through.
    let session = gw
        .runtime
        .gateway
        .approvals()
        .get(&id)
        .await
        .unwrap()
        .unwrap()
        .session;
    let steps = approval_steps(&gw, session).await;
    let granted = steps
        .iter()
        .filter(|(a, s)| *a == id && s == "granted")
        .count();
    assert_eq!(granted, 2, "{steps:?}");
}

/// A grant ends: afterwards the same operation waits for a new approval,
/// and the used one is never taken for it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_grant_covers_nothing() {
    use airlock_core::store::Store;
    let (_dir, target, gw) = gateway("grant_minutes = 30").await;
    let (mut client, id) = ask(&gw, "agent-1", &["agents"], "deploy v7").await;
    let approvals = gw.runtime.gateway.approvals();
    approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next().await.unwrap(), "deploy v7");
    assert_eq!(client.send("deploy v8").await.unwrap(), "deploy v8");

    // Thirty minutes later, as far as the grant knows.
    let mut grant = approvals.get(&id).await.unwrap().unwrap();
    grant.grant_until = Some(grant.created);
    grant.version += 1;
    assert!(
        gw.runtime
            .store
            .put_approval(&grant, Some(grant.version - 1))
            .await
            .unwrap()
    );
    for line in ["deploy v7", "deploy v8"] {
        let wait = client.send(line).await.unwrap();
        assert!(wait.starts_with("WAIT "), "{line}: {wait}");
        assert_ne!(approval_id(&wait).unwrap(), id, "{wait}");
        client = gw.login("agent-1", &["agents"]).await.unwrap();
    }
    assert_eq!(
        target.received(),
        vec!["deploy v7".to_string(), "deploy v8".to_string()]
    );
}

/// Two sessions asking for the same operation wait on one request; its
/// approval is for one operation, so one of them runs and the other is
/// told to ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_approval_runs_one_operation() {
    let (_dir, target, gw) = gateway("").await;
    let (mut first, id) = ask(&gw, "agent-1", &["agents"], "deploy v5").await;
    let (mut second, same) = ask(&gw, "agent-1", &["agents"], "deploy v5").await;
    assert_eq!(same, id, "one request for the same operation");
    gw.runtime
        .gateway
        .approvals()
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    let answers = [first.next().await.unwrap(), second.next().await.unwrap()];
    let (ran, refused): (Vec<&String>, Vec<&String>) =
        answers.iter().partition(|a| *a == "deploy v5");
    assert_eq!(ran.len(), 1, "{answers:?}");
    assert!(
        refused[0].starts_with("ERR denied by rule deploys-need-approval: ")
            && refused[0].contains("another one used it"),
        "{answers:?}"
    );
    assert_eq!(target.received(), vec!["deploy v5".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_approval_survives_restart_and_is_honored_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let config = line_config(target.addr, &review_rule(""));
    let gw = TestGateway::start(&config, dir.path()).await.unwrap();
    let (client, id) = ask(&gw, "agent-1", &["agents"], "deploy v9").await;
    drop(client);
    gw.runtime.shutdown().await.unwrap();

    let gw = TestGateway::start(&config, dir.path()).await.unwrap();
    let approvals = gw.runtime.gateway.approvals();
    let pending = approvals.list(Some(ApprovalStatus::Pending)).await.unwrap();
    assert_eq!(
        pending.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    // The reconnecting client repeats the operation and is matched to the same request.
    let (mut client, again) = ask(&gw, "agent-1", &["agents"], "deploy v9").await;
    assert_eq!(again, id);
    approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.next().await.unwrap(), "deploy v9");
    assert_eq!(target.received(), vec!["deploy v9".to_string()]);
    // The use is in the trail of the session that ran the operation, not
    // of the one that asked before the restart.
    let asked = approvals.get(&id).await.unwrap().unwrap().session;
    let executed =
        |steps: &[(String, String)]| steps.iter().any(|(a, s)| *a == id && s == "executed");
    assert!(!executed(&approval_steps(&gw, asked).await));
    let others = other_sessions(&gw, asked).await;
    let mut ran = Vec::new();
    for session in others {
        if executed(&approval_steps(&gw, session).await) {
            ran.push(session);
        }
    }
    assert_eq!(ran.len(), 1, "one other session used it");
}

/// Approvers see an operation masked, but an approval is for the operation
/// exactly as sent: another one that masks alike (a different address
/// where approvers saw `<EMAIL>`) gets a request of its own, and the
/// approved one still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_covers_only_the_exact_operation_not_one_that_masks_alike() {
    let dir = tempfile::tempdir().unwrap();
    let target = EchoTarget::start().await.unwrap();
    let config = line_config(target.addr, &review_rule(""));
    let gw = TestGateway::start(&config, dir.path()).await.unwrap();
    let approved = "deploy v7 --notify alice@example.com";
    let (client, id) = ask(&gw, "agent-1", &["agents"], approved).await;
    // The requester goes away (here with the gateway, so that no session
    // waits on the request) and the request is approved meanwhile.
    drop(client);
    gw.runtime.shutdown().await.unwrap();
    let gw = TestGateway::start(&config, dir.path()).await.unwrap();
    let approvals = gw.runtime.gateway.approvals();
    approvals
        .decide(&id, &person("dana", &["dba"]), true, None)
        .await
        .unwrap()
        .unwrap();

    // The requester comes back with a different address.
    let (swapped, other) = ask(
        &gw,
        "agent-1",
        &["agents"],
        "deploy v7 --notify mallory@example.net",
    )
    .await;
    assert_ne!(other, id, "a new request, not the approved one");
    let shown = async |id: &str| approvals.get(id).await.unwrap().unwrap().operation;
    assert_eq!(
        shown(&id).await,
        shown(&other).await,
        "both look the same to approvers"
    );
    drop(swapped);
    assert!(target.received().is_empty(), "{:?}", target.received());

    // The operation that was approved runs at once.
    let mut client = gw.login("agent-1", &["agents"]).await.unwrap();
    // (Its echo comes back masked.)
    assert_eq!(
        client.send(approved).await.unwrap(),
        "deploy v7 --notify <EMAIL>"
    );
    assert_eq!(target.received(), vec![approved.to_string()]);
}

/// A store on which an approval expires just before a vote on it is
/// stored, once: what an expiry noticed by a waiting session, or another
/// gateway's vote, can do at that moment.
struct ExpiresUnderTheVote {
    inner: Arc<dyn Store>,
    armed: AtomicBool,
    /// The other way round: an approving vote is stored just before the
    /// expiry a waiting session noticed.
    vote_first: bool,
}

#[async_trait::async_trait]
impl Store for ExpiresUnderTheVote {
    async fn append(
        &self,
        batch: Vec<SealedRecord>,
        durability: Durability,
    ) -> airlock_core::Result<()> {
        self.inner.append(batch, durability).await
    }
    async fn head(&self) -> airlock_core::Result<Option<ChainHead>> {
        self.inner.head().await
    }
    async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> airlock_core::Result<()> {
        self.inner.put_checkpoint(checkpoint).await
    }
    async fn checkpoints(&self) -> airlock_core::Result<Vec<Checkpoint>> {
        self.inner.checkpoints().await
    }
    async fn raw_records(&self, after: u64, limit: usize) -> airlock_core::Result<Vec<RawRecord>> {
        self.inner.raw_records(after, limit).await
    }
    async fn sessions(&self, filter: &SessionFilter) -> airlock_core::Result<Vec<SessionSummary>> {
        self.inner.sessions(filter).await
    }
    async fn session(&self, id: SessionId) -> airlock_core::Result<Option<SessionSummary>> {
        self.inner.session(id).await
    }
    async fn session_records(
        &self,
        id: SessionId,
        after: u64,
        limit: usize,
    ) -> airlock_core::Result<Vec<Record>> {
        self.inner.session_records(id, after, limit).await
    }
    async fn flush(&self) -> airlock_core::Result<()> {
        self.inner.flush().await
    }
    async fn put_approval(
        &self,
        approval: &Approval,
        expected: Option<u64>,
    ) -> airlock_core::Result<bool> {
        if self.vote_first
            && approval.status == ApprovalStatus::Expired
            && self.armed.swap(false, Ordering::SeqCst)
        {
            let mut stored = self.inner.approval(&approval.id).await?.unwrap();
            let version = stored.version;
            stored.status = ApprovalStatus::Approved;
            stored.votes.push(Vote {
                by: "dana".into(),
                approve: true,
                reason: None,
                at: stored.expires,
            });
            stored.version += 1;
            assert!(self.inner.put_approval(&stored, Some(version)).await?);
        }
        if !self.vote_first
            && !approval.votes.is_empty()
            && self.armed.swap(false, Ordering::SeqCst)
        {
            let mut stored = self.inner.approval(&approval.id).await?.unwrap();
            let version = stored.version;
            stored.status = ApprovalStatus::Expired;
            stored.version += 1;
            assert!(self.inner.put_approval(&stored, Some(version)).await?);
        }
        self.inner.put_approval(approval, expected).await
    }
    async fn approval(&self, id: &str) -> airlock_core::Result<Option<Approval>> {
        self.inner.approval(id).await
    }
    async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
    ) -> airlock_core::Result<Vec<Approval>> {
        self.inner.approvals(status).await
    }
    fn subscribe_approvals(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.subscribe_approvals()
    }
}

/// An approving vote stored just before the expiry that a waiting session
/// noticed lets the operation run: the waiter's expiry loses its
/// compare-and-swap, and the request it reads back is approved (it used to
/// be turned into a refusal saying "approval … is approved"). The control:
/// with nothing stored under it, the expiry refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_stored_just_before_the_expiry_counts_for_the_waiter() {
    for armed in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ExpiresUnderTheVote {
            inner: Arc::new(airlock_store::SledStore::open(dir.path()).unwrap()),
            armed: AtomicBool::new(armed),
            vote_first: true,
        });
        let approvals = approvals_on(store.clone(), dir.path()).await;
        let settings = ReviewSettings {
            timeout: Duration::from_secs(1),
            ..ReviewSettings::default()
        };
        let id = ask_directly(&approvals, "deploy v1", &settings).await;
        let decision = approvals.wait(&id, SessionId::new()).await.unwrap();
        if armed {
            assert_eq!(decision, Decision::Allow);
            let a = approvals.get(&id).await.unwrap().unwrap();
            assert!(a.executed, "{a:?}");
        } else {
            assert!(
                matches!(&decision, Decision::Deny { message, .. } if message.contains("expired")),
                "{decision:?}"
            );
        }
    }
}

/// A vote that loses its compare-and-swap (the approval changed between
/// reading and storing it) is followed in the chain by a record that it
/// did not count; a vote that wins has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_that_lost_to_a_change_is_marked_void_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ExpiresUnderTheVote {
        inner: Arc::new(airlock_store::SledStore::open(dir.path()).unwrap()),
        armed: AtomicBool::new(true),
        vote_first: false,
    });
    let approvals = approvals_on(store.clone(), dir.path()).await;
    let settings = ReviewSettings::default();
    let ask = async |line: &str| ask_directly(&approvals, line, &settings).await;
    let dana = person("dana", &["dba"]);
    let lost = ask("deploy v1").await;
    assert_eq!(
        approvals.decide(&lost, &dana, true, None).await.unwrap(),
        Err(DecideError::NotPending {
            id: lost.clone(),
            status: ApprovalStatus::Expired
        })
    );
    // The control: the same vote on a request nothing changes under.
    let won = ask("deploy v2").await;
    let approved = approvals.decide(&won, &dana, true, None).await.unwrap();
    assert_eq!(approved.unwrap().status, ApprovalStatus::Approved);

    let steps: Vec<(String, String)> = events_in(store.as_ref())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e["type"] == "approval")
        .map(|e| {
            let of = if e["id"] == lost.as_str() {
                "lost"
            } else {
                "won"
            };
            (of.to_string(), e["status"].as_str().unwrap().to_string())
        })
        .collect();
    let step = |of: &str, status: &str| (of.to_string(), status.to_string());
    assert_eq!(
        steps,
        vec![
            step("lost", "requested"),
            step("lost", "approved"),
            step("lost", "vote_void"),
            step("won", "requested"),
            step("won", "approved"),
        ]
    );
}
