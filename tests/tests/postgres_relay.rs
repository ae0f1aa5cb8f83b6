//! The PostgreSQL connector as a faithful relay: real clients through a real
//! gateway to a real server, with the client's token as its password.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use airlock_tests::postgres::{PgGateway, TestPostgres, conninfo, pg_config, psql};

async fn setup(listener: &str, extra: &str) -> (tempfile::TempDir, TestPostgres, PgGateway) {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let data = dir.path().join("data");
    let gw = PgGateway::start(&pg_config(&pg, &pw, listener, extra), &data)
        .await
        .unwrap();
    (dir, pg, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_queries_through_the_gateway() {
    let (_dir, pg, gw) = setup("", "").await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (ok, out, err) = psql(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-At", "-c", "SELECT current_user, 40 + 2"],
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "airlock_app|42");
    assert!(pg.log().contains("SELECT current_user, 40 + 2"));
}
