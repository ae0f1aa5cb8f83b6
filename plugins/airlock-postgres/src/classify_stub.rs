//! TEMPORARY stand-in for `classify.rs` (written in parallel); deleted once
//! the real classifier is merged. Same API, naive behaviour.

use std::sync::Arc;

use airlock_core::{SqlKind, SqlOperation};

/// One classified statement.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The statement.
    pub operation: SqlOperation,
    /// For `PREPARE name AS inner`: the name and the inner statement.
    pub prepare: Option<(String, SqlOperation)>,
    /// For `EXECUTE name`: the name.
    pub execute: Option<String>,
    /// For `DEALLOCATE name` (`Some(name)`) or `DEALLOCATE ALL` (`None`).
    pub deallocate: Option<Option<String>>,
}

/// The classifier.
#[derive(Debug)]
pub struct Classifier;

impl Classifier {
    /// A classifier with a cache of `capacity` texts.
    pub fn new(_capacity: usize) -> Self {
        Classifier
    }

    /// Classifies every statement of `sql`.
    pub fn classify(&self, sql: &str) -> Arc<[Classified]> {
        sql.split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(one)
            .collect::<Vec<_>>()
            .into()
    }
}

fn op(text: &str) -> SqlOperation {
    let lower = text.to_ascii_lowercase();
    let word = lower.split_whitespace().next().unwrap_or("");
    let kind = match word {
        "select" | "with" | "table" | "values" => SqlKind::Select,
        "insert" => SqlKind::Insert,
        "update" => SqlKind::Update,
        "delete" => SqlKind::Delete,
        "create" => SqlKind::Create,
        "drop" => SqlKind::Drop,
        "truncate" => SqlKind::Truncate,
        "set" | "reset" => SqlKind::Set,
        "show" => SqlKind::Show,
        "begin" | "commit" | "rollback" | "start" => SqlKind::Transaction,
        "prepare" => SqlKind::Prepare,
        "execute" => SqlKind::Execute,
        "deallocate" => SqlKind::Deallocate,
        "copy" if lower.contains("from stdin") => SqlKind::CopyIn,
        "copy" => SqlKind::CopyOut,
        "listen" | "unlisten" => SqlKind::Listen,
        "notify" => SqlKind::Notify,
        _ => SqlKind::Opaque,
    };
    let has_where = matches!(kind, SqlKind::Update | SqlKind::Delete).then(|| lower.contains("where"));
    SqlOperation {
        text: text.to_string(),
        kind,
        object: None,
        tables: Vec::new(),
        has_where,
    }
}

fn one(text: &str) -> Classified {
    let operation = op(text);
    let lower = text.to_ascii_lowercase();
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or("").to_ascii_lowercase();
    let name = words.next().map(|w| {
        w.split('(').next().unwrap_or("").to_ascii_lowercase()
    });
    let prepare = (first == "prepare").then(|| {
        let inner = lower.find(" as ").map(|i| &text[i + 4..]).unwrap_or("");
        (name.clone().unwrap_or_default(), op(inner))
    });
    let execute = (first == "execute").then(|| name.clone().unwrap_or_default());
    let deallocate = (first == "deallocate").then(|| match name.as_deref() {
        Some("all") | None => None,
        Some(n) => Some(n.to_string()),
    });
    Classified {
        operation,
        prepare,
        execute,
        deallocate,
    }
}
