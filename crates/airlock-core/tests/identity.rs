//! Identity verification against the OIDC issuer double over real HTTP, and
//! against the local issuer. Every attack test also shows that a good token
//! from the same issuer is accepted by the same verifier.

// Helpers outside `#[test]` functions are test code too; clippy's
// allow-unwrap-in-tests does not see that.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use airlock_core::identity::{
    AuthFailure, IdentityConfig, LocalIssuer, LocalIssuerConfig, Verifier,
};
use airlock_core::{Error, Identity};
use airlock_testkit::oidc::{self, OidcIssuer};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tempfile::TempDir;

/// `[identity]` trusting `issuer` only (local issuer off), plus `extra` keys.
fn config(issuer: &str, extra: &str) -> IdentityConfig {
    toml::from_str(&format!(
        "[[oidc]]\nissuer = {issuer:?}\naudience = {:?}\n{extra}\n\n[local]\nenabled = false\n",
        oidc::AUDIENCE
    ))
    .unwrap()
}

async fn setup(extra: &str) -> (OidcIssuer, Verifier, TempDir) {
    let issuer = OidcIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&config(issuer.issuer_url(), extra), dir.path()).unwrap();
    (issuer, verifier, dir)
}

/// The authentication failure of a refused token.
fn failure(result: airlock_core::Result<Identity>) -> AuthFailure {
    match result {
        Err(Error::Unauthenticated(f)) => f,
        other => panic!("expected an authentication failure, got {other:?}"),
    }
}

/// A good token from the same issuer passes the same verifier.
async fn good_token_passes(issuer: &OidcIssuer, verifier: &Verifier) {
    let identity = verifier
        .verify(&issuer.token("alice", &["dev"]))
        .await
        .unwrap();
    assert_eq!(identity.subject, "alice");
}

