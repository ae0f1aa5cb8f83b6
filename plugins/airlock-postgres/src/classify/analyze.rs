//! From one parsed statement to an [`SqlOperation`].
//!
//! The statement's own shape decides its kind and its write targets; a walk
//! with sqlparser's visitor then finds everything nested anywhere inside it:
//! tables read (minus CTE names in scope), data-modifying statements in CTEs,
//! `SELECT ... INTO`, and calls of functions with side effects.

use std::ops::ControlFlow;

use airlock_core::{Access, SqlKind, SqlOperation, TableAccess};
use sqlparser::ast::{
    AccessExpr, CopyOption, CopySource, CopyTarget, DiscardObject, Expr, FromTable, FunctionArg,
    FunctionArgExpr, GrantObjects, Ident, MergeClauseKind, ObjectName, ObjectNamePart, ObjectType,
    Query, Select, Set, SetExpr, Statement, TableFactor, TableObject, Visit, Visitor,
};

use super::Classified;
use super::functions::{FunctionEffect, function_effect};

/// Whether an UPDATE's or DELETE's WHERE clause (a MERGE's ON condition)
/// can tell the rows of `target`, the table it writes, apart. One
/// that names no column at all (`WHERE true`, `WHERE 1 = 1`, `WHERE $1`,
/// `WHERE random() < 2`) has the same value for every row, so it bounds
/// nothing and counts as no WHERE clause: it is how a guardrail against
/// unbounded writes is most easily walked around. So does one that names
/// only columns of *other* tables (`UPDATE orders SET ... FROM customers
/// WHERE customers.email = '...'`, the join condition forgotten): it holds
/// for every row of the target or for none. A column written without a
/// table may be the target's and counts. A condition on a column that
/// happens to hold for every row (`WHERE id > 0`) is not recognised; the
/// guardrail stops accidents and the obvious detour, not a determined
/// client (docs/policy.md).
fn limits_rows(selection: Option<&Expr>, target: &TableFactor) -> bool {
    let target = target_name(target);
    selection.is_some_and(|condition| {
        sqlparser::ast::visit_expressions(condition, |e| match e {
            // sqlparser reads some of SQL's value keywords as names.
            Expr::Identifier(id) if id.quote_style.is_none() && is_value_keyword(&id.value) => {
                ControlFlow::Continue(())
            }
            Expr::Identifier(_) => ControlFlow::Break(()),
            // `table.column` (or `schema.table.column`): the target's only
            // if the table is the target's name as the statement gives it.
            // Compared as PostgreSQL compares names: `"ORDERS".id` may be a
            // column of another table aliased "ORDERS", not of `orders`.
            Expr::CompoundIdentifier(parts) => match (&target, parts.len().checked_sub(2)) {
                (Some(target), Some(table)) if ident_name(&parts[table]) != *target => {
                    ControlFlow::Continue(())
                }
                _ => ControlFlow::Break(()),
            },
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    })
}

/// The name by which a condition refers to the table a statement writes:
/// its alias if it has one (PostgreSQL then refuses the table's own name),
/// else the last part of its name. `None` when that is not a plain table;
/// every qualified column then counts as the target's.
fn target_name(factor: &TableFactor) -> Option<String> {
    let TableFactor::Table {
        name, alias, args, ..
    } = factor
    else {
        return None;
    };
    match (only_table(factor), alias, args) {
        // An alias; or `ONLY t`, which sqlparser reads as table `only`
        // aliased `t`: the table.
        (_, Some(alias), _) => Some(ident_name(&alias.name)),
        // `ONLY (t)` / `ONLY (s.t)`: the last part of the name in parentheses.
        (Some(_), None, Some(args)) => match args.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(t)))] => {
                Some(ident_name(t))
            }
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)))] => {
                parts.last().map(ident_name)
            }
            _ => None,
        },
        (Some(_), None, None) => None,
        (None, None, _) => Some(object_ident_name(name)),
    }
}

/// SQL's keywords for values of the session rather than of a row
/// (`WHERE current_role IS NOT NULL` holds for every row).
fn is_value_keyword(name: &str) -> bool {
    [
        "current_role",
        "current_schema",
        "current_catalog",
        "current_user",
        "session_user",
        "system_user",
        "user",
        "current_date",
        "current_time",
        "current_timestamp",
        "localtime",
        "localtimestamp",
    ]
    .iter()
    .any(|k| name.eq_ignore_ascii_case(k))
}

