//! Policy through the PostgreSQL wire protocol: refused statements never
//! reach the server (its own statement log is the witness), evasion attempts
//! are judged correctly, the session stays usable after a refusal, and
//! reviewed statements wait for an approval.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::time::Duration;

use airlock_core::approvals::ApprovalStatus;
use airlock_core::{Identity, Operation};
use airlock_tests::postgres::{
    PgGateway, Raw, TestPostgres, conninfo, contains, msg, pg_config, psql_stdin,
};
use tokio_postgres::{NoTls, SimpleQueryMessage};

const RULES: &str = r#"
[policy]
packs = ["sql-guardrails"]

[[grants]]
groups = ["dba"]
targets = ["app"]

[[rules]]
name = "orders-deletes-need-approval"
action = "review"
approvers = ["dba"]
message = "deleting orders needs a DBA's approval"
[rules.sql]
kinds = ["delete"]
tables = ["orders"]

[[rules]]
name = "audited-cursor-reads-need-approval"
action = "review"
approvers = ["dba"]
message = "reading the audited cursor needs a DBA's approval"
[rules.sql]
text = ['(?i)^fetch\b.*\baudited_cursor']

[[rules]]
name = "payroll-is-read-only"
action = "deny"
message = "зарплата is read-only through Airlock"
[rules.sql]
kinds = ["delete", "update", "insert", "truncate"]
tables = ["зарплата"]
"#;

async fn setup() -> (tempfile::TempDir, TestPostgres, PgGateway) {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE victim (id int); INSERT INTO victim SELECT generate_series(1, 5);
         CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2);
         CREATE TABLE \"зарплата\" (id int); INSERT INTO \"зарплата\" VALUES (1), (2);
         ALTER TABLE victim OWNER TO airlock_app; ALTER TABLE orders OWNER TO airlock_app;
         ALTER TABLE \"зарплата\" OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", RULES), &dir.path().join("data"))
        .await
        .unwrap();
    (dir, pg, gw)
}

