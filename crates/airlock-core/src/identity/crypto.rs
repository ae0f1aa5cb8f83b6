//! jsonwebtoken's cryptography on `ring`, the one crypto backend of the
//! whole tree (rustls uses it too).
//!
//! jsonwebtoken 11 leaves the choice of backend to the application through
//! [`CryptoProvider`]; this module is ours. Verification covers every
//! asymmetric JWS algorithm ring implements; HMAC is refused outright,
//! because Airlock only ever verifies with an issuer's public keys.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error as JwtError, ErrorKind, Result as JwtResult, new_error};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{
    self as rs, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey,
};

/// The provider: jsonwebtoken calls these to sign and verify.
static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Installs the process-wide crypto providers: ours for jsonwebtoken, and
/// ring's for rustls (which the HTTP client that fetches signing keys uses).
///
/// Idempotent and cheap after the first call; [`Verifier::new`] and
/// [`LocalIssuer::load_or_create`] call it, so most code never needs to.
/// If another provider was installed first, that one stays.
///
/// [`Verifier::new`]: super::Verifier::new
/// [`LocalIssuer::load_or_create`]: super::LocalIssuer::load_or_create
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if RING_PROVIDER.install_default().is_err() {
            tracing::debug!("a jsonwebtoken crypto provider was already installed; keeping it");
        }
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            tracing::debug!("a rustls crypto provider was already installed; keeping it");
        }
    });
}

fn provider_error(message: impl Into<String>) -> JwtError {
    new_error(ErrorKind::Provider(message.into()))
}

/// RSA verification parameters, or `None` for non-RSA algorithms.
fn rsa_params(alg: Algorithm) -> Option<&'static rs::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// What a verifier checks against.
enum PublicKey {
    /// RSA from a JWK's `n` and `e`.
    RsaComponents {
        params: &'static rs::RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Encoded public key bytes ring parses itself: PKCS#1 DER for RSA, an
    /// uncompressed point for ECDSA, 32 bytes for Ed25519.
    Encoded {
        params: &'static dyn rs::VerificationAlgorithm,
        bytes: Vec<u8>,
    },
}

struct RingVerifier {
    alg: Algorithm,
    key: PublicKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match &self.key {
            PublicKey::RsaComponents { params, n, e } => {
                rs::RsaPublicKeyComponents { n, e }.verify(params, message, sig)
            }
            PublicKey::Encoded { params, bytes } => {
                UnparsedPublicKey::new(*params, bytes).verify(message, sig)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    let alg = *alg;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(provider_error(
            "HMAC tokens are never verified: Airlock trusts only issuers' public keys",
        ));
    }
    // The classic confusion: a key of one family used with another family's
    // algorithm. Callers pick the algorithm from the key, but check anyway.
    if key.family() != alg.family() {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    let key = match (rsa_params(alg), key.kind()) {
        (Some(params), DecodingKeyKind::RsaModulusExponent { n, e }) => PublicKey::RsaComponents {
            params,
            n: n.clone(),
            e: e.clone(),
        },
        (Some(params), DecodingKeyKind::SecretOrDer(der)) => PublicKey::Encoded {
            params,
            bytes: der.clone(),
        },
        (None, DecodingKeyKind::SecretOrDer(bytes)) => {
            let params: &'static dyn rs::VerificationAlgorithm = match alg {
                Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
                Algorithm::EdDSA => &rs::ED25519,
                _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
            };
            PublicKey::Encoded {
                params,
                bytes: bytes.clone(),
            }
        }
        (None, DecodingKeyKind::RsaModulusExponent { .. }) => {
            return Err(new_error(ErrorKind::InvalidAlgorithm));
        }
    };
    Ok(Box::new(RingVerifier { alg, key }))
}

enum PrivateKey {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair, &'static dyn rs::RsaEncoding),
    Ecdsa(EcdsaKeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: PrivateKey,
}

impl signature::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let rng = SystemRandom::new();
        match &self.key {
            PrivateKey::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            PrivateKey::Rsa(pair, padding) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &rng, message, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
            PrivateKey::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_key_pair(der: &[u8]) -> JwtResult<RsaKeyPair> {
    RsaKeyPair::from_pkcs8(der)
        .or_else(|_| RsaKeyPair::from_der(der))
        .map_err(|e| new_error(ErrorKind::InvalidRsaKey(e.to_string())))
}

fn ecdsa_signing(alg: Algorithm) -> JwtResult<&'static rs::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Ok(&rs::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Ok(&rs::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    let alg = *alg;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(provider_error(
            "HMAC signing is not supported: Airlock signs tokens with asymmetric keys only",
        ));
    }
    if key.family() != alg.family() {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    let der = key.as_bytes();
    let key = match alg {
        Algorithm::EdDSA => PrivateKey::Ed25519(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?,
        ),
        Algorithm::ES256 | Algorithm::ES384 => PrivateKey::Ecdsa(
            EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg)?, der, &SystemRandom::new())
                .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?,
        ),
        _ => {
            let padding: &'static dyn rs::RsaEncoding = match alg {
                Algorithm::RS256 => &rs::RSA_PKCS1_SHA256,
                Algorithm::RS384 => &rs::RSA_PKCS1_SHA384,
                Algorithm::RS512 => &rs::RSA_PKCS1_SHA512,
                Algorithm::PS256 => &rs::RSA_PSS_SHA256,
                Algorithm::PS384 => &rs::RSA_PSS_SHA384,
                Algorithm::PS512 => &rs::RSA_PSS_SHA512,
                _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
            };
            PrivateKey::Rsa(rsa_key_pair(der)?, padding)
        }
    };
    Ok(Box::new(RingSigner { alg, key }))
}

