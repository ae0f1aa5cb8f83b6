//! The masking engine: one for every connector.
//!
//! Sensitive values are replaced before a response leaves the gateway and
//! before anything is stored. Three kinds of rules find them:
//!
//! * **detectors** recognise formats (e-mail, payment cards with Luhn, US
//!   SSNs, phone numbers, IBANs with mod-97, IPv4/IPv6, JWTs, cloud and SaaS
//!   keys, private-key blocks, `password=`-style secrets, custom regexes);
//! * **dictionaries** match exact strings: every credential the gateway holds
//!   for its targets (always, in every profile) and configured literals;
//! * **field rules** mask a whole value by where it is: a Postgres column, a
//!   JSON path, the `data` of a Kubernetes Secret.
//!
//! [`MaskEngine::new`] compiles the `[masking]` configuration once;
//! [`MaskEngine::masker`] picks the profile for a session; the [`Masker`]
//! masks single values ([`Masker::mask_str`]), JSON documents
//! ([`Masker::mask_json`]) and byte streams ([`Masker::stream`]).
//!
//! ```
//! use airlock_core::mask::{MaskConfig, MaskEngine};
//! use airlock_core::{Identity, MaskCounts};
//!
//! let engine = MaskEngine::new(&MaskConfig::default(), vec!["s3cr3t-pw".into()], [7; 32]).unwrap();
//! let who = Identity { subject: "agent-1".into(), groups: vec![], issuer: "local".into() };
//! let masker = engine.masker("prod-db", &who);
//! let mut counts = MaskCounts::new();
//! let out = masker.mask_str(None, "mail bob@example.com, pw s3cr3t-pw", &mut counts);
//! assert_eq!(out, "mail <EMAIL>, pw <SECRET>");
//! assert_eq!(counts["email"], 1);
//! ```

mod config;
mod detect;
mod json;
mod stream;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use ring::hmac;

pub use config::{CustomRule, DetectorOptions, FieldRule, MaskConfig, ProfileConfig, Style};
pub use stream::{StreamMasker, mask_stream};

use crate::{Error, Identity, MaskCounts, Result};
use detect::{CONFIGURABLE, Det, Dict, Hit, Label, N_DET, Plan};

/// The compiled masking configuration: detectors, dictionaries, field rules
/// and profiles. Build it once at start; it is cheap to share (`Send + Sync`).
pub struct MaskEngine {
    shared: Arc<Shared>,
    profiles: Vec<ProfileEntry>,
    default: Arc<Profile>,
}

impl fmt::Debug for MaskEngine {
    // Never prints the dictionary: it holds the gateway's credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskEngine")
            .field(
                "profiles",
                &self
                    .profiles
                    .iter()
                    .map(|p| p.profile.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("custom", &self.shared.custom.len())
            .field("fields", &self.shared.fields.len())
            .finish_non_exhaustive()
    }
}

/// Engine-wide parts every profile shares.
pub(crate) struct Shared {
    hmac: hmac::Key,
    /// Replacement per built-in detector, indexed by `Det`.
    replace: Vec<Replace>,
    pub(crate) custom: Vec<CustomDet>,
    fields: Vec<FieldDet>,
}

/// A compiled custom detector.
pub(crate) struct CustomDet {
    name: String,
    pub(crate) re: regex::bytes::Regex,
    /// For the stream: can a match starting here still complete? `None` if
    /// the pattern is beyond the lazy DFA (then the stream holds a window).
    pub(crate) dfa: Option<regex_automata::hybrid::dfa::DFA>,
    replace: Replace,
}

struct FieldDet {
    count_name: String,
    pat: json::FieldPat,
    replace: Replace,
}

/// How one rule replaces a span.
#[derive(Clone, Debug)]
struct Replace {
    style: Style,
    keep: usize,
    token: String,
    /// `<TOKEN>`, ready to copy.
    redacted: Vec<u8>,
}

impl Replace {
    fn new(style: Style, keep: Option<usize>, token: String, what: &str) -> Result<Replace> {
        let keep = match style {
            Style::Partial => keep.unwrap_or(4),
            Style::Pseudonym => keep.unwrap_or(8),
            Style::Redact => 0,
        };
        if style == Style::Pseudonym && !(4..=64).contains(&keep) {
            return Err(Error::Config(format!(
                "masking: {what}: keep = {keep} hex digits is out of range for style \"pseudonym\" (use 4 to 64)"
            )));
        }
        if token.is_empty()
            || !token
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(Error::Config(format!(
                "masking: {what}: token {token:?} must be letters, digits or '_' (it is shown as <{token}>)"
            )));
        }
        let redacted = format!("<{token}>").into_bytes();
        Ok(Replace {
            style,
            keep,
            token,
            redacted,
        })
    }

