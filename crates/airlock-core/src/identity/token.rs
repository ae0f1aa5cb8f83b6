//! Reading a compact JWS and checking it against one issuer's key and rules.
//!
//! The header and claims are parsed here before any key is involved, for two
//! reasons: the issuer (`iss`) and key (`kid`) must be known to find the key,
//! and refusals deserve precise errors (`alg: none`, a string `exp`, an
//! encrypted token) rather than "invalid token". The signature and the
//! standard claims are then checked by `jsonwebtoken`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::AuthFailure;
use super::config::names_of;
use super::keys::VerifyKey;
use crate::Identity;

/// Tokens longer than this are refused unread; real access tokens, even with
/// hundreds of groups, stay far below it.
pub(crate) const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A token whose header and claims have been read but not yet trusted.
#[derive(Debug)]
pub(crate) struct Token<'a> {
    /// The compact form, trimmed.
    raw: &'a str,
    /// The header's `alg`, as written.
    pub(crate) alg: String,
    /// The header's `kid`.
    pub(crate) kid: Option<String>,
    /// The claims (unverified until [`Token::verify`] succeeds).
    claims: Map<String, Value>,
    /// The `iss` claim.
    pub(crate) issuer: String,
}

/// What one issuer requires of its tokens.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) leeway_secs: u64,
    pub(crate) subject_claim: String,
    pub(crate) groups_claim: String,
    pub(crate) groups_prefix: String,
    pub(crate) subject_prefix: String,
    /// What a subject (or group) of this issuer must not start with, before
    /// its prefix is added: what another trusted issuer's prefix adds to
    /// this one's. With it, `partner:svc` from an issuer without a prefix
    /// would be the `svc` of the issuer whose prefix is `partner:`.
    pub(crate) reserved: Reserved,
}

/// Other issuers' prefixes, as they look from one issuer (see
/// [`Rules::reserved`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Reserved {
    pub(crate) subjects: Vec<String>,
    pub(crate) groups: Vec<String>,
}

impl Reserved {
    /// What `(subject_prefix, groups_prefix)` must keep clear of, given
    /// every trusted issuer's pair (its own among them).
    pub(crate) fn among(own: (&str, &str), all: &[(String, String)]) -> Reserved {
        let clear = |own: &str, theirs: &mut dyn Iterator<Item = &String>| {
            let mut v: Vec<String> = theirs
                .filter(|p| p.len() > own.len() && p.starts_with(own))
                .map(|p| p[own.len()..].to_string())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        Reserved {
            subjects: clear(own.0, &mut all.iter().map(|(s, _)| s)),
            groups: clear(own.1, &mut all.iter().map(|(_, g)| g)),
        }
    }
}

fn malformed(message: impl Into<String>) -> AuthFailure {
    AuthFailure::Malformed(message.into())
}

/// Reads a compact JWS: three base64url parts, a JSON header with a real
/// `alg`, JSON claims with a string `iss`, a numeric `exp` and, when
/// present, numeric `nbf`/`iat` and a string or string-array `aud`.
pub(crate) fn parse(raw: &str) -> Result<Token<'_>, AuthFailure> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(malformed("the token is empty"));
    }
    if raw.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "the token is {} bytes long, more than the {MAX_TOKEN_LEN} accepted",
            raw.len()
        )));
    }
    let parts: Vec<&str> = raw.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return Err(malformed(if parts.len() == 5 {
            "it has five parts, so it is an encrypted token (JWE); Airlock needs a signed access token (JWS)".to_string()
        } else {
            format!(
                "it has {} dot-separated parts instead of three (header.claims.signature)",
                parts.len()
            )
        }));
    };

    let header = decode_object(header, "header")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        Some(_) => return Err(malformed("the header's alg is not a string")),
        None => return Err(malformed("the header has no alg")),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthFailure::AlgNone);
    }
    // RFC 7515 4.1.11: extensions marked critical must be understood, and we
    // understand none.
    if header.contains_key("crit") {
        return Err(malformed(
            "the header marks extensions as critical (crit), which Airlock does not support",
        ));
    }
    let kid = match header.get("kid") {
        Some(Value::String(kid)) => Some(kid.clone()),
        None => None,
        Some(_) => return Err(malformed("the header's kid is not a string")),
    };

    let claims = decode_object(payload, "claims")?;
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(malformed("the signature is not base64url"));
    }
    // CVE-2026-25537: a wrongly typed exp/nbf must not count as absent.
    for name in ["exp", "nbf", "iat"] {
        numeric_date(&claims, name)?;
    }
    if numeric_date(&claims, "exp")?.is_none() {
        return Err(AuthFailure::MissingClaim {
            claim: "exp".into(),
        });
    }
    let issuer = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(other) => {
            return Err(AuthFailure::InvalidClaim {
                claim: "iss".into(),
                reason: format!("must be a string, but is {}", describe(other)),
            });
        }
        None => {
            return Err(AuthFailure::MissingClaim {
                claim: "iss".into(),
            });
        }
    };
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(other) => {
            return Err(AuthFailure::InvalidClaim {
                claim: "aud".into(),
                reason: format!(
                    "must be a string or an array of strings, but is {}",
                    describe(other)
                ),
            });
        }
    }
    Ok(Token {
        raw,
        alg,
        kid,
        claims,
        issuer,
    })
}

