//! Audit appends per second through the real recorder and sled store, in both
//! durability modes, with 1, 16 and 256 concurrent writers. Each writer
//! awaits its record's durability before writing the next (as a connector
//! does before forwarding), so concurrency is what group commit feeds on.
//!
//! `cargo bench -p airlock-benches --bench audit`
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches fail loudly by design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::audit::CheckpointSigner;
use airlock_core::config::Durability;
use airlock_core::recorder::{Recorder, RecorderOptions};
use airlock_core::{CommandOperation, Decision, Event, Operation, SessionId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn event(i: u64) -> Event {
    Event::Operation {
        operation: Operation::Command(CommandOperation {
            line: format!("SELECT * FROM orders WHERE id = {i}"),
            interactive: false,
        }),
        decision: Decision::Allow,
    }
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("audit_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for durability in [Durability::Os, Durability::Fsync] {
        for writers in [1u64, 16, 256] {
            let dir = tempfile::tempdir_in(
                std::env::var("AIRLOCK_BENCH_DIR").unwrap_or_else(|_| ".".into()),
            )
            .unwrap();
            let (recorder, _writer) = rt.block_on(async {
                let store = Arc::new(airlock_store::SledStore::open(dir.path()).unwrap());
                let signer = CheckpointSigner::load_or_create(dir.path()).unwrap();
                let options = RecorderOptions {
                    durability,
                    ..RecorderOptions::default()
                };
                Recorder::start(store, signer, options).await.unwrap()
            });
            group.throughput(Throughput::Elements(writers));
            let name = format!("{durability:?}/{writers}_writers").to_lowercase();
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        let mut tasks = Vec::new();
                        for _ in 0..writers {
                            let recorder = recorder.clone();
                            tasks.push(tokio::spawn(async move {
                                let session = Some(SessionId::new());
                                for i in 0..iters {
                                    recorder.record(session, event(i)).await.unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                        start.elapsed()
                    })
                });
            });
            rt.block_on(recorder.shutdown()).unwrap();
        }
    }
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
