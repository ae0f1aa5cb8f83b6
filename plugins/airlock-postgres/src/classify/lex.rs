//! A small lexer that knows just enough of PostgreSQL's lexical rules to split
//! a query string into statements: quotes, `E'...'` escapes, dollar quotes,
//! quoted identifiers and (nested) comments.
//!
//! sqlparser re-parses every piece and must find exactly one statement in it,
//! so this splitter and sqlparser's own tokenizer check each other: where they
//! disagree the piece does not parse and becomes opaque.

use std::ops::Range;

/// What a token is; only the distinctions the classifier needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// A keyword or unquoted identifier.
    Word,
    /// A `"quoted"` identifier.
    QuotedIdent,
    /// A string constant of any form (plain, `E''`, dollar-quoted).
    String,
    /// `;`
    Semicolon,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `.`
    Dot,
    /// `,`
    Comma,
    /// Anything else: numbers, operators, parameters.
    Other,
}

/// A token and where it is in the query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) span: Range<usize>,
}

/// Why a query string cannot be split reliably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LexError {
    /// A quote, dollar quote or comment is not closed; the server rejects the string.
    Unterminated,
    /// A plain string literal whose end depends on `standard_conforming_strings`
    /// (a backslash before a quote), so the statement boundaries do too.
    BackslashQuote,
    /// A `$` that PostgreSQL and sqlparser read differently: a dollar-quote
    /// tag with a character outside ASCII (sqlparser takes only alphanumeric
    /// characters, PostgreSQL any byte above 0x7f, so one sees a string
    /// where the other sees code), or a parameter number running into an
    /// identifier (`$1abc$`: sqlparser opens a dollar quote, PostgreSQL 14
    /// reads `$1` and then a name, PostgreSQL 15 rejects it).
    AmbiguousDollar,
    /// In a string where a backslash escapes, a byte above 0x7f right
    /// before a backslash that is followed by a quote or a backslash. In the
    /// client encodings SJIS, BIG5, GBK, GB18030 and UHC that byte and the
    /// backslash can be one character, which escapes nothing: where the
    /// string ends (and so the statement boundaries) depends on the
    /// session's `client_encoding`.
    EncodingBackslash,
}

/// One statement's worth of the query string.
#[derive(Clone, Debug)]
pub(super) struct Piece<'a> {
    /// The statement's text, trimmed of surrounding whitespace (comments kept).
    pub(super) text: &'a str,
    /// Its tokens, comments and whitespace left out, spans relative to `text`.
    pub(super) tokens: Vec<Token>,
}

impl Piece<'_> {
    /// Whether the piece has a `U&"..."` identifier or `U&'...'` string:
    /// PostgreSQL decodes their escapes (`U&"pg_terminate\005fbackend"` is
    /// `pg_terminate_backend`), sqlparser does not, so the names the
    /// classifier would see are not the names the server runs.
    pub(super) fn has_unicode_escapes(&self) -> bool {
        self.tokens.windows(3).any(|w| {
            w[0].kind == TokenKind::Word
                && self
                    .text
                    .get(w[0].span.clone())
                    .is_some_and(|t| t.eq_ignore_ascii_case("u"))
                && self.text.get(w[1].span.clone()) == Some("&")
                && matches!(w[2].kind, TokenKind::QuotedIdent | TokenKind::String)
                && w[0].span.end == w[1].span.start
                && w[1].span.end == w[2].span.start
        })
    }

    /// The `i`-th token's text.
    pub(super) fn token_text(&self, i: usize) -> &str {
        self.tokens
            .get(i)
            .and_then(|t| self.text.get(t.span.clone()))
            .unwrap_or("")
    }

    /// Whether the `i`-th token is the unquoted word `word` (case-insensitive).
    pub(super) fn is_word(&self, i: usize, word: &str) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| t.kind == TokenKind::Word)
            && self.token_text(i).eq_ignore_ascii_case(word)
    }
}

/// Splits `sql` at top-level semicolons into pieces that hold at least one
/// token; pieces of only whitespace and comments are dropped.
pub(super) fn split(sql: &str) -> Result<Vec<Piece<'_>>, LexError> {
    let tokens = tokenize(sql)?;
    // Most query strings are one statement: one piece, and its tokens are
    // copied once, re-based on the piece's text.
    let mut pieces = Vec::with_capacity(1);
    let mut push = |start: usize, end: usize, tokens: &[Token]| {
        if tokens.is_empty() {
            return;
        }
        let raw = &sql[start..end];
        // Only what PostgreSQL takes for white space: a non-breaking space
        // starts a name there, and is the first token here too.
        let lead = raw.len() - raw.trim_start_matches(pg_space).len();
        let text = raw.trim_matches(pg_space);
        let offset = start + lead;
        let tokens = tokens
            .iter()
            .map(|t| Token {
                kind: t.kind,
                span: t.span.start - offset..t.span.end - offset,
            })
            .collect();
        pieces.push(Piece { text, tokens });
    };
    let (mut start, mut first) = (0, 0);
    for (i, token) in tokens.iter().enumerate() {
        if token.kind == TokenKind::Semicolon {
            push(start, token.span.start, &tokens[first..i]);
            start = token.span.end;
            first = i + 1;
        }
    }
    push(start, sql.len(), &tokens[first..]);
    Ok(pieces)
}