#[tokio::test]
async fn valid_token_yields_subject_groups_and_issuer() {
    let (issuer, verifier, _dir) = setup("").await;
    let identity = verifier
        .verify(&issuer.token("alice", &["dev", "ops"]))
        .await
        .unwrap();
    assert_eq!(
        identity,
        Identity {
            subject: "alice".into(),
            groups: vec!["dev".into(), "ops".into()],
            issuer: issuer.issuer_url().into(),
        }
    );
    assert_eq!(issuer.discovery_fetches(), 1);
    assert_eq!(issuer.jwks_fetches(), 1);
    // A "Bearer"-less token with surrounding whitespace (as pasted) is fine.
    let padded = format!("  {}\n", issuer.token("bob", &[]));
    assert_eq!(verifier.verify(&padded).await.unwrap().subject, "bob");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let err = failure(
        verifier
            .verify(&issuer.forge_alg_none("alice", &["admin"]))
            .await,
    );
    assert_eq!(err, AuthFailure::AlgNone);
    assert!(err.to_string().contains("unsigned"), "{err}");
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn hs256_signed_with_the_issuers_public_key_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let forged = issuer.forge_hs256_with_public_key("alice", &["admin"]);
    let err = failure(verifier.verify(&forged).await);
    assert!(
        matches!(&err, AuthFailure::AlgorithmNotAllowed { alg, allowed, .. }
            if alg == "HS256" && allowed == "RS256"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("may only be used with RS256"),
        "{err}"
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn header_alg_other_than_the_keys_alg_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    // A genuine RS256 signature, but the header claims RS512: the key's
    // `alg` (RS256) decides, not the header.
    let token = issuer.token_with_header(
        "alice",
        &["dev"],
        |h| {
            h.insert("alg".into(), json!("RS512"));
        },
        |_| {},
    );
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::AlgorithmNotAllowed { alg, .. } if alg == "RS512"),
        "{err:?}"
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn algorithm_allow_list_of_the_issuer_is_enforced() {
    let issuer = OidcIssuer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let strict = Verifier::new(
        &config(issuer.issuer_url(), "algorithms = [\"ES256\"]"),
        dir.path(),
    )
    .unwrap();
    let err = failure(strict.verify(&issuer.token("alice", &[])).await);
    // The only published key is RS256, which the allow-list excludes.
    assert!(
        matches!(&err, AuthFailure::IssuerUnreachable { reason, .. }
            if reason.contains("none of its algorithms is allowed")),
        "{err:?}"
    );
    let open = Verifier::new(
        &config(issuer.issuer_url(), "algorithms = [\"RS256\"]"),
        dir.path(),
    )
    .unwrap();
    good_token_passes(&issuer, &open).await;
}

#[tokio::test]
async fn expired_token_is_refused() {
    let (issuer, verifier, _dir) = setup("leeway_secs = 30").await;
    let now = oidc::now();
    let token = issuer.token_with("alice", &["dev"], |c| {
        c.insert("iat".into(), json!(now - 7200));
        c.insert("nbf".into(), json!(now - 7200));
        c.insert("exp".into(), json!(now - 3600));
    });
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::Expired { ago_secs, .. } if (3590..3700).contains(ago_secs)),
        "{err:?}"
    );
    assert!(err.to_string().contains("get a new token"), "{err}");
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn leeway_tolerates_small_clock_skew_only() {
    let (issuer, verifier, _dir) = setup("leeway_secs = 30").await;
    let just_expired = issuer.token_with("alice", &[], |c| {
        c.insert("exp".into(), json!(oidc::now() - 5));
    });
    verifier.verify(&just_expired).await.unwrap();
    let strict = Verifier::new(
        &config(issuer.issuer_url(), "leeway_secs = 0"),
        tempfile::tempdir().unwrap().path(),
    )
    .unwrap();
    assert!(matches!(
        failure(strict.verify(&just_expired).await),
        AuthFailure::Expired { .. }
    ));
}

#[tokio::test]
async fn token_not_yet_valid_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let token = issuer.token_with("alice", &["dev"], |c| {
        c.insert("nbf".into(), json!(oidc::now() + 3600));
        c.insert("exp".into(), json!(oidc::now() + 7200));
    });
    let err = failure(verifier.verify(&token).await);
    assert!(matches!(err, AuthFailure::NotYetValid { .. }), "{err:?}");
    assert!(err.to_string().contains("clocks"), "{err}");
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    // Validly signed by the issuer's key, but naming another issuer.
    let token = issuer.token_with("alice", &["dev"], |c| {
        c.insert("iss".into(), json!("https://evil.example"));
    });
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::UntrustedIssuer { issuer: iss, trusted }
            if iss == "https://evil.example" && trusted.contains(issuer.issuer_url())),
        "{err:?}"
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let token = issuer.token_with("alice", &["dev"], |c| {
        c.insert("aud".into(), json!("billing-service"));
    });
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::WrongAudience { expected, found, .. }
            if expected == "airlock" && found == "\"billing-service\""),
        "{err:?}"
    );
    let missing = issuer.token_with("alice", &["dev"], |c| {
        c.remove("aud");
    });
    assert_eq!(
        failure(verifier.verify(&missing).await),
        AuthFailure::MissingClaim {
            claim: "aud".into()
        }
    );
    // An audience list that includes ours is fine.
    let listed = issuer.token_with("alice", &["dev"], |c| {
        c.insert("aud".into(), json!(["billing-service", "airlock"]));
    });
    verifier.verify(&listed).await.unwrap();
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn unknown_kid_is_refused_after_a_refresh() {
    let (issuer, verifier, _dir) = setup("min_refresh_interval_secs = 0").await;
    good_token_passes(&issuer, &verifier).await;
    assert_eq!(issuer.jwks_fetches(), 1);
    let token = issuer.token_signed_by_unpublished_key("alice", &["dev"]);
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::UnknownKey { kid, .. } if kid == "\"test-rsa-3\""),
        "{err:?}"
    );
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "the unknown kid triggered one refresh"
    );
    assert_eq!(
        issuer.discovery_fetches(),
        1,
        "the refresh reuses the discovered jwks_uri"
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let token = issuer.token("alice", &["dev"]);
    let tampered = OidcIssuer::tamper(&token, |c| {
        c.insert("groups".into(), json!(["admin"]));
    })
    .unwrap();
    let err = failure(verifier.verify(&tampered).await);
    assert!(matches!(err, AuthFailure::BadSignature { .. }), "{err:?}");
    assert!(err.to_string().contains("altered"), "{err}");
    assert_eq!(verifier.verify(&token).await.unwrap().groups, ["dev"]);
}