/// Classifies one parsed statement whose source text is `text`.
/// `prepare_text` is the text of a `PREPARE`'s inner statement, when known.
pub(super) fn classify_statement(
    stmt: &Statement,
    text: &str,
    prepare_text: Option<String>,
) -> Classified {
    match stmt {
        // A prepared statement's name is a key the server compares in its
        // own encoding: a non-ASCII one may be another name there than the
        // gateway's (the connector refuses such names in the protocol).
        Statement::Prepare { name, .. } | Statement::Deallocate { name, .. }
            if !name.value.is_ascii() =>
        {
            Classified::opaque(text)
        }
        Statement::Execute {
            name: Some(name), ..
        } if !name.to_string().is_ascii() => Classified::opaque(text),
        Statement::Prepare {
            name, statement, ..
        } => {
            let inner_text = prepare_text.unwrap_or_else(|| statement.to_string());
            let inner = classify_statement(statement, &inner_text, None);
            let op = SqlOperation {
                text: text.to_owned(),
                kind: SqlKind::Prepare,
                object: None,
                tables: inner.operation.tables.clone(),
                has_where: inner.operation.has_where,
            };
            Classified {
                prepare: Some((ident_name(name), inner.operation)),
                ..Classified::plain(op)
            }
        }
        Statement::Execute {
            name: Some(name),
            immediate: false,
            parameters,
            ..
        } => {
            // The connector judges EXECUTE as the prepared statement, which
            // would hide a side effect in the parameters: EXECUTE p(nextval('s')).
            let mut fx = Effects::new(stmt);
            let _ = parameters.visit(&mut fx);
            if fx.calls || fx.opaque_calls || fx.misparsed {
                return Classified::opaque(text);
            }
            Classified {
                execute: Some(object_ident_name(name)),
                ..Classified::plain(simple(text, SqlKind::Execute))
            }
        }
        Statement::Deallocate { name, .. } => {
            // `DEALLOCATE ALL` parses as a statement named ALL; a quoted "ALL" is a name.
            let target = if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                None
            } else {
                Some(ident_name(name))
            };
            Classified {
                deallocate: Some(target),
                ..Classified::plain(simple(text, SqlKind::Deallocate))
            }
        }
        Statement::Fetch { name, .. } => Classified {
            fetch: Some(ident_name(name)),
            ..Classified::plain(simple(text, SqlKind::Select))
        },
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => Classified {
            deallocate: Some(None),
            ..Classified::plain(simple(text, SqlKind::Set))
        },
        Statement::Explain {
            statement,
            analyze,
            options,
            ..
        } => {
            let mut inner = classify_statement(statement, text, None);
            let executes = *analyze
                || options
                    .iter()
                    .flatten()
                    .any(|o| is_analyze(&o.name.value) && !is_false(&o.arg));
            // EXPLAIN ANALYZE runs the statement: anything but a plain read is
            // judged as what it executes (including an EXECUTE to substitute).
            // An opaque statement stays opaque even unexecuted: its EXPLAIN
            // may have been misread too.
            if inner.operation.kind == SqlKind::Opaque
                || (executes && inner.operation.kind != SqlKind::Select)
            {
                inner.operation.text = text.to_owned();
                return inner;
            }
            let mut tables: Vec<TableAccess> = inner
                .operation
                .tables
                .into_iter()
                .map(|t| TableAccess {
                    name: t.name,
                    access: Access::Read,
                })
                .collect();
            dedup_tables(&mut tables);
            Classified::plain(SqlOperation {
                tables,
                ..simple(text, SqlKind::Explain)
            })
        }
        _ => Classified::plain(analyze(stmt, text)),
    }
}

/// An operation of `kind` with nothing else known.
fn simple(text: &str, kind: SqlKind) -> SqlOperation {
    SqlOperation {
        text: text.to_owned(),
        kind,
        object: None,
        tables: Vec::new(),
        has_where: None,
    }
}

/// Whether an EXPLAIN option is ANALYZE (PostgreSQL also takes the British spelling).
fn is_analyze(name: &str) -> bool {
    name.eq_ignore_ascii_case("analyze") || name.eq_ignore_ascii_case("analyse")
}

