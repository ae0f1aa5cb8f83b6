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
            login: None,
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
        store
            .append(batch[..2].to_vec(), Durability::Fsync)
            .await
            .unwrap();
        store
            .append(batch[2..].to_vec(), Durability::Os)
            .await
            .unwrap();
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
    let records = store.session_records(a, 0, 0).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 4, 5]
    );
    // A page: after record 1 (the session's first), at most two.
    let seqs = |r: Vec<airlock_core::audit::Record>| r.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.session_records(a, 1, 2).await.unwrap()), [3, 4]);
    assert_eq!(seqs(store.session_records(a, 4, 2).await.unwrap()), [5]);
    assert_eq!(
        seqs(store.session_records(a, 2, 0).await.unwrap()),
        [3, 4, 5]
    );
    assert!(store.session_records(a, 5, 2).await.unwrap().is_empty());
    let raw = store.raw_records(2, 2).await.unwrap();
    assert_eq!(raw.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(raw[0].hash, Hash::of(&raw[0].body));
}

fn frames(records: &[SealedRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.hash.0);
        out.extend_from_slice(&r.body);
    }
    out
}

fn ops(n: usize, session: SessionId) -> Vec<(Option<SessionId>, Event)> {
    let mut events = vec![(Some(session), start("alice", "db"))];
    events.extend((1..n).map(|_| (Some(session), op(Decision::Allow))));
    events
}

#[tokio::test]
async fn log_frames_missing_from_the_index_are_indexed_on_open_and_a_torn_tail_cut() {
    let dir = tempfile::tempdir().unwrap();
    let session = SessionId::new();
    let batch = chain(ops(3, session), None);
    {
        let store = SledStore::open(dir.path()).unwrap();
        store
            .append(batch[..1].to_vec(), Durability::Os)
            .await
            .unwrap();
    }
    // Append the next two records' frames to the log by hand, as if the
    // gateway died after the log write and before indexing; then a torn
    // half-frame, as if it died mid-write.
    let segment = dir.path().join("log").join(format!("{:020}.log", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&frames(&batch[1..]));
    let good = bytes.len() as u64;
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&segment, bytes).unwrap();

    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().await.unwrap().unwrap().seq, 3);
    let raw = store.raw_records(0, 10).await.unwrap();
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[2].hash, batch[2].hash);
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        good,
        "the torn tail is cut off"
    );
    let summary = store.session(session).await.unwrap().unwrap();
    assert_eq!(summary.operations, 2);
    // The chain continues after the re-indexed records.
    let next = chain(
        vec![(Some(session), op(Decision::Allow))],
        Some((3, batch[2].hash)),
    );
    store.append(next.to_vec(), Durability::Os).await.unwrap();
    assert_eq!(store.raw_records(0, 10).await.unwrap().len(), 4);
}

/// The log's segment files, oldest first.
fn segment_files(log: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments
}

/// Only a torn end is cut on open. A record altered in the newest segment,
/// with valid records after it, is evidence: the store refuses to open and
/// changes nothing (cutting there would delete every record after it). The
/// same log with a torn end instead (one whose length claims 4 GiB, too)
/// opens with the end cut.
#[tokio::test]
async fn an_altered_record_is_refused_where_a_torn_end_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let batch = chain(ops(40, SessionId::new()), None);
    {
        let store = SledStore::open(dir.path()).unwrap();
        for part in batch.chunks(4) {
            store.append(part.to_vec(), Durability::Os).await.unwrap();
        }
    }
    let log = dir.path().join("log");
    let mut segments = segment_files(&log);
    let newest = segments.pop().unwrap();
    let original = std::fs::read(&newest).unwrap();
    let first_len = u32::from_le_bytes(original[..4].try_into().unwrap()) as usize;
    assert!(
        original.len() > 36 + first_len,
        "the newest segment holds two records or more"
    );
    // The marker gone (as when the index is rebuilt), the whole log is read.
    let reread = || std::fs::remove_file(log.join("indexed")).unwrap();

    // One byte of the newest segment's first record changed.
    let mut altered = original.clone();
    altered[36 + first_len / 2] ^= 0x01;
    std::fs::write(&newest, &altered).unwrap();
    reread();
    let Err(e) = SledStore::open(dir.path()) else {
        panic!("a log with an altered record opened");
    };
    assert!(e.to_string().contains("the log was altered there"), "{e}");
    assert_eq!(std::fs::read(&newest).unwrap(), altered, "nothing was cut");

    // The same log with a torn end opens, and loses only that end: a whole
    // header whose length claims 4 GiB (which is not allocated), then a
    // few bytes.
    let mut torn = original.clone();
    torn.extend_from_slice(&[0xff; 4]);
    torn.extend_from_slice(&[7; 32]);
    torn.extend_from_slice(b"{\"seq\":");
    std::fs::write(&newest, &torn).unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.head().await.unwrap().unwrap().seq, 40);
    assert_eq!(std::fs::read(&newest).unwrap(), original);
}

