//! Verification keys: what a JWK may verify, and an issuer's key set.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::token::shorten;

const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A public key and the algorithms it may verify.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    /// Taken from the key (its `alg`, else its type and curve) and narrowed
    /// by the issuer's allow-list; never from a token.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    /// `"k1"` or `(no kid)`, for messages.
    pub(crate) fn kid_label(&self) -> String {
        kid_label(self.kid.as_deref())
    }

    /// Reads one JWK. `Err` says why the key cannot be used to verify tokens
    /// (an encryption key, a symmetric key, an algorithm outside `allow` ...).
    pub(crate) fn from_jwk(value: &Value, allow: &[Algorithm]) -> Result<VerifyKey, String> {
        let jwk: Jwk = serde_json::from_value(value.clone())
            .map_err(|e| format!("it is not a JWK this gateway can read ({e})"))?;
        if let Some(usage) = &jwk.common.public_key_use
            && *usage != PublicKeyUse::Signature
        {
            return Err("it is not a signing key (its `use` is not \"sig\")".into());
        }
        if let Some(ops) = &jwk.common.key_operations
            && !ops.contains(&KeyOperations::Verify)
        {
            return Err("its `key_ops` do not include \"verify\"".into());
        }
        let by_type: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(params) => {
                let n = URL_SAFE_NO_PAD
                    .decode(&params.n)
                    .map_err(|_| "its RSA modulus is not base64url".to_string())?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(format!(
                        "its RSA modulus has about {bits} bits; at least 2048 are required"
                    ));
                }
                &RSA
            }
            AlgorithmParameters::EllipticCurve(params) => match params.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                ref curve => return Err(format!("its curve {curve:?} is not supported")),
            },
            AlgorithmParameters::OctetKeyPair(params) => match params.curve {
                EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
                ref curve => return Err(format!("its curve {curve:?} is not supported")),
            },
            AlgorithmParameters::OctetKey(_) => {
                return Err("it is a symmetric (oct) key; only public keys are trusted".into());
            }
            _ => return Err("its key type is not supported".into()),
        };
        let mut algorithms = match jwk.common.key_algorithm {
            Some(declared) => {
                let alg = Algorithm::try_from(declared)
                    .ok()
                    .filter(|a| by_type.contains(a))
                    .ok_or_else(|| {
                        format!("its alg {declared} cannot sign JWTs with this kind of key")
                    })?;
                vec![alg]
            }
            None => by_type.to_vec(),
        };
        algorithms.retain(|a| allow.contains(a));
        if algorithms.is_empty() {
            return Err("none of its algorithms is allowed for this issuer".into());
        }
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| format!("its key material is unusable ({e})"))?;
        if algorithms == [Algorithm::EdDSA] && key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err("its Ed25519 public key is not 32 bytes".into());
        }
        Ok(VerifyKey {
            kid: jwk.common.key_id,
            algorithms,
            key,
        })
    }
}

/// `"k1"` or `(no kid)`, for messages (a token's kid is attacker-chosen,
/// hence shortened).
pub(crate) fn kid_label(kid: Option<&str>) -> String {
    kid.map_or_else(|| "(no kid)".into(), |k| format!("{:?}", shorten(k)))
}

