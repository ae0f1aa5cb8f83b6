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
    let gw = TestGateway::start(&line_config(target.addr, ""), &data)
        .await
        .unwrap();
    let token = gw.token("agent-7", &["agents"]).unwrap();
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

    fill(&data);
    let answer = client.send("echo after").await.unwrap();
    assert!(
        answer.starts_with("ERR the audit store could not record this action, so it was refused"),
        "{answer}"
    );
    assert_eq!(
        target.received(),
        vec!["echo before".to_string()],
        "the refused command never reached the target"
    );

    // Space is freed: the gateway records and forwards again, same session.
    std::fs::remove_file(data.join("filler")).unwrap();
    assert_eq!(
        client.send("echo recovered").await.unwrap(),
        "echo recovered"
    );
    drop(client);
    gw.runtime.shutdown().await.unwrap();
}
