//! The throwaway PostgreSQL starts, enforces password authentication over TCP
//! and logs every statement it receives.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use airlock_testkit::postgres::{APP_USER, TestPostgres};

async fn login(pg: &TestPostgres, password: &str) -> std::process::Output {
    tokio::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            APP_USER,
            "-d",
            "app",
        ])
        .args(["-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn starts_requires_the_password_and_logs_statements() {
    let pg = TestPostgres::start().await.unwrap();
    assert_eq!(pg.psql("SELECT 40 + 2").await.unwrap(), "42");

    let wrong = login(&pg, "not-the-password").await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));
    let right = login(&pg, pg.password()).await;
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), APP_USER);

    let scram = pg
        .psql(&format!(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{APP_USER}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        scram, "t",
        "the gateway's role authenticates with SCRAM-SHA-256"
    );
    assert!(pg.log().contains("SELECT 40 + 2"));
    assert!(pg.log().contains("SELECT current_user"));
}