/// An issuer's usable keys, by `kid`.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// Reads a JWKS document (`{"keys": [...]}`). Keys that cannot verify
    /// tokens are skipped (and logged); a set without any usable key is an
    /// error, so that a broken document never replaces working keys.
    pub(crate) fn from_jwks(doc: &Value, allow: &[Algorithm]) -> Result<KeySet, String> {
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err("the JWKS document has no \"keys\" array".into());
        };
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for (i, value) in keys.iter().enumerate() {
            let label = value
                .get("kid")
                .and_then(Value::as_str)
                .map_or_else(|| format!("key #{i}"), |k| format!("key {k:?}"));
            match VerifyKey::from_jwk(value, allow) {
                Ok(key) => set.insert(key, &label),
                Err(why) => {
                    tracing::debug!("skipping JWKS {label}: {why}");
                    skipped.push(format!("{label}: {why}"));
                }
            }
        }
        if set.all.is_empty() {
            return Err(if skipped.is_empty() {
                "the JWKS document lists no keys".into()
            } else {
                format!(
                    "the JWKS document has no usable signing key ({})",
                    skipped.join("; ")
                )
            });
        }
        Ok(set)
    }

    /// A set of exactly one key (the local issuer's).
    pub(crate) fn single(key: VerifyKey) -> KeySet {
        let mut set = KeySet::default();
        set.insert(key, "local key");
        set
    }

    fn insert(&mut self, key: VerifyKey, label: &str) {
        let key = Arc::new(key);
        if let Some(kid) = &key.kid {
            if self.by_kid.contains_key(kid) {
                tracing::warn!("the JWKS lists {label} twice; using the first");
                return;
            }
            self.by_kid.insert(kid.clone(), key.clone());
        }
        self.all.push(key);
    }

    /// The key for a token's `kid`. A token without `kid`, or a set whose
    /// only key has none, can only be matched when there is one key.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        if let Some(kid) = kid
            && let Some(key) = self.by_kid.get(kid)
        {
            return Some(key.clone());
        }
        match &self.all[..] {
            [only] if kid.is_none() || only.kid.is_none() => Some(only.clone()),
            _ => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::config::ASYMMETRIC;
    use serde_json::json;

    fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": URL_SAFE_NO_PAD.encode([0xC5u8; 256]), "e": "AQAB",
        });
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    #[test]
    fn algorithms_come_from_the_key() {
        let key = VerifyKey::from_jwk(&rsa_jwk("a", Some("RS256")), &ASYMMETRIC).unwrap();
        assert_eq!(key.algorithms, [Algorithm::RS256]);
        let key = VerifyKey::from_jwk(&rsa_jwk("a", None), &ASYMMETRIC).unwrap();
        assert_eq!(key.algorithms, RSA);
        let key = VerifyKey::from_jwk(&rsa_jwk("a", None), &[Algorithm::PS256]).unwrap();
        assert_eq!(key.algorithms, [Algorithm::PS256]);
        let ec = json!({"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"});
        assert_eq!(
            VerifyKey::from_jwk(&ec, &ASYMMETRIC).unwrap().algorithms,
            [Algorithm::ES384]
        );
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32])});
        assert_eq!(
            VerifyKey::from_jwk(&ed, &ASYMMETRIC).unwrap().algorithms,
            [Algorithm::EdDSA]
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        for (jwk, why) in [
            (rsa_jwk("a", Some("HS256")), "cannot sign JWTs"),
            (rsa_jwk("a", Some("ES256")), "cannot sign JWTs"),
            (json!({"kty": "oct", "k": "c2VjcmV0"}), "symmetric"),
            (
                json!({"kty": "RSA", "use": "enc", "n": URL_SAFE_NO_PAD.encode([1u8; 256]), "e": "AQAB"}),
                "not a signing key",
            ),
            (
                json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([1u8; 128]), "e": "AQAB"}),
                "at least 2048",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
                "32 bytes",
            ),
        ] {
            let err = VerifyKey::from_jwk(&jwk, &ASYMMETRIC).unwrap_err();
            assert!(err.contains(why), "{jwk}: {err}");
        }
        let err =
            VerifyKey::from_jwk(&rsa_jwk("a", Some("RS256")), &[Algorithm::ES256]).unwrap_err();
        assert!(err.contains("allowed"), "{err}");
    }

    #[test]
    fn key_sets_skip_bad_keys_and_find_by_kid() {
        let doc = json!({ "keys": [
            rsa_jwk("a", Some("RS256")),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"},
            rsa_jwk("b", None),
        ]});
        let set = KeySet::from_jwks(&doc, &ASYMMETRIC).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.find(Some("b")).unwrap().kid.as_deref(), Some("b"));
        assert!(set.find(Some("hmac")).is_none());
        assert!(set.find(None).is_none(), "ambiguous without kid");

        let err = KeySet::from_jwks(&json!({"keys": [{"kty": "oct", "k": "AA"}]}), &ASYMMETRIC)
            .unwrap_err();
        assert!(err.contains("no usable signing key"), "{err}");
        assert!(KeySet::from_jwks(&json!({}), &ASYMMETRIC).is_err());
    }

    #[test]
    fn a_single_key_matches_tokens_without_kid() {
        let one = json!({ "keys": [rsa_jwk("a", None)] });
        let set = KeySet::from_jwks(&one, &ASYMMETRIC).unwrap();
        assert!(set.find(None).is_some());
        assert!(set.find(Some("other")).is_none());
    }
}
