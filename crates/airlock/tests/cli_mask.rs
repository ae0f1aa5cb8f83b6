//! `airlock mask` masks standard input with the streaming masker and reports
//! counts per detector; clean text passes through byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::io::Write;
use std::process::{Command, Stdio};

fn mask(input: &str, dir: &std::path::Path) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["mask", "--report", "--data-dir"])
        .arg(dir)
        .env_remove("AIRLOCK_CONFIG")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn masks_stdin_and_reports_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = mask(
        "ada@example.com paid 4111 1111 1111 1111\norder 1234567812345678 v10.0.19045\n",
        dir.path(),
    );
    assert_eq!(
        out,
        "<EMAIL> paid <CARD>\norder 1234567812345678 v10.0.19045\n"
    );
    assert!(report.contains("masked 2 values"), "{report}");
    assert!(
        report.contains("card") && report.contains("email"),
        "{report}"
    );

    let clean = "nothing to see here: 42 apples, 3.14 pies\n";
    assert_eq!(mask(clean, dir.path()).0, clean);
}