async fn connect(gw: &PgGateway, sub: &str, groups: &[&str]) -> tokio_postgres::Client {
    let token = gw.token(sub, groups).unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host(gw.addr.ip().to_string())
        .port(gw.addr.port())
        .user(sub)
        .dbname("app")
        .password(&token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evasions_are_refused_over_the_wire_and_never_reach_the_server() {
    let (_dir, pg, gw) = setup().await;
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let attempts: &[(&str, &str)] = &[
        ("DROP TABLE victim", "sql-guardrails/no-drop"),
        ("dRoP /* evade-1 */ TaBlE victim", "sql-guardrails/no-drop"),
        (
            "DR/**/OP TABLE victim /* evade-2 */",
            "sql-guardrails/opaque-sql",
        ),
        (
            "SELECT 'evade-3'; DROP TABLE victim",
            "sql-guardrails/no-drop",
        ),
        (
            "WITH gone AS (DELETE FROM victim RETURNING *) SELECT 'evade-4', count(*) FROM gone",
            "sql-guardrails/no-unbounded-write",
        ),
        (
            "DO $$ BEGIN DELETE FROM victim; END $$ /* evade-5 */",
            "sql-guardrails/opaque-sql",
        ),
        (
            "TRUNCATE victim /* evade-6 */",
            "sql-guardrails/no-truncate",
        ),
        (
            "update victim set id = 0 -- evade-7",
            "sql-guardrails/no-unbounded-write",
        ),
        (
            "DELETE FROM victim WHERE 1 = 1 /* evade-12 */",
            "sql-guardrails/no-unbounded-write",
        ),
        // sqlparser would end the dollar quote's tag at the euro sign and
        // see a comment where PostgreSQL sees the DELETE.
        (
            "WITH a AS (SELECT $€$ -- $€$ ), d AS (DELETE FROM victim RETURNING 1\n) SELECT 'evade-13'",
            "sql-guardrails/opaque-sql",
        ),
        (
            "MERGE INTO victim v USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE /* evade-14 */",
            "sql-guardrails/no-unbounded-write",
        ),
        (
            "ALTER ROLE CURRENT_USER PASSWORD 'mine' /* evade-15 */",
            "sql-guardrails/no-role-changes",
        ),
        // A WHERE on the other table only: every row of victim goes.
        (
            "DELETE FROM victim USING (SELECT 1 AS id) s WHERE s.id = 1 /* evade-16 */",
            "sql-guardrails/no-unbounded-write",
        ),
        // Attribute notation: PostgreSQL runs pg_read_file('/etc/hostname').
        (
            "SELECT ('/etc/hostname'::text).pg_read_file /* evade-17 */",
            "sql-guardrails/opaque-sql",
        ),
        // CASCADE of a function drops what uses it: here a partitioned table.
        (
            "DROP FUNCTION month_of(int) CASCADE /* evade-18 */",
            "sql-guardrails/no-drop-cascade",
        ),
        (
            "DELETE FROM victim USING orders AS \"VICTIM\" WHERE \"VICTIM\".id = 1 /* evade-19 */",
            "sql-guardrails/no-unbounded-write",
        ),
    ];
    for (sql, rule) in attempts {
        let e = client.simple_query(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {e}");
        assert!(
            message(&e).starts_with(&format!("denied by rule {rule}: ")),
            "{sql}: {}",
            message(&e)
        );
        // The same connection goes on.
        assert_eq!(count(&client, "victim").await, 5, "{sql}");
    }

    // PREPARE is harmless; EXECUTE is judged as the statement it runs.
    client
        .simple_query("PREPARE wipe AS DELETE FROM victim")
        .await
        .unwrap();
    let e = client
        .simple_query("EXECUTE wipe /* evade-8 */")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    assert!(
        message(&e).contains("no-unbounded-write"),
        "{}",
        message(&e)
    );
    // A PREPARE and its EXECUTE in one query string are judged together.
    let e = client
        .simple_query("PREPARE wipe2 AS DELETE FROM victim; EXECUTE wipe2 /* evade-9 */")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    // Through the extended protocol too (Parse of an EXECUTE).
    let e = client
        .query("EXECUTE wipe /* evade-10 */", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = client
        .execute("DELETE FROM victim /* evade-11 */", &[])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");

    // The same statements with a WHERE clause go through.
    client
        .simple_query("PREPARE trim1 AS DELETE FROM victim WHERE id = 5")
        .await
        .unwrap();
    client.simple_query("EXECUTE trim1").await.unwrap();
    let n = client
        .execute("DELETE FROM victim WHERE id = $1", &[&4i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute(
            "MERGE INTO victim v USING (SELECT 3 AS id) s ON v.id = s.id WHEN MATCHED THEN DELETE",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n = client
        .execute(
            "DELETE FROM victim USING (SELECT 2 AS id) s WHERE victim.id = s.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(count(&client, "victim").await, 1);
    // Attribute notation with a harmless function is a read, and runs.
    let rows = client
        .query_one("SELECT ('abc'::text).upper", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, String>(0), "ABC");
    // DROP without CASCADE goes through (the server refuses it while
    // anything depends on the function).
    client
        .simple_query(
            "CREATE FUNCTION month_of(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1'",
        )
        .await
        .unwrap();
    client
        .simple_query("DROP FUNCTION month_of(int)")
        .await
        .unwrap();

    let log = pg.log();
    for marker in [
        "DROP TABLE victim",
        "evade-1",
        "evade-2",
        "evade-3",
        "evade-4",
        "evade-5",
        "evade-6",
        "evade-7",
        "evade-8",
        "evade-9",
        "evade-10",
        "evade-11",
        "evade-12",
        "evade-13",
        "evade-14",
        "evade-15",
        "evade-16",
        "evade-17",
        "evade-18",
        "evade-19",
    ] {
        assert!(!log.contains(marker), "{marker} reached the server:\n{log}");
    }
    assert!(log.contains("PREPARE trim1 AS DELETE FROM victim WHERE id = 5"));
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "1");
}

/// A refusal does what an error on the server would do: inside a
/// transaction block the transaction is aborted (later statements get
/// 25P02, and nothing of it is committed), in both protocols; the session
/// is usable again after ROLLBACK, and the same transaction without the
/// refused statement commits. Outside a transaction the next statement
/// simply runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stays_usable_after_a_refusal_in_and_out_of_transactions() {
    let (_dir, pg, gw) = setup().await;
    let mut client = connect(&gw, "agent-1", &["agents"]).await;

    // Simple protocol inside a transaction.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO victim VALUES (100)")
        .await
        .unwrap();
    let e = client.simple_query("TRUNCATE victim").await.unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = client
        .simple_query("SELECT count(*) FROM victim")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25P02", "the transaction is aborted: {e}");
    client.simple_query("COMMIT").await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "5");
    let rows = client
        .simple_query("SELECT count(*) FROM victim")
        .await
        .unwrap();
    let n = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(n.as_deref(), Some("5"), "usable after the transaction");

    // Extended protocol inside a transaction.
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO victim VALUES ($1)", &[&101i32])
        .await
        .unwrap();
    let e = tx.execute("DELETE FROM victim", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = tx
        .execute("INSERT INTO victim VALUES ($1)", &[&102i32])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25P02", "the transaction is aborted: {e}");
    tx.rollback().await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "5");

    // The same transaction without the refused statement commits.
    let tx = client.transaction().await.unwrap();
    for id in [101i32, 102] {
        tx.execute("INSERT INTO victim VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "7");

    // Pipelined extended-protocol queries with a refusal in the middle:
    // each keeps its own answer.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int4", &[]),
        client.query("DELETE FROM victim", &[]),
        client.query_one("SELECT 3::int4", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&b.unwrap_err()), "42501");
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);

    // psql with a script: the refused statement fails, the next one runs.
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let script = "DROP TABLE victim;\nSELECT 'still here' AS s;\n";
    let (_, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-v", "ON_ERROR_STOP=0", "-At", "-f", "-"],
        Some(script),
    )
    .await
    .unwrap();
    assert!(
        err.contains("denied by rule sql-guardrails/no-drop"),
        "{err}"
    );
    assert!(out.contains("still here"), "{out}");
}

/// A pipeline (extended protocol, one Sync) is one implicit transaction:
/// when the gateway refuses a statement after earlier ones were executed,
/// those are rolled back, as if the refused one had failed on the server.
/// The same pipeline without the refused statement commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_a_pipeline_rolls_back_what_the_pipeline_did() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    // Parse, Bind and Execute of one statement on the unnamed portal.
    let statement = |sql: &str| {
        let mut msgs = vec![msg::parse("", sql)];
        msgs.extend(msg::bind_execute(""));
        msgs
    };
    // Sends a pipeline with one Sync.
    async fn pipeline(raw: &mut Raw, mut msgs: Vec<(u8, Vec<u8>)>) -> (String, Vec<String>) {
        msgs.push((b'S', Vec::new()));
        raw.exchange(msgs).await
    }

    // Refused after an executed INSERT: the INSERT does not stay.
    let mut msgs = statement("INSERT INTO victim VALUES (700)");
    msgs.extend(statement("DROP TABLE victim"));
    msgs.extend(statement("INSERT INTO victim VALUES (701)"));
    let (tags, codes) = pipeline(&mut raw, msgs).await;
    assert_eq!(
        tags, "12CEZI",
        "the INSERT's answers, the refusal, ReadyForQuery idle"
    );
    assert_eq!(codes, ["42501"]);
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "5");
    assert!(
        !pg.log().contains("DROP TABLE victim"),
        "the DROP reached the server"
    );

    // The same session, the same pipeline without the DROP: both INSERTs stay.
    let mut msgs = statement("INSERT INTO victim VALUES (700)");
    msgs.extend(statement("INSERT INTO victim VALUES (701)"));
    let (tags, codes) = pipeline(&mut raw, msgs).await;
    assert_eq!(tags, "12C12CZI");
    assert!(codes.is_empty());
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "7");
}

/// A statement made with SQL `PREPARE` runs through `EXECUTE` or through a
/// Bind that names it, and a later `PREPARE` of the same name that the
/// server refuses leaves it in place: each way is judged as the statement
/// the server would run. The same ways with a bounded DELETE go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_with_sql_are_judged_however_they_run() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let bind_execute = |name: &str| {
        let mut msgs = msg::bind_execute(name);
        msgs.push((b'S', Vec::new()));
        msgs
    };

    assert_eq!(
        raw.query("PREPARE wipe AS DELETE FROM victim").await,
        ("CZI".into(), vec![])
    );
    // The server keeps the DELETE under the name; the gateway must too.
    let (_, codes) = raw.query("PREPARE wipe AS SELECT 'drift'").await;
    assert_eq!(codes, ["42P05"]);
    let (_, codes) = raw.query("EXECUTE wipe /* evade-20 */").await;
    assert_eq!(codes, ["42501"]);
    // A Bind naming it runs the DELETE without an EXECUTE.
    let (tags, codes) = raw.exchange(bind_execute("wipe")).await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["42501".to_string()]));
    // Also when the client Parsed the name again (the server refused that).
    let mut msgs = vec![msg::parse("wipe", "SELECT 'evade-21'")];
    msgs.extend(bind_execute("wipe"));
    let (_, codes) = raw.exchange(msgs).await;
    assert_eq!(codes, ["42P05"], "the server's own error comes first");
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "5");
    assert!(
        !pg.log().contains("evade-20"),
        "the EXECUTE reached the server"
    );

    assert_eq!(
        raw.query("PREPARE trim1 AS DELETE FROM victim WHERE id = 5")
            .await
            .1,
        Vec::<String>::new()
    );
    let (_, codes) = raw.query("PREPARE trim1 AS SELECT 'drift'").await;
    assert_eq!(codes, ["42P05"]);
    assert_eq!(raw.query("EXECUTE trim1").await, ("CZI".into(), vec![]));
    assert_eq!(
        raw.query("PREPARE trim2 AS DELETE FROM victim WHERE id = 4")
            .await
            .1,
        Vec::<String>::new()
    );
    assert_eq!(
        raw.exchange(bind_execute("trim2")).await,
        ("2CZI".into(), vec![])
    );
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "3");
}

