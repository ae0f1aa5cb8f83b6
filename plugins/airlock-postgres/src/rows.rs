//! Result values: masking the cells of `DataRow` messages by column (text
//! format, and binary format for text-like types) and rendering rows,
//! parameters and values for the audit record.

use std::borrow::Cow;
use std::fmt::Write as _;

use airlock_core::MaskCounts;
use airlock_core::mask::{FieldPlan, Masker};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::data::{DataRow, RowDescription};

use crate::catalog::Names;
use crate::classify::CopyFormat;
use crate::frame;

/// Type OIDs the gateway understands in binary format.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const OID: u32 = 26;
    pub(super) const JSON: u32 = 114;
    pub(super) const XML: u32 = 142;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UNKNOWN: u32 = 705;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const UUID: u32 = 2950;
    pub(super) const INET: u32 = 869;
    pub(super) const CIDR: u32 = 650;
    pub(super) const JSONB: u32 = 3802;
    pub(super) const JSONB_ARRAY: u32 = 3807;
    pub(super) const JSON_ARRAY: u32 = 199;
    /// Arrays of text-like element types.
    pub(super) const TEXT_ARRAYS: [u32; 5] = [1009, 1015, 1014, 1003, 143];
    /// Arrays of number types, with their element types.
    pub(super) const NUMBER_ARRAYS: [(u32, u32); 7] = [
        (1005, INT2),
        (1007, INT4),
        (1016, INT8),
        (1028, OID),
        (1021, FLOAT4),
        (1022, FLOAT8),
        (1231, NUMERIC),
    ];
}

/// The plan of a value from no named field (parameters, COPY data, a
/// function's result): detectors and dictionaries only.
static NO_FIELD: FieldPlan = FieldPlan::NONE;

/// How a binary value of a type holds text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextLike {
    /// The bytes are the text.
    Plain,
    /// The bytes are a JSON document's text (json).
    Json,
    /// A version byte (1), then a JSON document's text (jsonb).
    Jsonb,
}

fn text_like(type_oid: u32) -> Option<TextLike> {
    match type_oid {
        oid::TEXT
        | oid::VARCHAR
        | oid::BPCHAR
        | oid::NAME
        | oid::XML
        | oid::UNKNOWN
        | oid::BYTEA => Some(TextLike::Plain),
        oid::JSON => Some(TextLike::Json),
        oid::JSONB => Some(TextLike::Jsonb),
        _ => None,
    }
}

/// What the elements of a binary array are, for the array types whose
/// elements the gateway masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
    Text(TextLike),
    /// A number type, by its OID.
    Number(u32),
}

fn array_element(type_oid: u32) -> Option<Element> {
    match type_oid {
        oid::JSON_ARRAY => Some(Element::Text(TextLike::Json)),
        oid::JSONB_ARRAY => Some(Element::Text(TextLike::Jsonb)),
        t if oid::TEXT_ARRAYS.contains(&t) => Some(Element::Text(TextLike::Plain)),
        t => oid::NUMBER_ARRAYS
            .iter()
            .find(|(array, _)| *array == t)
            .map(|(_, elem)| Element::Number(*elem)),
    }
}

/// One result column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    /// The column's name, as the client sees it.
    pub(crate) name: String,
    /// `schema.table.column` for a column straight from a table (whatever
    /// the query called it), and the same in each table that table
    /// inherits from, from the target's catalog; for a computed column,
    /// the table columns the query made it of (`classify::Lineage`).
    pub(crate) origin: Option<Names>,
    pub(crate) type_oid: u32,
    /// 0 text, 1 binary.
    pub(crate) format: i16,
    /// The masking every value of the column gets, from both its names
    /// (worked out once per description, not per cell).
    pub(crate) plan: FieldPlan,
}

impl Column {
    /// A column named `name` by the query and `origin` by the catalog.
    /// Masking rules are matched against all these names: any one matching
    /// masks the value, so an alias can neither hide a column from its rule
    /// nor a stale or missing catalog entry mask less than the query's name
    /// alone would.
    pub(crate) fn new(
        masker: &Masker,
        name: String,
        origin: Option<Names>,
        type_oid: u32,
        format: i16,
    ) -> Column {
        let mut names: Vec<&str> = origin
            .iter()
            .flat_map(|o| o.iter().map(String::as_str))
            .chain([name.as_str()])
            .collect();
        if names.iter().any(|n| crate::catalog::holds_samples(n)) {
            names.push("*");
        }
        let plan = masker.field_plan(&names);
        Column {
            name,
            origin,
            type_oid,
            format,
            plan,
        }
    }
}

/// The columns of a `RowDescription`, planned for `masker`; `table_column`
/// names a column by its table OID and attribute number when the catalog
/// knows it, and `computed` (from the statement's `classify::Lineage`, when the
/// classifier read it) what each computed one is made of.
pub(crate) fn columns(
    masker: &Masker,
    desc: &RowDescription,
    table_column: impl Fn(u32, i16) -> Option<Names>,
    computed: Option<&[Vec<String>]>,
) -> Vec<Column> {
    desc.fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            // What the statement says the column is made of: a computed
            // column's sources, or what a write put into a table column.
            let made_of = computed.and_then(|c| c.get(i)).filter(|n| !n.is_empty());
            // pgwire reads the OID as signed; OIDs are unsigned on the wire.
            let (origin, derived) = match (f.table_id.cast_unsigned(), made_of) {
                // Computed: the server names no table, the query may.
                (0, made_of) => (made_of.map(|n| Names::from(n.clone())), made_of.is_some()),
                // A whole row of the table (`SELECT t FROM t`): every
                // column rule may have a column in it.
                _ if f.column_id == 0 => {
                    return Column {
                        name: f.name.clone(),
                        origin: None,
                        type_oid: f.type_id,
                        format: f.format_code,
                        plan: masker.whole_row_plan(&f.name),
                    };
                }
                (table, None) => (table_column(table, f.column_id), false),
                // A write's value made of other columns: the column's own
                // names and those.
                (table, Some(names)) => {
                    let own = table_column(table, f.column_id);
                    let names: Names = own
                        .iter()
                        .flat_map(|o| o.iter().cloned())
                        .chain(names.iter().cloned())
                        .collect();
                    (Some(names), true)
                }
            };
            let mut col = Column::new(masker, f.name.clone(), origin, f.type_id, f.format_code);
            // Masked whole, whatever was done to the value.
            if derived {
                col.plan = col.plan.derived();
            }
            col
        })
        .collect()
}

/// A cell's value after masking, for the record (borrowed from the row
/// when it is already text, so rows beyond the recorded ones cost nothing).
enum Rendered<'a> {
    Null,
    Text(Cow<'a, str>),
}

/// Masks one `DataRow` body. Returns the new frame when a value changed
/// (`None`: forward the original bytes) and, when `render` is set, the row
/// as a line for the audit record.
pub(crate) fn mask_row(
    masker: &Masker,
    cols: &[Column],
    body: &[u8],
    counts: &mut MaskCounts,
    render: bool,
) -> std::result::Result<(Option<Bytes>, Option<String>), String> {
    let mut cells = Cells::new(body)?;
    // The new cells, begun at the first one that changes (with the
    // unchanged ones before it copied as they are): most rows change
    // nothing and cost no allocation.
    let mut out: Option<BytesMut> = None;
    // The rendered row is about as long as the row's bytes: one allocation.
    let mut line = render.then(|| String::with_capacity(body.len() + 16));
    for (i, cell) in cells.by_ref().enumerate() {
        let (at, cell) = cell?;
        let col = cols.get(i);
        let (masked, rendered) = match cell {
            None => (None, Rendered::Null),
            Some(value) => mask_value(masker, col, value, counts, line.is_some()),
        };
        if let Some(l) = &mut line {
            push_cell(l, i, &rendered);
        }
        // NULL stays NULL; a value is kept when masking borrowed it.
        let kept = cell.is_none() || matches!(masked, Some(Cow::Borrowed(_)));
        if kept && out.is_none() {
            continue;
        }
        let data = out.get_or_insert_with(|| {
            let mut data = BytesMut::with_capacity(body.len() + 16);
            data.put_slice(&body[2..at]);
            data
        });
        match masked {
            None => data.put_i32(-1),
            Some(v) => {
                data.put_i32(v.len() as i32);
                data.put_slice(&v);
            }
        }
    }
    let frame = out.map(|data| frame::encode(&DataRow::new(data, cells.count)));
    Ok((frame, line))
}

fn push_cell(line: &mut String, i: usize, value: &Rendered) {
    if i > 0 {
        line.push_str(" | ");
    }
    match value {
        Rendered::Null => line.push_str("NULL"),
        Rendered::Text(t) => line.push_str(t),
    }
}

/// The cells of a `DataRow` body, checked as they are read: each with the
/// offset of its length word in the body, `None` for NULL. A body whose
/// cells do not add up to its length is an error (at its end).
struct Cells<'a> {
    body: &'a [u8],
    at: usize,
    left: i16,
    count: i16,
}

impl<'a> Cells<'a> {
    fn new(body: &'a [u8]) -> std::result::Result<Cells<'a>, String> {
        let Some(&[a, b]) = body.get(..2) else {
            return Err(malformed_row());
        };
        let count = i16::from_be_bytes([a, b]);
        Ok(Cells {
            body,
            at: 2,
            left: count,
            count,
        })
    }
}

impl<'a> Iterator for Cells<'a> {
    type Item = std::result::Result<(usize, Option<&'a [u8]>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.body[self.at..];
        if self.left <= 0 {
            return (!rest.is_empty()).then(|| Err(malformed_row()));
        }
        self.left -= 1;
        let Some(&[a, b, c, d]) = rest.get(..4) else {
            return Some(Err(malformed_row()));
        };
        let at = self.at;
        let len = i32::from_be_bytes([a, b, c, d]);
        if len < 0 {
            self.at += 4;
            return Some(Ok((at, None)));
        }
        let Some(value) = rest.get(4..4 + len as usize) else {
            return Some(Err(malformed_row()));
        };
        self.at += 4 + value.len();
        Some(Ok((at, Some(value))))
    }
}

fn malformed_row() -> String {
    "malformed DataRow from the server".to_string()
}

/// Splits a `DataRow` body into its cells (`None` for NULL).
pub(crate) fn split_cells(body: &[u8]) -> std::result::Result<Vec<Option<&[u8]>>, String> {
    Cells::new(body)?
        .map(|cell| cell.map(|(_, value)| value))
        .collect()
}

/// A masked cell: its new value (`None`: replaced by NULL) and its rendering.
type MaskedCell<'a> = (Option<Cow<'a, [u8]>>, Rendered<'a>);

/// Masks one non-null value of a column (unknown column: treated as text).
/// A binary value of a type that holds no text is rendered for the record
/// only when `render` asks for it.
fn mask_value<'a>(
    masker: &Masker,
    col: Option<&Column>,
    value: &'a [u8],
    counts: &mut MaskCounts,
    render: bool,
) -> MaskedCell<'a> {
    let field = col.map_or(&NO_FIELD, |c| &c.plan);
    let binary = col.is_some_and(|c| c.format == 1);
    if !binary {
        let masked = match col.map(|c| c.type_oid) {
            Some(oid::JSON | oid::JSONB) => mask_json_text(masker, field, value, counts),
            Some(oid::JSON_ARRAY | oid::JSONB_ARRAY) => {
                mask_json_array_text(masker, field, value, counts)
            }
            Some(oid::BYTEA) => Some(mask_bytea_text(masker, field, value, counts)),
            _ => Some(mask_text(masker, field, value, counts)),
        };
        return match masked {
            Some((masked, text)) => (Some(masked), Rendered::Text(text)),
            None => (None, Rendered::Text(Cow::Borrowed(WITHHELD))),
        };
    }
    let Some(col) = col else {
        return (
            Some(Cow::Borrowed(value)),
            Rendered::Text(Cow::Borrowed("")),
        );
    };
    if let Some(kind) = text_like(col.type_oid) {
        return match mask_text_like(masker, field, value, kind, counts) {
            Some((masked, text)) => (Some(masked), Rendered::Text(text)),
            None => (None, Rendered::Text(Cow::Borrowed(WITHHELD))),
        };
    }
    if let Some(kind) = array_element(col.type_oid)
        && let Some((masked, text)) = mask_array(masker, field, value, kind, counts)
    {
        return (Some(masked), Rendered::Text(Cow::Owned(text)));
    }
    match mask_binary_value(masker, field, col.type_oid, value, counts) {
        Some(masked) => (None, Rendered::Text(Cow::Owned(masked))),
        None if render => (
            Some(Cow::Borrowed(value)),
            Rendered::Text(Cow::Owned(render_binary(col.type_oid, value))),
        ),
        // Not rendered: the row is not one of those recorded.
        None => (
            Some(Cow::Borrowed(value)),
            Rendered::Text(Cow::Borrowed("")),
        ),
    }
}