/// Whether a utility option's argument turns it off (`ANALYZE false`, `ANALYZE off`, `ANALYZE 0`).
fn is_false(arg: &Option<Expr>) -> bool {
    let Some(arg) = arg else { return false };
    let word = arg.to_string().trim_matches('\'').to_ascii_lowercase();
    matches!(word.as_str(), "false" | "off" | "0" | "no")
}

/// The shape of the statement itself, before anything nested is looked at.
struct Base {
    kind: SqlKind,
    object: Option<&'static str>,
    has_where: Option<bool>,
}

impl Base {
    fn new(kind: SqlKind) -> Self {
        Base {
            kind,
            object: None,
            has_where: None,
        }
    }

    fn ddl(kind: SqlKind, object: &'static str) -> Self {
        Base {
            kind,
            object: Some(object),
            has_where: None,
        }
    }
}

fn analyze(stmt: &Statement, text: &str) -> SqlOperation {
    let mut fx = Effects::new(stmt);
    let base = base(stmt, &mut fx);
    let _ = stmt.visit(&mut fx);
    fx.finish(base, text)
}

/// Decides the kind of `stmt` from its own shape and registers its write targets.
fn base(stmt: &Statement, fx: &mut Effects) -> Base {
    use SqlKind as K;
    match stmt {
        Statement::Query(_) => Base::new(K::Select),
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => {
            let (kind, has_where) = fx.dml_targets(stmt);
            Base {
                kind,
                object: None,
                has_where,
            }
        }
        Statement::Truncate(t) => {
            for target in &t.table_names {
                fx.write(&target.name);
            }
            Base::new(K::Truncate)
        }
        Statement::Copy {
            source,
            to,
            target,
            options,
            ..
        } => {
            if let CopySource::Table { table_name, .. } = source {
                if *to {
                    fx.read(table_name);
                } else {
                    fx.write(table_name);
                }
            }
            // Data in another encoding cannot be masked as UTF-8 (a held
            // credential with a non-ASCII character, say, would not be
            // found in it).
            let foreign = options
                .iter()
                .any(|o| matches!(o, CopyOption::Encoding(name) if !crate::startup::is_utf8(name)));
            match target {
                // Server-side files and programs: outside the table model, and a
                // program runs a shell command on the database host.
                CopyTarget::File { .. } | CopyTarget::Program { .. } => Base::new(K::Opaque),
                _ if foreign => Base::new(K::Opaque),
                _ if *to => Base::new(K::CopyOut),
                _ => Base::new(K::CopyIn),
            }
        }
        Statement::CreateTable(ct) => {
            fx.write(&ct.name);
            Base::ddl(K::Create, "table")
        }
        Statement::CreateView(v) => {
            fx.write(&v.name);
            Base::ddl(
                K::Create,
                if v.materialized {
                    "materialized view"
                } else {
                    "view"
                },
            )
        }
        Statement::CreateIndex(ci) => {
            fx.write(&ci.table_name);
            Base::ddl(K::Create, "index")
        }
        Statement::CreateTrigger(ct) => {
            fx.write(&ct.table_name);
            Base::ddl(K::Create, "trigger")
        }
        Statement::CreatePolicy(p) => {
            fx.write(&p.table_name);
            Base::ddl(K::Create, "policy")
        }
        Statement::CreateRole(_) | Statement::CreateUser(_) => Base::ddl(K::Create, "role"),
        Statement::CreateSchema { .. } => Base::ddl(K::Create, "schema"),
        Statement::CreateDatabase { .. } => Base::ddl(K::Create, "database"),
        Statement::CreateFunction(_) => Base::ddl(K::Create, "function"),
        Statement::CreateProcedure { .. } => Base::ddl(K::Create, "procedure"),
        Statement::CreateSequence { .. } => Base::ddl(K::Create, "sequence"),
        Statement::CreateType { .. } => Base::ddl(K::Create, "type"),
        Statement::CreateDomain(_) => Base::ddl(K::Create, "domain"),
        Statement::CreateExtension(_) => Base::ddl(K::Create, "extension"),
        Statement::CreateCollation(_) => Base::ddl(K::Create, "collation"),
        Statement::CreateServer(_) => Base::ddl(K::Create, "server"),
        Statement::CreateOperator(_) => Base::ddl(K::Create, "operator"),
        Statement::CreateOperatorFamily(_) => Base::ddl(K::Create, "operator family"),
        Statement::CreateOperatorClass(_) => Base::ddl(K::Create, "operator class"),
        Statement::CreateTextSearch(_) => Base::ddl(K::Create, "text search"),
        Statement::AlterTable(at) => {
            fx.write(&at.name);
            Base::ddl(K::Alter, "table")
        }
        Statement::AlterView { name, .. } => {
            fx.write(name);
            Base::ddl(K::Alter, "view")
        }
        Statement::AlterPolicy(p) => {
            fx.write(&p.table_name);
            Base::ddl(K::Alter, "policy")
        }
        Statement::AlterIndex { .. } => Base::ddl(K::Alter, "index"),
        Statement::AlterSchema(_) => Base::ddl(K::Alter, "schema"),
        Statement::AlterFunction(_) => Base::ddl(K::Alter, "function"),
        Statement::AlterType(_) => Base::ddl(K::Alter, "type"),
        Statement::AlterCollation(_) => Base::ddl(K::Alter, "collation"),
        Statement::AlterOperator(_) => Base::ddl(K::Alter, "operator"),
        Statement::AlterOperatorFamily(_) => Base::ddl(K::Alter, "operator family"),
        Statement::AlterOperatorClass(_) => Base::ddl(K::Alter, "operator class"),
        Statement::AlterTextSearch(_) => Base::ddl(K::Alter, "text search"),
        Statement::AlterRole { .. } | Statement::AlterUser(_) => Base::ddl(K::Alter, "role"),
        Statement::Comment {
            object_type,
            object_name,
            ..
        } => {
            let object = match object_type.to_string().to_ascii_lowercase().as_str() {
                "table" => {
                    fx.write(object_name);
                    "table"
                }
                "column" => "column",
                "view" => "view",
                "materialized view" => "materialized view",
                "index" => "index",
                "schema" => "schema",
                "database" => "database",
                "function" => "function",
                "procedure" => "procedure",
                "role" | "user" => "role",
                "sequence" => "sequence",
                "type" => "type",
                "domain" => "domain",
                "extension" => "extension",
                "collation" => "collation",
                _ => "other",
            };
            Base::ddl(K::Alter, object)
        }
        Statement::Drop {
            object_type,
            names,
            table,
            ..
        } => {
            let object = match object_type {
                ObjectType::Table => "table",
                ObjectType::View => "view",
                ObjectType::MaterializedView => "materialized view",
                ObjectType::Index => "index",
                ObjectType::Schema => "schema",
                ObjectType::Database => "database",
                ObjectType::Role | ObjectType::User => "role",
                ObjectType::Sequence => "sequence",
                ObjectType::Type => "type",
                ObjectType::Collation => "collation",
                _ => "other",
            };
            if matches!(
                object_type,
                ObjectType::Table | ObjectType::View | ObjectType::MaterializedView
            ) {
                for name in names {
                    fx.write(name);
                }
            }
            if let Some(table) = table {
                fx.write(table);
            }
            Base::ddl(K::Drop, object)
        }
        Statement::DropFunction(_) => Base::ddl(K::Drop, "function"),
        Statement::DropProcedure { .. } => Base::ddl(K::Drop, "procedure"),
        Statement::DropDomain(_) => Base::ddl(K::Drop, "domain"),
        Statement::DropExtension(_) => Base::ddl(K::Drop, "extension"),
        Statement::DropOperator(_) => Base::ddl(K::Drop, "operator"),
        Statement::DropOperatorFamily(_) => Base::ddl(K::Drop, "operator family"),
        Statement::DropOperatorClass(_) => Base::ddl(K::Drop, "operator class"),
        Statement::DropTrigger(t) => {
            if let Some(table) = &t.table_name {
                fx.write(table);
            }
            Base::ddl(K::Drop, "trigger")
        }
        Statement::DropPolicy(p) => {
            fx.write(&p.table_name);
            Base::ddl(K::Drop, "policy")
        }
        Statement::Grant(g) => {
            grant_targets(g.objects.as_ref(), fx);
            Base::new(K::Grant)
        }
        Statement::Revoke(r) => {
            grant_targets(r.objects.as_ref(), fx);
            Base::new(K::Revoke)
        }
        Statement::Call(f) => {
            fx.call(&f.name);
            Base::new(K::Call)
        }
        Statement::Set(Set::SetTransaction { .. }) => Base::new(K::Transaction),
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => Base::new(K::Set),
        Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Base::new(K::Show),
        // A transaction block with statements inside is not PostgreSQL; judge it unknown.
        Statement::StartTransaction { statements, .. } if statements.is_empty() => {
            Base::new(K::Transaction)
        }
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Base::new(K::Transaction),
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => Base::new(K::Listen),
        Statement::NOTIFY { .. } => Base::new(K::Notify),
        Statement::Vacuum(v) => {
            if let Some(table) = &v.table_name {
                fx.write(table);
            }
            Base::new(K::Vacuum)
        }
        // ANALYZE reads the table (its name is visited as a relation) and updates statistics.
        Statement::Analyze(_) => Base::new(K::Vacuum),
        Statement::Lock(l) => {
            for target in &l.tables {
                fx.write(&target.name);
            }
            Base::new(K::Lock)
        }
        // DECLARE c CURSOR FOR <query>: FETCH later returns the query's rows.
        Statement::Declare { stmts } if stmts.iter().all(|d| d.for_query.is_some()) => {
            Base::new(K::Select)
        }
        Statement::Close { .. } => Base::new(K::Other),
        Statement::ExplainTable { .. } => Base::new(K::Explain),
        // LOAD loads a shared library into the server; everything else here is
        // either another dialect's statement or procedural code.
        _ => Base::new(K::Opaque),
    }
}