/// A client that flushes and waits before it sends Sync (pgx's pipeline,
/// libpq's `PQsendFlushRequest`) gets the answers before a refusal and the
/// refusal itself, as PostgreSQL flushes them with its own error; then the
/// Sync ends the pipeline as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_after_a_refusal_delivers_the_answers_and_the_refusal() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let describe = (b'D', [b"S".to_vec(), msg::cstr("a")].concat());
    for (tag, body) in [
        msg::parse("a", "SELECT 1"),
        describe,
        msg::parse("b", "DROP TABLE victim"),
        (b'H', Vec::new()),
    ] {
        raw.send(tag, &body).await;
    }
    let mut tags = String::new();
    while !tags.ends_with('E') {
        let (tag, _) = raw.read().await.expect("an answer without Sync");
        tags.push(char::from(tag));
    }
    assert_eq!(tags, "1tTE", "ParseComplete, the description, the refusal");
    assert_eq!(
        raw.exchange(vec![(b'S', Vec::new())]).await,
        ("ZI".into(), vec![])
    );
    assert_eq!(raw.query("SELECT 1").await.1, Vec::<String>::new());
}

/// In a client encoding such as GBK or SJIS, a byte above 0x7f and the
/// backslash after it can be one character, so that backslash escapes
/// nothing: the quote after it ends the string on the server, and what
/// follows is a statement. Sessions start in UTF-8 and text that is not
/// UTF-8 is refused, but valid UTF-8 can be read so too: `中\` is E4 B8 AD
/// 5C, which GBK reads as E4 B8 and AD 5C. A session that SQL switches to
/// GBK ends at the server's report of it, yet a pipeline runs on before
/// that report. So the gateway judges such a string as opaque wherever it
/// meets one; the same text without the ambiguity runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_character_cannot_end_a_string_early() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (_, seen) = Raw::start(gw.addr, 0, &[("client_encoding", "SJIS")]).await;
    assert!(
        seen.last()
            .is_some_and(|(tag, body)| *tag == b'E' && contains(body, b"C22023")),
        "SJIS at startup"
    );
    // GBK from the pipeline's first statement on, then `text` as a simple
    // query (which may hold several statements): the answers up to
    // ReadyForQuery or the end of the session.
    let (gw, token) = (&gw, token.as_str());
    let pipeline = |text: &'static [u8]| async move {
        let (mut raw, _) = Raw::login(gw.addr, token, 0, &[]).await;
        let parse = |sql: &[u8]| (b'P', [&[0u8][..], sql, &[0, 0, 0]].concat());
        for (tag, body) in [
            parse(b"SET client_encoding TO 'GBK'"),
            msg::bind("", ""),
            msg::execute("", 0),
            (b'Q', [text, &[0]].concat()),
        ] {
            raw.send(tag, &body).await;
        }
        let mut answers = Vec::new();
        while let Some((tag, body)) = raw.read().await {
            answers.push((tag, String::from_utf8_lossy(&body).into_owned()));
            if tag == b'Z' {
                break;
            }
        }
        answers
    };

    let hidden = "SELECT E'中\\'; DELETE FROM victim; --' /* evade-30 */";
    let answers = pipeline(hidden.as_bytes()).await;
    assert!(
        answers
            .iter()
            .any(|(tag, body)| *tag == b'E' && body.contains("C42501")),
        "{answers:?}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM victim").await.unwrap(), "5");
    assert!(!pg.log().contains("evade-30"), "it reached the server");

    // The same character without a backslash after it runs.
    let answers = pipeline("SELECT E'中x' AS ran_31".as_bytes()).await;
    assert!(answers.iter().any(|(tag, _)| *tag == b'D'), "{answers:?}");
    assert!(pg.log().contains("ran_31"));
    // And the session ended at the report of GBK.
    assert!(
        answers
            .last()
            .is_some_and(|(tag, body)| *tag == b'E' && body.contains("C0A000")),
        "{answers:?}"
    );
}

/// Statement text that is not UTF-8 is refused (22021), as the server
/// refuses it in the UTF-8 session every client has through Airlock. Before,
/// a pipeline could switch client_encoding to WIN1251, name a table in
/// WIN1251 bytes and switch back before its Sync: the gateway read the name
/// as replacement characters and no rule applied, the server read зарплата
/// and deleted its rows, and no report of the encoding ever came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_refused_so_rules_on_names_outside_ascii_hold() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    // In UTF-8 the rule applies, and reading the table is fine.
    let (_, codes) = raw.query("DELETE FROM \"зарплата\" WHERE id > 0").await;
    assert_eq!(codes, ["42501"]);
    let (tags, codes) = raw.query("SELECT count(*) FROM \"зарплата\"").await;
    assert_eq!((tags.as_str(), codes), ("TDCZI", vec![]));

    let parse = |sql: &[u8]| (b'P', [&[0u8][..], sql, &[0, 0, 0]].concat());
    let win1251: &[u8] =
        b"DELETE FROM \"\xe7\xe0\xf0\xef\xeb\xe0\xf2\xe0\" WHERE id > 0 /* evade-32 */";
    for (tag, body) in [
        parse(b"SET client_encoding TO 'WIN1251'"),
        msg::bind("", ""),
        msg::execute("", 0),
        parse(win1251),
        msg::bind("", ""),
        msg::execute("", 0),
        parse(b"RESET client_encoding"),
        msg::bind("", ""),
        msg::execute("", 0),
        (b'S', Vec::new()),
    ] {
        raw.send(tag, &body).await;
    }
    let mut answers = Vec::new();
    while let Some((tag, body)) = raw.read().await {
        answers.push((tag, String::from_utf8_lossy(&body).into_owned()));
        if tag == b'Z' {
            break;
        }
    }
    assert!(
        answers
            .iter()
            .any(|(tag, body)| *tag == b'E' && body.contains("C22021")),
        "{answers:?}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM \"зарплата\"").await.unwrap(),
        "2"
    );
    assert!(!pg.log().contains("evade-32"), "it reached the server");
}

/// A parsed `EXECUTE d` runs whatever `d` is when it runs, not what `d` was
/// when it was parsed: each of its portals is judged when it runs. Here
/// `d` is parsed anew as a delete that needs review, and running the
/// `EXECUTE` waits for the approval like the delete itself (before, it ran
/// at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_execute_is_judged_as_what_it_runs_when_it_runs() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let (tags, codes) = raw
        .exchange(vec![
            msg::parse("d", "SELECT 1"),
            msg::parse("e", "EXECUTE d"),
            msg::bind("", "e"),
            msg::execute("", 0),
            (b'C', b"Sd\0".to_vec()),
            msg::parse("d", "DELETE FROM orders WHERE id = 1 /* late-33 */"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("112DC31ZI", vec![]));

    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![msg::bind("", "e"), msg::execute("", 0), (b'S', Vec::new())],
        false,
    )
    .await;
    assert_denied_once(&answers, decided);
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");
}