/// A binary value the gateway cannot rewrite in its own format (numbers,
/// composites, other types). It is withheld (the client gets NULL, which is
/// valid for every type, and the record gets the masked text) when a field
/// rule covers its column, or when masking finds something in its text: a
/// number's decimal digits (a card number kept as `bigint`), else its bytes
/// read as text (a detector or a held credential inside a composite).
fn mask_binary_value(
    masker: &Masker,
    field: &FieldPlan,
    type_oid: u32,
    value: &[u8],
    counts: &mut MaskCounts,
) -> Option<String> {
    let number = render_number(type_oid, value).or_else(|| render_inet(type_oid, value));
    let is_number = number.is_some();
    let text = match number {
        Some(digits) => Cow::Owned(digits),
        None => frame::lossy(value),
    };
    match masker.mask_field(field, &text, counts) {
        // A rule's replacement can equal the value (a partial mask of a
        // number whose bytes hold no letter or digit): withheld all the same.
        Cow::Owned(masked) if field.has_rule() || masked != *text => Some(masked),
        // A composite (a row value, `ROW(…)`) carries its fields' types:
        // a number inside is judged by its digits too.
        _ if is_number => None,
        // So does an array of any type (its header names the element
        // type): each element is judged by itself, not run together with
        // the length words between them (a length's low byte can be a
        // letter, which hides the number after it).
        _ => composite_fields(value)
            .or_else(|| array_items(value))?
            .into_iter()
            .find_map(|(oid, v)| {
                let v = v?;
                mask_binary_value(masker, &NO_FIELD, oid, v, counts).map(|_| WITHHELD.to_string())
            }),
    }
}

/// The elements of a binary array value (`array_send`: dimensions, a
/// has-NULLs flag, the element type, each dimension's size and lower bound,
/// then each element length-prefixed), with the element type, if `value`
/// is exactly one; `None` for anything else.
fn array_items(value: &[u8]) -> Option<Vec<Field<'_>>> {
    let int = |at: usize| -> Option<i32> {
        value
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let ndim = usize::try_from(int(0)?).ok().filter(|n| *n <= 6)?;
    let elem = int(8)? as u32;
    let mut count = 1usize;
    for d in 0..ndim {
        let size = usize::try_from(int(12 + 8 * d)?).ok()?;
        count = count.checked_mul(size)?;
    }
    if ndim == 0 {
        count = 0;
    }
    // An element takes at least four bytes: a count beyond that is not one.
    let mut at = 12 + 8 * ndim;
    if count > value.len().saturating_sub(at) / 4 {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let len = int(at)?;
        at += 4;
        if len < 0 {
            items.push((elem, None));
            continue;
        }
        let v = value.get(at..at + len as usize)?;
        at += v.len();
        items.push((elem, Some(v)));
    }
    (at == value.len()).then_some(items)
}

/// A field of a binary composite value: its type OID and its value (`None`:
/// NULL).
type Field<'a> = (u32, Option<&'a [u8]>);

/// The fields of a binary composite value (`record_send`: a count, then
/// each field's type OID and length-prefixed value), if `value` is exactly
/// one; `None` for anything else.
fn composite_fields(value: &[u8]) -> Option<Vec<Field<'_>>> {
    let int = |at: usize| -> Option<i32> {
        value
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let n = usize::try_from(int(0)?).ok()?;
    // A field takes at least eight bytes: a count beyond that is not one.
    if n > value.len() / 8 {
        return None;
    }
    let mut at = 4;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let oid = int(at)? as u32;
        let len = int(at + 4)?;
        at += 8;
        if len < 0 {
            fields.push((oid, None));
            continue;
        }
        let v = value.get(at..at + len as usize)?;
        at += v.len();
        fields.push((oid, Some(v)));
    }
    (at == value.len()).then_some(fields)
}

/// A number's decimal text, for the binary formats of PostgreSQL's number
/// types (`None` for other types or a malformed value).
fn render_number(type_oid: u32, v: &[u8]) -> Option<String> {
    match type_oid {
        oid::NUMERIC => render_numeric(v),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID | oid::FLOAT4 | oid::FLOAT8 => {
            let text = render_binary(type_oid, v);
            (!text.starts_with("\\x")).then_some(text)
        }
        _ => None,
    }
}

/// An `inet` or `cidr` value's text (`192.168.0.1`, `10.0.0.0/8`), from
/// its binary format: family, prefix bits, is-cidr flag, address length,
/// address.
fn render_inet(type_oid: u32, v: &[u8]) -> Option<String> {
    if !matches!(type_oid, oid::INET | oid::CIDR) {
        return None;
    }
    let [family, bits, _, len] = <[u8; 4]>::try_from(v.get(..4)?).ok()?;
    let address = v.get(4..)?;
    let (ip, full): (std::net::IpAddr, u8) = match (family, len, address.len()) {
        (2, 4, 4) => (<[u8; 4]>::try_from(address).ok()?.into(), 32),
        (3, 16, 16) => (<[u8; 16]>::try_from(address).ok()?.into(), 128),
        _ => return None,
    };
    Some(if bits == full && type_oid == oid::INET {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    })
}

/// `numeric`'s binary format: digit count, weight of the first digit, sign,
/// display scale, then base-10000 digits.
fn render_numeric(v: &[u8]) -> Option<String> {
    let word = |i: usize| {
        v.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if v.len() != 8 + 2 * ndigits {
        return None;
    }
    let digit = |i: i32| -> Option<u16> {
        if i < 0 || i as usize >= ndigits {
            Some(0)
        } else {
            word(4 + i as usize)
        }
    };
    let mut s = String::new();
    match sign {
        0x0000 => {}
        0x4000 => s.push('-'),
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    if weight < 0 {
        s.push('0');
    } else {
        let _ = write!(s, "{}", digit(0)?);
        for i in 1..=weight {
            let _ = write!(s, "{:04}", digit(i)?);
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i)?);
            i += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

/// Masks a text value. Invalid UTF-8 (a client encoding other than UTF-8)
/// is matched on its lossy reading and left untouched unless a match is found.
fn mask_text<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    counts: &mut MaskCounts,
) -> (Cow<'a, [u8]>, Cow<'a, str>) {
    let text = frame::lossy(value);
    match masker.mask_field(field, &text, counts) {
        Cow::Borrowed(_) => (Cow::Borrowed(value), text),
        Cow::Owned(masked) if masked == *text => (Cow::Borrowed(value), Cow::Owned(masked)),
        Cow::Owned(masked) => (Cow::Owned(masked.clone().into_bytes()), Cow::Owned(masked)),
    }
}

fn mask_text_like<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    kind: TextLike,
    counts: &mut MaskCounts,
) -> Option<(Cow<'a, [u8]>, Cow<'a, str>)> {
    match kind {
        TextLike::Plain => Some(mask_text(masker, field, value, counts)),
        TextLike::Json => mask_json_text(masker, field, value, counts),
        TextLike::Jsonb => match value.split_first() {
            Some((&version, json)) => Some(match mask_json_text(masker, field, json, counts)? {
                (Cow::Borrowed(_), text) => (Cow::Borrowed(value), text),
                (Cow::Owned(masked), text) => {
                    let mut v = Vec::with_capacity(masked.len() + 1);
                    v.push(version);
                    v.extend_from_slice(&masked);
                    (Cow::Owned(v), text)
                }
            }),
            None => Some((Cow::Borrowed(value), Cow::Borrowed(""))),
        },
    }
}

/// Masks a `bytea` value in text format. In the hex format (`\x616c…`, the
/// default) the client decodes the bytes, so they are what is judged, as
/// text; masked ones go out encoded again. Otherwise (and when the bytes
/// hold nothing) the text as sent is judged, which finds a held credential
/// in its hex form too.
fn mask_bytea_text<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    counts: &mut MaskCounts,
) -> (Cow<'a, [u8]>, Cow<'a, str>) {
    let decoded = value
        .strip_prefix(b"\\x")
        .and_then(|digits| hex::decode(digits).ok());
    if let Some(bytes) = decoded {
        let text = frame::lossy(&bytes);
        if let Cow::Owned(masked) = masker.mask_field(field, &text, counts)
            && masked != *text
        {
            let encoded = format!("\\x{}", hex::encode(masked.as_bytes()));
            return (
                Cow::Owned(encoded.clone().into_bytes()),
                Cow::Owned(encoded),
            );
        }
    }
    mask_text(masker, field, value, counts)
}

/// How a withheld value whose masked text is not known is recorded.
const WITHHELD: &str = "<WITHHELD>";