/// The query string with the contents of every string and number literal
/// blanked out (`\0s`, `\0n`; a query string cannot hold a NUL byte), or
/// `None` when it has no literal or a statement starts with `EXPLAIN` or
/// `COPY`, whose options (`ANALYZE false`, `ENCODING 'LATIN1'`) are literals
/// that change what it does.
pub(super) fn shape(sql: &str, pieces: &[Piece<'_>]) -> Option<String> {
    let mut literals = Vec::new();
    for piece in pieces {
        if piece.is_word(0, "explain") || piece.is_word(0, "copy") {
            return None;
        }
        // Piece texts are slices of `sql`: turn token spans into spans of `sql`.
        let base = piece.text.as_ptr() as usize - sql.as_ptr() as usize;
        for (i, token) in piece.tokens.iter().enumerate() {
            let literal = match token.kind {
                TokenKind::String => Some("\0s"),
                TokenKind::Other if is_number(piece.token_text(i)) => Some("\0n"),
                _ => None,
            };
            if let Some(mark) = literal {
                literals.push((base + token.span.start..base + token.span.end, mark));
            }
        }
    }
    if literals.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for (span, mark) in literals {
        out.push_str(sql.get(at..span.start)?);
        out.push_str(mark);
        at = span.end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

/// One part of a query string, for masking it without taking code out of
/// sight ([`parts`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// Code: key words, names, operators, parameters, punctuation, white
    /// space.
    Code,
    /// A value: a string constant, a quoted identifier (a column alias can
    /// hold data), a number, or a comment. Only `content` may be masked, and
    /// masked content must not hold any of `closers`: it would end the value
    /// early (or open a comment) and change what the rest of the text reads
    /// as.
    Value {
        content: Range<usize>,
        closers: Vec<String>,
    },
}

/// A query string cut into [`Part`]s, in order, covering all of it. `None`
/// when the string does not lex.
pub(super) fn parts(sql: &str) -> Option<Vec<(Range<usize>, Part)>> {
    let tokens = tokenize(sql).ok()?;
    let b = sql.as_bytes();
    let mut parts = Vec::with_capacity(tokens.len() + 1);
    let mut at = 0;
    for token in &tokens {
        comments(b, at..token.span.start, &mut parts);
        let text = sql.get(token.span.clone())?;
        let (s, e) = (token.span.start, token.span.end);
        let part = match token.kind {
            TokenKind::String if text.starts_with('$') => {
                // `$tag$…$tag$`: the tag is the text up to the second `$`.
                let tag_len = text[1..].find('$')? + 2;
                Part::Value {
                    content: s + tag_len..e - tag_len,
                    closers: vec![text[..tag_len].to_owned()],
                }
            }
            TokenKind::String => Part::Value {
                // `'…'` or `E'…'`.
                content: s + text.find('\'')? + 1..e - 1,
                closers: vec!["'".into(), "\\".into()],
            },
            TokenKind::QuotedIdent => Part::Value {
                content: s + 1..e - 1,
                closers: vec!["\"".into()],
            },
            TokenKind::Other if is_number(text) => Part::Value {
                content: s..e,
                closers: ["'", "\"", "$", ";", "--", "/*"].map(String::from).to_vec(),
            },
            _ => Part::Code,
        };
        parts.push((token.span.clone(), part));
        at = e;
    }
    comments(b, at..b.len(), &mut parts);
    Some(parts)
}

/// The comments (values) and white space (code) of a stretch between
/// tokens, which holds nothing else.
fn comments(b: &[u8], gap: Range<usize>, parts: &mut Vec<(Range<usize>, Part)>) {
    let mut i = gap.start;
    while i < gap.end {
        let start = i;
        if b[i] == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < gap.end && b[i] != b'\n' && b[i] != b'\r' {
                i += 1;
            }
            let closers = vec!["\n".into(), "\r".into()];
            parts.push((
                start..i,
                Part::Value {
                    content: start + 2..i,
                    closers,
                },
            ));
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i = block_comment_end(b, i).unwrap_or(gap.end).min(gap.end);
            let closers = vec!["/*".into(), "*/".into()];
            let content = start + 2..(i - 2).max(start + 2);
            parts.push((start..i, Part::Value { content, closers }));
        } else {
            while i < gap.end && !(b[i..].starts_with(b"--") || b[i..].starts_with(b"/*")) {
                i += 1;
            }
            parts.push((start..i, Part::Code));
        }
    }
}

/// The code of a query string (see [`parts`]): its code tokens' texts, in
/// order, white space left out. `None` when the string does not lex.
pub(super) fn code(sql: &str) -> Option<Vec<&str>> {
    tokenize(sql)
        .ok()?
        .into_iter()
        .filter(|t| match t.kind {
            TokenKind::String | TokenKind::QuotedIdent => false,
            TokenKind::Other => !sql.get(t.span.clone()).is_some_and(is_number),
            _ => true,
        })
        .map(|t| sql.get(t.span))
        .collect()
}

/// Whether a token is a plain numeric constant (`42`, `1.5`, `2e10`). Only
/// these are blanked: a token like `1from` is read as `1 FROM` by some
/// servers and parsers, so it must stay part of the shape.
fn is_number(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !int.is_empty()
        && digits(int)
        && digits(frac)
        && exponent.is_none_or(|e| !e.is_empty() && digits(e))
}

/// The text after the first top-level `AS` of a `PREPARE name [(types)] AS statement`.
pub(super) fn prepare_body(piece: &Piece<'_>) -> Option<String> {
    let mut depth = 0usize;
    for (i, token) in piece.tokens.iter().enumerate() {
        match token.kind {
            TokenKind::LParen => depth += 1,
            TokenKind::RParen => depth = depth.saturating_sub(1),
            TokenKind::Word if depth == 0 && piece.is_word(i, "as") => {
                return piece
                    .text
                    .get(token.span.end..)
                    .map(|rest| rest.trim_matches(pg_space).to_owned());
            }
            _ => {}
        }
    }
    None
}

/// Whether `b` may continue an identifier (PostgreSQL allows `$` and any non-ASCII byte).
fn ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `b` may start an identifier.
fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// PostgreSQL's white space (`[ \t\n\r\f\v]`; the vertical tab since
/// PostgreSQL 17, a syntax error before, so taking it for white space is
/// right for both).
fn pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b')
}

