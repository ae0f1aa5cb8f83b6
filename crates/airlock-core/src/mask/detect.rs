//! Finding sensitive spans in bytes.
//!
//! Speed comes from never running a detector where it cannot match. Three
//! cheap passes find candidate positions:
//!
//! * an Aho-Corasick automaton of the dictionary (held credentials, literals);
//! * a packed (SIMD "Teddy") search for trigger literals (`AKIA`, `ghp_`,
//!   `eyJ`, `-----BEGIN`, `password`, ...);
//! * a block scan for digits, `:` and `@`, the only bytes numbers, IP
//!   addresses and e-mail addresses can hinge on.
//!
//! Each candidate is then verified by a small hand-written parser that looks
//! only at the bytes around it and applies the format's validation (Luhn,
//! mod-97, SSN ranges, octet ranges, ...).
//!
//! Every verifier decides from a bounded window of bytes around its
//! candidate, never from state left by earlier candidates. That is what lets
//! the streaming masker cut a stream anywhere: when a window runs past the end
//! of the bytes seen so far, the verifier reports the position it must be
//! re-run from (`need`), and the stream holds back from there.

use aho_corasick::{AhoCorasick, Input as AcInput, packed};
use memchr::memmem;
use regex_automata::hybrid::dfa::Cache;
use regex_automata::{Anchored, Input};

use super::validate;
use super::{CustomDet, Shared};

/// Built-in detectors. The order is the priority when two overlap at the same
/// start: the earlier (more specific) one names the merged span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Det {
    HeldSecret,
    Literal,
    PrivateKey,
    GcpPrivateKey,
    Jwt,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    SlackToken,
    StripeKey,
    GcpApiKey,
    UrlPassword,
    GenericSecret,
    KubeSecret,
    Iban,
    Card,
    Ssn,
    Email,
    Phone,
    Ipv6,
    Ipv4,
}

/// Number of [`Det`] variants.
pub(crate) const N_DET: usize = 21;

/// The detectors a profile can name (everything but held secrets and literals,
/// which have their own switches).
pub(crate) const CONFIGURABLE: [Det; 19] = [
    Det::Email,
    Det::Card,
    Det::Ssn,
    Det::Phone,
    Det::Iban,
    Det::Ipv4,
    Det::Ipv6,
    Det::Jwt,
    Det::AwsAccessKey,
    Det::AwsSecretKey,
    Det::GithubToken,
    Det::SlackToken,
    Det::StripeKey,
    Det::GcpApiKey,
    Det::GcpPrivateKey,
    Det::PrivateKey,
    Det::GenericSecret,
    Det::UrlPassword,
    Det::KubeSecret,
];

impl Det {
    /// The name used in config and in counts.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Det::HeldSecret => "held_secret",
            Det::Literal => "literal",
            Det::PrivateKey => "private_key",
            Det::GcpPrivateKey => "gcp_private_key",
            Det::Jwt => "jwt",
            Det::AwsAccessKey => "aws_access_key",
            Det::AwsSecretKey => "aws_secret_key",
            Det::GithubToken => "github_token",
            Det::SlackToken => "slack_token",
            Det::StripeKey => "stripe_key",
            Det::GcpApiKey => "gcp_api_key",
            Det::UrlPassword => "url_password",
            Det::GenericSecret => "generic_secret",
            Det::KubeSecret => "kube_secret",
            Det::Iban => "iban",
            Det::Card => "card",
            Det::Ssn => "ssn",
            Det::Email => "email",
            Det::Phone => "phone",
            Det::Ipv6 => "ipv6",
            Det::Ipv4 => "ipv4",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Det> {
        CONFIGURABLE
            .iter()
            .chain(&[Det::Literal, Det::HeldSecret])
            .copied()
            .find(|d| d.name() == name)
    }

    pub(crate) fn idx(self) -> usize {
        self as usize
    }
}

/// What a span was found by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    Det(Det),
    Custom(u16),
    Field(u16),
}

impl Label {
    /// Lower wins when two spans start at the same byte.
    fn rank(self) -> u32 {
        match self {
            Label::Det(Det::HeldSecret) => 0,
            Label::Det(Det::Literal) => 1,
            Label::Field(i) => 2 + u32::from(i),
            Label::Custom(i) => 100_000 + u32::from(i),
            Label::Det(d) => 200_000 + d as u32,
        }
    }
}

/// A sensitive span `start..end` of the scanned bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) label: Label,
    /// Where the scan must restart to find this hit again: its trigger
    /// (`password` for the value after it), never after `start`.
    pub(crate) origin: usize,
}

/// Sorts hits and merges overlapping ones, so that no byte of any hit stays
/// visible. The merged span keeps the label of its first (best) hit.
pub(crate) fn merge(hits: &mut Vec<Hit>) {
    if hits.len() < 2 {
        return;
    }
    // `scan` leaves hits in order; this only guards other callers.
    if !hits.is_sorted_by_key(order_key) {
        hits.sort_unstable_by_key(order_key);
    }
    let mut w = 0;
    for r in 1..hits.len() {
        if hits[r].start < hits[w].end {
            hits[w].end = hits[w].end.max(hits[r].end);
        } else {
            w += 1;
            hits[w] = hits[r];
        }
    }
    hits.truncate(w + 1);
}

/// Position, then rank, in one integer (ranks fit in 20 bits). Hits with the
/// same start and rank merge the same way in any order.
fn order_key(h: &Hit) -> u64 {
    ((h.start as u64) << 20) | u64::from(h.label.rank())
}

/// Puts the hits in order. Each pass appends a run that is already (almost
/// always) in order, so the runs are merged in one linear pass rather than
/// sorted. `bounds` are the indices where the runs start, then the end.
fn order(hits: &mut Vec<Hit>, bounds: &[usize; 5]) {
    // On the stack: most scans (one per result cell) find nothing at all.
    let mut runs = [(0usize, 0usize); 4];
    let mut n = 0;
    for w in bounds.windows(2) {
        let (a, z) = (w[0], w[1]);
        if a == z {
            continue;
        }
        let run = &mut hits[a..z];
        if !run.is_sorted_by_key(order_key) {
            run.sort_unstable_by_key(order_key);
        }
        runs[n] = (a, z);
        n += 1;
    }
    if n < 2 {
        return;
    }
    let runs = &mut runs[..n];
    let mut merged = Vec::with_capacity(hits.len());
    loop {
        let mut best: Option<usize> = None;
        for (r, &(a, z)) in runs.iter().enumerate() {
            if a < z && best.is_none_or(|b| order_key(&hits[a]) < order_key(&hits[runs[b].0])) {
                best = Some(r);
            }
        }
        let Some(r) = best else {
            break;
        };
        merged.push(hits[runs[r].0]);
        runs[r].0 += 1;
    }
    *hits = merged;
}

/// The dictionary: held credentials (always) and configured literals.
pub(crate) struct Dict {
    pub(crate) ac: AhoCorasick,
    /// Patterns `0..n_held` are held credentials; the rest are literals.
    pub(crate) n_held: usize,
    pub(crate) patterns: Vec<Vec<u8>>,
    /// The shortest pattern (asked of the automaton once, not per scan).
    pub(crate) min_len: usize,
}

impl Dict {
    pub(crate) fn new(held: &[Vec<u8>], literals: &[Vec<u8>]) -> Option<Dict> {
        let patterns: Vec<Vec<u8>> = held.iter().chain(literals).cloned().collect();
        if patterns.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok()?;
        let min_len = patterns.iter().map(Vec::len).min().unwrap_or(0);
        Some(Dict {
            ac,
            n_held: held.len(),
            patterns,
            min_len,
        })
    }
}

/// Which verifier a trigger literal starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trig {
    Aws,
    Github,
    GithubPat,
    Slack,
    SlackHook,
    Stripe,
    StripeWebhook,
    GcpApi,
    Pem,
    Jwt,
    Url,
    Key,
}

/// Trigger literals and the detectors they serve, with how many leading
/// bytes the search skips. The search looks for the rest, which starts with
/// bytes rare in ordinary text (`hp_` rather than `ghp_`): the SIMD search
/// then runs at several GB/s instead of stopping at every `gh` in prose.
pub(crate) const TRIGGERS: &[(&str, usize, Trig)] = &[
    ("AKIA", 0, Trig::Aws),
    ("ASIA", 0, Trig::Aws),
    ("ghp_", 1, Trig::Github),
    ("gho_", 1, Trig::Github),
    ("ghu_", 1, Trig::Github),
    ("ghs_", 1, Trig::Github),
    ("ghr_", 1, Trig::Github),
    ("github_pat_", 6, Trig::GithubPat),
    ("xox", 0, Trig::Slack),
    ("hooks.slack.com/services/", 5, Trig::SlackHook),
    ("sk_live_", 1, Trig::Stripe),
    ("rk_live_", 1, Trig::Stripe),
    ("sk_test_", 1, Trig::Stripe),
    ("rk_test_", 1, Trig::Stripe),
    ("whsec_", 0, Trig::StripeWebhook),
    ("AIza", 0, Trig::GcpApi),
    ("-----BEGIN ", 4, Trig::Pem),
    ("eyJ", 0, Trig::Jwt),
    ("://", 0, Trig::Url),
    // `--password value`: a flag without `=` or `:`. (`key = value` and
    // `key: value` are found from their separator, see `Scanner::key_sep`.)
    ("--pass", 0, Trig::Key),
    ("--token", 0, Trig::Key),
    ("--secret", 0, Trig::Key),
    ("--api", 0, Trig::Key),
];