impl Token<'_> {
    /// Checks the signature with `key` and the claims against `rules`, and
    /// returns the identity the token names.
    pub(crate) fn verify(&self, key: &VerifyKey, rules: &Rules) -> Result<Identity, AuthFailure> {
        // The algorithm comes from the key; the header only has to agree.
        let Some(alg) = key
            .algorithms
            .iter()
            .copied()
            .find(|a| alg_name(*a) == self.alg)
        else {
            return Err(AuthFailure::AlgorithmNotAllowed {
                issuer: rules.issuer.clone(),
                alg: self.alg.clone(),
                kid: key.kid_label(),
                allowed: names_of(&key.algorithms),
            });
        };
        let mut validation = Validation::new(alg);
        validation.leeway = rules.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[&rules.issuer]);
        validation.set_audience(&[&rules.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<IgnoredAny>(self.raw, &key.key, &validation)
            .map_err(|e| self.explain(e.kind(), key, rules))?;

        Ok(Identity {
            subject: self.subject(rules)?,
            groups: self.groups(rules)?,
            issuer: rules.issuer.clone(),
        })
    }

    /// Turns jsonwebtoken's verdict into the failure the caller sees.
    fn explain(&self, kind: &ErrorKind, key: &VerifyKey, rules: &Rules) -> AuthFailure {
        let now = unix_now();
        match kind {
            ErrorKind::ExpiredSignature => {
                let exp = self.date("exp");
                AuthFailure::Expired {
                    expired_at: rfc3339(exp),
                    ago_secs: now - exp,
                }
            }
            ErrorKind::ImmatureSignature => {
                let nbf = self.date("nbf");
                AuthFailure::NotYetValid {
                    not_before: rfc3339(nbf),
                    in_secs: nbf - now,
                }
            }
            ErrorKind::InvalidAudience => AuthFailure::WrongAudience {
                issuer: rules.issuer.clone(),
                expected: rules.audience.clone(),
                found: self
                    .claims
                    .get("aud")
                    .map_or_else(|| "none".into(), Value::to_string),
            },
            ErrorKind::InvalidIssuer => AuthFailure::UntrustedIssuer {
                issuer: shorten(&self.issuer),
                trusted: rules.issuer.clone(),
            },
            ErrorKind::MissingRequiredClaim(claim) => AuthFailure::MissingClaim {
                claim: claim.clone(),
            },
            ErrorKind::InvalidClaimFormat(claim) => AuthFailure::InvalidClaim {
                claim: claim.clone(),
                reason: "is not a valid NumericDate (whole seconds since 1970, not negative)"
                    .into(),
            },
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName => AuthFailure::AlgorithmNotAllowed {
                issuer: rules.issuer.clone(),
                alg: self.alg.clone(),
                kid: key.kid_label(),
                allowed: names_of(&key.algorithms),
            },
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => malformed(kind_text(kind)),
            // A bad signature, or key material that cannot verify anything:
            // either way the token is not proven to come from the issuer.
            _ => AuthFailure::BadSignature {
                issuer: rules.issuer.clone(),
            },
        }
    }

    /// A NumericDate claim `parse` already checked; 0 if absent.
    fn date(&self, name: &str) -> i64 {
        numeric_date(&self.claims, name)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn subject(&self, rules: &Rules) -> Result<String, AuthFailure> {
        match claim_at(&self.claims, &rules.subject_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                if let Some(r) = rules
                    .reserved
                    .subjects
                    .iter()
                    .find(|r| s.starts_with(r.as_str()))
                {
                    return Err(AuthFailure::InvalidClaim {
                        claim: rules.subject_claim.clone(),
                        reason: format!(
                            "starts with {r:?}, which another trusted issuer's subjects carry as their prefix: it would be taken for one of them"
                        ),
                    });
                }
                Ok(format!("{}{s}", rules.subject_prefix))
            }
            None | Some(Value::Null) => Err(AuthFailure::MissingClaim {
                claim: rules.subject_claim.clone(),
            }),
            Some(other) => Err(AuthFailure::InvalidClaim {
                claim: rules.subject_claim.clone(),
                reason: format!(
                    "names the caller and must be a non-empty string, but is {}",
                    describe(other)
                ),
            }),
        }
    }

    fn groups(&self, rules: &Rules) -> Result<Vec<String>, AuthFailure> {
        let invalid = |what: &Value| AuthFailure::InvalidClaim {
            claim: rules.groups_claim.clone(),
            reason: format!(
                "holds the groups and must be an array of strings or one string separated by spaces or commas, but is {}",
                describe(what)
            ),
        };
        let names: Vec<&str> = match claim_at(&self.claims, &rules.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => s.split(|c: char| c == ',' || c.is_whitespace()).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().ok_or_else(|| invalid(item)))
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(invalid(other)),
        };
        let mut groups: Vec<String> = Vec::with_capacity(names.len());
        for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            if let Some(r) = rules
                .reserved
                .groups
                .iter()
                .find(|r| name.starts_with(r.as_str()))
            {
                return Err(AuthFailure::InvalidClaim {
                    claim: rules.groups_claim.clone(),
                    reason: format!(
                        "names the group {name:?}, which starts with {r:?}, what another trusted issuer's groups carry as their prefix: it would be taken for one of them"
                    ),
                });
            }
            let group = format!("{}{name}", rules.groups_prefix);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        Ok(groups)
    }
}

