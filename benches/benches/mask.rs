//! Masking throughput with the default profile: plain text with nothing
//! sensitive, PII-dense CSV and JSON, and terminal-like output, each through
//! `Masker::mask_str` (one call on the whole corpus, and one call per line)
//! and through the streaming masker fed 4 KiB chunks.
//!
//! `cargo bench -p airlock-benches --bench mask`

use std::hint::black_box;

use airlock_core::mask::{MaskConfig, MaskEngine, Masker};
use airlock_core::{Identity, MaskCounts};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SIZE: usize = 1 << 20;

/// A small deterministic generator (xorshift), so every run masks the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "forwards",
    "request",
    "to",
    "upstream",
    "and",
    "records",
    "every",
    "session",
    "with",
    "its",
    "decision",
    "policy",
    "allows",
    "reads",
    "from",
    "replica",
    "while",
    "writes",
    "need",
    "review",
    "by",
    "an",
    "operator",
    "before",
    "they",
    "run",
    "connection",
    "pool",
    "was",
    "resized",
    "after",
    "deploy",
    "of",
    "service",
    "cache",
    "hit",
    "ratio",
    "improved",
    "latency",
    "dropped",
    "during",
    "night",
    "batch",
    "job",
];

/// Prose and plain log lines: words, counts, durations, dates; nothing to mask.
fn plain_text() -> String {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = String::with_capacity(SIZE + 256);
    while s.len() < SIZE {
        let words = 8 + r.below(12);
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(r.pick(WORDS));
            if r.below(10) == 0 {
                s.push(' ');
                s.push_str(&r.below(1000).to_string());
            }
        }
        s.push_str(". ");
        if r.below(4) == 0 {
            s.push('\n');
        }
    }
    s
}

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "lopez", "wilson",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "corp.example.net"];

fn luhn_card(r: &mut Rng) -> String {
    let mut d: Vec<u8> = std::iter::once(4)
        .chain((0..14).map(|_| r.below(10) as u8))
        .collect();
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    d.push(((10 - sum % 10) % 10) as u8);
    let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
    format!("{} {} {} {}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
}

struct Person {
    id: u64,
    name: String,
    email: String,
    phone: String,
    card: String,
    ssn: String,
    ip: String,
    note: String,
}

fn person(r: &mut Rng, id: u64) -> Person {
    let (f, l) = (r.pick(FIRST), r.pick(LAST));
    Person {
        id,
        name: format!("{f} {l}"),
        email: format!("{f}.{l}{}@{}", r.below(100), r.pick(DOMAINS)),
        phone: format!("+1 (415) 5{}-{}", r.digits(2), r.digits(4)),
        card: luhn_card(r),
        ssn: format!(
            "{}-{}-{}",
            100 + r.below(500),
            10 + r.below(89),
            1000 + r.below(8999)
        ),
        ip: format!("10.{}.{}.{}", r.below(256), r.below(256), 1 + r.below(254)),
        note: r.pick(WORDS).to_string() + " " + r.pick(WORDS),
    }
}

/// One row in four also carries a secret in free text.
fn extra(r: &mut Rng) -> &'static str {
    match r.below(8) {
        0 => " password=Zr8qLmT2vX9wKp4N",
        1 => " key AKIAIOSFODNN7EXAMPLE",
        _ => "",
    }
}

fn pii_csv() -> String {
    let mut r = Rng(0x1234_5678_9abc_def1);
    let mut s = String::from("id,name,email,phone,card,ssn,ip,note\n");
    let mut id = 1;
    while s.len() < SIZE {
        let p = person(&mut r, id);
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{}{}\n",
            p.id,
            p.name,
            p.email,
            p.phone,
            p.card,
            p.ssn,
            p.ip,
            p.note,
            extra(&mut r)
        ));
        id += 1;
    }
    s
}

