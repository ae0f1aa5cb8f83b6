//! Which table columns a statement's computed result columns are made of.
//!
//! A `RowDescription` names the table and column of a result column only
//! when the value is that column's, untouched (`SELECT ssn AS x FROM
//! customers`, also through subqueries and CTEs). Anything computed
//! (`ssn || ''`, `upper(ssn)`, `replace(ssn, '-', '')`, `(SELECT ssn FROM
//! customers LIMIT 1)`, `row_to_json(c)`) comes with no table at all, and a
//! masking rule for `customers.ssn` would never see it. The values are
//! still the column's, one function away.
//!
//! This walk reads the statement instead: for each result column, the
//! table columns its expression refers to (and the tables a whole row of
//! which it holds), so the connector can apply those columns' rules to a
//! computed column. It errs on the side of naming too much: a name it
//! cannot place in one table is named in every table of the `FROM` list
//! (and, where no table is in sight, by its column name alone, which every
//! rule for that column name matches), and a reference inside a nested
//! query counts for the result column the query is part of. A value
//! derived from a ruled column is masked whole, whatever the function did
//! to it: `length(ssn)` too. Only computed columns take these names; the
//! server names the others itself.
//!
//! `PREPARE name AS …` and `DECLARE name CURSOR FOR …` carry the lineage
//! of what the name returns later; the connector keeps it by name for
//! `EXECUTE` and `FETCH`.
//!
//! What it does not see: a value passed through a function that reads a
//! table itself (`SELECT my_lookup(id)`), and values inferred from which
//! rows a condition matches (docs/masking.md).

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable,
    FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, ObjectNamePart, OutputClause,
    Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias,
    TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::analyze::{ident_name, only_table, table_name};

/// What a result column's values are made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// Table columns, as `table.column` with the table as the statement
    /// names it (`schema.table.column` when qualified), or `column` alone
    /// where no table could be told.
    pub columns: BTreeSet<String>,
    /// Tables a whole row of which is in the value (`row_to_json(c)`).
    pub rows: BTreeSet<String>,
}

impl Sources {
    fn add(&mut self, other: &Sources) {
        self.columns.extend(other.columns.iter().cloned());
        self.rows.extend(other.rows.iter().cloned());
    }

    /// The names masking rules are matched against: each column, and
    /// `table.*` for each whole row.
    pub fn names(&self) -> Vec<String> {
        self.columns
            .iter()
            .cloned()
            .chain(self.rows.iter().map(|t| format!("{t}.*")))
            .collect()
    }

    /// Whether nothing is known to be in the value.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.rows.is_empty()
    }

    /// A value that may be made of any column (`*`, which every rule
    /// covers).
    fn anything() -> Sources {
        let mut s = Sources::default();
        s.columns.insert("*".into());
        s
    }
}

/// One entry of a select list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    /// One result column.
    One(Sources),
    /// Any number of result columns (`*`, `t.*`), each of which may be
    /// made of any of these.
    Many(Sources),
}

impl Item {
    fn sources(&self) -> &Sources {
        match self {
            Item::One(s) | Item::Many(s) => s,
        }
    }
}

/// An entry of a select list and the name a query around it would use.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Out {
    name: Option<String>,
    item: Item,
}

/// What each result column of a statement is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lineage {
    items: Vec<Item>,
    /// For `COPY … TO STDOUT`: how its rows are written, and which table's
    /// columns they are when it copies a whole table.
    pub copy: Option<CopyOut>,
    /// For a write with `RETURNING` (also inside a CTE, `PREPARE` or
    /// `COPY`): what the values it writes are made of. A column it returns
    /// may hold one of them although the server names it as the written
    /// table's own (`UPDATE staff SET name = pay_grade RETURNING name`
    /// reports `staff.name`).
    pub written: Written,
}

/// What the values writes put into their tables' columns are made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// By the column written to (its name as PostgreSQL folds it).
    columns: Vec<(String, Sources)>,
    /// Written to columns that cannot be told (`INSERT` without a column
    /// list, `MERGE`): any column may hold them.
    any: Sources,
}

impl Written {
    /// Whether nothing written is made of a column.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.columns.iter().all(|(_, s)| s.is_empty())
    }

    /// The names of what the column `column` (`table.column`, or a
    /// column's name alone) may hold of what was written; everything
    /// written when the column cannot be told (`None`).
    pub fn names_for(&self, column: Option<&str>) -> Vec<String> {
        let mut out = self.any.clone();
        // A whole row (`t.*`) holds every column.
        let last = column
            .map(|c| c.rsplit('.').next().unwrap_or(c))
            .filter(|c| *c != "*");
        for (name, sources) in &self.columns {
            if last.is_none_or(|c| c.eq_ignore_ascii_case(name)) {
                out.add(sources);
            }
        }
        out.names()
    }

    /// Adds to a computed column's names what was written to the
    /// columns they name.
    pub fn add_to(&self, names: &mut Vec<String>) {
        if self.is_empty() {
            return;
        }
        let more: Vec<String> = names
            .iter()
            .flat_map(|name| self.names_for(Some(name)))
            .collect();
        names.extend(more);
    }

    fn column(&mut self, name: String, sources: Sources) {
        if !sources.is_empty() {
            self.columns.push((name, sources));
        }
    }

    fn add(&mut self, other: &Written) {
        self.columns.extend(other.columns.iter().cloned());
        self.any.add(&other.any);
    }
}

/// How a `COPY … TO STDOUT` writes its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOut {
    /// The rows' format.
    pub format: CopyFormat,
    /// The first row names the columns.
    pub header: bool,
    /// `COPY t TO STDOUT` with no column list: the table's columns, in
    /// its order (the catalog's); otherwise the columns are the lineage's.
    pub table: Option<String>,
}

/// A COPY's format, with what separates, quotes and stands for NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated (or `DELIMITER`), backslash escapes.
    Text {
        /// Between fields.
        delimiter: u8,
        /// What a NULL is written as (`\N`).
        null: String,
    },
    /// CSV.
    Csv {
        /// Between fields.
        delimiter: u8,
        /// Around a field that needs it.
        quote: u8,
        /// Before a quote (or itself) inside a quoted field.
        escape: u8,
        /// What a NULL is written as (unquoted).
        null: String,
    },
    /// PostgreSQL's binary COPY format.
    Binary,
}

