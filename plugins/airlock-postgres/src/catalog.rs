//! Which table column a result column really is.
//!
//! A `RowDescription` names each column as the query spelled it, so
//! `SELECT ssn AS x FROM customers` calls the column `x`, and a masking rule
//! for `customers.ssn` would never see it. The same message also carries
//! the column's table (OID) and attribute number whenever the column comes
//! straight from a table, aliased or not. This module turns those into
//! `schema.table.column` by asking the target's catalog, once per column
//! (and again after a while), over a short connection of its own made with the
//! target's credential (the client's connection is never used: it may be in
//! a failed transaction, or in the middle of a COPY).
//!
//! A column of a partition or an inheritance child (`customers_2024.ssn`)
//! is also named after each table it inherits from (`customers.ssn`): a
//! rule written for the parent table covers the partition read directly,
//! under an alias.
//!
//! A column of a view (or materialized view) is also named after the table
//! columns the view's definition computes it from (read with the
//! classifier's lineage walk, through views of views): the server reports
//! the view, and a rule for the table behind it would otherwise not see
//! the column.
//!
//! Masking matches rules against all these names and the query's name, so neither an alias nor a stale or missing catalog entry
//! masks less than the query's name alone would. Entries expire after a
//! while (a column renamed, or a database restored under the same OIDs,
//! is picked up again), and a column the catalog did not know (a table
//! created in the client's still open transaction, or a column added later)
//! is asked for again after a pause.
//!
//! When the catalog cannot be asked (the target is down, say) the columns
//! keep only the names the query gave them, as before this lookup existed,
//! the detectors still run on every value, and the lookup is retried after a
//! pause. Lookups are rate-limited per target (a client creating tables in
//! a loop cannot make the gateway log in to the target at will): a lookup
//! waits for its turn rather than being skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_core::{Error, Result};
use pgwire::messages::response::ErrorResponse;

use crate::classify::Lineage;
use crate::frame::{self, Peer};
use crate::upstream::{Target, send};

/// How long to wait for the catalog (or for another lookup of it) before
/// giving up on a lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A column the catalog did not know, or a failed lookup, is asked again
/// after this long.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// A known column is asked again after this long.
const FRESH_FOR: Duration = Duration::from_secs(600);
/// At least this long between the end of one lookup of a target and the
/// start of the next.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Beyond this many cached columns the cache starts over.
const MAX_COLUMNS: usize = 100_000;
/// Beyond this many cached tables (for errors) that cache starts over.
const MAX_TABLES: usize = 10_000;
/// At most this many columns per lookup.
const MAX_PER_LOOKUP: usize = 512;
/// Levels of inheritance followed up from a column's table (partitions of
/// partitions, say); PostgreSQL allows no cycle, this only bounds the walk.
const MAX_ANCESTORS: u32 = 32;
/// Levels of views read by views followed down from a view's column.
const MAX_VIEW_DEPTH: u32 = 8;

/// The column names of one target's tables, by table OID and attribute number.
#[derive(Debug)]
pub(crate) struct Catalog {
    target: Arc<Target>,
    known: Mutex<Known>,
    /// One lookup at a time per target: connections that meet the same new
    /// table at once wait for the first lookup instead of each asking.
    lookup: tokio::sync::Mutex<()>,
}

/// A table OID and an attribute number.
type ColumnKey = (u32, i16);

/// A column's names: `schema.table.column` in its own table, then in each
/// table that table inherits from (nearest first).
pub(crate) type Names = Arc<[String]>;

