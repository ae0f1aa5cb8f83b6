//! Which table column a result column really is.
//!
//! A `RowDescription` names each column as the query spelled it, so
//! `SELECT ssn AS x FROM customers` calls the column `x`, and a masking rule
//! for `customers.ssn` would never see it. The same message also carries
//! the column's table (OID) and attribute number whenever the column comes
//! straight from a table, aliased or not. This module turns those into
//! `schema.table.column` by asking the target's catalog, once per table and
//! gateway process, over a short connection of its own made with the
//! target's credential (the client's connection is never used: it may be in
//! a failed transaction, or in the middle of a COPY).
//!
//! Table OIDs and attribute numbers do not change while a table exists, and
//! PostgreSQL does not reuse the number of a dropped column, so a cached name
//! is never another column's name. A renamed column keeps its old name here
//! until the gateway restarts: its rules follow the data it held.
//!
//! When the catalog cannot be asked (the target is down, say) the columns
//! keep the names the query gave them, as before this lookup existed, the
//! detectors still run on every value, and the lookup is retried after a
//! pause.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use airlock_core::{Error, Result};
use pgwire::messages::response::ErrorResponse;
use tokio::io::AsyncWriteExt;

use crate::frame::{self, Peer};
use crate::upstream::Target;

/// How long to wait for the catalog before giving up on a lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed lookup, columns keep their query names this long before
/// the catalog is asked again (not once per statement while a target is down).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// Beyond this many cached columns the cache starts over.
const MAX_COLUMNS: usize = 100_000;
/// At most this many tables per catalog query.
const MAX_TABLES_PER_QUERY: usize = 256;

/// A column of a table, as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableColumn {
    /// `schema.table.column`: what masking rules match.
    pub(crate) qualified: Arc<str>,
}

/// The column names of one target's tables, by table OID and attribute number.
#[derive(Debug)]
pub(crate) struct Catalog {
    target: Arc<Target>,
    known: Mutex<Known>,
    /// One lookup at a time per target: connections that meet the same new
    /// table at once wait for the first lookup instead of each asking.
    lookup: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Known {
    columns: HashMap<(u32, i16), TableColumn>,
    /// Tables already asked for (a table with no visible column is not
    /// asked for again).
    tables: HashSet<u32>,
    failed_at: Option<Instant>,
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

    /// The column at `(table, attnum)`, if the catalog has told us.
    pub(crate) fn column(&self, table: u32, attnum: i16) -> Option<TableColumn> {
        self.known().columns.get(&(table, attnum)).cloned()
    }

    /// Makes sure the columns of `tables` are known, asking the catalog for
    /// the ones that are not. Returns false when they could not be learned
    /// (the caller falls back to the names the query gave).
    pub(crate) async fn learn(&self, tables: &[u32]) -> bool {
        if self.missing(tables).is_empty() {
            return true;
        }
        let _one = self.lookup.lock().await;
        // Another connection may have asked while we waited.
        let missing = self.missing(tables);
        if missing.is_empty() {
            return true;
        }
        if self
            .known()
            .failed_at
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
        {
            return false;
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(&missing)).await {
            Ok(Ok(columns)) => {
                let mut known = self.known();
                if known.columns.len() + columns.len() > MAX_COLUMNS {
                    known.columns.clear();
                    known.tables.clear();
                }
                known.failed_at = None;
                for t in missing {
                    known.tables.insert(t);
                }
                known.columns.extend(columns);
                true
            }
            Ok(Err(e)) => self.failed(&e),
            Err(_) => self.failed(&Error::Upstream(format!(
                "the catalog of target {} did not answer within {LOOKUP_TIMEOUT:?}",
                self.target.name
            ))),
        }
    }

    fn missing(&self, tables: &[u32]) -> Vec<u32> {
        let known = self.known();
        let mut missing: Vec<u32> = tables
            .iter()
            .copied()
            .filter(|t| *t != 0 && !known.tables.contains(t))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing.truncate(MAX_TABLES_PER_QUERY);
        missing
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
    async fn ask(&self, tables: &[u32]) -> Result<Vec<((u32, i16), TableColumn)>> {
        let mut params = BTreeMap::new();
        params.insert(
            "application_name".to_string(),
            "airlock-catalog".to_string(),
        );
        let mut conn = self.target.connect(&params, LOOKUP_TIMEOUT).await?;
        let list = tables
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // Only numbers the gateway formatted itself go into the text.
        let sql = format!(
            "SELECT a.attrelid, a.attnum, n.nspname, c.relname, a.attname \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attrelid IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped"
        );
        let mut body = sql.into_bytes();
        body.push(0);
        let unreachable = |e: std::io::Error| {
            Error::Upstream(format!(
                "cannot ask the catalog of target {}: {e}",
                self.target.name
            ))
        };
        conn.write
            .write_all(&frame::raw(b'Q', &body))
            .await
            .map_err(unreachable)?;
        conn.write.flush().await.map_err(unreachable)?;
        let mut columns = Vec::new();
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
                    if let Some(c) = catalog_row(&cells) {
                        columns.push(c);
                    }
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
        let _ = conn.write.write_all(&frame::raw(b'X', &[])).await;
        let _ = conn.write.flush().await;
        match error {
            Some(e) => Err(Error::Upstream(format!(
                "the catalog of target {} refused the lookup: {e}",
                self.target.name
            ))),
            None => Ok(columns),
        }
    }
}

/// One catalog row: attrelid, attnum, schema, table, column (text format).
fn catalog_row(cells: &[Option<&[u8]>]) -> Option<((u32, i16), TableColumn)> {
    let text = |i: usize| -> Option<&str> { std::str::from_utf8(cells.get(i).copied()??).ok() };
    let table: u32 = text(0)?.parse().ok()?;
    let attnum: i16 = text(1)?.parse().ok()?;
    let qualified = format!("{}.{}.{}", text(2)?, text(3)?, text(4)?);
    Some((
        (table, attnum),
        TableColumn {
            qualified: qualified.into(),
        },
    ))
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
        let (key, col) = catalog_row(&cells).unwrap();
        assert_eq!(key, (16384, 3));
        assert_eq!(&*col.qualified, "public.customers.ssn");
        // A row the gateway cannot read is skipped, not guessed at.
        let bad: Vec<Option<&[u8]>> = vec![Some(b"x"), Some(b"3"), None, None, None];
        assert!(catalog_row(&bad).is_none());
    }
}