    /// Writes the replacement of `text` to `out`.
    fn write(&self, key: &hmac::Key, det: Option<Det>, text: &[u8], out: &mut Vec<u8>) {
        match self.style {
            Style::Redact => out.extend_from_slice(&self.redacted),
            Style::Partial => partial(text, self.keep, out),
            Style::Pseudonym => {
                let norm = normalize(det, text);
                let tag = hmac::sign(key, &norm);
                out.push(b'<');
                out.extend_from_slice(self.token.as_bytes());
                out.push(b':');
                let hexed = hex::encode(tag.as_ref());
                out.extend_from_slice(&hexed.as_bytes()[..self.keep.min(hexed.len())]);
                out.push(b'>');
            }
        }
    }
}

/// Keeps the last `keep` letters/digits (never more than half of them) and
/// the punctuation; stars the rest: `4111-1111-1111-1234` -> `****-****-****-1234`.
fn partial(text: &[u8], keep: usize, out: &mut Vec<u8>) {
    let is_char = |c: u8| c.is_ascii_alphanumeric() || c >= 0xc0;
    let n = text.iter().filter(|&&c| is_char(c)).count();
    let keep = keep.min(n / 2);
    let mut seen = 0;
    for &c in text {
        if c.is_ascii_alphanumeric() || c >= 0x80 {
            if (0x80..0xc0).contains(&c) {
                // UTF-8 continuation byte: part of the character already written.
                if seen > n - keep {
                    out.push(c);
                }
                continue;
            }
            seen += 1;
            if seen > n - keep {
                out.push(c);
            } else {
                out.push(b'*');
            }
        } else {
            out.push(c);
        }
    }
}

/// The form hashed for pseudonyms, so that `Bob@Example.com` and
/// `bob@example.com`, or `4111 1111 1111 1111` and `4111111111111111`,
/// get the same token and still join.
fn normalize(det: Option<Det>, text: &[u8]) -> Cow<'_, [u8]> {
    match det {
        Some(Det::Email) => Cow::Owned(text.to_ascii_lowercase()),
        Some(Det::Card | Det::Phone | Det::Ssn | Det::Iban) => Cow::Owned(
            text.iter()
                .filter(|c| c.is_ascii_alphanumeric())
                .map(u8::to_ascii_uppercase)
                .collect(),
        ),
        _ => Cow::Borrowed(text),
    }
}

/// A compiled profile.
pub(crate) struct Profile {
    name: String,
    pub(crate) plan: Plan,
    fields_on: Vec<bool>,
    /// Whether any enabled field rule is a JSON path (paths are only tracked then).
    json_paths: bool,
}

struct ProfileEntry {
    groups: Vec<String>,
    subjects: Vec<String>,
    targets: Vec<GlobMatcher>,
    profile: Arc<Profile>,
}