/// Whether `name` (`column`, `table.column` or `schema.table.column`) is a
/// column of the system catalogs that shows sample values of other tables'
/// columns: the planner's statistics (most common values, histogram
/// bounds), which `pg_stats` shows for every column the role can read. Any
/// column rule may cover what such a column holds, so it is masked as
/// made of anything (`*`).
pub(crate) fn holds_samples(name: &str) -> bool {
    let mut parts = name.rsplit('.');
    let (Some(column), Some(table)) = (parts.next(), parts.next()) else {
        return false;
    };
    match table {
        "pg_stats" | "pg_stats_ext" | "pg_stats_ext_exprs" => matches!(
            column,
            "most_common_vals" | "histogram_bounds" | "most_common_elems" | "*"
        ),
        "pg_statistic" => column.starts_with("stavalues") || column == "*",
        "pg_statistic_ext_data" => matches!(column, "stxdmcv" | "stxdexpr" | "*"),
        _ => false,
    }
}

/// Every table of one name, each as its columns' [`Names`] in order.
pub(crate) type Relations = Arc<Vec<Vec<Names>>>;

/// What the catalog said about a column, and when: its [`Names`], or `None`
/// when it did not have the column.
type Entry = (Option<Names>, Instant);

#[derive(Debug, Default)]
struct Known {
    columns: HashMap<ColumnKey, Entry>,
    /// The columns of tables by `(schema, table)`, for errors that name a
    /// table and hold its values ([`Catalog::table_columns`]).
    tables: HashMap<(String, String), Entry>,
    /// The columns of tables by a name a query gives them
    /// ([`Catalog::relation_columns`]).
    relations: HashMap<String, (Relations, Instant)>,
    last_lookup: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Whether an entry made at `at` should be asked for again.
fn stale(entry: &Entry, now: Instant) -> bool {
    match entry {
        (Some(_), at) => now.duration_since(*at) >= FRESH_FOR,
        (None, at) => now.duration_since(*at) >= RETRY_AFTER,
    }
}

impl Known {
    fn needs(&self, key: (u32, i16), now: Instant) -> bool {
        self.columns.get(&key).is_none_or(|e| stale(e, now))
    }
}

impl Catalog {
    pub(crate) fn new(target: Arc<Target>) -> Catalog {
        Catalog {
            target,
            known: Mutex::new(Known::default()),
            lookup: tokio::sync::Mutex::new(()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        // Plain maps; no invariant spans a panic.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The [`Names`] of the column at `(table, attnum)`, if the catalog has
    /// told us.
    pub(crate) fn column(&self, table: u32, attnum: i16) -> Option<Names> {
        self.known()
            .columns
            .get(&(table, attnum))
            .and_then(|(name, _)| name.clone())
    }

    /// Whether any of these columns should be asked for.
    pub(crate) fn needs(&self, columns: &[(u32, i16)]) -> bool {
        let known = self.known();
        let now = Instant::now();
        columns
            .iter()
            .any(|&(t, a)| t != 0 && known.needs((t, a), now))
    }

    /// Asks the catalog for the columns that need it. Returns whether every
    /// one of them now has a name (false: the caller should not hold on to
    /// names made without it).
    pub(crate) async fn learn(&self, columns: &[(u32, i16)]) -> bool {
        let Ok(_one) = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup.lock()).await else {
            return false;
        };
        let (missing, failed_at, last_lookup) = {
            let known = self.known();
            let now = Instant::now();
            let mut missing: Vec<(u32, i16)> = columns
                .iter()
                .copied()
                .filter(|&(t, a)| t != 0 && known.needs((t, a), now))
                .collect();
            missing.sort_unstable();
            missing.dedup();
            (missing, known.failed_at, known.last_lookup)
        };
        if missing.is_empty() {
            // Another connection asked while we waited.
            return self.all_named(columns);
        }
        if !wait_turn(failed_at, last_lookup).await {
            return false;
        }
        for asked in missing.chunks(MAX_PER_LOOKUP) {
            match self.ask(asked).await {
                Ok(found) => {
                    let now = Instant::now();
                    let mut known = self.known();
                    known.answered(now);
                    if known.columns.len() + asked.len() > MAX_COLUMNS {
                        known.columns.clear();
                    }
                    let mut names: HashMap<ColumnKey, Vec<String>> = HashMap::new();
                    for (key, name) in found {
                        names.entry(key).or_default().push(name);
                    }
                    for key in asked {
                        let entry = names.remove(key).map(Names::from);
                        known.columns.insert(*key, (entry, now));
                    }
                }
                Err(e) => return self.failed(&e),
            }
        }
        self.all_named(columns)
    }

    /// The columns of `schema.table`, each as `schema.table.column`, in
    /// their order in the table (as a row of it is shown), if the catalog
    /// has them: for an error that holds a row's values without their
    /// columns' names (`Failing row contains (…)`). `None` when the
    /// catalog cannot be asked or does not know the table.
    pub(crate) async fn table_columns(&self, schema: &str, table: &str) -> Option<Names> {
        let key = (schema.to_owned(), table.to_owned());
        let cached = |known: &Known| match known.tables.get(&key) {
            Some(e) if !stale(e, Instant::now()) => Some(e.0.clone()),
            _ => None,
        };
        let _one = match self.turn(cached).await {
            Turn::Known(names) => return names,
            Turn::Ask(one) => one,
            Turn::Not => return None,
        };
        // The names come from the server's own error, but are still only
        // ever string constants here: E'' reads backslashes as escapes
        // whatever standard_conforming_strings says, so both are doubled.
        let sql = format!(
            "SELECT n.nspname, c.relname, a.attname \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE n.nspname OPERATOR(pg_catalog.=) {}::pg_catalog.name \
             AND c.relname OPERATOR(pg_catalog.=) {}::pg_catalog.name \
             AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            literal(schema),
            literal(table)
        );
        let mut found = Vec::new();
        let asked = self.run(sql, |cells| {
            let text = |i: usize| std::str::from_utf8(cells.get(i).copied()??).ok();
            if let (Some(s), Some(t), Some(c)) = (text(0), text(1), text(2)) {
                found.push(format!("{s}.{t}.{c}"));
            }
        });
        match asked.await {
            Ok(()) => {
                let now = Instant::now();
                let names = (!found.is_empty()).then(|| Names::from(found));
                let mut known = self.known();
                known.answered(now);
                if known.tables.len() >= MAX_TABLES {
                    known.tables.clear();
                }
                known.tables.insert(key, (names.clone(), now));
                names
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// The answer `cached` finds (before or after waiting for another
    /// lookup of this target), or this lookup's turn: the lookup lock,
    /// held while the lookup runs.
    async fn turn<T>(&self, cached: impl Fn(&Known) -> Option<T>) -> Turn<'_, T> {
        if let Some(known) = cached(&self.known()) {
            return Turn::Known(known);
        }
        let Ok(one) = tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup.lock()).await else {
            return Turn::Not;
        };
        let (failed_at, last_lookup) = {
            let known = self.known();
            if let Some(found) = cached(&known) {
                return Turn::Known(found);
            }
            (known.failed_at, known.last_lookup)
        };
        if wait_turn(failed_at, last_lookup).await {
            Turn::Ask(one)
        } else {
            Turn::Not
        }
    }

    /// Whether every one of these columns has a name from the catalog.
    pub(crate) fn all_named(&self, columns: &[(u32, i16)]) -> bool {
        let known = self.known();
        columns
            .iter()
            .all(|&(t, a)| t == 0 || matches!(known.columns.get(&(t, a)), Some((Some(_), _))))
    }

    fn failed(&self, e: &Error) -> bool {
        tracing::warn!(
            target_name = %self.target.name,
            error = %e,
            "cannot read the target's catalog: masking rules match result columns by the names the query gave them until it can"
        );
        self.known().failed_at = Some(Instant::now());
        false
    }

    /// One query over a connection of its own.
    /// Returns each column's names in the order of [`Names`].
    async fn ask(&self, columns: &[(u32, i16)]) -> Result<Vec<(ColumnKey, String)>> {
        // Only numbers the gateway formatted itself go into the text, and
        // every operator and type is pg_catalog's, whatever the role's
        // search_path holds (no SET: a pooler in front of the target would
        // hand that setting on to its next client).
        let list = columns
            .iter()
            .map(|(t, a)| {
                format!(
                    "(a.attrelid OPERATOR(pg_catalog.=) {t}::pg_catalog.oid \
                     AND a.attnum OPERATOR(pg_catalog.=) {a}::pg_catalog.int2)"
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        self.ask_where(&list).await
    }

    /// The columns of every table or view named `name` (`table`, in any
    /// schema, or `schema.table`; letters in any case), each table's in
    /// their order with their [`Names`]: for names a query gives (a
    /// computed column made of `t.c`, a `COPY t TO STDOUT`), which say
    /// neither the schema nor what `t` is (a view, a partition). An empty
    /// list when there is no such table; `None` when the catalog cannot
    /// be asked. Answers are kept as columns' names are.
    pub(crate) async fn relation_columns(&self, name: &str) -> Option<Relations> {
        // No such table yet is asked again sooner, as a missing column is.
        let cached = |known: &Known| match known.relations.get(name) {
            Some((found, at))
                if at.elapsed()
                    < if found.is_empty() {
                        RETRY_AFTER
                    } else {
                        FRESH_FOR
                    } =>
            {
                Some(found.clone())
            }
            _ => None,
        };
        let _one = match self.turn(cached).await {
            Turn::Known(found) => return Some(found),
            Turn::Ask(one) => one,
            Turn::Not => return None,
        };
        let lower = |s: &str| {
            format!(
                "pg_catalog.lower({}::pg_catalog.text) OPERATOR(pg_catalog.=) pg_catalog.lower({})",
                s,
                literal(name.rsplit('.').next().unwrap_or(name))
            )
        };
        let relation = match name.rsplit_once('.') {
            Some((schema, _)) => format!(
                "pg_catalog.lower(n.nspname::pg_catalog.text) OPERATOR(pg_catalog.=) pg_catalog.lower({}) AND {}",
                literal(schema),
                lower("c.relname")
            ),
            None => lower("c.relname"),
        };
        let cond = format!(
            "a.attrelid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT c.oid FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
               WHERE {relation})) \
             AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 \
             AND a.attgenerated OPERATOR(pg_catalog.=) ''::pg_catalog.\"char\""
        );
        let found = self.ask_where(&cond).await;
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let mut by_table: BTreeMap<u32, BTreeMap<i16, Vec<String>>> = BTreeMap::new();
        for ((table, attnum), name) in found {
            by_table
                .entry(table)
                .or_default()
                .entry(attnum)
                .or_default()
                .push(name);
        }
        let tables: Relations = Arc::new(
            by_table
                .into_values()
                .map(|cols| cols.into_values().map(Names::from).collect())
                .collect(),
        );
        let now = Instant::now();
        let mut known = self.known();
        known.answered(now);
        if known.relations.len() >= MAX_TABLES {
            known.relations.clear();
        }
        known
            .relations
            .insert(name.to_owned(), (tables.clone(), now));
        Some(tables)
    }

    /// The names of the columns `cond` (on `pg_attribute a`) selects.
    async fn ask_where(&self, list: &str) -> Result<Vec<(ColumnKey, String)>> {
        // `up` pairs each asked table with itself and every table it
        // inherits from (partitions included), nearest first; a column
        // keeps its name in its parents (PostgreSQL requires that).
        let sql = format!(
            "WITH RECURSIVE up(rel, anc, depth) AS ( \
               SELECT DISTINCT a.attrelid, a.attrelid, 0 FROM pg_catalog.pg_attribute a WHERE ({list}) \
               UNION ALL \
               SELECT up.rel, i.inhparent, up.depth OPERATOR(pg_catalog.+) 1 \
               FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) up.anc \
               WHERE up.depth OPERATOR(pg_catalog.<) {MAX_ANCESTORS}) \
             SELECT a.attrelid, a.attnum, n.nspname, c.relname, a.attname, r.relkind \
             FROM pg_catalog.pg_attribute a \
             JOIN up ON up.rel OPERATOR(pg_catalog.=) a.attrelid \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) up.anc \
             JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE ({list}) AND NOT a.attisdropped \
             ORDER BY up.depth"
        );
        let mut found = Vec::new();
        let mut views = Vec::new();
        self.run(sql, |cells| {
            if let Some((key, name, view)) = catalog_row(cells) {
                if view {
                    views.push(key);
                }
                found.push((key, name));
            }
        })
        .await?;
        if !views.is_empty() {
            found.extend(self.view_columns(&views).await?);
        }
        Ok(found)
    }

    /// What the asked columns of views are made of: the names of the
    /// table columns (and `table.*` for whole rows) their definitions
    /// compute them from, through views of views. A definition this
    /// gateway cannot read makes each of its columns a whole row of every
    /// table it reads: masking too much, not too little.
    async fn view_columns(&self, asked: &[ColumnKey]) -> Result<Vec<(ColumnKey, String)>> {
        let oids = asked
            .iter()
            .map(|(t, _)| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // The asked views and every view they read, to MAX_VIEW_DEPTH
        // levels: each view's columns in order (with its definition on the
        // first), and each table it reads (attnum -1).
        let sql = format!(
            "WITH RECURSIVE vs(oid, depth) AS ( \
               SELECT c.oid, 0 FROM pg_catalog.pg_class c \
               WHERE c.oid OPERATOR(pg_catalog.=) ANY ('{{{oids}}}'::pg_catalog.oid[]) \
               UNION \
               SELECT d.refobjid, vs.depth OPERATOR(pg_catalog.+) 1 FROM vs \
               JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) vs.oid \
               JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                 AND d.objid OPERATOR(pg_catalog.=) w.oid \
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.refobjid \
               WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{{v,m}}'::pg_catalog.\"char\"[]) \
                 AND d.refobjid OPERATOR(pg_catalog.<>) vs.oid \
                 AND vs.depth OPERATOR(pg_catalog.<) {MAX_VIEW_DEPTH}), \
             v AS (SELECT DISTINCT oid FROM vs) \
             SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, \
               CASE WHEN a.attnum OPERATOR(pg_catalog.=) 1::pg_catalog.int2 \
                 THEN pg_catalog.pg_get_viewdef(c.oid) END \
             FROM v JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) v.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
             WHERE a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped \
             UNION ALL \
             SELECT DISTINCT v.oid, n.nspname, c.relname, -1::pg_catalog.int2, NULL::pg_catalog.name, NULL::pg_catalog.text \
             FROM v JOIN pg_catalog.pg_rewrite w ON w.ev_class OPERATOR(pg_catalog.=) v.oid \
             JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
               AND d.objid OPERATOR(pg_catalog.=) w.oid \
             JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.refobjid \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE d.refobjid OPERATOR(pg_catalog.<>) v.oid \
             ORDER BY 1, 4"
        );
        let mut views = Views::default();
        self.run(sql, |cells| views.add_row(cells)).await?;
        Ok(views.names_of(asked))
    }

    /// Runs one query over a connection of its own, handing each row's
    /// cells (text format) to `row`, within [`LOOKUP_TIMEOUT`].
    async fn run(&self, sql: String, row: impl FnMut(&[Option<&[u8]>])) -> Result<()> {
        tokio::time::timeout(LOOKUP_TIMEOUT, self.query(sql, row))
            .await
            .unwrap_or_else(|_| {
                Err(Error::Upstream(format!(
                    "the catalog of target {} did not answer within {LOOKUP_TIMEOUT:?}",
                    self.target.name
                )))
            })
    }

    async fn query(&self, sql: String, mut row: impl FnMut(&[Option<&[u8]>])) -> Result<()> {
        let mut params = BTreeMap::new();
        params.insert(
            "application_name".to_string(),
            "airlock-catalog".to_string(),
        );
        let mut conn = self
            .target
            .connect(&params, LOOKUP_TIMEOUT)
            .await
            .map_err(|e| e.error)?;
        let mut body = sql.into_bytes();
        body.push(0);
        send(&mut conn.write, &frame::raw(b'Q', &body), &self.target).await?;
        let mut error = None;
        loop {
            let Some(frame) = conn.reader.next().await? else {
                return Err(Error::Upstream(format!(
                    "the catalog connection to target {} closed before the answer",
                    self.target.name
                )));
            };
            match frame.tag {
                b'D' => {
                    let cells = crate::rows::split_cells(frame.body()).map_err(Error::Upstream)?;
                    row(&cells);
                }
                b'E' => {
                    let e: ErrorResponse = frame.decode(Peer::Upstream)?;
                    error = Some(crate::relay::error_text(&e));
                }
                b'Z' => break,
                _ => {}
            }
        }
        // Terminate; the server closes its side.
        let _ = send(&mut conn.write, &frame::raw(b'X', &[]), &self.target).await;
        match error {
            Some(e) => Err(Error::Upstream(format!(
                "the catalog of target {} refused the lookup: {e}",
                self.target.name
            ))),
            None => Ok(()),
        }
    }
}

impl Known {
    /// A lookup was answered at `now`.
    fn answered(&mut self, now: Instant) {
        // From the end of a lookup: the interval is time the target has
        // without the gateway's logins.
        self.last_lookup = Some(now);
        self.failed_at = None;
    }
}

/// What [`Catalog::turn`] found.
enum Turn<'a, T> {
    /// The answer, already known.
    Known(T),
    /// Ask now, holding the lookup lock.
    Ask(tokio::sync::MutexGuard<'a, ()>),
    /// No lookup now (the lock or the catalog is not answering).
    Not,
}

/// Waits for the target's next lookup (the caller holds the lookup lock).
/// False while lookups are failing. The rate limit waits rather than
/// skips: a skipped lookup would leave columns with the query's names
/// alone, and a client could arrange that on purpose by having another
/// lookup run first.
async fn wait_turn(failed_at: Option<Instant>, last_lookup: Option<Instant>) -> bool {
    if failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
        return false;
    }
    if let Some(last) = last_lookup {
        let rest = MIN_INTERVAL.saturating_sub(last.elapsed());
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
    }
    true
}

/// A string constant for the catalog's queries: `E'…'` with backslashes
/// and quotes doubled.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// One catalog row: attrelid, attnum, schema, table, column, and the
/// column's own relation's kind (text format). True for a view's column.
fn catalog_row(cells: &[Option<&[u8]>]) -> Option<(ColumnKey, String, bool)> {
    let text = |i: usize| -> Option<&str> { std::str::from_utf8(cells.get(i).copied()??).ok() };
    let table: u32 = text(0)?.parse().ok()?;
    let attnum: i16 = text(1)?.parse().ok()?;
    let qualified = format!("{}.{}.{}", text(2)?, text(3)?, text(4)?);
    let view = matches!(text(5), Some("v" | "m"));
    Some(((table, attnum), qualified, view))
}

/// Views (and materialized views) as the catalog describes them.
#[derive(Debug, Default)]
struct Views {
    by_oid: BTreeMap<u32, View>,
}

#[derive(Debug, Default)]
struct View {
    schema: String,
    name: String,
    /// Column names in order.
    columns: Vec<String>,
    /// What each column is made of; `None`: the definition was not read.
    lineage: Option<Lineage>,
    /// Every table the definition reads, as `schema.table`.
    reads: Vec<String>,
}

impl Views {
    /// One row of [`Catalog::view_columns`]' answer.
    fn add_row(&mut self, cells: &[Option<&[u8]>]) {
        let text = |i: usize| -> Option<&str> { std::str::from_utf8(cells.get(i).copied()??).ok() };
        let (Some(oid), Some(schema), Some(name), Some(attnum)) = (
            text(0).and_then(|t| t.parse::<u32>().ok()),
            text(1),
            text(2),
            text(3).and_then(|t| t.parse::<i16>().ok()),
        ) else {
            return;
        };
        if attnum < 0 {
            // A table the view reads (`schema` and `name` are the table's).
            let reads = format!("{schema}.{name}");
            self.by_oid.entry(oid).or_default().reads.push(reads);
            return;
        }
        let view = self.by_oid.entry(oid).or_default();
        view.schema = schema.to_owned();
        view.name = name.to_owned();
        if let Some(column) = text(4) {
            view.columns.push(column.to_owned());
        }
        if let Some(definition) = text(5) {
            view.lineage = crate::classify::view_lineage(definition);
        }
    }

    /// The extra names of each asked view column.
    fn names_of(&self, asked: &[ColumnKey]) -> Vec<(ColumnKey, String)> {
        let mut out = Vec::new();
        for &(oid, attnum) in asked {
            let mut names = Vec::new();
            self.column_names(oid, attnum, 0, &mut names);
            names.sort_unstable();
            names.dedup();
            out.extend(names.into_iter().map(|n| ((oid, attnum), n)));
        }
        out
    }

    /// Adds the names of what column `attnum` of view `oid` is made of,
    /// following views it reads.
    fn column_names(&self, oid: u32, attnum: i16, depth: u32, out: &mut Vec<String>) {
        let Some(view) = self.by_oid.get(&oid) else {
            return;
        };
        let Some(lineage) = &view.lineage else {
            // Unread: the column may hold anything the view reads.
            for table in &view.reads {
                self.whole_rows(table, depth, out);
            }
            return;
        };
        let sources = lineage.columns(view.columns.len());
        let Some(own) = usize::try_from(attnum)
            .ok()
            .and_then(|a| a.checked_sub(1))
            .and_then(|i| sources.get(i))
        else {
            return;
        };
        for name in own.names() {
            if depth < MAX_VIEW_DEPTH
                && let Some((table, column)) = name.rsplit_once('.')
                && let Some((&inner, inner_view)) = self.find(table)
            {
                if column == "*" {
                    self.whole_rows(table, depth, out);
                } else if let Some(i) = inner_view.columns.iter().position(|c| c == column) {
                    let a = i16::try_from(i + 1).unwrap_or(i16::MAX);
                    self.column_names(inner, a, depth + 1, out);
                }
            }
            out.push(name);
        }
    }

    /// Adds a whole row of `table`, and what every column of it is made of
    /// when it is a view.
    fn whole_rows(&self, table: &str, depth: u32, out: &mut Vec<String>) {
        if depth < MAX_VIEW_DEPTH
            && let Some((&inner, view)) = self.find(table)
        {
            for a in 1..=view.columns.len() {
                let a = i16::try_from(a).unwrap_or(i16::MAX);
                self.column_names(inner, a, depth + 1, out);
            }
        }
        out.push(format!("{table}.*"));
    }

    /// A view by the name a definition gives it (`name` or `schema.name`).
    fn find(&self, table: &str) -> Option<(&u32, &View)> {
        let (schema, name) = match table.rsplit_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, table),
        };
        // (Names from a query are folded to lower case, quoted or not.)
        self.by_oid.iter().find(|(_, v)| {
            v.name.eq_ignore_ascii_case(name)
                && schema.is_none_or(|s| s.eq_ignore_ascii_case(&v.schema))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_rows_become_qualified_names() {
        let cells: Vec<Option<&[u8]>> = vec![
            Some(b"16384"),
            Some(b"3"),
            Some(b"public"),
            Some(b"customers"),
            Some(b"ssn"),
        ];
        let (key, col, view) = catalog_row(&cells).unwrap();
        assert!(!view);
        assert_eq!(key, (16384, 3));
        assert_eq!(col, "public.customers.ssn");
        // A row the gateway cannot read is skipped, not guessed at.
        let bad: Vec<Option<&[u8]>> = vec![Some(b"x"), Some(b"3"), None, None, None];
        assert!(catalog_row(&bad).is_none());
    }
}