#[tokio::test]
async fn unreachable_issuer_fails_closed() {
    let mut issuer = OidcIssuer::start().await.unwrap();
    let token = issuer.token("alice", &["dev"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(issuer.issuer_url(), "");
    // While the issuer is up, the token is good.
    let warm = Verifier::new(&cfg, dir.path()).unwrap();
    warm.verify(&token).await.unwrap();

    issuer.stop().await;
    let cold = Verifier::new(&cfg, dir.path()).unwrap();
    let err = failure(cold.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::IssuerUnreachable { issuer: iss, reason }
            if iss == issuer.issuer_url() && reason.contains("cannot reach")),
        "{err:?}"
    );
    assert!(err.to_string().contains(issuer.issuer_url()), "{err}");
    // A verifier that cached the keys before the outage keeps working.
    warm.verify(&token).await.unwrap();
}

#[tokio::test]
async fn rotated_key_is_picked_up_without_restart() {
    let (issuer, verifier, _dir) = setup("min_refresh_interval_secs = 0").await;
    let old = issuer.token("alice", &["dev"]);
    verifier.verify(&old).await.unwrap();
    issuer.rotate().unwrap();
    let new = issuer.token("alice", &["dev"]);
    assert_ne!(old, new);
    let identity = verifier.verify(&new).await.unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(issuer.jwks_fetches(), 2);
    // Tokens signed with the old key stay valid while it is published.
    verifier.verify(&old).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn withdrawn_key_stops_being_trusted_after_the_max_age() {
    let (issuer, verifier, _dir) =
        setup("jwks_max_age_secs = 0\nmin_refresh_interval_secs = 0").await;
    let old = issuer.token("alice", &["dev"]);
    verifier.verify(&old).await.unwrap();
    assert_eq!(issuer.jwks_fetches(), 1);
    issuer.rotate().unwrap();
    issuer.retire_previous_keys();

    // The cached keys are too old: this verification still succeeds from
    // the cache and starts a background refetch.
    verifier.verify(&old).await.unwrap();
    // Once the refetched keys are in place, the withdrawn key is unknown.
    let mut result = verifier.verify(&old).await;
    for _ in 0..500 {
        if result.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        result = verifier.verify(&old).await;
    }
    assert!(issuer.jwks_fetches() >= 2, "the keys were refetched");
    let err = failure(result);
    assert!(
        matches!(&err, AuthFailure::UnknownKey { kid, .. } if kid == "\"test-rsa-1\""),
        "{err:?}"
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn many_verifications_fetch_the_keys_once() {
    let (issuer, verifier, _dir) = setup("").await;
    let verifier = Arc::new(verifier);
    let token = Arc::new(issuer.token("alice", &["dev"]));
    // Concurrent first verifications share the one initial fetch.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (verifier, token) = (verifier.clone(), token.clone());
        tasks.spawn(async move { verifier.verify(&token).await.map(|i| i.subject) });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), "alice");
    }
    for _ in 0..200 {
        verifier.verify(&token).await.unwrap();
    }
    assert_eq!(issuer.discovery_fetches(), 1);
    assert_eq!(issuer.jwks_fetches(), 1);
}

/// Verifies `n` unknown-kid tokens concurrently; all must be refused.
async fn unknown_kid_flood(issuer: &OidcIssuer, verifier: &Arc<Verifier>, n: usize) {
    let token = Arc::new(issuer.token_signed_by_unpublished_key("mallory", &["admin"]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (verifier, token) = (verifier.clone(), token.clone());
        tasks.spawn(async move { verifier.verify(&token).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert!(matches!(
            failure(result.unwrap()),
            AuthFailure::UnknownKey { .. }
        ));
    }
}

#[tokio::test]
async fn unknown_kid_flood_is_rate_limited() {
    let (issuer, verifier, _dir) = setup("min_refresh_interval_secs = 3").await;
    let verifier = Arc::new(verifier);
    good_token_passes(&issuer, &verifier).await;
    assert_eq!(issuer.jwks_fetches(), 1);

    // Within the interval: no refresh at all.
    unknown_kid_flood(&issuer, &verifier, 100).await;
    assert_eq!(issuer.jwks_fetches(), 1);

    // After it: the whole flood shares exactly one refresh.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    unknown_kid_flood(&issuer, &verifier, 100).await;
    assert_eq!(issuer.jwks_fetches(), 2);
    good_token_passes(&issuer, &verifier).await;
}

/// A verification dropped while its refresh is under way (an API client that
/// closes its connection) still counts that refresh: the next unknown key
/// within the interval does not start another.
#[tokio::test]
async fn a_refresh_whose_caller_went_away_still_counts() {
    let (issuer, verifier, _dir) = setup("min_refresh_interval_secs = 30").await;
    issuer.set_jwks_delay(Duration::from_millis(300));
    let token = issuer.token_signed_by_unpublished_key("mallory", &["admin"]);
    for i in 0..5 {
        // Given up on after 50 ms: the first mid-fetch; the later ones are
        // answered at once from the rate limit (with the defect, each
        // started a fetch of its own and was given up on too).
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), verifier.verify(&token)).await;
        assert_eq!(gave_up.is_err(), i == 0, "verification {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        issuer.jwks_fetches(),
        1,
        "one refresh for five abandoned verifications"
    );
    // What that refresh fetched is in use: a good token verifies without
    // another.
    good_token_passes(&issuer, &verifier).await;
    assert_eq!(issuer.jwks_fetches(), 1);
}

#[tokio::test]
async fn ill_typed_or_missing_time_claims_are_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    let far = (oidc::now() + 3600).to_string();
    let string_exp = issuer.token_with("alice", &["dev"], |c| {
        c.insert("exp".into(), json!(far));
    });
    let err = failure(verifier.verify(&string_exp).await);
    assert!(
        matches!(&err, AuthFailure::InvalidClaim { claim, reason }
            if claim == "exp" && reason.contains("a string")),
        "{err:?}"
    );
    let string_nbf = issuer.token_with("alice", &["dev"], |c| {
        c.insert("nbf".into(), json!("later"));
    });
    assert!(matches!(
        failure(verifier.verify(&string_nbf).await),
        AuthFailure::InvalidClaim { claim, .. } if claim == "nbf"
    ));
    let no_exp = issuer.token_with("alice", &["dev"], |c| {
        c.remove("exp");
    });
    assert_eq!(
        failure(verifier.verify(&no_exp).await),
        AuthFailure::MissingClaim {
            claim: "exp".into()
        }
    );
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let (issuer, verifier, _dir) = setup("").await;
    for bad in ["", "not-a-jwt", "a.b", "a.b.c.d.e"] {
        assert!(
            matches!(
                failure(verifier.verify(bad).await),
                AuthFailure::Malformed(_)
            ),
            "{bad:?}"
        );
    }
    good_token_passes(&issuer, &verifier).await;
}

#[tokio::test]
async fn groups_from_a_nested_claim_and_a_separated_string() {
    let (issuer, verifier, _dir) =
        setup("groups_claim = \"realm_access.roles\"\ngroups_prefix = \"kc:\"").await;
    let token = issuer.token_with("alice", &[], |c| {
        c.insert("realm_access".into(), json!({ "roles": ["dba", "oncall"] }));
    });
    assert_eq!(
        verifier.verify(&token).await.unwrap().groups,
        ["kc:dba", "kc:oncall"]
    );

    let (issuer, verifier, _dir) = setup("groups_claim = \"roles\"").await;
    let token = issuer.token_with("alice", &[], |c| {
        c.insert("roles".into(), json!("dba, oncall readers"));
    });
    assert_eq!(
        verifier.verify(&token).await.unwrap().groups,
        ["dba", "oncall", "readers"]
    );
    let bad = issuer.token_with("alice", &[], |c| {
        c.insert("roles".into(), json!([1, 2]));
    });
    assert!(matches!(
        failure(verifier.verify(&bad).await),
        AuthFailure::InvalidClaim { claim, .. } if claim == "roles"
    ));
}

#[tokio::test]
async fn subject_from_a_configured_claim() {
    let (issuer, verifier, _dir) = setup("subject_claim = \"preferred_username\"").await;
    let token = issuer.token_with("0b1c-uuid", &[], |c| {
        c.insert("preferred_username".into(), json!("alice"));
    });
    assert_eq!(verifier.verify(&token).await.unwrap().subject, "alice");
    let without = issuer.token("0b1c-uuid", &[]);
    assert_eq!(
        failure(verifier.verify(&without).await),
        AuthFailure::MissingClaim {
            claim: "preferred_username".into()
        }
    );
}

#[tokio::test]
async fn configured_jwks_uri_skips_discovery() {
    let issuer = OidcIssuer::start().await.unwrap();
    let extra = format!("jwks_uri = \"{}/jwks\"", issuer.issuer_url());
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&config(issuer.issuer_url(), &extra), dir.path()).unwrap();
    good_token_passes(&issuer, &verifier).await;
    assert_eq!((issuer.discovery_fetches(), issuer.jwks_fetches()), (0, 1));
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let issuer = OidcIssuer::start().await.unwrap();
    // Same server, but configured under another name than the one its
    // discovery document gives (OIDC Discovery 4.3 requires them equal).
    let alias = issuer.issuer_url().replace("127.0.0.1", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&config(&alias, ""), dir.path()).unwrap();
    let token = issuer.token_with("alice", &[], |c| {
        c.insert("iss".into(), json!(alias));
    });
    let err = failure(verifier.verify(&token).await);
    assert!(
        matches!(&err, AuthFailure::IssuerUnreachable { reason, .. } if reason.contains("names issuer")),
        "{err:?}"
    );
    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "keys are never fetched from a mismatched issuer"
    );
}