/// Masks a JSON document's text (a json or jsonb value): the field rules by
/// key and path inside it (`ssn`, `$..ssn`) and the detectors on its keys,
/// strings and numbers. A document in which nothing is masked goes out as
/// the server wrote it; one in which something is, re-serialised (keys in
/// order, numbers in their shortest form). A column whose name decides its
/// masking (a rule; a secret-like name, when the value looks like a secret)
/// is masked as a whole first.
///
/// `None` withholds the value: a document that cannot be read here (deeper
/// than 128 levels, a number beyond a double) while field rules are on,
/// since one of them could match a key inside it.
fn mask_json_text<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    counts: &mut MaskCounts,
) -> Option<(Cow<'a, [u8]>, Cow<'a, str>)> {
    if let Some(whole) = masker.mask_whole(field, &frame::lossy(value), counts) {
        // As a JSON string, so that the value stays a document.
        let json = serde_json::Value::String(whole).to_string();
        return Some((Cow::Owned(json.clone().into_bytes()), Cow::Owned(json)));
    }
    match serde_json::from_slice::<serde_json::Value>(value) {
        Ok(mut doc) => {
            let masked_before: u64 = counts.values().sum();
            masker.mask_json(&mut doc, counts);
            if counts.values().sum::<u64>() != masked_before {
                let text = doc.to_string();
                return Some((Cow::Owned(text.clone().into_bytes()), Cow::Owned(text)));
            }
            Some(mask_text(masker, field, value, counts))
        }
        Err(_) if masker.has_field_rules() => {
            *counts.entry(UNREADABLE_JSON.to_string()).or_default() += 1;
            None
        }
        Err(_) => Some(mask_text(masker, field, value, counts)),
    }
}

/// The masking count of JSON documents withheld because they could not be
/// read for field rules.
const UNREADABLE_JSON: &str = "field:unreadable-json";

/// Masks a json[] or jsonb[] value in text format (`{"{\"ssn\": 1}",NULL}`)
/// document by document, as [`mask_json_text`] masks one: field rules reach
/// keys inside the elements too. A document to withhold becomes `NULL`;
/// masked ones are written back quoted. An array literal that cannot be
/// read is treated as an unreadable document.
fn mask_json_array_text<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    counts: &mut MaskCounts,
) -> Option<(Cow<'a, [u8]>, Cow<'a, str>)> {
    let masked = std::str::from_utf8(value).ok().and_then(|literal| {
        mask_array_literal(literal, |doc| {
            mask_json_text(masker, field, doc.as_bytes(), counts).map(|(m, _)| m)
        })
    });
    match masked {
        Some(None) => Some((Cow::Borrowed(value), frame::lossy(value))),
        Some(Some(out)) => Some((Cow::Owned(out.clone().into_bytes()), Cow::Owned(out))),
        None if masker.has_field_rules() => {
            *counts.entry(UNREADABLE_JSON.to_string()).or_default() += 1;
            None
        }
        None => Some(mask_text(masker, field, value, counts)),
    }
}

/// Rewrites each element of an array literal in PostgreSQL's text format
/// (`{a,"b \"c\"",NULL}`, nested for more dimensions, with an optional
/// `[1:2]=` bounds prefix; `,` between elements) through `mask`, which
/// returns the element's new bytes (borrowed when unchanged) or `None` to
/// make it NULL. `Some(None)` when nothing changed; `None` when the literal
/// is malformed.
fn mask_array_literal(
    literal: &str,
    mut mask: impl FnMut(&str) -> Option<Cow<'_, [u8]>>,
) -> Option<Option<String>> {
    let start = if literal.starts_with('[') {
        literal.find('=')? + 1
    } else {
        0
    };
    let mut out = String::with_capacity(literal.len() + 16);
    out.push_str(&literal[..start]);
    let bytes = literal.as_bytes();
    let (mut i, mut depth, mut changed) = (start, 0usize, false);
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                depth += 1;
                out.push('{');
                i += 1;
                continue;
            }
            b'}' => {
                depth = depth.checked_sub(1)?;
                out.push('}');
                i += 1;
                continue;
            }
            b',' if depth > 0 => {
                out.push(',');
                i += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                out.push(c as char);
                i += 1;
                continue;
            }
            _ if depth == 0 => return None,
            _ => {}
        }
        // An element: quoted (backslash escapes) or bare up to `,` or `}`.
        let element = if bytes[i] == b'"' {
            let mut e = String::new();
            i += 1;
            loop {
                match *bytes.get(i)? {
                    b'"' => break,
                    b'\\' => {
                        i += 1;
                        let c = literal.get(i..)?.chars().next()?;
                        e.push(c);
                        i += c.len_utf8();
                    }
                    _ => {
                        let c = literal.get(i..)?.chars().next()?;
                        e.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            i += 1;
            e
        } else {
            let end = literal[i..]
                .find([',', '}'])
                .map_or(literal.len(), |n| i + n);
            let bare = literal[i..end].trim_end();
            i = end;
            if bare.eq_ignore_ascii_case("NULL") {
                out.push_str("NULL");
                continue;
            }
            bare.to_string()
        };
        match mask(&element) {
            Some(Cow::Borrowed(_)) => push_quoted(&mut out, &element),
            Some(Cow::Owned(masked)) => {
                changed = true;
                push_quoted(&mut out, &String::from_utf8_lossy(&masked));
            }
            None => {
                changed = true;
                out.push_str("NULL");
            }
        }
    }
    if depth != 0 {
        return None;
    }
    Some(changed.then_some(out))
}

/// Writes an array element quoted, as PostgreSQL's array output does.
fn push_quoted(out: &mut String, element: &str) {
    out.push('"');
    for c in element.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Masks the elements of a binary array of a text-like or number type: a
/// text element is rewritten, an element to withhold becomes NULL (and the
/// array says it holds NULLs). `None` when the array is malformed (it is
/// then masked as any other binary value).
fn mask_array<'a>(
    masker: &Masker,
    field: &FieldPlan,
    value: &'a [u8],
    kind: Element,
    counts: &mut MaskCounts,
) -> Option<(Cow<'a, [u8]>, String)> {
    let i32_at = |b: &[u8], at: usize| -> Option<i32> {
        b.get(at..at + 4)
            .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let ndim = i32_at(value, 0)?;
    if !(0..=6).contains(&ndim) {
        return None;
    }
    let header = 12 + 8 * ndim as usize;
    if value.len() < header {
        return None;
    }
    let mut rest = &value[header..];
    let mut changed = false;
    let mut out = BytesMut::with_capacity(value.len());
    out.put_slice(&value[..header]);
    let mut text = String::from("{");
    let mut first = true;
    while !rest.is_empty() {
        let len = i32_at(rest, 0)?;
        rest = &rest[4..];
        if !first {
            text.push(',');
        }
        first = false;
        if len < 0 {
            out.put_i32(-1);
            text.push_str("NULL");
            continue;
        }
        let elem = rest.get(..len as usize)?;
        rest = &rest[len as usize..];
        let masked = match kind {
            Element::Text(kind) => mask_text_like(masker, field, elem, kind, counts)
                .map(|(masked, t)| (masked, t.into_owned())),
            Element::Number(type_oid) => {
                match mask_binary_value(masker, field, type_oid, elem, counts) {
                    Some(_) => None,
                    None => Some((Cow::Borrowed(elem), render_binary(type_oid, elem))),
                }
            }
        };
        match masked {
            Some((masked, t)) => {
                if let Cow::Owned(_) = masked {
                    changed = true;
                }
                out.put_i32(masked.len() as i32);
                out.put_slice(&masked);
                text.push_str(&t);
            }
            None => {
                changed = true;
                out.put_i32(-1);
                text.push_str(WITHHELD);
                // The header's "has NULLs" flag.
                out[4..8].copy_from_slice(&1i32.to_be_bytes());
            }
        }
    }
    text.push('}');
    Some((
        if changed {
            Cow::Owned(out.to_vec())
        } else {
            Cow::Borrowed(value)
        },
        text,
    ))
}

/// A binary value of a type that holds no text, rendered for the record.
pub(crate) fn render_binary(type_oid: u32, v: &[u8]) -> String {
    match (type_oid, v.len()) {
        (oid::BOOL, 1) => (if v[0] != 0 { "t" } else { "f" }).to_string(),
        (oid::INT2, 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
        (oid::INT4, 4) => i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (oid::OID, 4) => u32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (oid::INT8, 8) => {
            i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]).to_string()
        }
        (oid::FLOAT4, 4) => f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
        (oid::FLOAT8, 8) => {
            f64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]).to_string()
        }
        (oid::NUMERIC, _) => render_numeric(v).unwrap_or_else(|| hex(v)),
        (oid::UUID, 16) => {
            let h = hex_digits(v);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        _ => hex(v),
    }
}

fn hex_digits(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len() * 2);
    for b in v {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Binary data as PostgreSQL's `\x` hex notation, cut after 64 bytes.
fn hex(v: &[u8]) -> String {
    const MAX: usize = 64;
    let mut s = format!("\\x{}", hex_digits(&v[..v.len().min(MAX)]));
    if v.len() > MAX {
        let _ = write!(s, "... ({} bytes)", v.len());
    }
    s
}

/// The argument format codes and values of a `FunctionCall` body (function
/// OID; format codes; arguments, each a length and bytes; result format).
/// `None` when it is malformed.
pub(crate) fn function_call_arguments(body: &[u8]) -> Option<(Vec<i16>, Vec<Option<Bytes>>)> {
    let mut b = body.get(4..)?;
    let i16_of = |b: &mut &[u8]| -> Option<i16> {
        let v = i16::from_be_bytes(b.get(..2)?.try_into().ok()?);
        *b = &b[2..];
        Some(v)
    };
    let n = usize::try_from(i16_of(&mut b)?).ok()?;
    let formats = (0..n).map(|_| i16_of(&mut b)).collect::<Option<Vec<_>>>()?;
    let n = usize::try_from(i16_of(&mut b)?).ok()?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        b = &b[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        values.push(Some(Bytes::copy_from_slice(b.get(..len)?)));
        b = &b[len..];
    }
    Some((formats, values))
}

/// Renders (and masks) bind parameters for the record: `$1 = 'x', $2 = NULL`.
pub(crate) fn render_params(
    masker: &Masker,
    params: &[Option<Bytes>],
    formats: &[i16],
    types: &[u32],
    counts: &mut MaskCounts,
) -> String {
    let mut s = String::new();
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${} = ", i + 1);
        let Some(v) = p else {
            s.push_str("NULL");
            continue;
        };
        // One format code applies to all parameters; none means text.
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        let type_oid = types.get(i).copied().unwrap_or(0);
        let text = if format == 1 {
            match (text_like(type_oid), array_element(type_oid)) {
                (Some(kind), _) => mask_text_like(masker, &NO_FIELD, v, kind, counts)
                    .map_or(Cow::Borrowed(WITHHELD), |(_, text)| text),
                (None, Some(kind)) => match mask_array(masker, &NO_FIELD, v, kind, counts) {
                    Some((_, text)) => Cow::Owned(text),
                    None => Cow::Borrowed("<malformed array>"),
                },
                (None, None) if type_oid == 0 && std::str::from_utf8(v).is_ok_and(printable) => {
                    mask_text(masker, &NO_FIELD, v, counts).1
                }
                // A value of no known type (a fast-path argument, an
                // untyped parameter) may be an integer: judged by the digits
                // it would have too (a card number sent as an int8).
                (None, None)
                    if type_oid == 0
                        && untyped_integer(v.len()).is_some_and(|t| {
                            mask_binary_value(masker, &NO_FIELD, t, v, counts).is_some()
                        }) =>
                {
                    Cow::Borrowed(WITHHELD)
                }
                // A number or an opaque value: its masked text when masking
                // finds something in it, never its bytes in hex.
                (None, None) => Cow::Owned(
                    mask_binary_value(masker, &NO_FIELD, type_oid, v, counts)
                        .unwrap_or_else(|| render_binary(type_oid, v)),
                ),
            }
        } else {
            mask_text(masker, &NO_FIELD, v, counts).1
        };
        let _ = write!(s, "'{}'", text.replace('\'', "''"));
    }
    s
}