impl Lineage {
    /// The sources of each of the `n` columns of a result of this
    /// statement. The entries before the first `*` are matched from the
    /// left, those after the last one from the right, and the columns in
    /// between may be made of anything in between. When the counts cannot
    /// match (the server's statement was not the one classified), every
    /// column may be made of anything.
    pub fn columns(&self, n: usize) -> Vec<Sources> {
        let all = || {
            let mut all = Sources::default();
            for item in &self.items {
                all.add(item.sources());
            }
            all
        };
        let first = self.items.iter().position(|i| matches!(i, Item::Many(_)));
        let Some(first) = first else {
            if self.items.len() == n {
                return self.items.iter().map(|i| i.sources().clone()).collect();
            }
            return vec![all(); n];
        };
        let last = self
            .items
            .iter()
            .rposition(|i| matches!(i, Item::Many(_)))
            .unwrap_or(first);
        let (head, tail) = (&self.items[..first], &self.items[last + 1..]);
        if head.len() + tail.len() > n {
            return vec![all(); n];
        }
        let mut middle = Sources::default();
        for item in &self.items[first..=last] {
            middle.add(item.sources());
        }
        let tail_from = n - tail.len();
        (0..n)
            .map(|i| {
                if i < head.len() {
                    head[i].sources().clone()
                } else if i >= tail_from {
                    tail[i - tail_from].sources().clone()
                } else {
                    middle.clone()
                }
            })
            .collect()
    }

    /// The lineage of a result that may be any one of these statements'
    /// (a prepared statement the server may hold in place of another):
    /// every column may be made of anything any of them names. `None`
    /// when none of them names anything.
    pub fn of_any<'a>(all: impl Iterator<Item = Option<&'a Arc<Lineage>>>) -> Option<Arc<Lineage>> {
        // (Asked on every Execute: none or one costs no allocation.)
        let mut all = all.flatten();
        let first = all.next()?;
        let Some(second) = all.next() else {
            return Some(Arc::clone(first));
        };
        let (mut s, mut written) = (Sources::default(), Written::default());
        for l in [first, second].into_iter().chain(all) {
            for item in &l.items {
                s.add(item.sources());
            }
            written.add(&l.written);
        }
        Some(Arc::new(Lineage {
            items: vec![Item::Many(s)],
            copy: None,
            written,
        }))
    }

    /// The lineage of a statement that could return anything (one the
    /// classifier could not read): every column may be any table's column
    /// (`*`, which every column rule matches).
    pub fn anything() -> Lineage {
        Lineage {
            items: vec![Item::Many(Sources::anything())],
            copy: None,
            written: Written::default(),
        }
    }

    /// Whether no result column is known to be made of any table column.
    pub fn is_empty(&self) -> bool {
        self.items.iter().all(|i| i.sources().is_empty())
    }
}

/// The lineage of a statement that returns rows from a query it holds
/// (`SELECT`, `VALUES`, `TABLE`, `RETURNING`), or of the rows a name it
/// makes returns later (`PREPARE name AS …` for `EXECUTE`, `DECLARE name
/// CURSOR FOR …` for `FETCH`); `None` for any other, or when no result
/// column is made of a table column.
pub(super) fn of_statement(stmt: &Statement) -> Option<Lineage> {
    let outs = match stmt {
        Statement::Prepare {
            statement: inner, ..
        } => statement(inner, None, &Ctes::new())?,
        Statement::Declare { stmts } => match stmts.as_slice() {
            [one] => query(one.for_query.as_deref()?, None, &Ctes::new()),
            _ => return None,
        },
        Statement::Copy {
            source,
            to: true,
            target: CopyTarget::Stdout,
            options,
            legacy_options,
            ..
        } => {
            return copy_out(source, options, legacy_options).map(|mut l| {
                l.written = written(stmt);
                l
            });
        }
        other => statement(other, None, &Ctes::new())?,
    };
    let lineage = Lineage {
        items: outs.into_iter().map(|o| o.item).collect(),
        copy: None,
        written: written(stmt),
    };
    (!lineage.is_empty() || !lineage.written.is_empty()).then_some(lineage)
}

/// The lineage of `COPY … TO STDOUT`: its format, and its columns (a
/// query's as for a result, with a table's `*` a whole row of it, since no
/// description names them). `None` for a format or option this gateway
/// cannot read rows of; their lines are then masked as one text each.
fn copy_out(
    source: &CopySource,
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Option<Lineage> {
    let mut format = "text".to_owned();
    let (mut delimiter, mut null, mut header) = (None, None, false);
    let (mut quote, mut escape) = (None, None);
    for o in options {
        match o {
            CopyOption::Format(f) => format = f.value.to_ascii_lowercase(),
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(n) => null = Some(n.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::ForceQuote(_) | CopyOption::ForceNotNull(_) | CopyOption::ForceNull(_) => {}
            // (ENCODING other than UTF-8 is opaque before it gets here.)
            CopyOption::Encoding(_) | CopyOption::Freeze(_) => {}
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = "binary".into(),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(n) => null = Some(n.clone()),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Csv(csv) => {
                format = "csv".into();
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = Some(*q),
                        CopyLegacyCsvOption::Escape(e) => escape = Some(*e),
                        _ => {}
                    }
                }
            }
            _ => return None,
        }
    }
    // A letter may have been written as a bare word, which PostgreSQL
    // folds to lower case and sqlparser does not: the rows would be split
    // on another character than the server's. Such a COPY is not read.
    let byte = |c: Option<char>, default: u8| match c {
        None => Some(default),
        Some(c) => u8::try_from(c)
            .ok()
            .filter(|b| b.is_ascii() && !b.is_ascii_alphabetic()),
    };
    let format = match format.as_str() {
        "text" => CopyFormat::Text {
            delimiter: byte(delimiter, b'\t')?,
            null: null.unwrap_or_else(|| "\\N".into()),
        },
        "csv" => {
            let quote = byte(quote, b'"')?;
            CopyFormat::Csv {
                delimiter: byte(delimiter, b',')?,
                quote,
                escape: byte(escape, quote)?,
                null: null.unwrap_or_default(),
            }
        }
        "binary" => CopyFormat::Binary,
        _ => return None,
    };
    let (items, table) = match source {
        CopySource::Table {
            table_name: name,
            columns,
        } if columns.is_empty() => (Vec::new(), Some(table_name(name))),
        CopySource::Table {
            table_name: name,
            columns,
        } => {
            let table = table_name(name);
            let items = columns
                .iter()
                .map(|c| {
                    let mut s = Sources::default();
                    s.columns.insert(format!("{table}.{}", ident_name(c)));
                    Item::One(s)
                })
                .collect();
            (items, None)
        }
        CopySource::Query(q) => {
            let items = query(q, None, &Ctes::new())
                .into_iter()
                .map(|o| o.item)
                .collect();
            (items, None)
        }
    };
    Some(Lineage {
        items,
        copy: Some(CopyOut {
            format,
            header,
            table,
        }),
        written: Written::default(),
    })
}

/// The cursor a `DECLARE` makes.
pub(super) fn cursor_name(stmt: &Statement) -> Option<String> {
    match stmt {
        Statement::Declare { stmts } => match stmts.as_slice() {
            [one] if one.for_query.is_some() => one.names.first().map(ident_name),
            _ => None,
        },
        _ => None,
    }
}

/// What each column of a view is made of, from its definition as
/// `pg_get_viewdef` prints it; `None` when that is not one query this walk
/// can read.
pub(crate) fn of_view(definition: &str) -> Option<Lineage> {
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, definition).ok()?;
    let [stmt @ Statement::Query(_)] = parsed.as_slice() else {
        return None;
    };
    let outs = statement(stmt, None, &Ctes::new())?;
    Some(Lineage {
        items: outs.into_iter().map(|o| o.item).collect(),
        copy: None,
        written: Written::default(),
    })
}

