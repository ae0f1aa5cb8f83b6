//! The local issuer: Airlock's own ed25519 key, for getting started and for
//! machine identities (`airlock token`).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;

use super::keys::{KeySet, VerifyKey, kid_label};
use super::token::{Reserved, Rules, Token, unix_now};
use super::{AuthFailure, LocalIssuerConfig, install_crypto_provider};
use crate::{Error, Identity, Result};

/// File name of the local issuer's signing key inside the data directory.
pub const LOCAL_ISSUER_KEY_FILE: &str = "local-issuer.pk8";

/// The longest lifetime [`LocalIssuer::mint`] gives a token: a leaked token
/// must expire some day.
pub const MAX_LOCAL_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Clock skew tolerated on local tokens (gateways sharing a data directory
/// may run on different hosts).
const LOCAL_LEEWAY_SECS: u64 = 30;

/// The gateway's own token issuer. Its ed25519 key lives in the data
/// directory; tokens it mints are verified with that key directly, without
/// any network access.
pub struct LocalIssuer {
    config: LocalIssuerConfig,
    signing: EncodingKey,
    public: [u8; 32],
    kid: String,
    keys: KeySet,
    rules: Rules,
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// What its subjects and groups must keep clear of: the other trusted
    /// issuers' prefixes.
    pub(crate) fn reserve(&mut self, reserved: Reserved) {
        self.rules.reserved = reserved;
    }

    /// Loads the key from `data_dir`, creating it (mode 0600) on first use.
    /// Fails if the local issuer is disabled in `config`.
    pub fn load_or_create(data_dir: &Path, config: &LocalIssuerConfig) -> Result<Self> {
        if !config.enabled {
            return Err(Error::Config(
                "the local issuer is disabled ([identity.local] enabled = false); enable it to mint tokens with `airlock token`".into(),
            ));
        }
        config.validate()?;
        install_crypto_provider();
        let path = data_dir.join(LOCAL_ISSUER_KEY_FILE);
        let pkcs8 = crate::keyfile::load_or_create(&path, || {
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map(|doc| doc.as_ref().to_vec())
                .map_err(|_| Error::Internal("cannot generate an ed25519 key".into()))
        })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| {
            Error::Config(format!(
                "{} is not an ed25519 PKCS#8 key ({e}); restore it from backup, or delete it to create a new one (tokens minted with the old key then stop working)",
                path.display()
            ))
        })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        let kid = thumbprint(&public);
        let keys = KeySet::single(VerifyKey {
            kid: Some(kid.clone()),
            algorithms: vec![Algorithm::EdDSA],
            key: DecodingKey::from_ed_der(&public),
        });
        let rules = Rules {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: LOCAL_LEEWAY_SECS,
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            groups_prefix: String::new(),
            subject_prefix: String::new(),
            reserved: Default::default(),
        };
        Ok(LocalIssuer {
            config: config.clone(),
            signing: EncodingKey::from_ed_der(&pkcs8),
            public,
            kid,
            keys,
            rules,
        })
    }

    /// The issuer name its tokens carry in `iss`.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The key id (`kid`): the key's RFC 7638 thumbprint.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mints a token for `subject` in `groups`, valid for `ttl` (at most
    /// [`MAX_LOCAL_TOKEN_TTL`]). It carries `iss`, `aud`, `sub`, `groups`,
    /// `iat`, `nbf`, `exp` and a unique `jti`, signed EdDSA.
    pub fn mint(&self, subject: &str, groups: &[String], ttl: Duration) -> Result<String> {
        if subject.trim().is_empty() {
            return Err(Error::Client(
                "cannot mint a token: the subject is empty; name the person or machine the token is for".into(),
            ));
        }
        if let Some(bad) = groups
            .iter()
            .find(|g| g.is_empty() || g.contains(|c: char| c == ',' || c.is_whitespace()))
        {
            return Err(Error::Client(format!(
                "cannot mint a token: group {bad:?} is empty or contains a space or comma; give group names without them"
            )));
        }
        if ttl.is_zero() || ttl > MAX_LOCAL_TOKEN_TTL {
            return Err(Error::Client(format!(
                "cannot mint a token valid for {} s: the lifetime must be between 1 s and {} days",
                ttl.as_secs(),
                MAX_LOCAL_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let now = unix_now();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = json!({
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl),
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing)
            .map_err(|e| Error::Internal(format!("cannot sign a local token: {e}")))
    }

    /// The public key as a JWKS document (`{"keys": [...]}`), for publishing
    /// so that other services can verify local tokens.
    pub fn jwks(&self) -> serde_json::Value {
        json!({ "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]})
    }

    /// Verifies a token that names this issuer.
    pub(crate) fn verify(&self, token: &Token<'_>) -> std::result::Result<Identity, AuthFailure> {
        let key = self
            .keys
            .find(token.kid.as_deref())
            .ok_or_else(|| AuthFailure::UnknownKey {
                issuer: self.config.issuer.clone(),
                kid: kid_label(token.kid.as_deref()),
            })?;
        token.verify(&key, &self.rules)
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: SHA-256 over the JWK's
/// required members in lexicographic order, base64url.
fn thumbprint(public: &[u8; 32]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::token::parse;

    fn issuer(dir: &Path) -> LocalIssuer {
        LocalIssuer::load_or_create(dir, &LocalIssuerConfig::default()).unwrap()
    }

    #[test]
    fn the_key_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = issuer(dir.path());
        let second = issuer(dir.path());
        assert_eq!(first.kid(), second.kid(), "the same key is loaded again");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(LOCAL_ISSUER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn minted_tokens_carry_the_documented_claims() {
        let dir = tempfile::tempdir().unwrap();
        let local = issuer(dir.path());
        let token = local
            .mint(
                "build-bot",
                &["ci".into(), "deploy".into()],
                Duration::from_secs(600),
            )
            .unwrap();
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.alg, "EdDSA");
        assert_eq!(parsed.kid.as_deref(), Some(local.kid()));
        let identity = local.verify(&parsed).unwrap();
        assert_eq!(identity.subject, "build-bot");
        assert_eq!(identity.groups, ["ci", "deploy"]);
        assert_eq!(identity.issuer, "airlock-local");

        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "airlock");
        let (iat, nbf, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["nbf"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!((nbf, exp - iat), (iat, 600));
        assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    }

    #[test]
    fn jwks_publishes_the_verifying_key() {
        let dir = tempfile::tempdir().unwrap();
        let local = issuer(dir.path());
        let jwks = local.jwks();
        let key = VerifyKey::from_jwk(&jwks["keys"][0], &[Algorithm::EdDSA]).unwrap();
        assert_eq!(key.kid.as_deref(), Some(local.kid()));
        let token = local.mint("a", &[], Duration::from_secs(60)).unwrap();
        let identity = parse(&token).unwrap().verify(&key, &local.rules).unwrap();
        assert_eq!(identity.subject, "a");
    }

    #[test]
    fn bad_mint_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let local = issuer(dir.path());
        assert!(local.mint(" ", &[], Duration::from_secs(60)).is_err());
        assert!(
            local
                .mint("a", &["two words".into()], Duration::from_secs(60))
                .is_err()
        );
        assert!(local.mint("a", &[], Duration::ZERO).is_err());
        assert!(local.mint("a", &[], MAX_LOCAL_TOKEN_TTL * 2).is_err());
        assert!(local.mint("a", &[], Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn a_disabled_or_corrupt_issuer_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalIssuerConfig {
            enabled: false,
            ..LocalIssuerConfig::default()
        };
        let err = LocalIssuer::load_or_create(dir.path(), &config).unwrap_err();
        assert!(err.to_string().contains("disabled"), "{err}");
        std::fs::write(dir.path().join(LOCAL_ISSUER_KEY_FILE), b"garbage").unwrap();
        let err =
            LocalIssuer::load_or_create(dir.path(), &LocalIssuerConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("not an ed25519 PKCS#8 key"),
            "{err}"
        );
    }
}