impl Trig {
    /// Whether any detector this trigger serves is on.
    pub(crate) fn wanted(self, on: &[bool; N_DET]) -> bool {
        let any = |ds: &[Det]| ds.iter().any(|d| on[d.idx()]);
        match self {
            Trig::Aws => any(&[Det::AwsAccessKey, Det::AwsSecretKey]),
            Trig::Github | Trig::GithubPat => any(&[Det::GithubToken]),
            Trig::Slack | Trig::SlackHook => any(&[Det::SlackToken]),
            Trig::Stripe | Trig::StripeWebhook => any(&[Det::StripeKey]),
            Trig::GcpApi => any(&[Det::GcpApiKey]),
            Trig::Pem => any(&[Det::PrivateKey, Det::GcpPrivateKey]),
            Trig::Jwt => any(&[Det::Jwt]),
            Trig::Url => any(&[Det::UrlPassword]),
            Trig::Key => any(&[Det::GenericSecret, Det::AwsSecretKey]),
        }
    }
}

/// The trigger searcher of one profile.
pub(crate) struct Triggers {
    search: TrigSearch,
    /// Per searched pattern: the full literals ending in it, with the
    /// number of bytes before it, and their verifier.
    kinds: Vec<Vec<(&'static [u8], usize, Trig)>>,
    /// The full literals (for the stream's hold-back of a cut trigger).
    pub(crate) patterns: Vec<&'static [u8]>,
    /// The shortest searched part: less input than this holds no trigger
    /// (a short result cell skips the search).
    min_len: usize,
}

enum TrigSearch {
    Packed(packed::Searcher),
    Ac(AhoCorasick),
}

impl Triggers {
    pub(crate) fn new(on: &[bool; N_DET]) -> Option<Triggers> {
        let chosen: Vec<(&'static str, usize, Trig)> = TRIGGERS
            .iter()
            .copied()
            .filter(|(_, _, t)| t.wanted(on))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let mut searched: Vec<&'static [u8]> = Vec::new();
        let mut kinds: Vec<Vec<(&'static [u8], usize, Trig)>> = Vec::new();
        for (full, skip, trig) in &chosen {
            let tail = &full.as_bytes()[*skip..];
            match searched.iter().position(|p| *p == tail) {
                Some(i) => kinds[i].push((full.as_bytes(), *skip, *trig)),
                None => {
                    searched.push(tail);
                    kinds.push(vec![(full.as_bytes(), *skip, *trig)]);
                }
            }
        }
        let patterns = chosen.iter().map(|(full, _, _)| full.as_bytes()).collect();
        let min_len = searched.iter().map(|p| p.len()).min().unwrap_or(0);
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&searched)
            .build();
        let search = match packed {
            Some(s) => TrigSearch::Packed(s),
            None => TrigSearch::Ac(
                AhoCorasick::builder()
                    .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                    .build(&searched)
                    .ok()?,
            ),
        };
        Some(Triggers {
            search,
            kinds,
            patterns,
            min_len,
        })
    }

    /// The next trigger whose searched part starts at or after `at`:
    /// (start of the full literal, its end, verifier, start of the searched part).
    fn find(&self, hay: &[u8], mut at: usize) -> Option<(usize, usize, Trig, usize)> {
        while at < hay.len() && hay.len() - at >= self.min_len {
            let m = match &self.search {
                TrigSearch::Packed(s) => s.find_in(hay, aho_corasick::Span::from(at..hay.len())),
                TrigSearch::Ac(ac) => ac.find(AcInput::new(hay).span(at..hay.len())),
            }?;
            for &(full, skip, trig) in self.kinds.get(m.pattern().as_usize())? {
                if m.start() >= skip && hay[m.start() - skip..m.start()] == full[..skip] {
                    return Some((m.start() - skip, m.end(), trig, m.start()));
                }
            }
            at = m.start() + 1;
        }
        None
    }
}

/// What one profile scans for, compiled.
pub(crate) struct Plan {
    pub(crate) on: [bool; N_DET],
    pub(crate) custom_on: Vec<bool>,
    pub(crate) triggers: Option<Triggers>,
    pub(crate) dict: Option<std::sync::Arc<Dict>>,
    numeric: bool,
    /// Whether `key = value` secrets are looked for.
    keys: bool,
}

impl Plan {
    pub(crate) fn new(
        on: [bool; N_DET],
        custom_on: Vec<bool>,
        dict: Option<std::sync::Arc<Dict>>,
    ) -> Plan {
        let numeric = [Det::Card, Det::Ssn, Det::Phone, Det::Iban, Det::Ipv4]
            .iter()
            .any(|d| on[d.idx()]);
        let keys = on[Det::GenericSecret.idx()] || on[Det::AwsSecretKey.idx()];
        Plan {
            keys,
            triggers: Triggers::new(&on),
            on,
            custom_on,
            dict,
            numeric,
        }
    }

    pub(crate) fn is_on(&self, d: Det) -> bool {
        self.on[d.idx()]
    }
}

/// Longest span any built-in verifier needs before it can decide, except
/// inside a private-key block. Also the bound of the stream's hold-back.
pub(crate) const MAX_SPAN: usize = 8 * 1024;
/// Longest private-key block (header to footer) the stream waits for.
pub(crate) const PEM_LIMIT: usize = 64 * 1024;
/// Custom regex matches are assumed to be at most this long in streams.
pub(crate) const CUSTOM_WINDOW: usize = 1024;
/// Bytes of already-released context the stream keeps for verifiers that
/// look backwards (e-mail local parts, IBAN country codes, key names).
pub(crate) const LOOKBEHIND: usize = 512;

/// Scans `buf[from..]` (bytes before `from` are context only) and appends
/// the hits. With `eof == false` the bytes may continue: the return value is
/// the earliest position from which a later scan must start again because a
/// candidate there is not decided yet (`buf.len()` when all is decided).
pub(crate) fn scan(
    shared: &Shared,
    plan: &Plan,
    buf: &[u8],
    from: usize,
    eof: bool,
    caches: Option<&mut [Option<Cache>]>,
    hits: &mut Vec<Hit>,
) -> usize {
    let mut s = Scanner {
        plan,
        buf,
        from,
        eof,
        hold: buf.len(),
        hits,
    };
    let mut bounds = [0usize; 5];
    bounds[0] = s.hits.len();
    if let Some(dict) = &plan.dict {
        s.dictionary(dict);
    }
    bounds[1] = s.hits.len();
    if let Some(t) = &plan.triggers {
        s.triggers(t);
    }
    bounds[2] = s.hits.len();
    if plan.numeric || plan.keys || plan.is_on(Det::Email) || plan.is_on(Det::Ipv6) {
        s.classes();
    }
    bounds[3] = s.hits.len();
    let mut caches = caches;
    for (i, rule) in shared.custom.iter().enumerate() {
        if plan.custom_on.get(i).copied().unwrap_or(false) {
            let cache = caches
                .as_deref_mut()
                .and_then(|c| c.get_mut(i))
                .and_then(Option::as_mut);
            s.custom(i, rule, cache);
        }
    }
    bounds[4] = s.hits.len();
    if !eof {
        s.tails();
    }
    let hold = s.hold;
    order(hits, &bounds);
    hold
}

struct Scanner<'a> {
    plan: &'a Plan,
    buf: &'a [u8],
    from: usize,
    eof: bool,
    hold: usize,
    hits: &'a mut Vec<Hit>,
}

// Byte classes.
fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
/// E-mail local-part characters (the common subset of RFC 5322's atext),
/// and the bytes of two-byte UTF-8 characters (`andré@`, `иван@`; RFC 6531
/// allows them). Not those of longer characters: CJK text runs into an
/// address without a space, and would be taken for part of it.
fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-') || is_utf8_2(b)
}
/// Domain characters, and (for internationalised domains, `müller.de`,
/// `почта.рф`) the bytes of two-byte UTF-8 characters.
fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || is_utf8_2(b)
}
/// A lead byte of a two-byte UTF-8 character (U+0080..U+07FF: Latin,
/// Greek, Cyrillic, Armenian, Hebrew, Arabic letters), or a continuation
/// byte. A continuation byte of a longer character is dropped again where
/// a run begins ([`local_start`]); a run going forward stops at that
/// character's lead byte first.
fn is_utf8_2(b: u8) -> bool {
    matches!(b, 0x80..=0xBF | 0xC2..=0xDF)
}
fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}
fn is_hexcolon(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}
fn is_quote(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'`')
}

