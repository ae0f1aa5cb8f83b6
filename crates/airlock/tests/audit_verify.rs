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
    record(dir, 40, true).await;
}

/// Records `n` events through the real recorder (checkpoint every 16);
/// without `shut_down` it stops as a killed gateway would, before its last
/// checkpoint.
async fn record(dir: &Path, n: usize, shut_down: bool) {
    let store = Arc::new(airlock_store::SledStore::open(dir).unwrap());
    let signer = CheckpointSigner::load_or_create(dir).unwrap();
    let options = RecorderOptions {
        checkpoint_every: 16,
        ..RecorderOptions::default()
    };
    let (recorder, writer) = Recorder::start(store, signer, options).await.unwrap();
    let session = SessionId::new();
    for i in 0..n {
        let event = Event::Operation {
            operation: Operation::Command(CommandOperation {
                line: format!("echo {i}"),
                interactive: false,
            }),
            decision: Decision::Allow,
        };
        recorder.record(Some(session), event).await.unwrap();
    }
    if shut_down {
        recorder.shutdown().await.unwrap();
        writer.await.unwrap();
    } else {
        writer.abort();
        let _ = writer.await;
    }
}

/// Runs `airlock <args> --data-dir <dir>`.
fn airlock(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("AIRLOCK_CONFIG")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn verify(dir: &Path) -> (bool, String) {
    let out = airlock(dir, &["audit", "verify"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One frame of the audit log: `u32 LE length | SHA-256 | body`.
struct Frame {
    hash: [u8; 32],
    body: Vec<u8>,
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("log").join(format!("{:020}.log", 1))
}

fn read_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        out.push(Frame {
            hash: bytes[pos + 4..pos + 36].try_into().unwrap(),
            body: bytes[pos + 36..pos + 36 + len].to_vec(),
        });
        pos += 36 + len;
    }
    out
}

fn write_frames(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&f.hash);
        out.extend_from_slice(&f.body);
    }
    out
}

/// Runs `tamper` on the frames of the audit log of a fresh populated store
/// (record n is `frames[n - 1]`), as someone with access to the disk would,
/// then verifies.
async fn tampered(tamper: impl FnOnce(&mut Vec<Frame>)) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let path = segment(dir.path());
    let mut frames = read_frames(&std::fs::read(&path).unwrap());
    assert_eq!(frames.len(), 40);
    tamper(&mut frames);
    std::fs::write(&path, write_frames(&frames)).unwrap();
    verify(dir.path())
}

fn replace_in(frame: &mut Frame, from: &str, to: &str) {
    let body = String::from_utf8(frame.body.clone()).unwrap();
    assert!(body.contains(from), "{body}");
    frame.body = body.replace(from, to).into_bytes();
}

#[tokio::test]
async fn untouched_chain_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path()).await;
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("audit chain OK: 40 records"), "{out}");
}

/// A gateway that stopped without its shutdown checkpoint leaves records
/// no signature covers: they verify, and the report names them and gives
/// the last record's hash to keep elsewhere. A chain sealed to its end
/// (above) says nothing of the kind.
#[tokio::test]
async fn records_after_the_last_checkpoint_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // Stopped without shutting down: no last checkpoint.
    record(dir.path(), 20, false).await;
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("audit chain OK: 20 records"), "{out}");
    assert!(
        out.contains("records 17 to 20 come after the last signed checkpoint"),
        "{out}"
    );
    let hash = out
        .rsplit("hash is ")
        .next()
        .unwrap()
        .trim()
        .trim_end_matches(')');
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{out}"
    );

    let sealed = tempfile::tempdir().unwrap();
    populate(sealed.path()).await;
    let (ok, out) = verify(sealed.path());
    assert!(
        ok && !out.contains("after the last signed checkpoint"),
        "{out}"
    );
}

/// The bodies of the chain's records that tell of a restart over records
/// no checkpoint covered.
async fn restarts_told(dir: &Path) -> Vec<String> {
    let store = airlock_store::SledStore::open(dir).unwrap();
    let raw = airlock_core::store::Store::raw_records(&store, 0, 1000)
        .await
        .unwrap();
    raw.iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .filter(|b| b.contains("started again after records"))
        .collect()
}