/// Registers the tables a GRANT/REVOKE changes the privileges of.
fn grant_targets(objects: Option<&GrantObjects>, fx: &mut Effects) {
    if let Some(GrantObjects::Tables(names) | GrantObjects::Views(names)) = objects {
        for name in names {
            fx.write(name);
        }
    }
}

/// How strongly a data-modifying statement changes data, to pick the one a
/// statement with several (a DELETE in a CTE of an INSERT) is judged as.
fn dml_rank(kind: SqlKind) -> u8 {
    match kind {
        SqlKind::Delete => 4,
        SqlKind::Update => 3,
        SqlKind::Merge => 2,
        SqlKind::Insert => 1,
        _ => 0,
    }
}

/// Facts gathered while walking a statement.
struct Effects {
    /// The statement being classified; nested statements are the interesting ones.
    root: *const Statement,
    reads: Vec<String>,
    writes: Vec<String>,
    /// Names that the walk will visit as relations but that are not reads:
    /// write targets, table functions. Compared by address.
    not_reads: Vec<*const ObjectName>,
    /// Data-modifying statements nested in queries, with their `has_where`.
    nested_dml: Vec<(SqlKind, Option<bool>)>,
    select_into: bool,
    calls: bool,
    opaque_calls: bool,
    /// sqlparser read the statement differently from PostgreSQL.
    misparsed: bool,
    ctes: Vec<CteScope>,
}

