//! Why a token was refused.

/// Why a credential was refused. Each message says what is wrong with the
/// token and what the caller can do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The token is not a well-formed signed JWT (wrong number of parts,
    /// bad base64url, not JSON, an encrypted JWE, oversized ...).
    #[error(
        "the token is not a well-formed signed JWT: {0}; send the access token exactly as the issuer returned it"
    )]
    Malformed(String),

    /// The header says `alg: none`: the token is unsigned.
    #[error(
        "the token is unsigned (its header says alg \"none\"); only tokens signed by a trusted issuer are accepted — get a token from your issuer"
    )]
    AlgNone,

    /// The header names an algorithm the issuer's key may not be used with
    /// (for example HS256 "signed" with the issuer's RSA public key).
    #[error(
        "the token's header says it is signed with {alg:?}, but the key {kid} of issuer {issuer:?} may only be used with {allowed}; the token is forged or was not made for this key — get a new token, and if this keeps happening check `algorithms` for this issuer"
    )]
    AlgorithmNotAllowed {
        /// The issuer the token names.
        issuer: String,
        /// The `alg` in the token's header.
        alg: String,
        /// The key's id, quoted (or "(no kid)").
        kid: String,
        /// The algorithms the key allows, comma separated.
        allowed: String,
    },

    /// `exp` lies in the past (beyond the leeway).
    #[error(
        "the token expired at {expired_at} ({ago_secs} s ago); get a new token from your issuer"
    )]
    Expired {
        /// When it expired, RFC 3339.
        expired_at: String,
        /// How long ago.
        ago_secs: i64,
    },

    /// `nbf` lies in the future (beyond the leeway).
    #[error(
        "the token is not valid before {not_before} ({in_secs} s from now); wait, or check that the clocks of the issuer and the gateway agree"
    )]
    NotYetValid {
        /// Its `nbf`, RFC 3339.
        not_before: String,
        /// How far in the future.
        in_secs: i64,
    },

    /// The token's `iss` names no issuer this gateway trusts.
    #[error(
        "the token was issued by {issuer:?}, which this gateway does not trust (trusted: {trusted}); use a token from a trusted issuer, or add the issuer under [[identity.oidc]]"
    )]
    UntrustedIssuer {
        /// The token's `iss` (shortened if very long).
        issuer: String,
        /// The trusted issuers, comma separated.
        trusted: String,
    },

    /// The token's `aud` does not include the configured audience.
    #[error(
        "the token is for audience {found}, not {expected:?}; ask issuer {issuer:?} for a token for audience {expected:?} (the client id Airlock is registered with)"
    )]
    WrongAudience {
        /// The issuer.
        issuer: String,
        /// The audience this gateway expects.
        expected: String,
        /// The token's `aud`, as JSON.
        found: String,
    },

    /// The token's `kid` names no key the issuer publishes, even after the
    /// key set was fetched again.
    #[error(
        "the token was signed with key {kid} which issuer {issuer:?} does not publish (its current key set was checked); the token was signed by another key or by a retired one — get a new token from that issuer"
    )]
    UnknownKey {
        /// The issuer.
        issuer: String,
        /// The token's `kid`, quoted (or "(no kid)").
        kid: String,
    },

    /// The signature does not match the token's contents.
    #[error(
        "the token's signature does not match its contents for issuer {issuer:?}; it was altered after signing or signed by a different key — get a new token"
    )]
    BadSignature {
        /// The issuer.
        issuer: String,
    },

    /// The issuer's keys could not be fetched and none are cached: the
    /// gateway fails closed.
    #[error(
        "cannot fetch the signing keys of issuer {issuer:?} ({reason}) and none are cached, so the token was refused; check that the gateway can reach the issuer"
    )]
    IssuerUnreachable {
        /// The issuer.
        issuer: String,
        /// What went wrong.
        reason: String,
    },

    /// A claim Airlock requires is absent.
    #[error(
        "the token has no {claim:?} claim, which Airlock requires; ask your issuer for an access token that includes it"
    )]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },

    /// A claim is present with the wrong type or an unusable value.
    #[error("the token's {claim:?} claim {reason}, so the token was refused")]
    InvalidClaim {
        /// The claim's name.
        claim: String,
        /// What is wrong with it.
        reason: String,
    },
}