/// The next position at or after `i` holding a digit, `:`, `=` or `@` (or
/// `h.len()`): the bytes numbers, IP addresses, `key=value` pairs and e-mail
/// addresses hinge on. Tests eight bytes at a time with SWAR arithmetic.
fn next_class(h: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn eq(x: u64, c: u8) -> u64 {
        let y = x ^ (LO * u64::from(c));
        !(((y & !HI) + !HI) | y) & HI
    }
    #[inline(always)]
    fn mask(x: u64) -> u64 {
        // Adding to the low seven bits never carries across bytes, so each
        // byte's top bit says whether it is >= 0x30, resp. >= 0x3b.
        let lo7 = x & !HI;
        let ge = lo7 + LO * (0x80 - 0x30);
        let gt = lo7 + LO * (0x80 - 0x3b);
        ((ge & !gt & !x) & HI) | eq(x, b'@') | eq(x, b'=')
    }
    #[inline(always)]
    fn is_class(b: u8) -> bool {
        b.wrapping_sub(b'0') < 11 || b == b'@' || b == b'='
    }
    while let Some(block) = h.get(i..i + 16) {
        let (a, z) = block.split_at(8);
        let (Ok(a), Ok(z)) = (<[u8; 8]>::try_from(a), <[u8; 8]>::try_from(z)) else {
            break;
        };
        let ma = mask(u64::from_le_bytes(a));
        if ma != 0 {
            return i + (ma.trailing_zeros() / 8) as usize;
        }
        let mz = mask(u64::from_le_bytes(z));
        if mz != 0 {
            return i + 8 + (mz.trailing_zeros() / 8) as usize;
        }
        i += 16;
    }
    while i < h.len() {
        if is_class(h[i]) {
            return i;
        }
        i += 1;
    }
    h.len()
}

/// The end of the run of ASCII digits starting at `i`, at most `limit`.
/// Eight bytes at a time: digit runs have unpredictable lengths, and a
/// byte loop pays a branch miss at the end of each.
fn digits_end(h: &[u8], mut i: usize, limit: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while i < limit {
        let Some(Ok(block)) = h.get(i..i + 8).map(<[u8; 8]>::try_from) else {
            break;
        };
        let x = u64::from_le_bytes(block);
        let lo7 = x & !HI;
        let digit = (lo7 + LO * (0x80 - 0x30)) & !(lo7 + LO * (0x80 - 0x3a)) & !x & HI;
        let other = !digit & HI;
        if other != 0 {
            return (i + (other.trailing_zeros() / 8) as usize).min(limit);
        }
        i += 8;
    }
    while i < limit && h[i].is_ascii_digit() {
        i += 1;
    }
    i.min(limit)
}

/// The at sign `a..after` that the digit at `i` is part of, if it is one
/// written `%40`, `&#64;` or `&#x40;` (the digit at `i` is its first).
fn encoded_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let before = |s: &[u8]| i >= s.len() && &b[i - s.len()..i] == s;
    let after = |s: &[u8]| b.get(i..i + s.len()) == Some(s);
    if before(b"%") && after(b"40") {
        Some((i - 1, i + 2))
    } else if before(b"&#") && after(b"64;") {
        Some((i - 2, i + 3))
    } else if (before(b"&#x") || before(b"&#X")) && after(b"40;") {
        Some((i - 3, i + 3))
    } else {
        None
    }
}

/// Where an e-mail local part ending before `end` starts: the run of local
/// characters, at most 64, not counting the tail of a terminal escape
/// sequence (`ESC[1;32m` + `john` is `john`). `None` when the run is longer
/// than 64 (then it cannot be a local part) or empty.
fn local_start(b: &[u8], end: usize) -> Option<usize> {
    let mut s = end;
    while s > 0 && is_local(b[s - 1]) {
        if end - s >= 64 {
            return None;
        }
        s -= 1;
    }
    // Continuation bytes of a longer character whose lead byte is not a
    // local byte: not part of the run.
    while s < end && matches!(b[s], 0x80..=0xBF) {
        s += 1;
    }
    let s = after_escape(b, s, end);
    (s < end).then_some(s)
}

/// If the run `s..end` begins inside a terminal escape sequence, the position
/// just after the sequence; otherwise `s`.
fn after_escape(b: &[u8], s: usize, end: usize) -> usize {
    if s == 0 {
        return s;
    }
    // ESC c, ESC ( B, ESC ) 0: one- or two-byte escapes.
    if b[s - 1] == 0x1b {
        return (s + 1).min(end);
    }
    if s >= 2 && b[s - 2] == 0x1b && matches!(b[s - 1], b'(' | b')' | b'#' | b'%') {
        return (s + 1).min(end);
    }
    // CSI: ESC [ parameters final. Parameters are 0x30..=0x3F, so some are
    // local characters and belong to the run: find the final byte in it.
    let mut q = s;
    while q > 0 && s - q < 32 && (0x30..=0x3f).contains(&b[q - 1]) {
        q -= 1;
    }
    if q >= 2 && b[q - 1] == b'[' && b[q - 2] == 0x1b {
        let mut f = s;
        while f < end {
            if (0x40..=0x7e).contains(&b[f]) {
                return f + 1;
            }
            f += 1;
        }
        // The sequence is not finished: nothing of the run is text yet.
        return end;
    }
    s
}