/// The claim at `path`: a top-level claim of that exact name, or else the
/// value reached by walking the dot-separated segments through objects.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let mut value = claims.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

/// A NumericDate claim: absent, or a JSON number (fractions are cut off).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthFailure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(
            n.as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .unwrap_or(i64::MAX),
        )),
        Some(other) => Err(AuthFailure::InvalidClaim {
            claim: name.into(),
            reason: format!(
                "must be a time in seconds since 1970 (a JSON number), but is {}",
                describe(other)
            ),
        }),
    }
}

/// The JWS name of an algorithm ("RS256", "EdDSA").
pub(crate) fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// "a string (\"9999\")" etc., for messages about claim types.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({:?})", shorten(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Attacker-chosen text in messages and logs stays short.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

fn kind_text(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::Base64(e) => format!("a part is not base64url ({e})"),
        ErrorKind::Json(e) => format!("a part is not the expected JSON ({e})"),
        ErrorKind::Utf8(e) => format!("a part is not UTF-8 ({e})"),
        _ => "it is not a compact JWS".into(),
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (seconds since 1970)"))
}

/// Base64url-decodes one part and reads it as a JSON object, refusing
/// duplicate member names: two `exp` members could be read differently by
/// different parsers, and we verify what everyone would read.
fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthFailure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(format!("the {what} is not base64url")))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = Strict::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| malformed(format!("the {what} is not JSON ({e})")))?;
    match value.0 {
        Value::Object(map) => Ok(map),
        _ => Err(malformed(format!("the {what} is not a JSON object"))),
    }
}