/// PostgreSQL looks up the name a parsed `EXECUTE` names when the portal
/// runs, not at its Bind (where it describes the portal's columns): a
/// name replaced in between is refused, one approval covers one
/// execution, and SQL `EXECUTE` of such a statement (whose inner name the
/// gateway cannot follow) is opaque.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_execute_is_judged_at_its_execute_with_one_approval() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;

    // Replaced after the Bind, in the same pipeline.
    let (tags, codes) = raw
        .exchange(vec![
            msg::parse("d", "SELECT 1"),
            msg::parse("e", "EXECUTE d"),
            msg::bind("", "e"),
            (b'C', b"Sd\0".to_vec()),
            msg::parse("d", "DELETE FROM orders WHERE id = 1 /* late-34 */"),
            msg::execute("", 0),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("11231EZI", vec!["0A000".into()]));
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");

    // Bound once it stands for the DELETE: judged at the Execute.
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![msg::bind("", "e"), msg::execute("", 0), (b'S', Vec::new())],
        false,
    )
    .await;
    assert_denied_once(&answers, decided);
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");

    // Approved: it runs, after one approval (not one at the Bind and
    // another at the Execute). (A name new to the session: each statement
    // a name has stood for is a candidate for what it runs.)
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![
            msg::parse("g", "DELETE FROM orders WHERE id = 1 /* late-35 */"),
            msg::parse("f", "EXECUTE g"),
            msg::bind("", "f"),
            msg::execute("", 0),
            (b'S', Vec::new()),
        ],
        true,
    )
    .await;
    assert_eq!(decided, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|(tag, body)| *tag == b'C' && body.starts_with("DELETE 1")),
        "{answers:?}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "1");

    // SQL `EXECUTE` of a statement that runs another: y is a SELECT when
    // x is parsed, and a review-needing DELETE when x runs.
    let (tags, codes) = raw
        .exchange(vec![
            msg::parse("y", "SELECT 1"),
            msg::parse("x", "EXECUTE y"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("11ZI", vec![]));
    // The same statement run directly is allowed.
    assert_eq!(raw.query("EXECUTE y").await, ("TDCZI".into(), vec![]));
    let (tags, codes) = raw
        .exchange(vec![
            (b'C', b"Sy\0".to_vec()),
            msg::parse("y", "DELETE FROM orders WHERE id = 2 /* late-36 */"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("31ZI", vec![]));
    assert_eq!(
        raw.query("EXECUTE x").await,
        ("EZI".into(), vec!["42501".into()])
    );

    // A portal of it that ran is only read from again: executing it once
    // more after other messages is fine. One that has not run is not
    // fetched from with SQL (its columns were described at its Bind).
    let (tags, codes) = raw
        .exchange(vec![
            msg::parse("w", "SELECT generate_series(1, 3)"),
            msg::parse("x2", "EXECUTE w"),
            msg::bind("s", "x2"),
            msg::execute("s", 1),
            msg::parse("other", "SELECT 1"),
            msg::bind("", "other"),
            msg::execute("", 0),
            msg::execute("s", 0),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("112Ds12DCDDCZI", vec![]));
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![msg::bind("q", "x2"), (b'S', Vec::new())])
        .await;
    assert_eq!(tags, "2ZT");
    assert_eq!(
        raw.query("FETCH ALL FROM q").await,
        ("EZE".into(), vec!["0A000".into()])
    );
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![
            msg::bind("q", "x2"),
            msg::execute("q", 1),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "2DsZT");
    assert_eq!(
        raw.query("FETCH ALL FROM q").await,
        ("TDDCZT".into(), vec![])
    );
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "1");
    assert!(
        gw.runtime
            .gateway
            .approvals()
            .list(Some(ApprovalStatus::Pending))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A Close or Bind the server skips after an error, or refuses, leaves the
/// statement or portal it had in place; one still under review keeps its
/// review. And SQL `FETCH` from a portal Bind made runs it: it is judged
/// as that portal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_close_or_bind_or_a_fetch_does_not_bypass_a_review() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let failing = || {
        vec![
            msg::parse("", "SELECT 1/0"),
            msg::bind("", ""),
            msg::execute("", 0),
        ]
    };

    // A statement: its Close is skipped, so the Parse of its name fails.
    let delete = "DELETE FROM orders WHERE id = 1 /* skipped-close */";
    let (tags, _) = raw
        .exchange(vec![msg::parse("e", delete), (b'S', Vec::new())])
        .await;
    assert_eq!(tags, "1ZI");
    let mut msgs = failing();
    msgs.extend([(b'C', b"Se\0".to_vec()), (b'S', Vec::new())]);
    assert_eq!(
        raw.exchange(msgs).await,
        ("1EZI".into(), vec!["22012".into()])
    );
    let (tags, codes) = raw
        .exchange(vec![msg::parse("e", "SELECT 2"), (b'S', Vec::new())])
        .await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["42P05".into()]));
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![msg::bind("", "e"), msg::execute("", 0), (b'S', Vec::new())],
        false,
    )
    .await;
    assert_eq!(decided, 1, "{answers:?}");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");
    // The Close made: the name is the SELECT's, which runs unasked.
    let (tags, _) = raw
        .exchange(vec![
            (b'C', b"Se\0".to_vec()),
            msg::parse("e", "SELECT 2"),
            msg::bind("", "e"),
            msg::execute("", 0),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "312DCZI");

    // A portal in a transaction: a Bind of its name is skipped, and a
    // rollback to a savepoint leaves the pipeline's error behind.
    let delete = "DELETE FROM orders WHERE id = 1 /* skipped-bind */";
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![
            msg::parse("r", delete),
            msg::bind("p", "r"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "12ZT");
    assert_eq!(raw.query("SAVEPOINT s").await.0, "CZT");
    let mut msgs = failing();
    msgs.extend([msg::bind("p", ""), (b'S', Vec::new())]);
    assert_eq!(
        raw.exchange(msgs).await,
        ("1EZE".into(), vec!["22012".into()])
    );
    portal_p_is_still_under_review(&mut raw, &gw, &pg).await;
    // A Close the server makes frees the name for an allowed statement.
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![
            msg::bind("p", "r"),
            (b'C', b"Pp\0".to_vec()),
            msg::parse("one", "SELECT 1"),
            msg::bind("p", "one"),
            msg::execute("p", 0),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "2312DCZT");
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");

    // SQL FETCH from a bound portal of a reviewed DELETE … RETURNING.
    let returning = "DELETE FROM orders WHERE id = 1 RETURNING id /* fetched */";
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![
            msg::parse("f", returning),
            msg::bind("f", "f"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "12ZT");
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![(b'Q', msg::cstr("FETCH ALL FROM f"))],
        false,
    )
    .await;
    assert_denied_once(&answers, decided);
    // No row of the DELETE … RETURNING came back.
    assert!(!answers.iter().any(|(tag, _)| *tag == b'D'), "{answers:?}");
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");
    // FETCH from a cursor DECLARE made (judged then) runs unasked.
    let (tags, codes) = raw
        .query("BEGIN; DECLARE c CURSOR FOR SELECT id FROM orders ORDER BY id; FETCH ALL FROM c; COMMIT")
        .await;
    assert_eq!((tags.as_str(), codes), ("CCTDDCCZI", vec![]));

    // COPY through the extended protocol as drivers send it (a Sync before
    // the data, which the server ignores, and one after): a Close that
    // waits for its answer afterwards gets it.
    let (tags, _) = raw
        .exchange(vec![
            msg::parse("r2", "DELETE FROM orders WHERE id = 2 /* closed */"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "1ZI");
    let copy = vec![
        msg::parse("", "COPY victim FROM STDIN"),
        msg::bind("", ""),
        msg::execute("", 0),
        (b'S', Vec::new()),
    ];
    let tags = until_copy_in(&mut raw, copy).await;
    assert_eq!(tags, "12G");
    let (tags, codes) = raw
        .exchange(vec![
            (b'd', b"8\n".to_vec()),
            (b'c', Vec::new()),
            (b'S', Vec::new()),
            (b'C', b"Sr2\0".to_vec()),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("CZI", vec![]));
    let (tags, _) = raw.exchange(vec![]).await;
    assert_eq!(tags, "3ZI");

    // A Sync sent during COPY FROM STDIN data is ignored by the server, so
    // a Close after the data could not be waited for: the session ends
    // with a reason instead of hanging (or forgetting the review).
    let answers = until_closed(
        &mut raw,
        vec![
            msg::parse("", "COPY victim FROM STDIN"),
            msg::bind("", ""),
            msg::execute("", 0),
            (b'S', Vec::new()),
            (b'd', b"9\n".to_vec()),
            (b'c', Vec::new()),
            (b'C', b"Sr\0".to_vec()),
            (b'S', Vec::new()),
        ],
    )
    .await;
    assert_ended_for_copy(&answers);
}

/// A Close sent during COPY FROM STDIN data (after a Sync the server
/// ignores there) fails the COPY on the server and is never made: the
/// statement it names, under review, stays. The gateway cannot wait for
/// that Close's answer, so the session ends with a reason; before, it took
/// the statement as closed and a later Bind of it ran the DELETE unasked.
/// A Close the server skips after a failed Describe (a name that does not
/// exist), or refuses for its subtype, closes nothing: the statement or
/// portal under review it named stays in the gateway's view, and running
/// it later still waits for an approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_after_a_failed_describe_or_of_no_kind_does_not_bypass_a_review() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;

    // A statement: the Describe fails, the server skips the Close, and the
    // Parse of the name that follows fails there.
    let delete = "DELETE FROM orders WHERE id = 1 /* describe-close */";
    let (tags, _) = raw
        .exchange(vec![msg::parse("r", delete), (b'S', Vec::new())])
        .await;
    assert_eq!(tags, "1ZI");
    let (tags, codes) = raw
        .exchange(vec![
            (b'D', b"Snosuch\0".to_vec()),
            (b'C', b"Sr\0".to_vec()),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["26000".into()]));
    let (tags, codes) = raw
        .exchange(vec![msg::parse("r", "SELECT 1"), (b'S', Vec::new())])
        .await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["42P05".into()]));
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![msg::bind("", "r"), msg::execute("", 0), (b'S', Vec::new())],
        false,
    )
    .await;
    assert_denied_once(&answers, decided);
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");

    // A portal: a Close of no kind the server knows closes nothing.
    let delete = "DELETE FROM orders WHERE id = 1 /* subtype-close */";
    assert_eq!(raw.query("BEGIN").await.0, "CZT");
    let (tags, _) = raw
        .exchange(vec![
            msg::parse("q", delete),
            msg::bind("p", "q"),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(tags, "12ZT");
    assert_eq!(raw.query("SAVEPOINT s").await.0, "CZT");
    assert_eq!(raw.exchange(vec![(b'S', Vec::new())]).await.0, "ZT");
    let (tags, _) = raw
        .exchange(vec![(b'C', b"Xp\0".to_vec()), (b'S', Vec::new())])
        .await;
    assert_eq!(tags, "EZE");
    portal_p_is_still_under_review(&mut raw, &gw, &pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_during_copy_data_ends_the_session_instead_of_a_review() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    // The COPY run by its own portal, by SQL EXECUTE of it, and by a
    // portal of a name whose re-Parse the server refused (it keeps the
    // COPY under the name).
    for (copy, answers) in [(0, "112G"), (1, "1112G"), (2, "12G")] {
        let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
        let delete = msg::parse("", "DELETE FROM orders WHERE id = 1 /* copy-close */");
        let msgs = match copy {
            0 => vec![
                delete,
                msg::parse("c", "COPY victim FROM STDIN"),
                msg::bind("p", "c"),
            ],
            1 => vec![
                delete,
                msg::parse("c", "COPY victim FROM STDIN"),
                msg::parse("e", "EXECUTE c"),
                msg::bind("p", "e"),
            ],
            _ => {
                let copy = vec![
                    msg::parse("c", "COPY victim FROM STDIN"),
                    (b'S', Vec::new()),
                ];
                assert_eq!(raw.exchange(copy).await.0, "1ZI");
                let refused = vec![msg::parse("c", "SELECT 1"), (b'S', Vec::new())];
                assert_eq!(
                    raw.exchange(refused).await,
                    ("EZI".into(), vec!["42P05".into()])
                );
                vec![delete, msg::bind("p", "c")]
            }
        };
        let mut msgs = msgs;
        msgs.extend([msg::execute("p", 0), (b'S', Vec::new())]);
        let tags = until_copy_in(&mut raw, msgs).await;
        assert_eq!(tags, answers);
        let answers = until_closed(
            &mut raw,
            vec![
                (b'C', b"S\0".to_vec()),
                (b'S', Vec::new()),
                msg::bind("", ""),
                msg::execute("", 0),
                (b'S', Vec::new()),
            ],
        )
        .await;
        assert_ended_for_copy(&answers);
        assert!(!answers.iter().any(|(tag, _)| *tag == b'C'), "{answers:?}");
        assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");
    }
}

/// A pipeline with an `EXECUTE` (which might run a COPY) before a reviewed
/// statement and a Parse of the unnamed statement after it runs through:
/// nothing waits on a COPY that never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_an_execute_and_an_approval_runs_through() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let (answers, decided) = through_approvals(
        &mut raw,
        &gw,
        &pg,
        vec![
            msg::parse("x", "SELECT 1"),
            msg::parse("", "EXECUTE x"),
            msg::bind("", ""),
            msg::execute("", 0),
            msg::parse("", "DELETE FROM orders WHERE id = 1 /* pipelined */"),
            msg::bind("", ""),
            msg::execute("", 0),
            msg::parse("", "SELECT 2"),
            msg::bind("", ""),
            msg::execute("", 0),
            (b'S', Vec::new()),
        ],
        true,
    )
    .await;
    assert_eq!(decided, 1, "{answers:?}");
    // (The approval notice may pass the BindComplete before it.)
    let mut tags: Vec<char> = answers.iter().map(|(tag, _)| char::from(*tag)).collect();
    tags.sort_unstable();
    assert_eq!(String::from_iter(tags), "1111222CCCDDNZ", "{answers:?}");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "1");
}