impl MaskEngine {
    /// Compiles the configuration. `held_secrets` are the credentials the
    /// gateway holds for its targets: they are masked wherever they appear,
    /// in every profile. `key` keys the pseudonyms (see [`load_or_create_key`]).
    ///
    /// A bad rule (an invalid regex, an unknown detector name in a profile,
    /// a malformed JSON path) is an [`Error::Config`] that names it.
    pub fn new(config: &MaskConfig, held_secrets: Vec<String>, key: [u8; 32]) -> Result<Self> {
        let mut replace = Vec::with_capacity(N_DET);
        for d in all_dets() {
            let token = match d {
                Det::HeldSecret => "SECRET".to_string(),
                Det::GenericSecret => "SECRET".to_string(),
                _ => d.name().to_ascii_uppercase(),
            };
            replace.push(Replace::new(Style::Redact, None, token, d.name())?);
        }
        for (name, opts) in &config.detectors {
            let Some(d) = Det::from_name(name).filter(|d| *d != Det::HeldSecret) else {
                return Err(Error::Config(format!(
                    "masking.detectors.{name}: no such detector (built-in detectors: {}, literal)",
                    builtin_names()
                )));
            };
            let token = opts
                .token
                .clone()
                .unwrap_or_else(|| replace[d.idx()].token.clone());
            replace[d.idx()] =
                Replace::new(opts.style, opts.keep, token, &format!("detectors.{name}"))?;
        }

        let mut custom = Vec::new();
        for rule in &config.custom {
            let what = format!("custom rule {:?}", rule.name);
            if rule.name.is_empty()
                || Det::from_name(&rule.name).is_some()
                || rule.name == "*"
                || config.custom.iter().filter(|r| r.name == rule.name).count() > 1
            {
                return Err(Error::Config(format!(
                    "masking: {what}: the name must be non-empty, unique and not a built-in detector's"
                )));
            }
            let re = regex::bytes::Regex::new(&rule.regex).map_err(|e| {
                Error::Config(format!(
                    "masking: {what}: invalid regex {:?}: {e}",
                    rule.regex
                ))
            })?;
            let dfa = regex_automata::hybrid::dfa::DFA::builder()
                .configure(
                    regex_automata::hybrid::dfa::DFA::config()
                        .match_kind(regex_automata::MatchKind::LeftmostFirst)
                        .unicode_word_boundary(true),
                )
                .build(&rule.regex)
                .ok();
            let token = rule
                .token
                .clone()
                .unwrap_or_else(|| rule.name.to_ascii_uppercase());
            custom.push(CustomDet {
                name: rule.name.clone(),
                re,
                dfa,
                replace: Replace::new(rule.style, rule.keep, token, &what)?,
            });
        }

        let mut fields = Vec::new();
        for rule in &config.fields {
            let what = format!("field rule {:?}", rule.name);
            let pat = json::FieldPat::parse(&rule.name)
                .map_err(|e| Error::Config(format!("masking: {what}: {e}")))?;
            let token = rule.token.clone().unwrap_or_else(|| "REDACTED".to_string());
            fields.push(FieldDet {
                count_name: format!("field:{}", rule.name),
                pat,
                replace: Replace::new(rule.style, rule.keep, token, &what)?,
            });
        }

        let shared = Arc::new(Shared {
            hmac: hmac::Key::new(hmac::HMAC_SHA256, &key),
            replace,
            custom,
            fields,
        });

        // Dictionaries: held credentials in the forms they travel in.
        let mut held: Vec<Vec<u8>> = Vec::new();
        for s in &held_secrets {
            if s.is_empty() {
                continue;
            }
            if s.len() < 4 {
                tracing::warn!(
                    "a target credential is only {} characters long; it is masked wherever it appears, which will hide ordinary text too",
                    s.len()
                );
            }
            for form in credential_forms(s) {
                if !held.contains(&form) {
                    held.push(form);
                }
            }
        }
        let mut literals: Vec<Vec<u8>> = Vec::new();
        for l in &config.literals {
            if l.is_empty() {
                return Err(Error::Config(
                    "masking: literals: an empty string cannot be masked; remove it".into(),
                ));
            }
            literals.push(l.as_bytes().to_vec());
        }
        let dict_held = Dict::new(&held, &[]).map(Arc::new);
        let dict_all = Dict::new(&held, &literals).map(Arc::new);

        let compile = |p: &ProfileConfig| -> Result<Profile> {
            let what = format!("masking profile {:?}", p.name);
            let mut on = [false; N_DET];
            let mut custom_on = vec![false; shared.custom.len()];
            let mut set = |name: &str, value: bool, key: &str| -> Result<()> {
                if name == "*" {
                    for d in CONFIGURABLE {
                        on[d.idx()] = value;
                    }
                    custom_on.iter_mut().for_each(|c| *c = value);
                } else if let Some(d) = Det::from_name(name).filter(|d| CONFIGURABLE.contains(d)) {
                    on[d.idx()] = value;
                } else if let Some(i) = shared.custom.iter().position(|c| c.name == name) {
                    custom_on[i] = value;
                } else {
                    return Err(Error::Config(format!(
                        "{what}: {key}: unknown detector {name:?} (built-in: {}; custom: {})",
                        builtin_names(),
                        custom_names(&shared)
                    )));
                }
                Ok(())
            };
            for d in &p.detectors {
                set(d, true, "detectors")?;
            }
            for d in &p.except {
                set(d, false, "except")?;
            }
            on[Det::HeldSecret.idx()] = true;
            on[Det::Literal.idx()] = p.literals;
            let mut fields_on = vec![false; shared.fields.len()];
            for f in &p.fields {
                if f == "*" {
                    fields_on.iter_mut().for_each(|x| *x = true);
                } else if let Some(i) = config.fields.iter().position(|r| &r.name == f) {
                    fields_on[i] = true;
                } else {
                    return Err(Error::Config(format!(
                        "{what}: fields: no field rule named {f:?} (define it under [[masking.fields]])"
                    )));
                }
            }
            let dict = if p.literals {
                dict_all.clone()
            } else {
                dict_held.clone()
            };
            let json_paths = shared
                .fields
                .iter()
                .zip(&fields_on)
                .any(|(f, on)| *on && f.pat.is_path());
            Ok(Profile {
                name: p.name.clone(),
                plan: Plan::new(on, custom_on, dict),
                fields_on,
                json_paths,
            })
        };

        let mut profiles = Vec::new();
        for p in &config.profiles {
            let mut targets = Vec::new();
            for t in &p.targets {
                let glob = Glob::new(t).map_err(|e| {
                    Error::Config(format!(
                        "masking profile {:?}: targets: bad pattern {t:?}: {e}",
                        p.name
                    ))
                })?;
                targets.push(glob.compile_matcher());
            }
            profiles.push(ProfileEntry {
                groups: p.groups.clone(),
                subjects: p.subjects.clone(),
                targets,
                profile: Arc::new(compile(p)?),
            });
        }
        let default = Arc::new(compile(&ProfileConfig {
            name: "default".into(),
            groups: vec![],
            subjects: vec![],
            targets: vec!["*".into()],
            detectors: vec!["*".into()],
            except: vec![],
            literals: true,
            fields: vec!["*".into()],
        })?);
        Ok(MaskEngine {
            shared,
            profiles,
            default,
        })
    }

