//! Labeled evaluation of the default masking profile.
//!
//! Generates 12,000 records (log lines, CSV rows, JSON objects, prose) with a
//! fixed seed, mixing real-looking PII and secrets with look-alikes that must
//! stay visible (a 16-digit order id failing Luhn, an SSN in a never-issued
//! range, version strings, IBANs with a bad checksum, git hashes, ...), masks
//! each record with `Masker::mask_str` and prints precision and recall per
//! entity type, then how often each kind of look-alike was wrongly masked.
//!
//! `cargo run --release -p airlock-benches --bin mask_eval`
//!
//! Scoring, per record and type: a planted entity counts as found when its
//! text is gone from the output and the masker counted a detection of its
//! type; detections of a type beyond the found entities are false positives.

use std::collections::BTreeMap;

use airlock_core::mask::{MaskConfig, MaskEngine};
use airlock_core::{Identity, MaskCounts};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fake::Fake;
use fake::faker::internet::en::{FreeEmail, SafeEmail, Username};
use fake::faker::lorem::en::Words;
use fake::faker::name::en::{FirstName, LastName};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const RECORDS: usize = 12_000;
const HELD: &str = "Pg-Adm1n-P4ss!2024";

/// One piece of a record.
enum Piece {
    /// Filler.
    Text(String),
    /// A planted entity in a format the detectors claim, and the detector
    /// that should count it.
    Entity(&'static str, String),
    /// A real entity in a format the detectors do not claim (a format label,
    /// the detector that would count it): scored apart, recall only.
    OutOfScope(&'static str, &'static str, String),
    /// A look-alike that must stay visible.
    LookAlike(&'static str, String),
    /// Indistinguishable from an entity by construction (a 16-digit number
    /// that passes Luhn): reported, not scored.
    Ambiguous(&'static str, &'static str, String),
}

struct Gen {
    rng: StdRng,
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Gen {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.random_range(lo..hi)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.rng.random_range(0..xs.len())]
    }
    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| char::from(*self.pick(alphabet))).collect()
    }
    fn digits(&mut self, n: usize) -> String {
        self.chars(b"0123456789", n)
    }
    fn words(&mut self, lo: usize, hi: usize) -> String {
        let w: Vec<String> = Words(lo..hi).fake_with_rng(&mut self.rng);
        w.join(" ")
    }

    // ---- entities ----

    fn email(&mut self) -> String {
        match self.range(0, 3) {
            0 => SafeEmail().fake_with_rng(&mut self.rng),
            1 => FreeEmail().fake_with_rng(&mut self.rng),
            _ => {
                let f: String = FirstName().fake_with_rng(&mut self.rng);
                let l: String = LastName().fake_with_rng(&mut self.rng);
                let d = self.pick(&["corp.example.com", "mail.example.co.uk", "example.org"]);
                format!(
                    "{}.{}+{}@{d}",
                    f.to_lowercase(),
                    l.to_lowercase(),
                    self.range(1, 99)
                )
            }
        }
    }

    fn card(&mut self) -> String {
        let (prefix, len) = *self.pick(&[
            ("4", 16),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("4", 19),
        ]);
        let body = format!("{prefix}{}", self.digits(len - prefix.len() - 1));
        let full = format!("{body}{}", luhn_digit(&body));
        match (self.range(0, 3), len) {
            (0, _) => full,
            (_, 15) => format!("{} {} {}", &full[..4], &full[4..10], &full[10..]),
            (n, _) => {
                let sep = if n == 1 { " " } else { "-" };
                full.as_bytes()
                    .chunks(4)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(sep)
            }
        }
    }

    fn ssn(&mut self) -> String {
        let area = loop {
            let a = self.range(1, 900);
            if a != 666 {
                break a;
            }
        };
        format!(
            "{area:03}-{:02}-{:04}",
            self.range(1, 100),
            self.range(1, 10000)
        )
    }

    fn phone(&mut self) -> String {
        let area = self.range(201, 990);
        let exch = self.range(200, 999);
        let line = self.range(0, 10000);
        match self.range(0, 7) {
            0 => format!("({area}) {exch}-{line:04}"),
            1 => format!("{area}-{exch}-{line:04}"),
            2 => format!("{area}.{exch}.{line:04}"),
            3 => format!("+1 {area} {exch} {line:04}"),
            4 => format!("+1{area}{exch}{line:04}"),
            5 => format!("+44 20 {} {}", self.digits(4), self.digits(4)),
            _ => format!("+49 30 {}", self.digits(8)),
        }
    }

    fn iban(&mut self) -> String {
        let (cc, bban) = match self.range(0, 4) {
            0 => ("DE", self.digits(18)),
            1 => (
                "GB",
                format!(
                    "{}{}",
                    self.chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                    self.digits(14)
                ),
            ),
            2 => ("FR", self.digits(23)),
            _ => (
                "NL",
                format!(
                    "{}{}",
                    self.chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4),
                    self.digits(10)
                ),
            ),
        };
        let check = 98 - mod97(&format!("{bban}{cc}00"));
        let iban = format!("{cc}{check:02}{bban}");
        if self.chance(0.5) {
            group4(&iban)
        } else {
            iban
        }
    }

    fn ipv4(&mut self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.range(1, 224),
            self.range(0, 256),
            self.range(0, 256),
            self.range(1, 255)
        )
    }

    fn ipv6(&mut self) -> String {
        let mut seg = [0u16; 8];
        seg[0] = 0x2001;
        seg[1] = 0x0db8;
        for s in seg.iter_mut().skip(2) {
            *s = if self.chance(0.3) {
                0
            } else {
                self.range(1, 0xffff) as u16
            };
        }
        std::net::Ipv6Addr::from(seg).to_string()
    }

    fn jwt(&mut self) -> String {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let sub: String = Username().fake_with_rng(&mut self.rng);
        let payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{sub}","exp":{}}}"#,
            self.range(1_700_000_000, 1_800_000_000)
        ));
        let sig = self.chars(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            43,
        );
        format!("{header}.{payload}.{sig}")
    }

    fn aws_key_id(&mut self) -> String {
        format!(
            "{}{}",
            self.pick(&["AKIA", "ASIA"]),
            self.chars(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        )
    }

    fn aws_secret(&mut self) -> String {
        loop {
            let s = self.chars(B64, 40);
            let (u, l, d) = (
                s.bytes().any(|c| c.is_ascii_uppercase()),
                s.bytes().any(|c| c.is_ascii_lowercase()),
                s.bytes().any(|c| c.is_ascii_digit()),
            );
            if u && l && d {
                return s;
            }
        }
    }

    fn pem(&mut self) -> String {
        let kind = *self.pick(&[
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
        ]);
        let mut body = String::new();
        for _ in 0..self.range(3, 12) {
            body.push_str(&self.chars(B64, 64));
            body.push('\n');
        }
        format!("-----BEGIN {kind}-----\n{body}-----END {kind}-----")
    }

    fn secret_value(&mut self) -> String {
        let n = self.range(16, 40) as usize;
        self.chars(ALNUM, n)
    }

    // ---- look-alikes ----

    fn look_alike(&mut self) -> Piece {
        if self.chance(1.0 / 17.0) {
            // Ambiguous by nature: a 16-digit number that happens to pass
            // Luhn (one in ten does) looks exactly like a card.
            let body = format!("4{}", self.digits(14));
            return Piece::Ambiguous(
                "order id (Luhn passes)",
                "card",
                format!("{body}{}", luhn_digit(&body)),
            );
        }
        let (kind, text) = self.look_alike_text();
        Piece::LookAlike(kind, text)
    }

    fn look_alike_text(&mut self) -> (&'static str, String) {
        match self.range(0, 16) {
            0 => {
                // A 16-digit order id that fails Luhn.
                let body = format!("4{}", self.digits(14));
                let bad = (luhn_digit(&body) + 1 + self.range(0, 8) as u32) % 10;
                ("order id (Luhn fails)", format!("{body}{bad}"))
            }
            1 => {
                let area = *self.pick(&["000", "666", "900", "987"]);
                (
                    "SSN, invalid range",
                    format!(
                        "{area}-{:02}-{:04}",
                        self.range(1, 100),
                        self.range(1, 10000)
                    ),
                )
            }
            2 => (
                "SSN, group 00",
                format!("{}-00-{:04}", self.range(100, 600), self.range(1, 10000)),
            ),
            3 => {
                let v = match self.range(0, 4) {
                    0 => format!(
                        "v{}.{}.{}.{}",
                        self.range(0, 20),
                        self.range(0, 50),
                        self.range(0, 99),
                        self.range(0, 99)
                    ),
                    1 => format!(
                        "{}.{}.{}.{}-beta",
                        self.range(0, 20),
                        self.range(0, 50),
                        self.range(0, 99),
                        self.range(0, 99)
                    ),
                    2 => format!("version 10.0.{}", self.range(10000, 30000)),
                    _ => format!(
                        "release {}.{}.{}",
                        self.range(0, 20),
                        self.range(0, 50),
                        self.range(0, 99)
                    ),
                };
                ("version string", v)
            }
            4 => {
                let good = self.iban().replace(' ', "");
                let (head, tail) = good.split_at(good.len() - 1);
                let last = (tail.as_bytes()[0] - b'0' + 1) % 10;
                ("IBAN, bad checksum", format!("{head}{last}"))
            }
            5 => (
                "timestamp",
                format!(
                    "2024-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    self.range(1, 13),
                    self.range(1, 29),
                    self.range(0, 24),
                    self.range(0, 60),
                    self.range(0, 60),
                    self.range(0, 1000)
                ),
            ),
            6 => ("git sha", self.chars(b"0123456789abcdef", 40)),
            7 => {
                let h = self.chars(b"0123456789abcdef", 32);
                (
                    "uuid",
                    format!(
                        "{}-{}-{}-{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    ),
                )
            }
            8 => (
                "price / decimal",
                format!(
                    "${}.{:02} and {}.{}",
                    self.range(1, 99999),
                    self.range(0, 100),
                    self.range(0, 100),
                    self.digits(5)
                ),
            ),
            9 => (
                "host-local address",
                format!(
                    "{}@localhost",
                    Username().fake_with_rng::<String, _>(&mut self.rng)
                ),
            ),
            10 => {
                let v = *self.pick(&[
                    "password: ********",
                    "token=${API_TOKEN}",
                    "secret: true",
                    "password=<redacted>",
                    "api_key: null",
                    "max_tokens: 4096",
                ]);
                ("placeholder secret", v.to_string())
            }
            11 => (
                "code path",
                (*self.pick(&["std::io::Read", "crate::mask::Masker", "a::b::c"])).to_string(),
            ),
            12 => (
                "unix time / count",
                format!("{}", self.range(1_600_000_000, 1_800_000_000)),
            ),
            13 => (
                "phone, invalid area code",
                format!(
                    "{}-{}-{:04}",
                    self.range(100, 199),
                    self.range(200, 999),
                    self.range(0, 10000)
                ),
            ),
            14 => (
                "mac address",
                (0..6)
                    .map(|_| format!("{:02x}", self.range(0, 256)))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => (
                "short token prefix",
                (*self.pick(&["AKIA1234", "ghp_short", "sk_live_x", "xoxb-1"])).to_string(),
            ),
        }
    }

    // ---- records ----

    fn entity(&mut self) -> Vec<Piece> {
        use Piece::*;
        match self.range(0, 25) {
            0 => vec![Entity("email", self.email())],
            1 => vec![Text("card ".into()), Entity("card", self.card())],
            2 => vec![Text("ssn ".into()), Entity("ssn", self.ssn())],
            3 => vec![Text("tel ".into()), Entity("phone", self.phone())],
            4 => vec![Text("iban ".into()), Entity("iban", self.iban())],
            5 => vec![Text("from ".into()), Entity("ipv4", self.ipv4())],
            6 => vec![Text("addr ".into()), Entity("ipv6", self.ipv6())],
            7 => vec![
                Text("Authorization: Bearer ".into()),
                Entity("jwt", self.jwt()),
            ],
            8 => vec![
                Text("key ".into()),
                Entity("aws_access_key", self.aws_key_id()),
            ],
            9 => vec![
                Text("aws_secret_access_key = ".into()),
                Entity("aws_secret_key", self.aws_secret()),
            ],
            10 => vec![
                Entity("aws_access_key", self.aws_key_id()),
                Text(",".into()),
                Entity("aws_secret_key", self.aws_secret()),
            ],
            11 => vec![
                Text("GITHUB_TOKEN=".into()),
                Entity("github_token", format!("ghp_{}", self.chars(ALNUM, 36))),
            ],
            12 => {
                let t = format!(
                    "xox{}-{}-{}-{}",
                    self.pick(&["b", "p"]),
                    self.digits(12),
                    self.digits(12),
                    self.chars(ALNUM, 24)
                );
                vec![Text("slack ".into()), Entity("slack_token", t)]
            }
            13 => vec![
                Text("stripe ".into()),
                Entity(
                    "stripe_key",
                    format!(
                        "{}_{}",
                        self.pick(&["sk_live", "rk_live", "sk_test"]),
                        self.chars(ALNUM, 24)
                    ),
                ),
            ],
            14 => vec![
                Text("maps key ".into()),
                Entity(
                    "gcp_api_key",
                    format!(
                        "AIza{}",
                        self.chars(
                            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                            35
                        )
                    ),
                ),
            ],
            15 => vec![
                Text("\n".into()),
                Entity("private_key", self.pem()),
                Text("\n".into()),
            ],
            16 => {
                let pem = self.pem().replace('\n', "\\n");
                vec![
                    Text(format!(
                        r#"{{"type": "service_account", "project_id": "p-{}", "private_key": ""#,
                        self.range(1, 999)
                    )),
                    Entity("gcp_private_key", pem),
                    Text("\"}".into()),
                ]
            }
            17 => {
                let (key, close) = *self.pick(&[
                    ("password=", ""),
                    ("DB_PASSWORD: ", ""),
                    ("\"client_secret\": \"", "\""),
                    ("api_key=", ""),
                    ("token: ", ""),
                ]);
                let v = self.secret_value();
                vec![
                    Text(key.into()),
                    Entity("generic_secret", v),
                    Text(close.into()),
                ]
            }
            18 => {
                let user: String = Username().fake_with_rng(&mut self.rng);
                vec![
                    Text(format!("postgres://{user}:")),
                    Entity("url_password", self.secret_value()),
                    Text(format!("@db{}.internal:5432/app", self.range(1, 9))),
                ]
            }
            19 => vec![Text("pw ".into()), Entity("held_secret", HELD.to_string())],
            // Formats seen in the wild that the detectors do not claim:
            // they measure what is missed, not what is supported.
            20 => vec![
                Text("SSN ".into()),
                OutOfScope(
                    "ssn without dashes",
                    "ssn",
                    format!(
                        "{:03}{:02}{:04}",
                        self.range(1, 600),
                        self.range(1, 100),
                        self.range(1, 10000)
                    ),
                ),
            ],
            21 => vec![
                Text("ext. ".into()),
                OutOfScope(
                    "7-digit local phone",
                    "phone",
                    format!("{}-{:04}", self.range(200, 999), self.range(0, 10000)),
                ),
            ],
            22 => vec![
                Text("the key is ".into()),
                OutOfScope("unlabeled aws secret", "aws_secret_key", self.aws_secret()),
            ],
            23 => vec![
                Text("Contact: ".into()),
                Entity("email", self.email().to_uppercase()),
            ],
            _ => vec![
                Text("call ".into()),
                OutOfScope(
                    "phone +44 (0)20 ...",
                    "phone",
                    format!("+44 (0)20 {} {}", self.digits(4), self.digits(4)),
                ),
            ],
        }
    }

    fn record(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let style = self.range(0, 4);
        let n_ent = self.range(0, 4);
        let n_look = self.range(0, 3);
        let mut slots: Vec<bool> = (0..n_ent)
            .map(|_| true)
            .chain((0..n_look).map(|_| false))
            .collect();
        // Shuffle the order of entities and look-alikes.
        for i in (1..slots.len()).rev() {
            let j = self.range(0, i as u64 + 1) as usize;
            slots.swap(i, j);
        }
        let lead = match style {
            0 => format!(
                "2024-03-{:02}T10:{:02}:00Z INFO {}: ",
                self.range(1, 29),
                self.range(0, 60),
                self.words(1, 3)
            ),
            1 => format!("{},{},", self.range(1, 100_000), self.words(1, 2)),
            2 => "{\"event\": \"".to_string(),
            _ => format!("{} ", self.words(2, 6)),
        };
        pieces.push(Piece::Text(lead));
        for (k, is_entity) in slots.into_iter().enumerate() {
            if k > 0 {
                let sep = match style {
                    1 => ",".to_string(),
                    2 => "\", \"f\": \"".to_string(),
                    _ => format!(" {} ", self.words(1, 4)),
                };
                pieces.push(Piece::Text(sep));
            }
            if is_entity {
                pieces.extend(self.entity());
            } else {
                let piece = self.look_alike();
                pieces.push(piece);
            }
        }
        let tail = match style {
            0 => format!(" took {}ms", self.range(1, 900)),
            1 => format!(",{}", self.words(1, 2)),
            2 => "\"}".to_string(),
            _ => format!(" {}.", self.words(1, 5)),
        };
        pieces.push(Piece::Text(tail));
        pieces
    }
}

fn luhn_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

fn mod97(s: &str) -> u32 {
    s.bytes().fold(0u32, |r, c| {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        if v >= 10 {
            (r * 100 + v) % 97
        } else {
            (r * 10 + v) % 97
        }
    })
}

fn group4(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Score {
    n: u64,
    tp: u64,
    fp: u64,
    fn_: u64,
}

fn main() -> anyhow::Result<()> {
    let engine = MaskEngine::new(&MaskConfig::default(), vec![HELD.to_string()], [3; 32])?;
    let who = Identity {
        subject: "eval".into(),
        groups: vec![],
        issuer: "eval".into(),
    };
    let masker = engine.masker("eval", &who);
    let mut g = Gen {
        rng: StdRng::seed_from_u64(0x5eed_a1e7),
    };

    let mut scores: BTreeMap<&'static str, Score> = BTreeMap::new();
    let mut out_of_scope: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut looks: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    let mut stream_same = 0usize;
    for _ in 0..RECORDS {
        let pieces = g.record();
        let text: String = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(s)
                | Piece::Entity(_, s)
                | Piece::OutOfScope(_, _, s)
                | Piece::LookAlike(_, s)
                | Piece::Ambiguous(_, _, s) => s.as_str(),
            })
            .collect();
        bytes += text.len();
        let mut counts = MaskCounts::new();
        let out = masker.mask_str(None, &text, &mut counts).into_owned();
        let gone = |s: &str| !out.contains(s);
        // The streaming masker, fed random small chunks, must agree.
        let mut stream = masker.stream();
        let mut streamed = Vec::with_capacity(out.len());
        let mut scratch = MaskCounts::new();
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let n = (g.range(1, 48) as usize).min(rest.len());
            stream.push(&rest[..n], &mut streamed, &mut scratch);
            rest = &rest[n..];
        }
        stream.finish(&mut streamed, &mut scratch);
        if streamed == out.as_bytes() && scratch == counts {
            stream_same += 1;
        }
        // Detections of out-of-scope and ambiguous pieces are tallied apart
        // and taken out of the counts scored below.
        let uncount = |t: &str, counts: &mut MaskCounts| {
            if let Some(c) = counts.get_mut(t) {
                *c = c.saturating_sub(1);
            }
        };
        let mut planted: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for p in &pieces {
            match p {
                Piece::Entity(t, s) => {
                    let e = planted.entry(t).or_default();
                    e.0 += 1;
                    if gone(s) {
                        e.1 += 1;
                    } else if examples.len() < 12 {
                        examples.push(format!("missed {t}: {s:?}"));
                    }
                }
                Piece::OutOfScope(fmt, t, s) => {
                    let e = out_of_scope.entry(fmt).or_default();
                    e.0 += 1;
                    if gone(s) {
                        e.1 += 1;
                        uncount(t, &mut counts);
                    }
                }
                Piece::Ambiguous(kind, t, s) => {
                    let e = looks.entry(kind).or_default();
                    e.0 += 1;
                    if gone(s) {
                        e.1 += 1;
                        uncount(t, &mut counts);
                    }
                }
                Piece::LookAlike(kind, s) => {
                    let e = looks.entry(kind).or_default();
                    e.0 += 1;
                    if gone(s) {
                        e.1 += 1;
                        if examples.len() < 12 {
                            examples.push(format!("masked look-alike ({kind}): {s:?} -> {out:?}"));
                        }
                    }
                }
                Piece::Text(_) => {}
            }
        }
        let types: std::collections::BTreeSet<&str> = planted
            .keys()
            .copied()
            .chain(counts.keys().map(String::as_str))
            .collect();
        for t in types {
            let (expected, found) = planted.get(t).copied().unwrap_or((0, 0));
            let counted = counts.get(t).copied().unwrap_or(0);
            let tp = found.min(counted);
            // Types never planted (false positives only) are named from the list.
            let key: &'static str = KNOWN.iter().copied().find(|k| *k == t).unwrap_or("other");
            let s = scores.entry(key).or_default();
            s.n += expected;
            s.tp += tp;
            s.fn_ += expected - tp.min(expected);
            s.fp += counted - tp;
        }
    }

    println!(
        "mask_eval: {RECORDS} records, {} KiB, default profile, seed 0x5eeda1e7\n",
        bytes / 1024
    );
    println!(
        "Streaming masker (random 1-47 byte chunks) equal to whole-value masking: {stream_same}/{RECORDS} records\n"
    );
    println!("Formats the detectors claim:");
    println!(
        "{:<16} {:>6} {:>6} {:>5} {:>5} {:>9} {:>7}",
        "entity", "n", "TP", "FP", "FN", "precision", "recall"
    );
    let (mut tn, mut ttp, mut tfp, mut tfn) = (0, 0, 0, 0);
    for (t, s) in &scores {
        let p = ratio(s.tp, s.tp + s.fp);
        let r = ratio(s.tp, s.tp + s.fn_);
        println!(
            "{t:<16} {:>6} {:>6} {:>5} {:>5} {p:>9} {r:>7}",
            s.n, s.tp, s.fp, s.fn_
        );
        tn += s.n;
        ttp += s.tp;
        tfp += s.fp;
        tfn += s.fn_;
    }
    println!(
        "{:<16} {tn:>6} {ttp:>6} {tfp:>5} {tfn:>5} {:>9} {:>7}",
        "all",
        ratio(ttp, ttp + tfp),
        ratio(ttp, ttp + tfn)
    );
    println!("\nReal formats the detectors do not claim (recall only):");
    println!(
        "{:<28} {:>6} {:>8} {:>7}",
        "format", "n", "masked", "recall"
    );
    for (k, (n, m)) in &out_of_scope {
        println!("{k:<28} {n:>6} {m:>8} {:>7}", ratio(*m, *n));
    }
    println!("\nLook-alikes (must stay visible; the last kind is ambiguous by construction):");
    println!("{:<28} {:>6} {:>8}", "look-alike", "n", "masked");
    for (k, (n, m)) in looks.iter().filter(|(k, _)| !k.contains("passes")) {
        println!("{k:<28} {n:>6} {m:>8}");
    }
    for (k, (n, m)) in looks.iter().filter(|(k, _)| k.contains("passes")) {
        println!("{k:<28} {n:>6} {m:>8}");
    }
    if !examples.is_empty() {
        println!("\nFirst misses / false positives:");
        for e in &examples {
            println!("  {e}");
        }
    }
    Ok(())
}

const KNOWN: &[&str] = &[
    "email",
    "card",
    "ssn",
    "phone",
    "iban",
    "ipv4",
    "ipv6",
    "jwt",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "gcp_api_key",
    "gcp_private_key",
    "private_key",
    "generic_secret",
    "url_password",
    "held_secret",
    "kube_secret",
    "literal",
];

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.4}", a as f64 / b as f64)
    }
}