/// A protocol-level FETCH from a cursor, which a rule puts under review,
/// waits for its approval at its Execute like any reviewed statement
/// (before, its portal was taken as judged at its Parse and ran unasked);
/// a FETCH from another cursor runs unasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_fetch_from_a_cursor_waits_for_its_approval() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let declare = "BEGIN; DECLARE audited_cursor CURSOR FOR SELECT 1; \
                   DECLARE plain_cursor CURSOR FOR SELECT 2";
    assert_eq!(raw.query(declare).await, ("CCCZT".into(), vec![]));
    let fetch = |cursor: &str| {
        vec![
            msg::parse("", &format!("FETCH ALL FROM {cursor}")),
            msg::bind("", ""),
            msg::execute("", 0),
            (b'S', Vec::new()),
        ]
    };
    assert_eq!(
        raw.exchange(fetch("plain_cursor")).await,
        ("12DCZT".into(), vec![])
    );
    let (answers, decided) =
        through_approvals(&mut raw, &gw, &pg, fetch("audited_cursor"), false).await;
    assert_denied_once(&answers, decided);
    assert!(!answers.iter().any(|(tag, _)| *tag == b'D'), "{answers:?}");
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");
}

/// One approval request was raised and denied, and the client was told.
fn assert_denied_once(answers: &[(u8, String)], decided: usize) {
    assert_eq!(decided, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|(tag, body)| *tag == b'E' && body.contains("not today")),
        "{answers:?}"
    );
}