impl Scanner<'_> {
    fn need(&mut self, pos: usize) {
        self.hold = self.hold.min(pos.max(self.from));
    }

    fn hit(&mut self, start: usize, end: usize, det: Det) {
        self.hit_from(start, start, end, det);
    }

    /// A hit found from a trigger at `origin` before it.
    fn hit_from(&mut self, origin: usize, start: usize, end: usize, det: Det) {
        if end > start && self.plan.is_on(det) {
            self.hits.push(Hit {
                start,
                end,
                label: Label::Det(det),
                origin: origin.min(start),
            });
        }
    }

    /// The end of the run of `class` bytes from `i`, at most `max` long.
    /// `None` if the run reaches the end of the bytes seen so far (undecided).
    fn run(&self, i: usize, class: fn(u8) -> bool, max: usize) -> Option<usize> {
        let mut e = i;
        let lim = i.saturating_add(max + 1).min(self.buf.len());
        while e < lim && class(self.buf[e]) {
            e += 1;
        }
        if e == self.buf.len() && !self.eof && e - i <= max {
            None
        } else {
            Some(e)
        }
    }

    #[inline(never)]
    fn dictionary(&mut self, dict: &Dict) {
        // Nothing shorter than every pattern can hold one (most result
        // cells are shorter than a credential); the search has a fixed cost.
        if self.buf.len().saturating_sub(self.from) < dict.min_len {
            return;
        }
        let input = AcInput::new(self.buf).span(self.from..self.buf.len());
        for m in dict.ac.find_iter(input) {
            let held = m.pattern().as_usize() < dict.n_held;
            if !held && !self.plan.is_on(Det::Literal) {
                continue;
            }
            let det = if held { Det::HeldSecret } else { Det::Literal };
            self.hits.push(Hit {
                start: m.start(),
                end: m.end(),
                label: Label::Det(det),
                origin: m.start(),
            });
        }
    }

    #[inline(never)]
    fn triggers(&mut self, t: &Triggers) {
        let mut at = self.from;
        while let Some((s, e, kind, found)) = t.find(self.buf, at) {
            match kind {
                Trig::Aws => self.aws(s),
                Trig::Github => self.prefixed(s, e, is_alnum, 36, 255, Det::GithubToken),
                Trig::GithubPat => self.prefixed(s, e, is_word, 22, 255, Det::GithubToken),
                Trig::Slack => self.slack(s),
                Trig::SlackHook => self.slack_hook(s, e),
                Trig::Stripe => self.prefixed(s, e, is_alnum, 16, 247, Det::StripeKey),
                Trig::StripeWebhook => self.prefixed(s, e, is_alnum, 24, 128, Det::StripeKey),
                Trig::GcpApi => self.prefixed(s, e, is_b64url, 35, 35, Det::GcpApiKey),
                Trig::Pem => self.pem(s, e),
                Trig::Jwt => self.jwt(s),
                Trig::Url => self.url(s),
                Trig::Key => self.key(s, e),
            }
            if self.hold <= s {
                // Undecided here: everything after is scanned again later.
                break;
            }
            // Triggers inside a found span are still looked at (a JWT after
            // `Bearer` is named a JWT), and every scan visits the same
            // triggers wherever it started.
            at = found + 1;
            if at >= self.buf.len() {
                break;
            }
        }
    }

    #[inline(never)]
    fn classes(&mut self) {
        let (numeric, email, ipv6, keys) = (
            self.plan.numeric,
            self.plan.is_on(Det::Email),
            self.plan.is_on(Det::Ipv6),
            self.plan.keys,
        );
        let mut i = self.from;
        // Every colon of one hex/colon run gives the same IPv6 verdict, so
        // the run is judged once (digits in it are still looked at).
        let mut judged_until = 0;
        loop {
            i = next_class(self.buf, i);
            if i >= self.buf.len() {
                break;
            }
            let next = match self.buf[i] {
                b'@' if email => self.email(i, i + 1),
                // `%40`: an `@` percent-encoded, in a URL or a form body
                // (`/reset?email=bob%40example.com`); `&#64;` and `&#x40;`:
                // one written as an HTML character reference.
                b'4' | b'6' if email && let Some((a, after)) = encoded_at(self.buf, i) => {
                    let found = self.hits.len();
                    let next = self.email(a, after);
                    // Found, or held for the rest of the address: done
                    // here; otherwise the digits may still be a number.
                    if self.hits.len() > found || next >= self.buf.len() {
                        next
                    } else if numeric {
                        self.digit(i)
                    } else {
                        i + 1
                    }
                }
                b':' => {
                    if keys {
                        self.key_sep(i);
                    }
                    if ipv6 && i >= judged_until {
                        let (next, run_end) = self.ipv6(i);
                        judged_until = run_end;
                        next
                    } else {
                        i + 1
                    }
                }
                b'=' if keys => {
                    self.key_sep(i);
                    i + 1
                }
                b'0'..=b'9' if numeric => self.digit(i),
                _ => i + 1,
            };
            if self.hold <= i {
                break;
            }
            i = next.max(i + 1);
        }
    }

    /// A token `prefix body`: the trigger must start a word and the body is a
    /// run of `class` between `min` and `max` bytes, not followed by more
    /// word bytes.
    fn prefixed(
        &mut self,
        s: usize,
        e: usize,
        class: fn(u8) -> bool,
        min: usize,
        max: usize,
        det: Det,
    ) {
        if s > 0 && is_word(self.buf[s - 1]) {
            return;
        }
        let Some(end) = self.run(e, class, max) else {
            self.need(s);
            return;
        };
        let n = end - e;
        let after_ok = self.buf.get(end).is_none_or(|&b| !is_word(b));
        if n >= min && n <= max && after_ok {
            self.hit(s, end, det);
        }
    }

    #[inline(never)]
    fn aws(&mut self, s: usize) {
        let b = self.buf;
        if s > 0 && is_alnum(b[s - 1]) {
            return;
        }
        let body = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
        let Some(end) = self.run(s + 4, body, 16) else {
            self.need(s);
            return;
        };
        if end - (s + 4) != 16 || b.get(end).is_some_and(|&c| is_alnum(c)) {
            return;
        }
        // A secret key is 40 base64 characters; on its own it is
        // indistinguishable from other tokens, so it is recognised after its
        // key id on the same line (CSV exports) or after a key name (see
        // `value`).
        let mut found = None;
        if self.plan.is_on(Det::AwsSecretKey) {
            // The rest of the line, at most 160 bytes.
            let window_end = end + 160;
            let mut i = end;
            let mut line_ended = false;
            while i < window_end.min(b.len()) {
                let c = b[i];
                if c == b'\n' {
                    line_ended = true;
                    break;
                }
                if is_b64(c) && !is_b64(b[i - 1]) {
                    let Some(te) = self.run(i, is_b64, 41) else {
                        self.need(s);
                        return;
                    };
                    let tok = &b[i..te];
                    if tok.len() == 40 && b.get(te) != Some(&b'=') && looks_random(tok) {
                        found = Some((i, te));
                        break;
                    }
                    i = te;
                } else {
                    i += 1;
                }
            }
            if found.is_none() && !line_ended && window_end > b.len() && !self.eof {
                self.need(s);
                return;
            }
        }
        self.hit(s, end, Det::AwsAccessKey);
        if let Some((a, z)) = found {
            self.hit_from(s, a, z, Det::AwsSecretKey);
        }
    }

    fn slack(&mut self, s: usize) {
        let b = self.buf;
        if s > 0 && is_word(b[s - 1]) {
            return;
        }
        if s + 5 > b.len() {
            if !self.eof {
                self.need(s);
            }
            return;
        }
        if !matches!(b[s + 3], b'a' | b'b' | b'p' | b'o' | b's' | b'r' | b'e') || b[s + 4] != b'-' {
            return;
        }
        let class = |c: u8| is_alnum(c) || c == b'-';
        let Some(end) = self.run(s + 5, class, 250) else {
            self.need(s);
            return;
        };
        if end - (s + 5) >= 10 && end - (s + 5) <= 250 {
            self.hit(s, end, Det::SlackToken);
        }
    }

    fn slack_hook(&mut self, s: usize, e: usize) {
        let class = |c: u8| is_alnum(c) || c == b'/' || c == b'_';
        let Some(end) = self.run(e, class, 160) else {
            self.need(s);
            return;
        };
        if end - e >= 20 && end - e <= 160 {
            self.hit_from(s, e, end, Det::SlackToken);
        }
    }

    fn jwt(&mut self, s: usize) {
        let b = self.buf;
        if s > 0 && (is_b64url(b[s - 1]) || b[s - 1] == b'.') {
            return;
        }
        let mut i = s;
        for seg in 0..3 {
            let Some(e) = self.run(i, is_b64url, MAX_SPAN) else {
                self.need(s);
                return;
            };
            let n = e - i;
            let ok = match seg {
                0 => n >= 10,
                1 => n >= 2,
                _ => true,
            };
            if !ok || e - s > MAX_SPAN {
                return;
            }
            i = e;
            if seg < 2 {
                match b.get(i) {
                    Some(b'.') => i += 1,
                    Some(_) => return,
                    None if self.eof => return,
                    None => {
                        self.need(s);
                        return;
                    }
                }
            }
        }
        self.hit(s, i, Det::Jwt);
    }

    fn pem(&mut self, s: usize, e: usize) {
        let b = self.buf;
        // Header label: "RSA PRIVATE KEY-----".
        let label_class = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' ';
        let Some(le) = self.run(e, label_class, 48) else {
            self.need(s);
            return;
        };
        let label = &b[e..le];
        if memmem::find(label, b"PRIVATE KEY").is_none() {
            return;
        }
        let header_end = le + 5;
        if header_end > b.len() {
            if !self.eof {
                self.need(s);
            }
            return;
        }
        if &b[le..header_end] != b"-----" {
            return;
        }
        let det = if s >= 1 && memmem::find(&b[s.saturating_sub(32)..s], b"private_key").is_some() {
            Det::GcpPrivateKey
        } else {
            Det::PrivateKey
        };
        let limit = (s + PEM_LIMIT).min(b.len());
        let mut at = header_end;
        while let Some(off) = memmem::find(&b[at..limit], b"-----END ") {
            let fe = at + off + 9;
            let Some(fle) = self.run(fe, label_class, 48) else {
                self.need(s);
                return;
            };
            if b.len() < fle + 5 {
                if !self.eof {
                    self.need(s);
                }
                return;
            }
            if memmem::find(&b[fe..fle], b"PRIVATE KEY").is_some() && &b[fle..fle + 5] == b"-----" {
                self.hit(s, fle + 5, det);
                return;
            }
            at = fe;
        }
        if !self.eof && b.len() < s + PEM_LIMIT {
            self.need(s);
            return;
        }
        // No footer (truncated output): mask the header and the body.
        let body = |c: u8| {
            is_b64(c) || matches!(c, b'=' | b'\r' | b'\n' | b'\\' | b' ' | b':' | b',' | b'-')
        };
        let mut end = header_end;
        while end < limit && body(b[end]) {
            end += 1;
        }
        while end > header_end && matches!(b[end - 1], b'\r' | b'\n' | b' ') {
            end -= 1;
        }
        self.hit(s, end, det);
    }

    fn url(&mut self, s: usize) {
        let b = self.buf;
        if s == 0 || !b[s - 1].is_ascii_alphabetic() {
            return;
        }
        let user = |c: u8| {
            !c.is_ascii_whitespace()
                && !matches!(
                    c,
                    b':' | b'/' | b'@' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>'
                )
        };
        let Some(ue) = self.run(s + 3, user, 128) else {
            self.need(s);
            return;
        };
        match b.get(ue) {
            Some(b':') => {}
            Some(_) => return,
            None => {
                if !self.eof {
                    self.need(s);
                }
                return;
            }
        }
        let pw = |c: u8| {
            !c.is_ascii_whitespace()
                && !matches!(c, b'/' | b'@' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
        };
        let Some(pe) = self.run(ue + 1, pw, 256) else {
            self.need(s);
            return;
        };
        if b.get(pe) == Some(&b'@') && pe > ue + 1 {
            self.hit_from(s, ue + 1, pe, Det::UrlPassword);
        }
    }

    /// `password = value`, `"apiKey": "value"`, `Authorization: Bearer value`,
    /// `--token value`: a key name ending in a secret-ish word, a separator,
    /// and a value that is not a placeholder.
    fn key(&mut self, t: usize, te: usize) {
        let b = self.buf;
        let mut s = t;
        while s > 0 && t - s < 64 && is_ident(b[s - 1]) {
            s -= 1;
        }
        if s > 0 && is_ident(b[s - 1]) {
            return;
        }
        let Some(e) = self.run(te, is_ident, 64) else {
            self.need(t);
            return;
        };
        let Some(kind) = key_kind(&b[s..e]) else {
            return;
        };
        self.value(t, s, e, kind);
    }

    /// A `:` or `=` at `i`: is it `secret_key = value`?
    #[inline(never)]
    fn key_sep(&mut self, i: usize) {
        let b = self.buf;
        let mut e = i;
        let mut n = 0;
        while e > 0 && n < 8 && matches!(b[e - 1], b' ' | b'\t') {
            e -= 1;
            n += 1;
        }
        if e > 0 && is_quote(b[e - 1]) {
            e -= 1;
            if e > 0 && b[e - 1] == b'\\' {
                e -= 1;
            }
        }
        // Every key word ends in one of these letters: most separators
        // (times, JSON keys, URLs) are rejected here.
        if e == 0
            || !matches!(
                b[e - 1].to_ascii_lowercase(),
                b'd' | b'e' | b's' | b't' | b'y' | b'n' | b'l'
            )
        {
            return;
        }
        let mut s = e;
        while s > 0 && e - s < 64 && is_ident(b[s - 1]) {
            s -= 1;
        }
        if s == e || (s > 0 && is_ident(b[s - 1])) {
            return;
        }
        if let Some(kind) = key_kind(&b[s..e]) {
            self.value(i, s, e, kind);
        }
    }

    /// The value after the key name `b[s..e]`. `t` is where a later scan
    /// finds this candidate again (its trigger).
    #[inline(never)]
    fn value(&mut self, t: usize, s: usize, e: usize, kind: KeyKind) {
        let b = self.buf;
        // Undecided if the bytes end anywhere before the value's end.
        macro_rules! at {
            ($i:expr) => {
                match b.get($i) {
                    Some(&c) => c,
                    None => {
                        if !self.eof {
                            self.need(t);
                        }
                        return;
                    }
                }
            };
        }
        // Like `at!`, but the end of a finished input ends the value.
        macro_rules! at_end {
            ($i:expr) => {
                match b.get($i) {
                    Some(&c) => Some(c),
                    None if self.eof => None,
                    None => {
                        self.need(t);
                        return;
                    }
                }
            };
        }
        let mut i = e;
        // Closing quote of a quoted key (`"password":`), maybe escaped.
        if at!(i) == b'\\' && is_quote(at!(i + 1)) {
            i += 2;
        } else if is_quote(at!(i)) {
            i += 1;
        }
        let ws = |c: u8| c == b' ' || c == b'\t';
        let mut spaces = 0;
        while ws(at!(i)) && spaces < 8 {
            i += 1;
            spaces += 1;
        }
        let c = at!(i);
        if c == b'=' || c == b':' {
            i += 1;
            if matches!(at!(i), b'>' | b'=') {
                i += 1;
            }
            let mut spaces = 0;
            while ws(at!(i)) && spaces < 8 {
                i += 1;
                spaces += 1;
            }
        } else if spaces == 0 || !(kind == KeyKind::Bearer || b[s..].starts_with(b"--")) {
            return;
        }
        // Opening quote, maybe escaped: the value ends at the same quote.
        let mut close: Option<(u8, bool)> = None;
        if at!(i) == b'\\' && is_quote(at!(i + 1)) {
            close = Some((b[i + 1], true));
            i += 2;
        } else if is_quote(at!(i)) {
            close = Some((b[i], false));
            i += 1;
        }
        let mut vs = i;
        let limit = vs + 4096;
        let mut ve = vs;
        loop {
            if ve >= limit {
                break;
            }
            let Some(c) = at_end!(ve) else {
                break;
            };
            match close {
                Some((q, escaped)) => {
                    if c == b'\n' || c == b'\r' {
                        break;
                    }
                    if escaped {
                        if c == b'\\' && at_end!(ve + 1) == Some(q) {
                            break;
                        }
                    } else if c == q {
                        break;
                    } else if c == b'\\' {
                        ve += 2;
                        continue;
                    }
                }
                None => {
                    if c.is_ascii_whitespace()
                        || matches!(
                            c,
                            b'"' | b'\''
                                | b'`'
                                | b','
                                | b';'
                                | b'&'
                                | b')'
                                | b'}'
                                | b']'
                                | b'<'
                                | b'>'
                        )
                    {
                        break;
                    }
                }
            }
            ve += 1;
        }
        // `Authorization: Bearer xyz` masks xyz and keeps the scheme.
        if kind == KeyKind::Auth {
            let v = &b[vs..ve];
            let schemes: [&[u8]; 4] = [b"bearer", b"basic", b"token", b"digest"];
            if schemes.iter().any(|sc| v.eq_ignore_ascii_case(sc)) && close.is_none() {
                // The credential is the next word.
                let mut j = ve;
                while at_end!(j).is_some_and(ws) && j - ve < 8 {
                    j += 1;
                }
                vs = j;
                ve = j;
                loop {
                    if ve >= j + 4096 {
                        break;
                    }
                    let Some(c) = at_end!(ve) else {
                        break;
                    };
                    if c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b',' | b';') {
                        break;
                    }
                    ve += 1;
                }
            }
        }
        let ve = ve.min(b.len());
        if let Some(det) = secret_det(self.plan, &b[s..e], kind, &b[vs..ve]) {
            self.hit_from(t, vs, ve, det);
        }
    }

    #[inline(never)]
    /// An address around the at sign at `a..after` (`@`, or `%40`).
    fn email(&mut self, a: usize, after: usize) -> usize {
        let b = self.buf;
        let Some(mut s) = local_start(b, a) else {
            return a + 1;
        };
        while s < a && b[s] == b'.' {
            s += 1;
        }
        if s == a || b[a - 1] == b'.' {
            return a + 1;
        }
        // `scheme://user:password@host` is a URL's userinfo, not an address.
        if s > 0 && b[s - 1] == b':' {
            let lo = s.saturating_sub(130);
            if let Some(p) = memmem::rfind(&b[lo..s], b"://") {
                let between = &b[lo + p + 3..s - 1];
                if !between
                    .iter()
                    .any(|c| c.is_ascii_whitespace() || *c == b'/')
                {
                    return a + 1;
                }
            }
        }
        let Some(mut e) = self.run(after, is_domain, 255) else {
            self.need(s);
            return b.len();
        };
        while e > after && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let domain = &b[after..e];
        if domain.len() > 253
            || domain
                .first()
                .is_none_or(|c| !(is_alnum(*c) || matches!(c, 0xC2..=0xDF)))
        {
            return e.max(after);
        }
        // Labels non-empty; the TLD alphabetic, 2..=24 letters (a letter
        // outside ASCII is two bytes), or an internationalised one in its
        // ASCII form (`xn--p1ai`).
        let Some(dot) = domain.iter().rposition(|&c| c == b'.') else {
            return e;
        };
        let tld = &domain[dot + 1..];
        let labels_ok = domain
            .split(|&c| c == b'.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l[0] != b'-' && l[l.len() - 1] != b'-');
        let letters = tld.iter().all(|c| c.is_ascii_alphabetic() || is_utf8_2(*c))
            && tld.len() >= 2
            && tld.len() <= if tld.is_ascii() { 24 } else { 48 };
        let punycode = tld.len() > 4
            && tld[..4].eq_ignore_ascii_case(b"xn--")
            && tld[4..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-');
        if labels_ok && (letters || punycode) {
            self.hit(s, e, Det::Email);
        }
        e
    }

    /// An IPv6 address around the colon at `c`. Returns where to go on and
    /// the end of the hex/colon run judged (0 if none was).
    #[inline(never)]
    fn ipv6(&mut self, c: usize) -> (usize, usize) {
        let b = self.buf;
        let len = b.len();
        // The hex/colon/dot run around this colon, at most 45 bytes.
        let mut t = c;
        while t > 0 && is_hexcolon(b[t - 1]) {
            if c - t >= 46 {
                return (c + 1, 0);
            }
            t -= 1;
        }
        match b.get(c + 1) {
            None => {
                if !self.eof {
                    self.need(t);
                }
                return (len, 0);
            }
            Some(&n) if !(n.is_ascii_hexdigit() || n == b':') => return (c + 1, 0),
            Some(_) => {}
        }
        let Some(mut e) = self.run(c, is_hexcolon, 46) else {
            self.need(t);
            return (len, 0);
        };
        let run_end = e;
        if e - t > 45
            || (t > 0 && (is_word(b[t - 1]) || b[t - 1] == b'.'))
            || b.get(e).is_some_and(|&x| is_word(x))
        {
            return (c + 1, run_end);
        }
        while e > t && b[e - 1] == b'.' {
            e -= 1;
        }
        let tok = &b[t..e];
        let colons = tok.iter().filter(|&&x| x == b':').count();
        // `a::b` is a path in code far more often than an address; without
        // `::` an address has all eight groups (or six and an IPv4 tail).
        let compressed = memmem::find(tok, b"::").is_some();
        if colons < 2 || !tok.iter().any(u8::is_ascii_digit) || (!compressed && colons < 6) {
            return (c + 1, run_end);
        }
        let parsed = std::str::from_utf8(tok)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok());
        if parsed.is_none() {
            return (c + 1, run_end);
        }
        self.hit(t, e, Det::Ipv6);
        (e, run_end)
    }

    fn digit(&mut self, p: usize) -> usize {
        let b = self.buf;
        let run_end = digits_end(b, p, b.len());
        let mut prev = if p > 0 { b[p - 1] } else { b' ' };
        // `\n4111…`: a line break or tab written as an escape (COPY's text
        // format, JSON kept in a text column) separates as the byte it
        // stands for does.
        if p >= 2 && b[p - 2] == b'\\' && matches!(prev, b'n' | b't' | b'r' | b'b' | b'f' | b'v') {
            prev = b' ';
        }
        if prev.is_ascii_digit() {
            return run_end;
        }
        if prev.is_ascii_alphabetic() {
            if self.plan.is_on(Det::Iban)
                && let Some(next) = self.iban(p)
            {
                return next;
            }
            return run_end;
        }
        if prev == b'_' || !self.plan.numeric {
            return run_end;
        }
        // Most numbers in text are a lone `12` or a `2024-01-15`: reject them
        // here, from the first group and the byte after it, before the
        // (out-of-line) group parse. `+` may start a phone number of any shape.
        let len = b.len();
        let plus = prev == b'+';
        if !plus && run_end < len {
            let (l0, first) = (run_end - p, b[p]);
            let card_lead = (b'2'..=b'6').contains(&first);
            let lead_ok = match l0 {
                1..=3 => true,
                4 => first == b'0' || card_lead,
                5 => first == b'0',
                13..=19 => card_lead,
                _ => false,
            };
            if !lead_ok {
                return run_end;
            }
            if l0 < 13 && run_end + 1 < len {
                let (c, d) = (b[run_end], b[run_end + 1]);
                let next_ok = match c {
                    b' ' => d.is_ascii_digit() || d == b'(',
                    b'-' | b'.' | b'/' => d.is_ascii_digit(),
                    b')' => matches!(d, b' ' | b'-') || d.is_ascii_digit(),
                    _ => false,
                };
                if !next_ok {
                    return run_end;
                }
            }
        }
        self.numeric(p).unwrap_or(run_end)
    }

    #[inline(never)]
    fn iban(&mut self, p: usize) -> Option<usize> {
        let b = self.buf;
        if p < 2 || !b[p - 2].is_ascii_uppercase() || !b[p - 1].is_ascii_uppercase() {
            return None;
        }
        if p >= 3 && is_word(b[p - 3]) {
            return None;
        }
        let s = p - 2;
        let want = validate::iban_length(&b[s..p])?;
        // Collect `want` alphanumerics, allowing single spaces between groups of four.
        let mut i = p;
        let mut got = 2;
        let mut spaced = None;
        while got < want {
            let Some(&c) = b.get(i) else {
                if !self.eof {
                    self.need(s);
                }
                return Some(b.len());
            };
            if c.is_ascii_digit() || c.is_ascii_uppercase() {
                got += 1;
                i += 1;
            } else if c == b' ' && got % 4 == 0 && spaced != Some(false) {
                spaced = Some(true);
                i += 1;
            } else {
                return None;
            }
            if got == 4 && spaced.is_none() && b.get(i).is_some_and(|&c| c != b' ') {
                spaced = Some(false);
            }
            if spaced == Some(true) && got < want && got % 4 != 0 && b.get(i) == Some(&b' ') {
                return None;
            }
        }
        match b.get(i) {
            None if !self.eof => {
                self.need(s);
                return Some(b.len());
            }
            Some(&c) if is_word(c) => return None,
            _ => {}
        }
        if validate::iban_mod97(&b[s..i]) {
            self.hit(s, i, Det::Iban);
            return Some(i);
        }
        None
    }

    /// Numbers made of digit groups: cards, SSNs, phone numbers, IPv4.
    #[inline(never)]
    fn numeric(&mut self, p: usize) -> Option<usize> {
        let b = self.buf;
        let len = b.len();
        let prev = if p > 0 { b[p - 1] } else { b' ' };
        let prev2 = if p > 1 { b[p - 2] } else { b' ' };
        // Inside a longer number (`3.14`, `1/2`): not a start.
        if matches!(prev, b'.' | b'/') && prev2.is_ascii_digit() {
            return None;
        }
        let plus = prev == b'+' && !is_word(prev2);
        let paren = prev == b'(';
        let start = if plus || paren { p - 1 } else { p };
        let mut g = Groups::default();
        let mut i = p;
        loop {
            let gs = i;
            i = digits_end(b, i, len.min(i + 20));
            g.push(gs, i);
            if i == len {
                if !self.eof {
                    self.need(start);
                    return Some(len);
                }
                break;
            }
            if g.n == MAX_GROUPS {
                break;
            }
            let ss = i;
            while i < len && i - ss < 2 && matches!(b[i], b' ' | b'-' | b'.' | b'(' | b')' | b'/') {
                i += 1;
            }
            if i == ss {
                break;
            }
            // Two-character separators only around an area code: `) `, ` (`, `)-`.
            if i - ss == 2 && !matches!(&b[ss..i], b") " | b" (" | b")-") {
                i = ss + 1;
                if b[ss] == b' ' && b[i] == b' ' {
                    break;
                }
            }
            if i == len {
                if !self.eof {
                    self.need(start);
                    return Some(len);
                }
                break;
            }
            if !b[i].is_ascii_digit() {
                break;
            }
            g.sep[g.n] = sep_code(&b[ss..i]);
        }
        let on = |d: Det| self.plan.is_on(d);
        // After `(` the digits may still be a card or an SSN: a row value's
        // text `(4111111111111111,x)`, a call `f(123-45-6789)`. Only a phone
        // number takes the parenthesis (an area code) into its match.
        let m = (if on(Det::Ssn) && !plus {
            self.ssn(&g)
        } else {
            None
        })
        .or_else(|| {
            if on(Det::Card) && !plus {
                self.card(&g)
            } else {
                None
            }
        })
        .or_else(|| {
            if on(Det::Ipv4) && !plus {
                self.ipv4(&g, p)
            } else {
                None
            }
        })
        .or_else(|| {
            if on(Det::Phone) {
                self.phone(&g, plus, paren)
            } else {
                None
            }
        });
        match m {
            Some((det, end)) => {
                self.hit(if det == Det::Phone { start } else { p }, end, det);
                Some(end)
            }
            None => None,
        }
    }

    fn sep(&self, g: &Groups, k: usize) -> Sep {
        g.sep[k]
    }

    /// Whether a shape made of the first `k` groups ends cleanly: not
    /// continued by another group joined with `own` separators, not followed
    /// by a word byte, `.5` or `-beta`.
    fn ends_clean(&self, g: &Groups, k: usize, own: Sep) -> bool {
        if k < g.n {
            // More digits follow: fine after a different separator (a CIDR
            // `/24`, a range `-10.0.0.9`, a space), not when the shape's own
            // separator or a decimal point continues the number.
            let s = self.sep(g, k);
            return s != own && s != DOT;
        }
        let end = g.end(k - 1);
        let b = self.buf;
        match b.get(end) {
            None => true,
            Some(&c) if is_word(c) => false,
            Some(b'.' | b'-' | b',') => {
                !b.get(end + 1).is_some_and(|&c| is_alnum(c)) || b[end] == b','
            }
            Some(_) => true,
        }
    }

    /// `4.111111111111111e+15`: a card number kept as a float, as float8's
    /// text and JSON show one: the digits with the exponent's zeros are the
    /// number (every 13- to 16-digit card is exact in a double). Returns the
    /// end of the exponent. (A stream cut inside one holds it back already:
    /// digits, `.`, `e` and `+` are the bytes of a word that may still
    /// become an e-mail address, [`Scanner::tails`].)
    fn float_card(&self, g: &Groups) -> Option<usize> {
        let b = self.buf;
        if g.n != 2 || g.len(0) != 1 || self.sep(g, 1) != DOT {
            return None;
        }
        let e = g.end(1);
        if !matches!(b.get(e), Some(b'e' | b'E')) || b.get(e + 1) != Some(&b'+') {
            return None;
        }
        let exp_end = digits_end(b, e + 2, b.len().min(e + 4));
        let exp: usize = std::str::from_utf8(&b[e + 2..exp_end]).ok()?.parse().ok()?;
        let frac = &b[g.start(1)..g.end(1)];
        if !(12..=18).contains(&exp)
            || frac.len() > exp
            || b.get(exp_end).is_some_and(|&c| is_word(c) || c == b'.')
        {
            return None;
        }
        let mut digits = Vec::with_capacity(exp + 1);
        digits.push(b[g.start(0)]);
        digits.extend_from_slice(frac);
        digits.resize(exp + 1, b'0');
        ((b'2'..=b'6').contains(&digits[0]) && validate::luhn(&digits)).then_some(exp_end)
    }

    /// `DE89 3704 0044 ...`: a space-grouped number that started before this
    /// group (an IBAN, a longer reference) is not a card or a phone number.
    fn space_continued(&self, g: &Groups) -> bool {
        let p = g.start(0);
        p >= 2 && self.buf[p - 1] == b' ' && self.buf[p - 2].is_ascii_digit()
    }

    #[inline(never)]
    fn ssn(&self, g: &Groups) -> Option<(Det, usize)> {
        if g.n < 3 || g.len(0) != 3 || g.len(1) != 2 || g.len(2) != 4 {
            return None;
        }
        let s1 = self.sep(g, 1);
        if s1 != self.sep(g, 2)
            || !(s1 == DASH || s1 == SP)
            || (s1 == SP && self.space_continued(g))
            || !self.ends_clean(g, 3, s1)
        {
            return None;
        }
        let d = |k: usize| &self.buf[g.start(k)..g.end(k)];
        validate::ssn_valid(d(0), d(1), d(2)).then(|| (Det::Ssn, g.end(2)))
    }

    #[inline(never)]
    fn card(&self, g: &Groups) -> Option<(Det, usize)> {
        let b = self.buf;
        let first = b[g.start(0)];
        if !(b'2'..=b'6').contains(&first) {
            return None;
        }
        let check = |k: usize, own: Sep| -> Option<(Det, usize)> {
            let end = g.end(k - 1);
            (self.ends_clean(g, k, own) && validate::luhn(&b[g.start(0)..end]))
                .then_some((Det::Card, end))
        };
        if (13..=19).contains(&g.len(0)) {
            // `4111111111111111.0`, `….0000`: a card kept as a decimal or
            // float number (JSON numbers, numeric arithmetic).
            if g.n >= 2
                && self.sep(g, 1) == DOT
                && b[g.start(1)..g.end(1)].iter().all(|&c| c == b'0')
                && self.ends_clean(g, 2, DOT)
                && validate::luhn(&b[g.start(0)..g.end(0)])
            {
                return Some((Det::Card, g.end(1)));
            }
            return check(1, NONE);
        }
        if let Some(end) = self.float_card(g) {
            return Some((Det::Card, end));
        }
        if g.n < 2 || g.len(0) != 4 {
            return None;
        }
        let s1 = self.sep(g, 1);
        if !(s1 == SP || s1 == DASH) {
            return None;
        }
        if s1 == SP && self.space_continued(g) {
            return None;
        }
        let mut total = 4;
        let mut best = None;
        for k in 2..=g.n {
            if self.sep(g, k - 1) != s1 {
                break;
            }
            let l = g.len(k - 1);
            total += l;
            if total > 19 {
                break;
            }
            // 4-4-4-4(-1..3), 4-4-4-1..4 and Amex/Diners 4-6-5 / 4-6-4.
            let amex = k == 3 && g.len(1) == 6 && (l == 5 || l == 4);
            let fours = (1..k - 1).all(|j| g.len(j) == 4) && (1..=4).contains(&l);
            if total >= 13
                && (amex || fours)
                && let Some(m) = check(k, s1)
            {
                best = Some(m);
            }
            if l != 4 && !(k == 2 && l == 6) {
                break;
            }
        }
        best
    }

    #[inline(never)]
    fn ipv4(&self, g: &Groups, p: usize) -> Option<(Det, usize)> {
        if g.n < 4 || (1..4).any(|k| self.sep(g, k) != DOT) || !self.ends_clean(g, 4, DOT) {
            return None;
        }
        for k in 0..4 {
            let d = &self.buf[g.start(k)..g.end(k)];
            if d.len() > 3 || (d.len() > 1 && d[0] == b'0') {
                return None;
            }
            let v = d.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
            if v > 255 {
                return None;
            }
        }
        // "version 10.0.0.1", "v1.2.3.4", "ver: 1.2.3.4" are versions.
        let b = self.buf;
        let mut q = p;
        while q > 0 && p - q < 4 && matches!(b[q - 1], b' ' | b':' | b'=' | b'\t') {
            q -= 1;
        }
        let mut w = q;
        while w > 0 && q - w < 16 && b[w - 1].is_ascii_alphabetic() {
            w -= 1;
        }
        let word = &b[w..q];
        let is = |x: &[u8]| word.eq_ignore_ascii_case(x);
        let versionish = word.len() >= 7 && word[word.len() - 7..].eq_ignore_ascii_case(b"version");
        if versionish || is(b"ver") || is(b"v") || is(b"release") || is(b"build") {
            return None;
        }
        Some((Det::Ipv4, g.end(3)))
    }

    #[inline(never)]
    fn phone(&self, g: &Groups, plus: bool, paren: bool) -> Option<(Det, usize)> {
        let b = self.buf;
        let digit0 = |k: usize| b[g.start(k)];
        let nanp_ok = |a: usize, x: usize| {
            (b'2'..=b'9').contains(&digit0(a)) && (b'2'..=b'9').contains(&digit0(x))
        };
        if plus {
            // E.164: up to 15 digits, any of the usual separators.
            if digit0(0) == b'0' {
                return None;
            }
            let mut total = 0;
            let mut best = None;
            for k in 1..=g.n {
                if k > 1 {
                    let s = self.sep(g, k - 1);
                    let ok: [Sep; 8] = [SP, DASH, DOT, SP_LP, RP_SP, RP, RP_DASH, LP];
                    if !ok.contains(&s) {
                        break;
                    }
                }
                total += g.len(k - 1);
                if total > 15 {
                    break;
                }
                if total >= 8 && self.ends_clean(g, k, NONE) {
                    best = Some((Det::Phone, g.end(k - 1)));
                }
            }
            return best;
        }
        if paren {
            // (555) 123-4567
            if g.n >= 3 && g.len(0) == 3 && g.len(1) == 3 && g.len(2) == 4 {
                let s1 = self.sep(g, 1);
                let s2 = self.sep(g, 2);
                if (s1 == RP_SP || s1 == RP || s1 == RP_DASH)
                    && (s2 == DASH || s2 == SP || s2 == DOT)
                    && nanp_ok(0, 1)
                    && self.ends_clean(g, 3, s2)
                {
                    return Some((Det::Phone, g.end(2)));
                }
            }
            return None;
        }
        if g.n < 2 {
            return None;
        }
        let s1 = self.sep(g, 1);
        if !(s1 == DASH || s1 == DOT || s1 == SP) || (s1 == SP && self.space_continued(g)) {
            return None;
        }
        let same = |k: usize| (1..k).all(|j| self.sep(g, j) == s1);
        // 555-123-4567, 1-555-123-4567
        if g.n >= 3
            && g.len(0) == 3
            && g.len(1) == 3
            && g.len(2) == 4
            && same(3)
            && nanp_ok(0, 1)
            && self.ends_clean(g, 3, s1)
        {
            return Some((Det::Phone, g.end(2)));
        }
        if g.n >= 4
            && g.len(0) == 1
            && digit0(0) == b'1'
            && g.len(1) == 3
            && g.len(2) == 3
            && g.len(3) == 4
            && same(4)
            && nanp_ok(1, 2)
            && self.ends_clean(g, 4, s1)
        {
            return Some((Det::Phone, g.end(3)));
        }
        // National numbers with a trunk 0: 020 7946 0958, 06 12 34 56 78.
        // (Not `00`, the international prefix, and not the 3-2-4 SSN shape.)
        let ssn_shape = g.n >= 3 && g.len(0) == 3 && g.len(1) == 2 && g.len(2) == 4 && s1 == DASH;
        if digit0(0) == b'0'
            && b[g.start(0) + 1] != b'0'
            && (2..=5).contains(&g.len(0))
            && !ssn_shape
        {
            let mut total = 0;
            for k in 1..=g.n.min(5) {
                if !same(k) {
                    break;
                }
                let l = g.len(k - 1);
                if k > 1 && !(2..=4).contains(&l) && !(k == 2 && l <= 8) {
                    break;
                }
                total += l;
                if (k == g.n.min(5) || k == g.n)
                    && k >= 2
                    && (9..=12).contains(&total)
                    && self.ends_clean(g, k, s1)
                {
                    return Some((Det::Phone, g.end(k - 1)));
                }
            }
        }
        None
    }

    fn custom(&mut self, idx: usize, rule: &CustomDet, cache: Option<&mut Cache>) {
        let b = self.buf;
        let mut pos = self.from;
        while pos <= b.len() {
            let Some(m) = rule.re.find_at(b, pos) else {
                break;
            };
            if m.end() > m.start() {
                self.hits.push(Hit {
                    start: m.start(),
                    end: m.end(),
                    label: Label::Custom(u16::try_from(idx).unwrap_or(u16::MAX)),
                    origin: m.start(),
                });
                pos = m.end();
            } else {
                pos = m.end() + 1;
            }
        }
        if self.eof {
            return;
        }
        // Could a match start in the tail and continue into future bytes?
        let lo = self.from.max(b.len().saturating_sub(CUSTOM_WINDOW));
        let (Some(dfa), Some(cache)) = (rule.dfa.as_ref(), cache) else {
            // No lazy DFA for this pattern: hold the whole window.
            self.need(lo);
            return;
        };
        for p in lo..b.len() {
            if viable(dfa, cache, b, p) {
                self.need(p);
                return;
            }
        }
    }

    /// Hold-back for candidates whose trigger has not fully arrived.
    fn tails(&mut self) {
        let b = self.buf;
        let len = b.len();
        // A word at the end may be the local part of an address still coming.
        if (self.plan.is_on(Det::Email) || self.plan.numeric)
            && let Some(s) = local_start(b, len)
        {
            self.need(s);
        }
        // So may one before the start of an at sign written as an HTML
        // character reference (`bob&#6`); `%40` is made of local bytes.
        if self.plan.is_on(Det::Email)
            && let Some(k) =
                longest_prefix_suffix(b, [&b"&#64;"[..], b"&#x40;", b"&#X40;"].into_iter())
            && let Some(s) = local_start(b, len - k)
        {
            self.need(s);
        }
        // `(` may open a phone number.
        if self.plan.is_on(Det::Phone) && b.last() == Some(&b'(') {
            self.need(len - 1);
        }
        // A trigger or dictionary entry cut in the middle.
        if let Some(t) = &self.plan.triggers
            && let Some(k) = longest_prefix_suffix(b, t.patterns.iter().copied())
        {
            self.need(len - k);
        }
        if let Some(d) = &self.plan.dict
            && let Some(k) = longest_prefix_suffix(b, d.patterns.iter().map(Vec::as_slice))
        {
            self.need(len - k);
        }
    }
}