#[tokio::test]
async fn several_issuers_are_told_apart_by_iss() {
    let first = OidcIssuer::start().await.unwrap();
    let second = OidcIssuer::start().await.unwrap();
    second.rotate().unwrap(); // signs with a key `first` never publishes
    let text = format!(
        "[[oidc]]\nissuer = {:?}\naudience = \"airlock\"\n\n[[oidc]]\nissuer = {:?}\naudience = \"airlock\"\ngroups_prefix = \"b:\"\n\n[local]\nenabled = false\n",
        first.issuer_url(),
        second.issuer_url()
    );
    let cfg: IdentityConfig = toml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&cfg, dir.path()).unwrap();

    let a = verifier
        .verify(&first.token("alice", &["dev"]))
        .await
        .unwrap();
    assert_eq!(
        (a.issuer.as_str(), a.groups.clone()),
        (first.issuer_url(), vec!["dev".to_string()])
    );
    let b = verifier
        .verify(&second.token("bob", &["dev"]))
        .await
        .unwrap();
    assert_eq!(
        (b.issuer.as_str(), b.groups.clone()),
        (second.issuer_url(), vec!["b:dev".to_string()])
    );

    // The second issuer's token claiming to come from the first is checked
    // against the first issuer's keys, which do not include its key.
    let impostor = second.token_with("bob", &["dev"], |c| {
        c.insert("iss".into(), json!(first.issuer_url()));
    });
    assert!(matches!(
        failure(verifier.verify(&impostor).await),
        AuthFailure::UnknownKey { .. }
    ));
}

