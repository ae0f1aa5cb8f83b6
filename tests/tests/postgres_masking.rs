//! Masking through the PostgreSQL connector: column rules and detectors in
//! text and binary results, errors, notices, notifications, parameter
//! statuses and COPY OUT; and the gateway's own credential for the server
//! never reaches a client in any byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use airlock_tests::postgres::Raw as Wire;
use airlock_tests::postgres::msg::{bind, bind_execute, execute, parse};
use airlock_tests::postgres::{
    PgGateway, Tap, TestPostgres, conninfo, contains, frontend_messages, pg_config, psql_stdin,
};
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, Type};

const MASKING: &str = r#"
[[masking.fields]]
name = "ssn"

[[masking.fields]]
name = "staff.pay_grade"

[[masking.fields]]
name = "later.memo"

[[masking.fields]]
name = "payroll.band"

[[masking.fields]]
name = "имя"
"#;

async fn setup() -> (tempfile::TempDir, TestPostgres, PgGateway) {
    let (dir, pg) = seeded().await;
    let pw = pg.password_file(dir.path()).unwrap();
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", MASKING), &dir.path().join("data"))
        .await
        .unwrap();
    (dir, pg, gw)
}

/// PostgreSQL with the tables the tests read.
async fn seeded() -> (tempfile::TempDir, TestPostgres) {
    let dir = tempfile::tempdir().unwrap();
    let pg = TestPostgres::start().await.unwrap();
    pg.psql(
        "CREATE TABLE customers (id int, email text, ssn text, note varchar(200), doc jsonb, tags text[], nick name);
         INSERT INTO customers VALUES
           (1, 'alice@example.com', '123-45-6789', 'call bob@example.org', '{\"mail\": \"carol@example.net\"}', '{\"dave@example.com\",\"plain\"}', 'erin@example.com');
         ALTER TABLE customers OWNER TO airlock_app;
         CREATE TABLE staff (id int, pay_grade text, team text);
         INSERT INTO staff VALUES (7, 'E7-band-3', 'platform');
         ALTER TABLE staff OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    (dir, pg)
}

async fn connect(addr: std::net::SocketAddr, token: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host(addr.ip().to_string())
        .port(addr.port())
        .user("agent-1")
        .dbname("app")
        .password(token)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// The first column of each row of a simple query's answer (`NULL` for a
/// null).
fn first_values(msgs: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(r.get(0).unwrap_or("NULL").to_string())
            }
            _ => None,
        })
        .collect()
}

/// The rows of a simple query's answer.
fn rows_of(msgs: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<tokio_postgres::SimpleQueryRow> {
    msgs.into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Any value, as the raw bytes the client received.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_and_detected_values_are_masked_in_text_and_binary_results() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();

    // Text format (psql).
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-At", "-f", "-"],
        Some("SELECT id, email, ssn, note, doc, tags, nick FROM customers;\nSELECT 'harmless text';\n"),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    for raw in ["alice@", "123-45-6789", "bob@", "carol@", "dave@", "erin@"] {
        assert!(!out.contains(raw), "{raw} leaked: {out}");
    }
    assert!(
        out.contains("<EMAIL>") && out.contains("<REDACTED>"),
        "{out}"
    );
    assert!(out.contains("plain"), "unmatched values stay: {out}");
    assert!(out.contains("harmless text"), "{out}");

    // Binary format (tokio-postgres asks for binary results).
    let client = connect(gw.addr, &token).await;
    let row = client
        .query_one(
            "SELECT id, email, ssn, note, doc, tags, nick FROM customers",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "<EMAIL>");
    assert_eq!(
        row.get::<_, String>(2),
        "<REDACTED>",
        "the column rule applies"
    );
    assert_eq!(row.get::<_, String>(3), "call <EMAIL>");
    let doc: Raw = row.get(4);
    assert_eq!(doc.0[0], 1, "jsonb keeps its version byte");
    let doc = String::from_utf8(doc.0[1..].to_vec()).unwrap();
    assert!(doc.contains("<EMAIL>") && !doc.contains("carol@"), "{doc}");
    assert_eq!(row.get::<_, Vec<String>>(5), vec!["<EMAIL>", "plain"]);
    assert_eq!(row.get::<_, String>(6), "<EMAIL>");
    // Values of types the gateway cannot rewrite in binary (a composite
    // here) are withheld when something in them must be masked.
    let row = client
        .query_one("SELECT ROW(email, 1), ROW('plain', 2) FROM customers", &[])
        .await
        .unwrap();
    assert!(row.get::<_, Option<Raw>>(0).is_none());
    assert!(row.get::<_, Option<Raw>>(1).is_some());
    // The same query of values without anything to mask is untouched.
    let row = client
        .query_one("SELECT 'plain'::text, 'x'::varchar, 7::int8", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "plain");
    assert_eq!(row.get::<_, i64>(2), 7);
}

/// A column rule follows the column, not the name the query gives it: the
/// table OID and attribute number in RowDescription are looked up in the
/// target's catalog. `E7-band-3` looks like nothing a detector knows, so
/// only the rule `staff.pay_grade` can mask it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_does_not_take_a_column_out_of_its_rule() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    // Several sessions meet the table for the first time at once: one asks
    // the catalog, the others wait for its answer (none is left unmasked,
    // none hangs).
    let mut first = Vec::new();
    for _ in 0..4 {
        let c = connect(gw.addr, &token).await;
        first.push(tokio::spawn(async move {
            c.query_one("SELECT pay_grade AS g FROM staff", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }));
    }
    for f in first {
        let got = tokio::time::timeout(std::time::Duration::from_secs(30), f)
            .await
            .expect("a session waiting for the catalog hung")
            .unwrap();
        assert_eq!(got, "<REDACTED>");
    }
    let client = connect(gw.addr, &token).await;
    let text = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    // Under its own name, the rule applies (and the other columns stay).
    let rows = text(
        client
            .simple_query("SELECT id, pay_grade, team FROM staff")
            .await
            .unwrap(),
    );
    assert_eq!(rows, vec![vec!["7", "<REDACTED>", "platform"]]);
    // Aliased, qualified, through a table alias, in a subquery: still masked.
    for sql in [
        "SELECT pay_grade AS grade FROM staff",
        "SELECT s.pay_grade AS \"x\" FROM staff s",
        "SELECT public.staff.pay_grade AS team FROM public.staff",
        "SELECT g FROM (SELECT pay_grade AS g FROM staff) sub",
    ] {
        let rows = text(client.simple_query(sql).await.unwrap());
        assert_eq!(rows, vec![vec!["<REDACTED>"]], "{sql}");
    }
    // Extended protocol with binary results (text is its own bytes). The
    // query's name still counts too: a column given the ruled column's name,
    // or a secret-like one, is masked (masking more is the safe side); an
    // alias of an unruled column stays visible.
    let row = client
        .query_one(
            "SELECT pay_grade AS grade, team AS pay_grade, team AS password, team AS grade2 FROM staff",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "<REDACTED>");
    assert_eq!(row.get::<_, String>(1), "<REDACTED>");
    assert_ne!(row.get::<_, String>(2), "platform");
    assert_eq!(row.get::<_, String>(3), "platform");
    // A whole row of the table names no column: it is covered whole, in
    // both formats, and a row built of the columns one by one shows the
    // rest (the control).
    let rows = text(client.simple_query("SELECT s FROM staff s").await.unwrap());
    assert_eq!(rows.len(), 1);
    assert!(!rows[0][0].contains("E7-band-3"), "{rows:?}");
    let row = client
        .query_one("SELECT s FROM staff s", &[])
        .await
        .unwrap();
    assert!(
        row.try_get::<_, Option<Raw>>(0).unwrap().is_none(),
        "withheld"
    );
    let rows = text(
        client
            .simple_query("SELECT ROW(s.id, s.team) FROM staff s")
            .await
            .unwrap(),
    );
    assert_eq!(rows, vec![vec!["(7,platform)"]]);
}

/// A value computed from a ruled column carries the column's rule: the
/// server names no table for it (`pay_grade || ''` is just `?column?`), so
/// the gateway reads the query for what each computed column is made of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_computed_from_a_ruled_column_is_masked() {
    let (_dir, pg, gw) = setup().await;
    pg.psql("CREATE TABLE plain (a text); INSERT INTO plain VALUES ('shown-1'); ALTER TABLE plain OWNER TO airlock_app;")
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let text = first_values;
    for sql in [
        "SELECT pay_grade || '' FROM staff",
        "SELECT upper(pay_grade) FROM staff",
        "SELECT replace(s.pay_grade, '-', '+') AS team FROM staff s",
        "SELECT reverse(g) FROM (SELECT pay_grade AS g FROM staff) sub",
        "WITH t AS (SELECT pay_grade FROM staff) SELECT pay_grade || '!' FROM t",
        "SELECT (SELECT pay_grade FROM staff LIMIT 1)",
        "SELECT id::text FROM staff UNION ALL SELECT pay_grade FROM staff",
        "SELECT row_to_json(s) FROM staff s",
        "SELECT 1; SELECT lower(pay_grade) FROM staff",
        // A table's `*` inside a query around it, an alias list, a
        // recursive CTE that swaps its columns.
        "SELECT upper(pay_grade) FROM (SELECT * FROM staff) s",
        "SELECT NULL, NULL, NULL WHERE false UNION ALL SELECT * FROM staff",
        "SELECT g || '' FROM staff AS s(i, g)",
        "WITH RECURSIVE r(a, b, n) AS (SELECT ''::text, pay_grade, 0 FROM staff UNION ALL SELECT b, a, n + 1 FROM r WHERE n = 0) SELECT a FROM r WHERE n = 1",
    ] {
        let rows = text(client.simple_query(sql).await.unwrap());
        assert!(!rows.is_empty(), "{sql}");
        for row in &rows {
            // (A JSON value is masked into a JSON string.)
            assert!(
                row.trim_matches('"') == "<REDACTED>"
                    || (row == "1" && sql.starts_with("SELECT 1;")),
                "{sql}: {rows:?}"
            );
        }
    }
    // Extended protocol, binary results, a prepared statement run twice.
    let stmt = client
        .prepare("SELECT upper(pay_grade) AS g, team FROM staff")
        .await
        .unwrap();
    for _ in 0..2 {
        let row = client.query_one(&stmt, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "<REDACTED>");
        assert_eq!(row.get::<_, String>(1), "platform");
    }
    let row = client
        .query_one(
            "INSERT INTO staff VALUES (8, 'E9-band-1', 'data') RETURNING pay_grade || '', team",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "<REDACTED>");
    assert_eq!(row.get::<_, String>(1), "data");
    // The control: values computed from unruled columns are shown, also
    // through a whole row of a table no rule covers (the bare rule `ssn`
    // covers a table's rows only if the table has such a column).
    for sql in [
        "SELECT upper(a) FROM (SELECT * FROM plain) s",
        "SELECT row_to_json(p)::text FROM plain p",
    ] {
        let rows = text(client.simple_query(sql).await.unwrap());
        assert_eq!(rows.len(), 1, "{sql}");
        assert!(
            rows[0].to_lowercase().contains("shown-1"),
            "{sql}: {rows:?}"
        );
    }
    let rows = text(
        client
            .simple_query("SELECT upper(team) FROM staff WHERE id = 7")
            .await
            .unwrap(),
    );
    assert_eq!(rows, vec!["PLATFORM"]);
    let row = client
        .query_one("SELECT team || '!', id + 1 FROM staff WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "platform!");
    assert_eq!(row.get::<_, i32>(1), 8);
}

/// `EXECUTE` and `FETCH` return what a name stands for: a computed column
/// of theirs carries the rules of what the prepared statement or the
/// cursor computes it from, in simple and extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_run_by_name_is_masked_by_what_the_name_stands_for() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let simple = |sql: &'static str| {
        let client = &client;
        async move { first_values(client.simple_query(sql).await.unwrap()) }
    };
    assert_eq!(
        simple("PREPARE p AS SELECT upper(pay_grade) FROM staff; EXECUTE p").await,
        ["<REDACTED>"]
    );
    assert_eq!(simple("EXECUTE p").await, ["<REDACTED>"]);
    let row = client.query_one("EXECUTE p", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "<REDACTED>");
    assert_eq!(
        simple("BEGIN; DECLARE c CURSOR FOR SELECT pay_grade || '' FROM staff; FETCH ALL FROM c; COMMIT").await,
        ["<REDACTED>"]
    );
    simple("BEGIN; DECLARE d CURSOR FOR SELECT reverse(pay_grade) FROM staff").await;
    let row = client.query_one("FETCH ALL FROM d", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "<REDACTED>");
    assert_eq!(
        simple("MOVE ABSOLUTE 0 IN d; FETCH 1 FROM d").await,
        ["<REDACTED>"]
    );
    simple("COMMIT").await;
    // The control: the same through names for unruled columns.
    assert_eq!(
        simple("PREPARE q AS SELECT upper(team) FROM staff; EXECUTE q").await,
        ["PLATFORM"]
    );
    let row = client.query_one("EXECUTE q", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "PLATFORM");
    assert_eq!(
        simple(
            "BEGIN; DECLARE e CURSOR FOR SELECT team || '' FROM staff; FETCH ALL FROM e; COMMIT"
        )
        .await,
        ["platform"]
    );
}

