//! A record's body: exactly the JSON of `Record`'s `Serialize`, written by
//! hand for the parts every statement pays for.
//!
//! Two records are sealed per statement on the data path (its operation,
//! its result). Through serde, the chain fields (field plumbing, escape
//! scans, a `String` for the time) and the derived code for the internally
//! tagged events (every field name escaped, the tag serializer's state
//! machine) cost more than the hash. Here the chain fields, the time, an
//! allowed SQL operation, an execution's input and a result are written
//! directly; every other
//! event goes through serde, and strings are escaped by serde_json's own
//! escaper. The tests hold the bytes equal to serde's, for fixed and for
//! generated records: a body is hashed as written, and every reader parses
//! it with serde.

use time::OffsetDateTime;

use super::Record;
use crate::{Access, Decision, Error, Event, Operation, Result, SqlOperation, TableAccess};

/// Writes a record's body into `out`.
pub(super) fn write(record: &Record, out: &mut Vec<u8>) -> Result<()> {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(itoa::Buffer::new().format(record.seq).as_bytes());
    out.extend_from_slice(b",\"time\":\"");
    write_time(record.time, out)?;
    out.push(b'"');
    if let Some(session) = record.session {
        out.extend_from_slice(b",\"session\":\"");
        let mut buf = uuid::Uuid::encode_buffer();
        out.extend_from_slice(session.0.hyphenated().encode_lower(&mut buf).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"event\":");
    write_event(&record.event, out)?;
    out.extend_from_slice(b",\"prev\":\"");
    let mut hex = [0u8; 64];
    hex::encode_to_slice(record.prev.0, &mut hex).map_err(|e| Error::Internal(e.to_string()))?;
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// RFC 3339 as `time::serde::rfc3339` writes it. Records are stamped in
/// UTC (`crate::now`); any other offset goes through the `time` crate.
fn write_time(t: OffsetDateTime, out: &mut Vec<u8>) -> Result<()> {
    let year = t.year();
    if !t.offset().is_utc() || !(0..10_000).contains(&year) {
        return t
            .format_into(out, &time::format_description::well_known::Rfc3339)
            .map(drop)
            .map_err(|e| Error::Internal(format!("cannot format a record's time: {e}")));
    }
    let (_, month, day) = t.to_calendar_date();
    let (hour, minute, second, nanos) = t.to_hms_nano();
    // The range check above keeps the year to four digits.
    let year = year.unsigned_abs();
    digits(out, year / 100);
    digits(out, year % 100);
    out.push(b'-');
    digits(out, u8::from(month).into());
    out.push(b'-');
    digits(out, day.into());
    out.push(b'T');
    digits(out, hour.into());
    out.push(b':');
    digits(out, minute.into());
    out.push(b':');
    digits(out, second.into());
    if nanos != 0 {
        // The fraction without its trailing zeros, as `time` writes it.
        let mut frac = [b'0'; 9];
        let mut n = nanos;
        for d in frac.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let len = frac.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        out.push(b'.');
        out.extend_from_slice(&frac[..len]);
    }
    out.push(b'Z');
    Ok(())
}

/// Two decimal digits of `n` (below 100).
fn digits(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// An event as serde writes it.
fn write_event(event: &Event, out: &mut Vec<u8>) -> Result<()> {
    match event {
        Event::Operation {
            operation: Operation::Sql(op),
            decision: Decision::Allow,
        } => {
            out.extend_from_slice(b"{\"type\":\"operation\",\"operation\":");
            write_sql(op, out)?;
            out.extend_from_slice(b",\"decision\":{\"decision\":\"allow\"}}");
        }
        // A prepared statement's execution, with its parameters.
        Event::Input { data } => {
            out.extend_from_slice(b"{\"type\":\"input\",\"data\":");
            string(data, out)?;
            out.push(b'}');
        }
        Event::Result {
            rows,
            error,
            duration_us,
            output,
            masked,
        } => {
            out.extend_from_slice(b"{\"type\":\"result\"");
            if let Some(rows) = rows {
                out.extend_from_slice(b",\"rows\":");
                out.extend_from_slice(itoa::Buffer::new().format(*rows).as_bytes());
            }
            if let Some(error) = error {
                out.extend_from_slice(b",\"error\":");
                string(error, out)?;
            }
            out.extend_from_slice(b",\"duration_us\":");
            out.extend_from_slice(itoa::Buffer::new().format(*duration_us).as_bytes());
            if let Some(output) = output {
                out.extend_from_slice(b",\"output\":");
                string(output, out)?;
            }
            if !masked.is_empty() {
                out.extend_from_slice(b",\"masked\":{");
                for (i, (detector, n)) in masked.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    string(detector, out)?;
                    out.push(b':');
                    out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
        other => serde_json::to_writer(&mut *out, other)
            .map_err(|e| Error::Internal(format!("cannot serialize a record: {e}")))?,
    }
    Ok(())
}

fn write_sql(op: &SqlOperation, out: &mut Vec<u8>) -> Result<()> {
    // Destructured, so a field added to the type cannot be left out here
    // without a compile error.
    let SqlOperation {
        text,
        kind,
        object,
        tables,
        has_where,
    } = op;
    out.extend_from_slice(b"{\"type\":\"sql\",\"text\":");
    string(text, out)?;
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'"');
    if let Some(object) = object {
        out.extend_from_slice(b",\"object\":");
        string(object, out)?;
    }
    if !tables.is_empty() {
        out.extend_from_slice(b",\"tables\":[");
        for (i, TableAccess { name, access }) in tables.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            string(name, out)?;
            out.extend_from_slice(match access {
                Access::Read => b",\"access\":\"read\"}".as_slice(),
                Access::Write => b",\"access\":\"write\"}".as_slice(),
            });
        }
        out.push(b']');
    }
    match has_where {
        Some(true) => out.extend_from_slice(b",\"has_where\":true"),
        Some(false) => out.extend_from_slice(b",\"has_where\":false"),
        None => {}
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string, escaped by serde_json itself (its string serializer
/// writes straight into `out`).
fn string(s: &str, out: &mut Vec<u8>) -> Result<()> {
    serde_json::to_writer(&mut *out, s)
        .map_err(|e| Error::Internal(format!("cannot serialize a record: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;
    use crate::audit::{Hash, SealedRecord};
    use crate::{MaskCounts, SessionId, SqlKind};

    /// Every kind, so `SqlKind::as_str` is checked against serde's names.
    const KINDS: [SqlKind; 27] = [
        SqlKind::Select,
        SqlKind::Insert,
        SqlKind::Update,
        SqlKind::Delete,
        SqlKind::Merge,
        SqlKind::Create,
        SqlKind::Alter,
        SqlKind::Drop,
        SqlKind::Truncate,
        SqlKind::CopyIn,
        SqlKind::CopyOut,
        SqlKind::Grant,
        SqlKind::Revoke,
        SqlKind::Call,
        SqlKind::Set,
        SqlKind::Show,
        SqlKind::Transaction,
        SqlKind::Prepare,
        SqlKind::Execute,
        SqlKind::Deallocate,
        SqlKind::Explain,
        SqlKind::Listen,
        SqlKind::Notify,
        SqlKind::Vacuum,
        SqlKind::Lock,
        SqlKind::Other,
        SqlKind::Opaque,
    ];

    /// The body as written here and as serde writes the record; the body
    /// must also read back as the record.
    fn assert_serde_equal(record: &Record) {
        let sealed = SealedRecord::seal(record.clone()).unwrap();
        assert_eq!(
            String::from_utf8(sealed.body.clone()).unwrap(),
            serde_json::to_string(record).unwrap()
        );
        assert_eq!(&SealedRecord::open(sealed.body).unwrap().record, record);
    }

    fn record(seq: u64, time: OffsetDateTime, session: bool, event: Event) -> Record {
        Record {
            seq,
            time,
            session: session.then(SessionId::new),
            event,
            prev: Hash::of(&seq.to_le_bytes()),
        }
    }

    #[test]
    fn fixed_records_are_written_as_serde_writes_them() {
        let events = [
            Event::Operation {
                operation: Operation::Sql(SqlOperation {
                    text: "SELECT \"q\" FROM t WHERE a = 'é\\\n\u{1}\u{7f}'".into(),
                    kind: SqlKind::Select,
                    object: None,
                    tables: Vec::new(),
                    has_where: Some(true),
                }),
                decision: Decision::Allow,
            },
            // Not written here: through serde.
            Event::Operation {
                operation: Operation::Sql(SqlOperation {
                    text: "DROP TABLE t".into(),
                    kind: SqlKind::Drop,
                    object: Some("table".into()),
                    tables: vec![TableAccess {
                        name: "t".into(),
                        access: Access::Write,
                    }],
                    has_where: None,
                }),
                decision: Decision::Deny {
                    rule: "r".into(),
                    message: "no \"drop\"".into(),
                },
            },
            Event::Result {
                rows: Some(3),
                error: None,
                duration_us: 17,
                output: Some("a\n1\n2".into()),
                masked: MaskCounts::new(),
            },
            Event::Result {
                rows: None,
                error: Some("relation \"x\" does not exist".into()),
                duration_us: 0,
                output: None,
                masked: [("email".to_string(), 2), ("card\"no".to_string(), 1)].into(),
            },
            Event::Input {
                data: "execute: SELECT $1\nparameters: $1 = '\u{0}'".into(),
            },
            Event::SessionEnd {
                reason: "client closed the connection".into(),
            },
        ];
        let times = [
            crate::now(),
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_000).unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(-1_000_000_001).unwrap(),
            // Not UTC: through the `time` crate.
            OffsetDateTime::from_unix_timestamp(1_700_000_000)
                .unwrap()
                .to_offset(time::macros::offset!(-05:30)),
        ];
        for (i, event) in events.iter().enumerate() {
            for time in times {
                for session in [false, true] {
                    let seq = [1, 42, u64::MAX, 0, 7, 9][i];
                    assert_serde_equal(&record(seq, time, session, event.clone()));
                }
            }
        }
    }

    #[test]
    fn every_kind_has_serdes_name() {
        for kind in KINDS {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
    }

    fn table() -> impl Strategy<Value = TableAccess> {
        (any::<String>(), any::<bool>()).prop_map(|(name, write)| TableAccess {
            name,
            access: if write { Access::Write } else { Access::Read },
        })
    }

    fn sql() -> impl Strategy<Value = SqlOperation> {
        (
            any::<String>(),
            0..KINDS.len(),
            proptest::option::of(any::<String>()),
            proptest::collection::vec(table(), 0..3),
            proptest::option::of(any::<bool>()),
        )
            .prop_map(|(text, kind, object, tables, has_where)| SqlOperation {
                text,
                kind: KINDS[kind],
                object,
                tables,
                has_where,
            })
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            any::<String>().prop_map(|data| Event::Input { data }),
            sql().prop_map(|op| Event::Operation {
                operation: Operation::Sql(op),
                decision: Decision::Allow,
            }),
            (
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<String>()),
                any::<u64>(),
                proptest::option::of(any::<String>()),
                proptest::collection::btree_map(any::<String>(), any::<u64>(), 0..3),
            )
                .prop_map(|(rows, error, duration_us, output, masked)| {
                    Event::Result {
                        rows,
                        error,
                        duration_us,
                        output,
                        masked,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn generated_records_are_written_as_serde_writes_them(
            seq in any::<u64>(),
            // Years 0 to 9999, any nanosecond.
            nanos in -62_167_219_200_000_000_000i128..253_402_300_800_000_000_000i128,
            session in any::<bool>(),
            event in event(),
        ) {
            let time = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            assert_serde_equal(&record(seq, time, session, event));
        }
    }
}