    /// The masker for a session of `identity` on `target`: the first profile
    /// whose targets and groups/subjects match, else the default profile.
    pub fn masker(&self, target: &str, identity: &Identity) -> Masker {
        let profile = self
            .profiles
            .iter()
            .find(|p| {
                let who = (p.groups.is_empty() && p.subjects.is_empty())
                    || identity.in_any(&p.groups)
                    || p.subjects.contains(&identity.subject);
                who && p.targets.iter().any(|g| g.is_match(target))
            })
            .map_or_else(|| self.default.clone(), |p| p.profile.clone());
        Masker {
            shared: self.shared.clone(),
            profile,
        }
    }
}

/// Loads the 32-byte pseudonym key from `data_dir/mask-key`, creating it
/// (random, mode 0600) on first start. Keep it: a new key changes every
/// pseudonym, so joins across old and new recordings stop matching.
pub fn load_or_create_key(data_dir: &std::path::Path) -> Result<[u8; 32]> {
    let path = data_dir.join("mask-key");
    let bytes = crate::keyfile::load_or_create(&path, || {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| Error::Internal("the system random generator failed".into()))?;
        Ok(key.to_vec())
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        Error::Config(format!(
            "mask key file {} holds {} bytes, not 32; restore it from a backup, or delete it to create a new key (pseudonyms will change)",
            path.display(),
            bytes.len()
        ))
    })
}