/// A view's column is the view's to the server (its RowDescription names
/// the view): the catalog reads the view's definition, through views of
/// views, for the table columns each view column is made of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_does_not_take_a_column_out_of_its_rule() {
    let (_dir, pg, gw) = setup().await;
    pg.psql(
        "CREATE VIEW staff_v AS SELECT id, pay_grade AS grade, team FROM staff;
         CREATE VIEW staff_v2 AS SELECT grade AS g2, upper(team) AS t FROM staff_v;
         CREATE VIEW staff_json AS SELECT row_to_json(s) AS j, s.team FROM staff s;
         CREATE MATERIALIZED VIEW staff_m AS SELECT pay_grade || '' AS pg, team FROM ONLY staff;
         -- sqlparser does not read ROWS FROM: a definition the gateway
         -- cannot read makes each column a whole row of what it reads.
         CREATE VIEW staff_rows AS SELECT pay_grade AS p, team
           FROM staff, ROWS FROM (generate_series(1, 1), generate_series(1, 1)) r;
         GRANT SELECT ON staff_v, staff_v2, staff_json, staff_m, staff_rows TO airlock_app;",
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    for (sql, masked, shown) in [
        ("SELECT grade, team FROM staff_v", 0, Some((1, "platform"))),
        ("SELECT v.grade AS x FROM staff_v v", 0, None),
        ("SELECT g2, t FROM staff_v2", 0, Some((1, "PLATFORM"))),
        ("SELECT j, team FROM staff_json", 0, Some((1, "platform"))),
        ("SELECT pg, team FROM staff_m", 0, Some((1, "platform"))),
        ("SELECT * FROM staff_v", 1, Some((2, "platform"))),
        ("SELECT p FROM staff_rows", 0, None),
        ("SELECT team FROM staff_rows", 0, None),
        // Computed from a view's column: the catalog says what is behind it.
        (
            "SELECT grade || '', team FROM staff_v",
            0,
            Some((1, "platform")),
        ),
        ("SELECT upper(g2) FROM staff_v2", 0, None),
    ] {
        for row in client.simple_query(sql).await.unwrap() {
            let tokio_postgres::SimpleQueryMessage::Row(r) = row else {
                continue;
            };
            let value = r.get(masked).unwrap();
            assert_eq!(value.trim_matches('"'), "<REDACTED>", "{sql}");
            if let Some((i, expected)) = shown {
                assert_eq!(r.get(i).unwrap(), expected, "{sql}");
            }
        }
        // Binary results too.
        let row = client.query_one(sql, &[]).await.unwrap();
        let text = |i: usize| String::from_utf8_lossy(&row.get::<_, Raw>(i).0).into_owned();
        assert!(
            text(masked).contains("<REDACTED>"),
            "{sql}: {}",
            text(masked)
        );
    }
}

/// The planner's statistics show sample values of every column the role
/// can read (`pg_stats.most_common_vals`, `histogram_bounds`): they are
/// masked whenever column rules are on; the rest of a statistics row is
/// shown. A query of a `WITH RECURSIVE` list that names one declared after
/// it does not take a column out of its rule either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_and_forward_references_do_not_show_a_ruled_column() {
    let (_dir, pg, gw) = setup().await;
    pg.psql("INSERT INTO staff SELECT i, 'E7-band-3', 'platform' FROM generate_series(8, 50) i; ANALYZE staff;")
        .await
        .unwrap();
    // Directly, PostgreSQL shows the value.
    let direct = pg
        .psql("SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'staff' AND attname = 'pay_grade'")
        .await
        .unwrap();
    assert!(direct.contains("E7-band-3"), "{direct}");
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    for sql in [
        "SELECT most_common_vals, attname, null_frac FROM pg_stats WHERE tablename = 'staff' AND attname = 'pay_grade'",
        "SELECT most_common_vals::text || '', attname, null_frac FROM pg_stats WHERE tablename = 'staff' AND attname = 'pay_grade'",
        "SELECT s.most_common_vals AS v, s.attname, s.null_frac FROM pg_catalog.pg_stats s WHERE tablename = 'staff' AND attname = 'pay_grade'",
    ] {
        let rows = rows_of(client.simple_query(sql).await.unwrap());
        assert_eq!(rows.len(), 1, "{sql}");
        let value = rows[0].get(0).unwrap();
        assert!(!value.contains("E7-band-3"), "{sql}: {value}");
        assert!(value.contains("<REDACTED>"), "{sql}: {value}");
        // What is not a sample is shown.
        assert_eq!(rows[0].get(1), Some("pay_grade"), "{sql}");
        assert_eq!(rows[0].get(2), Some("0"), "{sql}");
    }
    let all = client
        .simple_query("SELECT * FROM pg_stats WHERE tablename = 'staff'")
        .await
        .unwrap();
    let text = format!("{all:?}");
    assert!(!text.contains("E7-band-3"), "{text}");

    let forward = "WITH RECURSIVE a AS (SELECT g || '' AS v FROM b), b AS (SELECT pay_grade AS g FROM staff WHERE id = 7) SELECT v FROM a";
    assert_eq!(pg.psql(forward).await.unwrap(), "E7-band-3");
    assert_eq!(
        first_values(client.simple_query(forward).await.unwrap()),
        ["<REDACTED>"]
    );
    // In declaration order the same query is followed column by column:
    // the ruled column is masked, another computed column is not.
    let ordered = "WITH RECURSIVE b AS (SELECT pay_grade AS g, team FROM staff WHERE id = 7), a AS (SELECT g || '' AS v, upper(team) AS t FROM b) SELECT v, t FROM a";
    let rows = rows_of(client.simple_query(ordered).await.unwrap());
    let row = &rows[0];
    assert_eq!(row.get(0), Some("<REDACTED>"));
    assert_eq!(row.get(1), Some("PLATFORM"));
}

