//! The throwaway PostgreSQL really is a PostgreSQL 15 with SCRAM, a
//! statement log, and no trace left behind.

use std::net::TcpStream;

use airlock_testkit::postgres::TestPostgres;

#[tokio::test]
async fn starts_and_answers_queries() {
    let pg = TestPostgres::start().await.unwrap();
    assert_eq!(pg.host(), "127.0.0.1");
    assert_ne!(pg.port(), 0);
    assert_eq!(pg.superuser(), "postgres");
    assert_eq!(pg.database(), "postgres");
    assert_eq!(pg.psql("select 1").await.unwrap(), "1");
    let version = pg.psql("show server_version_num").await.unwrap();
    assert!(version.starts_with("15"), "{version}");
    // Multi-row output is one row per line, unaligned.
    assert_eq!(
        pg.psql("select g, g * 2 from generate_series(1, 3) g")
            .await
            .unwrap(),
        "1|2\n2|4\n3|6"
    );
    // SQL errors are errors, with the server's message.
    let err = pg.psql("select * from no_such_table").await.unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[tokio::test]
async fn scram_is_enforced_for_every_connection() {
    let pg = TestPostgres::start().await.unwrap();

    // The wrong password is refused; the right one is accepted.
    let err = pg
        .psql_as("postgres", "not-the-password", "postgres", "select 1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert_eq!(
        pg.psql_as("postgres", pg.password(), "postgres", "select 1")
            .await
            .unwrap(),
        "1"
    );

    // Every pg_hba line asks for SCRAM, and passwords are stored as SCRAM verifiers.
    assert_eq!(
        pg.psql("select string_agg(distinct auth_method, ',') from pg_hba_file_rules")
            .await
            .unwrap(),
        "scram-sha-256"
    );
    assert_eq!(
        pg.psql("show password_encryption").await.unwrap(),
        "scram-sha-256"
    );

    pg.create_user("app_rw", "app-secret").await.unwrap();
    pg.create_database("app", "app_rw").await.unwrap();
    assert_eq!(
        pg.psql(
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname in ('postgres', 'app_rw') group by 1"
        )
        .await
        .unwrap(),
        "t"
    );
    assert_eq!(
        pg.psql_as(
            "app_rw",
            "app-secret",
            "app",
            "select current_user || '@' || current_database()"
        )
        .await
        .unwrap(),
        "app_rw@app"
    );
    let err = pg
        .psql_as("app_rw", "wrong", "app", "select 1")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn the_statement_log_shows_what_reached_the_server() {
    let pg = TestPostgres::start().await.unwrap();
    pg.psql("select 'airlock-marker-ran'").await.unwrap();
    let log = pg.log();
    assert!(
        log.contains("statement: select 'airlock-marker-ran'"),
        "{log}"
    );
    assert!(!log.contains("airlock-marker-never-sent"), "{log}");
    assert!(pg.log_path().starts_with(pg.data_dir().parent().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_servers_start_in_parallel() {
    let (a, b, c) = tokio::join!(
        TestPostgres::start(),
        TestPostgres::start(),
        TestPostgres::start()
    );
    let servers = [a.unwrap(), b.unwrap(), c.unwrap()];
    let mut ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    for pg in &servers {
        assert_eq!(
            pg.psql("select current_setting('port')").await.unwrap(),
            pg.port().to_string()
        );
    }
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_its_directory() {
    let pg = TestPostgres::start().await.unwrap();
    let port = pg.port();
    let root = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(root.exists());
    drop(pg);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!root.exists(), "{} is left behind", root.display());
}