/// The CTE names a `WITH` makes visible.
struct CteScope {
    /// The query whose `WITH` this is.
    query: *const Query,
    names: Vec<String>,
    /// The CTEs' own queries, in order.
    bodies: Vec<*const Query>,
    /// How many of `names` are visible: a non-recursive CTE sees only the ones before it.
    visible: usize,
}

impl Effects {
    fn new(root: &Statement) -> Self {
        Effects {
            root,
            reads: Vec::new(),
            writes: Vec::new(),
            not_reads: Vec::new(),
            nested_dml: Vec::new(),
            select_into: false,
            calls: false,
            opaque_calls: false,
            misparsed: false,
            ctes: Vec::new(),
        }
    }

    fn write(&mut self, name: &ObjectName) {
        self.check_name(name);
        self.writes.push(table_name(name));
        self.not_reads.push(name);
    }

    fn read(&mut self, name: &ObjectName) {
        self.check_name(name);
        self.reads.push(table_name(name));
    }

    /// PostgreSQL never accepts a reserved keyword as an unquoted table name;
    /// when sqlparser did, it read the statement differently from the server
    /// (it takes `UPDATE ONLY t` for table `ONLY` aliased `t`), so nothing it
    /// says about the statement can be trusted.
    fn check_name(&mut self, name: &ObjectName) {
        if let Some(ObjectNamePart::Identifier(first)) = name.0.first()
            && first.quote_style.is_none()
            && is_reserved(&first.value)
        {
            self.misparsed = true;
        }
    }