#[tokio::test]
async fn reindexing_the_whole_log_leaves_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let session = SessionId::new();
    let batch = chain(ops(50, session), None);
    let before = {
        let store = SledStore::open(dir.path()).unwrap();
        for part in batch.chunks(7) {
            store.append(part.to_vec(), Durability::Os).await.unwrap();
        }
        store.session(session).await.unwrap().unwrap()
    };
    assert_eq!(before.operations, 49);
    // Losing the marker means re-indexing every record a second time.
    std::fs::remove_file(dir.path().join("log").join("indexed")).unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.session(session).await.unwrap().unwrap(), before);
    let records = store.session_records(session, 0, 0).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>(),
        "each record once"
    );
    // Page by page, over index passes written twice with other
    // boundaries (the first pass per append of 7, the re-index in one):
    // every record once, in order.
    for limit in [1, 3, 7, 8, 49, 50, 51] {
        let (mut after, mut paged) = (0, Vec::new());
        loop {
            let page = store.session_records(session, after, limit).await.unwrap();
            let Some(last) = page.last() else { break };
            assert!(page.len() <= limit);
            after = last.seq;
            paged.extend(page.iter().map(|r| r.seq));
        }
        assert_eq!(paged, (1..=50).collect::<Vec<_>>(), "pages of {limit}");
    }
}

/// `store/` is derived from the log: deleted (or lost), it is rebuilt from
/// the whole log, and new records continue the one chain.
#[tokio::test]
async fn a_lost_index_is_rebuilt_from_the_whole_log_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let session = SessionId::new();
    let batch = chain(ops(20, session), None);
    let last = {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(batch.clone(), Durability::Os).await.unwrap();
        store.head().await.unwrap().unwrap()
    };
    std::fs::remove_dir_all(dir.path().join("store")).unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.head().await.unwrap(),
        Some(last),
        "the head is the log's"
    );
    let more = chain(ops(3, session), Some((last.seq, last.hash)));
    store.append(more, Durability::Os).await.unwrap();
    let records = store.session_records(session, 0, 0).await.unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=23).collect::<Vec<_>>(),
        "one chain, every record once"
    );
}

/// A log whose newest segment is gone does not open, and opening it
/// changes nothing: the segments that are left keep every byte (no torn
/// tail is cut from the wrong segment).
#[tokio::test]
async fn a_missing_newest_segment_is_refused_and_nothing_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let session = SessionId::new();
    let batch = chain(ops(60, session), None);
    {
        let store = SledStore::open(dir.path()).unwrap();
        for part in batch.chunks(5) {
            store.append(part.to_vec(), Durability::Os).await.unwrap();
        }
    }
    let log = dir.path().join("log");
    let mut segments = segment_files(&log);
    assert!(segments.len() > 2, "{segments:?}");
    std::fs::remove_file(segments.pop().unwrap()).unwrap();
    let sizes = |paths: &[std::path::PathBuf]| -> Vec<u64> {
        paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect()
    };
    let before = sizes(&segments);
    let Err(e) = SledStore::open(dir.path()) else {
        panic!("a log without its newest segment opened");
    };
    assert!(e.to_string().contains("a segment is missing"), "{e}");
    assert_eq!(sizes(&segments), before, "nothing was cut");
}

#[tokio::test]
async fn records_span_segments_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let session = SessionId::new();
    // Each record is ~300 bytes; the test build rolls segments at 4 KiB.
    let batch = chain(ops(200, session), None);
    {
        let store = SledStore::open(dir.path()).unwrap();
        for part in batch.chunks(5) {
            store.append(part.to_vec(), Durability::Os).await.unwrap();
        }
        // Read right after appending: the index has caught up first.
        let raw = store.raw_records(0, 1000).await.unwrap();
        assert_eq!(raw.len(), 200);
    }
    let segments = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count();
    assert!(segments > 5, "only {segments} segments");
    let store = SledStore::open(dir.path()).unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.raw_records(after, 17).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in page {
            assert_eq!(r.hash, batch[r.seq as usize - 1].hash);
            seen.push(r.seq);
        }
    }
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
    let records = store.session_records(session, 0, 0).await.unwrap();
    assert_eq!(records.len(), 200);
    assert_eq!(store.head().await.unwrap().unwrap().seq, 200);
}

#[tokio::test]
async fn a_store_from_the_older_layout_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("store")).unwrap();
        db.open_tree("records").unwrap().insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }
    let err = (0..30)
        .find_map(|_| match SledStore::open(dir.path()) {
            Err(e) if e.to_string().contains("acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                None
            }
            other => Some(other),
        })
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("older Airlock"), "{err}");
    // A fresh directory opens.
    let fresh = tempfile::tempdir().unwrap();
    SledStore::open(fresh.path()).unwrap();
}