/// CTEs in sight, innermost last.
type Ctes = Vec<(String, Vec<Out>)>;

/// A relation of a `FROM` list, under the name the query refers to it by.
#[derive(Clone, Debug)]
struct Rel {
    name: String,
    kind: RelKind,
}

#[derive(Clone, Debug)]
enum RelKind {
    /// A table (or view), by its name as written.
    Table(String),
    /// A subquery, CTE or function: its result columns.
    Derived(Vec<Out>),
}

impl Rel {
    /// What a whole row of the relation is made of.
    fn whole_row(&self) -> Sources {
        let mut s = Sources::default();
        match &self.kind {
            RelKind::Table(t) => {
                s.rows.insert(t.clone());
            }
            RelKind::Derived(outs) => {
                for o in outs {
                    s.add(o.item.sources());
                }
            }
        }
        s
    }

    /// What the relation's column `column` is made of, as far as can be
    /// told without the catalog.
    fn column(&self, column: &str) -> Sources {
        let mut s = Sources::default();
        match &self.kind {
            RelKind::Table(t) => {
                s.columns.insert(format!("{t}.{column}"));
            }
            RelKind::Derived(outs) => {
                let mut named = false;
                for o in outs {
                    match (&o.item, &o.name) {
                        (Item::One(src), Some(name)) if name == column => {
                            s.add(src);
                            named = true;
                        }
                        // A `*` inside may hold a column of that name.
                        (Item::Many(src), _) => s.add(src),
                        _ => {}
                    }
                }
                if !named {
                    // Not a name this walk gave: any column may be it.
                    s.add(&self.whole_row());
                }
            }
        }
        s
    }

    /// What the relation's columns bring to a `*`: a whole row of it.
    /// (For a table's own columns the server names each in a result; the
    /// name counts where a query around the `*` computes from it, or a
    /// `UNION` or COPY takes the table's name away.)
    fn star(&self) -> Sources {
        self.whole_row()
    }
}

/// The relations of one `FROM` list, and the lists around it.
struct Scope<'a> {
    rels: Vec<Rel>,
    parent: Option<&'a Scope<'a>>,
}

impl<'a> Scope<'a> {
    fn new(rels: Vec<Rel>, parent: Option<&'a Scope<'a>>) -> Self {
        Scope { rels, parent }
    }
}

impl Scope<'_> {
    fn chain(&self) -> impl Iterator<Item = &Scope<'_>> {
        std::iter::successors(Some(self), |s| s.parent)
    }

    fn find(&self, name: &str) -> Option<&Rel> {
        self.chain()
            .flat_map(|s| s.rels.iter())
            .find(|r| r.name == name)
    }

    /// An unqualified name: a column of any relation in sight (the walk
    /// does not know which tables have it), and a whole row of a relation
    /// so named (`SELECT row_to_json(c) FROM customers c`).
    fn unqualified(&self, name: &str) -> Sources {
        let mut s = Sources::default();
        let mut any = false;
        for scope in self.chain() {
            for rel in &scope.rels {
                any = true;
                s.add(&rel.column(name));
                if rel.name == name {
                    s.add(&rel.whole_row());
                }
            }
        }
        if !any {
            s.columns.insert(name.to_owned());
        }
        s
    }

    /// `a.b` (relation and column), `a.b.c` (schema, table, column) and
    /// longer.
    fn qualified(&self, parts: &[String]) -> Sources {
        let mut s = Sources::default();
        let Some((column, qualifier)) = parts.split_last() else {
            return s;
        };
        let relation = qualifier.join(".");
        match self.find(&relation).or_else(|| {
            // `schema.table.column` refers to the table by its own name.
            qualifier.last().and_then(|t| self.find(t))
        }) {
            Some(rel) => s.add(&rel.column(column)),
            // A field of a composite column, or a table this walk did not
            // place: the column's name alone matches every rule for it.
            None => {
                s.columns.insert(column.clone());
                if qualifier.len() > 1 {
                    s.columns.insert(format!("{relation}.{column}"));
                }
            }
        }
        s
    }
}

fn statement(stmt: &Statement, parent: Option<&Scope<'_>>, ctes: &Ctes) -> Option<Vec<Out>> {
    match stmt {
        Statement::Query(q) => Some(query(q, parent, ctes)),
        Statement::Insert(insert) => {
            let returning = insert.returning.as_ref()?;
            let TableObject::TableName(name) = &insert.table else {
                return None;
            };
            let alias = insert.table_alias.as_ref().map(|a| ident_name(&a.alias));
            let rel = table_rel(name, alias, ctes);
            let scope = Scope::new(with_old_new(vec![rel]), parent);
            Some(select_list(returning, &scope, ctes))
        }
        Statement::Update(update) => {
            let returning = update.returning.as_ref()?;
            let mut rels = Vec::new();
            from_item(&update.table, parent, ctes, &mut rels);
            if let Some(from) = &update.from {
                let (sqlparser::ast::UpdateTableFromKind::BeforeSet(from)
                | sqlparser::ast::UpdateTableFromKind::AfterSet(from)) = from;
                for t in from {
                    from_item(t, parent, ctes, &mut rels);
                }
            }
            let scope = Scope::new(with_old_new(rels), parent);
            Some(select_list(returning, &scope, ctes))
        }
        Statement::Delete(delete) => {
            let returning = delete.returning.as_ref()?;
            let mut rels = Vec::new();
            let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
            for t in from.iter().chain(delete.using.iter().flatten()) {
                from_item(t, parent, ctes, &mut rels);
            }
            let scope = Scope::new(with_old_new(rels), parent);
            Some(select_list(returning, &scope, ctes))
        }
        Statement::Merge(merge) => {
            let Some(OutputClause::Returning { select_items, .. }) = &merge.output else {
                return None;
            };
            let mut rels = Vec::new();
            factor(&merge.table, parent, ctes, &mut rels);
            factor(&merge.source, parent, ctes, &mut rels);
            let scope = Scope::new(with_old_new(rels), parent);
            Some(select_list(select_items, &scope, ctes))
        }
        _ => None,
    }
}

/// What the values the writes with `RETURNING` in `stmt` (itself, or in
/// its CTEs, a `PREPARE` or a `COPY`) put into their tables are made of:
/// by column, an `UPDATE`'s `SET` expressions, the rows an `INSERT` with a
/// column list inserts and `ON CONFLICT DO UPDATE`'s assignments (which
/// may also take any inserted value, as `excluded`); for any column, an
/// `INSERT`'s rows without a column list and all a `MERGE` names. Empty
/// when no written value names a column (`VALUES ('x')`).
fn written(stmt: &Statement) -> Written {
    let mut out = Written::default();
    let _ = sqlparser::ast::visit_statements(stmt, |s| {
        out.add(&written_by(s));
        ControlFlow::<()>::Continue(())
    });
    // A write under a WITH may take its values from the WITH's queries,
    // which the walk above does not follow (`WITH s AS (SELECT pay_grade
    // …) UPDATE … SET team = (SELECT g FROM s)`): what it wrote may then
    // be anything.
    if !out.is_empty() && has_with(stmt) {
        out.any.add(&Sources::anything());
    }
    out
}

