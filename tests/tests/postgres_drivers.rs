//! Drivers through the PostgreSQL connector: tokio-postgres (extended
//! protocol, binary results, pipelining, cancel) and Python's psycopg 3.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::time::Duration;

use airlock_tests::postgres::{PgGateway, Raw, TestPostgres, msg, pg_config};
use tokio_postgres::NoTls;

async fn setup() -> (tempfile::TempDir, TestPostgres, PgGateway) {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let data = dir.path().join("data");
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", ""), &data)
        .await
        .unwrap();
    (dir, pg, gw)
}

async fn connect(gw: &PgGateway, token: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host(gw.addr.ip().to_string())
        .port(gw.addr.port())
        .user("agent-1")
        .dbname("app")
        .password(token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_protocol_binary_results_and_pipelining() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(&gw, &token).await;
    client
        .batch_execute(
            "CREATE TABLE t (id int8 primary key, name text, score float8, ok bool, doc jsonb)",
        )
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO t VALUES ($1, $2, $3, $4, $5::text::jsonb)")
        .await
        .unwrap();
    for i in 0..5i64 {
        let doc = format!("{{\"n\": {i}}}");
        let name = format!("name-{i}");
        client
            .execute(
                &insert,
                &[&i, &name, &(i as f64 / 2.0), &(i % 2 == 0), &doc],
            )
            .await
            .unwrap();
    }
    // Binary results of several types.
    let rows = client
        .query(
            "SELECT id, name, score, ok FROM t WHERE id >= $1 ORDER BY id",
            &[&3i64],
        )
        .await
        .unwrap();
    let got: Vec<(i64, String, f64, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "name-3".into(), 1.5, false),
            (4, "name-4".into(), 2.0, true)
        ]
    );
    // Pipelining: several queries in flight on one connection.
    let stmt = client
        .prepare("SELECT name FROM t WHERE id = $1")
        .await
        .unwrap();
    let (a, b, c) = tokio::join!(
        client.query_one(&stmt, &[&0i64]),
        client.query_one(&stmt, &[&1i64]),
        client.query_one(&stmt, &[&2i64]),
    );
    assert_eq!(
        [
            a.unwrap().get::<_, String>(0),
            b.unwrap().get(0),
            c.unwrap().get(0)
        ],
        ["name-0", "name-1", "name-2"]
    );
    // An error in the middle keeps the connection usable.
    let err = client
        .query("SELECT * FROM missing_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    // Transactions over the extended protocol.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("DELETE FROM t WHERE id = $1", &[&0i64])
        .await
        .unwrap();
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM t").await.unwrap(), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_cancel_reaches_the_server() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(&gw, &token).await;
    let cancel = client.cancel_token();
    let slow = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r.map(|_| ()), client)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the cancel ended the statement")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err}");
    // The session goes on.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Sends a CancelRequest for (`pid`, `secret`) to `addr`.
async fn cancel_request(addr: std::net::SocketAddr, pid: &[u8], secret: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let packet = [
        &16i32.to_be_bytes()[..],
        &80877102i32.to_be_bytes(),
        pid,
        secret,
    ]
    .concat();
    s.write_all(&packet).await.unwrap();
    // The server closes a cancel connection without an answer.
    let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 1]).await;
}

/// Waits until the server runs a statement containing `marker`, so that a
/// cancel sent next finds it running.
async fn wait_active(pg: &TestPostgres, marker: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    for _ in 0..200 {
        if pg.psql(&sql).await.unwrap() == "1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{marker} never ran");
}