/// A rule written for a table covers its partitions and inheritance
/// children read directly under an alias: the catalog names such a column
/// after each table it inherits from too, also when its attribute number
/// there differs (a partition attached after a column was dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_for_a_table_covers_its_partitions_and_children() {
    let (_dir, pg, gw) = setup().await;
    pg.psql(
        "CREATE TABLE payroll (id int, band text, team text) PARTITION BY RANGE (id);
         CREATE TABLE payroll_2024 PARTITION OF payroll FOR VALUES FROM (0) TO (100);
         CREATE TABLE payroll_old (junk int, id int, band text, team text);
         ALTER TABLE payroll_old DROP COLUMN junk;
         ALTER TABLE payroll ATTACH PARTITION payroll_old FOR VALUES FROM (100) TO (200);
         INSERT INTO payroll VALUES (1, 'band-Q7', 'infra'), (150, 'band-Q8', 'infra');
         CREATE TABLE contractors (agency text) INHERITS (staff);
         INSERT INTO contractors VALUES (8, 'C3-band-1', 'data', 'acme');
         ALTER TABLE payroll OWNER TO airlock_app;
         ALTER TABLE payroll_2024 OWNER TO airlock_app;
         ALTER TABLE payroll_old OWNER TO airlock_app;
         ALTER TABLE contractors OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let one = |sql: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(sql, &[]).await.unwrap();
            row.get::<_, String>(0)
        }
    };
    for sql in [
        "SELECT band AS b FROM payroll WHERE id = 1",
        "SELECT band AS b FROM payroll_2024",
        "SELECT p.band AS b FROM payroll_old p",
        "SELECT pay_grade AS g FROM contractors",
    ] {
        assert_eq!(one(sql).await, "<REDACTED>", "{sql}");
    }
    // The children's other columns, aliased, stay visible.
    assert_eq!(one("SELECT team AS t FROM payroll_old").await, "infra");
    assert_eq!(one("SELECT agency AS a FROM contractors").await, "acme");
}

/// A write that fails a constraint does not show the client the ruled
/// columns of the row it failed on: the DETAIL's values (`Failing row
/// contains (…)`, `Key (…)=(…) already exists`) are masked by the table's
/// column rules. A key of an unruled column, and the row of a table no
/// rule covers (its columns asked of the catalog), stay as the server sent
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_does_not_show_ruled_values_in_its_detail() {
    let (_dir, pg, gw) = setup().await;
    pg.psql(
        "ALTER TABLE staff ALTER COLUMN team SET NOT NULL;
         CREATE UNIQUE INDEX ON staff (pay_grade);
         CREATE UNIQUE INDEX ON staff (id);
         CREATE TABLE gadgets (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO gadgets VALUES (1, 'sprocket');
         ALTER TABLE gadgets OWNER TO airlock_app;
         CREATE FUNCTION fails_in_german(t text, d text) RETURNS int LANGUAGE plpgsql AS
           $f$ BEGIN RAISE EXCEPTION 'neue Zeile verletzt Check-Constraint'
                 USING ERRCODE = '23514', DETAIL = d, TABLE = t, SCHEMA = 'public'; END $f$;",
    )
    .await
    .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let detail = |sql: &'static str| {
        let client = &client;
        async move {
            let e = client.simple_query(sql).await.unwrap_err();
            let db = e.as_db_error().unwrap();
            (
                db.code().code().to_owned(),
                db.detail().unwrap_or("").to_owned(),
            )
        }
    };
    let (code, d) = detail("UPDATE staff SET team = NULL WHERE id = 7").await;
    assert_eq!(code, "23502");
    assert!(d.starts_with("Failing row contains ("), "{d}");
    assert!(!d.contains("E7-band-3") && !d.contains("platform"), "{d}");
    let (code, d) = detail("INSERT INTO staff VALUES (8, 'E7-band-3', 'x')").await;
    assert_eq!(code, "23505");
    assert!(
        d.starts_with("Key (pay_grade)=(") && d.ends_with(") already exists."),
        "{d}"
    );
    assert!(!d.contains("E7-band-3"), "{d}");
    // A foreign key names the referencing table and shows the referenced
    // table's key.
    pg.psql(
        "CREATE TABLE loans (borrower text REFERENCES staff (pay_grade));
         INSERT INTO loans VALUES ('E7-band-3');
         ALTER TABLE loans OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    let (code, d) = detail("DELETE FROM staff WHERE id = 7").await;
    assert_eq!(code, "23503");
    assert!(
        d.starts_with("Key (pay_grade)=(")
            && d.ends_with("is still referenced from table \"loans\"."),
        "{d}"
    );
    assert!(!d.contains("E7-band-3"), "{d}");
    // The controls: an unruled key of the same table, and a table no rule
    // covers.
    let (_, d) = detail("INSERT INTO staff VALUES (7, 'other', 'x')").await;
    assert_eq!(d, "Key (id)=(7) already exists.");
    let (_, d) = detail("UPDATE gadgets SET label = NULL WHERE id = 1").await;
    assert_eq!(d, "Failing row contains (1, null).");
    let (_, d) = detail("INSERT INTO gadgets VALUES (1, 'x')").await;
    assert_eq!(d, "Key (id)=(1) already exists.");
    // The server's messages in another language: the DETAIL is not read,
    // so it is masked as a row of the table it names; of a table no rule
    // covers it stays.
    let (code, d) = detail(
        "SELECT fails_in_german('staff', 'Fehlgeschlagene Zeile enthält (7, E7-band-3, platform).')",
    )
    .await;
    assert_eq!(code, "23514");
    assert!(!d.contains("E7-band-3"), "{d}");
    let (_, d) =
        detail("SELECT fails_in_german('gadgets', 'Fehlgeschlagene Zeile enthält (1, null).')")
            .await;
    assert_eq!(d, "Fehlgeschlagene Zeile enthält (1, null).");
    // The session goes on.
    let n = client
        .execute("UPDATE gadgets SET label = 'cog' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// Catalog lookups are rate-limited per target, and a lookup right after
/// another waits for its turn: a client cannot have a statement's columns
/// go unlooked-up (and an alias unmasked) by sending another new table's
/// statement just before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_right_after_another_waits_instead_of_being_skipped() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let rows: Vec<Vec<String>> = client
        .simple_query("SELECT id FROM customers LIMIT 0; SELECT pay_grade AS g FROM staff")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(vec![r.get(0).unwrap_or("NULL").to_string()])
            }
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec![vec!["<REDACTED>"]]);
}

/// A table created in the client's open transaction is invisible to the
/// gateway's catalog connection, so its columns cannot be named yet. Such
/// columns are not remembered for the prepared statement: once the table
/// is committed, a later execution asks the catalog again (after the
/// 10-second pause for unknown columns) and the aliased column is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_the_catalog_could_not_name_are_asked_for_again() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    client
        .batch_execute(
            "BEGIN; CREATE TABLE later (id int, memo text); INSERT INTO later VALUES (1, 'quarterly plan B');",
        )
        .await
        .unwrap();
    let st = client.prepare("SELECT memo AS n FROM later").await.unwrap();
    // Still inside the creating transaction: only the query's name `n` is
    // known (a documented limit); the statement runs.
    assert_eq!(client.query(&st, &[]).await.unwrap().len(), 1);
    client.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
    let row = client.query_one(&st, &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "<REDACTED>");
}

/// When the catalog cannot be read (here: the target allows the gateway's
/// role one connection, which the session holds), the session goes on and
/// rules match the query's names, as they did before the lookup existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_catalog_falls_back_to_the_query_names() {
    let (_dir, pg, gw) = setup().await;
    pg.psql("ALTER ROLE airlock_app CONNECTION LIMIT 1")
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    for _ in 0..2 {
        let row = client
            .query_one("SELECT pay_grade, team AS pay_grade, id FROM staff", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "<REDACTED>");
        assert_eq!(row.get::<_, String>(1), "<REDACTED>");
        assert_eq!(row.get::<_, i32>(2), 7);
    }
    // The lookup really failed (the server refused the catalog connection),
    // which is why only the query's names counted above.
    let log = pg.log();
    assert!(
        log.contains("too many connections for role \"airlock_app\""),
        "{log}"
    );
    // The simple protocol too, and the session stays usable throughout.
    let rows = client
        .simple_query("SELECT pay_grade, team FROM staff")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (row.get(0), row.get(1)),
        (Some("<REDACTED>"), Some("platform"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_errors_notifications_and_copy_out_are_masked() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let script = "
DO $$ BEGIN RAISE NOTICE 'write to frank@example.com'; END $$;
LISTEN news;
NOTIFY news, 'from grace@example.com';
COPY (SELECT email, note FROM customers) TO STDOUT;
COPY (SELECT 'to: ' || email FROM customers) TO STDOUT (FORMAT binary);
DO $$ BEGIN RAISE EXCEPTION 'cannot mail heidi@example.com'; END $$;
";
    let (_, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-v", "ON_ERROR_STOP=0", "-f", "-"],
        Some(script),
    )
    .await
    .unwrap();
    let all = format!("{out}{err}");
    assert!(
        out.contains("to: <EMAIL>"),
        "binary COPY is masked: {out:?}"
    );
    for raw in ["frank@", "grace@", "alice@", "bob@", "heidi@"] {
        assert!(!all.contains(raw), "{raw} leaked: {all}");
    }
    assert!(all.contains("NOTICE:  write to <EMAIL>"), "{all}");
    assert!(all.contains("with payload \"from <EMAIL>\""), "{all}");
    assert!(all.contains("<EMAIL>\tcall <EMAIL>"), "{all}");
    assert!(all.contains("ERROR:  cannot mail <EMAIL>"), "{all}");
}

/// `COPY … TO STDOUT` carries no column names, so its rows are masked field
/// by field by the columns the statement copies: a table's (from the
/// catalog), a column list's, or a query's, in text, CSV and binary format,
/// through psql (simple protocol) and a driver (extended protocol). The
/// columns without a rule come through as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_rows_are_masked_by_their_columns() {
    use futures_util::TryStreamExt;
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let script = "
\\copy staff to stdout
COPY staff (team, pay_grade) TO STDOUT (FORMAT csv, HEADER);
COPY (SELECT id, upper(pay_grade), E'a\\tb' FROM staff) TO STDOUT (FORMAT csv, DELIMITER ';');
COPY (SELECT id, pay_grade || E'\\t' AS x, team FROM staff) TO STDOUT;
COPY staff (id, team) TO STDOUT;
COPY (SELECT 'aXbXc', pay_grade, 'd' FROM staff) TO STDOUT (FORMAT csv, DELIMITER X);
COPY (SELECT pay_grade FROM staff) TO STDOUT (NULL 'E7-band-3');
COPY (TABLE public.staff) TO STDOUT;
";
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-f", "-"],
        Some(script),
    )
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert!(
        !out.contains("E7-band-3") && !out.contains("E7-BAND-3"),
        "{out}"
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "7\t<REDACTED>\tplatform",
            "team,pay_grade",
            "platform,<REDACTED>",
            "7;<REDACTED>;a\tb",
            "7\t<REDACTED>\tplatform",
            "7\tplatform",
            // A delimiter written as a bare letter (which PostgreSQL folds
            // to lower case): the rows cannot be split, and are withheld.
            "<REDACTED>",
            // A NULL string equal to the value would tell it: masked.
            "<REDACTED>",
            "<REDACTED>\t<REDACTED>\t<REDACTED>",
        ]
    );
    // Extended protocol, text and binary.
    let client = connect(gw.addr, &token).await;
    let copy = |sql: &'static str| {
        let client = &client;
        async move {
            let stream = client.copy_out(sql).await.unwrap();
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
            chunks.concat()
        }
    };
    assert_eq!(
        copy("COPY staff TO STDOUT").await,
        b"7\t<REDACTED>\tplatform\n"
    );
    let binary = copy("COPY staff TO STDOUT (FORMAT binary)").await;
    let text = String::from_utf8_lossy(&binary);
    assert!(!text.contains("E7-band-3"), "{text:?}");
    assert!(
        text.contains("<REDACTED>") && text.contains("platform"),
        "{text:?}"
    );
}