/// Whether any query in `stmt` has a `WITH`.
fn has_with(stmt: &Statement) -> bool {
    struct With;
    impl Visitor for With {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if q.with.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    stmt.visit(&mut With).is_break()
}

/// The columns an assignment sets (`SET a = …`, `SET (a, b) = …`).
fn assigned(target: &sqlparser::ast::AssignmentTarget) -> Vec<String> {
    let names = match target {
        sqlparser::ast::AssignmentTarget::ColumnName(n) => std::slice::from_ref(n),
        sqlparser::ast::AssignmentTarget::Tuple(ns) => ns.as_slice(),
    };
    names
        .iter()
        .filter_map(|n| {
            n.0.last()
                .and_then(ObjectNamePart::as_ident)
                .map(ident_name)
        })
        .collect()
}

/// [`written`] of one statement (not those nested in it).
fn written_by(stmt: &Statement) -> Written {
    let mut out = Written::default();
    let ctes = Ctes::new();
    match stmt {
        Statement::Insert(insert) if insert.returning.is_some() => {
            let outs = insert
                .source
                .as_ref()
                .map(|q| query(q, None, &ctes))
                .unwrap_or_default();
            let mut all = Sources::default();
            for o in &outs {
                all.add(o.item.sources());
            }
            let columns: Vec<String> = insert
                .columns
                .iter()
                .filter_map(|n| {
                    n.0.last()
                        .and_then(ObjectNamePart::as_ident)
                        .map(ident_name)
                })
                .collect();
            if !columns.is_empty()
                && columns.len() == outs.len()
                && outs.iter().all(|o| matches!(o.item, Item::One(_)))
            {
                for (c, o) in columns.into_iter().zip(outs) {
                    out.column(c, o.item.sources().clone());
                }
            } else {
                out.any.add(&all);
            }
            if let (
                Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
                    action: sqlparser::ast::OnConflictAction::DoUpdate(update),
                    ..
                })),
                TableObject::TableName(name),
            ) = (&insert.on, &insert.table)
            {
                let alias = insert.table_alias.as_ref().map(|a| ident_name(&a.alias));
                let scope = Scope::new(vec![table_rel(name, alias, &ctes)], None);
                for a in &update.assignments {
                    let mut value = expr(&a.value, &scope, &ctes);
                    value.add(&all);
                    for c in assigned(&a.target) {
                        out.column(c, value.clone());
                    }
                }
            }
        }
        Statement::Update(update) if update.returning.is_some() => {
            let mut rels = Vec::new();
            from_item(&update.table, None, &ctes, &mut rels);
            if let Some(from) = &update.from {
                let (sqlparser::ast::UpdateTableFromKind::BeforeSet(from)
                | sqlparser::ast::UpdateTableFromKind::AfterSet(from)) = from;
                for t in from {
                    from_item(t, None, &ctes, &mut rels);
                }
            }
            let scope = Scope::new(rels, None);
            for a in &update.assignments {
                let value = expr(&a.value, &scope, &ctes);
                for c in assigned(&a.target) {
                    out.column(c, value.clone());
                }
            }
        }
        Statement::Merge(merge) if merge.output.is_some() => {
            let mut rels = Vec::new();
            factor(&merge.table, None, &ctes, &mut rels);
            factor(&merge.source, None, &ctes, &mut rels);
            let scope = Scope::new(rels, None);
            for rel in scope.rels.iter().skip(1) {
                out.any.add(&rel.star());
            }
            let mut c = Collect::new(&scope, &ctes);
            for clause in &merge.clauses {
                let _ = clause.visit(&mut c);
            }
            out.any.add(&c.found);
        }
        _ => {}
    }
    out
}

/// `RETURNING` may name the written table's rows before and after as
/// `old` and `new` (PostgreSQL 18).
fn with_old_new(mut rels: Vec<Rel>) -> Vec<Rel> {
    if let Some(Rel {
        kind: RelKind::Table(t),
        ..
    }) = rels.first()
    {
        let t = t.clone();
        for name in ["old", "new"] {
            if !rels.iter().any(|r| r.name == name) {
                rels.push(Rel {
                    name: name.into(),
                    kind: RelKind::Table(t.clone()),
                });
            }
        }
    }
    rels
}

fn query(q: &Query, parent: Option<&Scope<'_>>, ctes: &Ctes) -> Vec<Out> {
    let mut env = ctes.clone();
    if let Some(with) = &q.with {
        let forward = with.recursive && refers_forward(with);
        for cte in &with.cte_tables {
            let mut outs = if forward {
                vec![Out {
                    name: None,
                    item: Item::Many(Sources::anything()),
                }]
            } else {
                query(&cte.query, parent, &env)
            };
            if with.recursive && names_any(&cte.query, &[ident_name(&cte.alias.name)]) {
                // Its reference to itself can move any column's values
                // into any other (`SELECT b, a FROM r`): each column may be
                // anything the body names.
                let mut all = Sources::default();
                for o in &outs {
                    all.add(o.item.sources());
                }
                for o in &mut outs {
                    if let Item::One(s) = &mut o.item {
                        s.add(&all);
                    }
                }
            }
            rename(&mut outs, &cte.alias);
            env.push((ident_name(&cte.alias.name), outs));
        }
    }
    set_expr(&q.body, parent, &env)
}

/// Whether a query of a `WITH RECURSIVE` list names one declared after it
/// (`WITH RECURSIVE a AS (SELECT … FROM b), b AS (…)`), which PostgreSQL
/// allows there. The walk above goes in order and would take such a name
/// for a table; instead every query of such a list may be made of
/// anything (a rare form, masked whole rather than followed).
fn refers_forward(with: &sqlparser::ast::With) -> bool {
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|c| ident_name(&c.alias.name))
        .collect();
    with.cte_tables
        .iter()
        .enumerate()
        .any(|(i, cte)| names_any(&cte.query, &names[i + 1..]))
}