fn rsa_pub_components_from_private_key(der: &[u8]) -> JwtResult<(Vec<u8>, Vec<u8>)> {
    let pair = rsa_key_pair(der)?;
    let c: PublicKeyComponents<Vec<u8>> = pair.public().into();
    Ok((c.n, c.e))
}

fn rsa_pub_components_from_public_key(_der: &[u8]) -> JwtResult<(Vec<u8>, Vec<u8>)> {
    // ring has no public parser for a bare RSAPublicKey; Airlock gets RSA
    // keys as JWK components, never as DER.
    Err(provider_error(
        "RSA public keys in DER form are not supported; use JWK components (n, e)",
    ))
}

fn ec_pub_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> JwtResult<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let pair = EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg)?, der, &SystemRandom::new())
        .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?;
    let (curve, len) = match alg {
        Algorithm::ES256 => (EllipticCurve::P256, 32),
        _ => (EllipticCurve::P384, 48),
    };
    // An uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    if point.len() != 1 + 2 * len || point[0] != 4 {
        return Err(new_error(ErrorKind::InvalidEcdsaKey));
    }
    let (x, y) = point[1..].split_at(len);
    Ok((curve, x.to_vec(), y.to_vec()))
}

fn ed_pub_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> JwtResult<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(new_error(ErrorKind::InvalidEddsaKey));
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> JwtResult<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(provider_error("unsupported thumbprint hash")),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};
    use serde_json::json;

    fn claims() -> serde_json::Value {
        json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 60 })
    }

    fn round_trip(alg: Algorithm, encoding: &EncodingKey, decoding: &DecodingKey) {
        let token = encode(&Header::new(alg), &claims(), encoding).unwrap();
        let mut validation = Validation::new(alg);
        validation.validate_aud = false;
        let data = decode::<serde_json::Value>(&token, decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        // The same token with one flipped signature bit is refused.
        let mut bad = token.into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let err = decode::<serde_json::Value>(&bad, decoding, &validation).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::InvalidSignature),
            "{alg:?}: {err:?}"
        );
    }

    #[test]
    fn eddsa_and_ecdsa_sign_and_verify() {
        install_crypto_provider();
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = Ed25519KeyPair::from_pkcs8(ed.as_ref())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(ed.as_ref()),
            &DecodingKey::from_ed_der(&public),
        );

        for (alg, signing) in [
            (Algorithm::ES256, &rs::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &rs::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let pk8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let (_, x, y) = ec_pub_components_from_private_key(pk8.as_ref(), alg).unwrap();
            let b64 = |b: &[u8]| {
                use base64::Engine;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            };
            round_trip(
                alg,
                &EncodingKey::from_ec_der(pk8.as_ref()),
                &DecodingKey::from_ec_components(&b64(&x), &b64(&y)).unwrap(),
            );
        }
    }

    #[test]
    fn rsa_pkcs1_and_pss_sign_and_verify() {
        install_crypto_provider();
        let pk8 = include_bytes!("../../../airlock-testkit/keys/test-rsa-1.pk8.der");
        let (n, e) = rsa_pub_components_from_private_key(pk8).unwrap();
        assert_eq!(n.len(), 256, "a 2048-bit modulus");
        let public = DecodingKey::from_rsa_raw_components(&n, &e);
        for alg in [
            Algorithm::RS256,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
        ] {
            round_trip(alg, &EncodingKey::from_rsa_der(pk8), &public);
        }
    }

    #[test]
    fn hmac_is_refused_in_both_directions() {
        install_crypto_provider();
        let key = EncodingKey::from_secret(b"secret");
        let err = encode(&Header::new(Algorithm::HS256), &claims(), &key).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Provider(_)), "{err:?}");
        // Hand-made HS256 token: the provider refuses to verify it at all.
        let token = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln";
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let err =
            decode::<serde_json::Value>(token, &DecodingKey::from_secret(b"secret"), &validation)
                .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Provider(_)), "{err:?}");
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        install_crypto_provider();
        let key = DecodingKey::from_ed_der(&[0u8; 32]);
        assert!(verifier_factory(&Algorithm::RS256, &key).is_err());
        let key = DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]);
        assert!(verifier_factory(&Algorithm::EdDSA, &key).is_err());
        assert!(verifier_factory(&Algorithm::RS256, &key).is_ok());
    }

    #[test]
    fn installing_twice_is_harmless() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
