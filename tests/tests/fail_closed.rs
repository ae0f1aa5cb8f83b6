//! Fail closed: when the audit store cannot write, operations are refused with
//! a clear error and never reach the target; before that, the same operation
//! goes through.
//!
//! The store is made unwritable the way it happens in production: its
//! filesystem fills up. The test mounts a small tmpfs for the data directory,
//! so it needs root (as CI and the development machines run).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::io::Write;
use std::process::Command;

use airlock_tests::{EchoTarget, LineClient, TestGateway, line_config};

/// An API beside the line listener, for `/readyz`.
const API: &str = "[api]\nlisten = \"127.0.0.1:0\"\n";

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "airlock-test"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root: this test must run as root"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes until the filesystem is full.
fn fill(dir: &std::path::Path) {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_audit_store_refuses_operations_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _mount = Tmpfs::mount(&data, "8m");

    let target = EchoTarget::start().await.unwrap();
    let gw = TestGateway::start(&line_config(target.addr, API), &data)
        .await
        .unwrap();
    let token = gw.token("agent-7", &["agents"]).unwrap();
    let ready = async || {
        reqwest::get(format!("http://{}/readyz", gw.runtime.api.unwrap()))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let mut client = LineClient::connect(gw.lines).await.unwrap();
    assert!(
        client
            .send(&format!("AUTH echo {token}"))
            .await
            .unwrap()
            .starts_with("OK ")
    );

    // With a writable store the command is recorded and forwarded.
    assert_eq!(client.send("echo before").await.unwrap(), "echo before");
    assert_eq!(ready().await, 200);

    fill(&data);
    // The journal's last page may still have room, so a few more records can
    // fit; the first one that needs new space must be refused.
    let mut refused = None;
    for i in 0..500 {
        let line = format!("echo after {i} {}", "x".repeat(200));
        let answer = client.send(&line).await.unwrap();
        if answer.starts_with("ERR") {
            refused = Some((line, answer));
            break;
        }
        assert_eq!(
            answer, line,
            "an accepted command was recorded and forwarded"
        );
    }
    let (line, answer) = refused.expect("with the disk full, an operation is refused");
    // Readiness says so, until a write succeeds again.
    assert_eq!(ready().await, 503);
    assert!(
        answer.starts_with("ERR the audit store could not record this action, so it was refused"),
        "{answer}"
    );
    assert!(
        answer.contains("No space left on device"),
        "the cause is named: {answer}"
    );
    assert!(
        !target.received().contains(&line),
        "the refused command never reached the target"
    );
    // While the disk stays full, every command is either recorded and
    // forwarded (a smaller batch may still fit) or refused and not forwarded.
    let mut refusals = 0;
    for i in 0..20 {
        let line = format!("echo still full {i} {}", "x".repeat(400));
        let answer = client.send(&line).await.unwrap();
        if answer.starts_with("ERR the audit store") {
            refusals += 1;
            assert!(!target.received().contains(&line), "refused yet forwarded");
        } else {
            assert_eq!(answer, line);
            assert!(target.received().contains(&line));
        }
    }
    assert!(refusals > 0, "a full disk refused nothing");

    // Once there is space again the same session works: a failed write left
    // nothing behind in the log.
    std::fs::remove_file(data.join("filler")).unwrap();
    let after = format!("echo space again {}", "x".repeat(400));
    assert_eq!(client.send(&after).await.unwrap(), after);
    assert!(target.received().contains(&after));
    assert_eq!(ready().await, 200);

    // And the chain survives a restart intact.
    drop(client);
    let _ = gw.runtime.shutdown().await;
    let gw = TestGateway::start(&line_config(target.addr, API), &data)
        .await
        .unwrap();
    let mut client = LineClient::connect(gw.lines).await.unwrap();
    assert!(
        client
            .send(&format!("AUTH echo {token}"))
            .await
            .unwrap()
            .starts_with("OK ")
    );
    assert_eq!(
        client.send("echo recovered").await.unwrap(),
        "echo recovered"
    );
    drop(client);
    let report = airlock_core::audit::verify(
        gw.runtime.store.as_ref(),
        &airlock_core::audit::public_key_in(&data).unwrap(),
    )
    .await
    .unwrap();
    assert!(
        report.is_clean(),
        "the chain is intact after the failure: {:?}",
        report.problem
    );
    gw.runtime.shutdown().await.unwrap();
}