/// The integer type a binary value of no known type would be, by its size.
fn untyped_integer(len: usize) -> Option<u32> {
    match len {
        2 => Some(oid::INT2),
        4 => Some(oid::INT4),
        8 => Some(oid::INT8),
        _ => None,
    }
}

fn printable(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// The header line of a recorded result.
pub(crate) fn header(cols: &[Column]) -> String {
    let mut line = String::new();
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            line.push_str(" | ");
        }
        line.push_str(&c.name);
    }
    line
}

/// Masks a text that is not a cell (an error field, a notification payload,
/// a COPY line). Returns `None` when nothing changed.
pub(crate) fn mask_plain(masker: &Masker, text: &str, counts: &mut MaskCounts) -> Option<String> {
    match masker.mask_str(None, text, counts) {
        Cow::Owned(m) if m != text => Some(m),
        _ => None,
    }
}

/// Where a server error's DETAIL holds values of a table's row: the spans
/// of the values, and the columns they belong to when the DETAIL names
/// them. PostgreSQL shows values there without quoting them, so a span is
/// masked whole.
#[derive(Debug, PartialEq)]
pub(crate) struct RowValues<'a> {
    /// Byte ranges of `detail` that hold values.
    pub(crate) spans: Vec<std::ops::Range<usize>>,
    /// The key's columns as the DETAIL names them (unquoted), for a key
    /// violation (`Key (a, b)=(…)`); `None` for a whole row (`Failing row
    /// contains (…)`), or a key over an expression, whose columns only the
    /// table can tell.
    pub(crate) columns: Option<Vec<std::borrow::Cow<'a, str>>>,
}

/// How PostgreSQL goes on after a key's values (`Key (k)=(v) …`).
const KEY_ENDS: [&str; 4] = [
    ") already exists",
    ") is not present in table ",
    ") is still referenced from table ",
    ") conflicts with existing key (",
];

/// Finds the row values in an integrity error's DETAIL (SQLSTATE class
/// 23): `Failing row contains (…).` (not-null, check and partition
/// constraints) and `Key (cols)=(…) …` (unique, foreign-key and exclusion
/// constraints, whose DETAIL may hold two keys). `None` for other text.
pub(crate) fn row_values(detail: &str) -> Option<RowValues<'_>> {
    if let Some(rest) = detail.strip_prefix("Failing row contains (") {
        let end = rest.rfind(')')?;
        let start = detail.len() - rest.len();
        return Some(RowValues {
            spans: std::iter::once(start..start + end).collect(),
            columns: None,
        });
    }
    let rest = detail.strip_prefix("Key (")?;
    let names_end = rest.find(")=(")?;
    let columns = key_columns(&rest[..names_end]);
    let mut spans = Vec::new();
    let mut at = detail.len() - rest.len() + names_end + 3;
    loop {
        let tail = &detail[at..];
        let ends = KEY_ENDS
            .iter()
            .filter_map(|e| tail.find(e).map(|i| (i, *e)))
            .min_by_key(|(i, _)| *i);
        match ends {
            Some((i, e)) if e == KEY_ENDS[3] => {
                // An exclusion constraint: the existing key follows.
                spans.push(at..at + i);
                let next = at + i + e.len();
                at = next + detail[next..].find(")=(")? + 3;
            }
            Some((i, _)) => {
                spans.push(at..at + i);
                break;
            }
            None => {
                spans.push(at..at + tail.rfind(')')?);
                break;
            }
        }
    }
    Some(RowValues { spans, columns })
}

/// The columns of a key as an error names them (`a, "Mixed Case"`), or
/// `None` when one is an expression (`lower(email::text)`).
fn key_columns(names: &str) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    names
        .split(", ")
        .map(|name| {
            if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                let inner = quoted.replace("\"\"", "");
                (!inner.contains('"'))
                    .then(|| std::borrow::Cow::Owned(quoted.replace("\"\"", "\"")))
            } else {
                let plain = !name.is_empty()
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'_'
                            || b == b'$'
                            || b >= 0x80
                    });
                plain.then_some(std::borrow::Cow::Borrowed(name))
            }
        })
        .collect()
}

/// Masks a text-format COPY OUT row: returns the new bytes when something
/// changed and the row for the record.
///
/// A row that is not UTF-8 (a `SQL_ASCII` database holding other bytes;
/// `COPY … ENCODING` is judged as opaque before it runs) is masked by its
/// lossy reading: its original bytes go out only when that reading holds
/// nothing to mask, else the masked reading replaces them.
pub(crate) fn mask_copy_line(
    masker: &Masker,
    data: &[u8],
    counts: &mut MaskCounts,
) -> (Option<Bytes>, Option<String>) {
    let text = frame::lossy(data);
    match mask_plain(masker, &text, counts) {
        Some(m) => {
            let line = m.trim_end_matches('\n').to_string();
            (Some(Bytes::from(m.into_bytes())), Some(line))
        }
        None => (None, Some(text.trim_end_matches('\n').to_string())),
    }
}

/// How the columns of a text or CSV COPY OUT are masked: each field by its
/// column's plan (the columns' rules, then the detectors).
#[derive(Debug)]
pub(crate) struct CopyFields {
    pub(crate) format: CopyFormat,
    pub(crate) plans: Vec<FieldPlan>,
    /// The next line is the header (column names): masked as plain text.
    pub(crate) header: bool,
}

/// Masks one text or CSV COPY OUT row field by field. Returns the new
/// bytes when something changed, and the row for the record. A row that
/// is not UTF-8, or does not split into the columns the plans are for,
/// is masked as one text, and a field with a rule in it then goes out
/// whole as the rule's token: the row is withheld rather than guessed at.
pub(crate) fn mask_copy_fields(
    masker: &Masker,
    fields: &mut CopyFields,
    data: &[u8],
    counts: &mut MaskCounts,
) -> (Option<Bytes>, Option<String>) {
    if std::mem::take(&mut fields.header) {
        return mask_copy_line(masker, data, counts);
    }
    let Ok(line) = std::str::from_utf8(data) else {
        return withheld_copy_line(masker, fields, data, counts);
    };
    let body = line.strip_suffix('\n').unwrap_or(line);
    let Some(values) = split_copy_line(&fields.format, body) else {
        return withheld_copy_line(masker, fields, data, counts);
    };
    if values.len() != fields.plans.len() {
        return withheld_copy_line(masker, fields, data, counts);
    }
    let mut changed = false;
    let mut out = String::with_capacity(line.len());
    let delimiter = match fields.format {
        CopyFormat::Text { delimiter, .. } | CopyFormat::Csv { delimiter, .. } => delimiter,
        CopyFormat::Binary => b'\t',
    };
    for (i, (value, plan)) in values.iter().zip(&fields.plans).enumerate() {
        if i > 0 {
            out.push(char::from(delimiter));
        }
        let Some(value) = value else {
            let null = copy_null(&fields.format);
            // In text format a value equal to a NULL string of the
            // client's choosing is written as that string, and cannot be
            // told from NULL: under a rule it is masked all the same, or
            // the NULL string would test guesses at the column's values.
            let chosen = matches!(&fields.format, CopyFormat::Text { null, .. } if null != "\\N");
            if chosen && plan.has_rule() {
                let masked = masker.mask_field(plan, null, counts);
                write_copy_value(&fields.format, &masked, &mut out);
                changed = true;
            } else {
                out.push_str(null);
            }
            continue;
        };
        let masked = masker.mask_field(plan, value, counts);
        if let Cow::Owned(m) = &masked
            && m != value.as_ref()
        {
            changed = true;
        }
        write_copy_value(&fields.format, &masked, &mut out);
    }
    out.push('\n');
    let record = out.trim_end_matches('\n').to_string();
    if changed {
        (Some(Bytes::from(out.into_bytes())), Some(record))
    } else {
        (None, Some(body.to_string()))
    }
}

/// A COPY row that cannot be read field by field: masked as one text; if
/// any column has a rule, the whole row goes out as that rule's token.
fn withheld_copy_line(
    masker: &Masker,
    fields: &CopyFields,
    data: &[u8],
    counts: &mut MaskCounts,
) -> (Option<Bytes>, Option<String>) {
    let text = frame::lossy(data);
    match fields.plans.iter().find(|p| p.has_rule()) {
        Some(plan) => {
            let masked = masker.mask_field(plan, text.trim_end_matches('\n'), counts);
            let record = masked.to_string();
            (
                Some(Bytes::from(format!("{masked}\n").into_bytes())),
                Some(record),
            )
        }
        None => mask_copy_line(masker, data, counts),
    }
}

fn copy_null(format: &CopyFormat) -> &str {
    match format {
        CopyFormat::Text { null, .. } | CopyFormat::Csv { null, .. } => null,
        CopyFormat::Binary => "",
    }
}

/// The fields of one COPY row (`None`: NULL), unescaped; `None` when the
/// row is not well formed.
fn split_copy_line<'a>(format: &CopyFormat, line: &'a str) -> Option<Vec<Option<Cow<'a, str>>>> {
    match format {
        CopyFormat::Text { delimiter, null } => {
            let d = char::from(*delimiter);
            Some(
                line.split(d)
                    .map(|raw| (raw != null).then(|| unescape_text(raw)))
                    .collect(),
            )
        }
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
        } => split_csv(line, *delimiter, *quote, *escape, null),
        CopyFormat::Binary => None,
    }
}

/// A text-format value with its backslash escapes undone.
fn unescape_text(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    Cow::Owned(out)
}

/// The fields of a CSV row: quoted ones with their quotes and escapes
/// undone; an unquoted field equal to the NULL string is NULL.
fn split_csv<'a>(
    line: &'a str,
    delimiter: u8,
    quote: u8,
    escape: u8,
    null: &str,
) -> Option<Vec<Option<Cow<'a, str>>>> {
    let b = line.as_bytes();
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        if b.get(at) == Some(&quote) {
            let mut value = Vec::new();
            let mut i = at + 1;
            loop {
                let c = *b.get(i)?;
                // The escape before a quote or itself stands for that
                // character (a doubled quote, when the two are the same).
                let next = b.get(i + 1).copied();
                if c == escape && next.is_some_and(|n| n == quote || n == escape) {
                    value.extend(next);
                    i += 2;
                } else if c == quote {
                    i += 1;
                    break;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
            fields.push(Some(Cow::Owned(String::from_utf8(value).ok()?)));
            at = i;
        } else {
            let end = b[at..]
                .iter()
                .position(|&c| c == delimiter)
                .map_or(b.len(), |p| at + p);
            let raw = line.get(at..end)?;
            fields.push((raw != null).then_some(Cow::Borrowed(raw)));
            at = end;
        }
        match b.get(at) {
            None => return Some(fields),
            Some(&c) if c == delimiter => at += 1,
            Some(_) => return None,
        }
    }
}