fn tokenize(sql: &str) -> Result<Vec<Token>, LexError> {
    let b = sql.as_bytes();
    // About one token per six bytes of SQL: one allocation for most strings.
    let mut tokens = Vec::with_capacity(b.len() / 6 + 4);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = match c {
            c if pg_space(char::from(c)) => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i)?;
                continue;
            }
            b'\'' => {
                i = plain_string_end(b, i)?;
                TokenKind::String
            }
            b'"' => {
                i = quoted_end(b, i, b'"')?;
                TokenKind::QuotedIdent
            }
            b'$' => match dollar_tag(b, i)? {
                Some(tag_end) => {
                    i = dollar_string_end(b, i, tag_end)?;
                    TokenKind::String
                }
                None => {
                    // A positional parameter `$1` or a stray `$`.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    TokenKind::Other
                }
            },
            c if ident_start(c) => {
                while i < b.len() && ident_cont(b[i]) {
                    i += 1;
                }
                // `E'...'` (only a lone E, written right before the quote) is an
                // escape string, where a backslash escapes the quote.
                if i - start == 1 && (c == b'e' || c == b'E') && b.get(i) == Some(&b'\'') {
                    i = escape_string_end(b, i)?;
                    TokenKind::String
                } else {
                    TokenKind::Word
                }
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                TokenKind::Other
            }
            b';' => {
                i += 1;
                TokenKind::Semicolon
            }
            b'(' => {
                i += 1;
                TokenKind::LParen
            }
            b')' => {
                i += 1;
                TokenKind::RParen
            }
            b'.' => {
                i += 1;
                TokenKind::Dot
            }
            b',' => {
                i += 1;
                TokenKind::Comma
            }
            _ => {
                i += 1;
                TokenKind::Other
            }
        };
        tokens.push(Token {
            kind,
            span: start..i,
        });
    }
    Ok(tokens)
}

/// The end of a `/* ... */` comment starting at `i`; PostgreSQL nests them.
fn block_comment_end(b: &[u8], mut i: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth = depth.saturating_sub(1);
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(LexError::Unterminated)
}

/// The end of a quoted token starting at `i` where a doubled quote escapes it.
fn quoted_end(b: &[u8], mut i: usize, quote: u8) -> Result<usize, LexError> {
    i += 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(LexError::Unterminated)
}