/// Sends `msgs`; the answers' tags up to the CopyInResponse.
async fn until_copy_in(raw: &mut Raw, msgs: Vec<(u8, Vec<u8>)>) -> String {
    for (tag, body) in msgs {
        raw.send(tag, &body).await;
    }
    let mut tags = String::new();
    while let Some((tag, _)) = raw.read().await {
        tags.push(char::from(tag));
        if tag == b'G' {
            break;
        }
    }
    tags
}

/// Sends `msgs`; every answer until the gateway closes the connection.
async fn until_closed(raw: &mut Raw, msgs: Vec<(u8, Vec<u8>)>) -> Vec<(u8, String)> {
    for (tag, body) in msgs {
        // The gateway may end the session before it has read them all.
        if !raw.try_send(tag, &body).await {
            break;
        }
    }
    let mut answers = Vec::new();
    while let Some((tag, body)) = raw.read().await {
        answers.push((tag, String::from_utf8_lossy(&body).into_owned()));
    }
    answers
}

/// The session ended with the gateway's FATAL error about COPY.
fn assert_ended_for_copy(answers: &[(u8, String)]) {
    assert!(
        answers.iter().any(|(tag, body)| *tag == b'E'
            && body.contains("SFATAL")
            && body.contains("C08P01")
            && body.contains("send Sync only after the COPY data")),
        "{answers:?}"
    );
}

/// Rolls back to savepoint `s` (leaving the pipeline's error behind) and
/// runs portal `p` of a reviewed DELETE: it waits for an approval, which is
/// denied, nothing of it runs, and the transaction is rolled back.
async fn portal_p_is_still_under_review(raw: &mut Raw, gw: &PgGateway, pg: &TestPostgres) {
    assert_eq!(raw.query("ROLLBACK TO s").await.0, "CZT");
    let (answers, decided) = through_approvals(
        raw,
        gw,
        pg,
        vec![msg::execute("p", 0), (b'S', Vec::new())],
        false,
    )
    .await;
    assert_eq!(decided, 1, "{answers:?}");
    assert!(!answers.iter().any(|(tag, _)| *tag == b'C'), "{answers:?}");
    assert_eq!(raw.query("ROLLBACK").await.0, "CZI");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");
}

