//! A trusted OpenID Connect issuer: discovery, the cached key set, and its
//! refresh policy.
//!
//! Keys are fetched lazily, at the first verification. A token whose `kid`
//! is not in the cache triggers a refresh, but at most one fetch runs per
//! issuer at a time (others wait for its result instead of fetching again)
//! and at most one starts per `min_refresh_interval_secs`, so a flood of
//! tokens with made-up `kid`s cannot turn the gateway into a load generator
//! against the IdP. Keys older than `jwks_max_age_secs` are refreshed in the
//! background while the cached ones keep serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::keys::{KeySet, VerifyKey, kid_label};
use super::token::{Reserved, Rules, Token};
use super::{AuthFailure, OidcIssuerConfig};
use crate::{Identity, Result};

/// Discovery and JWKS documents larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One trusted OIDC issuer.
#[derive(Debug)]
pub(crate) struct OidcIssuer {
    issuer: String,
    /// `jwks_uri` from the config, which skips discovery.
    configured_jwks_uri: Option<String>,
    algorithms: Vec<Algorithm>,
    rules: Rules,
    min_refresh_interval: Duration,
    max_age: Duration,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// Held while fetching: the single-flight lock. Holds the `jwks_uri`
    /// found by discovery, so that refreshes skip discovery.
    fetch: tokio::sync::Mutex<Option<String>>,
    background_refresh: AtomicBool,
}

#[derive(Debug, Default)]
struct Cache {
    keys: Arc<KeySet>,
    /// When the current keys were fetched.
    fetched_at: Option<Instant>,
    /// When the last fetch (successful or not) ended; the rate limit counts from here.
    attempted_at: Option<Instant>,
    /// Bumped after every fetch attempt, so that waiters can tell a fetch
    /// finished while they queued.
    generation: u64,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
}

impl OidcIssuer {
    pub(crate) fn new(
        config: &OidcIssuerConfig,
        http: reqwest::Client,
        reserved: Reserved,
    ) -> Result<OidcIssuer> {
        let algorithms = config.validate()?;
        Ok(OidcIssuer {
            issuer: config.issuer.clone(),
            configured_jwks_uri: config.jwks_uri.clone(),
            algorithms,
            rules: Rules {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs: config.leeway_secs,
                subject_claim: config.subject_claim.clone(),
                groups_claim: config.groups_claim.clone(),
                groups_prefix: config.groups_prefix.clone(),
                subject_prefix: config.subject_prefix.clone(),
                reserved,
            },
            min_refresh_interval: Duration::from_secs(config.min_refresh_interval_secs),
            max_age: Duration::from_secs(config.jwks_max_age_secs),
            http,
            cache: RwLock::new(Cache::default()),
            fetch: tokio::sync::Mutex::new(None),
            background_refresh: AtomicBool::new(false),
        })
    }