/// Ways values used to leave unmasked: a card number kept as a number in
/// binary results and parameters (its bytes hold no digits), a field under
/// its rule's name inside a json or jsonb document, and COPY rows in another
/// encoding than UTF-8. Beside each, the same kind of value with nothing to
/// mask arrives untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_in_numbers_json_documents_or_another_encoding_are_masked() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();

    let client = connect(gw.addr, &token).await;
    let row = client
        .query_one(
            "SELECT 4111111111111111::int8, 4111111111111111::numeric, 42::int8, 12.50::numeric",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), None, "withheld");
    assert!(row.get::<_, Option<Raw>>(1).is_none(), "withheld");
    assert_eq!(row.get::<_, i64>(2), 42);
    assert!(row.get::<_, Option<Raw>>(3).is_some());
    // Inside a row value, and in an array, the same.
    let row = client
        .query_one(
            "SELECT ROW(4111111111111111::int8, 'x'), ROW(42::int8, 'x'), ARRAY[4111111111111111::int8, 42]",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, Option<Raw>>(0).is_none(), "withheld");
    assert!(row.get::<_, Option<Raw>>(1).is_some());
    assert_eq!(row.get::<_, Vec<Option<i64>>>(2), vec![None, Some(42)]);
    // A card kept as a float: float8's text (`4.111111111111111e+15`), a
    // JSON number of it, a decimal with a zero fraction; a price stays.
    let texts: Vec<String> = client
        .simple_query(
            "SELECT 4111111111111111::float8, json_build_object('c', 4111111111111111::float8), \
             4111111111111111.00::numeric, 12.5::float8",
        )
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .next()
        .unwrap();
    for t in &texts[..3] {
        assert!(
            !t.contains("4111111111111111") && !t.contains("4.111111111111111e"),
            "{texts:?}"
        );
    }
    assert_eq!(texts[3], "12.5");
    let row = client
        .query_one("SELECT $1::int8 > $2", &[&4111111111111111i64, &7i64])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the parameter reached the server");
    // The rule `ssn` masks that key at any depth of a document (nine digits
    // without separators: no detector would).
    let docs = "SELECT '{\"ids\": {\"ssn\": \"078051120\"}}'::jsonb, '[{\"ssn\": 78051120}]'::json, '{\"id\": 78051120}'::jsonb";
    let row = client.query_one(docs, &[]).await.unwrap();
    let jsonb: Raw = row.get(0);
    assert_eq!(&jsonb.0[1..], br#"{"ids":{"ssn":"<REDACTED>"}}"#);
    assert_eq!(row.get::<_, Raw>(1).0, br#"[{"ssn":"<REDACTED>"}]"#);
    assert_eq!(&row.get::<_, Raw>(2).0[1..], br#"{"id": 78051120}"#);
    drop(client);
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-At", "-c", docs],
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        r#"{"ids":{"ssn":"<REDACTED>"}}|[{"ssn":"<REDACTED>"}]|{"id": 78051120}"#
    );
    // Arrays of documents in text format (as psql gets them), each
    // document by itself.
    let arrays =
        r#"SELECT ARRAY['{"ssn": "078051120"}'::jsonb, NULL], ARRAY['{"id": 78051120}'::json]"#;
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-At", "-c", arrays],
        None,
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        r#"{"{\"ssn\":\"<REDACTED>\"}",NULL}|{"{\"id\": 78051120}"}"#
    );

    // COPY in LATIN1 is a statement the gateway does not read (its rows
    // are not UTF-8, and in some encodings a backslash or a tab can be
    // part of a character): while column rules are on, its rows cannot
    // be shown to hold no ruled column, and are withheld whole.
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-v", "ON_ERROR_STOP=1", "-f", "-"],
        Some(
            "COPY (SELECT email, 'José' FROM customers) TO STDOUT (ENCODING 'LATIN1');
COPY (SELECT id, 'José' FROM customers) TO STDOUT (ENCODING 'LATIN1');
",
        ),
    )
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(!out.contains("alice@"), "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["<REDACTED>", "<REDACTED>"]
    );
    assert!(pg.log().contains("(ENCODING 'LATIN1')"), "the COPY ran");

    // Nor did the audit trail get the card number: not from the result
    // rows, not from the parameter.
    let events = serde_json::to_string(&gw.events().await.unwrap()).unwrap();
    assert!(!events.contains("4111111111111111"), "{events}");
    assert!(events.contains("<CARD> | <CARD> | 42 | 12.50"), "{events}");
    assert!(events.contains("\\n<WITHHELD> | \\\\x"), "{events}");
    assert!(events.contains(" | {<WITHHELD>,42}"), "{events}");
    assert!(events.contains("$1 = '<CARD>', $2 = '7'"), "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_password_never_reaches_the_client() {
    let (dir, pg, gw) = setup().await;
    let password = pg.password().to_string();
    // Someone stored the credential where queries can reach it.
    pg.psql(&format!(
        "CREATE TABLE creds (secret text primary key); INSERT INTO creds VALUES ('{password}');
         ALTER TABLE creds OWNER TO airlock_app;"
    ))
    .await
    .unwrap();
    let tap = Tap::start(gw.addr).await.unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let script = "
SELECT secret, 'visible-marker' FROM creds;
SELECT secret::bytea FROM creds;
SELECT encode(convert_to(secret, 'UTF8'), 'base64') FROM creds;
SELECT 'Basic ' || encode(convert_to('bot:' || secret, 'UTF8'), 'base64') FROM creds;
SELECT set_config('application_name', (SELECT secret FROM creds), false);
SELECT pg_notify('ch', (SELECT secret FROM creds));
LISTEN ch;
SELECT pg_notify('ch', 'x' || (SELECT secret FROM creds));
DO $$ BEGIN RAISE NOTICE 'n: %', (SELECT secret FROM creds); END $$;
COPY creds TO STDOUT;
COPY creds TO STDOUT (FORMAT binary);
COPY (SELECT 1::int4, secret, ROW(secret) FROM creds) TO STDOUT (FORMAT binary);
INSERT INTO creds SELECT secret FROM creds;
SELECT lo_from_bytea(0, convert_to(secret, 'UTF8')) AS loid FROM creds \\gset
\\lo_export :loid 'LO_FILE'
DO $$ BEGIN RAISE EXCEPTION 'e: %', (SELECT secret FROM creds); END $$;
";
    let lo_file = dir.path().join("lo.out");
    let script = script.replace("LO_FILE", &lo_file.display().to_string());
    let (_, out, err) = psql_stdin(
        &conninfo(tap.addr, "agent-1", ""),
        &token,
        &["-v", "ON_ERROR_STOP=0", "-f", "-"],
        Some(&script),
    )
    .await
    .unwrap();
    // Large objects are read with fast-path function calls.
    let exported = std::fs::read_to_string(&lo_file).unwrap();
    assert_eq!(exported, "<SECRET>", "{out}{err}");
    // Binary results and the extended protocol too.
    let client = connect(tap.addr, &token).await;
    let row = client
        .query_one("SELECT secret FROM creds", &[])
        .await
        .unwrap();
    assert_ne!(row.get::<_, String>(0), password);
    let e = client
        .execute("INSERT INTO creds VALUES ($1)", &[&row.get::<_, String>(0)])
        .await;
    assert!(e.is_ok(), "the masked value is a different key");
    drop(client);

    let seen = tap.received();
    assert!(
        contains(&seen, b"visible-marker"),
        "the tap sees the traffic"
    );
    assert!(
        !contains(&seen, password.as_bytes()),
        "the password reached the client: {out}{err}"
    );
    // Nor encoded the ways a query can return it: bytea's hex output, and
    // base64 alone and behind a prefix that shifts its alignment, where no
    // eight characters that carry only the password's bits may remain.
    use base64::Engine as _;
    let hex: String = password.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !contains(&seen, hex.as_bytes()),
        "the password reached the client in hex: {out}{err}"
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    for prefix in ["", "bot:"] {
        let encoded = b64.encode(format!("{prefix}{password}"));
        let pure =
            &encoded[(8 * prefix.len()).div_ceil(6)..8 * (prefix.len() + password.len()) / 6];
        for window in pure.as_bytes().windows(8) {
            assert!(
                !contains(&seen, window),
                "{} of the password's base64 reached the client: {out}{err}",
                String::from_utf8_lossy(window)
            );
        }
    }
    assert!(
        out.contains("<SECRET>") || err.contains("<SECRET>"),
        "{out}{err}"
    );
    // The statements did run on the server (they were not simply refused).
    assert!(pg.log().contains("SELECT set_config('application_name'"));
}