/// An issuer without a prefix cannot name a subject or group in the shape
/// another issuer's prefix gives its own: `partner:svc` from the first
/// would be the second's `svc`. Names clear of the prefix pass, from both.
#[tokio::test]
async fn one_issuers_names_cannot_take_the_shape_of_anothers_prefix() {
    let first = OidcIssuer::start().await.unwrap();
    let partner = OidcIssuer::start().await.unwrap();
    partner.rotate().unwrap();
    let text = format!(
        "[[oidc]]\nissuer = {:?}\naudience = \"airlock\"\n\n[[oidc]]\nissuer = {:?}\naudience = \"airlock\"\nsubject_prefix = \"partner:\"\ngroups_prefix = \"partner:\"\n\n[local]\nenabled = false\n",
        first.issuer_url(),
        partner.issuer_url()
    );
    let cfg: IdentityConfig = toml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&cfg, dir.path()).unwrap();
    for token in [
        first.token("partner:svc-backup", &["dev"]),
        first.token("alice", &["partner:admins"]),
    ] {
        assert!(matches!(
            failure(verifier.verify(&token).await),
            AuthFailure::InvalidClaim { .. }
        ));
    }
    let a = verifier
        .verify(&first.token("alice", &["dev"]))
        .await
        .unwrap();
    assert_eq!(
        (a.subject.as_str(), a.groups.clone()),
        ("alice", vec!["dev".to_string()])
    );
    let p = verifier
        .verify(&partner.token("svc-backup", &["admins"]))
        .await
        .unwrap();
    assert_eq!(
        (p.subject.as_str(), p.groups.clone()),
        ("partner:svc-backup", vec!["partner:admins".to_string()])
    );
}