/// Whether an anchored match of `dfa` starting at `p` is still undecided at
/// the end of `b` (its state is neither dead nor past a failure). Errors
/// (a byte the lazy DFA gives up on) count as undecided, to stay safe.
fn viable(dfa: &regex_automata::hybrid::dfa::DFA, cache: &mut Cache, b: &[u8], p: usize) -> bool {
    let input = Input::new(b).range(p..).anchored(Anchored::Yes);
    let Ok(mut sid) = dfa.start_state_forward(cache, &input) else {
        return true;
    };
    for &c in &b[p..] {
        match dfa.next_state(cache, sid, c) {
            Ok(next) => sid = next,
            Err(_) => return true,
        }
        if sid.is_tagged() {
            if sid.is_dead() {
                return false;
            }
            if sid.is_quit() {
                return true;
            }
        }
    }
    true
}

/// The length of the longest proper prefix of any pattern that `b` ends with.
fn longest_prefix_suffix<'p>(b: &[u8], patterns: impl Iterator<Item = &'p [u8]>) -> Option<usize> {
    let last = *b.last()?;
    let mut best = 0;
    for pat in patterns {
        let max = (pat.len().saturating_sub(1)).min(b.len());
        for k in (best + 1..=max).rev() {
            if pat[k - 1] == last && b.ends_with(&pat[..k]) {
                best = k;
                break;
            }
        }
    }
    (best > 0).then_some(best)
}