/// A JSON value read with duplicate object members refused.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom("a number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if members.contains_key(&name) {
                return Err(de::Error::custom(format_args!(
                    "member {:?} appears twice",
                    shorten(&name)
                )));
            }
            members.insert(name, value);
        }
        Ok(Strict(Value::Object(members)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    fn good_claims() -> Value {
        json!({ "iss": "https://idp", "aud": "airlock", "sub": "alice", "exp": unix_now() + 60 })
    }

    #[test]
    fn reads_alg_kid_and_issuer() {
        let raw = token(json!({"alg": "RS256", "kid": "k1"}), good_claims());
        let t = parse(&raw).unwrap();
        assert_eq!((t.alg.as_str(), t.kid.as_deref()), ("RS256", Some("k1")));
        assert_eq!(t.issuer, "https://idp");
    }

    #[test]
    fn shape_errors_are_malformed() {
        for (raw, needle) in [
            ("", "empty"),
            ("abc", "1 dot-separated parts"),
            ("a.b.c.d.e", "encrypted token (JWE)"),
            ("!!.e30.c2ln", "header is not base64url"),
            (
                &format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("[1]")),
                "not a JSON object",
            ),
            (
                &format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("{")),
                "not JSON",
            ),
        ] {
            let err = parse(raw).unwrap_err();
            assert!(
                matches!(&err, AuthFailure::Malformed(m) if m.contains(needle)),
                "{raw}: {err}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(parse(&long), Err(AuthFailure::Malformed(_))));
    }

    #[test]
    fn alg_none_in_any_case_is_refused() {
        for alg in ["none", "None", "NONE"] {
            let raw = token(json!({ "alg": alg }), good_claims());
            assert_eq!(parse(&raw).unwrap_err(), AuthFailure::AlgNone);
        }
    }

    #[test]
    fn duplicate_members_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let claims = URL_SAFE_NO_PAD
            .encode(r#"{"iss":"https://idp","exp":"later","exp":9999999999,"aud":"airlock"}"#);
        let err = parse(&format!("{header}.{claims}.c2ln")).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    #[test]
    fn ill_typed_time_claims_are_refused_not_ignored() {
        for name in ["exp", "nbf", "iat"] {
            for bad in [json!("9999999999"), json!(null), json!([1]), json!(true)] {
                let mut claims = good_claims();
                claims[name] = bad.clone();
                let err = parse(&token(json!({"alg": "RS256"}), claims)).unwrap_err();
                assert!(
                    matches!(&err, AuthFailure::InvalidClaim { claim, .. } if claim == name),
                    "{name}={bad}: {err}"
                );
            }
        }
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            parse(&token(json!({"alg": "RS256"}), claims)).unwrap_err(),
            AuthFailure::MissingClaim {
                claim: "exp".into()
            }
        );
        let mut claims = good_claims();
        claims["exp"] = json!(1.7e9);
        assert!(parse(&token(json!({"alg": "RS256"}), claims)).is_ok());
    }

    #[test]
    fn iss_and_aud_types_are_checked() {
        let mut claims = good_claims();
        claims["iss"] = json!(["https://idp"]);
        assert!(matches!(
            parse(&token(json!({"alg": "RS256"}), claims)),
            Err(AuthFailure::InvalidClaim { claim, .. }) if claim == "iss"
        ));
        let mut claims = good_claims();
        claims["aud"] = json!(["airlock", 7]);
        assert!(matches!(
            parse(&token(json!({"alg": "RS256"}), claims)),
            Err(AuthFailure::InvalidClaim { claim, .. }) if claim == "aud"
        ));
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("iss");
        assert!(matches!(
            parse(&token(json!({"alg": "RS256"}), claims)),
            Err(AuthFailure::MissingClaim { claim }) if claim == "iss"
        ));
    }

    #[test]
    fn crit_headers_are_refused() {
        let raw = token(
            json!({"alg": "RS256", "crit": ["b64"], "b64": false}),
            good_claims(),
        );
        assert!(matches!(parse(&raw), Err(AuthFailure::Malformed(m)) if m.contains("crit")));
    }

    fn rules(groups_claim: &str, prefix: &str) -> Rules {
        Rules {
            issuer: "https://idp".into(),
            audience: "airlock".into(),
            leeway_secs: 0,
            subject_claim: "sub".into(),
            groups_claim: groups_claim.into(),
            groups_prefix: prefix.into(),
            subject_prefix: String::new(),
            reserved: Reserved::default(),
        }
    }

    fn groups_of(claims: Value, rules: &Rules) -> Result<Vec<String>, AuthFailure> {
        let raw = token(json!({"alg": "RS256"}), claims);
        parse(&raw).unwrap().groups(rules)
    }

    #[test]
    fn groups_come_from_arrays_strings_and_nested_paths() {
        let mut claims = good_claims();
        claims["groups"] = json!(["dev", "ops", "dev"]);
        assert_eq!(
            groups_of(claims, &rules("groups", "")).unwrap(),
            ["dev", "ops"]
        );

        let mut claims = good_claims();
        claims["scope"] = json!("read  write,admin");
        assert_eq!(
            groups_of(claims, &rules("scope", "")).unwrap(),
            ["read", "write", "admin"]
        );

        let mut claims = good_claims();
        claims["realm_access"] = json!({ "roles": ["dba"] });
        assert_eq!(
            groups_of(claims, &rules("realm_access.roles", "kc:")).unwrap(),
            ["kc:dba"]
        );

        let mut claims = good_claims();
        claims["https://example.com/groups"] = json!(["a"]);
        assert_eq!(
            groups_of(claims, &rules("https://example.com/groups", "")).unwrap(),
            ["a"]
        );

        assert!(
            groups_of(good_claims(), &rules("groups", ""))
                .unwrap()
                .is_empty()
        );

        for bad in [json!([1, "a"]), json!({"a": 1}), json!(3)] {
            let mut claims = good_claims();
            claims["groups"] = bad;
            assert!(matches!(
                groups_of(claims, &rules("groups", "")),
                Err(AuthFailure::InvalidClaim { claim, .. }) if claim == "groups"
            ));
        }
    }

    #[test]
    fn subject_must_be_a_non_empty_string() {
        let raw = token(json!({"alg": "RS256"}), good_claims());
        assert_eq!(
            parse(&raw).unwrap().subject(&rules("groups", "")).unwrap(),
            "alice"
        );
        for (sub, missing) in [(json!(""), false), (json!(42), false), (json!(null), true)] {
            let mut claims = good_claims();
            claims["sub"] = sub;
            let raw = token(json!({"alg": "RS256"}), claims);
            let err = parse(&raw)
                .unwrap()
                .subject(&rules("groups", ""))
                .unwrap_err();
            if missing {
                assert!(matches!(err, AuthFailure::MissingClaim { .. }), "{err}");
            } else {
                assert!(matches!(err, AuthFailure::InvalidClaim { .. }), "{err}");
            }
        }
    }

    /// An issuer's subject prefix sets its subjects apart from another
    /// issuer's same names.
    #[test]
    fn the_subject_prefix_comes_before_the_subject() {
        let raw = token(json!({"alg": "RS256"}), good_claims());
        let mut partner = rules("groups", "");
        partner.subject_prefix = "partner:".into();
        let token = parse(&raw).unwrap();
        assert_eq!(token.subject(&partner).unwrap(), "partner:alice");
        assert_eq!(token.subject(&rules("groups", "")).unwrap(), "alice");
    }

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        let s = "é".repeat(150);
        let short = shorten(&s);
        assert!(short.ends_with("...") && short.chars().count() == 103);
        assert_eq!(shorten("abc"), "abc");
    }
}
