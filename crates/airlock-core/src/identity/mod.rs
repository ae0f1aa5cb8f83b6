//! Identity: verifying the caller's access token (placeholder; being built).

use serde::Deserialize;

use crate::{Identity, Result};

/// `[identity]` configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Local issuer.
    #[serde(default)]
    pub local: LocalIssuerConfig,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The token is not a JWT.
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

/// Verifies access tokens.
#[derive(Debug)]
pub struct Verifier {}

impl Verifier {
    /// Builds a verifier.
    pub fn new(_config: &IdentityConfig, _data_dir: &std::path::Path) -> Result<Self> {
        Ok(Verifier {})
    }

    /// Verifies a token.
    pub async fn verify(&self, _token: &str) -> Result<Identity> {
        Err(AuthFailure::Malformed("not built yet".into()).into())
    }
}

/// Installs crypto providers (placeholder).
pub fn install_crypto_provider() {}

/// `[identity.local]` (placeholder).
#[derive(Debug, Default, Deserialize)]
pub struct LocalIssuerConfig {
    /// Whether enabled.
    pub enabled: bool,
}

/// The local issuer (placeholder).
#[derive(Debug)]
pub struct LocalIssuer {}

impl LocalIssuer {
    /// Loads the key.
    pub fn load_or_create(_d: &std::path::Path, _c: &LocalIssuerConfig) -> Result<Self> {
        Ok(LocalIssuer {})
    }
    /// Mints.
    pub fn mint(&self, _s: &str, _g: &[String], _t: std::time::Duration) -> Result<String> {
        Ok(String::new())
    }
}