    fn call(&mut self, name: &ObjectName) {
        let last = name
            .0
            .last()
            .and_then(ObjectNamePart::as_ident)
            .map(|i| i.value.to_ascii_lowercase())
            .unwrap_or_default();
        match function_effect(&last) {
            FunctionEffect::None => {}
            FunctionEffect::Call => self.calls = true,
            FunctionEffect::Opaque => self.opaque_calls = true,
        }
    }

    /// Registers the write targets of an INSERT/UPDATE/DELETE/MERGE and returns
    /// its kind and, for UPDATE/DELETE, whether it has a WHERE clause.
    fn dml_targets(&mut self, stmt: &Statement) -> (SqlKind, Option<bool>) {
        match stmt {
            Statement::Insert(i) => {
                match &i.table {
                    TableObject::TableName(name) => self.write(name),
                    TableObject::TableFunction(f) => self.write(&f.name),
                    TableObject::TableQuery(_) => {}
                }
                (SqlKind::Insert, None)
            }
            Statement::Update(u) => {
                self.write_factor(&u.table.relation);
                (
                    SqlKind::Update,
                    Some(limits_rows(u.selection.as_ref(), &u.table.relation)),
                )
            }
            Statement::Delete(d) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                for table in from {
                    self.write_factor(&table.relation);
                }
                for name in &d.tables {
                    self.write(name);
                }
                let bounded = match from.as_slice() {
                    [target] => limits_rows(d.selection.as_ref(), &target.relation),
                    // Not PostgreSQL's syntax (one table, the rest in USING).
                    _ => d.selection.is_some(),
                };
                (SqlKind::Delete, Some(bounded))
            }
            Statement::Merge(m) => {
                self.write_factor(&m.table);
                // Its ON condition picks the target rows it may change,
                // except for `WHEN NOT MATCHED BY SOURCE` (PostgreSQL 17),
                // which changes the target rows it does *not* pick: only
                // that clause's own condition bounds them.
                let by_source = m
                    .clauses
                    .iter()
                    .filter(|c| c.clause_kind == MergeClauseKind::NotMatchedBySource)
                    .all(|c| limits_rows(c.predicate.as_ref(), &m.table));
                (
                    SqlKind::Merge,
                    Some(limits_rows(Some(&m.on), &m.table) && by_source),
                )
            }
            _ => (SqlKind::Other, None),
        }
    }

    fn write_factor(&mut self, factor: &TableFactor) {
        if let Some((name, table)) = only_table(factor) {
            self.writes.push(table);
            self.not_reads.push(name);
        } else if let TableFactor::Table { name, .. } = factor {
            self.write(name);
        }
    }

    /// Reads of `TABLE t` in a query body (`SELECT ... UNION TABLE t`), which
    /// sqlparser keeps as plain strings rather than relations. They are never
    /// taken for CTE names, as the strings lost their quoting: a CTE read this
    /// way shows up as a table read, which errs on the safe side.
    fn table_commands(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                let name = [&table.schema_name, &table.table_name]
                    .into_iter()
                    .flatten()
                    .map(|part| part.trim_matches('"').to_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                if !name.is_empty() {
                    self.reads.push(name);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.table_commands(left);
                self.table_commands(right);
            }
            _ => {}
        }
    }

    /// Whether an unqualified `name` refers to a CTE in scope.
    fn is_cte(&self, name: &ObjectName) -> bool {
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return false;
        };
        let folded = ident_name(ident);
        self.ctes
            .iter()
            .any(|scope| scope.names.iter().take(scope.visible).any(|n| *n == folded))
    }

    fn finish(self, base: Base, text: &str) -> SqlOperation {
        let mut kind = base.kind;
        let mut object = base.object;
        let mut has_where = base.has_where;

        // Data-modifying CTEs: a statement is judged as its strongest write,
        // and as unbounded when any of its UPDATE, DELETE or MERGE parts is
        // (`WITH u AS (UPDATE t SET x = 0) DELETE FROM s WHERE id = 1`
        // updates every row). A table created from such a query
        // (`CREATE TABLE x AS WITH d AS (DELETE …) SELECT …`, `SELECT …
        // INTO x` over one) is both a create and that write, which no one
        // kind says: it is opaque, so that neither the rules for creating
        // tables nor those for the write are passed by.
        let top_is_dml = dml_rank(kind) > 0;
        let creates = kind == SqlKind::Create || self.select_into;
        if creates && !self.nested_dml.is_empty() {
            kind = SqlKind::Opaque;
        }
        if top_is_dml || !kind.is_write() {
            let top = top_is_dml.then_some((kind, has_where));
            let all: Vec<_> = top.into_iter().chain(self.nested_dml).collect();
            if let Some(best) = all.iter().map(|(k, _)| *k).max_by_key(|k| dml_rank(*k)) {
                kind = best;
                has_where = match best {
                    SqlKind::Update | SqlKind::Delete | SqlKind::Merge => Some(
                        all.iter()
                            .filter(|(k, _)| {
                                matches!(k, SqlKind::Update | SqlKind::Delete | SqlKind::Merge)
                            })
                            .all(|(_, w)| *w == Some(true)),
                    ),
                    _ => None,
                };
            }
        }
        if self.select_into && !kind.is_write() {
            kind = SqlKind::Create;
            object = Some("table");
        }
        if self.calls && !kind.is_write() {
            kind = SqlKind::Call;
        }
        if self.opaque_calls || self.misparsed {
            kind = SqlKind::Opaque;
        }
        if kind == SqlKind::Opaque {
            object = None;
            has_where = None;
        }

        let mut tables: Vec<TableAccess> = self
            .writes
            .into_iter()
            .map(|name| TableAccess {
                name,
                access: Access::Write,
            })
            .chain(self.reads.into_iter().map(|name| TableAccess {
                name,
                access: Access::Read,
            }))
            .collect();
        dedup_tables(&mut tables);
        SqlOperation {
            text: text.to_owned(),
            kind,
            object: object.map(str::to_owned),
            tables,
            has_where,
        }
    }
}