/// The gateway remembers a prepared statement's result columns so that each
/// Execute does not need a hidden Describe. A statement name parsed again
/// with other columns must not borrow the old ones: here the unnamed
/// statement first returns a column `other` (not masked), then a column
/// `ssn` (masked by its field rule, and not by any detector); and a named
/// statement executed many times is masked every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_columns_never_outlive_their_statement() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;

    // Parse (when given), then Bind and Execute of the unnamed portal.
    let run = |statement: &str, sql: Option<&str>| {
        let mut msgs: Vec<(u8, Vec<u8>)> =
            sql.map(|sql| parse(statement, sql)).into_iter().collect();
        msgs.extend(bind_execute(statement));
        msgs
    };

    for _ in 0..3 {
        let plain = exchange(&mut raw, run("", Some("SELECT 'plain-value-7' AS other"))).await;
        assert_eq!(plain, vec!["plain-value-7"]);
        let masked = exchange(&mut raw, run("", Some("SELECT 'plain-value-7' AS ssn"))).await;
        assert_eq!(masked.len(), 1);
        assert_ne!(masked[0], "plain-value-7", "the ssn column was not masked");
    }

    // A named statement, executed again and again without Describe.
    let first = exchange(
        &mut raw,
        run("named", Some("SELECT ssn, id FROM customers")),
    )
    .await;
    assert_eq!(first.len(), 1);
    assert!(!first[0].contains("6789"), "{first:?}");
    for _ in 0..5 {
        let again = exchange(&mut raw, run("named", None)).await;
        assert_eq!(again, first, "masked the same way on every execution");
    }
}

/// SQL can give a name the gateway knows from the protocol to something
/// else: a cursor declared under the name of a portal whose transaction
/// ended, a statement prepared again under a name Parse made. Their rows
/// are masked by their own columns, not by what the gateway learned of the
/// name before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_sql_gave_to_something_else_are_masked_by_their_own_columns() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let value = "plain-value-7";
    let plain = format!("SELECT '{value}' AS other");
    let secret = format!("SELECT '{value}' AS ssn");

    // Portal p, described by the client; the Sync ends its transaction.
    let describe_p = (b'D', b"Pp\0".to_vec());
    let first = exchange(
        &mut raw,
        vec![
            parse("", &plain),
            bind("p", ""),
            describe_p,
            execute("p", 0),
        ],
    )
    .await;
    assert_eq!(first, vec![value], "a column without a rule is not masked");
    // A cursor under the portal's name, run through the protocol.
    let (tags, codes) = raw
        .query(&format!("BEGIN; DECLARE p CURSOR FOR {secret}"))
        .await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
    let rows = exchange(&mut raw, vec![execute("p", 0)]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(rows[0], value, "the cursor's ssn column was not masked");
    assert_eq!(raw.query("COMMIT").await.1, Vec::<String>::new());

    // A statement parsed and executed (its columns remembered), then
    // prepared again with SQL under the same name.
    let first = exchange(
        &mut raw,
        vec![parse("s1", &plain), bind("", "s1"), execute("", 0)],
    )
    .await;
    assert_eq!(first, vec![value]);
    let (tags, codes) = raw
        .query(&format!("DEALLOCATE s1; PREPARE s1 AS {secret}"))
        .await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
    let again = exchange(&mut raw, vec![bind("", "s1"), execute("", 0)]).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0], value, "the re-prepared ssn column was not masked");

    // A Bind the server refuses (a held cursor has the portal's name): the
    // Describe after it is skipped, and the cursor's rows are described
    // before they run.
    let (tags, codes) = raw
        .query(&format!("DECLARE q CURSOR WITH HOLD FOR {secret}"))
        .await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
    let describe_q = (b'D', b"Pq\0".to_vec());
    let (tags, codes) = raw
        .exchange(vec![
            parse("s2", &plain),
            bind("q", "s2"),
            describe_q,
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(codes, ["42P03"], "{tags}");
    let rows = exchange(&mut raw, vec![execute("q", 0)]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(
        rows[0], value,
        "the held cursor's ssn column was not masked"
    );
    assert_eq!(raw.query("CLOSE q").await.1, Vec::<String>::new());

    // A portal whose columns the gateway knew, closed and declared again
    // as a cursor in its transaction: each of the cursor's executions is
    // masked by the cursor's columns, the second one too.
    let many = |what: &str| format!("SELECT '{value}' AS {what} FROM generate_series(1, 3)");
    let (plain3, secret3) = (many("other"), many("ssn"));
    let warm = exchange(
        &mut raw,
        vec![parse("s3", &plain3), bind("", "s3"), execute("", 0)],
    )
    .await;
    assert_eq!(warm.len(), 3);
    assert_eq!(raw.query("BEGIN").await.1, Vec::<String>::new());
    let known = exchange(&mut raw, vec![bind("r", "s3"), execute("r", 1)]).await;
    assert_eq!(known, vec![value]);
    let (tags, codes) = raw
        .query(&format!("CLOSE r; DECLARE r CURSOR FOR {secret3}"))
        .await;
    assert!(codes.is_empty(), "{tags} {codes:?}");
    let rows = exchange(&mut raw, vec![execute("r", 1), execute("r", 1)]).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r != value),
        "a cursor execution was not masked: {rows:?}"
    );
    assert_eq!(raw.query("COMMIT").await.1, Vec::<String>::new());
}

/// Once SQL may have given a statement's name to something else, the
/// statement's next execution is described afresh, and the executions
/// after it take those columns: one hidden Describe after the change, not
/// one at every execution for the rest of the session (watched on the wire
/// between the gateway and PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_sql_may_have_replaced_is_described_again_once() {
    let (dir, pg) = seeded().await;
    let tap = Tap::start(std::net::SocketAddr::from(([127, 0, 0, 1], pg.port())))
        .await
        .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let config = pg_config(&pg, &pw, "", MASKING).replace(
        &format!("port = {}", pg.port()),
        &format!("port = {}", tap.addr.port()),
    );
    assert!(config.contains(&format!("port = {}", tap.addr.port())));
    let gw = PgGateway::start(&config, &dir.path().join("data"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let sql = "SELECT ssn, id FROM customers /* described once */";
    let masked = |rows: &[String]| rows.len() == 1 && !rows[0].contains("6789");
    let first = exchange(
        &mut raw,
        [vec![parse("named", sql)], bind_execute("named")].concat(),
    )
    .await;
    assert!(masked(&first), "{first:?}");
    // Statements whose effect on names the gateway cannot follow: an
    // opaque one, and SQL preparing and deallocating another name.
    for change in [
        "DO $$ BEGIN PERFORM 1; END $$",
        "PREPARE other AS SELECT 1; DEALLOCATE other",
    ] {
        let (tags, codes) = raw.query(change).await;
        assert!(codes.is_empty(), "{tags} {codes:?}");
        for _ in 0..4 {
            let rows = exchange(&mut raw, bind_execute("named")).await;
            assert!(masked(&rows), "{rows:?}");
        }
    }
    let describes = |statement: &str| {
        let sent = tap.sent();
        let session = sent
            .iter()
            .find(|c| contains(c, statement.as_bytes()))
            .expect("the session's connection");
        frontend_messages(session)
            .iter()
            .filter(|(tag, _)| *tag == b'D')
            .count()
    };
    // One at the first execution, one after each change.
    assert_eq!(describes(sql), 3);
}

/// Parse takes any statement, and SQL `EXECUTE` runs what Parse made: a
/// `DEALLOCATE` and a `PREPARE` made that way and run by `EXECUTE` give a
/// name another statement as surely as SQL written out. The statement's
/// next execution is described afresh, so its `ssn` column (now second)
/// is masked by its own rule, not left plain by what the first column was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_of_a_parsed_deallocate_is_a_change_of_names() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (plain, secret) = ("first-value-1", "secret-value-2");
    let before = format!("SELECT '{secret}' AS ssn, '{plain}' AS other");
    let after = format!("PREPARE v AS SELECT '{plain}' AS other, '{secret}' AS ssn");
    let changers = || vec![parse("d", "DEALLOCATE v"), parse("p", &after)];
    // The two statements parsed before v, and after it (parsed, not run:
    // the gateway describes v afresh once, still the first statement, and
    // then knows its columns again).
    for changers_first in [true, false] {
        let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
        if changers_first {
            data_rows(&mut raw, changers()).await;
        }
        let first = data_rows(
            &mut raw,
            vec![parse("v", &before), bind("", "v"), execute("", 0)],
        )
        .await;
        assert!(!contains(&first[0], secret.as_bytes()) && contains(&first[0], plain.as_bytes()));
        if !changers_first {
            data_rows(&mut raw, changers()).await;
        }
        for _ in 0..2 {
            let again = data_rows(&mut raw, vec![bind("", "v"), execute("", 0)]).await;
            assert_eq!(again, first);
        }
        let (tags, codes) = raw.query("EXECUTE d; EXECUTE p").await;
        assert!(codes.is_empty(), "{tags} {codes:?}");
        let swapped = data_rows(&mut raw, vec![bind("", "v"), execute("", 0)]).await;
        assert_eq!(swapped.len(), 1);
        assert!(
            !contains(&swapped[0], secret.as_bytes()),
            "the ssn column went out plain: {}",
            String::from_utf8_lossy(&swapped[0])
        );
        assert!(contains(&swapped[0], plain.as_bytes()));
    }
}

