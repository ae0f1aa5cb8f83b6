//! SQL classification throughput: classifications per second with a cold
//! cache (every string distinct) and a warm cache (one string repeated).
//!
//! `cargo bench -p airlock-benches --bench classify`

use std::hint::black_box;

use airlock_postgres::classify::Classifier;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// More distinct strings than the cache holds, so cycling through them never
/// hits the exact-text cache.
const DISTINCT: usize = 20_000;
const CAPACITY: usize = 1_024;

/// Statements of the shapes an application sends, made distinct by their literals.
fn statement(i: usize) -> String {
    match i % 4 {
        0 => format!(
            "SELECT o.id, o.total, c.email FROM shop.orders o JOIN shop.customers c \
             ON c.id = o.customer_id WHERE o.id = {i} AND o.status IN ('paid', 'sent')"
        ),
        1 => format!("UPDATE shop.orders SET status = 'sent', updated_at = now() WHERE id = {i}"),
        2 => format!(
            "INSERT INTO shop.events (order_id, kind, payload) VALUES ({i}, 'click', '{{\"n\": {i}}}')"
        ),
        _ => format!(
            "WITH recent AS (SELECT customer_id, sum(total) AS s FROM shop.orders \
             WHERE created_at > now() - interval '{i} days' GROUP BY 1) \
             SELECT c.email, r.s FROM recent r JOIN shop.customers c ON c.id = r.customer_id \
             ORDER BY r.s DESC LIMIT 10"
        ),
    }
}

fn classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(1));

    let statements: Vec<String> = (0..DISTINCT).map(statement).collect();
    // No cache at all: the full lex + parse + analysis of every statement.
    let uncached = Classifier::new(0);
    let mut i = 0;
    group.bench_function("uncached_parse", |b| {
        b.iter(|| {
            let sql = &statements[i % DISTINCT];
            i += 1;
            black_box(uncached.classify(black_box(sql)))
        })
    });

    // Distinct texts of four shapes: the exact-text cache never hits, the
    // shape cache (literals blanked) always does after the first four.
    let shapes = Classifier::new(CAPACITY);
    let mut i = 0;
    group.bench_function("distinct_literals_same_shapes", |b| {
        b.iter(|| {
            let sql = &statements[i % DISTINCT];
            i += 1;
            black_box(shapes.classify(black_box(sql)))
        })
    });

    let warm = Classifier::new(CAPACITY);
    let sql = statement(0);
    warm.classify(&sql);
    group.bench_function("warm_cache_repeated_statement", |b| {
        b.iter(|| black_box(warm.classify(black_box(&sql))))
    });

    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