/// Sends `msgs` and decides each approval request they raise, checking
/// first that `orders` is untouched while it waits, until the
/// ReadyForQuery. Returns the answers and how many requests it decided.
async fn through_approvals(
    raw: &mut Raw,
    gw: &PgGateway,
    pg: &TestPostgres,
    msgs: Vec<(u8, Vec<u8>)>,
    approve: bool,
) -> (Vec<(u8, String)>, usize) {
    let orders = pg.psql("SELECT count(*) FROM orders").await.unwrap();
    for (tag, body) in msgs {
        raw.send(tag, &body).await;
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let answers = async {
        let mut answers = Vec::new();
        while let Some((tag, body)) = raw.read().await {
            answers.push((tag, String::from_utf8_lossy(&body).into_owned()));
            if tag == b'Z' {
                break;
            }
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        answers
    };
    let decide = async {
        let mut decided = 0;
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            let waiting = gw
                .runtime
                .gateway
                .approvals()
                .list(Some(ApprovalStatus::Pending))
                .await
                .unwrap();
            for request in waiting {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = pg.psql("SELECT count(*) FROM orders").await.unwrap();
                assert_eq!(now, orders, "it ran before approval");
                let reason = (!approve).then(|| "not today".to_string());
                gw.runtime
                    .gateway
                    .approvals()
                    .decide(&request.id, &dba(), approve, reason)
                    .await
                    .unwrap()
                    .unwrap();
                decided += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        decided
    };
    let (answers, decided) = tokio::join!(answers, decide);
    assert!(
        decided == 0
            || answers
                .iter()
                .any(|(tag, body)| *tag == b'N' && body.contains("waiting for approval")),
        "{answers:?}"
    );
    (answers, decided)
}

async fn pending(gw: &PgGateway) -> String {
    for _ in 0..200 {
        let list = gw
            .runtime
            .gateway
            .approvals()
            .list(Some(ApprovalStatus::Pending))
            .await
            .unwrap();
        if let Some(a) = list.first() {
            return a.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no approval request appeared");
}

fn dba() -> Identity {
    Identity {
        subject: "dana".into(),
        groups: vec!["dba".into()],
        issuer: "airlock-local".into(),
    }
}

/// What an approver reads is the statement's code, whatever masking does to
/// its values: a detector span (a private key's markers in two comments)
/// cannot take the `OR id > 0` between them out of the request's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_cannot_hide_code_from_the_approver() {
    let (_dir, pg, gw) = setup().await;
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let sql = "DELETE FROM orders WHERE id = 1 /* -----BEGIN PRIVATE KEY----- */ OR id > 0 /* -----END PRIVATE KEY----- */";
    let gw2 = gw.runtime.gateway.clone();
    let decide = async {
        let id = pending(&gw).await;
        let request = gw2.approvals().get(&id).await.unwrap().unwrap();
        let Operation::Sql(op) = &request.operation else {
            panic!("{:?}", request.operation)
        };
        gw2.approvals()
            .decide(&id, &dba(), false, Some("not all orders".into()))
            .await
            .unwrap()
            .unwrap();
        op.text.clone()
    };
    let (result, shown) = tokio::join!(client.simple_query(sql), decide);
    assert!(shown.contains("OR id > 0"), "{shown}");
    assert!(!shown.contains("BEGIN PRIVATE KEY"), "{shown}");
    assert_eq!(code(&result.unwrap_err()), "42501");
    assert_eq!(
        count(&client, "orders").await.to_string(),
        pg.psql("SELECT count(*) FROM orders").await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewed_statements_wait_for_approval() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let ci = conninfo(gw.addr, "agent-1", "");
    let waiting = tokio::spawn(async move {
        psql_stdin(
            &ci,
            &token,
            &["-At", "-f", "-"],
            Some("DELETE FROM orders WHERE id = 1 /* reviewed-1 */;\n"),
        )
        .await
        .unwrap()
    });
    let id = pending(&gw).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !pg.log().contains("reviewed-1"),
        "nothing runs before approval"
    );
    gw.runtime
        .gateway
        .approvals()
        .decide(&id, &dba(), true, None)
        .await
        .unwrap()
        .unwrap();
    let (ok, out, err) = waiting.await.unwrap();
    assert!(ok, "{err}");
    assert!(
        err.contains("deleting orders needs a DBA's approval: waiting for approval")
            && err.contains(&id)
            && err.contains("http"),
        "the client is told what it waits for and where: {err}"
    );
    assert!(out.contains("DELETE 1"), "{out}");
    assert!(pg.log().contains("reviewed-1"));

    // A denied review reaches the client with the reason; the session goes on.
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let gw2 = gw.runtime.gateway.clone();
    let decide = async {
        let id = pending(&gw).await;
        gw2.approvals()
            .decide(
                &id,
                &dba(),
                false,
                Some("orders are kept for audits".into()),
            )
            .await
            .unwrap()
            .unwrap();
    };
    let (result, ()) = tokio::join!(
        client.execute(
            "DELETE FROM orders WHERE id = $1 /* reviewed-2 */",
            &[&2i32]
        ),
        decide
    );
    let e = result.unwrap_err();
    assert_eq!(code(&e), "42501");
    assert!(
        message(&e).contains("orders are kept for audits"),
        "{}",
        message(&e)
    );
    assert_eq!(count(&client, "orders").await, 1);
    assert!(!pg.log().contains("reviewed-2"));
}

/// Through the extended protocol a statement under review is prepared at
/// once, and each execution waits for its own approval, which shows the
/// parameters it runs with: approving one execution approves no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_execution_of_a_reviewed_statement_is_approved_with_its_parameters() {
    let (_dir, pg, gw) = setup().await;
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let statement = client
        .prepare("DELETE FROM orders WHERE id = $1 /* reviewed-4 */")
        .await
        .unwrap();
    let approvals = gw.runtime.gateway.approvals();
    let text = async |id: &str| match approvals.get(id).await.unwrap().unwrap().operation {
        airlock_core::Operation::Sql(op) => op.text,
        other => panic!("{other:?}"),
    };

    let approve = async {
        let id = pending(&gw).await;
        assert!(
            text(&id).await.ends_with("-- parameters: $1 = '1'"),
            "{}",
            text(&id).await
        );
        approvals
            .decide(&id, &dba(), true, None)
            .await
            .unwrap()
            .unwrap();
        id
    };
    let (deleted, first) = tokio::join!(client.execute(&statement, &[&1i32]), approve);
    assert_eq!(deleted.unwrap(), 1);

    let deny = async {
        let id = pending(&gw).await;
        assert_ne!(id, first, "a new approval for the next execution");
        assert!(
            text(&id).await.ends_with("-- parameters: $1 = '2'"),
            "{}",
            text(&id).await
        );
        approvals
            .decide(&id, &dba(), false, Some("keep order 2".into()))
            .await
            .unwrap()
            .unwrap();
    };
    let (refused, ()) = tokio::join!(client.execute(&statement, &[&2i32]), deny);
    assert_eq!(code(&refused.unwrap_err()), "42501");
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "1");
}

/// A Parse under a name the server already has fails there, and the
/// server keeps the statement it had: when that one waits for review, a
/// Bind of the name still waits for approval of it, not for the harmless
/// statement the client tried to put in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_parse_does_not_take_a_reviewed_statement_out_of_review() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let sync = || (b'S', Vec::new());
    let delete = "DELETE FROM orders WHERE id = 1 /* reviewed-5 */";
    let (tags, _) = raw.exchange(vec![msg::parse("s", delete), sync()]).await;
    assert_eq!(tags, "1ZI", "prepared at once");
    let (_, codes) = raw
        .exchange(vec![msg::parse("s", "SELECT 'harmless'"), sync()])
        .await;
    assert_eq!(codes, ["42P05"], "the server keeps the DELETE");

    let mut run = msg::bind_execute("s");
    run.push(sync());
    let deny = async {
        let id = pending(&gw).await;
        let a = gw
            .runtime
            .gateway
            .approvals()
            .get(&id)
            .await
            .unwrap()
            .unwrap();
        let airlock_core::Operation::Sql(op) = a.operation else {
            panic!("{:?}", a.operation)
        };
        assert!(op.text.contains("reviewed-5"), "{}", op.text);
        gw.runtime
            .gateway
            .approvals()
            .decide(&id, &dba(), false, Some("not today".into()))
            .await
            .unwrap()
            .unwrap();
    };
    let ((_, codes), ()) = tokio::join!(raw.exchange(run), deny);
    assert_eq!(codes, ["42501"]);
    assert_eq!(pg.psql("SELECT count(*) FROM orders").await.unwrap(), "2");

    // Closed and parsed again, the name holds the harmless statement.
    let (_, codes) = raw
        .exchange(vec![
            (b'C', [b"S".to_vec(), msg::cstr("s")].concat()),
            sync(),
        ])
        .await;
    assert!(codes.is_empty());
    let mut run = vec![msg::parse("s", "SELECT 'harmless'")];
    run.extend(msg::bind_execute("s"));
    run.push(sync());
    assert_eq!(raw.exchange(run).await, ("12DCZI".into(), vec![]));
}

/// PostgreSQL tells names apart by their first 63 bytes only. The gateway
/// resolves SQL names as the server does, and refuses longer names in the
/// protocol, so a statement prepared under one long name never runs judged
/// as the statement of another that the server takes for the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_cannot_run_a_statement_other_than_the_one_judged() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let a = "a".repeat(63);
    // `{a}x` and `{a}y` are one statement on the server: the EXECUTE runs
    // the DELETE without WHERE, and is judged as that.
    let (tags, codes) = raw
        .query(&format!(
            "PREPARE {a}y AS SELECT 1; DEALLOCATE {a}x; PREPARE {a}x AS DELETE FROM victim; EXECUTE {a}y"
        ))
        .await;
    assert_eq!(codes, ["42501"], "{tags}");
    assert_eq!(count(&client, "victim").await, 5);
    // Two short names are two statements: the EXECUTE runs `SELECT 1`.
    let (tags, codes) = raw
        .query("PREPARE by AS SELECT 1; PREPARE bx AS DELETE FROM victim; EXECUTE by")
        .await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
    assert_eq!(count(&client, "victim").await, 5);

    // In the protocol a longer name is refused, and the session goes on;
    // a name of 63 bytes is fine.
    let sync = || (b'S', Vec::new());
    for (name, refused) in [(format!("{a}x"), true), (a.clone(), false)] {
        let mut msgs = vec![msg::parse(&name, "SELECT 1")];
        msgs.extend(msg::bind_execute(&name));
        msgs.push(sync());
        let (tags, codes) = raw.exchange(msgs).await;
        if refused {
            assert_eq!((tags.as_str(), codes), ("EZI", vec!["42622".to_string()]));
        } else {
            assert_eq!((tags.as_str(), codes), ("12DCZI", vec![]), "{name}");
        }
    }
    let (tags, codes) = raw
        .exchange(vec![msg::bind(&format!("{a}p"), &a), sync()])
        .await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["42622".to_string()]));
    // A non-ASCII name is compared in the server's encoding, which may not
    // be the client's: refused too.
    let (tags, codes) = raw
        .exchange(vec![msg::parse("café", "SELECT 1"), sync()])
        .await;
    assert_eq!((tags.as_str(), codes), ("EZI", vec!["42602".to_string()]));
}

