//! `airlock audit verify` against real stores: an untouched chain verifies
//! clean; altering, deleting, swapping, re-chaining and truncating records
//! are each detected, with a non-zero exit and the first bad record named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use airlock_core::audit::CheckpointSigner;
use airlock_core::recorder::{Recorder, RecorderOptions};
use airlock_core::{CommandOperation, Decision, Event, Operation, SessionId};

/// Records 40 events through the real recorder (checkpoint every 16) and closes the store.
async fn populate(dir: &Path) {
    let store = Arc::new(airlock_store::SledStore::open(dir).unwrap());
    let signer = CheckpointSigner::load_or_create(dir).unwrap();
    let options = RecorderOptions {
        checkpoint_every: 16,
        ..RecorderOptions::default()
    };
    let (recorder, writer) = Recorder::start(store, signer, options).await.unwrap();
    let session = SessionId::new();
    for i in 0..40 {
        let event = Event::Operation {
            operation: Operation::Command(CommandOperation {
                line: format!("echo {i}"),
                interactive: false,
            }),
            decision: Decision::Allow,
        };
        recorder.record(Some(session), event).await.unwrap();
    }
    recorder.shutdown().await.unwrap();
    writer.await.unwrap();
}

fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .env_remove("AIRLOCK_CONFIG")
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `tamper` on the records tree of a fresh populated store, then verifies.
async fn tampered(tamper: impl FnOnce(&sled::Tree)) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    {
        // sled releases its lock from a background thread after the store closes.
        let db = (0..30)
            .find_map(|_| {
                sled::open(dir.path().join("store"))
                    .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(100)))
                    .ok()
            })
            .expect("the store opens once the recorder has closed it");
        let records = db.open_tree("records").unwrap();
        tamper(&records);
        db.flush().unwrap();
    }
    verify(dir.path())
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[tokio::test]
async fn untouched_chain_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("audit chain OK: 40 records"), "{out}");
}

#[tokio::test]
async fn altered_record_is_named() {
    let (ok, out) = tampered(|t| {
        let v = t.get(key(7)).unwrap().unwrap().to_vec();
        let altered = String::from_utf8(v[32..].to_vec())
            .unwrap()
            .replace("echo 6", "echo X");
        let mut nv = v[..32].to_vec();
        nv.extend_from_slice(altered.as_bytes());
        t.insert(key(7), nv).unwrap();
    })
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN at record 7: record 7 was altered"),
        "{out}"
    );
}

#[tokio::test]
async fn altered_record_with_recomputed_hash_is_caught_by_the_chain() {
    // The attacker fixes up the altered record's own hash; its successor's
    // back-link no longer matches.
    let (ok, out) = tampered(|t| {
        let v = t.get(key(7)).unwrap().unwrap().to_vec();
        let body = String::from_utf8(v[32..].to_vec())
            .unwrap()
            .replace("echo 6", "echo X");
        let mut nv = airlock_core::audit::Hash::of(body.as_bytes()).0.to_vec();
        nv.extend_from_slice(body.as_bytes());
        t.insert(key(7), nv).unwrap();
    })
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN at record 8: record 8 does not follow record 7"),
        "{out}"
    );
}

#[tokio::test]
async fn deleted_record_is_named() {
    let (ok, out) = tampered(|t| {
        t.remove(key(12)).unwrap();
    })
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("BROKEN at record 12: record 12 was removed"),
        "{out}"
    );
}

#[tokio::test]
async fn swapped_records_are_named() {
    let (ok, out) = tampered(|t| {
        let a = t.get(key(20)).unwrap().unwrap();
        let b = t.get(key(21)).unwrap().unwrap();
        t.insert(key(20), b).unwrap();
        t.insert(key(21), a).unwrap();
    })
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "BROKEN at record 20: record 20 is out of order: the record stored there is record 21"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn truncated_tail_is_detected() {
    let (ok, out) = tampered(|t| {
        for seq in 35..=40 {
            t.remove(key(seq)).unwrap();
        }
    })
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN at record 35: the chain was truncated: it ends at record 34, but a signed checkpoint covers record 40"), "{out}");
}
