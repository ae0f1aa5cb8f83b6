//! The SQL statement classifier: turns a query string into one
//! [`SqlOperation`] per statement, which policy then judges.
//!
//! ```
//! use airlock_core::{Access, SqlKind};
//! use airlock_postgres::classify::Classifier;
//!
//! let classifier = Classifier::new(1024);
//! let ops = classifier.classify("SELECT * FROM orders; DELETE FROM s.carts WHERE id = 1");
//! assert_eq!(ops[0].operation.kind, SqlKind::Select);
//! assert_eq!(ops[1].operation.kind, SqlKind::Delete);
//! assert_eq!(ops[1].operation.tables[0].name, "s.carts");
//! assert_eq!(ops[1].operation.tables[0].access, Access::Write);
//! assert_eq!(ops[1].operation.has_where, Some(true));
//! ```
//!
//! # How a string is judged
//!
//! 1. A small PostgreSQL-aware lexer splits the string at semicolons outside
//!    quotes, dollar quotes, quoted identifiers and (nested) comments. Pieces
//!    with only comments are dropped, so an empty string gives an empty list
//!    (the server answers it with `EmptyQueryResponse` and runs nothing).
//! 2. sqlparser ([`PostgreSqlDialect`]) parses each piece and must find exactly
//!    one statement in it. The two splitters thereby check each other: where
//!    they disagree, the piece is opaque. One unparseable statement does not
//!    make its neighbours opaque.
//! 3. The statement's shape gives its kind, object and write targets; a walk
//!    over everything nested in it adds the tables read (subqueries, joins,
//!    CTEs, `INSERT ... SELECT` sources; CTE names are not tables), the
//!    data-modifying statements inside CTEs, `SELECT ... INTO`, and calls of
//!    known side-effecting functions (listed in `classify/functions.rs`).
//!
//! # What is [`SqlKind::Opaque`], and why
//!
//! Opaque means "could be anything": policy can deny it or send it to review,
//! and never treats it as a read.
//!
//! * Anything sqlparser does not parse (`DO $$ ... $$`, `ALTER SYSTEM`,
//!   `REFRESH MATERIALIZED VIEW`, vendor syntax, garbage such as `DR/**/OP`),
//!   except a few statements whose keywords leave no doubt (`VACUUM (...)`,
//!   `CREATE RULE`, `GRANT role TO user`; see `classify/fallback.rs`).
//! * A string the lexer cannot split reliably becomes **one** opaque entry for
//!   the whole string: an unterminated quote or comment (the server rejects it
//!   anyway), or a plain string literal with a backslash before a quote, whose
//!   end (and so the statement boundaries) depends on `standard_conforming_strings`,
//!   or a `$` that sqlparser would read differently from PostgreSQL (a
//!   dollar-quote tag with a non-ASCII character, `$1abc$`): there sqlparser
//!   could see a string where the server sees a statement. Likewise a
//!   backslash right after a non-ASCII byte and before a quote or backslash
//!   in an escape string: in SJIS, BIG5, GBK, GB18030 or UHC the two bytes
//!   are one character, and the quote ends the string.
//! * `COPY ... TO/FROM PROGRAM` (a shell command on the database host) and
//!   `COPY ... TO/FROM 'file'` (files on the database host, not the client's
//!   data stream that `CopyIn`/`CopyOut` describe).
//! * Statements calling functions that run SQL given as text, read tables
//!   named in strings, or touch files or other servers (`dblink_exec`,
//!   `query_to_xml`, `lo_export`, `pg_read_file`, ...).
//! * `LOAD` (loads a shared library into the server) and statements of other
//!   dialects that sqlparser happens to accept.
//!
//! # Things that look like reads but are not
//!
//! * `EXPLAIN ANALYZE <statement>` executes it: unless the statement is a plain
//!   read, the result is the statement's own classification (an `EXECUTE`
//!   inside keeps its [`Classified::execute`]). Plain `EXPLAIN` is `Explain`
//!   with the inner tables as reads.
//! * `SELECT ... INTO t` is `Create` with object `table`.
//! * `WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x` is a `Delete` whose
//!   `has_where` is the CTE's; with several data-modifying parts the strongest
//!   wins (delete, update, merge, insert) and `has_where` is true only if every
//!   part of that kind has one.
//! * A read (`SELECT`, `COPY ... TO STDOUT`) calling a known side-effecting
//!   function (`pg_terminate_backend`, `set_config`, `nextval`, ...) is a `Call`.
//! * `EXECUTE p(...)` whose parameters call such a function is opaque (with no
//!   [`Classified::execute`]), since the connector would otherwise judge it as
//!   the prepared statement alone.
//! * sqlparser reads `UPDATE ONLY t` as table `only` aliased `t`; the
//!   classifier reports `t`. Any other reserved word where a table name should
//!   be means sqlparser read the statement differently from PostgreSQL, and the
//!   statement is opaque.

mod analyze;
mod fallback;
mod functions;
mod lex;
mod lineage;
#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use std::borrow::Cow;