const MAX_GROUPS: usize = 8;

/// A separator of one or two bytes between digit groups, packed in an
/// integer so that comparing two is one instruction.
type Sep = u16;

const fn sep2(a: u8, b: u8) -> Sep {
    (a as u16) | ((b as u16) << 8)
}
const NONE: Sep = 0;
const SP: Sep = sep2(b' ', 0);
const DASH: Sep = sep2(b'-', 0);
const DOT: Sep = sep2(b'.', 0);
const LP: Sep = sep2(b'(', 0);
const RP: Sep = sep2(b')', 0);
const RP_SP: Sep = sep2(b')', b' ');
const SP_LP: Sep = sep2(b' ', b'(');
const RP_DASH: Sep = sep2(b')', b'-');

fn sep_code(s: &[u8]) -> Sep {
    match *s {
        [a] => sep2(a, 0),
        [a, b] => sep2(a, b),
        _ => NONE,
    }
}

/// Digit groups of a number and the separators between them.
#[derive(Default)]
struct Groups {
    g: [(usize, usize); MAX_GROUPS],
    /// `sep[k]`: the separator before group `k` (k >= 1).
    sep: [Sep; MAX_GROUPS],
    n: usize,
}

impl Groups {
    fn push(&mut self, s: usize, e: usize) {
        if self.n < MAX_GROUPS {
            self.g[self.n] = (s, e);
            self.n += 1;
        }
    }
    fn start(&self, k: usize) -> usize {
        self.g[k].0
    }
    fn end(&self, k: usize) -> usize {
        self.g[k].1
    }
    fn len(&self, k: usize) -> usize {
        self.g[k].1 - self.g[k].0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Password,
    Token,
    Auth,
    Bearer,
}

/// Whether a key name (`DB_PASSWORD`, `clientSecret`, `x-api-key`) names a
/// secret, and which kind.
pub(crate) fn key_kind(ident: &[u8]) -> Option<KeyKind> {
    let mut norm = [0u8; 96];
    let mut n = 0;
    for &c in ident {
        if matches!(c, b'_' | b'-' | b'.') {
            continue;
        }
        if n == norm.len() {
            return None;
        }
        norm[n] = c.to_ascii_lowercase();
        n += 1;
    }
    let k = &norm[..n];
    // The shell's working directory, not a password.
    if k == b"pwd" || k == b"oldpwd" {
        return None;
    }
    let password: [&[u8]; 5] = [b"password", b"passwd", b"passphrase", b"pwd", b"pass"];
    let token: [&[u8]; 8] = [
        b"secret",
        b"secretkey",
        b"token",
        b"apikey",
        b"accesskey",
        b"privatekey",
        b"credential",
        b"credentials",
    ];
    if password.iter().any(|w| k.ends_with(w)) {
        Some(KeyKind::Password)
    } else if token.iter().any(|w| k.ends_with(w)) {
        Some(KeyKind::Token)
    } else if k.ends_with(b"authorization") {
        Some(KeyKind::Auth)
    } else if k == b"bearer" {
        Some(KeyKind::Bearer)
    } else {
        None
    }
}

/// Which detector, if any, masks `value` found under the key `ident`.
pub(crate) fn secret_det(plan: &Plan, ident: &[u8], kind: KeyKind, value: &[u8]) -> Option<Det> {
    if is_placeholder(value) {
        return None;
    }
    let ok = match kind {
        KeyKind::Password => value.len() >= 3,
        _ => value.len() >= 8 && validate::entropy(value) >= 3.0,
    };
    if !ok {
        return None;
    }
    let aws = value.len() == 40
        && value.iter().all(|&c| is_b64(c))
        && contains_ci(ident, b"secret")
        && (contains_ci(ident, b"access") || contains_ci(ident, b"aws"));
    if aws && plan.is_on(Det::AwsSecretKey) {
        Some(Det::AwsSecretKey)
    } else if plan.is_on(Det::GenericSecret) {
        Some(Det::GenericSecret)
    } else {
        None
    }
}

/// The detector for a whole value whose field (a column, a JSON key) is
/// named like a secret: `password`, `users.api_key`, `clientSecret`.
pub(crate) fn named_secret(plan: &Plan, field: &[u8], value: &[u8]) -> Option<Det> {
    let kind = key_kind(field)?;
    secret_det(plan, field, kind, value)
}

/// Values that stand for a secret rather than being one: `null`, `********`,
/// `${DB_PASSWORD}`, `<redacted>`, `{{ .Values.pw }}`, `%s`.
pub(crate) fn is_placeholder(v: &[u8]) -> bool {
    if v.is_empty() {
        return true;
    }
    let words: [&[u8]; 13] = [
        b"null",
        b"none",
        b"nil",
        b"true",
        b"false",
        b"undefined",
        b"empty",
        b"redacted",
        b"required",
        b"optional",
        b"string",
        b"hidden",
        b"masked",
    ];
    if words.iter().any(|w| v.eq_ignore_ascii_case(w)) {
        return true;
    }
    if v.iter()
        .all(|c| matches!(c, b'*' | b'x' | b'X' | b'.' | b'#' | b'-' | b'?'))
    {
        return true;
    }
    matches!(v[0], b'$' | b'%' | b'<' | b'{' | b'[') || v.starts_with(b"process.env")
}

fn contains_ci(h: &[u8], needle: &[u8]) -> bool {
    h.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Mixed case and digits (or `+`/`/`): what generated keys look like and
/// words, hex digests and base64 of text mostly do not.
fn looks_random(t: &[u8]) -> bool {
    let upper = t.iter().any(u8::is_ascii_uppercase);
    let lower = t.iter().any(u8::is_ascii_lowercase);
    let other = t
        .iter()
        .any(|c| c.is_ascii_digit() || *c == b'+' || *c == b'/');
    upper && lower && other && validate::entropy(t) >= 4.0
}