/// Whether `q` reads a relation by one of these unqualified names (also
/// as `TABLE name`, which sqlparser keeps as a string without its quotes:
/// compared without case, which may find one too many).
fn names_any(q: &Query, names: &[String]) -> bool {
    struct Names<'n>(&'n [String]);
    impl Names<'_> {
        fn table_command(&self, body: &SetExpr) -> bool {
            match body {
                SetExpr::Table(t) => {
                    t.schema_name.is_none()
                        && t.table_name
                            .as_deref()
                            .is_some_and(|name| self.0.iter().any(|n| n.eq_ignore_ascii_case(name)))
                }
                SetExpr::SetOperation { left, right, .. } => {
                    self.table_command(left) || self.table_command(right)
                }
                _ => false,
            }
        }
    }
    impl Visitor for Names<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, rel: &ObjectName) -> ControlFlow<()> {
            match rel.0.as_slice() {
                [ObjectNamePart::Identifier(id)] if self.0.contains(&ident_name(id)) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if self.table_command(&q.body) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    q.visit(&mut Names(names)).is_break()
}

fn set_expr(body: &SetExpr, parent: Option<&Scope<'_>>, ctes: &Ctes) -> Vec<Out> {
    match body {
        SetExpr::Select(s) => select(s, parent, ctes),
        SetExpr::Query(q) => query(q, parent, ctes),
        SetExpr::SetOperation { left, right, .. } => {
            let (l, r) = (set_expr(left, parent, ctes), set_expr(right, parent, ctes));
            let plain = |outs: &[Out]| outs.iter().all(|o| matches!(o.item, Item::One(_)));
            if l.len() == r.len() && plain(&l) && plain(&r) {
                l.into_iter()
                    .zip(r)
                    .map(|(mut a, b)| {
                        if let Item::One(s) = &mut a.item {
                            s.add(b.item.sources());
                        }
                        a
                    })
                    .collect()
            } else {
                let mut all = Sources::default();
                for o in l.iter().chain(&r) {
                    all.add(o.item.sources());
                }
                vec![Out {
                    name: None,
                    item: Item::Many(all),
                }]
            }
        }
        SetExpr::Values(values) => {
            let scope = Scope::new(Vec::new(), parent);
            let width = values
                .rows
                .iter()
                .map(|r| r.content.len())
                .max()
                .unwrap_or(0);
            (0..width)
                .map(|i| {
                    let mut s = Sources::default();
                    for row in &values.rows {
                        if let Some(e) = row.content.get(i) {
                            s.add(&expr(e, &scope, ctes));
                        }
                    }
                    Out {
                        name: None,
                        item: Item::One(s),
                    }
                })
                .collect()
        }
        SetExpr::Table(t) => {
            let name = t.table_name.as_deref().unwrap_or_default();
            // (sqlparser keeps the name's quotes off and its case on: a
            // CTE is found whatever the case, which may mask more.)
            let cte = ctes
                .iter()
                .rev()
                .find(|(n, _)| t.schema_name.is_none() && n.eq_ignore_ascii_case(name));
            match cte {
                Some((_, outs)) => outs.clone(),
                None => {
                    let table = match &t.schema_name {
                        Some(schema) => format!("{schema}.{name}"),
                        None => name.to_owned(),
                    };
                    let mut s = Sources::default();
                    s.rows.insert(table.to_ascii_lowercase());
                    many(s)
                }
            }
        }
        SetExpr::Insert(stmt)
        | SetExpr::Update(stmt)
        | SetExpr::Delete(stmt)
        | SetExpr::Merge(stmt) => statement(stmt, parent, ctes).unwrap_or_default(),
    }
}

fn select(s: &Select, parent: Option<&Scope<'_>>, ctes: &Ctes) -> Vec<Out> {
    let mut rels = Vec::new();
    for t in &s.from {
        from_item(t, parent, ctes, &mut rels);
    }
    let scope = Scope::new(rels, parent);
    select_list(&s.projection, &scope, ctes)
}

fn select_list(items: &[SelectItem], scope: &Scope<'_>, ctes: &Ctes) -> Vec<Out> {
    items
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Out {
                name: expr_name(e),
                item: Item::One(expr(e, scope, ctes)),
            },
            SelectItem::ExprWithAlias { expr: e, alias } => Out {
                name: Some(ident_name(alias)),
                item: Item::One(expr(e, scope, ctes)),
            },
            SelectItem::ExprWithAliases { expr: e, aliases } => Out {
                name: aliases.first().map(ident_name),
                item: Item::One(expr(e, scope, ctes)),
            },
            SelectItem::Wildcard(_) => {
                let mut s = Sources::default();
                for rel in &scope.rels {
                    s.add(&rel.star());
                }
                Out {
                    name: None,
                    item: Item::Many(s),
                }
            }
            SelectItem::QualifiedWildcard(kind, _) => {
                let s = match kind {
                    SelectItemQualifiedWildcardKind::ObjectName(name) => {
                        match scope.find(&relation_name(name)) {
                            Some(rel) => rel.star(),
                            None => Sources::default(),
                        }
                    }
                    SelectItemQualifiedWildcardKind::Expr(e) => expr(e, scope, ctes),
                };
                Out {
                    name: None,
                    item: Item::Many(s),
                }
            }
        })
        .collect()
}

/// Adds the relations of one `FROM` entry and its joins.
fn from_item(t: &TableWithJoins, parent: Option<&Scope<'_>>, ctes: &Ctes, rels: &mut Vec<Rel>) {
    factor(&t.relation, parent, ctes, rels);
    for join in &t.joins {
        factor(&join.relation, parent, ctes, rels);
    }
}

fn factor(f: &TableFactor, parent: Option<&Scope<'_>>, ctes: &Ctes, rels: &mut Vec<Rel>) {
    // What a function or subquery in FROM may refer to: what is in sight
    // around it, and (LATERAL) the entries before it.
    let around = |rels: &Vec<Rel>| Scope::new(rels.clone(), parent);
    let derived = |alias: &Option<TableAlias>, mut outs: Vec<Out>, fallback: String| {
        if let Some(alias) = alias {
            rename(&mut outs, alias);
        }
        Rel {
            name: alias.as_ref().map_or(fallback, |a| ident_name(&a.name)),
            kind: RelKind::Derived(outs),
        }
    };
    // sqlparser reads `FROM ONLY t` as table `only` aliased `t`.
    if let Some((_, table)) = only_table(f) {
        let name = table.rsplit('.').next().unwrap_or(&table).to_owned();
        rels.push(Rel {
            name,
            kind: RelKind::Table(table),
        });
        return;
    }
    match f {
        TableFactor::Table {
            name, alias, args, ..
        } => match args {
            None => {
                let mut rel = table_rel(name, alias.as_ref().map(|a| ident_name(&a.name)), ctes);
                match (alias, &mut rel.kind) {
                    (Some(alias), RelKind::Derived(outs)) => rename(outs, alias),
                    // `staff AS s(i, g)` renames the table's columns: which
                    // is which only the catalog knows, so each may be any.
                    (Some(alias), RelKind::Table(_)) if !alias.columns.is_empty() => {
                        rel.kind = RelKind::Derived(many(rel.whole_row()));
                    }
                    _ => {}
                }
                rels.push(rel);
            }
            // A function in FROM (`generate_series(...)`): its columns are
            // made of its arguments.
            Some(a) => {
                let scope = around(rels);
                let mut s = Sources::default();
                for arg in &a.args {
                    s.add(&function_arg(arg, &scope, ctes));
                }
                let fallback = relation_name(name);
                rels.push(derived(alias, many(s), fallback));
            }
        },
        TableFactor::Derived {
            subquery, alias, ..
        } => {
            let scope = around(rels);
            let outs = query(subquery, Some(&scope), ctes);
            rels.push(derived(alias, outs, String::new()));
        }
        TableFactor::Function {
            name, args, alias, ..
        } => {
            let scope = around(rels);
            let mut s = Sources::default();
            for arg in args {
                s.add(&function_arg(arg, &scope, ctes));
            }
            rels.push(derived(alias, many(s), relation_name(name)));
        }
        TableFactor::TableFunction { expr: e, alias } => {
            let scope = around(rels);
            let s = expr(e, &scope, ctes);
            rels.push(derived(alias, many(s), String::new()));
        }
        TableFactor::UNNEST {
            alias, array_exprs, ..
        } => {
            let scope = around(rels);
            let mut s = Sources::default();
            for e in array_exprs {
                s.add(&expr(e, &scope, ctes));
            }
            rels.push(derived(alias, many(s), "unnest".into()));
        }
        TableFactor::NestedJoin {
            table_with_joins,
            alias,
        } => {
            let mut inner = Vec::new();
            from_item(table_with_joins, parent, ctes, &mut inner);
            if let Some(alias) = alias {
                let mut s = Sources::default();
                for rel in &inner {
                    s.add(&rel.whole_row());
                }
                rels.push(Rel {
                    name: ident_name(&alias.name),
                    kind: RelKind::Derived(many(s)),
                });
            }
            rels.extend(inner);
        }
        // Everything else (other dialects' table syntax, JSON tables):
        // made of whatever the whole factor names.
        other => {
            let scope = around(rels);
            let mut c = Collect::new(&scope, ctes);
            let _ = other.visit(&mut c);
            rels.push(Rel {
                name: String::new(),
                kind: RelKind::Derived(many(c.found)),
            });
        }
    }
}