/// The end of an escape string whose opening quote is at `i`.
fn escape_string_end(b: &[u8], mut i: usize) -> Result<usize, LexError> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' if b[i - 1] >= 0x80 && matches!(b.get(i + 1), Some(b'\'' | b'\\')) => {
                return Err(LexError::EncodingBackslash);
            }
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(LexError::Unterminated)
}

/// The end of a plain string constant starting at `i`, as the server reads it
/// with `standard_conforming_strings = on` (the default). A client can turn the
/// setting off, and then a backslash escapes the next quote; when that would
/// end the constant somewhere else the split is ambiguous.
fn plain_string_end(b: &[u8], i: usize) -> Result<usize, LexError> {
    let end = quoted_end(b, i, b'\'')?;
    if b[i..end].contains(&b'\\') && escape_string_end(b, i) != Ok(end) {
        return Err(LexError::BackslashQuote);
    }
    Ok(end)
}

/// If a dollar quote `$tag$` starts at `i`, the index just past it; `None`
/// for a parameter (`$1`) or a stray `$`.
fn dollar_tag(b: &[u8], i: usize) -> Result<Option<usize>, LexError> {
    let mut j = i + 1;
    if b.get(j) == Some(&b'$') {
        return Ok(Some(j + 1));
    }
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        return match b.get(j) {
            Some(&c) if ident_cont(c) => Err(LexError::AmbiguousDollar),
            _ => Ok(None),
        };
    }
    if !b.get(j).copied().is_some_and(ident_start) {
        return Ok(None);
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return Ok(None);
    }
    if !b[i + 1..j].is_ascii() {
        return Err(LexError::AmbiguousDollar);
    }
    Ok(Some(j + 1))
}

/// The end of a dollar-quoted string whose opening tag is `b[i..tag_end]`.
fn dollar_string_end(b: &[u8], i: usize, tag_end: usize) -> Result<usize, LexError> {
    let tag = &b[i..tag_end];
    b[tag_end..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|p| tag_end + p + tag.len())
        .ok_or(LexError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        split(sql).unwrap().into_iter().map(|p| p.text).collect()
    }

    #[test]
    fn splits_at_top_level_semicolons_only() {
        assert_eq!(
            texts("SELECT 1; DROP TABLE t"),
            ["SELECT 1", "DROP TABLE t"]
        );
        assert_eq!(
            texts("SELECT 'a;b', \"c;d\", $$e;f$$, $x$ $$;$$ $x$, E'g\\';h'; SELECT 2"),
            [
                "SELECT 'a;b', \"c;d\", $$e;f$$, $x$ $$;$$ $x$, E'g\\';h'",
                "SELECT 2"
            ]
        );
        assert_eq!(texts("SELECT 'it''s;'"), ["SELECT 'it''s;'"]);
        assert_eq!(
            texts("/* a; /* nested; */ still; */ SELECT 1 -- x;\n; SELECT 2"),
            ["/* a; /* nested; */ still; */ SELECT 1 -- x;", "SELECT 2"]
        );
    }

    #[test]
    fn drops_empty_and_comment_only_pieces() {
        assert_eq!(texts(" ;; -- c\n ; /* d */"), Vec::<&str>::new());
        assert_eq!(texts("SELECT 1;;"), ["SELECT 1"]);
    }

    #[test]
    fn dollar_in_identifiers_and_parameters_is_not_a_quote() {
        assert_eq!(
            texts("SELECT a$b$ FROM t; SELECT $1"),
            ["SELECT a$b$ FROM t", "SELECT $1"]
        );
    }

    #[test]
    fn unterminated_quotes_and_comments_are_errors() {
        for sql in [
            "SELECT 'x",
            "SELECT \"x",
            "SELECT $a$ x $b$",
            "/* x",
            "/* /* */",
        ] {
            assert_eq!(split(sql).unwrap_err(), LexError::Unterminated, "{sql}");
        }
        assert!(split("SELECT 'x' /* */").is_ok());
    }

    #[test]
    fn backslash_before_quote_in_plain_string_is_ambiguous() {
        // With standard_conforming_strings off, the DROP is outside the string.
        assert_eq!(
            split("SELECT '\\', ' ; DROP TABLE t; --'").unwrap_err(),
            LexError::BackslashQuote
        );
        // Backslashes elsewhere do not change where the string ends.
        assert_eq!(
            texts("SELECT '\\d+' ; SELECT 2"),
            ["SELECT '\\d+'", "SELECT 2"]
        );
    }

    #[test]
    fn prepare_body_skips_parenthesised_types() {
        let pieces = split("PREPARE p (int, text) AS DELETE FROM t WHERE id = $1").unwrap();
        assert_eq!(
            prepare_body(&pieces[0]).as_deref(),
            Some("DELETE FROM t WHERE id = $1")
        );
    }
}