impl Visitor for Effects {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| ident_name(&c.alias.name))
                .collect();
            self.ctes.push(CteScope {
                query,
                visible: if with.recursive { names.len() } else { 0 },
                names,
                bodies: with
                    .cte_tables
                    .iter()
                    .map(|c| &*c.query as *const Query)
                    .collect(),
            });
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.table_commands(&query.body);
        if self
            .ctes
            .last()
            .is_some_and(|scope| std::ptr::eq(scope.query, query))
        {
            self.ctes.pop();
        }
        // Once the body of a CTE is done, the CTEs after it may refer to it.
        if let Some(scope) = self.ctes.last_mut()
            && let Some(i) = scope.bodies.iter().position(|b| std::ptr::eq(*b, query))
        {
            scope.visible = scope.visible.max(i + 1);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.select_into = true;
            for target in &into.targets {
                match target {
                    Expr::Identifier(ident) => self.writes.push(ident.value.to_lowercase()),
                    Expr::CompoundIdentifier(idents) => self.writes.push(
                        idents
                            .iter()
                            .map(|i| i.value.to_lowercase())
                            .collect::<Vec<_>>()
                            .join("."),
                    ),
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if !self.not_reads.iter().any(|p| std::ptr::eq(*p, relation)) && !self.is_cte(relation) {
            self.read(relation);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let Some((name, table)) = only_table(factor) {
            if !self.not_reads.iter().any(|p| std::ptr::eq(*p, name)) {
                self.reads.push(table);
                self.not_reads.push(name);
            }
            return ControlFlow::Continue(());
        }
        match factor {
            // `FROM f(args)`: a set-returning function, not a table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => {
                self.not_reads.push(name);
                self.call(name);
            }
            TableFactor::Function { name, .. } => self.call(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(f) => self.call(&f.name),
            // PostgreSQL's attribute notation: `(x).f` is `f(x)` when `x`
            // has no field `f`, whatever the type of `x`, so
            // `(1234).pg_terminate_backend` calls the function. Each name
            // after a dot may be such a call.
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for access in access_chain {
                    match access {
                        AccessExpr::Dot(Expr::Identifier(ident)) => {
                            self.call(&ObjectName::from(vec![ident.clone()]));
                        }
                        AccessExpr::Dot(Expr::CompoundIdentifier(idents)) => {
                            for ident in idents {
                                self.call(&ObjectName::from(vec![ident.clone()]));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        if !std::ptr::eq(stmt, self.root) {
            let (kind, has_where) = self.dml_targets(stmt);
            if dml_rank(kind) > 0 {
                self.nested_dml.push((kind, has_where));
            }
        }
        ControlFlow::Continue(())
    }
}

/// `FROM ONLY t` / `UPDATE ONLY t` / `DELETE FROM ONLY t`: sqlparser reads a
/// table named `ONLY` with the alias `t`; and `FROM ONLY (t)` (or
/// `ONLY (s.t)`), a call of a table function `ONLY`. Returns the misread
/// name and the real table.
pub(super) fn only_table(factor: &TableFactor) -> Option<(&ObjectName, String)> {
    let TableFactor::Table {
        name, alias, args, ..
    } = factor
    else {
        return None;
    };
    let [ObjectNamePart::Identifier(only)] = name.0.as_slice() else {
        return None;
    };
    if only.quote_style.is_some() || !only.value.eq_ignore_ascii_case("only") {
        return None;
    }
    match (alias, args) {
        (Some(alias), None) if alias.columns.is_empty() => {
            Some((name, alias.name.value.to_lowercase()))
        }
        (_, Some(args)) => match args.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(t)))] => {
                Some((name, table_name(&ObjectName::from(vec![t.clone()]))))
            }
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::CompoundIdentifier(parts)))] => {
                Some((name, table_name(&ObjectName::from(parts.clone()))))
            }
            _ => None,
        },
        _ => None,
    }
}

