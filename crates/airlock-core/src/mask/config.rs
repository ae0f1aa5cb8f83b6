//! The `[masking]` section of the configuration file. `///` on every field is
//! the user documentation; docs/masking.md shows them with examples.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[masking]`: detectors, dictionaries, field rules and profiles.
///
/// With an empty section every built-in detector is on for everyone, and every
/// credential the gateway holds for its targets is masked wherever it appears
/// (that part cannot be turned off).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Literal strings masked wherever they appear (exact, case-sensitive
    /// match), e.g. `["Project Nightingale"]`. Counted as `literal`; replaced
    /// as `[masking.detectors.literal]` says (default `<LITERAL>`).
    #[serde(default)]
    pub literals: Vec<String>,
    /// How a built-in detector replaces what it finds, by detector name, e.g.
    /// `[masking.detectors.card] style = "partial"`. Detectors not listed
    /// redact to their typed token (`<EMAIL>`, `<CARD>`, ...).
    #[serde(default)]
    pub detectors: BTreeMap<String, DetectorOptions>,
    /// Detectors of your own: a name and a regular expression.
    #[serde(default)]
    pub custom: Vec<CustomRule>,
    /// Whole-value rules by field: a Postgres column (`column` or
    /// `table.column`) or a JSON path (`$.customer.email`).
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    /// Who gets which masking. The first profile whose `targets` and
    /// `groups`/`subjects` match a session applies; when none matches, the
    /// default profile (every detector, every literal, every field rule) does.
    #[serde(default)]
    pub profiles: Vec<ProfileConfig>,
}

/// How a masked value is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// The typed token: `<EMAIL>`.
    #[default]
    Redact,
    /// Keep the last `keep` letters and digits, star the others, keep the
    /// punctuation: `****-****-****-1234`.
    Partial,
    /// A keyed hash (HMAC-SHA256 with the gateway's mask key): the same value
    /// always gives the same token, so joins and group-bys still work:
    /// `<EMAIL:3f9a1c2b>`.
    Pseudonym,
}

/// `[masking.detectors.NAME]`: how one built-in detector replaces.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorOptions {
    /// `"redact"` (default), `"partial"` or `"pseudonym"`.
    #[serde(default)]
    pub style: Style,
    /// For `partial`: how many trailing letters and digits stay visible
    /// (default 4). For `pseudonym`: how many hex digits of the keyed hash the
    /// token shows (default 8, at most 64; use 16 when joining more than a
    /// few thousand distinct values, so that two values rarely share a token).
    #[serde(default)]
    pub keep: Option<usize>,
    /// The word in the token, e.g. `"EMAIL"` for `<EMAIL>` (default: the
    /// detector's name in capitals).
    #[serde(default)]
    pub token: Option<String>,
}

/// `[[masking.custom]]`: a detector of your own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Its name: used in profiles and counts. Must not be a built-in detector's name.
    pub name: String,
    /// A regular expression (Rust `regex` syntax), e.g. `"EMP-[0-9]{6}"`.
    /// Each match is masked. Matches are at most 1 KiB long in byte streams.
    pub regex: String,
    /// `"redact"` (default), `"partial"` or `"pseudonym"`.
    #[serde(default)]
    pub style: Style,
    /// As for built-in detectors: trailing characters kept (`partial`, default
    /// 4) or hex digits shown (`pseudonym`, default 8).
    #[serde(default)]
    pub keep: Option<usize>,
    /// The word in the token (default: the name in capitals).
    #[serde(default)]
    pub token: Option<String>,
}

/// `[[masking.fields]]`: mask a whole value by where it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// Which field. `"email"`: a column named `email` in any table, and a JSON
    /// object key `email` at any depth. `"users.email"` (or
    /// `"public.users.email"`): that table's column; when a connector cannot
    /// tell a column's table it matches by column name alone, because masking
    /// too much is safer than leaking. `"$.customer.email"`: a JSON path, with
    /// `.key`, `['key']`, `[0]`, `[*]`, `.*` and `..key` (any depth).
    pub name: String,
    /// `"redact"` (default), `"partial"` or `"pseudonym"`.
    #[serde(default)]
    pub style: Style,
    /// As for detectors: trailing characters kept (`partial`, default 4) or
    /// hex digits shown (`pseudonym`, default 8).
    #[serde(default)]
    pub keep: Option<usize>,
    /// The word in the token (default `REDACTED`).
    #[serde(default)]
    pub token: Option<String>,
}

/// `[[masking.profiles]]`: what is masked for whom.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// A name, for messages.
    pub name: String,
    /// Groups this profile is for. With neither `groups` nor `subjects`, it is
    /// for everyone.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Subjects (token `sub`) this profile is for.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Target names this profile is for; glob patterns (`"prod-*"`). Default: all.
    #[serde(default = "star")]
    pub targets: Vec<String>,
    /// Detectors that mask: built-in names, custom rule names, or `"*"` for
    /// all of them. Default: all. `[]` turns every detector off (the
    /// credentials the gateway holds are still masked).
    #[serde(default = "star")]
    pub detectors: Vec<String>,
    /// Detectors taken out of `detectors`, e.g. `detectors = ["*"]`,
    /// `except = ["email", "phone"]`.
    #[serde(default)]
    pub except: Vec<String>,
    /// Whether `[masking] literals` are masked. Default: true.
    #[serde(default = "yes")]
    pub literals: bool,
    /// Field rules that apply, by their `name`, or `"*"` for all. Default: all.
    #[serde(default = "star")]
    pub fields: Vec<String>,
}

fn star() -> Vec<String> {
    vec!["*".to_string()]
}

fn yes() -> bool {
    true
}
