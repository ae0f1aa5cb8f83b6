//! The PostgreSQL connector as a faithful relay: real clients through a real
//! gateway to a real server, with the client's token as its password.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use airlock_tests::postgres::{PgGateway, Raw, TestPostgres, conninfo, pg_config, psql};

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
SET statement_timeout = '41s';
RESET statement_timeout;
SELECT current_setting('statement_timeout') AS after_reset;
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
    assert!(
        out.contains(" after_reset \n-------------\n 0\n"),
        "RESET returns the setting to its default: {out}"
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

fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_end_only_their_session() {
    let (_dir, pg, gw) = setup("max_message_bytes = 4096", "").await;
    let token = gw.token("agent-1", &["agents"]).unwrap();

    // A newer protocol version is negotiated down to 3.0.
    let (mut raw, seen) = Raw::login(gw.addr, &token, 2, &[("_pq_.test", "1")]).await;
    assert_eq!(seen.first().map(|m| m.0), Some(b'v'), "{seen:?}");
    assert_eq!(seen.last().map(|m| m.0), Some(b'Z'), "{seen:?}");
    assert!(seen.iter().any(|(t, _)| *t == b'K'));

    // Before login a message is a password at most: a huge one is refused
    // without being buffered (the listener allows 4096 bytes after login;
    // the token itself is shorter than either limit).
    let (mut before_login, _) = Raw::start(gw.addr, 0, &[]).await;
    before_login.send_header(b'p', 1 << 20).await;
    let (tag, body) = before_login.read().await.unwrap();
    assert_eq!((tag, sqlstate(&body).as_str()), (b'E', "54000"));
    assert!(String::from_utf8_lossy(&body).contains("password message is larger"));

    // A Bind that claims more bytes than it carries.
    raw.send(b'B', b"\0\0\0\0\0\x01\0\0\0\x64abc").await;
    let (tag, body) = raw.read().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "08P01");
    assert!(raw.read().await.is_none(), "the connection ends");

    // Flush is forwarded: a Parse answers without a Sync...
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    raw.send(b'P', &parse("SELECT 1")).await;
    raw.send(b'H', b"").await;
    assert_eq!(raw.read().await.map(|m| m.0), Some(b'1'));
    // ...while a message type no 3.0 client sends never reaches the server,
    // whatever a later protocol might make it mean.
    raw.send(b'y', b"SELECT 1\0").await;
    let (tag, body) = raw.read().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "08P01");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("invalid frontend message type 121")
            && text.contains("Airlock forwards only"),
        "the gateway answers, not the server: {text}"
    );
    assert!(raw.read().await.is_none(), "the connection ends");

    // A query larger than max_message_bytes.
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let mut q = format!("SELECT '{}'", "x".repeat(5000)).into_bytes();
    q.push(0);
    raw.send(b'Q', &q).await;
    let (tag, body) = raw.read().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(sqlstate(&body), "54000");
    assert!(String::from_utf8_lossy(&body).contains("max_message_bytes"));

    // Other sessions are unaffected, and a fitting query works.
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    raw.send(b'Q', b"SELECT 'fine'\0").await;
    let mut tags = Vec::new();
    while let Some((tag, _)) = raw.read().await {
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, vec![b'T', b'D', b'C', b'Z']);
    // The server's log shows that query, and never the unknown message.
    let log = pg.log();
    assert!(log.contains("SELECT 'fine'"), "{log}");
    assert!(!log.contains("invalid frontend message type"), "{log}");
}

fn parse(sql: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b
}

/// Bind of the unnamed statement to the unnamed portal, no parameters,
/// text results.
const BIND: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0];
const EXECUTE: &[u8] = &[0, 0, 0, 0, 0];