fn many(s: Sources) -> Vec<Out> {
    vec![Out {
        name: None,
        item: Item::Many(s),
    }]
}

/// A table named in `FROM`, or a CTE of that name in sight.
fn table_rel(name: &ObjectName, alias: Option<String>, ctes: &Ctes) -> Rel {
    let table = table_name(name);
    let short = relation_name(name);
    if name.0.len() == 1
        && let Some((_, outs)) = ctes.iter().rev().find(|(n, _)| *n == short)
    {
        return Rel {
            name: alias.unwrap_or(short),
            kind: RelKind::Derived(outs.clone()),
        };
    }
    Rel {
        name: alias.unwrap_or(short),
        kind: RelKind::Table(table),
    }
}

/// Renames the columns of a subquery, CTE or function by an alias's
/// column list (`AS s(a, b)`).
fn rename(outs: &mut [Out], alias: &TableAlias) {
    for (o, c) in outs.iter_mut().zip(&alias.columns) {
        if matches!(o.item, Item::One(_)) {
            o.name = Some(ident_name(&c.name));
        }
    }
}

/// The name a relation is referred to by: its last part.
fn relation_name(name: &ObjectName) -> String {
    match name.0.last().and_then(ObjectNamePart::as_ident) {
        Some(ident) => ident_name(ident),
        None => name.to_string().to_ascii_lowercase(),
    }
}

/// The name PostgreSQL gives a result column computed by `e` (where that
/// name is a column's, which a query around it may refer to).
fn expr_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(ident_name(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => expr_name(expr),
        Expr::Function(f) => Some(relation_name(&f.name)),
        _ => None,
    }
}

fn function_arg(arg: &FunctionArg, scope: &Scope<'_>, ctes: &Ctes) -> Sources {
    let (FunctionArg::Unnamed(a)
    | FunctionArg::Named { arg: a, .. }
    | FunctionArg::ExprNamed { arg: a, .. }) = arg;
    match a {
        FunctionArgExpr::Expr(e) => expr(e, scope, ctes),
        FunctionArgExpr::QualifiedWildcard(name) => scope
            .find(&relation_name(name))
            .map(Rel::whole_row)
            .unwrap_or_default(),
        FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => Sources::default(),
    }
}

/// What an expression refers to.
fn expr(e: &Expr, scope: &Scope<'_>, ctes: &Ctes) -> Sources {
    let mut c = Collect::new(scope, ctes);
    let _ = e.visit(&mut c);
    c.found
}

/// Collects the columns and rows an expression refers to. A query nested
/// in it is walked on its own (its names are its own `FROM`'s), and all it
/// returns counts.
struct Collect<'s, 'a> {
    scope: &'s Scope<'a>,
    ctes: &'s Ctes,
    /// Queries entered and not yet left: their expressions are theirs.
    depth: usize,
    found: Sources,
}

impl<'s, 'a> Collect<'s, 'a> {
    fn new(scope: &'s Scope<'a>, ctes: &'s Ctes) -> Self {
        Collect {
            scope,
            ctes,
            depth: 0,
            found: Sources::default(),
        }
    }
}