/// A `DEALLOCATE` may not run (an earlier statement of its query failed)
/// and a `PREPARE` of the name may then be refused: the server keeps the
/// statement it had, so `EXECUTE` of the name is still judged as that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deallocate_that_did_not_run_forgets_nothing() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
    let steps = [
        ("PREPARE s9 AS DELETE FROM victim", vec![]),
        ("SELECT 1/0; DEALLOCATE s9", vec!["22012"]),
        ("PREPARE s9 AS SELECT 1", vec!["42P05"]),
        ("EXECUTE s9", vec!["42501"]),
    ];
    for (sql, expected) in steps {
        let (tags, codes) = raw.query(sql).await;
        assert_eq!(codes, expected, "{sql}: {tags}");
    }
    assert_eq!(count(&client, "victim").await, 5);
    // The control: a name that only ever held the SELECT runs it.
    let (tags, codes) = raw.query("PREPARE s10 AS SELECT 1; EXECUTE s10").await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
}

/// Approvers see a statement masked, but an approval is for the statement
/// exactly as sent, bind parameters included (of a statement prepared
/// through the protocol or with SQL `PREPARE`): a requester who comes back
/// with another address, which masks alike, gets a request of its own, and
/// the statement that was approved still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_covers_only_the_exact_statement_not_one_that_masks_alike() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let approvals = gw.runtime.gateway.approvals();
    pg.psql("ALTER TABLE orders ADD COLUMN email text")
        .await
        .unwrap();
    // The same DELETE as a simple query, or prepared with a parameter
    // (by Parse, or by SQL on the connection first), then bound.
    let statement = |way: &str, email: &str| match way {
        "simple" => {
            let sql = format!("DELETE FROM orders WHERE email = '{email}'");
            vec![(b'Q', msg::cstr(&sql))]
        }
        _ => {
            let mut msgs = Vec::new();
            let name = if way == "parse" {
                msgs.push(msg::parse("", "DELETE FROM orders WHERE email = $1"));
                ""
            } else {
                "del"
            };
            msgs.push(msg::bind_params("", name, &[email]));
            msgs.push(msg::execute("", 0));
            msgs.push((b'S', Vec::new()));
            msgs
        }
    };
    let open = async |way: &str| {
        let (mut raw, _) = Raw::login(gw.addr, &token, 0, &[]).await;
        if way == "sql-prepare" {
            let (tags, codes) = raw
                .query("PREPARE del(text) AS DELETE FROM orders WHERE email = $1")
                .await;
            assert!(codes.is_empty(), "{tags} {codes:?}");
        }
        raw
    };
    for way in ["simple", "parse", "sql-prepare"] {
        pg.psql(
            "DELETE FROM orders;
             INSERT INTO orders VALUES (1, 'alice@example.com'), (2, 'bob@example.com')",
        )
        .await
        .unwrap();
        // Asked for alice's order, gone before the approval.
        let mut raw = open(way).await;
        for (tag, body) in statement(way, "alice@example.com") {
            raw.send(tag, &body).await;
        }
        let approved = pending(&gw).await;
        drop(raw);
        session_gone(&pg).await;
        approvals
            .decide(&approved, &dba(), true, None)
            .await
            .unwrap()
            .unwrap();

        // Back with bob's address: a new request, which looks the same.
        let mut raw = open(way).await;
        for (tag, body) in statement(way, "bob@example.com") {
            raw.send(tag, &body).await;
        }
        let other = pending(&gw).await;
        assert_ne!(other, approved, "{way}: the approval is not reused");
        let shown = async |id: &str| approvals.get(id).await.unwrap().unwrap().operation;
        assert_eq!(shown(&approved).await, shown(&other).await, "{way}");
        let airlock_core::Operation::Sql(op) = shown(&other).await else {
            panic!("{way}")
        };
        if way != "simple" {
            // Approvers see what it runs with (masked).
            assert!(
                op.text.ends_with("-- parameters: $1 = '<EMAIL>'"),
                "{way}: {}",
                op.text
            );
        }
        approvals
            .decide(&other, &dba(), false, Some("not bob's".into()))
            .await
            .unwrap()
            .unwrap();
        let (tags, codes) = raw.exchange(Vec::new()).await;
        assert_eq!(codes, ["42501"], "{way}: {tags}");
        drop(raw);

        // The approved statement runs at once.
        let mut raw = open(way).await;
        let (tags, codes) = raw.exchange(statement(way, "alice@example.com")).await;
        assert!(
            codes.is_empty() && tags.contains('C'),
            "{way}: {tags} {codes:?}"
        );
        assert_eq!(
            pg.psql("SELECT string_agg(email, ',') FROM orders")
                .await
                .unwrap(),
            "bob@example.com",
            "{way}"
        );
    }
}

/// Waits until no session of the gateway is connected to PostgreSQL.
async fn session_gone(pg: &TestPostgres) {
    for _ in 0..200 {
        let n = pg
            .psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'airlock_app'")
            .await
            .unwrap();
        if n == "0" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway's session did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_statement_waiting_for_approval() {
    let (_dir, pg, gw) = setup().await;
    let client = connect(&gw, "agent-1", &["agents"]).await;
    let cancel = client.cancel_token();
    let waiting = tokio::spawn(async move {
        let r = client
            .simple_query("DELETE FROM orders WHERE id = 1 /* reviewed-3 */")
            .await
            .map(|_| ());
        (r, client)
    });
    pending(&gw).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (r, client) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&r.unwrap_err()), "57014");
    // The cancel ended there: it is not also sent to the server, where it
    // would arrive late and cancel the next statement instead.
    client.simple_query("SELECT pg_sleep(0.5)").await.unwrap();
    assert_eq!(count(&client, "orders").await, 2);
    assert!(!pg.log().contains("reviewed-3"));
}