use airlock_core::mask::Masker;
use airlock_core::{MaskCounts, SqlKind, SqlOperation};
use lru::LruCache;

pub(crate) use lineage::of_view as view_lineage;
pub use lineage::{CopyFormat, CopyOut, Lineage, Sources};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Longest query string kept in the cache. Longer ones (bulk inserts, mostly
/// unique) are classified every time, so the cache stays within about
/// `capacity` × this many bytes of text.
pub const MAX_CACHED_LEN: usize = 8 * 1024;

/// Masks a statement's text for the audit record and for approvers (the
/// session's [`airlock_core::TextMasker`]): as one string, where
/// the detectors see every value in its context (`PASSWORD 'x'`), as long
/// as that leaves the statement's code as it was. A detector span may run
/// from a comment across code into another (`/* -----BEGIN PRIVATE
/// KEY----- */ OR id > 0 /* -----END PRIVATE KEY----- */`), and an
/// approver would then approve, and the trail hold, a statement without
/// the code that runs. Such a text is masked value by value instead (each
/// string, quoted name, number and comment on its own), which leaves every
/// piece of code in sight. A text that does not lex is masked as one
/// string.
pub fn mask_text(masker: &Masker, text: &str, counts: &mut MaskCounts) -> Option<String> {
    let mut whole = MaskCounts::new();
    let masked = match masker.mask_str(None, text, &mut whole) {
        Cow::Owned(masked) if masked != text => masked,
        _ => return None,
    };
    // Unchanged code (the usual case), or a text that does not lex: as one
    // string. Only otherwise is the text cut into parts.
    let before = lex::code(text);
    let parts = match before {
        Some(before) if lex::code(&masked).is_none_or(|after| after != before) => lex::parts(text),
        _ => None,
    };
    let Some(parts) = parts else {
        add_counts(counts, whole);
        return Some(masked);
    };
    let mut out = String::with_capacity(masked.len());
    for (span, part) in parts {
        let lex::Part::Value { content, closers } = part else {
            out.push_str(&text[span]);
            continue;
        };
        out.push_str(&text[span.start..content.start]);
        let value = &text[content.clone()];
        match masker.mask_str(None, value, counts) {
            Cow::Owned(m) if closers.iter().any(|c| m.contains(c.as_str())) => {
                out.push_str("<MASKED>");
            }
            m => out.push_str(&m),
        }
        out.push_str(&text[content.end..span.end]);
    }
    Some(out)
}

fn add_counts(into: &mut MaskCounts, from: MaskCounts) {
    for (name, n) in from {
        *into.entry(name).or_insert(0) += n;
    }
}

/// One classified statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// The statement's operation. For PREPARE: kind Prepare, tables/has_where of the inner statement.
    pub operation: SqlOperation,
    /// `PREPARE name AS inner`: the name and the inner statement's own operation.
    pub prepare: Option<(String, SqlOperation)>,
    /// `EXECUTE name (...)`: the name (the connector substitutes the prepared operation).
    pub execute: Option<String>,
    /// `DEALLOCATE name` / `DEALLOCATE ALL` (None inside = ALL). `DISCARD ALL`,
    /// which also drops every prepared statement, sets `Some(None)` too.
    pub deallocate: Option<Option<String>>,
    /// `FETCH … FROM name`: the portal it reads (which may be one a
    /// protocol Bind made and has not run yet: fetching runs it).
    pub fetch: Option<String>,
    /// What the statement's computed result columns are made of (`None`:
    /// it returns no rows of its own, or none made of a table column). For
    /// `PREPARE` and `DECLARE`, what the name it makes returns.
    pub lineage: Option<Arc<Lineage>>,
    /// `DECLARE name CURSOR FOR …`: the cursor's name.
    pub declare: Option<String>,
}

impl Classified {
    /// A statement that is nothing but its operation.
    fn plain(operation: SqlOperation) -> Self {
        Classified {
            operation,
            prepare: None,
            execute: None,
            deallocate: None,
            fetch: None,
            lineage: None,
            declare: None,
        }
    }

    /// A statement that could be anything, and return anything: each
    /// computed column it returns may be any ruled column.
    fn opaque(text: &str) -> Self {
        Classified {
            lineage: Some(Arc::new(Lineage::anything())),
            ..Classified::plain(SqlOperation {
                text: text.to_owned(),
                kind: SqlKind::Opaque,
                object: None,
                tables: Vec::new(),
                has_where: None,
            })
        }
    }
}

/// Classifies query strings, caching the result per distinct string and per
/// *shape*.
///
/// One classifier is shared by all sessions of a connector: it is `Send + Sync`
/// and the caches are bounded LRUs behind mutexes that are held only to look
/// up or store a result, never while parsing.
///
/// Why a shape cache: clients that do not use bind parameters send the same
/// statement with different literals (`... WHERE aid = 4711`), so the exact
/// text rarely repeats. A shape is the text with the contents of every string
/// and number literal blanked out, everything else (whitespace, comments,
/// identifiers) kept byte for byte. Nothing the classifier reports depends on
/// a literal's value, with one exception it therefore never shape-caches:
/// `EXPLAIN` options such as `ANALYZE false`. `PREPARE` is not shape-cached
/// either, since its result carries the inner statement's text.
pub struct Classifier {
    cache: Option<Mutex<LruCache<String, Arc<[Classified]>>>>,
    shapes: Option<Mutex<LruCache<String, Arc<[Classified]>>>>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Classifier");
        match &self.cache {
            Some(cache) => {
                let cache = lock(cache);
                d.field("capacity", &cache.cap().get())
                    .field("cached", &cache.len())
            }
            None => d.field("capacity", &0),
        }
        .finish()
    }
}