/// The same change of names through statements whose names the client
/// tried to take for harmless ones: a Parse of a name the server holds
/// fails there, so running the name runs the DEALLOCATE and PREPARE still,
/// and v's columns are learned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reparse_does_not_hide_a_change_of_names() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (plain, secret) = ("first-value-5", "secret-value-6");
    let before = format!("SELECT '{secret}' AS ssn, '{plain}' AS other");
    let after = format!("PREPARE v AS SELECT '{plain}' AS other, '{secret}' AS ssn");
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    data_rows(
        &mut raw,
        vec![parse("d", "DEALLOCATE v"), parse("p", &after)],
    )
    .await;
    for name in ["d", "p"] {
        let (tags, codes) = raw
            .exchange(vec![parse(name, "SELECT 1"), (b'S', Vec::new())])
            .await;
        assert_eq!((tags.as_str(), codes), ("EZI", vec!["42P05".to_owned()]));
    }
    let first = data_rows(
        &mut raw,
        vec![parse("v", &before), bind("", "v"), execute("", 0)],
    )
    .await;
    assert!(!contains(&first[0], secret.as_bytes()) && contains(&first[0], plain.as_bytes()));
    let ran = data_rows(
        &mut raw,
        vec![bind("", "d"), execute("", 0), bind("", "p"), execute("", 0)],
    )
    .await;
    assert!(
        ran.is_empty(),
        "the DEALLOCATE and PREPARE ran, not SELECT 1"
    );
    let swapped = data_rows(&mut raw, vec![bind("", "v"), execute("", 0)]).await;
    assert_eq!(swapped.len(), 1);
    assert!(
        !contains(&swapped[0], secret.as_bytes()),
        "the ssn column went out plain: {}",
        String::from_utf8_lossy(&swapped[0])
    );
    assert!(contains(&swapped[0], plain.as_bytes()));
}

/// A statement that runs another by name (`EXECUTE v`) has the columns of
/// whatever v stands for when a portal of it is bound: after v is replaced,
/// the next execution is described afresh, so v's `ssn` column (now
/// second) is masked by its own rule, not left plain by the columns the
/// statement had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parsed_execute_is_masked_by_the_columns_of_what_it_runs() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (plain, secret) = ("first-value-3", "secret-value-4");
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let first = data_rows(
        &mut raw,
        vec![
            parse(
                "v",
                &format!("SELECT '{secret}' AS ssn, '{plain}' AS other"),
            ),
            parse("e", "EXECUTE v"),
            bind("", "e"),
            execute("", 0),
        ],
    )
    .await;
    assert!(!contains(&first[0], secret.as_bytes()) && contains(&first[0], plain.as_bytes()));
    let swapped = data_rows(
        &mut raw,
        vec![
            (b'C', b"Sv\0".to_vec()),
            parse(
                "v",
                &format!("SELECT '{plain}' AS other, '{secret}' AS ssn"),
            ),
            bind("", "e"),
            execute("", 0),
        ],
    )
    .await;
    assert_eq!(swapped.len(), 1);
    assert!(
        !contains(&swapped[0], secret.as_bytes()),
        "the ssn column went out plain: {}",
        String::from_utf8_lossy(&swapped[0])
    );
    assert!(contains(&swapped[0], plain.as_bytes()));

    // v stood for both statements: the switch leaves its candidates as
    // they were, but anything between the Bind (where the server describes
    // the portal) and the Execute is refused.
    let (tags, codes) = raw
        .exchange(vec![
            (b'C', b"Sv\0".to_vec()),
            parse(
                "v",
                &format!("SELECT '{secret}' AS ssn, '{plain}' AS other"),
            ),
            bind("", "e"),
            (b'C', b"Sv\0".to_vec()),
            parse(
                "v",
                &format!("SELECT '{plain}' AS other, '{secret}' AS ssn"),
            ),
            execute("", 0),
            (b'S', Vec::new()),
        ])
        .await;
    assert_eq!(
        (tags.as_str(), codes),
        ("31231EZI", vec!["0A000".to_string()])
    );
    let again = data_rows(&mut raw, vec![bind("", "e"), execute("", 0)]).await;
    assert_eq!(again, swapped);
}

/// A session's text stays UTF-8, so a rule for a column named outside
/// ASCII (`имя`) holds: another client_encoding is refused at startup
/// (SQL_ASCII, libpq's choice in the C locale, is taken as UTF-8), and SQL
/// that changes it ends the session before a row named in the new encoding
/// passes, in the same query too (the server reports the change only at
/// the query's end). Before, the name reached the gateway as WIN1251
/// bytes, matched no rule, and the row went out unmasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_stays_utf8_so_rules_for_names_outside_ascii_hold() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let value = "plain-value-7";
    let select = format!("SELECT '{value}' AS имя");
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let rows = exchange(
        &mut raw,
        vec![parse("", &select), bind("", ""), execute("", 0)],
    )
    .await;
    assert!(rows.len() == 1 && rows[0] != value, "{rows:?}");

    let (mut raw, seen) =
        Wire::login(gw.addr, &token, 0, &[("client_encoding", "SQL_ASCII")]).await;
    assert_eq!(seen.last().map(|(tag, _)| *tag), Some(b'Z'));
    let shown = exchange(
        &mut raw,
        vec![
            parse("", "SHOW client_encoding"),
            bind("", ""),
            execute("", 0),
        ],
    )
    .await;
    assert_eq!(shown, ["UTF8"]);

    for bad in [
        ("client_encoding", "WIN1251"),
        ("options", "-c client_encoding=UTF8"),
    ] {
        let (_, seen) = Wire::start(gw.addr, 0, &[bad]).await;
        let (tag, body) = seen.last().unwrap();
        let text = String::from_utf8_lossy(body);
        assert_eq!(*tag, b'E', "{bad:?}");
        assert!(
            text.contains("C22023") && text.contains("client_encoding"),
            "{text}"
        );
    }

    for change in [
        "SET client_encoding TO 'WIN1251'",
        "SELECT set_config('client_encoding', 'WIN1251', false)",
    ] {
        for query in [format!("{change}; {select}"), change.to_string()] {
            let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
            raw.send(b'Q', &[query.as_bytes(), &[0]].concat()).await;
            let mut answers = Vec::new();
            while let Some(answer) = raw.read().await {
                answers.push(answer);
            }
            assert!(
                !answers
                    .iter()
                    .any(|(_, body)| contains(body, value.as_bytes())),
                "{query}: the row passed unmasked"
            );
            let (tag, body) = answers.last().unwrap();
            let text = String::from_utf8_lossy(body);
            assert!(*tag == b'E' && text.contains("C0A000"), "{query}: {text}");
            assert!(text.contains("keep client_encoding UTF8"), "{text}");
        }
    }
}

/// Sends `msgs` and a Sync; every DataRow's body, up to ReadyForQuery.
async fn data_rows(raw: &mut Wire, msgs: Vec<(u8, Vec<u8>)>) -> Vec<Vec<u8>> {
    for (tag, body) in msgs {
        raw.send(tag, &body).await;
    }
    raw.send(b'S', &[]).await;
    let mut rows = Vec::new();
    loop {
        let (tag, body) = raw.read().await.expect("an answer");
        match tag {
            b'D' => rows.push(body),
            b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
            b'Z' => return rows,
            _ => {}
        }
    }
}

/// Sends `msgs` and a Sync; the first column of every row, up to ReadyForQuery.
async fn exchange(raw: &mut Wire, msgs: Vec<(u8, Vec<u8>)>) -> Vec<String> {
    for (tag, body) in msgs {
        raw.send(tag, &body).await;
    }
    raw.send(b'S', &[]).await;
    let mut values = Vec::new();
    loop {
        let (tag, body) = raw.read().await.expect("an answer");
        match tag {
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
            b'Z' => return values,
            _ => {}
        }
    }
}

/// A pipeline may bind the unnamed portal to one statement, execute it, bind
/// it to another and execute that, all before the first rows come back. Each
/// execution's rows are masked by its own statement's columns, also when the
/// gateway knows those columns from earlier executions (no Describe sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_rebinds_a_portal_masks_each_execution_by_its_own_columns() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;

    let value = "plain-value-7";
    let plain = format!("SELECT '{value}' AS other");
    let secret = format!("SELECT '{value}' AS ssn");
    // Each statement once on its own: the gateway learns their columns.
    let mut warm = vec![parse("plain", &plain), parse("secret", &secret)];
    warm.extend(bind_execute("plain"));
    assert_eq!(exchange(&mut raw, warm).await, vec![value]);
    let first = exchange(&mut raw, bind_execute("secret")).await;
    assert_eq!(first.len(), 1);
    assert_ne!(first[0], value, "the ssn column was not masked");
    let masked = first[0].clone();

    // Now both in one pipeline, in both orders.
    let mut secret_then_plain = bind_execute("secret");
    secret_then_plain.extend(bind_execute("plain"));
    assert_eq!(
        exchange(&mut raw, secret_then_plain).await,
        vec![masked.clone(), value.to_string()],
        "each execution masked by its own statement's columns"
    );
    let mut plain_then_secret = bind_execute("plain");
    plain_then_secret.extend(bind_execute("secret"));
    assert_eq!(
        exchange(&mut raw, plain_then_secret).await,
        vec![value.to_string(), masked],
        "each execution masked by its own statement's columns"
    );
}

