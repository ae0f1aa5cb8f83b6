//! Token verifications per second with the issuer's key already cached:
//! RS256 tokens from the OIDC issuer double (keys fetched over HTTP once,
//! before measuring) and EdDSA tokens from the local issuer.
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target cargo bench -p airlock-benches --bench identity -- --warm-up-time 1 --measurement-time 3
//! ```

// Benchmark setup that fails should stop the run, not be handled.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use airlock_core::identity::{IdentityConfig, Verifier};
use airlock_testkit::oidc::{self, OidcIssuer};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let issuer = runtime.block_on(OidcIssuer::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = identity_config(issuer.issuer_url());
    let verifier = Verifier::new(&config, dir.path()).unwrap();

    let rs256 = issuer.token("alice", &["dev", "ops"]);
    let local = verifier.local_issuer().unwrap();
    let eddsa = local
        .mint(
            "build-bot",
            &["ci".to_string(), "deploy".to_string()],
            Duration::from_secs(3600),
        )
        .unwrap();
    // Warm the key cache: the benchmark measures verification, not fetching.
    runtime.block_on(verifier.verify(&rs256)).unwrap();
    runtime.block_on(verifier.verify(&eddsa)).unwrap();

    let mut group = c.benchmark_group("identity/verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("rs256_oidc_cached_jwks", |b| {
        b.iter(|| runtime.block_on(verifier.verify(&rs256)).unwrap())
    });
    group.bench_function("eddsa_local_issuer", |b| {
        b.iter(|| runtime.block_on(verifier.verify(&eddsa)).unwrap())
    });
    group.finish();
    assert_eq!(
        issuer.jwks_fetches(),
        1,
        "every verification used the cached keys"
    );
}

/// `[[identity.oidc]]` for the double, with the local issuer on (the
/// default). Built from JSON: the benches package has no toml dependency.
fn identity_config(issuer: &str) -> IdentityConfig {
    serde_json::from_value(serde_json::json!({
        "oidc": [{ "issuer": issuer, "audience": oidc::AUDIENCE }],
    }))
    .unwrap()
}

criterion_group!(benches, verify);
criterion_main!(benches);