/// PostgreSQL's reserved key words (including those only allowed as function
/// or type names): none of them can be an unquoted table name.
fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "authorization",
        "binary",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "collation",
        "column",
        "concurrently",
        "constraint",
        "create",
        "cross",
        "current_catalog",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "freeze",
        "from",
        "full",
        "grant",
        "group",
        "having",
        "ilike",
        "in",
        "initially",
        "inner",
        "intersect",
        "into",
        "is",
        "isnull",
        "join",
        "lateral",
        "leading",
        "left",
        "like",
        "limit",
        "localtime",
        "localtimestamp",
        "natural",
        "not",
        "notnull",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "outer",
        "overlaps",
        "placing",
        "primary",
        "references",
        "returning",
        "right",
        "select",
        "session_user",
        "similar",
        "some",
        "symmetric",
        "system_user",
        "table",
        "tablesample",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "verbose",
        "when",
        "where",
        "window",
        "with",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

/// A table name as policy sees it: lower-cased, parts joined with dots,
/// each part cut where PostgreSQL cuts it.
pub(super) fn table_name(name: &ObjectName) -> String {
    // `database.schema.table`: PostgreSQL accepts only the current
    // database's name there, so the table is `schema.table`, and rules
    // written for that must match it.
    let parts = match name.0.as_slice() {
        [_, rest @ .., _] if rest.len() == 1 => &name.0[1..],
        all => all,
    };
    parts
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => truncated(ident.value.to_lowercase()),
            None => truncated(part.to_string().to_lowercase()),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// An identifier as PostgreSQL resolves it (in a UTF-8 database): unquoted
/// names fold ASCII letters, and only those, to lower case, and every name
/// is cut to 63 bytes (at a character boundary). Names the gateway keeps
/// as keys (prepared statements) must match the server's exactly: `"Ü"` and
/// `ü` are two statements there, and so are none of two names that differ
/// only after their 63rd byte.
pub(super) fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        truncated(ident.value.clone())
    } else {
        truncated(ident.value.to_ascii_lowercase())
    }
}

/// A name cut as PostgreSQL cuts identifiers longer than 63 bytes.
fn truncated(mut name: String) -> String {
    if name.len() > crate::relay::MAX_NAME_BYTES {
        let mut end = crate::relay::MAX_NAME_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// The last part of a (possibly qualified) name, folded as [`ident_name`].
fn object_ident_name(name: &ObjectName) -> String {
    match name.0.last().and_then(ObjectNamePart::as_ident) {
        Some(ident) => ident_name(ident),
        None => truncated(name.to_string().to_ascii_lowercase()),
    }
}

/// Removes repeated (name, access) pairs, keeping the first of each.
fn dedup_tables(tables: &mut Vec<TableAccess>) {
    let mut seen: Vec<TableAccess> = Vec::with_capacity(tables.len());
    tables.retain(|t| {
        if seen.contains(t) {
            false
        } else {
            seen.push(t.clone());
            true
        }
    });
}
