//! Identity: turning a client's access token into a verified [`Identity`].
//!
//! A [`Verifier`] trusts the OpenID Connect issuers listed under
//! `[[identity.oidc]]` and, unless disabled, the gateway's own
//! [`LocalIssuer`] (`[identity.local]`). A token is checked against the
//! issuer its `iss` claim names:
//!
//! - the signature, with a key from the issuer's JWKS (found through
//!   `/.well-known/openid-configuration`, cached, refreshed on an unknown
//!   `kid` at most once per interval) or the local key;
//! - the algorithm, which must be one the *key* allows (its `alg`, else its
//!   type and curve) and the issuer's allow-list admits; the header only has
//!   to agree, so `alg: none` and HMAC keyed with a public key are refused;
//! - `exp` (required), `nbf`, `iss` and `aud`, with a small leeway; time
//!   claims of the wrong type are refused, not ignored;
//! - the subject and groups, from configurable (possibly nested) claims.
//!
//! Every refusal is an [`AuthFailure`] whose message says what is wrong and
//! what to do. If an issuer's keys cannot be fetched and none are cached,
//! its tokens are refused (fail closed).
//!
//! ```no_run
//! # async fn demo() -> airlock_core::Result<()> {
//! use airlock_core::identity::{IdentityConfig, Verifier};
//! let config: IdentityConfig = toml::from_str(r#"
//!     [[oidc]]
//!     issuer = "https://idp.example.com/realms/acme"
//!     audience = "airlock"
//!     groups_claim = "realm_access.roles"
//! "#).map_err(|e| airlock_core::Error::Config(e.to_string()))?;
//! let verifier = Verifier::new(&config, std::path::Path::new("airlock-data"))?;
//! let identity = verifier.verify("eyJhbGciOi...").await?;
//! println!("{} in {:?}", identity.subject, identity.groups);
//! # Ok(()) }
//! ```

mod config;
mod crypto;
mod failure;
mod keys;
mod local;
mod oidc;
mod token;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use config::{IdentityConfig, LocalIssuerConfig, OidcIssuerConfig};
pub use crypto::install_crypto_provider;
pub use failure::AuthFailure;
pub use local::{LOCAL_ISSUER_KEY_FILE, LocalIssuer, MAX_LOCAL_TOKEN_TTL};

use crate::{Error, Identity, Result};

/// Time allowed to connect to an issuer when fetching its keys.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole discovery or JWKS request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies access tokens against the trusted issuers. Cheap to share
/// (`Send + Sync`); keep one per gateway so the key caches are shared.
#[derive(Debug)]
pub struct Verifier {
    issuers: HashMap<String, Trusted>,
    /// The trusted issuer names, for "untrusted issuer" messages.
    trusted: String,
}

#[derive(Debug)]
enum Trusted {
    Local(Box<LocalIssuer>),
    Oidc(Arc<oidc::OidcIssuer>),
}