async fn answers(raw: &mut Raw) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((tag, body)) = raw.read().await {
        out.push((tag, body));
        if tag == b'Z' {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_an_extended_pipeline_answers_in_order() {
    let rules = r#"
[[rules]]
name = "no-drop"
action = "deny"
message = "no drops here"
[rules.sql]
kinds = ["drop"]
"#;
    let (_dir, pg, gw) = setup("", rules).await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;

    // One batch: an allowed statement, a refused one, more after it, Sync.
    raw.send(b'P', &parse("SELECT 'first-in-batch'")).await;
    raw.send(b'B', BIND).await;
    raw.send(b'E', EXECUTE).await;
    raw.send(b'P', &parse("DROP TABLE IF EXISTS nothing_here"))
        .await;
    raw.send(b'B', BIND).await;
    raw.send(b'E', EXECUTE).await;
    raw.send(b'P', &parse("SELECT 'after-refusal-in-batch'"))
        .await;
    raw.send(b'S', &[]).await;
    let got = answers(&mut raw).await;
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    // ParseComplete, BindComplete, the row (the gateway's own Describe of the
    // portal stays hidden), CommandComplete, the refusal, ReadyForQuery.
    assert_eq!(tags, b"12DCEZ".to_vec(), "{got:?}");
    assert_eq!(sqlstate(&got[4].1), "42501");
    assert!(String::from_utf8_lossy(&got[4].1).contains("denied by rule no-drop: no drops here"));
    assert_eq!(got[5].1, b"I");

    // The next batch works normally.
    raw.send(b'P', &parse("SELECT 'next-batch'")).await;
    raw.send(b'B', BIND).await;
    raw.send(b'D', b"P\0").await;
    raw.send(b'E', EXECUTE).await;
    raw.send(b'S', &[]).await;
    let tags: Vec<u8> = answers(&mut raw).await.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"12TDCZ".to_vec());

    let log = pg.log();
    assert!(log.contains("first-in-batch") && log.contains("next-batch"));
    assert!(!log.contains("nothing_here") && !log.contains("after-refusal-in-batch"));
}

/// Connections that send nothing count against the listener: past twice
/// `max_connections` a new one is closed at once (not held until its
/// startup deadline), and once they go, a client logs in as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_pile_up_past_twice_the_cap() {
    use tokio::io::AsyncReadExt;
    let (_dir, _pg, gw) = setup("max_connections = 1", "").await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    // The gateway counts a connection when its worker takes it up: the
    // third is closed at once as soon as both are counted.
    let closed_at_once = async {
        for _ in 0..10 {
            let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let mut buf = [0u8; 1];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), third.read(&mut buf)).await;
            if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                return true;
            }
        }
        false
    };
    assert!(closed_at_once.await, "a third silent connection was held");
    drop(silent);
    let mut last = String::new();
    for _ in 0..100 {
        let (ok, out, err) = psql(
            &conninfo(gw.addr, "agent-1", ""),
            &token,
            &["-At", "-c", "SELECT 7"],
        )
        .await
        .unwrap();
        if ok {
            assert_eq!(out.trim(), "7");
            return;
        }
        last = err;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no login after the silent connections left: {last}");
}

/// A target that accepts the connection and then says nothing (here to the
/// TLS request) is given up on after the listener's `connect_timeout_secs`
/// in all, with 08001, instead of holding the session for ever; the target
/// that answers is reached as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_accepts_and_stays_silent_is_given_up_on_in_time() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let extra = format!(
        r#"
[targets.silent]
protocol = "postgres"
host = "127.0.0.1"
port = {port}
database = "app"
user = "nobody"
sslmode = "require"

[[grants]]
groups = ["agents"]
targets = ["silent"]
"#
    );
    let (_dir, _pg, gw) = setup("connect_timeout_secs = 1", &extra).await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let to_silent = conninfo(gw.addr, "agent-1", "").replace("dbname=app", "dbname=silent");
    let attempt = psql(&to_silent, &token, &["-c", "SELECT 1"]);
    let (ok, _, err) = tokio::time::timeout(std::time::Duration::from_secs(20), attempt)
        .await
        .expect("the session was held")
        .unwrap();
    assert!(!ok);
    assert!(
        err.contains("target silent unreachable")
            && err.contains("did not accept the connection and finish the login within 1s"),
        "{err}"
    );
    let (ok, out, err) = psql(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-At", "-c", "SELECT 8"],
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "8");
    held.abort();
}

/// `startup_timeout_secs` bounds TLS, the startup message and the password
/// all in all: a client that takes most of it before its startup message
/// and most of it again before its password is refused, while the same
/// login sent at once gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_startup_deadline_covers_the_startup_message_and_the_password() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _pg, gw) = setup("startup_timeout_secs = 2", "").await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    // Logs in, pausing `pause` before the startup message and again before
    // the password; true when the server says ReadyForQuery.
    let login = async |pause: std::time::Duration| -> bool {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::time::sleep(pause).await;
        let mut body = 196608i32.to_be_bytes().to_vec();
        for part in ["user", "agent-1", "database", "app", ""] {
            body.extend_from_slice(part.as_bytes());
            body.push(0);
        }
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        s.write_all(&packet).await.unwrap();
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], b'R', "asked for the password");
        tokio::time::sleep(pause).await;
        let mut pw = vec![b'p'];
        pw.extend_from_slice(&((token.len() + 5) as i32).to_be_bytes());
        pw.extend_from_slice(token.as_bytes());
        pw.push(0);
        if s.write_all(&pw).await.is_err() {
            return false;
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&buf[..n]);
                // ReadyForQuery: 'Z', length 5, status.
                if rest.windows(5).any(|w| w == [b'Z', 0, 0, 0, 5]) {
                    break;
                }
            }
        })
        .await;
        rest.windows(5).any(|w| w == [b'Z', 0, 0, 0, 5])
    };
    assert!(
        login(std::time::Duration::ZERO).await,
        "a prompt login gets in"
    );
    assert!(
        !login(std::time::Duration::from_millis(1300)).await,
        "2.6 s in all is past the 2 s deadline"
    );
}