/// A gateway that starts again after a crash says in the chain which
/// records no signature covered before its next checkpoint signs them; one
/// that had shut down cleanly has nothing to say.
#[tokio::test]
async fn a_restart_over_unsealed_records_is_told_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), 20, false).await;
    record(dir.path(), 3, true).await;
    let told = restarts_told(dir.path()).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].contains("records 17..=20"), "{}", told[0]);
    assert!(told[0].contains("\"seq\":21"), "{}", told[0]);
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("audit chain OK: 24 records"), "{out}");

    let clean = tempfile::tempdir().unwrap();
    populate(clean.path()).await;
    record(clean.path(), 3, true).await;
    assert!(restarts_told(clean.path()).await.is_empty());
}

#[tokio::test]
async fn altered_record_is_named() {
    let (ok, out) = tampered(|frames| replace_in(&mut frames[6], "echo 6", "echo X")).await;
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
    let (ok, out) = tampered(|frames| {
        replace_in(&mut frames[6], "echo 6", "echo X");
        frames[6].hash = airlock_core::audit::Hash::of(&frames[6].body).0;
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
    let (ok, out) = tampered(|frames| {
        frames.remove(11);
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
    let (ok, out) = tampered(|frames| frames.swap(19, 20)).await;
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
    let (ok, out) = tampered(|frames| frames.truncate(34)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN at record 35: the chain was truncated: it ends at record 34, but a signed checkpoint covers record 40"), "{out}");
}

/// Records cut from the end of the log after the last signed checkpoint
/// leave no checkpoint to miss them, but the store's own index still holds
/// its head: verify says the chain cannot be read to it instead of OK (the
/// same store uncut verifies clean, above).
#[tokio::test]
async fn records_cut_after_the_last_checkpoint_are_reported_against_the_head() {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), 20, false).await;
    let path = segment(dir.path());
    let mut frames = read_frames(&std::fs::read(&path).unwrap());
    frames.truncate(18);
    std::fs::write(&path, write_frames(&frames)).unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "BROKEN at record 19: record 19 cannot be read, though the store's last record is 20"
        ),
        "{out}"
    );
}

/// Bytes after the last whole record look like the torn end of a crash,
/// and so does a last record altered before the index read it. `verify`
/// does not cut them (the gateway does, when it starts): it says the chain
/// is not fully verified, names the bytes, and leaves them as they are for
/// whoever investigates.
#[tokio::test]
async fn bytes_after_the_last_whole_record_are_reported_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path(), 40, false).await;
    let path = segment(dir.path());
    let whole = std::fs::read(&path).unwrap();
    let untouched = verify(dir.path());
    assert!(untouched.0, "{}", untouched.1);
    // Half of a record appended, as a write cut short (or an altered record
    // whose length no longer fits) leaves it.
    let mut torn = whole.clone();
    torn.extend_from_slice(&whole[..whole.len() / 80]);
    std::fs::write(&path, &torn).unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("audit chain NOT fully verified"), "{out}");
    assert!(out.contains("hold no whole record"), "{out}");
    // The other commands that read the store leave them too, and the JSON
    // report names them.
    let run = |args: &[&str]| airlock(dir.path(), args);
    let sessions = run(&["sessions"]);
    assert!(sessions.status.success(), "{sessions:?}");
    let json = run(&["audit", "verify", "--json"]);
    assert!(!json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["torn_end"]["offset"], whole.len() as u64, "{report}");
    assert_eq!(std::fs::read(&path).unwrap(), torn, "nothing was changed");
    // The gateway's own open cuts them; then the chain verifies.
    drop(airlock_store::SledStore::open(dir.path()).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), whole);
    let (ok, out) = verify(dir.path());
    assert!(ok, "{out}");
    let report: serde_json::Value =
        serde_json::from_slice(&run(&["audit", "verify", "--json"]).stdout).unwrap();
    assert_eq!(report["torn_end"], serde_json::Value::Null, "{report}");

    // A last record altered after the index read it is named.
    let mut frames = read_frames(&whole);
    replace_in(frames.last_mut().unwrap(), "echo 39", "echo 42");
    std::fs::write(&path, write_frames(&frames)).unwrap();
    let (ok, out) = verify(dir.path());
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN at record 40"), "{out}");
}
