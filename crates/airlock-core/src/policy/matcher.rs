//! Compiled rule conditions. Everything that can be prepared ahead (globs,
//! regexes, lower-casing, kind sets) is prepared at compile time, because
//! `decide` runs on every statement's path.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::ops::Range;

use regex::{RegexSet, RegexSetBuilder, SetMatches};

use super::config::{CommandMatch, HttpMatch, KubeMatch, SqlMatch};
use crate::{
    Access, CommandOperation, HttpOperation, Identity, KubeOperation, Operation, SqlKind,
    SqlOperation, TableAccess,
};

/// How many kinds of operation there are; rules are bucketed per kind.
pub(crate) const OP_KINDS: usize = 4;

/// The bucket of an operation.
pub(crate) fn op_kind(op: &Operation) -> usize {
    match op {
        Operation::Sql(_) => 0,
        Operation::Command(_) => 1,
        Operation::Kube(_) => 2,
        Operation::Http(_) => 3,
    }
}

/// Builds a glob set, or `None` for an empty pattern list (no condition).
pub(crate) fn glob_set(
    patterns: &[String],
    case_insensitive: bool,
    literal_separator: bool,
) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern, case_insensitive, literal_separator)?);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| format!("invalid glob patterns {patterns:?}: {e}"))
}

/// Compiles one glob pattern.
pub(crate) fn glob(
    pattern: &str,
    case_insensitive: bool,
    literal_separator: bool,
) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .literal_separator(literal_separator)
        .build()
        .map_err(|e| format!("invalid glob pattern {pattern:?}: {}", e.kind()))
}

/// The regular expressions of all rules, one set per operation field, so a
/// decision scans the command line (or statement text, or path) once however
/// many rules look at it.
#[derive(Debug, Default)]
pub(crate) struct RegexPools {
    pub(crate) sql_text: Vec<String>,
    pub(crate) command_line: Vec<String>,
    pub(crate) http_path: Vec<String>,
}

/// Validates `patterns` one by one (so an error names the bad one) and adds
/// them to `pool`; the rule keeps the range of its patterns.
fn register(pool: &mut Vec<String>, patterns: &[String]) -> Result<Option<Range<usize>>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for pattern in patterns {
        regex::Regex::new(pattern)
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
    }
    let start = pool.len();
    pool.extend(patterns.iter().cloned());
    Ok(Some(start..pool.len()))
}

/// The compiled [`RegexPools`].
#[derive(Debug)]
pub(crate) struct RegexSets {
    sql_text: RegexSet,
    command_line: RegexSet,
    http_path: RegexSet,
}

impl RegexSets {
    pub(crate) fn compile(pools: &RegexPools) -> Result<Self, String> {
        let build = |patterns: &[String]| {
            RegexSetBuilder::new(patterns)
                // Each pattern compiled alone already; the union is larger.
                .size_limit(64 << 20)
                .build()
                .map_err(|e| format!("the rules' regular expressions are too large together: {e}"))
        };
        Ok(RegexSets {
            sql_text: build(&pools.sql_text)?,
            command_line: build(&pools.command_line)?,
            http_path: build(&pools.http_path)?,
        })
    }

    /// A lazy scan of the field of `op` that rules' regexes look at.
    pub(crate) fn scan<'a>(&'a self, op: &'a Operation) -> Scan<'a> {
        let (set, haystack) = match op {
            Operation::Sql(op) => (&self.sql_text, op.text.as_str()),
            Operation::Command(op) => (&self.command_line, op.line.as_str()),
            Operation::Http(op) => (&self.http_path, op.path.as_str()),
            Operation::Kube(_) => (&self.command_line, ""),
        };
        Scan {
            set,
            haystack,
            hits: None,
        }
    }
}

/// Which of the policy's regexes match one operation, computed on first use.
pub(crate) struct Scan<'a> {
    set: &'a RegexSet,
    haystack: &'a str,
    hits: Option<SetMatches>,
}

impl Scan<'_> {
    fn any(&mut self, patterns: &Range<usize>) -> bool {
        let Scan {
            set,
            haystack,
            hits,
        } = self;
        let hits = hits.get_or_insert_with(|| set.matches(haystack));
        patterns.clone().any(|i| hits.matched(i))
    }
}

fn lower(values: &[String]) -> Vec<String> {
    values.iter().map(|v| v.to_ascii_lowercase()).collect()
}

/// Who a rule applies to.
#[derive(Debug, Default)]
pub(crate) struct Who {
    pub(crate) groups: Vec<String>,
    pub(crate) subjects: Vec<String>,
    pub(crate) except_groups: Vec<String>,
    pub(crate) except_subjects: Vec<String>,
}

impl Who {
    fn matches(&self, identity: &Identity) -> bool {
        let anyone = self.groups.is_empty() && self.subjects.is_empty();
        let named =
            anyone || self.subjects.contains(&identity.subject) || identity.in_any(&self.groups);
        named
            && !(self.except_subjects.contains(&identity.subject)
                || identity.in_any(&self.except_groups))
    }
}

