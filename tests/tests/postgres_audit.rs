//! What the PostgreSQL connector records: every statement with its decision
//! before it is forwarded, execution parameters, the first result rows and
//! the result, all masked; and the record of a statement survives the
//! gateway being killed right after forwarding it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::process::Stdio;
use std::time::Duration;

use airlock_tests::postgres::{
    PgGateway, Raw, TestPostgres, events_in, mint, msg, pg_config, psql_stdin,
};
use serde_json::Value;
use tokio_postgres::NoTls;

/// A gateway with default rules before a fresh PostgreSQL, and a raw
/// wire session through it.
async fn raw_session() -> (tempfile::TempDir, TestPostgres, PgGateway, Raw) {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &dir.path().join("data"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    (dir, pg, gw, raw)
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_parameters_rows_and_results_are_recorded_masked() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    pg.psql("CREATE TABLE people (id int, email text); ALTER TABLE people OWNER TO airlock_app;")
        .await
        .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(
        &pg_config(&pg, &pw, "record_rows = 2", ""),
        &dir.path().join("data"),
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();

    // Extended protocol with parameters.
    let (client, conn) = tokio_postgres::Config::new()
        .host(gw.addr.ip().to_string())
        .port(gw.addr.port())
        .user("agent-1")
        .dbname("app")
        .password(&token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for (id, email) in [
        (1, "ann@example.com"),
        (2, "ben@example.com"),
        (3, "cy@example.com"),
    ] {
        client
            .execute("INSERT INTO people VALUES ($1, $2)", &[&id, &email])
            .await
            .unwrap();
    }
    let rows = client
        .query("SELECT id, email FROM people ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let failed = client
        .query("SELECT id / $1 FROM people", &[&0i32])
        .await
        .unwrap_err();
    assert_eq!(failed.code().unwrap().code(), "22012");
    drop(client);
    // Simple protocol and COPY IN, logged in under another user name (the
    // token says who it is; the name is recorded as given).
    let (ok, _, err) = psql_stdin(
        &airlock_tests::postgres::conninfo(gw.addr, "report-bot", ""),
        &token,
        &["-f", "-"],
        Some("COPY people FROM STDIN;\n4\tdee@example.com\n\\.\nSELECT count(*) FROM people;\nSELECT 1 / 0;\n"),
    )
    .await
    .unwrap();
    // psql stops at the first error: the division is the last statement.
    assert!(!ok && err.contains("ERROR:  division by zero"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events = gw.events().await.unwrap();
    let all = serde_json::to_string(&events).unwrap();
    for raw in ["ann@", "ben@", "cy@", "dee@"] {
        assert!(!all.contains(raw), "{raw} is stored unmasked");
    }
    let ops = of_type(&events, "operation");
    assert!(ops.iter().any(
        |o| o["operation"]["text"] == "INSERT INTO people VALUES ($1, $2)"
            && o["operation"]["kind"] == "insert"
            && o["decision"]["decision"] == "allow"
    ));
    assert!(ops.iter().any(|o| o["operation"]["kind"] == "copy_in"));
    let inputs = of_type(&events, "input");
    assert!(
        inputs.iter().any(|i| i["data"]
            == "execute: INSERT INTO people VALUES ($1, $2)\nparameters: $1 = '1', $2 = '<EMAIL>'"),
        "{inputs:#?}"
    );
    assert!(
        inputs.iter().any(|i| i["data"]
            .as_str()
            .is_some_and(|d| d.starts_with("4\t<EMAIL>\n"))),
        "COPY data is recorded masked: {inputs:#?}"
    );
    // A statement's result record carries its first rows and what was masked in them.
    let results = of_type(&events, "result");
    assert!(
        results.iter().any(|r| r["rows"] == 3
            && r["output"] == "id | email\n1 | <EMAIL>\n2 | <EMAIL>"
            && r["masked"]["email"] == 3),
        "the first record_rows rows, masked: {results:#?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r["rows"] == 1 && r["output"] == "count\n4"),
        "the simple protocol's rows too: {results:#?}"
    );
    // Failures keep the server's SQLSTATE and message, in both protocols,
    // and every result says how long the target took.
    let failures = results
        .iter()
        .filter(|r| r["error"] == "22012: division by zero")
        .count();
    assert_eq!(failures, 2, "{results:#?}");
    assert!(
        results.iter().all(|r| r["duration_us"].as_u64().is_some())
            && results
                .iter()
                .any(|r| r["rows"] == 3 && r["duration_us"].as_u64() > Some(0)),
        "{results:#?}"
    );
    // Each session's start records the user name the client logged in
    // with beside the token's identity.
    let logins: Vec<(&Value, &Value)> = of_type(&events, "session_start")
        .iter()
        .map(|s| (&s["identity"]["subject"], &s["client"]["login"]))
        .collect();
    assert_eq!(
        logins,
        [
            (&Value::from("agent-1"), &Value::from("agent-1")),
            (&Value::from("agent-1"), &Value::from("report-bot"))
        ],
        "{events:#?}"
    );
    // The statement's record comes before its execution's result.
    let op_at = events
        .iter()
        .position(|e| e["type"] == "operation" && e["operation"]["kind"] == "select")
        .unwrap();
    let rows_at = events
        .iter()
        .position(|e| e["type"] == "result" && e["rows"] == 3)
        .unwrap();
    assert!(op_at < rows_at);
    assert_eq!(of_type(&events, "session_end").len(), 2);
}

/// A parameter is rendered for its record by the types of its own
/// statement: a Describe of an earlier statement under the same name (here
/// an `int4` parameter of the unnamed statement) does not decide how the
/// next one's binary text parameter is read, which would store an email
/// as unmasked hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_rendered_by_their_own_statements_types() {
    let (_dir, _pg, gw, mut raw) = raw_session().await;

    let describe = (b'D', [b"S".to_vec(), msg::cstr("")].concat());
    let sync = (b'S', Vec::new());
    let first = vec![msg::parse("", "SELECT $1::int4"), describe, sync.clone()];
    assert_eq!(raw.exchange(first).await.1, Vec::<String>::new());

    // Bind: unnamed portal and statement, one binary parameter, text results.
    let email = b"eve@example.com";
    let mut bind = [msg::cstr(""), msg::cstr("")].concat();
    bind.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    bind.extend_from_slice(&(email.len() as i32).to_be_bytes());
    bind.extend_from_slice(email);
    bind.extend_from_slice(&[0, 0]);
    let second = vec![
        msg::parse("", "SELECT $1::text /* second */"),
        (b'B', bind),
        msg::execute("", 0),
        sync,
    ];
    assert_eq!(raw.exchange(second).await, ("12DCZI".into(), vec![]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events = gw.events().await.unwrap();
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("eve@"), "stored unmasked: {all}");
    let hex: String = email.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!all.contains(&hex), "stored as hex: {all}");
    let inputs = of_type(&events, "input");
    assert!(
        inputs
            .iter()
            .any(|i| i["data"]
                == "execute: SELECT $1::text /* second */\nparameters: $1 = '<EMAIL>'"),
        "{inputs:#?}"
    );
}

/// The gateway binary, built with the postgres connector.
fn airlock_binary() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        // The default features include the postgres connector.
        .args(["build", "-q", "-p", "airlock", "--bin", "airlock"])
        .status()
        .unwrap();
    assert!(status.success(), "building the airlock binary failed");
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("airlock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_survives_a_kill_right_after_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    pg.psql("CREATE TABLE marks (m text); ALTER TABLE marks OWNER TO airlock_app;")
        .await
        .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = dir.path().join("data");
    let config = format!(
        "[gateway]\ndata_dir = \"{}\"\n{}",
        data.display(),
        pg_config(&pg, &pw, "", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
    );
    let config_path = dir.path().join("airlock.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut gateway = tokio::process::Command::new(airlock_binary())
        .arg("--config")
        .arg(&config_path)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the gateway did not start");
    let token = mint(&data, "agent-1", &["agents"]).unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("agent-1")
        .dbname("app")
        .password(&token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let statement = "INSERT INTO marks SELECT 'kill-marker-7' FROM pg_sleep(1)";
    let running = tokio::spawn(async move { client.simple_query(statement).await.map(|_| ()) });
    // Kill the gateway the moment the statement is at the server.
    let mut reached = false;
    for _ in 0..400 {
        if pg.log().contains("kill-marker-7") {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(reached, "the statement never reached the server");
    gateway.start_kill().unwrap();
    gateway.wait().await.unwrap();
    assert!(
        running.await.unwrap().is_err(),
        "the client lost its gateway"
    );

    // The server ran it, and the reopened store holds its record.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pg.psql("SELECT count(*) FROM marks WHERE m = 'kill-marker-7'")
            .await
            .unwrap(),
        "1"
    );
    let store = airlock_store::SledStore::open(&data).unwrap();
    let events = events_in(&store).await.unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "operation"
            && e["operation"]["text"] == statement
            && e["decision"]["decision"] == "allow"),
        "{events:#?}"
    );
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "airlock-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root: this test must run as root"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_store_refuses_statements_with_58000() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let _mount = Tmpfs::mount(&data, "8m");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &data)
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host(gw.addr.ip().to_string())
        .port(gw.addr.port())
        .user("agent-1")
        .dbname("app")
        .password(&token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 'before-full'").await.unwrap();

    let mut filler = std::fs::File::create(data.join("filler")).unwrap();
    for size in [64 * 1024, 4096, 1] {
        let chunk = vec![0u8; size];
        while filler.write_all(&chunk).is_ok() {}
    }
    let _ = filler.sync_all();
    // The journal's last page may still have room for a few records; keep
    // going until the store refuses, then check that statement's fate.
    let mut refused = None;
    for i in 0..500 {
        let marker = format!("while-full-{i}-");
        let result = if i % 2 == 0 {
            client
                .simple_query(&format!("SELECT '{marker}'"))
                .await
                .map(|_| ())
        } else {
            client
                .query(&format!("SELECT '{marker}' WHERE $1::int = 1"), &[&1i32])
                .await
                .map(|_| ())
        };
        if let Err(e) = result {
            assert_eq!(e.code().unwrap().code(), "58000", "{e}");
            let message = e.as_db_error().unwrap().message().to_string();
            assert!(
                message.contains("audit store could not record"),
                "{message}"
            );
            refused = Some(marker);
            break;
        }
    }
    let marker = refused.expect("the full store never refused a statement");
    assert!(
        !pg.log().contains(&marker),
        "the unrecorded statement never reached the server"
    );

    // The session is refused statement by statement, not dropped: each
    // statement is either recorded and run (a smaller batch may still fit)
    // or refused with 58000 and never reaches the server.
    let mut refusals = 0;
    for i in 0..20 {
        let marker = format!("still-full-{i}-{}", "x".repeat(300));
        match client.simple_query(&format!("SELECT '{marker}'")).await {
            Ok(_) => assert!(pg.log().contains(&marker)),
            Err(e) => {
                assert_eq!(e.code().unwrap().code(), "58000", "{e}");
                assert!(!pg.log().contains(&marker));
                refusals += 1;
            }
        }
    }
    assert!(refusals > 0, "a full disk refused nothing");

    // With space again the same session works; a failed write left nothing
    // behind in the log.
    drop(filler);
    std::fs::remove_file(data.join("filler")).unwrap();
    client.simple_query("SELECT 'space-again'").await.unwrap();

    // And the chain survives a restart intact.
    drop(client);
    let _ = gw.runtime.shutdown().await;
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &data)
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host(gw.addr.ip().to_string())
        .port(gw.addr.port())
        .user("agent-1")
        .dbname("app")
        .password(&token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.simple_query("SELECT 'after-full'").await.unwrap();
    assert!(pg.log().contains("after-full"));
    let report = airlock_core::audit::verify(
        gw.runtime.store.as_ref(),
        &airlock_core::audit::public_key_in(&data).unwrap(),
    )
    .await
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.problem);
}

/// A server-side cursor as psycopg fetches from it (each FETCH a Parse of
/// the unnamed statement, Bind, Describe, Execute, Sync): each FETCH is
/// judged and recorded once, at its Parse (it reads a cursor DECLARE made,
/// judged then), not again at its Execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_loop_over_a_cursor_is_judged_once_per_fetch() {
    let (_dir, _pg, gw, mut raw) = raw_session().await;

    let declare = "BEGIN; DECLARE c CURSOR FOR SELECT generate_series(1, 3)";
    assert_eq!(raw.query(declare).await, ("CCZT".into(), vec![]));
    let fetch = "FETCH FORWARD 1 FROM c /* loop */";
    for _ in 0..3 {
        let (tags, codes) = raw
            .exchange(vec![
                msg::parse("", fetch),
                msg::bind("", ""),
                (b'D', [b"P".to_vec(), msg::cstr("")].concat()),
                msg::execute("", 0),
                (b'S', Vec::new()),
            ])
            .await;
        assert_eq!((tags.as_str(), codes), ("12TDCZT", vec![]));
    }
    assert_eq!(raw.query("COMMIT").await, ("CZI".into(), vec![]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let events = gw.events().await.unwrap();
    let judged = of_type(&events, "operation")
        .into_iter()
        .filter(|o| o["operation"]["text"] == fetch)
        .count();
    assert_eq!(judged, 3);
    let executed = of_type(&events, "input")
        .into_iter()
        .filter(|i| i["data"] == format!("execute: {fetch}"))
        .count();
    assert_eq!(executed, 3);
}

/// COPY FROM STDIN data is recorded by rows, not by the messages the client
/// cuts it into: a card number and an email split across CopyData messages
/// are masked in the record all the same, and a binary COPY is recorded as
/// its rows. The server gets the data as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_cut_anywhere_is_recorded_masked_by_rows() {
    let (_dir, pg, gw, mut raw) = raw_session().await;
    pg.psql(
        "CREATE TABLE cards (id int, card text); ALTER TABLE cards OWNER TO airlock_app;
         CREATE TABLE notes (note text); ALTER TABLE notes OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    // Each piece is its own message, sent after the gateway has passed on
    // the one before.
    let copy = async |raw: &mut Raw, sql: &str, pieces: &[&[u8]]| {
        raw.send(b'Q', &msg::cstr(sql)).await;
        let (tag, _) = raw.read().await.unwrap();
        assert_eq!(tag, b'G', "copy-in starts");
        for piece in pieces {
            raw.send(b'd', piece).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        raw.exchange(vec![(b'c', Vec::new())]).await
    };
    let (tags, codes) = copy(
        &mut raw,
        "COPY cards FROM STDIN",
        &[b"1\t41111111", b"11111111\n2\tann@exa", b"mple.com\n"],
    )
    .await;
    assert_eq!(tags, "CZI", "{codes:?}");
    let mut binary = b"PGCOPY\n\xff\r\n\0".to_vec();
    binary.extend_from_slice(&[0; 8]);
    binary.extend_from_slice(&1i16.to_be_bytes());
    binary.extend_from_slice(&15i32.to_be_bytes());
    binary.extend_from_slice(b"bob@example.org");
    binary.extend_from_slice(&(-1i16).to_be_bytes());
    let (tags, codes) = copy(
        &mut raw,
        "COPY notes FROM STDIN (FORMAT binary)",
        &[&binary[..5], &binary[5..30], &binary[30..]],
    )
    .await;
    assert_eq!(tags, "CZI", "{codes:?}");
    assert_eq!(
        pg.psql("SELECT string_agg(card, ',' ORDER BY id) FROM cards")
            .await
            .unwrap(),
        "4111111111111111,ann@example.com"
    );
    assert_eq!(
        pg.psql("SELECT note FROM notes").await.unwrap(),
        "bob@example.org"
    );

    let events = gw.events().await.unwrap();
    let inputs: String = of_type(&events, "input")
        .iter()
        .filter_map(|i| i["data"].as_str())
        .collect();
    for raw in ["41111111", "ann@", "bob@"] {
        assert!(
            !inputs.contains(raw),
            "{raw} is recorded unmasked: {inputs}"
        );
    }
    assert!(inputs.contains("1\t<CARD>\n2\t<EMAIL>\n"), "{inputs}");
    assert!(inputs.contains("<EMAIL>\n"), "the binary row: {inputs}");
    assert!(!inputs.contains("bytes of binary"), "{inputs}");
}

/// The settings a client gives at startup reach the server with the
/// gateway's login (`search_path` decides which table a name is), so the
/// session records them before they go, and replay shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_settings_are_recorded_before_the_login() {
    let (_dir, _pg, gw, mut plain) = raw_session().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(
        gw.addr,
        &token,
        0,
        &[
            ("search_path", "audit_x, public"),
            ("application_name", "o'brien"),
        ],
    )
    .await;
    // The session works with them, and one without any too.
    assert_eq!(raw.query("SHOW search_path").await.0, "TDCZI");
    assert_eq!(plain.query("SELECT 1").await.0, "TDCZI");
    let events = gw.events().await.unwrap();
    let settings: Vec<&str> = of_type(&events, "input")
        .iter()
        .filter_map(|i| i["data"].as_str())
        .filter(|d| d.starts_with("startup settings: "))
        .collect();
    assert!(
        settings.contains(
            &"startup settings: application_name = 'o''brien', search_path = 'audit_x, public'"
        ),
        "{settings:?}"
    );
    let start = events
        .iter()
        .rposition(|e| e["type"] == "session_start")
        .unwrap();
    let at = events
        .iter()
        .rposition(|e| e["data"].as_str().is_some_and(|d| d.contains("audit_x")))
        .unwrap();
    assert!(start < at, "recorded in the session it starts");
}