/// The masking that applies to every value of one field, from its names:
/// [`Masker::field_plan`]. Only meaningful with the masker that made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPlan {
    /// The field rule (index into the configured rules), if one matches.
    rule: Option<u16>,
    /// The field's secret-like names (`password`, `api_key`), each with
    /// what kind of secret it names; the value decides whether it is one.
    /// A dotted name (`schema.table.column`) also counts by its last part:
    /// a long schema and table name must not hide a `password` column.
    secrets: Vec<(Box<str>, detect::KeyKind)>,
    /// The value is computed from the field, or holds more than it: a
    /// `partial` rule's kept characters could be anything (the start of
    /// the value moved to its end), so the rule's token replaces it whole.
    derived: bool,
}

impl FieldPlan {
    /// A value that comes from no named field: only the detectors and
    /// dictionaries apply.
    pub const NONE: FieldPlan = FieldPlan {
        rule: None,
        secrets: Vec::new(),
        derived: false,
    };

    /// Whether a field rule covers every value of the field, whatever it
    /// holds.
    pub fn has_rule(&self) -> bool {
        self.rule.is_some()
    }

    /// The plan of a value computed from the field (or holding it among
    /// others): a `partial` rule replaces it whole with its token, since
    /// the characters it would keep may be any part of the field's value
    /// (`'xxxxxxxx' || substr(ssn, 1, 4)`).
    #[must_use]
    pub fn derived(mut self) -> FieldPlan {
        self.derived = true;
        self
    }
}

/// Masks values for one session. Cheap to clone.
#[derive(Clone)]
pub struct Masker {
    shared: Arc<Shared>,
    profile: Arc<Profile>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("profile", &self.profile.name)
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// The name of the profile in force ("default" when none matched).
    pub fn profile(&self) -> &str {
        &self.profile.name
    }