/// All conditions of a rule except its targets, which are resolved against
/// the configured targets at compile time.
#[derive(Debug)]
pub(crate) struct Matcher {
    pub(crate) who: Who,
    pub(crate) protocols: Vec<String>,
    pub(crate) op: OpMatcher,
}

impl Matcher {
    /// Whether the rule's conditions hold. The caller has already checked
    /// the target and that the operation kind fits (`OpMatcher::kinds`).
    #[inline]
    pub(crate) fn matches(
        &self,
        identity: &Identity,
        protocol: &str,
        op: &Operation,
        scan: &mut Scan<'_>,
    ) -> bool {
        (self.protocols.is_empty() || self.protocols.iter().any(|p| p == protocol))
            && self.who.matches(identity)
            && self.op.matches(op, scan)
    }
}

/// Conditions on the operation itself.
#[derive(Debug)]
pub(crate) enum OpMatcher {
    Any,
    Sql(SqlMatcher),
    Command(CommandMatcher),
    Kube(KubeMatcher),
    Http(HttpMatcher),
}

impl OpMatcher {
    /// Which operation buckets ([`op_kind`]) this matcher can match.
    pub(crate) fn fits_kind(&self, kind: usize) -> bool {
        match self {
            OpMatcher::Any => true,
            OpMatcher::Sql(_) => kind == 0,
            OpMatcher::Command(_) => kind == 1,
            OpMatcher::Kube(_) => kind == 2,
            OpMatcher::Http(_) => kind == 3,
        }
    }

    fn matches(&self, op: &Operation, scan: &mut Scan<'_>) -> bool {
        match (self, op) {
            (OpMatcher::Any, _) => true,
            (OpMatcher::Sql(m), Operation::Sql(op)) => m.matches(op, scan),
            (OpMatcher::Command(m), Operation::Command(op)) => m.matches(op, scan),
            (OpMatcher::Kube(m), Operation::Kube(op)) => m.matches(op),
            (OpMatcher::Http(m), Operation::Http(op)) => m.matches(op, scan),
            _ => false,
        }
    }
}

fn kind_bit(kind: SqlKind) -> u64 {
    1u64 << (kind as u32)
}

/// `[rules.sql]`, compiled.
#[derive(Debug)]
pub(crate) struct SqlMatcher {
    /// Bit set of accepted kinds; 0 = any.
    kinds: u64,
    objects: Vec<String>,
    tables: Option<TableMatcher>,
    access: Option<Access>,
    /// `tables`/`access` must hold for every table the statement touches
    /// (allow rules), not just one (deny and review rules).
    every_table: bool,
    has_where: Option<bool>,
    text: Option<Range<usize>>,
}

impl SqlMatcher {
    /// `every_table` for allow rules: a rule that allows reads must not let
    /// through a statement that reads one table and writes another.
    pub(crate) fn compile(
        m: &SqlMatch,
        pools: &mut RegexPools,
        every_table: bool,
    ) -> Result<Self, String> {
        let tables = if m.tables.is_empty() {
            None
        } else {
            let (qualified, bare): (Vec<String>, Vec<String>) =
                m.tables.iter().cloned().partition(|t| t.contains('.'));
            Some(TableMatcher {
                qualified: glob_set(&qualified, true, false)
                    .map_err(|e| format!("sql.tables: {e}"))?,
                bare: glob_set(&bare, true, false).map_err(|e| format!("sql.tables: {e}"))?,
            })
        };
        Ok(SqlMatcher {
            kinds: m.kinds.iter().fold(0, |bits, k| bits | kind_bit(*k)),
            objects: lower(&m.objects),
            tables,
            access: m.access,
            every_table,
            has_where: m.has_where,
            text: register(&mut pools.sql_text, &m.text).map_err(|e| format!("sql.text: {e}"))?,
        })
    }

    fn matches(&self, op: &SqlOperation, scan: &mut Scan<'_>) -> bool {
        if self.kinds != 0 && self.kinds & kind_bit(op.kind) == 0 {
            return false;
        }
        if let Some(want) = self.has_where
            && op.has_where != Some(want)
        {
            return false;
        }
        if !self.objects.is_empty() {
            match &op.object {
                Some(object) if self.objects.iter().any(|o| o.eq_ignore_ascii_case(object)) => {}
                _ => return false,
            }
        }
        if self.tables.is_some() || self.access.is_some() {
            let fits = |t: &TableAccess| {
                let access = self.access.is_none_or(|a| {
                    a == t.access
                        // In an allow rule for writes, reading a table the
                        // statement writes (`… WHERE id IN (SELECT id FROM
                        // t)`) is part of writing it.
                        || (self.every_table
                            && a == Access::Write
                            && t.access == Access::Read
                            && op
                                .tables
                                .iter()
                                .any(|w| w.access == Access::Write && w.name == t.name))
                });
                access && self.tables.as_ref().is_none_or(|m| m.matches(&t.name))
            };
            // Deny and review rules catch a statement by any one table;
            // an allow rule vouches for all of them, and for none when the
            // statement names none (an opaque `DO` block, say).
            let holds = if self.every_table {
                !op.tables.is_empty() && op.tables.iter().all(fits)
            } else {
                op.tables.iter().any(fits)
            };
            if !holds {
                return false;
            }
        }
        if let Some(text) = &self.text
            && !scan.any(text)
        {
            return false;
        }
        true
    }
}