impl Visitor for Collect<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            for out in query(q, Some(self.scope), self.ctes) {
                self.found.add(out.item.sources());
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        match e {
            Expr::Identifier(i) => {
                let found = self.scope.unqualified(&ident_name(i));
                self.found.add(&found);
            }
            Expr::CompoundIdentifier(parts) => {
                let parts: Vec<String> = parts.iter().map(ident_name).collect();
                let found = self.scope.qualified(&parts);
                self.found.add(&found);
            }
            Expr::QualifiedWildcard(name, _) => {
                if let Some(rel) = self.scope.find(&relation_name(name)) {
                    self.found.add(&rel.whole_row());
                }
            }
            Expr::Function(f) => {
                if let FunctionArguments::List(list) = &f.args {
                    for arg in &list.args {
                        let (FunctionArg::Unnamed(a)
                        | FunctionArg::Named { arg: a, .. }
                        | FunctionArg::ExprNamed { arg: a, .. }) = arg;
                        if let FunctionArgExpr::QualifiedWildcard(name) = a
                            && let Some(rel) = self.scope.find(&relation_name(name))
                        {
                            self.found.add(&rel.whole_row());
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use crate::classify::Classifier;

    /// The sources of each of `n` result columns of `sql`, as sorted
    /// lists of column names and of whole-row tables.
    fn columns(sql: &str, n: usize) -> Vec<(Vec<String>, Vec<String>)> {
        let classified = Classifier::new(0).classify(sql);
        let lineage = classified[0].lineage.clone().unwrap_or_default();
        lineage
            .columns(n)
            .into_iter()
            .map(|s| {
                (
                    s.columns.into_iter().collect(),
                    s.rows.into_iter().collect(),
                )
            })
            .collect()
    }

    fn names(sql: &str, n: usize) -> Vec<Vec<String>> {
        columns(sql, n).into_iter().map(|(c, _)| c).collect()
    }

    fn v(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_computed_column_is_made_of_the_columns_its_expression_names() {
        assert_eq!(
            names(
                "SELECT id, ssn || '' AS x, replace(SSN, '-', '') FROM customers",
                3
            ),
            vec![
                v(&["customers.id"]),
                v(&["customers.ssn"]),
                v(&["customers.ssn"])
            ]
        );
        // Qualified by an alias, a schema, or a table that is not the
        // alias's: each to its own table.
        assert_eq!(
            names(
                "SELECT upper(c.email), lower(public.orders.note) FROM public.customers c JOIN public.orders ON true",
                2
            ),
            vec![v(&["public.customers.email"]), v(&["public.orders.note"])]
        );
        // Unqualified with two tables in sight: either may have it.
        assert_eq!(
            names(
                "SELECT md5(ssn) FROM customers c JOIN orders o ON o.cid = c.id",
                1
            ),
            vec![v(&["customers.ssn", "orders.ssn"])]
        );
        // A computed column made of no column at all names nothing, and a
        // statement none of whose columns is made of one has no lineage.
        assert_eq!(
            names("SELECT count(*), upper(name) FROM customers", 2),
            vec![v(&[]), v(&["customers.name"])]
        );
        assert!(
            Classifier::new(0).classify("SELECT 1, now(), 'x' || 'y'")[0]
                .lineage
                .is_none()
        );
        assert!(
            Classifier::new(0).classify("DELETE FROM t WHERE id = 1")[0]
                .lineage
                .is_none()
        );
    }

    #[test]
    fn subqueries_ctes_and_set_operations_carry_their_columns_through() {
        let ssn = vec![v(&["customers.ssn"])];
        for sql in [
            "SELECT upper(x) FROM (SELECT ssn AS x FROM customers) s",
            "SELECT s.x FROM (SELECT ssn || '' AS x FROM customers) s",
            "SELECT b FROM (SELECT ssn FROM customers) s(b)",
            "WITH t AS (SELECT ssn FROM customers) SELECT reverse(ssn) FROM t",
            "WITH t(a) AS (SELECT ssn FROM customers) SELECT a || '' FROM t",
            "SELECT (SELECT ssn FROM customers LIMIT 1)",
            "SELECT ARRAY(SELECT ssn FROM customers)",
            "SELECT x FROM unnest(ARRAY(SELECT ssn FROM customers)) AS x",
            "SELECT l.v FROM customers c, LATERAL (SELECT c.ssn || '' AS v) l",
        ] {
            assert_eq!(names(sql, 1), ssn, "{sql}");
        }
        // A UNION's column is made of both sides' columns.
        assert_eq!(
            names(
                "SELECT name FROM customers UNION SELECT ssn FROM customers",
                1
            ),
            vec![v(&["customers.name", "customers.ssn"])]
        );
    }

    #[test]
    fn a_whole_row_names_its_table() {
        for (sql, table) in [
            ("SELECT row_to_json(c) FROM customers c", "customers"),
            (
                "SELECT to_jsonb(c.*) FROM public.customers AS c",
                "public.customers",
            ),
            ("SELECT ROW(c.*)::text FROM customers c", "customers"),
        ] {
            let cols = columns(sql, 1);
            assert_eq!(cols[0].1, v(&[table]), "{sql}");
        }
        // Through a subquery: its columns.
        let cols = columns(
            "SELECT row_to_json(s) FROM (SELECT ssn || '' AS x FROM customers) s",
            1,
        );
        assert_eq!(cols[0].0, v(&["customers.ssn"]));
    }

    #[test]
    fn a_star_lines_the_columns_around_it_up_from_both_ends() {
        let sql = "SELECT upper(name), *, length(email) FROM (SELECT id, ssn || '' AS s FROM customers) q";
        assert_eq!(
            names(sql, 4),
            vec![
                // `name` is no column q names: it may be any of them.
                v(&["customers.id", "customers.ssn"]),
                v(&["customers.id", "customers.ssn"]),
                v(&["customers.id", "customers.ssn"]),
                v(&["customers.id", "customers.ssn"]),
            ]
        );
        // A table's own columns in a star are the server's to name.
        assert_eq!(
            names("SELECT *, ssn || '' FROM customers", 3),
            vec![v(&[]), v(&[]), v(&["customers.ssn"])]
        );
        // When the counts cannot match, every column may be anything.
        assert_eq!(
            names("SELECT ssn || '', 1 FROM customers", 3),
            vec![v(&["customers.ssn"]); 3]
        );
    }

    /// Ways a ruled column could be carried out of sight of its name:
    /// each is named (here `staff.*` or the column) in what comes out.
    #[test]
    fn a_column_carried_through_star_alias_lists_recursion_or_returning_is_named() {
        let has = |sql: &str, n: usize, name: &str| {
            let all: Vec<String> = columns(sql, n)
                .into_iter()
                .flat_map(|(c, r)| c.into_iter().chain(r.into_iter().map(|t| format!("{t}.*"))))
                .collect();
            assert!(all.iter().any(|a| a == name), "{sql}: {all:?}");
        };
        has(
            "SELECT upper(pay_grade) FROM (SELECT * FROM staff) s",
            1,
            "staff.*",
        );
        has(
            "SELECT json_agg(s) FROM (SELECT * FROM staff) s",
            1,
            "staff.*",
        );
        has(
            "SELECT NULL, NULL WHERE false UNION ALL SELECT * FROM staff",
            2,
            "staff.*",
        );
        has(
            "VALUES (0, '', '') UNION ALL TABLE public.staff",
            3,
            "public.staff.*",
        );
        has("SELECT g || '' FROM staff AS s(i, g)", 1, "staff.*");
        has(
            "WITH RECURSIVE r(a, b, n) AS (SELECT ''::text, pay_grade, 0 FROM staff UNION ALL SELECT b, a, n + 1 FROM r WHERE n = 0) SELECT a FROM r",
            1,
            "staff.pay_grade",
        );
        // A self-reference or a forward one as `TABLE name`.
        let swapped = columns(
            "WITH RECURSIVE r(a, b) AS (SELECT '', pay_grade FROM staff UNION ALL SELECT b, a FROM (TABLE r) t WHERE t.a = '') SELECT a FROM r",
            1,
        );
        assert!(
            swapped[0]
                .0
                .iter()
                .any(|n| n == "staff.pay_grade" || n == "*"),
            "{swapped:?}"
        );
        has(
            "WITH RECURSIVE a AS (TABLE b), b AS (SELECT pay_grade AS g FROM staff) SELECT g || '' FROM a",
            1,
            "*",
        );
        // A query of a recursive list may name one declared after it.
        has(
            "WITH RECURSIVE a AS (SELECT g || '' AS v FROM b), b AS (SELECT pay_grade AS g FROM staff) SELECT v FROM a",
            1,
            "*",
        );
        has(
            "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT pay_grade AS g FROM staff) SELECT upper(g) FROM a",
            1,
            "*",
        );
        // A query of the list that names only earlier ones is followed.
        has(
            "WITH RECURSIVE b AS (SELECT pay_grade AS g FROM staff), a AS (SELECT g || '' AS v FROM b) SELECT v FROM a",
            1,
            "staff.pay_grade",
        );
        has(
            "WITH \"S\" AS (SELECT pay_grade || '' AS g FROM staff) TABLE \"S\"",
            1,
            "staff.pay_grade",
        );
        has(
            "UPDATE staff SET id = id RETURNING row_to_json(old)",
            1,
            "staff.*",
        );
        // A statement the classifier cannot read may return anything.
        let opaque = Classifier::new(0).classify("SELECT (ROW(pay_grade, 0)).* FROM staff");
        if opaque[0].operation.kind == airlock_core::SqlKind::Opaque {
            let l = opaque[0].lineage.clone().unwrap();
            assert_eq!(l.columns(2)[1].names(), v(&["*"]));
        }
        let dollar = Classifier::new(0).classify("DO $$ BEGIN END $$");
        assert_eq!(
            dollar[0].lineage.as_deref(),
            Some(&super::Lineage::anything())
        );
    }

    #[test]
    fn copy_options_are_read_and_a_letter_is_not_trusted() {
        let copy = |sql: &str| {
            Classifier::new(0).classify(sql)[0]
                .lineage
                .clone()
                .and_then(|l| l.copy.clone())
        };
        let c = copy("COPY staff TO STDOUT (FORMAT csv, DELIMITER ';', HEADER)").unwrap();
        assert_eq!(c.table.as_deref(), Some("staff"));
        assert!(c.header);
        assert_eq!(
            c.format,
            super::CopyFormat::Csv {
                delimiter: b';',
                quote: b'"',
                escape: b'"',
                null: String::new()
            }
        );
        let c = copy("COPY (SELECT 1) TO STDOUT WITH CSV HEADER QUOTE '|'").unwrap();
        assert!(matches!(
            c.format,
            super::CopyFormat::Csv { quote: b'|', .. }
        ));
        assert!(copy("COPY staff TO STDOUT (FORMAT binary)").is_some());
        // sqlparser keeps a bare word's case, PostgreSQL folds it.
        assert!(copy("COPY staff TO STDOUT (FORMAT csv, DELIMITER X)").is_none());
        assert!(copy("COPY staff TO STDOUT (FORMAT csv, QUOTE 'q')").is_none());
    }

    #[test]
    fn only_is_read_as_postgresql_reads_it() {
        assert_eq!(
            names(
                "SELECT upper(pay_grade), staff.pay_grade || '' FROM ONLY staff",
                2
            ),
            vec![v(&["staff.pay_grade"]), v(&["staff.pay_grade"])]
        );
    }

    #[test]
    fn a_view_definition_names_each_column_by_position() {
        let def = " SELECT staff.id,\n    (staff.pay_grade || ''::text) AS g,\n    upper(staff.team) AS t\n   FROM staff;";
        let lineage = super::of_view(def).unwrap();
        let cols: Vec<Vec<String>> = lineage.columns(3).into_iter().map(|s| s.names()).collect();
        assert_eq!(
            cols,
            vec![
                v(&["staff.id"]),
                v(&["staff.pay_grade"]),
                v(&["staff.team"])
            ]
        );
        assert!(super::of_view("SELECT 1; SELECT 2").is_none());
        assert!(super::of_view("DELETE FROM t").is_none());
    }

    #[test]
    fn what_a_write_returns_is_named_after_what_it_wrote() {
        let w = |sql: &str, column: Option<&str>| -> Vec<String> {
            let c = Classifier::new(0).classify(sql);
            c[0].lineage
                .as_ref()
                .map(|l| l.written.names_for(column))
                .unwrap_or_default()
        };
        let update = "UPDATE staff SET team = pay_grade, id = 1 RETURNING id, team";
        assert_eq!(w(update, Some("team")), v(&["staff.pay_grade"]));
        assert_eq!(
            w(update, Some("public.staff.TEAM")),
            v(&["staff.pay_grade"])
        );
        assert!(w(update, Some("id")).is_empty());
        assert_eq!(w(update, None), v(&["staff.pay_grade"]));
        let insert = "INSERT INTO staff (id, team) SELECT id, pay_grade FROM staff RETURNING id";
        assert_eq!(w(insert, Some("team")), v(&["staff.pay_grade"]));
        assert_eq!(w(insert, Some("id")), v(&["staff.id"]));
        // Without a column list any column may hold any value.
        let any = "INSERT INTO staff SELECT id, pay_grade FROM staff RETURNING id";
        assert_eq!(w(any, Some("id")), v(&["staff.id", "staff.pay_grade"]));
        assert!(
            w(
                "INSERT INTO staff (id, team) VALUES (1, 'x') RETURNING id",
                None
            )
            .is_empty()
        );
        // Nested: PREPARE, COPY; under a WITH, anything.
        for sql in [
            "PREPARE p AS UPDATE staff SET team = pay_grade RETURNING team",
            "COPY (UPDATE staff SET team = pay_grade RETURNING team) TO STDOUT",
        ] {
            assert_eq!(w(sql, Some("team")), v(&["staff.pay_grade"]), "{sql}");
        }
        for sql in [
            "WITH x AS (SELECT 1) UPDATE staff SET team = pay_grade RETURNING team",
            "WITH u AS (UPDATE staff SET team = pay_grade RETURNING team) SELECT team FROM u",
            "WITH s AS (SELECT pay_grade AS g FROM staff) UPDATE staff SET team = (SELECT g FROM s) RETURNING team",
        ] {
            assert!(w(sql, Some("team")).contains(&"*".to_owned()), "{sql}");
        }
        // A whole row holds every column written.
        assert_eq!(w(update, Some("staff.*")), v(&["staff.pay_grade"]));
        // MERGE: whatever its clauses name, the target's columns included.
        let merge = "MERGE INTO staff t USING (SELECT 7 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET team = t.pay_grade RETURNING t.team";
        assert!(
            w(merge, Some("team")).contains(&"staff.pay_grade".to_owned()),
            "{:?}",
            w(merge, Some("team"))
        );
        // A statement that writes nothing returned has nothing written.
        assert!(w("UPDATE staff SET team = pay_grade", None).is_empty());
    }

    #[test]
    fn returning_names_the_written_table() {
        assert_eq!(
            names(
                "INSERT INTO customers AS c (ssn) VALUES ('1') RETURNING id, c.ssn || ''",
                2
            ),
            vec![v(&["customers.id"]), v(&["customers.ssn"])]
        );
        assert_eq!(
            names(
                "UPDATE customers SET name = 'x' WHERE id = 1 RETURNING upper(ssn)",
                1
            ),
            vec![v(&["customers.ssn"])]
        );
        assert_eq!(
            names(
                "DELETE FROM customers USING orders WHERE orders.cid = customers.id RETURNING customers.ssn || orders.note",
                1
            ),
            vec![v(&["customers.ssn", "orders.note"])]
        );
        assert_eq!(
            names(
                "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING ssn) SELECT ssn || '' FROM d",
                1
            ),
            vec![v(&["customers.ssn"])]
        );
    }
}
