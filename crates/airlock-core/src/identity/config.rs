//! `[identity]`: which token issuers the gateway trusts.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use crate::{Error, Result};

/// `[identity]` configuration: the trusted token issuers.
///
/// ```toml
/// [[identity.oidc]]
/// issuer = "https://idp.example.com/realms/acme"
/// audience = "airlock"
/// groups_claim = "realm_access.roles"
///
/// [identity.local]
/// enabled = true
/// issuer = "airlock-local"
/// audience = "airlock"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// OpenID Connect issuers whose access tokens are accepted. A token is
    /// checked against the issuer its `iss` claim names; tokens of any other
    /// issuer are refused.
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// The gateway's own issuer, which mints tokens with `airlock token`
    /// (for getting started and for machine identities).
    #[serde(default)]
    pub local: LocalIssuerConfig,
}

/// `[[identity.oidc]]`: one trusted OpenID Connect issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// The issuer identifier, exactly as its tokens carry it in `iss`, e.g.
    /// `"https://idp.example.com/realms/acme"`. Its signing keys are found
    /// through `<issuer>/.well-known/openid-configuration`. Must be `https`
    /// (plain `http` is allowed only for loopback addresses).
    pub issuer: String,
    /// The audience tokens must be issued for: their `aud` claim must be or
    /// contain this value. Usually the client id Airlock is registered with
    /// at the identity provider.
    pub audience: String,
    /// The claim holding the caller's groups. Dots walk into nested objects
    /// (`"realm_access.roles"`); a top-level claim whose name contains dots
    /// (`"https://example.com/groups"`) is found first. The claim may be an
    /// array of strings or one string of names separated by spaces or commas.
    /// A token without it has no groups. Default `"groups"`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Put before every group name from this issuer (`"corp:"` turns
    /// `"admins"` into `"corp:admins"`), so that groups of different issuers
    /// cannot be mistaken for each other. Default: no prefix.
    #[serde(default)]
    pub groups_prefix: String,
    /// Put before the subject of every token from this issuer
    /// (`"partner:"` turns `"svc-backup"` into `"partner:svc-backup"`), so
    /// that a subject of one issuer is never taken for the same name at
    /// another in grants, approvals and `require_user_match`. Default: no
    /// prefix.
    #[serde(default)]
    pub subject_prefix: String,
    /// The claim naming the caller, recorded as the session's subject
    /// (`"preferred_username"`, `"email"`, ...). Dots walk into nested
    /// objects. Default `"sub"`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Signature algorithms accepted from this issuer, e.g. `["RS256"]`.
    /// Default: all asymmetric ones (RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA). Each key the issuer publishes narrows
    /// this further to its own `alg`, or to what its type allows; the
    /// token's header never widens it. HMAC (`HS*`) and `none` are never
    /// accepted.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Fetch the signing keys (JWKS) from this URL instead of the one the
    /// discovery document names. Same `https` rule as `issuer`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds
    /// (at most 300). Default 30.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// At most one fetch of the issuer's keys per this many seconds. A token
    /// signed with an unknown key (`kid`) triggers a fetch, so this bounds
    /// what a flood of such tokens can cost; verifications arriving during a
    /// fetch wait for it instead of fetching again. Default 10.
    #[serde(default = "default_min_refresh_interval")]
    pub min_refresh_interval_secs: u64,
    /// Refetch the keys in the background once they are this many seconds
    /// old, so keys the issuer withdrew stop being trusted. If that fetch
    /// fails, the cached keys stay in use. Default 600.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
}

/// `[identity.local]`: the gateway's own token issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalIssuerConfig {
    /// Accept tokens minted by `airlock token`. Its ed25519 key is created
    /// in the data directory (`local-issuer.pk8`, mode 0600) on first use.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The `iss` of local tokens. Must differ from every OIDC issuer.
    /// Default `"airlock-local"`.
    #[serde(default = "default_local_issuer")]
    pub issuer: String,
    /// The `aud` of local tokens. Default `"airlock"`.
    #[serde(default = "default_audience")]
    pub audience: String,
}