    /// Masks one value: a row cell, a JSON string, a query, a command line.
    /// `field` is the column (`table.column` when known, else `column`) or
    /// JSON key the value came from, when there is one. Returns the input
    /// unchanged (borrowed, no allocation) when nothing is sensitive.
    pub fn mask_str<'a>(
        &self,
        field: Option<&str>,
        s: &'a str,
        counts: &mut MaskCounts,
    ) -> Cow<'a, str> {
        self.mask_str_named(field.as_slice(), s, counts)
    }

    /// [`Masker::mask_str`] for a value known by several names, such as a
    /// result column's `schema.table.column` and the name the query gave it:
    /// a field rule or a secret-like name matching *any* of them applies, so
    /// one name can never take a value out of a rule the other matches.
    pub fn mask_str_named<'a>(
        &self,
        names: &[&str],
        s: &'a str,
        counts: &mut MaskCounts,
    ) -> Cow<'a, str> {
        self.mask_field(&self.field_plan(names), s, counts)
    }

    /// What applies to every value of a field known by `names` (see
    /// [`Masker::mask_str_named`]), worked out once: a result column's
    /// values are then masked with [`Masker::mask_field`] without matching
    /// its names against every rule again for each cell.
    pub fn field_plan(&self, names: &[&str]) -> FieldPlan {
        // In the order `mask_str_named` has always tried them: each name,
        // then the last part of a dotted one.
        let mut secrets = Vec::new();
        for name in names {
            let last = name.rsplit_once('.').map(|(_, last)| last);
            for ident in std::iter::once(*name).chain(last) {
                if let Some(kind) = detect::key_kind(ident.as_bytes()) {
                    secrets.push((Box::from(ident), kind));
                }
            }
        }
        FieldPlan {
            rule: self.column_rule(names),
            secrets,
            derived: false,
        }
    }

    /// The value masked as a whole when its field's name decides it: by the
    /// field's rule, or because the field is named like a secret and the
    /// value looks like one. `None` when only what is inside the value can
    /// decide (the detectors, or the keys of a JSON document).
    pub fn mask_whole(&self, plan: &FieldPlan, s: &str, counts: &mut MaskCounts) -> Option<String> {
        if let Some(rule) = plan.rule {
            let replace = &self.shared.fields[usize::from(rule)].replace;
            if plan.derived && replace.style == Style::Partial && !s.is_empty() {
                count(counts, self.label_name(Label::Field(rule)), 1);
                return Some(into_string(replace.redacted.clone()));
            }
            return Some(self.whole(Label::Field(rule), s.as_bytes(), counts));
        }
        let det = plan.secrets.iter().find_map(|(ident, kind)| {
            detect::secret_det(&self.profile.plan, ident.as_bytes(), *kind, s.as_bytes())
        })?;
        Some(self.whole(Label::Det(det), s.as_bytes(), counts))
    }

    /// The plan of a value that holds values of several columns of `table`
    /// (`schema.table`) that cannot be told apart, when the table's columns
    /// are not known (a server error's "Failing row contains (…)"): the
    /// first column rule on that is written for that table or for no table
    /// covers the value whole. With the columns known, use
    /// [`Masker::field_plan`] with their qualified names instead.
    pub fn table_plan(&self, table: &str) -> FieldPlan {
        let rule = self
            .shared
            .fields
            .iter()
            .zip(&self.profile.fields_on)
            .position(|(f, on)| *on && f.pat.may_cover_table(table))
            .and_then(|i| u16::try_from(i).ok());
        FieldPlan {
            rule,
            secrets: Vec::new(),
            derived: true,
        }
    }

    /// The plan of a value that holds a whole row of a table (PostgreSQL's
    /// `SELECT t FROM t`, which names no column): the rules of the columns
    /// inside it cannot be told apart there, so the first column rule on
    /// for this masker covers the value whole. Without one, the plan of
    /// `name` alone.
    pub fn whole_row_plan(&self, name: &str) -> FieldPlan {
        let rule = self
            .shared
            .fields
            .iter()
            .zip(&self.profile.fields_on)
            .position(|(f, on)| *on && matches!(f.pat, json::FieldPat::Column { .. }))
            .and_then(|i| u16::try_from(i).ok());
        let mut plan = self.field_plan(&[name]);
        plan.rule = plan.rule.or(rule);
        plan.derived = true;
        plan
    }

    /// Whether any field rule is on for this masker: inside a JSON document
    /// a rule can match a key or a path, so a document that cannot be read
    /// cannot be shown to hold none of them.
    pub fn has_field_rules(&self) -> bool {
        self.profile.fields_on.iter().any(|on| *on)
    }

    /// Masks one value of a field by its [`Masker::field_plan`] (which must
    /// come from this masker): its field rule, else its secret-like name,
    /// else the detectors and dictionaries.
    pub fn mask_field<'a>(
        &self,
        plan: &FieldPlan,
        s: &'a str,
        counts: &mut MaskCounts,
    ) -> Cow<'a, str> {
        if let Some(whole) = self.mask_whole(plan, s, counts) {
            return Cow::Owned(whole);
        }
        match self.mask_bytes(s.as_bytes(), counts) {
            None => Cow::Borrowed(s),
            Some(out) => Cow::Owned(into_string(out)),
        }
    }

    /// Masks a JSON document in place: field rules by path and key,
    /// Kubernetes Secret `data`/`stringData`, and detectors on every string,
    /// number and key.
    pub fn mask_json(&self, doc: &mut serde_json::Value, counts: &mut MaskCounts) {
        json::mask_document(self, doc, counts);
    }

    /// A streaming masker for a byte stream (terminal output, a log follow).
    pub fn stream(&self) -> StreamMasker {
        StreamMasker::new(self.clone())
    }

    /// Runs the detectors and dictionaries over `b`; `None` if nothing matched.
    fn mask_bytes(&self, b: &[u8], counts: &mut MaskCounts) -> Option<Vec<u8>> {
        let mut hits = Vec::new();
        detect::scan(
            &self.shared,
            &self.profile.plan,
            b,
            0,
            true,
            None,
            &mut hits,
        );
        if hits.is_empty() {
            return None;
        }
        detect::merge(&mut hits);
        let mut out = Vec::with_capacity(b.len() + 16);
        self.render(b, 0, b.len(), &hits, &mut out, counts);
        Some(out)
    }

    /// Writes `b[from..to]` to `out` with the hits (sorted, disjoint, ending
    /// by `to`) replaced, and counts them.
    fn render(
        &self,
        b: &[u8],
        from: usize,
        to: usize,
        hits: &[Hit],
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
    ) {
        // Tally per label first: a handful of labels, many hits.
        let mut tally: Vec<(Label, u64)> = Vec::new();
        let mut at = from;
        for h in hits {
            if h.end <= from || h.start >= to {
                continue;
            }
            let start = h.start.max(from);
            out.extend_from_slice(&b[at..start]);
            self.write_replacement(h.label, &b[start..h.end], out);
            match tally.iter_mut().find(|(l, _)| *l == h.label) {
                Some((_, n)) => *n += 1,
                None => tally.push((h.label, 1)),
            }
            at = h.end;
        }
        out.extend_from_slice(&b[at..to]);
        for (label, n) in tally {
            count(counts, self.label_name(label), n);
        }
    }

    fn label_name(&self, label: Label) -> &str {
        match label {
            Label::Det(d) => d.name(),
            Label::Custom(i) => &self.shared.custom[usize::from(i)].name,
            Label::Field(i) => &self.shared.fields[usize::from(i)].count_name,
        }
    }

    fn write_replacement(&self, label: Label, text: &[u8], out: &mut Vec<u8>) {
        let (rep, det) = match label {
            Label::Det(d) => (&self.shared.replace[d.idx()], Some(d)),
            Label::Custom(i) => (&self.shared.custom[usize::from(i)].replace, None),
            Label::Field(i) => (&self.shared.fields[usize::from(i)].replace, None),
        };
        rep.write(&self.shared.hmac, det, text, out);
    }

    fn replace_into(&self, label: Label, text: &[u8], out: &mut Vec<u8>, counts: &mut MaskCounts) {
        self.write_replacement(label, text, out);
        count(counts, self.label_name(label), 1);
    }

    /// The whole value replaced under `label`.
    fn whole(&self, label: Label, text: &[u8], counts: &mut MaskCounts) -> String {
        if text.is_empty() {
            return String::new();
        }
        let mut out = Vec::with_capacity(16);
        self.replace_into(label, text, &mut out, counts);
        into_string(out)
    }

    /// The enabled column-style field rule matching `field`, if any.
    /// The first in configuration order, whichever of the names it matches
    /// (the order of rules decides, not the order of names).
    fn column_rule(&self, names: &[&str]) -> Option<u16> {
        self.shared
            .fields
            .iter()
            .zip(&self.profile.fields_on)
            .position(|(f, on)| *on && names.iter().any(|n| f.pat.matches_column(n)))
            .and_then(|i| u16::try_from(i).ok())
    }
}

