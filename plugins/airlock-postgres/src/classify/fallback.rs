//! Statements sqlparser does not parse but whose effect is plain from their
//! first keywords, because their grammar has no room for anything that runs
//! now: maintenance (`VACUUM (VERBOSE) t`), rules and triggers (their actions
//! run later, on events), and role grants (`GRANT admin TO bob`).
//!
//! `VACUUM` and `ANALYZE` are always read here, as sqlparser knows only other
//! dialects' forms of them. `TABLE t` is `SELECT * FROM t`.
//!
//! Everything else that does not parse stays opaque. A piece is only
//! recognised when its parentheses balance, so a fragment of a statement that
//! the splitter cut at a `;` inside parentheses (a rule's action list) is not.

use airlock_core::{Access, SqlKind, SqlOperation, TableAccess};

use super::Classified;
use super::lex::{Piece, TokenKind};

/// The operation of a piece sqlparser could not parse, if its keywords make it certain.
pub(super) fn classify(piece: &Piece<'_>) -> Option<Classified> {
    if !balanced(piece) {
        return None;
    }
    let op = |kind, object: Option<&str>, tables: Vec<TableAccess>| {
        Some(Classified::plain(SqlOperation {
            text: piece.text.to_owned(),
            kind,
            object: object.map(str::to_owned),
            tables,
            has_where: None,
        }))
    };
    if piece.is_word(0, "table") {
        // TABLE [ONLY] name [*]: short for SELECT * FROM name.
        let start = if piece.is_word(1, "only") { 2 } else { 1 };
        let (name, mut end) = qualified_name(piece, start)?;
        if piece.token_text(end) == "*" {
            end += 1;
        }
        if end != piece.tokens.len() {
            return None;
        }
        let read = TableAccess {
            name,
            access: Access::Read,
        };
        return op(SqlKind::Select, None, vec![read]);
    }
    if piece.is_word(0, "vacuum") {
        let tables = maintenance_tables(piece, Access::Write)?;
        return op(SqlKind::Vacuum, None, tables);
    }
    if piece.is_word(0, "analyze") || piece.is_word(0, "analyse") {
        let tables = maintenance_tables(piece, Access::Read)?;
        return op(SqlKind::Vacuum, None, tables);
    }
    if piece.is_word(0, "grant") {
        return op(SqlKind::Grant, None, Vec::new());
    }
    if piece.is_word(0, "revoke") {
        return op(SqlKind::Revoke, None, Vec::new());
    }
    if piece.is_word(0, "create") {
        let mut i = 1;
        if piece.is_word(i, "or") && piece.is_word(i + 1, "replace") {
            i += 2;
        }
        if piece.is_word(i, "rule") {
            // CREATE RULE name AS ON event TO table ...
            let table = name_after(piece, "to", i)?;
            return op(SqlKind::Create, Some("rule"), vec![write(table)]);
        }
        if piece.is_word(i, "constraint") {
            i += 1;
        }
        if piece.is_word(i, "trigger") {
            // CREATE TRIGGER name {BEFORE|AFTER|INSTEAD OF} event [OR ...] ON table ...
            let table = name_after(piece, "on", i)?;
            return op(SqlKind::Create, Some("trigger"), vec![write(table)]);
        }
    }
    None
}

/// Whether the piece is a `VACUUM` or `ANALYZE`, which are read here rather
/// than by sqlparser (whose grammar for them is other dialects').
pub(super) fn is_maintenance(piece: &Piece<'_>) -> bool {
    ["vacuum", "analyze", "analyse"]
        .iter()
        .any(|w| piece.is_word(0, w))
}

fn write(name: String) -> TableAccess {
    TableAccess {
        name,
        access: Access::Write,
    }
}

/// Whether parentheses balance, never closing more than were opened.
fn balanced(piece: &Piece<'_>) -> bool {
    let mut depth = 0usize;
    for token in &piece.tokens {
        match token.kind {
            TokenKind::LParen => depth += 1,
            TokenKind::RParen => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => {}
        }
    }
    depth == 0
}

/// The tables of `VACUUM|ANALYZE [(options)] [FULL|FREEZE|VERBOSE|ANALYZE ...] [table [(columns)], ...]`,
/// or `None` when the piece has anything else in it.
fn maintenance_tables(piece: &Piece<'_>, access: Access) -> Option<Vec<TableAccess>> {
    let mut i = 1;
    if kind(piece, i) == Some(TokenKind::LParen) {
        i = skip_parens(piece, i)?;
    }
    while ["full", "freeze", "verbose", "analyze", "analyse"]
        .iter()
        .any(|w| piece.is_word(i, w))
    {
        i += 1;
    }
    let mut tables = Vec::new();
    while i < piece.tokens.len() {
        if piece.is_word(i, "only") {
            i += 1;
        }
        let (name, next) = qualified_name(piece, i)?;
        tables.push(TableAccess { name, access });
        i = next;
        if kind(piece, i) == Some(TokenKind::LParen) {
            i = skip_parens(piece, i)?;
        }
        match kind(piece, i) {
            None => break,
            Some(TokenKind::Comma) => i += 1,
            Some(_) => return None,
        }
    }
    Some(tables)
}

/// The qualified name after the first top-level `keyword` following token `from`.
fn name_after(piece: &Piece<'_>, keyword: &str, from: usize) -> Option<String> {
    let mut depth = 0usize;
    for i in from..piece.tokens.len() {
        match kind(piece, i) {
            Some(TokenKind::LParen) => depth += 1,
            Some(TokenKind::RParen) => depth = depth.saturating_sub(1),
            _ if depth == 0 && piece.is_word(i, keyword) => {
                let mut j = i + 1;
                if piece.is_word(j, "only") {
                    j += 1;
                }
                return qualified_name(piece, j).map(|(name, _)| name);
            }
            _ => {}
        }
    }
    None
}

fn kind(piece: &Piece<'_>, i: usize) -> Option<TokenKind> {
    piece.tokens.get(i).map(|t| t.kind)
}

/// The index just past the parenthesised group opening at `i`.
fn skip_parens(piece: &Piece<'_>, mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while let Some(k) = kind(piece, i) {
        match k {
            TokenKind::LParen => depth += 1,
            TokenKind::RParen => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `name[.name...]` starting at token `i`, lower-cased, and the index after it.
fn qualified_name(piece: &Piece<'_>, mut i: usize) -> Option<(String, usize)> {
    let mut parts = Vec::new();
    loop {
        let part = match kind(piece, i)? {
            TokenKind::Word => piece.token_text(i).to_lowercase(),
            TokenKind::QuotedIdent => {
                let quoted = piece.token_text(i);
                quoted
                    .get(1..quoted.len().saturating_sub(1))?
                    .replace("\"\"", "\"")
                    .to_lowercase()
            }
            _ => return None,
        };
        parts.push(part);
        i += 1;
        if kind(piece, i) == Some(TokenKind::Dot) {
            i += 1;
        } else {
            return Some((parts.join("."), i));
        }
    }
}
