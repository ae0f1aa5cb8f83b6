//! Field rules and structured (JSON) documents.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use super::detect::{Det, Label};
use super::{Masker, into_string};
use crate::MaskCounts;

/// Where a field rule applies.
#[derive(Debug)]
pub(crate) enum FieldPat {
    /// `column` or `table.column` (`schema.table.column`), compared
    /// case-insensitively as Postgres folds unquoted names.
    Column {
        table: Option<String>,
        column: String,
    },
    /// A JSON path.
    Path(Vec<PSeg>),
}

/// One step of a JSON path pattern.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PSeg {
    Key(String),
    Index(usize),
    /// `*` / `[*]`: any one key or index.
    Any,
    /// `..`: any number of steps (zero or more).
    Descend,
}

/// One step of the path to a value in a document.
#[derive(Debug)]
pub(crate) enum ASeg {
    Key(String),
    Index(usize),
}

impl FieldPat {
    pub(crate) fn parse(name: &str) -> Result<FieldPat, String> {
        if name.is_empty() || name.chars().any(char::is_whitespace) && !name.starts_with('$') {
            return Err("a field name must be non-empty, without spaces".into());
        }
        if let Some(rest) = name.strip_prefix('$') {
            return parse_path(rest).map(FieldPat::Path);
        }
        let lower = name.to_ascii_lowercase();
        if lower.split('.').any(str::is_empty) {
            return Err(format!(
                "{name:?} is not `column`, `table.column` or a JSON path starting with `$`"
            ));
        }
        Ok(match lower.rsplit_once('.') {
            None => FieldPat::Column {
                table: None,
                column: lower,
            },
            Some((t, c)) => FieldPat::Column {
                table: Some(t.to_string()),
                column: c.to_string(),
            },
        })
    }

    pub(crate) fn is_path(&self) -> bool {
        matches!(self, FieldPat::Path(_))
    }

    /// Whether a column reported by a connector (`column`, `table.column`,
    /// `schema.table.column`, `table.*` for a whole row, `*` for anything)
    /// is this rule's.
    pub(crate) fn matches_column(&self, field: &str) -> bool {
        let FieldPat::Column { table, column } = self else {
            return false;
        };
        let (ftable, fcol) = match field.rsplit_once('.') {
            Some((t, c)) => (Some(t), c),
            None => (None, field),
        };
        // `table.*`: a whole row of the table (a value built of it, such
        // as `row_to_json(t)`), which holds every column of it; `*`: a
        // value that may hold any column of any table.
        if fcol == "*" {
            return ftable.is_none_or(|t| self.may_cover_table(t));
        }
        if !fcol.eq_ignore_ascii_case(column) {
            return false;
        }
        match (table, ftable) {
            (None, _) => true,
            // The connector could not tell the table: mask rather than leak.
            (Some(_), None) => true,
            // Checked for every cell of a result: compared in place, no
            // lower-cased copies.
            (Some(t), Some(ft)) => dotted_suffix(ft, t) || dotted_suffix(t, ft),
        }
    }

    /// Whether this rule may cover some column of `table` (`table` or
    /// `schema.table`) when the table's columns are not known: a rule for
    /// that table, or one that names no table.
    pub(crate) fn may_cover_table(&self, table: &str) -> bool {
        match self {
            FieldPat::Column { table: None, .. } => true,
            FieldPat::Column { table: Some(t), .. } => {
                dotted_suffix(table, t) || dotted_suffix(t, table)
            }
            FieldPat::Path(_) => false,
        }
    }

    /// Whether the value at `path` (whose last key is `key`) is this rule's.
    /// Bare names match a key at any depth; `table.column` rules are for
    /// rows, not documents.
    fn matches_json(&self, path: &[ASeg], key: Option<&str>) -> bool {
        match self {
            FieldPat::Column {
                table: None,
                column,
            } => key.is_some_and(|k| k.eq_ignore_ascii_case(column)),
            FieldPat::Column { .. } => false,
            FieldPat::Path(p) => path_match(p, path),
        }
    }
}

