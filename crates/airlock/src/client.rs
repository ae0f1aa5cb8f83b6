//! A small client for the gateway's REST API, used by the CLI's `approvals`
//! commands and by `sessions`/`replay --api`.

use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Talks to one gateway's API with one token.
#[derive(Debug)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base` (e.g. `https://airlock.example:8443`),
    /// trusting only the CA certificate in `ca` (PEM) if one is given.
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> anyhow::Result<ApiClient> {
        let Some(token) = token else {
            bail!(
                "the API needs a token: pass --token or set AIRLOCK_TOKEN (mint one with `airlock token`)"
            );
        };
        airlock_core::identity::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).with_context(|| {
                format!("cannot read the API's CA certificate {}", ca.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate file", ca.display()))?;
            if certs.is_empty() {
                bail!("{} holds no certificate", ca.display());
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// GET `path` and decode the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// POST `body` to `path` and decode the JSON answer.
    pub async fn post<T: DeserializeOwned, B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(request).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| {
                let hint = if self.base.starts_with("https://") {
                    " (if its certificate is self-signed or from a private CA, pass that certificate with --api-ca)"
                } else {
                    ""
                };
                format!("cannot reach the Airlock API at {}{hint}", self.base)
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("the API's answer was cut off")?;
        if !status.is_success() {
            if let Ok(body) = serde_json::from_slice::<airlock_api::ErrorBody>(&bytes) {
                bail!(
                    "{} ({}, HTTP {})",
                    body.error.message,
                    body.error.code,
                    status.as_u16()
                );
            }
            bail!(
                "the API answered HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes)
            .context("the API's answer is not what this CLI expects (version mismatch?)")
    }
}