fn pii_json() -> String {
    let mut r = Rng(0x0fed_cba9_8765_4321);
    let mut rows = Vec::new();
    let mut len = 0;
    let mut id = 1;
    while len < SIZE {
        let p = person(&mut r, id);
        let v = serde_json::json!({
            "id": p.id, "name": p.name, "email": p.email, "phone": p.phone,
            "card": p.card, "ssn": p.ssn, "ip": p.ip, "note": format!("{}{}", p.note, extra(&mut r)),
        });
        len += v.to_string().len() + 1;
        rows.push(v);
        id += 1;
    }
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}

/// `ls -l --color` listings and service logs with ANSI colours.
fn terminal() -> String {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    let mut s = String::with_capacity(SIZE + 256);
    let names = [
        "src",
        "Cargo.toml",
        "README.md",
        "target",
        "main.rs",
        "lib.rs",
        "notes.txt",
    ];
    let levels = [
        "\x1b[32mINFO\x1b[0m",
        "\x1b[33mWARN\x1b[0m",
        "\x1b[2mDEBUG\x1b[0m",
    ];
    while s.len() < SIZE {
        if r.below(2) == 0 {
            let dir = r.below(3) == 0;
            s.push_str(&format!(
                "{}rwxr-xr-x {:>2} bob staff {:>6} Jan {:>2} {:02}:{:02} {}{}\x1b[0m\r\n",
                if dir { 'd' } else { '-' },
                1 + r.below(9),
                r.below(100_000),
                1 + r.below(28),
                r.below(24),
                r.below(60),
                if dir { "\x1b[01;34m" } else { "\x1b[00m" },
                r.pick(&names)
            ));
        } else {
            s.push_str(&format!(
                "2024-01-{:02}T{:02}:{:02}:{:02}.{:03}Z {} request {} took {}ms status {}\r\n",
                1 + r.below(28),
                r.below(24),
                r.below(60),
                r.below(60),
                r.below(1000),
                r.pick(&levels),
                r.pick(WORDS),
                r.below(500),
                [200, 201, 404, 500][r.below(4) as usize]
            ));
        }
    }
    s
}

fn masker() -> Masker {
    let engine = MaskEngine::new(
        &MaskConfig::default(),
        vec!["Pg-Adm1n-P4ss!".into(), "kube-token-9f8e7d6c".into()],
        [7; 32],
    )
    .unwrap_or_else(|e| panic!("engine: {e}"));
    let who = Identity {
        subject: "agent".into(),
        groups: vec!["agents".into()],
        issuer: "bench".into(),
    };
    engine.masker("prod-db", &who)
}

fn bench_corpus(c: &mut Criterion, group: &str, text: &str) {
    let m = masker();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("mask_str", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::new();
            black_box(m.mask_str(None, black_box(text), &mut counts).len())
        })
    });
    g.bench_function("mask_str_per_line", |b| {
        b.iter(|| {
            let mut counts = MaskCounts::new();
            let mut n = 0;
            for line in text.split_inclusive('\n') {
                n += m.mask_str(None, black_box(line), &mut counts).len();
            }
            black_box(n)
        })
    });
    g.bench_function("stream_4k", |b| {
        let mut out = Vec::with_capacity(text.len() + 4096);
        b.iter(|| {
            let mut counts = MaskCounts::new();
            let mut s = m.stream();
            out.clear();
            for chunk in text.as_bytes().chunks(4096) {
                s.push(black_box(chunk), &mut out, &mut counts);
            }
            s.finish(&mut out, &mut counts);
            black_box(out.len())
        })
    });
    g.finish();
}

fn mask(c: &mut Criterion) {
    bench_corpus(c, "plain_text", &plain_text());
    bench_corpus(c, "pii_csv", &pii_csv());
    let json = pii_json();
    bench_corpus(c, "pii_json", &json);
    let m = masker();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let mut g = c.benchmark_group("pii_json");
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("mask_json", |b| {
        b.iter_batched(
            || doc.clone(),
            |mut d| {
                let mut counts = MaskCounts::new();
                m.mask_json(&mut d, &mut counts);
                black_box(d)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
    bench_corpus(c, "terminal", &terminal());
}

criterion_group!(benches, mask);
criterion_main!(benches);