fn parse_path(mut s: &str) -> Result<Vec<PSeg>, String> {
    let bad = |why: &str| {
        format!("bad JSON path: {why} (examples: $.customer.email, $.items[*].card, $..password)")
    };
    let mut segs = Vec::new();
    let name_end = |s: &str| s.find(['.', '[']).unwrap_or(s.len());
    while !s.is_empty() {
        if let Some(rest) = s.strip_prefix("..") {
            segs.push(PSeg::Descend);
            if rest.starts_with('[') {
                s = rest;
                continue;
            }
            let n = name_end(rest);
            if n == 0 {
                return Err(bad("`..` must be followed by a name"));
            }
            let name = &rest[..n];
            segs.push(if name == "*" {
                PSeg::Any
            } else {
                PSeg::Key(name.to_string())
            });
            s = &rest[n..];
        } else if let Some(rest) = s.strip_prefix('.') {
            let n = name_end(rest);
            if n == 0 {
                return Err(bad("`.` must be followed by a name"));
            }
            let name = &rest[..n];
            segs.push(if name == "*" {
                PSeg::Any
            } else {
                PSeg::Key(name.to_string())
            });
            s = &rest[n..];
        } else if let Some(rest) = s.strip_prefix('[') {
            let close = rest.find(']').ok_or_else(|| bad("unclosed `[`"))?;
            let inner = rest[..close].trim();
            segs.push(if inner == "*" {
                PSeg::Any
            } else if let Ok(i) = inner.parse::<usize>() {
                PSeg::Index(i)
            } else if inner.len() >= 2
                && ((inner.starts_with('\'') && inner.ends_with('\''))
                    || (inner.starts_with('"') && inner.ends_with('"')))
            {
                PSeg::Key(inner[1..inner.len() - 1].to_string())
            } else {
                return Err(bad(&format!("`[{inner}]` is not [*], [number] or ['key']")));
            });
            s = &rest[close + 1..];
        } else {
            return Err(bad("expected `.`, `..` or `[` after `$`"));
        }
    }
    if segs.is_empty() {
        return Err(bad("`$` alone would mask the whole document"));
    }
    Ok(segs)
}