fn count(counts: &mut MaskCounts, name: &str, n: u64) {
    // get_mut first: the common case allocates no key.
    if let Some(c) = counts.get_mut(name) {
        *c += n;
    } else {
        counts.insert(name.to_string(), n);
    }
}

fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The forms a held credential travels in: as is, percent-encoded (in URLs
/// and form bodies), JSON-escaped (in JSON seen as text), with its quotes
/// doubled (CSV, composite values, SQL literals), and encoded the
/// ways a query can hand it back: hex (PostgreSQL's `bytea` output,
/// `encode(…, 'hex')`) and base64 (`encode(…, 'base64')`, HTTP Basic).
fn credential_forms(s: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![s.as_bytes().to_vec()];
    // Percent-encoded as RFC 3986 says (upper-case digits), as some
    // encoders write it (lower-case), and as JavaScript's
    // `encodeURIComponent` leaves `!'()*` alone.
    for (unreserved, upper) in [(&b"-._~"[..], true), (b"-._~", false), (b"-._~!'()*", true)] {
        let mut pct = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || unreserved.contains(&b) {
                pct.push(char::from(b));
            } else if upper {
                pct.push_str(&format!("%{b:02X}"));
            } else {
                pct.push_str(&format!("%{b:02x}"));
            }
        }
        forms.push(pct.into_bytes());
    }
    // PostgreSQL's own escapes: COPY's text format (`\` and control
    // characters), a composite value's quoted field (`"` and `\` doubled),
    // an `E''` literal (`quote_literal` of a value with a backslash: `\`
    // and `'` doubled).
    if s.contains(['\\', '\t', '\n', '\r']) {
        let copy = s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        forms.push(copy.into_bytes());
    }
    // `bytea` in the escape output format: octal for bytes outside
    // printable ASCII, `\` doubled.
    if s.bytes().any(|b| b == b'\\' || !(0x20..0x7f).contains(&b)) {
        let mut escaped = String::new();
        for b in s.bytes() {
            match b {
                b'\\' => escaped.push_str("\\\\"),
                0x20..0x7f => escaped.push(char::from(b)),
                _ => escaped.push_str(&format!("\\{b:03o}")),
            }
        }
        forms.push(escaped.into_bytes());
    }
    if s.contains('\\') {
        for quote in ['"', '\''] {
            let doubled = s
                .replace('\\', "\\\\")
                .replace(quote, &format!("{quote}{quote}"));
            forms.push(doubled.into_bytes());
        }
    }
    if let Ok(j) = serde_json::to_string(s) {
        let inner = j.as_bytes()[1..j.len() - 1].to_vec();
        forms.push(inner);
    }
    // Quoted by doubling: CSV fields and composite values double `"`
    // (`COPY … (FORMAT csv)`, a whole row as text), SQL literals `'`
    // (`quote_literal`, `format('%L')`, an error's statement text).
    for quote in ['"', '\''] {
        if s.contains(quote) {
            let doubled: String = s.replace(quote, &format!("{quote}{quote}"));
            forms.push(doubled.into_bytes());
        }
    }
    // Under four bytes the hex would be an ordinary short number.
    if s.len() >= 4 {
        forms.push(hex::encode(s).into_bytes());
        forms.push(hex::encode_upper(s).into_bytes());
    }
    forms.extend(base64_forms(s.as_bytes()));
    forms.sort();
    forms.dedup();
    forms
}