impl Default for LocalIssuerConfig {
    fn default() -> Self {
        LocalIssuerConfig {
            enabled: true,
            issuer: default_local_issuer(),
            audience: default_audience(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_local_issuer() -> String {
    "airlock-local".into()
}
fn default_audience() -> String {
    "airlock".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_min_refresh_interval() -> u64 {
    10
}
fn default_jwks_max_age() -> u64 {
    600
}

/// The largest clock skew we tolerate: more would keep expired tokens alive.
const MAX_LEEWAY_SECS: u64 = 300;

/// Every asymmetric algorithm jsonwebtoken (and our ring provider) knows.
pub(crate) const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl OidcIssuerConfig {
    /// Where error messages point.
    fn place(&self) -> String {
        format!("[[identity.oidc]] issuer = {:?}", self.issuer)
    }

    /// Checks the settings that serde cannot and returns the algorithm
    /// allow-list.
    pub(crate) fn validate(&self) -> Result<Vec<Algorithm>> {
        let place = self.place();
        check_url(&self.issuer, "issuer", &place)?;
        if let Some(uri) = &self.jwks_uri {
            check_url(uri, "jwks_uri", &place)?;
        }
        if self.audience.trim().is_empty() {
            return Err(Error::Config(format!(
                "{place}: `audience` is empty; set it to the client id Airlock is registered with at the issuer"
            )));
        }
        for (key, value) in [
            ("groups_claim", &self.groups_claim),
            ("subject_claim", &self.subject_claim),
        ] {
            if value.trim().is_empty() || value.split('.').any(str::is_empty) {
                return Err(Error::Config(format!(
                    "{place}: `{key}` = {value:?} is not a claim name or a dotted path like \"realm_access.roles\""
                )));
            }
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(Error::Config(format!(
                "{place}: `leeway_secs` = {} is too large (at most {MAX_LEEWAY_SECS}); a large leeway keeps expired tokens valid — fix the clocks instead",
                self.leeway_secs
            )));
        }
        let Some(names) = &self.algorithms else {
            return Ok(ASYMMETRIC.to_vec());
        };
        let mut algorithms = Vec::new();
        for name in names {
            let alg = Algorithm::from_str(name)
                .ok()
                .filter(|a| ASYMMETRIC.contains(a));
            match alg {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => {}
                None => {
                    let why = match Algorithm::from_str(name).map(Algorithm::family) {
                        Ok(AlgorithmFamily::Hmac) => {
                            " (HMAC algorithms are never accepted: they would let anyone who knows the key mint tokens)"
                        }
                        _ if name.eq_ignore_ascii_case("none") => {
                            " (unsigned tokens are never accepted)"
                        }
                        _ => "",
                    };
                    return Err(Error::Config(format!(
                        "{place}: `algorithms` lists {name:?}, which is not allowed{why}; choose from {}",
                        names_of(&ASYMMETRIC)
                    )));
                }
            }
        }
        if algorithms.is_empty() {
            return Err(Error::Config(format!(
                "{place}: `algorithms` is empty, so no token could ever be accepted; remove the key to accept all asymmetric algorithms"
            )));
        }
        Ok(algorithms)
    }
}

impl IdentityConfig {
    /// Everything a [`crate::identity::Verifier`] checks of the
    /// configuration, without loading or creating a key (for `airlock
    /// check-config`).
    pub fn check(&self) -> Result<()> {
        check_unique(self)?;
        if self.local.enabled {
            self.local.validate()?;
        }
        for oidc in &self.oidc {
            oidc.validate()?;
        }
        Ok(())
    }
}

impl LocalIssuerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        for (key, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.trim().is_empty() {
                return Err(Error::Config(format!(
                    "[identity.local]: `{key}` is empty; remove it to use the default or give it a name"
                )));
            }
        }
        Ok(())
    }
}

/// Checks the issuer names are unique (an `iss` must pick one issuer).
pub(crate) fn check_unique(config: &IdentityConfig) -> Result<()> {
    let mut seen = BTreeSet::new();
    if config.local.enabled {
        seen.insert(config.local.issuer.as_str());
    }
    for oidc in &config.oidc {
        if !seen.insert(oidc.issuer.as_str()) {
            let other = if config.local.enabled && oidc.issuer == config.local.issuer {
                "the local issuer ([identity.local] issuer) has the same name; rename one of them"
            } else {
                "it is listed twice; merge the two entries"
            };
            return Err(Error::Config(format!("{}: {other}", oidc.place())));
        }
    }
    Ok(())
}

/// Warns of trusted issuers whose subjects share a namespace: a token of
/// one naming `svc-backup` would be taken for the `svc-backup` of the
/// other (grants by subject, approvals, `require_user_match`).
pub(crate) fn warn_shared_subjects(config: &IdentityConfig) {
    let mut by_prefix: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    if config.local.enabled {
        by_prefix.entry("").or_default().push(&config.local.issuer);
    }
    for oidc in &config.oidc {
        by_prefix
            .entry(&oidc.subject_prefix)
            .or_default()
            .push(&oidc.issuer);
    }
    for (prefix, issuers) in by_prefix.iter().filter(|(_, i)| i.len() > 1) {
        tracing::warn!(
            prefix = *prefix,
            issuers = issuers.join(", "),
            "these token issuers' subjects share a namespace: a subject from one is the same subject from the other in grants and approvals; give all but one a distinct [[identity.oidc]] subject_prefix (the local issuer's subjects carry none)"
        );
    }
}

/// `https`, or `http` to a loopback address (tests, an IdP on the same host).
fn check_url(url: &str, key: &str, place: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        Error::Config(format!(
            "{place}: `{key}` = {url:?} is not a URL ({e}); write it like \"https://idp.example.com/realms/acme\""
        ))
    })?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        scheme => Err(Error::Config(format!(
            "{place}: `{key}` = {url:?} uses {scheme}; signing keys must be fetched over https (http only for loopback addresses)"
        ))),
    }
}