/// Table patterns: qualified ones match the name as written, bare ones match
/// the table's own name in any schema.
#[derive(Debug)]
struct TableMatcher {
    qualified: Option<GlobSet>,
    bare: Option<GlobSet>,
}

impl TableMatcher {
    fn matches(&self, name: &str) -> bool {
        let table = name.rsplit('.').next().unwrap_or(name);
        self.qualified.as_ref().is_some_and(|g| g.is_match(name))
            || self.bare.as_ref().is_some_and(|g| g.is_match(table))
    }
}

/// `[rules.command]`, compiled.
#[derive(Debug)]
pub(crate) struct CommandMatcher {
    line: Option<Range<usize>>,
    interactive: Option<bool>,
}

impl CommandMatcher {
    pub(crate) fn compile(m: &CommandMatch, pools: &mut RegexPools) -> Result<Self, String> {
        Ok(CommandMatcher {
            line: register(&mut pools.command_line, &m.line)
                .map_err(|e| format!("command.line: {e}"))?,
            interactive: m.interactive,
        })
    }

    fn matches(&self, op: &CommandOperation, scan: &mut Scan<'_>) -> bool {
        self.interactive.is_none_or(|i| i == op.interactive)
            && self.line.as_ref().is_none_or(|r| scan.any(r))
    }
}

/// `[rules.kube]`, compiled.
#[derive(Debug)]
pub(crate) struct KubeMatcher {
    verbs: Vec<String>,
    resources: Vec<String>,
    subresources: Vec<String>,
    api_groups: Vec<String>,
    namespaces: Option<GlobSet>,
    names: Option<GlobSet>,
}

impl KubeMatcher {
    pub(crate) fn compile(m: &KubeMatch) -> Result<Self, String> {
        Ok(KubeMatcher {
            verbs: lower(&m.verbs),
            resources: lower(&m.resources),
            subresources: lower(&m.subresources),
            api_groups: m
                .api_groups
                .iter()
                .map(|g| {
                    if g == "core" {
                        String::new()
                    } else {
                        g.clone()
                    }
                })
                .collect(),
            namespaces: glob_set(&m.namespaces, false, false)
                .map_err(|e| format!("kube.namespaces: {e}"))?,
            names: glob_set(&m.names, false, false).map_err(|e| format!("kube.names: {e}"))?,
        })
    }

    fn matches(&self, op: &KubeOperation) -> bool {
        fn any_of(list: &[String], value: &str) -> bool {
            list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value))
        }
        fn optional(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| any_of(list, v))
        }
        fn glob(set: &Option<GlobSet>, value: Option<&str>) -> bool {
            set.as_ref()
                .is_none_or(|g| value.is_some_and(|v| g.is_match(v)))
        }
        any_of(&self.verbs, &op.verb)
            && any_of(&self.resources, &op.resource)
            && optional(&self.subresources, op.subresource.as_deref())
            && (self.api_groups.is_empty() || self.api_groups.contains(&op.api_group))
            && glob(&self.namespaces, op.namespace.as_deref())
            && glob(&self.names, op.name.as_deref())
    }
}

/// `[rules.http]`, compiled.
#[derive(Debug)]
pub(crate) struct HttpMatcher {
    methods: Vec<String>,
    paths: Option<GlobSet>,
    path_regex: Option<Range<usize>>,
}

impl HttpMatcher {
    pub(crate) fn compile(m: &HttpMatch, pools: &mut RegexPools) -> Result<Self, String> {
        Ok(HttpMatcher {
            methods: m.methods.iter().map(|v| v.to_ascii_uppercase()).collect(),
            paths: glob_set(&m.paths, false, true).map_err(|e| format!("http.paths: {e}"))?,
            path_regex: register(&mut pools.http_path, &m.path_regex)
                .map_err(|e| format!("http.path_regex: {e}"))?,
        })
    }

    fn matches(&self, op: &HttpOperation, scan: &mut Scan<'_>) -> bool {
        (self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&op.method)))
            && self.paths.as_ref().is_none_or(|g| g.is_match(&op.path))
            && self.path_regex.as_ref().is_none_or(|r| scan.any(r))
    }
}
