//! An OIDC issuer double: an HTTP server on `127.0.0.1` (random port) that
//! serves `/.well-known/openid-configuration` and its `jwks_uri` in the real
//! wire formats, and mints RS256 access tokens with test-only keys.
//!
//! Besides good tokens it forges the bad ones a verifier must refuse (`alg:
//! none`, HS256 keyed with the public key, unknown `kid`, tampered payloads),
//! rotates its signing key, counts JWKS fetches (so tests can check caching
//! and rate-limited refreshes) and can be stopped (so tests can check that
//! verification fails closed).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use airlock_testkit::oidc::OidcIssuer;
//! let issuer = OidcIssuer::start().await?;
//! let token = issuer.token("alice", &["dev"]);
//! // configure the verifier with issuer.issuer_url() and audience oidc::AUDIENCE
//! # let _ = token; Ok(()) }
//! ```
//!
//! The token encoding is written here on purpose (base64url JSON header and
//! claims, then the signature): the double must be able to produce tokens no
//! well-behaved JWT library would.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::{SecureRandom, SystemRandom};
use ring::rsa::PublicKeyComponents;
use ring::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The audience the double puts into its tokens (`aud`).
pub const AUDIENCE: &str = "airlock";

/// Path of the JWKS document the discovery document points to.
const JWKS_PATH: &str = "/jwks";

/// Test-only RSA keys (see `keys/README.md`): the initial signing key, the
/// key [`OidcIssuer::rotate`] switches to, and a key that is never published.
const KEY_FILES: [&[u8]; 3] = [
    include_bytes!("../keys/test-rsa-1.pk8.der"),
    include_bytes!("../keys/test-rsa-2.pk8.der"),
    include_bytes!("../keys/test-rsa-3.pk8.der"),
];
const UNPUBLISHED: usize = 2;

/// One RSA key of the double.
struct TestKey {
    kid: String,
    pair: RsaKeyPair,
}

impl TestKey {
    fn load(index: usize) -> anyhow::Result<Self> {
        let pair = RsaKeyPair::from_pkcs8(KEY_FILES[index])
            .map_err(|e| anyhow::anyhow!("test key {index} is not RSA PKCS#8: {e}"))?;
        Ok(TestKey {
            kid: format!("test-rsa-{}", index + 1),
            pair,
        })
    }

    /// The public key as a JWK, as an IdP publishes it.
    fn jwk(&self) -> Value {
        let c: PublicKeyComponents<Vec<u8>> = self.pair.public().into();
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&c.n),
            "e": URL_SAFE_NO_PAD.encode(&c.e),
        })
    }

    /// The public key in PKCS#1 DER (`RSAPublicKey`), the bytes an attacker
    /// would key an HMAC with.
    fn public_der(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    fn sign_rs256(&self, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0; self.pair.public().modulus_len()];
        // With a loaded key and a modulus-sized buffer only a broken system
        // RNG can fail this; the empty signature then makes every
        // verification of the token fail, which a test notices.
        match self
            .pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
        {
            Ok(()) => sig,
            Err(e) => {
                tracing::error!("the OIDC double could not sign a token: {e}");
                Vec::new()
            }
        }
    }
}

/// What the HTTP server and the minting side share.
struct Shared {
    url: String,
    keys: Vec<TestKey>,
    state: Mutex<State>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    /// Milliseconds the JWKS answer waits (a slow identity provider).
    jwks_delay_ms: std::sync::atomic::AtomicU64,
}