impl Classifier {
    /// A classifier that remembers the results for up to `capacity` distinct
    /// query strings and as many shapes (each at most [`MAX_CACHED_LEN`]
    /// bytes); 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        let lru = || NonZeroUsize::new(capacity).map(|cap| Mutex::new(LruCache::new(cap)));
        Classifier {
            cache: lru(),
            shapes: lru(),
        }
    }

    /// One entry per statement of `sql`, in order. Empty when `sql` holds no
    /// statement (only whitespace, comments and semicolons): the server runs
    /// nothing for it. A string that cannot be split reliably is a single
    /// opaque entry. Repeated strings return the same `Arc` from the cache.
    pub fn classify(&self, sql: &str) -> Arc<[Classified]> {
        let (Some(cache), Some(shapes)) = (
            self.cache.as_ref().filter(|_| sql.len() <= MAX_CACHED_LEN),
            self.shapes.as_ref(),
        ) else {
            return classify_uncached(sql).into();
        };
        if let Some(hit) = lock(cache).get(sql) {
            return Arc::clone(hit);
        }
        let Ok(pieces) = lex::split(sql) else {
            return vec![Classified::opaque(sql.trim())].into();
        };
        let Some(shape) = lex::shape(sql, &pieces) else {
            // No literals (or a statement whose result depends on them): the
            // exact text is the key.
            let result: Arc<[Classified]> = classify_pieces(&pieces).into();
            lock(cache).put(sql.to_owned(), Arc::clone(&result));
            return result;
        };
        let template = lock(shapes).get(&shape).cloned();
        if let Some(template) = template
            && template.len() == pieces.len()
        {
            // The same statement with other literals: only the texts differ.
            return template
                .iter()
                .zip(&pieces)
                .map(|(c, piece)| Classified {
                    operation: SqlOperation {
                        text: piece.text.to_owned(),
                        kind: c.operation.kind,
                        object: c.operation.object.clone(),
                        tables: c.operation.tables.clone(),
                        has_where: c.operation.has_where,
                    },
                    prepare: c.prepare.clone(),
                    execute: c.execute.clone(),
                    deallocate: c.deallocate.clone(),
                    fetch: c.fetch.clone(),
                    lineage: c.lineage.clone(),
                    declare: c.declare.clone(),
                })
                .collect();
        }
        let result = classify_pieces(&pieces);
        if result.iter().all(|c| c.prepare.is_none()) {
            lock(shapes).put(shape, result.clone().into());
        }
        result.into()
    }
}

/// A cache holds plain data and no invariant spans a panic: a poisoned lock
/// is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn classify_uncached(sql: &str) -> Vec<Classified> {
    match lex::split(sql) {
        Ok(pieces) => classify_pieces(&pieces),
        Err(_) => vec![Classified::opaque(sql.trim())],
    }
}

fn classify_pieces(pieces: &[lex::Piece<'_>]) -> Vec<Classified> {
    pieces.iter().map(classify_piece).collect()
}

fn classify_piece(piece: &lex::Piece<'_>) -> Classified {
    let mut classified = classify_piece_as(piece);
    if classified.operation.kind == SqlKind::Opaque {
        classified.lineage = Some(Arc::new(Lineage::anything()));
    }
    classified
}

fn classify_piece_as(piece: &lex::Piece<'_>) -> Classified {
    if piece.has_unicode_escapes() {
        return Classified::opaque(piece.text);
    }
    // sqlparser knows other dialects' VACUUM and ANALYZE and takes PostgreSQL's
    // `VACUUM ANALYZE` for a vacuum of table `analyze`.
    if fallback::is_maintenance(piece)
        && let Some(classified) = fallback::classify(piece)
    {
        return classified;
    }
    let parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(piece.text)
        .and_then(|mut parser| parser.parse_statements());
    match parsed.as_deref() {
        Ok([stmt]) => {
            let prepare_text = match stmt {
                sqlparser::ast::Statement::Prepare { .. } => lex::prepare_body(piece),
                _ => None,
            };
            let mut classified = analyze::classify_statement(stmt, piece.text, prepare_text);
            if classified.operation.kind != SqlKind::Opaque {
                classified.lineage = lineage::of_statement(stmt).map(Arc::new);
                classified.declare = lineage::cursor_name(stmt);
            }
            classified
        }
        // The splitters disagree about where statements end.
        Ok(_) => Classified::opaque(piece.text),
        Err(_) => fallback::classify(piece).unwrap_or_else(|| Classified::opaque(piece.text)),
    }
}