    /// Verifies a token whose `iss` names this issuer.
    pub(crate) async fn verify(
        self: &Arc<Self>,
        token: &Token<'_>,
    ) -> std::result::Result<Identity, AuthFailure> {
        let key = self.key_for(token.kid.as_deref()).await?;
        token.verify(&key, &self.rules)
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, Cache> {
        // Every write replaces whole fields, so a panic elsewhere cannot
        // leave the cache inconsistent: a poisoned lock is still usable.
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> std::result::Result<Arc<VerifyKey>, AuthFailure> {
        let (found, generation, stale) = {
            let cache = self.read_cache();
            // Old keys are refetched, but no more often than the rate limit
            // allows (a failed refetch leaves them old).
            let stale = cache
                .fetched_at
                .is_some_and(|t| t.elapsed() >= self.max_age)
                && cache
                    .attempted_at
                    .is_none_or(|t| t.elapsed() >= self.min_refresh_interval);
            (cache.keys.find(kid), cache.generation, stale)
        };
        if let Some(key) = found {
            if stale {
                self.refresh_in_background(generation);
            }
            return Ok(key);
        }

        // Unknown kid, or no keys yet: refresh (shared and rate-limited).
        self.refresh(generation).await;
        let cache = self.read_cache();
        if let Some(key) = cache.keys.find(kid) {
            return Ok(key);
        }
        if cache.keys.is_empty() {
            return Err(AuthFailure::IssuerUnreachable {
                issuer: self.issuer.clone(),
                reason: cache
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no keys fetched yet".into()),
            });
        }
        Err(AuthFailure::UnknownKey {
            issuer: self.issuer.clone(),
            kid: kid_label(kid),
        })
    }

    fn refresh_in_background(self: &Arc<Self>, generation: u64) {
        if self.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.background_refresh.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        runtime.spawn(async move {
            me.refresh_now(generation).await;
            me.background_refresh.store(false, Ordering::Release);
        });
    }

    /// [`Self::refresh_now`] in a task of its own, which the caller awaits:
    /// a caller that goes away mid-fetch (an API client closing its
    /// connection) would otherwise cancel the fetch before it is counted,
    /// and the next unknown `kid` would start another at once, past the
    /// rate limit.
    async fn refresh(self: &Arc<Self>, seen_generation: u64) {
        let me = self.clone();
        let _ = tokio::spawn(async move { me.refresh_now(seen_generation).await }).await;
    }

    /// Fetches the key set unless a fetch ended since the caller looked
    /// (`seen_generation`) or one ended less than the minimum interval ago.
    async fn refresh_now(&self, seen_generation: u64) {
        let mut discovered = self.fetch.lock().await;
        {
            let cache = self.read_cache();
            if cache.generation != seen_generation {
                return; // someone else fetched while we waited: use theirs
            }
            if cache
                .attempted_at
                .is_some_and(|t| t.elapsed() < self.min_refresh_interval)
            {
                return; // rate-limited
            }
        }
        let result = self.fetch_keys(&mut discovered).await;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cache.attempted_at = Some(now);
        cache.generation += 1;
        match result {
            Ok(keys) => {
                tracing::debug!(issuer = %self.issuer, keys = keys.len(), "fetched signing keys");
                cache.keys = Arc::new(keys);
                cache.fetched_at = Some(now);
                cache.last_error = None;
            }
            Err(reason) => {
                tracing::warn!(
                    issuer = %self.issuer,
                    cached_keys = cache.keys.len(),
                    "cannot fetch the issuer's signing keys: {reason}"
                );
                cache.last_error = Some(reason);
            }
        }
    }

    async fn fetch_keys(
        &self,
        discovered: &mut Option<String>,
    ) -> std::result::Result<KeySet, String> {
        let jwks_uri = match (&self.configured_jwks_uri, discovered.as_ref()) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = self.discover().await?;
                *discovered = Some(uri.clone());
                uri
            }
        };
        let result = self.get_json(&jwks_uri).await.and_then(|doc| {
            KeySet::from_jwks(&doc, &self.algorithms).map_err(|e| format!("{e} (at {jwks_uri})"))
        });
        if result.is_err() {
            // The IdP may have moved its keys: discover again next time.
            *discovered = None;
        }
        result
    }

    /// Reads `<issuer>/.well-known/openid-configuration` and returns its `jwks_uri`.
    async fn discover(&self) -> std::result::Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url).await?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name
        // exactly the issuer it was fetched for.
        match doc.get("issuer").and_then(Value::as_str) {
            Some(iss) if iss == self.issuer => {}
            Some(iss) => {
                return Err(format!(
                    "the discovery document at {url} names issuer {iss:?}; set `issuer` to exactly that value if it is the same issuer"
                ));
            }
            None => return Err(format!("the discovery document at {url} has no \"issuer\"")),
        }
        let Some(jwks_uri) = doc.get("jwks_uri").and_then(Value::as_str) else {
            return Err(format!(
                "the discovery document at {url} has no \"jwks_uri\""
            ));
        };
        let parsed = reqwest::Url::parse(jwks_uri)
            .map_err(|e| format!("the jwks_uri {jwks_uri:?} in {url} is not a URL ({e})"))?;
        let issuer_is_https = self.issuer.starts_with("https:");
        if issuer_is_https && parsed.scheme() != "https" {
            return Err(format!(
                "the jwks_uri {jwks_uri:?} in {url} is not https; keys are only fetched over https"
            ));
        }
        Ok(jwks_uri.to_string())
    }

    async fn get_json(&self, url: &str) -> std::result::Result<Value, String> {
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {}", chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered HTTP {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading {url} failed: {}", chain(&e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{url} sent more than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url} did not send JSON ({e})"))
    }
}

/// An error and its causes on one line: reqwest's own message alone rarely
/// says *why* ("error sending request").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