struct State {
    /// Indices into `keys` that the JWKS lists.
    published: Vec<usize>,
    /// Index into `keys` of the key new tokens are signed with.
    signing: usize,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread cannot leave `State` half-updated (every
        // update is a single assignment or push), so a poisoned lock is fine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .state()
            .published
            .iter()
            .map(|&i| self.keys[i].jwk())
            .collect();
        json!({ "keys": keys })
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}{JWKS_PATH}", self.url),
            "authorization_endpoint": format!("{}/authorize", self.url),
            "token_endpoint": format!("{}/token", self.url),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

/// The running issuer double. Dropping it stops the server.
pub struct OidcIssuer {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for OidcIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcIssuer")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

impl OidcIssuer {
    /// Starts the double on `127.0.0.1` with a random port. It publishes and
    /// signs with the first test key.
    pub async fn start() -> anyhow::Result<OidcIssuer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OIDC double")?;
        let url = format!("http://{}", listener.local_addr()?);
        let keys = (0..KEY_FILES.len())
            .map(TestKey::load)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            url,
            keys,
            state: Mutex::new(State {
                published: vec![0],
                signing: 0,
            }),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            jwks_delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let (shutdown, stop) = oneshot::channel();
        let server = tokio::spawn(serve(listener, shared.clone(), stop));
        Ok(OidcIssuer {
            shared,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// The issuer URL: the `iss` of its tokens and the base of discovery.
    pub fn issuer_url(&self) -> &str {
        &self.shared.url
    }

    /// The `kid` new tokens are signed with.
    pub fn current_kid(&self) -> String {
        let signing = self.shared.state().signing;
        self.shared.keys[signing].kid.clone()
    }

    /// How many times the JWKS document was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// The JWKS document as served.
    pub fn jwks(&self) -> Value {
        self.shared.jwks()
    }

    /// The claims of a good token: `iss`, `aud` ([`AUDIENCE`]), `sub`,
    /// `groups`, `iat`, `nbf`, `exp` (one hour from now) and `jti`.
    pub fn claims(&self, subject: &str, groups: &[&str]) -> Map<String, Value> {
        let now = now();
        let mut jti = [0u8; 16];
        // A failing system RNG only makes the jti less unique; tests do not rely on it.
        let _ = SystemRandom::new().fill(&mut jti);
        let claims = json!({
            "iss": self.shared.url,
            "aud": AUDIENCE,
            "sub": subject,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
        match claims {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// A valid RS256 token for `subject` in `groups`, good for one hour.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        self.token_with(subject, groups, |_| {})
    }

    /// A validly signed token whose claims `edit` changed (an `exp` in the
    /// past, another `aud`, a string `exp`, nested groups ...).
    pub fn token_with(
        &self,
        subject: &str,
        groups: &[&str],
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> String {
        self.token_with_header(subject, groups, |_| {}, edit)
    }

    /// A token signed RS256 with the current key whose header `edit_header`
    /// changed after the usual `alg`/`typ`/`kid` were set (the signature is
    /// still RS256 whatever the header now claims).
    pub fn token_with_header(
        &self,
        subject: &str,
        groups: &[&str],
        edit_header: impl FnOnce(&mut Map<String, Value>),
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> String {
        let signing = self.shared.state().signing;
        self.sign_with(signing, subject, groups, edit_header, edit)
    }

    /// A well-formed token signed by a key the issuer never published, with
    /// that key's own `kid`.
    pub fn token_signed_by_unpublished_key(&self, subject: &str, groups: &[&str]) -> String {
        self.sign_with(UNPUBLISHED, subject, groups, |_| {}, |_| {})
    }

    /// An unsigned token: header `{"alg":"none"}`, good claims, empty signature.
    pub fn forge_alg_none(&self, subject: &str, groups: &[&str]) -> String {
        let header = json!({ "alg": "none", "typ": "JWT" });
        let claims = Value::Object(self.claims(subject, groups));
        format!("{}.", signing_input(&header, &claims))
    }

    /// The key-confusion attack: header `alg: HS256` with the current key's
    /// `kid`, signed with HMAC-SHA256 keyed by the issuer's *public* key
    /// (PKCS#1 DER). A verifier that lets the header pick the algorithm
    /// accepts it.
    pub fn forge_hs256_with_public_key(&self, subject: &str, groups: &[&str]) -> String {
        let key = &self.shared.keys[self.shared.state().signing];
        let header = json!({ "alg": "HS256", "typ": "JWT", "kid": key.kid });
        let claims = Value::Object(self.claims(subject, groups));
        let input = signing_input(&header, &claims);
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.public_der());
        let tag = ring::hmac::sign(&hmac_key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// `token` with its payload replaced by the edited claims and the original
    /// signature kept: what an attacker who changes a token gets.
    pub fn tamper(
        token: &str,
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> anyhow::Result<String> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("not a three-part JWT");
        };
        let mut claims: Map<String, Value> =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
        edit(&mut claims);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
        Ok(format!("{header}.{payload}.{signature}"))
    }

    /// Publishes the next test key (keeping the old one published, as IdPs
    /// do during a rotation) and signs new tokens with it. Errors when the
    /// double has run out of keys to rotate to.
    pub fn rotate(&self) -> anyhow::Result<()> {
        let mut state = self.shared.state();
        let next = state.signing + 1;
        if next >= UNPUBLISHED {
            bail!("the OIDC double has no further key to rotate to");
        }
        state.published.push(next);
        state.signing = next;
        Ok(())
    }

    /// Withdraws every published key except the current signing key, as an
    /// IdP does at the end of a rotation (or after a key leaked).
    pub fn retire_previous_keys(&self) {
        let mut state = self.shared.state();
        let signing = state.signing;
        state.published.retain(|&i| i == signing);
    }

    /// Makes every JWKS answer wait `delay` (counted when asked).
    pub fn set_jwks_delay(&self, delay: std::time::Duration) {
        self.shared.jwks_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Stops the server: the listener is closed and open connections are
    /// dropped, so the issuer is unreachable from now on.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn sign_with(
        &self,
        key_index: usize,
        subject: &str,
        groups: &[&str],
        edit_header: impl FnOnce(&mut Map<String, Value>),
        edit: impl FnOnce(&mut Map<String, Value>),
    ) -> String {
        let key = &self.shared.keys[key_index];
        let mut header = Map::new();
        header.insert("alg".into(), "RS256".into());
        header.insert("typ".into(), "JWT".into());
        header.insert("kid".into(), key.kid.clone().into());
        edit_header(&mut header);
        let mut claims = self.claims(subject, groups);
        edit(&mut claims);
        let input = signing_input(&Value::Object(header), &Value::Object(claims));
        let signature = key.sign_rs256(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move {
                            // Counted when asked, answered after the delay.
                            let response = respond(&shared, &req);
                            if req.uri().path() == JWKS_PATH {
                                let ms = shared.jwks_delay_ms.load(Ordering::SeqCst);
                                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match (req.method(), req.uri().path()) {
        (&Method::GET, "/.well-known/openid-configuration") => {
            shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            shared.discovery()
        }
        (&Method::GET, JWKS_PATH) => {
            shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            shared.jwks()
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_discovery_and_jwks_over_http() {
        let issuer = OidcIssuer::start().await.unwrap();
        let addr = issuer
            .issuer_url()
            .trim_start_matches("http://")
            .to_string();
        let body = http_get(&addr, "/.well-known/openid-configuration").await;
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["issuer"], issuer.issuer_url());
        assert_eq!(doc["jwks_uri"], format!("{}/jwks", issuer.issuer_url()));
        let body = http_get(&addr, "/jwks").await;
        let jwks: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "test-rsa-1");
        assert_eq!(jwks["keys"][0]["kty"], "RSA");
        assert_eq!(issuer.jwks_fetches(), 1);
        assert_eq!(issuer.discovery_fetches(), 1);
    }

    #[tokio::test]
    async fn tokens_verify_with_the_published_key_and_rotation_switches_keys() {
        let issuer = OidcIssuer::start().await.unwrap();
        let token = issuer.token("alice", &["dev"]);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let jwk = &issuer.jwks()["keys"][0];
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let public = ring::signature::RsaPublicKeyComponents { n: &n, e: &e };
        let message = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                message.as_bytes(),
                &sig,
            )
            .unwrap();

        issuer.rotate().unwrap();
        assert_eq!(issuer.current_kid(), "test-rsa-2");
        assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 2);
        assert!(
            issuer.rotate().is_err(),
            "the unpublished key stays unpublished"
        );
        issuer.retire_previous_keys();
        assert_eq!(issuer.jwks()["keys"][0]["kid"], "test-rsa-2");
        assert_eq!(issuer.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn stop_makes_the_issuer_unreachable() {
        let mut issuer = OidcIssuer::start().await.unwrap();
        let addr = issuer
            .issuer_url()
            .trim_start_matches("http://")
            .to_string();
        issuer.stop().await;
        assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
    }

    async fn http_get(addr: &str, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap()
    }
}
