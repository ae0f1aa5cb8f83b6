use std::net::SocketAddr;

use airlock_core::audit::{Hash, Record, SealedRecord};
use airlock_core::config::Durability;
use airlock_core::store::{SessionFilter, Store};
use airlock_core::{ClientInfo, Decision, Event, Identity, SessionId};

use super::SledStore;

fn chain(events: Vec<(Option<SessionId>, Event)>, after: Option<(u64, Hash)>) -> Vec<SealedRecord> {
    let (mut seq, mut prev) = after.unwrap_or((0, Hash::GENESIS));
    events
        .into_iter()
        .map(|(session, event)| {
            seq += 1;
            let r = SealedRecord::seal(Record {
                seq,
                time: airlock_core::now(),
                session,
                event,
                prev,
            })
            .unwrap();
            prev = r.hash;
            r
        })
        .collect()
}

fn start(user: &str, target: &str) -> Event {
    Event::SessionStart {
        identity: Identity {
            subject: user.into(),
            groups: vec!["agents".into()],
            issuer: "t".into(),
        },
        target: target.into(),
        protocol: "postgres".into(),
        client: ClientInfo {
            addr: "127.0.0.1:5000".parse::<SocketAddr>().unwrap(),
            listener: "pg".into(),
        },
    }
}

fn op(decision: Decision) -> Event {
    Event::Operation {
        operation: airlock_core::Operation::Command(airlock_core::CommandOperation {
            line: "ls".into(),
            interactive: false,
        }),
        decision,
    }
}

#[tokio::test]
async fn appends_index_sessions_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (SessionId::new(), SessionId::new());
    let deny = Decision::Deny {
        rule: "r".into(),
        message: "m".into(),
    };
    let batch = chain(
        vec![
            (Some(a), start("alice", "db")),
            (Some(b), start("bob", "host")),
            (Some(a), op(Decision::Allow)),
            (Some(a), op(deny)),
            (
                Some(a),
                Event::SessionEnd {
                    reason: "client closed".into(),
                },
            ),
        ],
        None,
    );
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&batch[..2], Durability::Fsync).await.unwrap();
        store.append(&batch[2..], Durability::Os).await.unwrap();
        let head = store.head().await.unwrap().unwrap();
        assert_eq!((head.seq, head.hash), (5, batch[4].hash));
    }
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().await.unwrap().unwrap().seq, 5);
    let alice = store
        .sessions(&SessionFilter {
            user: Some("alice".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!((alice[0].operations, alice[0].denied), (2, 1));
    assert_eq!(alice[0].end_reason.as_deref(), Some("client closed"));
    let all = store.sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![b, a],
        "newest first"
    );
    let hosts = store
        .sessions(&SessionFilter {
            target: Some("host".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].user, "bob");
    let none = store
        .sessions(&SessionFilter {
            since: Some(airlock_core::now() + time::Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let records = store.session_records(a).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 4, 5]
    );
    let raw = store.raw_records(2, 2).await.unwrap();
    assert_eq!(raw.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(raw[0].hash, Hash::of(&raw[0].body));
}

#[tokio::test]
async fn journal_frames_missing_from_the_index_are_replayed_and_a_torn_tail_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let batch = chain(
        vec![
            (None, op(Decision::Allow)),
            (None, op(Decision::Allow)),
            (None, op(Decision::Allow)),
        ],
        None,
    );
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&batch[..1], Durability::Os).await.unwrap();
    }
    // Write the next two records' frames into the journal by hand, as if the
    // gateway died after the journal write and before indexing; then a torn
    // half-frame, as if it died mid-write.
    let mut frames = Vec::new();
    for r in &batch[1..] {
        frames.extend_from_slice(&(r.body.len() as u32).to_le_bytes());
        frames.extend_from_slice(&r.hash.0);
        frames.extend_from_slice(&r.body);
    }
    frames.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(dir.path().join("journal"), frames).unwrap();

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().await.unwrap().unwrap().seq, 3);
    let raw = store.raw_records(0, 10).await.unwrap();
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[2].hash, batch[2].hash);
    assert_eq!(
        std::fs::metadata(dir.path().join("journal")).unwrap().len(),
        0,
        "rotated after replay"
    );
}