fn path_match(pat: &[PSeg], path: &[ASeg]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((PSeg::Descend, rest)) => (0..=path.len()).any(|i| path_match(rest, &path[i..])),
        Some((p, rest)) => {
            let Some((a, tail)) = path.split_first() else {
                return false;
            };
            let step = match (p, a) {
                (PSeg::Any, _) => true,
                (PSeg::Key(k), ASeg::Key(ak)) => k == ak,
                (PSeg::Index(i), ASeg::Index(ai)) => i == ai,
                _ => false,
            };
            step && path_match(rest, tail)
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub(crate) fn mask_document(m: &Masker, doc: &mut Value, counts: &mut MaskCounts) {
    let mut path = Vec::new();
    walk(m, doc, &mut path, counts);
}

fn walk(m: &Masker, v: &mut Value, path: &mut Vec<ASeg>, counts: &mut MaskCounts) {
    let track = m.profile.json_paths;
    match v {
        Value::Object(map) => {
            kube(m, map, counts);
            mask_keys(m, map, counts);
            for (k, child) in map.iter_mut() {
                if track {
                    path.push(ASeg::Key(k.clone()));
                }
                if let Some(rule) = json_rule(m, path, Some(k)) {
                    whole_value(m, Label::Field(rule), child, counts);
                } else if let Some(det) = scalar_text(child).and_then(|t| {
                    super::detect::named_secret(&m.profile.plan, k.as_bytes(), t.as_bytes())
                }) {
                    whole_value(m, Label::Det(det), child, counts);
                } else {
                    walk(m, child, path, counts);
                }
                if track {
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                if track {
                    path.push(ASeg::Index(i));
                }
                match json_rule(m, path, None) {
                    Some(rule) => whole_value(m, Label::Field(rule), item, counts),
                    None => walk(m, item, path, counts),
                }
                if track {
                    path.pop();
                }
            }
        }
        Value::String(s) => {
            if let Some(out) = m.mask_bytes(s.as_bytes(), counts) {
                *s = into_string(out);
            }
        }
        Value::Number(n) => {
            // A card number sent as a JSON number is still a card number.
            let text = n.to_string();
            if let Some(out) = m.mask_bytes(text.as_bytes(), counts) {
                *v = Value::String(into_string(out));
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn json_rule(m: &Masker, path: &[ASeg], key: Option<&str>) -> Option<u16> {
    m.shared
        .fields
        .iter()
        .zip(&m.profile.fields_on)
        .position(|(f, on)| *on && f.pat.matches_json(path, key))
        .and_then(|i| u16::try_from(i).ok())
}

/// Replaces a value (every leaf of it, for objects and arrays) under `label`.
fn whole_value(m: &Masker, label: Label, v: &mut Value, counts: &mut MaskCounts) {
    match v {
        Value::Null => {}
        Value::String(s) => *s = m.whole(label, s.as_bytes(), counts),
        Value::Number(_) | Value::Bool(_) => {
            let text = v.to_string();
            *v = Value::String(m.whole(label, text.as_bytes(), counts));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| whole_value(m, label, i, counts)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|i| whole_value(m, label, i, counts)),
    }
}

/// Object keys can hold data too (a map keyed by e-mail address).
fn mask_keys(m: &Masker, map: &mut Map<String, Value>, counts: &mut MaskCounts) {
    let renames: Vec<(String, String)> = map
        .keys()
        .filter_map(|k| {
            m.mask_bytes(k.as_bytes(), counts)
                .map(|o| (k.clone(), into_string(o)))
        })
        .collect();
    for (old, new) in renames {
        if let Some(v) = map.remove(&old) {
            // Two keys masked to the same token must not overwrite each other.
            let mut key = new.clone();
            let mut n = 2;
            while map.contains_key(&key) {
                key = format!("{new}#{n}");
                n += 1;
            }
            map.insert(key, v);
        }
    }
}

/// Kubernetes Secrets: every value of `data` and `stringData` is masked
/// whole, in a `Secret` and in the `items` of a `SecretList`, and so is the
/// copy kubectl keeps in the last-applied-configuration annotation.
fn kube(m: &Masker, map: &mut Map<String, Value>, counts: &mut MaskCounts) {
    if !m.profile.plan.is_on(Det::KubeSecret) {
        return;
    }
    match map.get("kind").and_then(Value::as_str) {
        Some("Secret") => mask_secret(m, map, counts),
        Some("SecretList") => {
            if let Some(Value::Array(items)) = map.get_mut("items") {
                for item in items {
                    if let Value::Object(obj) = item {
                        mask_secret(m, obj, counts);
                    }
                }
            }
        }
        _ => {}
    }
}

fn mask_secret(m: &Masker, obj: &mut Map<String, Value>, counts: &mut MaskCounts) {
    let label = Label::Det(Det::KubeSecret);
    for (field, base64) in [("data", true), ("stringData", false)] {
        let Some(Value::Object(d)) = obj.get_mut(field) else {
            continue;
        };
        for v in d.values_mut() {
            match v {
                Value::String(s) if s.is_empty() => {}
                // `data` values stay valid base64 so that clients decoding
                // them (kubectl describe, client-go) do not fail.
                Value::String(s) if base64 => {
                    let raw = STANDARD
                        .decode(s.as_bytes())
                        .unwrap_or_else(|_| s.as_bytes().to_vec());
                    let masked = m.whole(label, &raw, counts);
                    *s = STANDARD.encode(masked);
                }
                other => whole_value(m, label, other, counts),
            }
        }
    }
    let annotation = obj
        .get_mut("metadata")
        .and_then(|md| md.get_mut("annotations"))
        .and_then(|a| a.get_mut(LAST_APPLIED));
    if let Some(Value::String(s)) = annotation {
        match serde_json::from_str::<Value>(s) {
            Ok(mut inner) => {
                mask_document(m, &mut inner, counts);
                *s = inner.to_string();
            }
            Err(_) => *s = m.whole(label, s.as_bytes(), counts),
        }
    }
}

/// Whether `name` is `suffix` or ends with `.suffix`, ignoring ASCII case
/// (`public.users` against `users`).
fn dotted_suffix(name: &str, suffix: &str) -> bool {
    let (n, s) = (name.as_bytes(), suffix.as_bytes());
    match n.len().checked_sub(s.len()) {
        Some(0) => n.eq_ignore_ascii_case(s),
        Some(at) => n[at - 1] == b'.' && n[at..].eq_ignore_ascii_case(s),
        None => false,
    }
}