/// "RS256, ES256" for messages.
pub(crate) fn names_of(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<IdentityConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_and_full_form_parse() {
        let cfg = parse("").unwrap();
        assert!(cfg.oidc.is_empty());
        assert!(cfg.local.enabled);
        assert_eq!(cfg.local.issuer, "airlock-local");
        assert_eq!(cfg.local.audience, "airlock");

        let cfg = parse(
            r#"
            [[oidc]]
            issuer = "https://idp.example.com/realms/x"
            audience = "airlock"
            groups_claim = "realm_access.roles"
            algorithms = ["RS256", "ES256"]
            leeway_secs = 5

            [local]
            enabled = false
            "#,
        )
        .unwrap();
        let oidc = &cfg.oidc[0];
        assert_eq!(oidc.groups_claim, "realm_access.roles");
        assert_eq!(oidc.subject_claim, "sub");
        assert_eq!(oidc.min_refresh_interval_secs, 10);
        assert_eq!(
            oidc.validate().unwrap(),
            vec![Algorithm::RS256, Algorithm::ES256]
        );
        assert!(!cfg.local.enabled);
        check_unique(&cfg).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            parse("[[oidc]]\nissuer = \"https://a\"\naudience = \"x\"\ngroup_claim = \"g\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("group_claim"), "{err}");
    }

    fn oidc(issuer: &str) -> OidcIssuerConfig {
        parse(&format!(
            "[[oidc]]\nissuer = {issuer:?}\naudience = \"airlock\"\n"
        ))
        .unwrap()
        .oidc
        .remove(0)
    }

    #[test]
    fn issuer_must_be_https_except_on_loopback() {
        oidc("https://idp.example.com").validate().unwrap();
        oidc("http://127.0.0.1:8080").validate().unwrap();
        oidc("http://localhost:8080/realms/x").validate().unwrap();
        oidc("http://[::1]:8080").validate().unwrap();
        let err = oidc("http://idp.example.com")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be fetched over https"), "{err}");
        let err = oidc("idp.example.com").validate().unwrap_err().to_string();
        assert!(err.contains("is not a URL"), "{err}");
    }

    #[test]
    fn hmac_and_none_cannot_be_allowed() {
        let mut cfg = oidc("https://idp.example.com");
        cfg.algorithms = Some(vec!["HS256".into()]);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("HMAC algorithms are never accepted"), "{err}");
        cfg.algorithms = Some(vec!["none".into()]);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("unsigned tokens are never accepted"), "{err}");
        cfg.algorithms = Some(vec![]);
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn oversized_leeway_and_bad_claim_paths_are_refused() {
        let mut cfg = oidc("https://idp.example.com");
        cfg.leeway_secs = 3600;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("leeway_secs")
        );
        let mut cfg = oidc("https://idp.example.com");
        cfg.groups_claim = "realm_access..roles".into();
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("groups_claim")
        );
    }

    #[test]
    fn issuer_names_must_be_unique() {
        let mut cfg = IdentityConfig::default();
        cfg.oidc.push(oidc("https://idp.example.com"));
        cfg.oidc.push(oidc("https://idp.example.com"));
        assert!(
            check_unique(&cfg)
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let mut cfg = IdentityConfig::default();
        let mut same = oidc("https://idp.example.com");
        same.issuer = "airlock-local".into();
        cfg.oidc.push(same);
        assert!(
            check_unique(&cfg)
                .unwrap_err()
                .to_string()
                .contains("local issuer")
        );
    }
}