/// A portal executed a few rows at a time (JDBC's fetch size, cursors in
/// asyncpg and tokio-postgres) is executed again after each
/// PortalSuspended. When its columns came from an earlier portal of the
/// same statement, every one of those executions is masked by them, not
/// only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_execution_of_a_suspended_portal_is_masked() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let value = "plain-value-7";
    let sql = format!("SELECT '{value}' AS ssn FROM generate_series(1, 3)");

    let mut warm = vec![parse("s", &sql)];
    warm.extend(bind_execute("s"));
    let all = exchange(&mut raw, warm).await;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|v| v != value), "{all:?}");

    let paged = vec![
        bind("c", "s"),
        execute("c", 1),
        execute("c", 1),
        execute("c", 0),
    ];
    assert_eq!(exchange(&mut raw, paged).await, all, "every page masked");
}

/// A portal keeps what its statement is made of after a Sync (a driver
/// paging a cursor in a transaction: Bind, Sync, Execute, Sync), a Bind of
/// a statement SQL prepared takes what SQL prepared, and an error that
/// quotes a ruled value it failed on (`pay_grade::int`) does not show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portals_across_syncs_sql_prepared_binds_and_data_errors_are_masked() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let run = |sql: &str| vec![parse("", sql), bind("", ""), execute("", 0)];
    exchange(&mut raw, run("BEGIN")).await;
    let none = exchange(
        &mut raw,
        vec![
            parse("s", "SELECT upper(pay_grade) FROM staff"),
            bind("c", "s"),
        ],
    )
    .await;
    assert!(none.is_empty());
    assert_eq!(
        exchange(&mut raw, vec![execute("c", 0)]).await,
        ["<REDACTED>"]
    );
    exchange(
        &mut raw,
        run("PREPARE q AS SELECT pay_grade || '' FROM staff"),
    )
    .await;
    assert_eq!(
        exchange(&mut raw, vec![bind("", "q"), execute("", 0)]).await,
        ["<REDACTED>"]
    );
    exchange(&mut raw, run("COMMIT")).await;

    let client = connect(gw.addr, &token).await;
    let e = client
        .query("SELECT pay_grade::int FROM staff", &[])
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22P02");
    assert!(!db.message().contains("E7"), "{}", db.message());
    assert!(db.message().contains("<REDACTED>"), "{}", db.message());
    // The control: a value from no table, and the same column's other
    // errors, still say what went wrong.
    let e = client.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "division by zero");
}

/// `COPY ... FROM STDIN` through the extended protocol (tokio-postgres:
/// Execute and Sync, the data, CopyDone and Sync) gets one ReadyForQuery
/// for its two Syncs. The gateway keeps its place in the conversation:
/// statements after it, simple and extended, are still masked by their own
/// columns, also after a COPY the client aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_after_a_copy_in_are_still_masked_by_their_columns() {
    use futures_util::SinkExt;
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;

    let check = async |client: &tokio_postgres::Client, rows: usize| {
        let simple = client
            .simple_query("SELECT ssn FROM customers ORDER BY id")
            .await
            .unwrap();
        let values: Vec<String> = simple
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(values.len(), rows);
        let extended = client
            .query("SELECT id, ssn FROM customers ORDER BY id", &[])
            .await
            .unwrap();
        let mut both = values;
        both.extend(extended.iter().map(|r| r.get::<_, String>(1)));
        for v in &both {
            assert!(!v.contains("6789") && !v.contains("4321"), "{both:?}");
        }
    };

    let sink = client
        .copy_in("COPY customers (id, email, ssn) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"2\tzed@example.com\t987-65-4321\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
    check(&client, 2).await;

    // Dropped before it finishes: the client sends CopyFail.
    {
        let sink = client
            .copy_in("COPY customers (id, email, ssn) FROM STDIN")
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(
            b"3\tyan@example.com\t555-44-4321\n",
        ))
        .await
        .unwrap();
    }
    check(&client, 2).await;
}

/// A CopyDone the server ignores (sent when no COPY is running) does not
/// count as the end of a COPY: the gateway keeps its place, and the query
/// after it is masked by its own columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_copy_done_does_not_move_the_gateway_off_its_place() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
    let mut msgs = vec![parse("", "COPY staff (id) FROM STDIN")];
    msgs.extend(bind_execute(""));
    msgs.extend([
        (b'c', Vec::new()),
        (b'S', Vec::new()),
        (b'c', Vec::new()),
        (b'S', Vec::new()),
        (b'Q', b"SELECT ssn FROM customers\0".to_vec()),
    ]);
    for (tag, body) in msgs {
        raw.send(tag, &body).await;
    }
    let (mut ready, mut rows, mut tags) = (0, Vec::new(), String::new());
    while ready < 3 {
        let (tag, body) = raw.read().await.expect("an answer");
        tags.push(char::from(tag));
        match tag {
            b'Z' => ready += 1,
            b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            b'E' => panic!("{tags}: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    assert_eq!(rows.len(), 1, "{tags}");
    assert!(
        !rows[0].contains("6789"),
        "the ssn column is masked: {rows:?}"
    );
}

/// A Sync sent during a COPY FROM STDIN that a simple query started is
/// ignored by the server, so the gateway can no longer tell which answer is
/// whose. A COPY OUT after it must not reach the client unmasked: the
/// session ends instead. Without the stray Sync, the same messages run and
/// the COPY OUT rows arrive masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_out_the_gateway_cannot_place_is_not_sent_unmasked() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    for stray_sync in [false, true] {
        let (mut raw, _) = Wire::login(gw.addr, &token, 0, &[]).await;
        let mut msgs = vec![(b'Q', b"COPY staff (id) FROM STDIN\0".to_vec())];
        if stray_sync {
            msgs.push((b'S', Vec::new()));
        }
        msgs.extend([
            (b'c', Vec::new()),
            (b'Q', b"COPY customers (email) TO STDOUT\0".to_vec()),
        ]);
        for (tag, body) in msgs {
            raw.send(tag, &body).await;
        }
        let (mut tags, mut received, mut ready) = (String::new(), Vec::new(), 0);
        while ready < 2 {
            let Some((tag, body)) = raw.read().await else {
                break;
            };
            tags.push(char::from(tag));
            received.extend_from_slice(&body);
            if tag == b'Z' {
                ready += 1;
            }
        }
        assert!(!contains(&received, b"alice@"), "{tags}");
        if stray_sync {
            assert!(
                tags.ends_with('E'),
                "the session ended with an error: {tags}"
            );
            assert!(
                contains(&received, b"CopyOutResponse that answers no request"),
                "{tags}: {}",
                String::from_utf8_lossy(&received)
            );
            assert!(!tags.contains('d'), "{tags}");
        } else {
            assert_eq!(tags, "GCZHdcCZ", "the COPY OUT ran");
            assert!(contains(&received, b"<EMAIL>"), "{tags}");
        }
    }
}

/// A column name can carry data (`AS "4111…"`, or a view whose column was
/// named after a value): names are masked like values, in both protocols
/// and in the record. Rules still apply by the name the server gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_names_are_masked_like_values() {
    let (_dir, _pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let sql =
        r#"SELECT 1 AS "4111111111111111", 2 AS plain, ssn AS "bob@example.org" FROM customers"#;
    let rows = client.query(sql, &[]).await.unwrap();
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert!(!names[0].contains("4111"), "{names:?}");
    assert_eq!(names[1], "plain");
    assert!(!names[2].contains("bob@"), "{names:?}");
    let ssn: String = rows[0].get(2);
    assert!(!ssn.contains("6789"), "the ssn rule still applies: {ssn}");
    let simple = client.simple_query(sql).await.unwrap();
    let Some(tokio_postgres::SimpleQueryMessage::Row(row)) = simple
        .iter()
        .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
    else {
        panic!("a row")
    };
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert!(
        !names[0].contains("4111") && !names[2].contains("bob@"),
        "{names:?}"
    );
    assert_eq!(names[1], "plain");
    let events = serde_json::to_string(&gw.events().await.unwrap()).unwrap();
    let results: Vec<&str> = events.matches("| plain |").collect();
    assert!(!results.is_empty(), "the header is recorded: {events}");
    // The statement's own text is masked too (that was always so); no
    // record holds the raw names.
    assert!(!events.contains("4111111111111111"), "{events}");
    assert!(!events.contains("bob@example.org"), "{events}");
}

/// A fast-path function call's arguments are recorded with it, masked: what
/// `\lo_import` writes through `lowrite` is in the record as COPY data is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_arguments_are_recorded_masked() {
    let (dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let file = dir.path().join("import.txt");
    std::fs::write(&file, "note for zed@example.com: large-object-marker").unwrap();
    let (ok, out, err) = psql_stdin(
        &conninfo(gw.addr, "agent-1", ""),
        &token,
        &["-v", "ON_ERROR_STOP=1", "-f", "-"],
        Some(&format!("\\lo_import '{}'\n", file.display())),
    )
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_largeobject_metadata")
            .await
            .unwrap(),
        "1",
        "the import reached the server"
    );
    let events = gw.events().await.unwrap();
    let calls: Vec<&str> = events
        .iter()
        .filter_map(|e| e["operation"]["text"].as_str())
        .filter(|t| t.starts_with("-- fast-path function call"))
        .collect();
    assert!(
        calls
            .iter()
            .any(|t| t.contains("large-object-marker") && t.contains("<EMAIL>")),
        "{calls:#?}"
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains("zed@example.com"), "{all}");
}