/// Base64 of `secret` wherever it sits in a longer encoded value. A
/// base64 character carries six bits and a byte eight, so the text of the
/// secret depends on its offset modulo three; for each of the three, the
/// form is every character whose six bits all come from the secret. At
/// each edge at most four bits of the secret remain in a character shared
/// with its neighbours. Standard and URL-safe alphabets. Forms under
/// [`MIN_BASE64_FORM`] characters would hide ordinary text, so a credential
/// under six bytes is not looked for this way.
fn base64_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut forms = Vec::new();
    for offset in 0..3usize {
        // The secret after `offset` filler bytes, padded so that every
        // character over its bits is complete.
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(secret);
        buf.extend_from_slice(&[0, 0, 0]);
        let (bits_from, bits_to) = (8 * offset, 8 * (offset + secret.len()));
        // Characters k with 6k >= bits_from and 6k + 6 <= bits_to.
        let (first, end) = (bits_from.div_ceil(6), bits_to / 6);
        if end < first + MIN_BASE64_FORM {
            continue;
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let text = engine.encode(&buf);
            if let Some(form) = text.as_bytes().get(first..end) {
                forms.push(form.to_vec());
            }
        }
    }
    forms
}

/// The shortest base64 form of a credential that is looked for (42 bits).
const MIN_BASE64_FORM: usize = 7;

/// Every detector, in `Det` order (the index of `Shared::replace`).
fn all_dets() -> impl Iterator<Item = Det> {
    [Det::HeldSecret, Det::Literal]
        .into_iter()
        .chain(CONFIGURABLE)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
}

fn builtin_names() -> String {
    CONFIGURABLE
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn custom_names(shared: &Shared) -> String {
    if shared.custom.is_empty() {
        "none".into()
    } else {
        shared
            .custom
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