#[tokio::test]
async fn a_batch_that_does_not_continue_the_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let batch = chain(ops(4, SessionId::new()), None);
    store
        .append(batch[..2].to_vec(), Durability::Os)
        .await
        .unwrap();
    // A writer with a stale head tries to write record 2 again, or to skip one.
    let err = store
        .append(batch[1..3].to_vec(), Durability::Os)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chain ends at record 2"), "{err}");
    assert!(
        store
            .append(batch[3..].to_vec(), Durability::Os)
            .await
            .is_err()
    );
    // A forged successor of record 2 with the wrong back-link is refused too.
    let forged = chain(vec![(None, op(Decision::Allow))], Some((2, Hash::GENESIS)));
    assert!(store.append(forged.to_vec(), Durability::Os).await.is_err());
    // The rightful continuation is accepted.
    store
        .append(batch[2..].to_vec(), Durability::Os)
        .await
        .unwrap();
    assert_eq!(store.raw_records(0, 10).await.unwrap().len(), 4);
}

/// Many concurrent writers, some of them cancelled while they wait or
/// write: every record that was acknowledged is stored, and the chain
/// verifies clean (it never forks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_cancelled_writers_keep_one_clean_chain() {
    use airlock_core::audit::CheckpointSigner;
    use airlock_core::recorder::{Recorder, RecorderOptions};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let signer = CheckpointSigner::load_or_create(dir.path()).unwrap();
    let key = signer.public_key();
    // fsync mode: the append awaits a blocking thread, so a writer can be
    // cancelled in the middle of it.
    let options = RecorderOptions {
        checkpoint_every: 50,
        durability: Durability::Fsync,
        ..RecorderOptions::default()
    };
    let (recorder, task) = Recorder::start(store.clone(), signer, options)
        .await
        .unwrap();
    let session = SessionId::new();
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            let record = recorder.record(Some(session), op(Decision::Allow));
            if i % 7 == 0 {
                // Dropped at its first await point or soon after.
                tokio::time::timeout(std::time::Duration::from_micros(i), record)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                if i % 3 == 0 {
                    recorder.record_later(Some(session), op(Decision::Allow));
                }
                Some(record.await.unwrap())
            }
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        if let Some(seq) = t.await.unwrap() {
            acknowledged.push(seq);
        }
    }
    recorder.shutdown().await.unwrap();
    task.await.unwrap();
    let report = airlock_core::audit::verify(store.as_ref(), &key)
        .await
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problem);
    let stored: std::collections::HashSet<u64> = store
        .raw_records(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let waited = (0..400).filter(|i| i % 7 != 0).count();
    assert!(
        acknowledged.len() >= waited,
        "{} < {waited}",
        acknowledged.len()
    );
    for seq in &acknowledged {
        assert!(stored.contains(seq), "acknowledged record {seq} is missing");
    }
}

/// The newest checkpoint is read without the others (as the recorder does
/// at every start): the one with the highest seq, whatever order they were
/// stored in, and none in a store without any.
#[tokio::test]
async fn the_newest_checkpoint_is_the_highest_seq() {
    use airlock_core::audit::{ChainHead, CheckpointSigner};
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.last_checkpoint().await.unwrap().is_none());
    let signer = CheckpointSigner::load_or_create(dir.path()).unwrap();
    for seq in [5u64, 300, 40, 256] {
        let head = ChainHead {
            seq,
            hash: Hash::of(&seq.to_be_bytes()),
        };
        store.put_checkpoint(&signer.sign(head)).await.unwrap();
    }
    let newest = store.last_checkpoint().await.unwrap().unwrap();
    assert_eq!(newest.seq, 300);
    assert_eq!(newest.hash, Hash::of(&300u64.to_be_bytes()));
    assert_eq!(store.checkpoints().await.unwrap().len(), 4);
}

/// A checkpoint reaches sled (which may write it to disk at any time) only
/// once the log is synced through the record it seals: until then it waits
/// in memory, where readers see it too. After a power loss a checkpoint
/// ahead of the log would read as records removed.
#[tokio::test]
async fn a_checkpoint_waits_for_the_log_to_be_synced() {
    use airlock_core::audit::{ChainHead, CheckpointSigner};
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let session = SessionId::new();
    let batch = chain(ops(3, session), None);
    let head = ChainHead {
        seq: 3,
        hash: batch[2].hash,
    };
    store.append(batch, Durability::Os).await.unwrap();
    let signer = CheckpointSigner::load_or_create(dir.path()).unwrap();
    store.put_checkpoint(&signer.sign(head)).await.unwrap();
    assert_eq!(store.inner.checkpoints.len(), 0, "in sled before the sync");
    let seen: Vec<u64> = store
        .checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seen, vec![3]);
    assert_eq!(store.last_checkpoint().await.unwrap().unwrap().seq, 3);
    store.flush().await.unwrap();
    assert_eq!(store.inner.checkpoints.len(), 1);
    drop(store);
    // Stored for good: a reopened store has it.
    let store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.last_checkpoint().await.unwrap().unwrap().seq, 3);
}