/// PostgreSQL re-plans a prepared statement after `SET search_path`: the
/// same text may then read another table, under another rule. The columns
/// the gateway learned for the statement are learned again after such a
/// statement, so the rule of the table now read applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_is_described_again_after_its_search_path_changes() {
    let (dir, pg) = seeded().await;
    pg.psql(
        "CREATE SCHEMA hr AUTHORIZATION airlock_app;
         CREATE TABLE hr.emp (salary text); INSERT INTO hr.emp VALUES ('hr-salary-91000');
         ALTER TABLE hr.emp OWNER TO airlock_app;
         CREATE TABLE public.emp (salary text); INSERT INTO public.emp VALUES ('public-value');
         ALTER TABLE public.emp OWNER TO airlock_app;",
    )
    .await
    .unwrap();
    let pw = pg.password_file(dir.path()).unwrap();
    let rules = "[[masking.fields]]\nname = \"hr.emp.salary\"\n";
    let gw = PgGateway::start(&pg_config(&pg, &pw, "", rules), &dir.path().join("data"))
        .await
        .unwrap();
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let statement = client.prepare("SELECT salary AS s FROM emp").await.unwrap();
    let value = async |client: &tokio_postgres::Client| -> String {
        client.query_one(&statement, &[]).await.unwrap().get(0)
    };
    // public.emp: no rule.
    assert_eq!(value(&client).await, "public-value");
    assert_eq!(value(&client).await, "public-value");
    // The same statement now reads hr.emp, in both protocols' SET.
    client
        .execute("SET search_path = hr, public", &[])
        .await
        .unwrap();
    assert_eq!(value(&client).await, "<REDACTED>");
    client
        .batch_execute("SET search_path = public")
        .await
        .unwrap();
    assert_eq!(value(&client).await, "public-value");
    client.batch_execute("SET search_path = hr").await.unwrap();
    assert_eq!(value(&client).await, "<REDACTED>");
    // A rollback undoes a SET of its transaction: back to hr.
    client
        .batch_execute("BEGIN; SET search_path = public")
        .await
        .unwrap();
    assert_eq!(value(&client).await, "public-value");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(value(&client).await, "<REDACTED>");
    // A COMMIT ends a SET LOCAL, in either protocol.
    client
        .batch_execute("BEGIN; SET LOCAL search_path = public")
        .await
        .unwrap();
    assert_eq!(value(&client).await, "public-value");
    client.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(value(&client).await, "<REDACTED>");
}

/// Errors other than data exceptions can show a value the statement read,
/// taken for a name (`relation "…" does not exist` from a `regclass` cast,
/// `unrecognized configuration parameter "…"`, `operator does not exist:
/// …`, a context's `invalid type name "…"`), and a data exception's
/// context can hold it without quotes (`JSON data, line 1: …`): in both
/// protocols such a value is masked, while an error that comes before the
/// statement read anything (a misspelt name) is still shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_do_not_quote_a_ruled_value_but_still_name_what_the_client_wrote() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let fields = |e: &tokio_postgres::Error| {
        let db = e.as_db_error().unwrap();
        (
            db.code().code().to_owned(),
            format!(
                "{} | {} | {}",
                db.message(),
                db.detail().unwrap_or(""),
                db.where_().unwrap_or("")
            ),
        )
    };
    // What each shows of the value: its first characters (a role name is
    // folded to lower case, JSON shows the token it failed on), or the
    // code of its first letter (`E` is 69).
    for (sql, code, shown) in [
        (
            "SELECT quote_ident(pay_grade)::regclass FROM staff WHERE id = 7",
            "42P01",
            "e7",
        ),
        (
            "SELECT current_setting(pay_grade) FROM staff WHERE id = 7",
            "42704",
            "e7",
        ),
        (
            "SELECT 1 FROM staff WHERE pay_grade::regrole IS NULL",
            "42704",
            "e7",
        ),
        (
            "SELECT pay_grade::json FROM staff WHERE id = 7",
            "22P02",
            "e7",
        ),
        // Unquoted: `operator does not exist: …`.
        (
            "SELECT pay_grade::regoper FROM staff WHERE id = 7",
            "42883",
            "e7",
        ),
        // In the context: `invalid type name "…"`.
        (
            "SELECT pay_grade::regtype FROM staff WHERE id = 7",
            "42601",
            "e7",
        ),
        // A number without quotes: `index 69 out of valid range, 0..0`.
        (
            "SELECT get_byte('\\x00'::bytea, ascii(pay_grade)) FROM staff WHERE id = 7",
            "2202E",
            "69",
        ),
    ] {
        // Directly, the server shows the value.
        let direct = pg.psql(sql).await.unwrap_err().to_string().to_lowercase();
        assert!(direct.contains(shown), "{sql}: {direct}");
        let e = client.simple_query(sql).await.unwrap_err();
        let (c, text) = fields(&e);
        assert_eq!(c, code, "{sql}: {text}");
        assert!(!text.to_lowercase().contains(shown), "{sql}: {text}");
        assert!(text.contains("<REDACTED>"), "{sql}: {text}");
        let e = client.query(sql, &[]).await.unwrap_err();
        let (_, text) = fields(&e);
        assert!(
            !text.to_lowercase().contains(shown),
            "{sql} (extended): {text}"
        );
    }
    // A FETCH reads its rows before it describes them.
    client.simple_query("BEGIN").await.unwrap();
    let e = client
        .simple_query(
            "DECLARE c CURSOR FOR SELECT pay_grade::int FROM staff WHERE id = 7; FETCH ALL FROM c",
        )
        .await
        .unwrap_err();
    let (_, text) = fields(&e);
    assert!(!text.to_lowercase().contains("e7"), "FETCH: {text}");
    client.simple_query("ROLLBACK").await.unwrap();
    // An error before the statement read anything is about what the
    // client wrote: the same errors name it.
    for (sql, name) in [
        ("SELECT * FROM custmers", "custmers"),
        ("SELECT 'custmers'::regclass", "custmers"),
        ("SELECT nme FROM staff", "nme"),
    ] {
        let simple = client.simple_query(sql).await.unwrap_err();
        let extended = client.query(sql, &[]).await.unwrap_err();
        for e in [simple, extended] {
            let (_, text) = fields(&e);
            assert!(!text.contains("<REDACTED>"), "{sql}: {text}");
            assert!(text.contains(name), "{sql}: {text}");
        }
    }
}

/// A write that puts a ruled column's value into another column returns
/// it under that column's name (`UPDATE staff SET team = pay_grade
/// RETURNING team` reports `staff.team`): what it returns is masked by the
/// rules of what it wrote. A write of plain values returns them as they
/// are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_does_not_return_a_ruled_value_under_another_column() {
    let (_dir, pg, gw) = setup().await;
    let token = gw.token("agent-1", &["agents"]).unwrap();
    let client = connect(gw.addr, &token).await;
    let copied = [
        "UPDATE staff SET team = pay_grade WHERE id = 7 RETURNING team",
        "UPDATE staff SET team = upper(pay_grade) WHERE id = 7 RETURNING team || ''",
        "INSERT INTO staff (id, team) SELECT 99, pay_grade FROM staff WHERE id = 7 RETURNING team",
        "INSERT INTO staff (id, team) VALUES (7, 'x') ON CONFLICT (id) DO UPDATE SET team = staff.pay_grade RETURNING team",
        // Inside a WITH, or a data-modifying CTE whose column the server
        // still reports as the table's.
        "WITH x AS (SELECT 1) UPDATE staff SET team = pay_grade WHERE id = 7 RETURNING team",
        "WITH w AS (UPDATE staff SET team = pay_grade WHERE id = 7 RETURNING team) SELECT team FROM w",
    ];
    pg.psql("CREATE UNIQUE INDEX ON staff (id)").await.unwrap();
    for sql in copied {
        // Directly, the server returns the value.
        let direct = pg
            .psql(&format!("BEGIN; {sql}; ROLLBACK"))
            .await
            .unwrap()
            .to_lowercase();
        assert!(direct.contains("e7-band-3"), "{sql}: {direct}");
        client.simple_query("BEGIN").await.unwrap();
        assert_eq!(
            first_values(client.simple_query(sql).await.unwrap()),
            ["<REDACTED>"],
            "{sql}"
        );
        client.simple_query("ROLLBACK").await.unwrap();
        client.simple_query("BEGIN").await.unwrap();
        let row = client.query_one(sql, &[]).await.unwrap();
        let value = String::from_utf8_lossy(&row.get::<_, Raw>(0).0).into_owned();
        assert_eq!(value, "<REDACTED>", "{sql} (extended)");
        client.simple_query("ROLLBACK").await.unwrap();
    }
    // A prepared write, run by name.
    client.simple_query("BEGIN").await.unwrap();
    client
        .simple_query("PREPARE w AS UPDATE staff SET team = pay_grade WHERE id = 7 RETURNING team")
        .await
        .unwrap();
    assert_eq!(
        first_values(client.simple_query("EXECUTE w").await.unwrap()),
        ["<REDACTED>"]
    );
    client.simple_query("ROLLBACK").await.unwrap();
    // The controls: a write of plain values returns them, also next to a
    // ruled column written from itself; a column nothing was written to is
    // shown.
    client.simple_query("BEGIN").await.unwrap();
    let rows = rows_of(
        client
            .simple_query(
                "UPDATE staff SET team = 'ops', pay_grade = upper(pay_grade) WHERE id = 7 RETURNING team, id",
            )
            .await
            .unwrap(),
    );
    assert_eq!(rows[0].get(0), Some("ops"));
    assert_eq!(rows[0].get(1), Some("7"));
    client.simple_query("ROLLBACK").await.unwrap();
}
