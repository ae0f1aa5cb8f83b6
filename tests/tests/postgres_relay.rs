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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_copy_transactions_and_settings_work_as_direct() {
    let (dir, pg, gw) = setup("", "").await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let ci = conninfo(gw.addr, "agent-1", "");
    let script = "
CREATE TABLE items (id int primary key, name text not null);
INSERT INTO items VALUES (1, 'one'), (2, 'two');
\\d items
SET search_path TO pg_catalog, public;
SHOW search_path;
BEGIN;
INSERT INTO items VALUES (3, 'three');
ROLLBACK;
SELECT count(*) AS n FROM items;
SELECT 1 AS a; SELECT 2 AS b;
";
    let (ok, out, err) = psql_stdin_ok(&ci, &token, &["-f", "-"], script).await;
    assert!(ok, "{err}");
    assert!(out.contains("Table \"public.items\""), "{out}");
    assert!(out.contains("items_pkey"), "{out}");
    assert!(
        out.contains("pg_catalog, public"),
        "SET persists in the session: {out}"
    );
    assert!(out.contains(" 2\n"), "the rolled-back row is gone: {out}");
    assert!(out.contains(" a \n") && out.contains(" b \n"), "{out}");

    // \copy in both directions (COPY FROM STDIN / TO STDOUT on the wire).
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "10,ten\n11,eleven\n").unwrap();
    let out_csv = dir.path().join("out.csv");
    let cmd = format!(
        "\\copy items FROM '{}' WITH (FORMAT csv)\n\\copy (SELECT * FROM items ORDER BY id) TO '{}' WITH (FORMAT csv)\n",
        csv.display(),
        out_csv.display()
    );
    let (ok, out, err) = psql_stdin_ok(&ci, &token, &["-f", "-"], &cmd).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("COPY 2") && out.contains("COPY 4"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&out_csv).unwrap(),
        "1,one\n2,two\n10,ten\n11,eleven\n"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM items").await.unwrap(), "4");
}

async fn psql_stdin_ok(
    ci: &str,
    token: &str,
    args: &[&str],
    input: &str,
) -> (bool, String, String) {
    airlock_tests::postgres::psql_stdin(ci, token, args, Some(input))
        .await
        .unwrap()
}

async fn pgbench(ci: &str, token: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new("pgbench")
        .args(args)
        .arg(ci)
        .env("PGPASSWORD", token)
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{all}");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_in_simple_and_prepared_mode() {
    let (_dir, pg, gw) = setup("", "").await;
    let token = gw.token("bench", &["agents"]).unwrap();
    let ci = conninfo(gw.addr, "bench", "");
    pgbench(&ci, &token, &["-i", "-s", "1", "-q"]).await;
    assert_eq!(
        pg.psql("SELECT count(*) FROM pgbench_accounts")
            .await
            .unwrap(),
        "100000"
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&ci, &token, &["-c", "2", "-t", "30", "-M", mode]).await;
        assert!(
            out.contains("number of transactions actually processed: 60/60"),
            "{mode}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{mode}: {out}"
        );
    }
    assert_eq!(
        // Each run starts by emptying the history table.
        pg.psql("SELECT count(*) FROM pgbench_history")
            .await
            .unwrap(),
        "60"
    );
}