impl Verifier {
    /// Builds a verifier from `[identity]`. Loads (or creates) the local
    /// issuer's key in `data_dir` when the local issuer is enabled. Does no
    /// network I/O: OIDC keys are fetched at the first verification.
    pub fn new(config: &IdentityConfig, data_dir: &Path) -> Result<Self> {
        install_crypto_provider();
        config::check_unique(config)?;
        config::warn_shared_subjects(config);
        // Every trusted issuer's (subject, groups) prefixes: one issuer's
        // names may not take the shape of another's.
        let prefixes: Vec<(String, String)> = config
            .oidc
            .iter()
            .map(|o| (o.subject_prefix.clone(), o.groups_prefix.clone()))
            .chain(config.local.enabled.then(|| (String::new(), String::new())))
            .collect();
        let mut issuers = HashMap::new();
        if !config.oidc.is_empty() {
            let http = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    // Keys fetched over https must never arrive over plain http.
                    let downgrade = attempt.url().scheme() != "https"
                        && attempt.previous().iter().any(|u| u.scheme() == "https");
                    if downgrade {
                        attempt.error("refusing a redirect from https to http")
                    } else if attempt.previous().len() >= 5 {
                        attempt.error("too many redirects")
                    } else {
                        attempt.follow()
                    }
                }))
                .build()
                .map_err(|e| {
                    Error::Internal(format!(
                        "cannot build the HTTP client that fetches signing keys: {e}"
                    ))
                })?;
            for oidc in &config.oidc {
                let own = (oidc.subject_prefix.as_str(), oidc.groups_prefix.as_str());
                let reserved = token::Reserved::among(own, &prefixes);
                let issuer = oidc::OidcIssuer::new(oidc, http.clone(), reserved)?;
                issuers.insert(oidc.issuer.clone(), Trusted::Oidc(Arc::new(issuer)));
            }
        }
        if config.local.enabled {
            let mut local = LocalIssuer::load_or_create(data_dir, &config.local)?;
            local.reserve(token::Reserved::among(("", ""), &prefixes));
            issuers.insert(local.issuer().to_string(), Trusted::Local(Box::new(local)));
        }
        let mut names: Vec<&str> = issuers.keys().map(String::as_str).collect();
        names.sort_unstable();
        let trusted = if names.is_empty() {
            tracing::warn!(
                "no token issuer is trusted ([identity.local] is disabled and no [[identity.oidc]] is configured): every client will be refused"
            );
            "none".to_string()
        } else {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Ok(Verifier { issuers, trusted })
    }

    /// Verifies `token` (a compact JWS, without any `Bearer ` prefix) and
    /// returns who it names. Refusals are `Err(Error::Unauthenticated(..))`.
    pub async fn verify(&self, token: &str) -> Result<Identity> {
        let token = token::parse(token)?;
        let verified = match self.issuers.get(&token.issuer) {
            Some(Trusted::Local(local)) => local.verify(&token),
            Some(Trusted::Oidc(oidc)) => oidc.verify(&token).await,
            None => Err(AuthFailure::UntrustedIssuer {
                issuer: token::shorten(&token.issuer),
                trusted: self.trusted.clone(),
            }),
        };
        Ok(verified?)
    }

    /// The local issuer, when it is enabled: to mint tokens or publish its JWKS.
    pub fn local_issuer(&self) -> Option<&LocalIssuer> {
        self.issuers.values().find_map(|t| match t {
            Trusted::Local(local) => Some(&**local),
            Trusted::Oidc(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: T) {}

    #[test]
    fn verifier_and_its_futures_can_cross_threads() {
        let dir = tempfile::tempdir().unwrap();
        let config: IdentityConfig = toml::from_str(
            "[[oidc]]\nissuer = \"https://idp.example.com\"\naudience = \"airlock\"\n",
        )
        .unwrap();
        let verifier = Verifier::new(&config, dir.path()).unwrap();
        assert_send_sync(&verifier);
        assert_send(verifier.verify("x.y.z"));
    }

    #[tokio::test]
    async fn tokens_of_unknown_issuers_are_refused_before_any_key_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = Verifier::new(&IdentityConfig::default(), dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        let config = LocalIssuerConfig {
            issuer: "someone-else".into(),
            ..LocalIssuerConfig::default()
        };
        let token = LocalIssuer::load_or_create(other.path(), &config)
            .unwrap()
            .mint("mallory", &[], Duration::from_secs(60))
            .unwrap();
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unauthenticated(AuthFailure::UntrustedIssuer { issuer, trusted })
                if issuer == "someone-else" && trusted == "\"airlock-local\""),
            "{err}"
        );
        // The gateway's own issuer is trusted by the same verifier.
        let local = verifier.local_issuer().unwrap();
        let good = local.mint("alice", &[], Duration::from_secs(60)).unwrap();
        assert_eq!(verifier.verify(&good).await.unwrap().subject, "alice");
    }

    #[test]
    fn new_does_not_create_a_key_when_the_local_issuer_is_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = IdentityConfig::default();
        config.local.enabled = false;
        let verifier = Verifier::new(&config, dir.path()).unwrap();
        assert!(verifier.local_issuer().is_none());
        assert!(!dir.path().join(LOCAL_ISSUER_KEY_FILE).exists());
    }
}