/// Runs `sql` on `raw`; the tags of the answers up to ReadyForQuery, and
/// the first field of the first DataRow.
async fn run(raw: &mut Raw, sql: &str) -> (Vec<u8>, String) {
    raw.send(b'Q', &msg::cstr(sql)).await;
    let (mut tags, mut first) = (Vec::new(), String::new());
    while let Some((tag, body)) = raw.read().await {
        tags.push(tag);
        if tag == b'D' && first.is_empty() {
            let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
            first = String::from_utf8_lossy(&body[6..6 + len]).into_owned();
        }
        if tag == b'Z' {
            break;
        }
    }
    (tags, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_holds_the_gateways_cancel_secret_not_the_servers() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, seen) = Raw::login(gw.addr, &token, 0, &[]).await;
    let key = &seen.iter().find(|(tag, _)| *tag == b'K').unwrap().1;
    let (pid, secret) = (key[0..4].to_vec(), key[4..8].to_vec());
    // The process id is the server's, so what the client was told agrees
    // with pg_backend_pid() and pg_stat_activity.
    let (_, server_pid) = run(&mut raw, "SELECT pg_backend_pid()").await;
    assert_eq!(
        i32::from_be_bytes(pid.clone().try_into().unwrap()).to_string(),
        server_pid
    );

    // The secret is the gateway's own: sent straight to PostgreSQL it
    // cancels nothing, and neither does a guessed one sent to the gateway.
    let wrong: Vec<u8> = secret.iter().map(|b| b ^ 0x5a).collect();
    let sleeper = tokio::spawn(async move {
        let answer = run(&mut raw, "SELECT pg_sleep(1.5) -- wrong-keys").await;
        (raw, answer)
    });
    wait_active(&pg, "wrong-keys").await;
    let server: std::net::SocketAddr = format!("127.0.0.1:{}", pg.port()).parse().unwrap();
    cancel_request(server, &pid, &secret).await;
    cancel_request(gw.addr, &pid, &wrong).await;
    let (mut raw, (tags, _)) = sleeper.await.unwrap();
    assert_eq!(tags, b"TDCZ", "the statement ran to its end");
    let cancels = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["type"] == "cancel")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        cancels(&gw.events().await.unwrap()).is_empty(),
        "a request with a wrong key names no session and is recorded in none"
    );
    // The key the client was given, sent to the gateway, cancels.
    let sleeper =
        tokio::spawn(async move { run(&mut raw, "SELECT pg_sleep(30) -- right-key").await });
    wait_active(&pg, "right-key").await;
    cancel_request(gw.addr, &pid, &secret).await;
    let (tags, _) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel ended the statement")
        .unwrap();
    assert_eq!(tags, b"TEZ", "the statement was cancelled");
    // The request that acted is in the session's record, before the
    // server's error that it caused. (The statement's result is recorded
    // just after its answer reaches the client: wait for it.)
    let mut events = gw.events().await.unwrap();
    for _ in 0..100 {
        let has_result = events.iter().any(|e| {
            e["type"] == "result"
                && e["error"]
                    .as_str()
                    .is_some_and(|t| t.contains("canceling statement"))
        });
        if has_result {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        events = gw.events().await.unwrap();
    }
    let recorded = cancels(&events);
    assert_eq!(recorded.len(), 1, "{events:#?}");
    assert_eq!(recorded[0]["client"]["listener"], "pg");
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(pred).unwrap();
    let cancel = at(&|e| e["type"] == "cancel");
    let statement = at(&|e| {
        e["type"] == "operation"
            && e["operation"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("right-key"))
    });
    let cancelled = at(&|e| {
        e["type"] == "result"
            && e["error"]
                .as_str()
                .is_some_and(|t| t.contains("canceling statement"))
    });
    assert!(statement < cancel && cancel < cancelled, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_queries_copies_and_transactions() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let script = r#"
import sys, psycopg
conninfo, token = sys.argv[1], sys.argv[2]
with psycopg.connect(conninfo, password=token) as conn:
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE py (id int, label text)")
        cur.executemany("INSERT INTO py VALUES (%s, %s)", [(1, "a"), (2, "b")])
        with cur.copy("COPY py FROM STDIN") as copy:
            copy.write_row((3, "c"))
        cur.execute("SELECT id, label FROM py WHERE id > %s ORDER BY id", (1,))
        print(cur.fetchall())
        cur.execute("SELECT label FROM py ORDER BY id", binary=True)
        print([r[0] for r in cur.fetchall()])
    conn.rollback()
with psycopg.connect(conninfo, password=token, autocommit=True) as conn:
    conn.execute("CREATE TABLE py2 (x int)")
    with conn.transaction():
        conn.execute("INSERT INTO py2 VALUES (1)")
    print(conn.execute("SELECT count(*) FROM py2").fetchone()[0])
"#;
    let conninfo = format!(
        "host={} port={} dbname=app user=agent-1",
        gw.addr.ip(),
        gw.addr.port()
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &conninfo, &token])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["[(2, 'b'), (3, 'c')]", "['a', 'b', 'c']", "1"]
    );
    // The first connection rolled back: its table is gone.
    assert!(pg.psql("SELECT count(*) FROM py").await.is_err());
}