fn local_verifier(dir: &TempDir) -> Verifier {
    Verifier::new(&IdentityConfig::default(), dir.path()).unwrap()
}

#[tokio::test]
async fn local_issuer_mint_and_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = local_verifier(&dir);
    let local = LocalIssuer::load_or_create(dir.path(), &LocalIssuerConfig::default()).unwrap();
    let token = local
        .mint("build-bot", &["ci".into()], Duration::from_secs(300))
        .unwrap();
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(
        identity,
        Identity {
            subject: "build-bot".into(),
            groups: vec!["ci".into()],
            issuer: "airlock-local".into(),
        }
    );
    let jwks = local.jwks();
    assert_eq!(jwks["keys"][0]["kid"], local.kid());
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
}

#[tokio::test]
async fn local_token_signed_with_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = local_verifier(&dir);
    let ours = LocalIssuer::load_or_create(dir.path(), &LocalIssuerConfig::default()).unwrap();

    // Another gateway's local issuer, same issuer name, different key.
    let other_dir = tempfile::tempdir().unwrap();
    let theirs =
        LocalIssuer::load_or_create(other_dir.path(), &LocalIssuerConfig::default()).unwrap();
    let foreign = theirs
        .mint("mallory", &["admin".into()], Duration::from_secs(300))
        .unwrap();
    let err = failure(verifier.verify(&foreign).await);
    assert!(matches!(err, AuthFailure::UnknownKey { .. }), "{err:?}");

    // Even when the forger copies our kid, the signature gives it away.
    let mut parts = foreign.splitn(2, '.');
    let (_, rest) = (parts.next().unwrap(), parts.next().unwrap());
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": ours.kid()}).to_string());
    let relabelled = format!("{header}.{rest}");
    let err = failure(verifier.verify(&relabelled).await);
    assert!(matches!(err, AuthFailure::BadSignature { .. }), "{err:?}");

    let good = ours.mint("alice", &[], Duration::from_secs(300)).unwrap();
    assert_eq!(verifier.verify(&good).await.unwrap().subject, "alice");
}

#[tokio::test]
async fn local_token_with_a_stretched_lifetime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = local_verifier(&dir);
    let local = verifier.local_issuer().unwrap();
    let token = local.mint("alice", &[], Duration::from_secs(1)).unwrap();
    verifier.verify(&token).await.unwrap();
    // Someone holding a short-lived token pushes its exp a day out.
    let stretched = OidcIssuer::tamper(&token, |c| {
        c.insert("exp".into(), json!(oidc::now() + 86_400));
    })
    .unwrap();
    assert!(matches!(
        failure(verifier.verify(&stretched).await),
        AuthFailure::BadSignature { .. }
    ));
}

#[tokio::test]
async fn local_and_oidc_issuers_are_trusted_side_by_side() {
    let issuer = OidcIssuer::start().await.unwrap();
    let text = format!(
        "[[oidc]]\nissuer = {:?}\naudience = \"airlock\"\n",
        issuer.issuer_url()
    );
    let cfg: IdentityConfig = toml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let verifier = Verifier::new(&cfg, dir.path()).unwrap();
    let local = verifier.local_issuer().unwrap();
    let from_local = local.mint("bot", &[], Duration::from_secs(60)).unwrap();
    assert_eq!(
        verifier.verify(&from_local).await.unwrap().issuer,
        "airlock-local"
    );
    let from_oidc = issuer.token("alice", &[]);
    assert_eq!(
        verifier.verify(&from_oidc).await.unwrap().issuer,
        issuer.issuer_url()
    );
    // The local issuer never needs the network: no fetch for its tokens.
    assert_eq!(issuer.jwks_fetches(), 1);
}