/// Writes a value in the COPY format, escaped or quoted as the server would.
fn write_copy_value(format: &CopyFormat, value: &str, out: &mut String) {
    match format {
        CopyFormat::Text { delimiter, .. } => {
            let d = char::from(*delimiter);
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' if d == '\t' => out.push_str("\\t"),
                    c if c == d => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
        }
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
        } => {
            let (d, q, e) = (
                char::from(*delimiter),
                char::from(*quote),
                char::from(*escape),
            );
            let needs = value.is_empty()
                || value == null
                || value.contains([d, q, '\n', '\r'])
                || value.starts_with(' ')
                || value.ends_with(' ');
            if !needs {
                out.push_str(value);
                return;
            }
            out.push(q);
            for c in value.chars() {
                if c == q || c == e {
                    out.push(e);
                }
                out.push(c);
            }
            out.push(q);
        }
        CopyFormat::Binary => out.push_str(value),
    }
}

/// A text line of COPY FROM STDIN data longer than this is recorded in
/// pieces (a value split across two pieces may then be masked in neither).
const COPY_LINE_MAX: usize = 1 << 20;

/// COPY FROM STDIN data as it is recorded. The client cuts its data into
/// messages wherever it likes; the record is cut at rows instead, so that a
/// value (a card number, the held credential) is never masked in two halves.
/// Each row is recorded when its last byte arrives, which is before that
/// byte goes to the server: the server acts on a row only once it is whole.
/// The binary format (data that begins with its signature) is recorded as
/// rows of values, as a binary COPY TO STDOUT is.
#[derive(Debug, Default)]
pub(crate) struct CopyInRecord {
    /// Bytes not yet recorded: the start of a text line still arriving, or
    /// the first bytes of the data while its format is not yet known.
    pending: BytesMut,
    /// The binary format's reader, once the signature has been seen.
    binary: Option<BinaryCopy>,
    /// Whether the format is known.
    decided: bool,
    /// A binary row (or header) grew past [`COPY_LINE_MAX`]: the rest of
    /// this COPY is recorded as byte counts, so that a huge value is not
    /// held in memory for the record.
    counting: bool,
}

impl CopyInRecord {
    /// Nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.decided
    }

    /// Adds data on its way to the server; returns the masked text of the
    /// rows it completes.
    pub(crate) fn push(&mut self, masker: &Masker, data: &[u8], counts: &mut MaskCounts) -> String {
        if self.counting {
            return format!("<{} more bytes of binary COPY data>\n", data.len());
        }
        if let Some(binary) = &mut self.binary {
            let text = rows_text(binary.push(masker, data, counts).1);
            if binary.held() > COPY_LINE_MAX {
                let held = binary.held();
                self.binary = None;
                self.counting = true;
                return format!(
                    "{text}<a binary COPY row over {COPY_LINE_MAX} bytes: this row and the rest of the COPY are recorded as byte counts; {held} bytes so far>\n"
                );
            }
            return text;
        }
        // Only the new bytes can hold the line end not yet seen.
        let mut seen = self.pending.len();
        self.pending.extend_from_slice(data);
        if !self.decided {
            seen = 0;
            if self.pending.len() < COPY_SIGNATURE.len()
                && COPY_SIGNATURE.starts_with(&self.pending)
            {
                return String::new();
            }
            self.decided = true;
            if self.pending.starts_with(COPY_SIGNATURE) {
                self.binary = Some(BinaryCopy::default());
                let first = self.pending.split();
                return self.push(masker, &first, counts);
            }
        }
        let whole = match self.pending[seen..].iter().rposition(|&b| b == b'\n') {
            Some(nl) => seen + nl + 1,
            None if self.pending.len() > COPY_LINE_MAX => self.pending.len(),
            None => return String::new(),
        };
        let lines = self.pending.split_to(whole);
        masked_lossy(masker, &lines, counts)
    }

    /// The COPY ends: returns the masked text of everything not yet
    /// recorded, and starts afresh for the next one.
    pub(crate) fn finish(&mut self, masker: &Masker, counts: &mut MaskCounts) -> String {
        let text = match self.binary.take() {
            _ if self.counting => String::new(),
            Some(mut binary) => match binary.finish().len() {
                0 => String::new(),
                n => format!("<{n} bytes of an incomplete binary COPY row>"),
            },
            None => masked_lossy(masker, &self.pending, counts),
        };
        *self = CopyInRecord::default();
        text
    }
}

/// Rows for the record, one per line.
fn rows_text(lines: Vec<String>) -> String {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Text for the record, masked: read as UTF-8, lossily when it is not.
fn masked_lossy(masker: &Masker, data: &[u8], counts: &mut MaskCounts) -> String {
    let text = frame::lossy(data);
    mask_plain(masker, &text, counts).unwrap_or_else(|| text.into_owned())
}

/// Masks the value of a `FunctionCallResponse` body (length, then bytes):
/// text is masked, other bytes holding something to mask are withheld.
/// Returns the new body when something changed.
pub(crate) fn mask_function_result(
    masker: &Masker,
    body: &[u8],
    counts: &mut MaskCounts,
) -> Option<Vec<u8>> {
    let len = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let value = body.get(4..4 + usize::try_from(len).ok()?)?;
    let mut out = Vec::new();
    match std::str::from_utf8(value) {
        Ok(text) => {
            let masked = mask_plain(masker, text, counts)?;
            out.extend_from_slice(&(masked.len() as i32).to_be_bytes());
            out.extend_from_slice(masked.as_bytes());
        }
        Err(_) => {
            mask_binary_value(masker, &NO_FIELD, 0, value, counts)?;
            out.extend_from_slice(&(-1i32).to_be_bytes());
        }
    }
    Some(out)
}

/// The binary COPY format's signature.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Masks a binary-format COPY OUT stream, whose values carry no type: each
/// value is masked as text when it is UTF-8 and withheld (NULL) when its
/// lossy reading holds something to mask. Works across `CopyData` boundaries.
#[derive(Debug, Default)]
pub(crate) struct BinaryCopy {
    /// Each column's plan, when the statement says what the columns are.
    pub(crate) plans: Option<Vec<FieldPlan>>,
    buf: BytesMut,
    header_done: bool,
    /// The stream did not start with the signature: it is forwarded as it is.
    passthrough: bool,
}

impl BinaryCopy {
    /// Adds a chunk; returns the bytes to send now (complete tuples, masked)
    /// and the rows for the record.
    pub(crate) fn push(
        &mut self,
        masker: &Masker,
        data: &[u8],
        counts: &mut MaskCounts,
    ) -> (Bytes, Vec<String>) {
        self.buf.extend_from_slice(data);
        let mut out = BytesMut::new();
        let mut lines = Vec::new();
        loop {
            if !self.header_done {
                if self.buf.len() < 19 {
                    break;
                }
                if &self.buf[..11] != COPY_SIGNATURE {
                    // Not the format we know: pass everything through.
                    self.header_done = true;
                    self.passthrough = true;
                    continue;
                }
                let ext =
                    u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                        as usize;
                if self.buf.len() < 19 + ext {
                    break;
                }
                out.extend_from_slice(&self.buf.split_to(19 + ext));
                self.header_done = true;
                continue;
            }
            if self.passthrough {
                out.extend_from_slice(&self.buf.split());
                break;
            }
            match self.tuple(masker, counts) {
                Some((bytes, line)) => {
                    out.extend_from_slice(&bytes);
                    if let Some(line) = line {
                        lines.push(line);
                    }
                }
                None => break,
            }
        }
        (out.freeze(), lines)
    }

    /// How many bytes are held: an incomplete tuple (or header).
    pub(crate) fn held(&self) -> usize {
        self.buf.len()
    }

    /// What is left when the COPY ends (an incomplete tuple, sent as it is).
    pub(crate) fn finish(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// One complete tuple (or the trailer) off the buffer, masked.
    fn tuple(
        &mut self,
        masker: &Masker,
        counts: &mut MaskCounts,
    ) -> Option<(Bytes, Option<String>)> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return None;
        }
        let n = i16::from_be_bytes([b[0], b[1]]);
        if n < 0 {
            let trailer = self.buf.split_to(2).freeze();
            return Some((trailer, None));
        }
        let mut at = 2;
        let mut fields = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if len < 0 {
                fields.push(None);
                continue;
            }
            let v = b.get(at..at + len as usize)?;
            at += len as usize;
            fields.push(Some(v));
        }
        let mut out = BytesMut::with_capacity(at);
        out.put_i16(n);
        let mut line = String::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                line.push_str(" | ");
            }
            let Some(v) = f else {
                out.put_i32(-1);
                line.push_str("NULL");
                continue;
            };
            // PostgreSQL's text never holds a NUL byte: a value that does
            // is binary (a number, a composite, an array) whatever it reads
            // as.
            let text = std::str::from_utf8(v).ok().filter(|_| !v.contains(&0));
            let plan = self
                .plans
                .as_ref()
                .and_then(|p| p.get(i))
                .unwrap_or(&NO_FIELD);
            match text {
                Some(text) => {
                    let value = masker.mask_field(plan, text, counts);
                    out.put_i32(value.len() as i32);
                    out.put_slice(value.as_bytes());
                    line.push_str(&value);
                }
                None => match mask_binary_value(masker, plan, 0, v, counts) {
                    Some(masked) => {
                        out.put_i32(-1);
                        line.push_str(&masked);
                    }
                    None => {
                        out.put_i32(v.len() as i32);
                        out.put_slice(v);
                        line.push_str(&hex(v));
                    }
                },
            }
        }
        self.buf.advance(at);
        Some((out.freeze(), Some(line)))
    }
}

/// The spans of `text` that are runs of letters, digits and `.`, `-`,
/// `+`, `:` holding at least one digit (numbers, hex bytes, dates, times):
/// values an error message may show without quotes.
pub(crate) fn digit_runs(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    let mut digit = false;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        let part = c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | ':');
        match (part, start) {
            (true, None) => {
                start = Some(i);
                digit = c.is_ascii_digit();
            }
            (true, Some(_)) => digit |= c.is_ascii_digit(),
            (false, Some(s)) => {
                // A run's ends are its value's, not the sentence's (`:`
                // after a word, a full stop).
                let run = text[s..i].trim_end_matches(['.', ':', '-', '+']);
                if digit && !run.is_empty() {
                    out.push(s..s + run.len());
                }
                start = None;
            }
            (false, None) => {}
        }
    }
    out
}

/// Sorted spans with overlapping ones joined.
pub(crate) fn merge_spans(mut spans: Vec<std::ops::Range<usize>>) -> Vec<std::ops::Range<usize>> {
    spans.sort_by_key(|s| s.start);
    let mut out: Vec<std::ops::Range<usize>> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn numbers_in_a_message_are_found_without_the_words_around_them() {
        let runs = |t: &str| -> Vec<String> {
            super::digit_runs(t)
                .into_iter()
                .map(|r| t[r].to_owned())
                .collect()
        };
        assert_eq!(
            runs("index 85000 out of valid range, 0..0"),
            ["85000", "0..0"]
        );
        assert_eq!(
            runs("invalid byte sequence for encoding \"UTF8\": 0xf0 0x31"),
            ["UTF8", "0xf0", "0x31"]
        );
        assert_eq!(
            runs("date field value out of range: 2000-01-85000."),
            ["2000-01-85000"]
        );
        assert!(runs("division by zero").is_empty());
        assert_eq!(
            super::merge_spans(vec![5..9, 0..3, 2..4, 9..10]),
            [0..4, 5..10]
        );
    }
    use super::*;
    use airlock_core::Identity;
    use airlock_core::mask::{MaskConfig, MaskEngine};

    #[test]
    fn copy_rows_split_and_are_written_back_as_the_server_writes_them() {
        let text = CopyFormat::Text {
            delimiter: b'\t',
            null: "\\N".into(),
        };
        let got = split_copy_line(&text, "a\\tb\t\\N\tc\\\\d").unwrap();
        assert_eq!(got, vec![Some("a\tb".into()), None, Some("c\\d".into())]);
        let mut out = String::new();
        write_copy_value(&text, "a\tb\\c\nd", &mut out);
        assert_eq!(out, "a\\tb\\\\c\\nd");
        let csv = CopyFormat::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: String::new(),
        };
        let got = split_copy_line(&csv, "1,\"x,\"\"y\"\"\",,\"\",z").unwrap();
        assert_eq!(
            got,
            vec![
                Some("1".into()),
                Some("x,\"y\"".into()),
                None,
                Some("".into()),
                Some("z".into())
            ]
        );
        // An unterminated quote or text after a closing one: not a row.
        assert!(split_copy_line(&csv, "\"abc").is_none());
        assert!(split_copy_line(&csv, "\"a\"b,c").is_none());
        let backslash = CopyFormat::Csv {
            delimiter: b';',
            quote: b'"',
            escape: b'\\',
            null: "NULL".into(),
        };
        let got = split_copy_line(&backslash, "\"a\\\"b\";NULL").unwrap();
        assert_eq!(got, vec![Some("a\"b".into()), None]);
        for (format, value, written) in [
            (&csv, "x,\"y\"", "\"x,\"\"y\"\"\""),
            (&csv, "", "\"\""),
            (&csv, "plain", "plain"),
            (&backslash, "NULL", "\"NULL\""),
            (&backslash, "a\"b", "\"a\\\"b\""),
        ] {
            let mut out = String::new();
            write_copy_value(format, value, &mut out);
            assert_eq!(out, written, "{value:?}");
            assert_eq!(
                split_copy_line(format, &out).unwrap(),
                vec![Some(Cow::Borrowed(value))]
            );
        }
    }

    #[test]
    fn copy_rows_are_masked_by_their_columns_or_withheld() {
        let masker = masker();
        let plans = vec![masker.field_plan(&["t.id"]), masker.field_plan(&["t.ssn"])];
        let mut fields = CopyFields {
            format: CopyFormat::Text {
                delimiter: b'\t',
                null: "\\N".into(),
            },
            plans,
            header: true,
        };
        let mut counts = MaskCounts::new();
        // The header passes as text; rows are masked by column.
        let (out, _) = mask_copy_fields(&masker, &mut fields, b"id\tsecret\n", &mut counts);
        assert!(out.is_none());
        let (out, line) = mask_copy_fields(&masker, &mut fields, b"1\ths\\tx\n", &mut counts);
        assert_eq!(out.unwrap(), Bytes::from_static(b"1\t<REDACTED>\n"));
        assert_eq!(line.unwrap(), "1\t<REDACTED>");
        let (out, _) = mask_copy_fields(&masker, &mut fields, b"2\t\\N\n", &mut counts);
        assert!(out.is_none(), "NULL stays NULL");
        // A row that does not split into the columns: withheld whole.
        let (out, _) = mask_copy_fields(&masker, &mut fields, b"3\tx\ty\n", &mut counts);
        assert_eq!(out.unwrap(), Bytes::from_static(b"<REDACTED>\n"));
    }

    #[test]
    fn row_values_in_integrity_errors_are_found() {
        let spans = |d: &str| {
            let v = row_values(d).unwrap();
            let texts: Vec<&str> = v.spans.iter().map(|r| &d[r.clone()]).collect();
            (texts.join("|"), v.columns.map(|c| c.join(",")))
        };
        assert_eq!(
            spans("Failing row contains (7, null, E7-band-3, x (y)).").0,
            "7, null, E7-band-3, x (y)"
        );
        assert_eq!(
            spans("Key (email)=(a@b.c) already exists."),
            ("a@b.c".into(), Some("email".into()))
        );
        assert_eq!(
            spans("Key (team, \"Pay Grade\")=(x, E7) already exists."),
            ("x, E7".into(), Some("team,Pay Grade".into()))
        );
        assert_eq!(
            spans("Key (staff_id)=(9) is not present in table \"staff\"."),
            ("9".into(), Some("staff_id".into()))
        );
        assert_eq!(
            spans("Key (id)=(7) is still referenced from table \"x\"."),
            ("7".into(), Some("id".into()))
        );
        assert_eq!(
            spans("Key (r)=([1,5)) conflicts with existing key (r)=([2,3))."),
            ("[1,5)|[2,3)".into(), Some("r".into()))
        );
        // A key over an expression: its columns are not known.
        assert_eq!(
            spans("Key (lower(email::text))=(a@b.c) already exists."),
            ("a@b.c".into(), None)
        );
        assert_eq!(row_values("Key columns are fine."), None);
        assert_eq!(row_values("Table has 3 rows."), None);
    }

    fn masker() -> Masker {
        let config: MaskConfig = toml::from_str(
            "[[fields]]\nname = \"ssn\"\n[[fields]]\nname = \"salary\"\nstyle = \"partial\"",
        )
        .unwrap();
        let engine = MaskEngine::new(&config, vec!["hunter2-held".into()], [7; 32]).unwrap();
        engine.masker(
            "app",
            &Identity {
                subject: "t".into(),
                groups: vec![],
                issuer: "test".into(),
            },
        )
    }

    fn col(name: &str, type_oid: u32, format: i16) -> Column {
        Column::new(&masker(), name.into(), None, type_oid, format)
    }

    fn cells_of(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
        split_cells(&frame[5..])
            .unwrap()
            .into_iter()
            .map(|c| c.map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn rows_are_masked_by_column_and_detector_in_both_formats() {
        let m = masker();
        let cols = [
            col("email", oid::TEXT, 0),
            col("ssn", oid::INT8, 1),
            col("note", oid::VARCHAR, 1),
            col("doc", oid::JSONB, 1),
            col("n", oid::INT4, 1),
        ];
        let mut doc = vec![1u8];
        doc.extend_from_slice(br#"{"to":"a@example.com"}"#);
        let body = row(&[
            Some(b"bob@example.org"),
            Some(&123456789i64.to_be_bytes()),
            Some(b"key hunter2-held"),
            Some(&doc),
            Some(&5i32.to_be_bytes()),
        ]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[0].as_deref(), Some(&b"<EMAIL>"[..]));
        assert_eq!(
            cells[1], None,
            "a binary int8 under a column rule is withheld"
        );
        assert_eq!(cells[2].as_deref(), Some(&b"key <SECRET>"[..]));
        let doc = cells[3].clone().unwrap();
        assert_eq!(doc[0], 1);
        assert_eq!(&doc[1..], br#"{"to":"<EMAIL>"}"#);
        assert_eq!(cells[4].as_deref(), Some(&5i32.to_be_bytes()[..]));
        let line = line.unwrap();
        assert!(
            line.starts_with("<EMAIL> | <REDACTED> | key <SECRET> | "),
            "{line}"
        );
        assert!(line.ends_with(" | 5"), "{line}");
        assert!(!counts.is_empty());

        // Nothing to mask: the original bytes are forwarded.
        let plain = row(&[Some(b"plain"), None]);
        let (frame, line) = mask_row(&m, &cols[..2], &plain, &mut counts, true).unwrap();
        assert!(frame.is_none());
        assert_eq!(line.as_deref(), Some("plain | NULL"));
    }

    #[test]
    fn binary_text_arrays_are_masked_element_by_element() {
        let m = masker();
        let mut arr = BytesMut::new();
        arr.put_i32(1);
        arr.put_i32(1);
        arr.put_u32(oid::TEXT);
        arr.put_i32(3);
        arr.put_i32(1);
        for e in [Some(&b"x@example.com"[..]), None, Some(b"y")] {
            match e {
                Some(v) => {
                    arr.put_i32(v.len() as i32);
                    arr.put_slice(v);
                }
                None => arr.put_i32(-1),
            }
        }
        let cols = [col("tags", 1009, 1)];
        let body = row(&[Some(&arr)]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        assert_eq!(line.as_deref(), Some("{<EMAIL>,NULL,y}"));
        let cell = cells_of(&frame.unwrap())[0].clone().unwrap();
        assert!(contains(&cell, b"<EMAIL>") && !contains(&cell, b"x@example.com"));
        assert_eq!(&cell[..20], &arr[..20], "the header is kept");
    }

    fn contains(h: &[u8], n: &[u8]) -> bool {
        h.windows(n.len()).any(|w| w == n)
    }

    #[test]
    fn binary_copy_is_masked_across_message_boundaries() {
        let m = masker();
        let mut stream = BytesMut::new();
        stream.put_slice(COPY_SIGNATURE);
        stream.put_i32(0);
        stream.put_i32(0);
        for v in [&b"c@example.com"[..], b"ok"] {
            stream.put_i16(2);
            stream.put_i32(4);
            stream.put_i32(42);
            stream.put_i32(v.len() as i32);
            stream.put_slice(v);
        }
        stream.put_i16(-1);
        let mut copy = BinaryCopy::default();
        let mut counts = MaskCounts::new();
        let mut out = Vec::new();
        let mut lines = Vec::new();
        // Split into awkward chunks.
        for chunk in stream.chunks(7) {
            let (bytes, l) = copy.push(&m, chunk, &mut counts);
            out.extend_from_slice(&bytes);
            lines.extend(l);
        }
        out.extend_from_slice(&copy.finish());
        assert!(contains(&out, b"<EMAIL>") && !contains(&out, b"c@example.com"));
        assert!(out.starts_with(COPY_SIGNATURE));
        assert!(out.ends_with(&[0xff, 0xff]));
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" | <EMAIL>"), "{lines:?}");
    }

    #[test]
    fn parameters_render_masked_for_the_record() {
        let m = masker();
        let mut counts = MaskCounts::new();
        let params = vec![
            Some(Bytes::from_static(b"d@example.com")),
            None,
            Some(Bytes::copy_from_slice(&7i32.to_be_bytes())),
            Some(Bytes::from_static(b"it's")),
        ];
        let s = render_params(
            &m,
            &params,
            &[0, 0, 1, 0],
            &[0, 0, oid::INT4, 0],
            &mut counts,
        );
        assert_eq!(s, "$1 = '<EMAIL>', $2 = NULL, $3 = '7', $4 = 'it''s'");
        // Of no known type (a fast-path argument): an int8 holding a card
        // number is withheld, a small one is shown.
        let params = vec![
            Some(Bytes::copy_from_slice(&4111111111111111i64.to_be_bytes())),
            Some(Bytes::copy_from_slice(&42i64.to_be_bytes())),
        ];
        let s = render_params(&m, &params, &[1], &[], &mut counts);
        assert!(s.starts_with("$1 = '<WITHHELD>', $2 = '"), "{s}");
        assert!(!s.contains("000e9a"), "{s}");
    }

    fn row(cells: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(cells.len() as i16);
        for c in cells {
            match c {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.to_vec()
    }

    #[test]
    fn cells_split_and_reject_truncation() {
        let body = row(&[Some(b"1"), None, Some(b"")]);
        let cells = split_cells(&body).unwrap();
        assert_eq!(cells, vec![Some(&b"1"[..]), None, Some(&b""[..])]);
        assert!(split_cells(&body[..body.len() - 1]).is_err() || body.ends_with(&[0, 0, 0, 0]));
        let mut bad = row(&[Some(b"abc")]);
        bad.truncate(bad.len() - 1);
        assert!(split_cells(&bad).is_err());
    }

    #[test]
    fn a_row_is_rebuilt_from_its_first_changed_cell() {
        let m = masker();
        let cols = [
            col("id", 23, 0),
            col("note", 25, 0),
            col("mail", 25, 0),
            col("n", 23, 0),
            col("tail", 25, 0),
        ];
        let body = row(&[Some(b"7"), None, Some(b"x@example.com"), Some(b"5"), None]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, false).unwrap();
        assert_eq!(line, None, "not rendered unless asked");
        let frame = frame.unwrap();
        assert_eq!(&frame[5..7], &5i16.to_be_bytes(), "the cell count");
        assert_eq!(
            cells_of(&frame),
            vec![
                Some(b"7".to_vec()),
                None,
                Some(b"<EMAIL>".to_vec()),
                Some(b"5".to_vec()),
                None
            ]
        );
        assert_eq!(
            u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
            frame.len() - 1,
            "the message length is rewritten"
        );
        // Extra bytes after the last cell are refused, not forwarded.
        let mut long = body.clone();
        long.push(0);
        assert!(mask_row(&m, &cols, &long, &mut counts, false).is_err());
    }

    /// `numeric`'s binary format from its parts.
    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_render_as_postgresql_prints_them() {
        let cases: [(Vec<u8>, &str); 7] = [
            (
                numeric(3, 0, 0, &[4111, 1111, 1111, 1111]),
                "4111111111111111",
            ),
            (numeric(0, 0, 2, &[12, 5000]), "12.50"),
            (numeric(-1, 0, 4, &[1]), "0.0001"),
            (numeric(0, 0x4000, 1, &[3, 1000]), "-3.1"),
            (numeric(1, 0, 0, &[1]), "10000"),
            (numeric(0, 0, 0, &[]), "0"),
            (numeric(0, 0xC000, 0, &[]), "NaN"),
        ];
        for (bytes, text) in cases {
            assert_eq!(render_numeric(&bytes).as_deref(), Some(text));
        }
        // A length that does not match the digit count is no number.
        assert_eq!(render_numeric(&numeric(0, 0, 0, &[1])[..9]), None);
    }

    #[test]
    fn binary_numbers_are_masked_by_their_digits() {
        let m = masker();
        let card = 4111111111111111i64;
        let cols = [
            col("card", oid::INT8, 1),
            col("total", oid::NUMERIC, 1),
            col("salary", oid::INT4, 1),
            col("n", oid::INT8, 1),
            col("price", oid::NUMERIC, 1),
        ];
        let total = numeric(3, 0, 0, &[4111, 1111, 1111, 1111]);
        let price = numeric(0, 0, 2, &[12, 5000]);
        // 10000's bytes (00 00 27 10) hold no letter or digit: a partial
        // mask of them would change nothing.
        let body = row(&[
            Some(&card.to_be_bytes()),
            Some(&total),
            Some(&10000i32.to_be_bytes()),
            Some(&42i64.to_be_bytes()),
            Some(&price),
        ]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[0], None, "a card number kept as bigint is withheld");
        assert_eq!(cells[1], None, "and as numeric");
        assert_eq!(cells[2], None, "a partial rule withholds every value");
        assert_eq!(cells[3].as_deref(), Some(&42i64.to_be_bytes()[..]));
        assert_eq!(cells[4].as_deref(), Some(&price[..]));
        let line = line.unwrap();
        assert!(!line.contains("4111111111111111"), "{line}");
        assert!(!line.contains("10000"), "{line}");
        assert!(line.ends_with(" | 42 | 12.50"), "{line}");
        // Bind parameters are recorded the same way.
        let params = [
            Some(Bytes::copy_from_slice(&card.to_be_bytes())),
            Some(Bytes::copy_from_slice(&42i64.to_be_bytes())),
        ];
        let text = render_params(&m, &params, &[1], &[oid::INT8, oid::INT8], &mut counts);
        assert!(!text.contains("4111111111111111"), "{text}");
        assert!(text.ends_with("$2 = '42'"), "{text}");
    }

    #[test]
    fn field_rules_reach_inside_json_documents() {
        let m = masker();
        let cols = [
            col("profile", oid::JSONB, 1),
            col("raw", oid::JSON, 0),
            col("other", oid::JSONB, 1),
        ];
        // Nine digits without separators: no detector would take them.
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(br#"{"name": "x", "ids": {"ssn": "078051120"}}"#);
        let mut plain = vec![1u8];
        plain.extend_from_slice(br#"{"ssn_note":  "078051120"}"#);
        let body = row(&[Some(&jsonb), Some(br#"[{"ssn": 78051120}]"#), Some(&plain)]);
        let mut counts = MaskCounts::new();
        let (frame, _) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        let doc = cells[0].clone().unwrap();
        assert_eq!(doc[0], 1, "jsonb keeps its version byte");
        assert_eq!(
            std::str::from_utf8(&doc[1..]).unwrap(),
            r#"{"ids":{"ssn":"<REDACTED>"},"name":"x"}"#
        );
        assert_eq!(cells[1].as_deref(), Some(&br#"[{"ssn":"<REDACTED>"}]"#[..]));
        // A document with nothing to mask goes out byte for byte.
        assert_eq!(cells[2].as_deref(), Some(&plain[..]));
    }

    /// A binary array: one dimension, `elements` of type `elem` (None: NULL).
    fn array(elem: u32, elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [1i32, 0, elem as i32, elements.len() as i32, 1] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for e in elements {
            match e {
                Some(e) => {
                    v.extend_from_slice(&(e.len() as i32).to_be_bytes());
                    v.extend_from_slice(e);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    #[test]
    fn json_under_a_secret_name_unreadable_json_and_arrays_of_numbers_or_json() {
        let m = masker();
        let cols = [
            col("api_token", oid::JSONB, 1),
            col("deep", oid::JSONB, 1),
            col("cards", 1016, 1),
            col("docs", oid::JSON_ARRAY, 1),
        ];
        // A JSON string under a secret-like column name is masked whole, as
        // the same text in a text column is.
        let mut token = vec![1u8];
        token.extend_from_slice(br#""bob@example.org 9f8e7d6c5b4a3921aa""#);
        // Deeper than the JSON reader goes: it cannot show that no rule's
        // key is inside.
        let mut deep = vec![1u8];
        deep.extend_from_slice(br#"{"ssn":"078051120","p":"#);
        deep.extend_from_slice(&[b'['; 200]);
        deep.extend_from_slice(&[b']'; 200]);
        deep.push(b'}');
        let card = 4111111111111111i64.to_be_bytes();
        let cards = array(oid::INT8, &[Some(&card), Some(&42i64.to_be_bytes())]);
        let docs = array(oid::JSON, &[Some(br#"{"ssn":"078051120"}"#), Some(b"{}")]);
        let body = row(&[Some(&token), Some(&deep), Some(&cards), Some(&docs)]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        let token = cells[0].clone().unwrap_or_default();
        assert_eq!(token, b"\x01\"<SECRET>\"", "a document still");
        assert_eq!(cells[1], None, "unreadable JSON is withheld");
        let cards = cells[2].clone().unwrap();
        assert_eq!(
            &cards[4..8],
            &1i32.to_be_bytes(),
            "the array says it holds NULLs"
        );
        assert_eq!(cards, {
            let mut want = array(oid::INT8, &[None, Some(&42i64.to_be_bytes())]);
            want[4..8].copy_from_slice(&1i32.to_be_bytes());
            want
        });
        assert_eq!(
            cells[3].clone().unwrap(),
            array(oid::JSON, &[Some(br#"{"ssn":"<REDACTED>"}"#), Some(b"{}")])
        );
        let line = line.unwrap();
        assert!(line.contains("{<WITHHELD>,42}"), "{line}");
        assert!(!line.contains("078051120"), "{line}");
        // Without field rules, unreadable JSON is masked as text.
        let config: MaskConfig = toml::from_str("").unwrap();
        let plain = MaskEngine::new(&config, vec![], [7; 32]).unwrap().masker(
            "app",
            &Identity {
                subject: "t".into(),
                groups: vec![],
                issuer: "test".into(),
            },
        );
        let cols = [Column::new(&plain, "deep".into(), None, oid::JSONB, 1)];
        let body = row(&[Some(&deep)]);
        let (frame, _) = mask_row(&plain, &cols, &body, &mut counts, false).unwrap();
        assert_eq!(frame, None, "forwarded as it is");
    }

    #[test]
    fn text_arrays_of_json_are_masked_document_by_document() {
        let m = masker();
        let cols = [
            col("docs", oid::JSON_ARRAY, 0),
            col("bdocs", oid::JSONB_ARRAY, 0),
        ];
        // As psql receives them: each document quoted, its quotes escaped.
        let docs: &[u8] = br#"{"{\"ssn\": \"078051120\", \"n\": 1}",NULL,"{}"}"#;
        let nested: &[u8] = br#"[0:1]={{"{\"a\": \"x\\\\y\"}"},{"{\"ssn\": 7}"}}"#;
        let body = row(&[Some(docs), Some(nested)]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(
            String::from_utf8(cells[0].clone().unwrap()).unwrap(),
            r#"{"{\"n\":1,\"ssn\":\"<REDACTED>\"}",NULL,"{}"}"#
        );
        assert_eq!(
            String::from_utf8(cells[1].clone().unwrap()).unwrap(),
            r#"[0:1]={{"{\"a\": \"x\\\\y\"}"},{"{\"ssn\":\"<REDACTED>\"}"}}"#,
            "bounds, nesting and escapes kept"
        );
        assert!(!line.unwrap().contains("078051120"));
        // Nothing to mask: the value goes out as the server wrote it.
        let plain: &[u8] = br#"{"{\"n\": 1}",NULL}"#;
        let (frame, _) =
            mask_row(&m, &cols[..1], &row(&[Some(plain)]), &mut counts, false).unwrap();
        assert_eq!(frame, None);
        // A literal that cannot be read could hide a key: withheld.
        let broken: &[u8] = br#"{"{\"ssn\": \"078051120\"}""#;
        let (frame, _) =
            mask_row(&m, &cols[..1], &row(&[Some(broken)]), &mut counts, false).unwrap();
        assert_eq!(cells_of(&frame.unwrap()), [None]);
    }

    #[test]
    fn copy_in_data_is_recorded_by_rows_wherever_the_client_cuts_it() {
        let m = masker();
        let mut counts = MaskCounts::new();
        let mut rec = CopyInRecord::default();
        // A card number and an email split across messages, and a
        // two-byte character cut in half.
        let mut texts = Vec::new();
        for piece in [
            &b"1\t41111111"[..],
            b"11111111\tJos\xc3",
            b"\xa9\n2\tbob@exa",
            b"mple.org\n3\tlast",
        ] {
            texts.push(rec.push(&m, piece, &mut counts));
        }
        texts.push(rec.finish(&m, &mut counts));
        assert_eq!(texts[0], "", "no row is complete yet");
        assert_eq!(texts[1], "");
        assert!(
            texts[2].starts_with("1\t") && texts[2].ends_with("\tJosé\n"),
            "{texts:?}"
        );
        assert!(!texts.concat().contains("4111"), "{texts:?}");
        assert!(!texts.concat().contains("bob@"), "{texts:?}");
        assert_eq!(texts[4], "3\tlast", "the rest at the end");
        assert!(rec.is_empty());

        // The binary format, its signature and a value cut across messages.
        let mut data = COPY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&2i16.to_be_bytes());
        data.extend_from_slice(&15i32.to_be_bytes());
        data.extend_from_slice(b"bob@example.org");
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&(-1i16).to_be_bytes());
        let mut text = String::new();
        for piece in [&data[..5], &data[5..30], &data[30..]] {
            text.push_str(&rec.push(&m, piece, &mut counts));
        }
        text.push_str(&rec.finish(&m, &mut counts));
        assert!(!text.contains("bob@"), "{text}");
        assert!(text.ends_with(" | NULL\n"), "{text}");
        // A binary COPY cut short is said to be.
        rec.push(&m, &data[..25], &mut counts);
        assert_eq!(
            rec.finish(&m, &mut counts),
            "<6 bytes of an incomplete binary COPY row>"
        );
        // A value too large to hold for the record: from there on, byte
        // counts (a header claiming a huge extension is the same).
        let mut huge = data[..19].to_vec();
        huge.extend_from_slice(&1i16.to_be_bytes());
        huge.extend_from_slice(&(3i32 << 20).to_be_bytes());
        let mut texts = vec![rec.push(&m, &huge, &mut counts)];
        for _ in 0..3 {
            texts.push(rec.push(&m, &[b'x'; 1 << 19], &mut counts));
        }
        assert_eq!(texts[..2], ["", ""]);
        assert!(
            texts[2].starts_with("<a binary COPY row over 1048576 bytes"),
            "{}",
            texts[2]
        );
        assert_eq!(texts[3], "<524288 more bytes of binary COPY data>\n");
        assert_eq!(rec.finish(&m, &mut counts), "");
        assert!(rec.is_empty());
        let mut ext = data[..15].to_vec();
        ext.extend_from_slice(&i32::MAX.to_be_bytes());
        rec.push(&m, &ext, &mut counts);
        let text = rec.push(&m, &vec![0; (1 << 20) + 1], &mut counts);
        assert!(text.starts_with("<a binary COPY row over"), "{text}");
        rec.finish(&m, &mut counts);
    }

    #[test]
    fn function_call_arguments_are_read_or_refused_when_malformed() {
        let mut body = 955u32.to_be_bytes().to_vec();
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let (formats, values) = function_call_arguments(&body).unwrap();
        assert_eq!(formats, [1]);
        assert_eq!(
            values,
            [Some(Bytes::from(7i32.to_be_bytes().to_vec())), None]
        );
        // An argument longer than the message, a negative count.
        let mut long = body.clone();
        long[10..14].copy_from_slice(&400i32.to_be_bytes());
        assert_eq!(function_call_arguments(&long), None);
        let mut negative = body.clone();
        negative[4..6].copy_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(function_call_arguments(&negative), None);
    }

    #[test]
    fn numbers_inside_a_binary_composite_are_judged_by_their_digits() {
        let m = masker();
        // ROW(4111111111111111::int8, 'x') and ROW(42::int8, 'x').
        let composite = |n: i64| {
            let mut v = 2i32.to_be_bytes().to_vec();
            v.extend_from_slice(&oid::INT8.to_be_bytes());
            v.extend_from_slice(&8i32.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&oid::TEXT.to_be_bytes());
            v.extend_from_slice(&1i32.to_be_bytes());
            v.push(b'x');
            v
        };
        let cols = [col("r", 2249, 1), col("s", 2249, 1)];
        let (card, plain) = (composite(4111111111111111), composite(42));
        let body = row(&[Some(&card), Some(&plain)]);
        let mut counts = MaskCounts::new();
        let (frame, _) = mask_row(&m, &cols, &body, &mut counts, false).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[0], None, "withheld");
        assert_eq!(cells[1].as_deref(), Some(&plain[..]));
        // Bytes that are not exactly a composite are not read as one.
        assert_eq!(composite_fields(&card[..card.len() - 1]), None);
    }

    #[test]
    fn arrays_of_any_type_are_judged_element_by_element() {
        let m = masker();
        // A 70-byte note: its length word ends in `F`, which read together
        // with the text hides the SSN after it.
        let note = b"123-45-6789 was provided by the applicant on the intake form, verified";
        assert_eq!(note.len(), 70);
        let plain = b"nothing to see in this note at all, it is just long enough to matter";
        let record = |text: &[u8]| {
            let mut v = 1i32.to_be_bytes().to_vec();
            v.extend_from_slice(&oid::TEXT.to_be_bytes());
            v.extend_from_slice(&(text.len() as i32).to_be_bytes());
            v.extend_from_slice(text);
            v
        };
        // record[] (not a type the gateway lists), and a composite holding
        // a text[].
        let records = array(2249, &[Some(&record(note)), Some(&record(plain))]);
        let quiet = array(2249, &[Some(&record(plain))]);
        let tags = array(oid::TEXT, &[Some(note)]);
        let mut holder = 1i32.to_be_bytes().to_vec();
        holder.extend_from_slice(&1009u32.to_be_bytes());
        holder.extend_from_slice(&(tags.len() as i32).to_be_bytes());
        holder.extend_from_slice(&tags);
        let cols = [col("a", 2287, 1), col("b", 2287, 1), col("c", 2249, 1)];
        let body = row(&[Some(&records), Some(&quiet), Some(&holder)]);
        let mut counts = MaskCounts::new();
        let (frame, _) = mask_row(&m, &cols, &body, &mut counts, false).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[0], None, "withheld");
        assert_eq!(cells[1].as_deref(), Some(&quiet[..]), "nothing to hide");
        assert_eq!(cells[2], None, "withheld");
        // Binary COPY: values holding a NUL byte are binary, not text.
        let mut copy = BinaryCopy::default();
        let mut data = COPY_SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&1i16.to_be_bytes());
        data.extend_from_slice(&(tags.len() as i32).to_be_bytes());
        data.extend_from_slice(&tags);
        let (out, lines) = copy.push(&m, &data, &mut counts);
        assert!(!lines.concat().contains("6789"), "{lines:?}");
        assert!(!contains(&out, b"6789"));
        // Bytes that are not exactly an array are not read as one.
        assert_eq!(array_items(&tags[..tags.len() - 1]), None);
    }

    #[test]
    fn bytea_in_text_format_is_judged_by_its_bytes() {
        let m = masker();
        let hexed = |text: &str| format!("\\x{}", hex::encode(text));
        let mail = hexed("from bob@example.org");
        let plain = hexed("nothing here");
        let cols = [col("a", oid::BYTEA, 0), col("b", oid::BYTEA, 0)];
        let body = row(&[Some(mail.as_bytes()), Some(plain.as_bytes())]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[0].as_deref(), Some(hexed("from <EMAIL>").as_bytes()));
        assert_eq!(cells[1].as_deref(), Some(plain.as_bytes()), "as sent");
        assert!(!line.unwrap().contains(&hex::encode("bob@")));
    }

    #[test]
    fn binary_addresses_are_judged_by_their_text() {
        let m = masker();
        let v4 = [2u8, 32, 0, 4, 203, 0, 113, 9];
        let mut v6 = vec![3u8, 128, 0, 16];
        v6.extend_from_slice(
            &"2001:db8::17"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        assert_eq!(render_inet(oid::INET, &v4).as_deref(), Some("203.0.113.9"));
        assert_eq!(
            render_inet(oid::CIDR, &[2, 8, 1, 4, 10, 0, 0, 0]).as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(render_inet(oid::INET, &v4[..7]), None, "malformed");
        let cols = [
            col("a", oid::INET, 1),
            col("b", oid::INET, 1),
            col("n", oid::INT4, 1),
        ];
        let body = row(&[Some(&v4), Some(&v6), Some(&7i32.to_be_bytes())]);
        let mut counts = MaskCounts::new();
        let (frame, line) = mask_row(&m, &cols, &body, &mut counts, true).unwrap();
        let cells = cells_of(&frame.unwrap());
        assert_eq!(cells[..2], [None, None], "withheld");
        assert_eq!(cells[2].as_deref(), Some(&7i32.to_be_bytes()[..]));
        let line = line.unwrap();
        assert!(
            !line.contains("203.0.113.9") && !line.contains("2001:db8"),
            "{line}"
        );
    }

    #[test]
    fn copy_rows_that_are_not_utf8_are_masked_by_their_lossy_reading() {
        let m = masker();
        let mut counts = MaskCounts::new();
        // LATIN1 "José" beside an email.
        let (out, line) = mask_copy_line(&m, b"bob@example.org\tJos\xe9\n", &mut counts);
        let out = out.unwrap();
        assert!(!contains(&out, b"bob@"), "{out:?}");
        assert!(line.unwrap().starts_with("<EMAIL>\tJos"));
        // Nothing to mask: the row goes out byte for byte.
        let (out, line) = mask_copy_line(&m, b"7\tJos\xe9\n", &mut counts);
        assert_eq!(out, None);
        assert_eq!(line.as_deref(), Some("7\tJos\u{fffd}"));
    }

    #[test]
    fn binary_values_render_for_the_record() {
        assert_eq!(render_binary(oid::INT4, &42i32.to_be_bytes()), "42");
        assert_eq!(render_binary(oid::INT8, &(-7i64).to_be_bytes()), "-7");
        assert_eq!(render_binary(oid::BOOL, &[1]), "t");
        assert_eq!(render_binary(9999, &[0xde, 0xad]), "\\xdead");
        assert_eq!(
            render_binary(oid::UUID, &[0x11; 16]),
            "11111111-1111-1111-1111-111111111111"
        );
    }
}
