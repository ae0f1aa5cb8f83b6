//! # airlock
//!
//! The Airlock gateway binary's library half: assembling a running gateway
//! from a configuration ([`Runtime`]), and the connectors compiled in by Cargo
//! features ([`registry`]). `main.rs` is the command line on top of it; the
//! end-to-end tests start gateways through it too.

pub mod client;
#[cfg(feature = "demo")]
pub mod demo;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_core::approvals::webhook::WebhookNotifier;
use airlock_core::approvals::{Approvals, Notifier};
use airlock_core::audit::CheckpointSigner;
use airlock_core::config::{Config, Source};
use airlock_core::identity::Verifier;
use airlock_core::mask::MaskEngine;
use airlock_core::policy::Policy;
use airlock_core::recorder::{Recorder, RecorderOptions};
use airlock_core::{Gateway, GatewayParts, Registry};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The configuration used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Every connector this binary was built with, one line per Cargo feature.
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::new();
    #[cfg(feature = "postgres")]
    registry.add::<airlock_postgres::PostgresConnector>();
    #[cfg(feature = "ssh")]
    registry.add::<airlock_ssh::SshConnector>();
    #[cfg(feature = "kube")]
    registry.add::<airlock_kube::KubeConnector>();
    #[cfg(feature = "http")]
    registry.add::<airlock_http::HttpConnector>();
    registry
}

/// Loads a configuration: the file at `path`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Source)> {
    let source = match path {
        Some(p) => Source {
            path: p.to_path_buf(),
            text: std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
        },
        None => Source {
            path: PathBuf::from("<embedded default config>"),
            text: DEFAULT_CONFIG.to_string(),
        },
    };
    let config = Config::parse(&source)?;
    Ok((config, source))
}

/// Everything that is checked before a gateway starts: the config parses,
/// every listener and target is understood by a compiled-in connector,
/// policy, masking and identity settings compile. Does not touch the data
/// directory.
pub fn check(config: &Config, source: &Source, registry: &Registry) -> anyhow::Result<Checked> {
    let built = registry.build(config, source)?;
    let policy = Policy::compile(
        &config.grants,
        &config.rules,
        &config.policy,
        &built.targets,
        source,
    )?;
    // Masking (its patterns, detectors and profiles) and identity (issuer
    // URLs, names, leeway): the key only shapes pseudonyms, so any will do
    // for the check, and no key file is read or made.
    MaskEngine::new(&config.masking, Vec::new(), [0; 32])?;
    config.identity.check()?;
    Ok(Checked { built, policy })
}

/// A configuration that passed [`check`].
#[derive(Debug)]
pub struct Checked {
    /// Listeners, targets and held secrets.
    pub built: airlock_core::connector::Built,
    /// The compiled policy.
    pub policy: Policy,
}

/// A running gateway: its listeners accept connections until [`Runtime::shutdown`].
pub struct Runtime {
    /// The gateway handle (what connectors receive).
    pub gateway: Gateway,
    /// The store the gateway records into.
    pub store: Arc<airlock_store::SledStore>,
    /// The listeners' actual addresses (useful with port 0), by listener name.
    pub addresses: Vec<(String, std::net::SocketAddr)>,
    /// The API listener's actual address, when `[api]` is configured.
    pub api: Option<std::net::SocketAddr>,
    recorder: Recorder,
    tasks: JoinSet<()>,
    workers: workers::Workers,
    connections: workers::Connections,
    writer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl Runtime {
    /// Checks the configuration, opens the store, starts the recorder and
    /// binds every listener.
    pub async fn start(
        config: &Config,
        source: &Source,
        registry: &Registry,
    ) -> anyhow::Result<Runtime> {
        airlock_core::identity::install_crypto_provider();
        let Checked { built, policy } = check(config, source, registry)?;
        let data_dir = &config.gateway.data_dir;
        let store = Arc::new(airlock_store::SledStore::open(data_dir).with_context(|| {
            format!(
                "cannot open the audit store in {} (is another gateway using it?)",
                data_dir.display()
            )
        })?);
        let signer = CheckpointSigner::load_or_create(data_dir)?;
        let (recorder, writer) = Recorder::start(
            store.clone(),
            signer,
            RecorderOptions {
                durability: config.gateway.durability,
                checkpoint_every: config.gateway.checkpoint_every.max(1),
                checkpoint_interval: Duration::from_secs(
                    config.gateway.checkpoint_interval_secs.max(1),
                ),
                ..RecorderOptions::default()
            },
        )
        .await?;
        let held: Vec<String> = built
            .held_secrets
            .iter()
            .map(|s| s.expose().to_string())
            .collect();
        let mask_key = airlock_core::mask::load_or_create_key(data_dir)?;
        let masking = MaskEngine::new(&config.masking, held, mask_key)?;
        let verifier = Verifier::new(&config.identity, data_dir)?;
        startup_warnings(config);
        // Bound before the approval service exists so approval links carry
        // the real port (the configured one may be 0).
        let api_socket = match &config.api {
            None => None,
            Some(api) => Some(
                TcpListener::bind(api.listen)
                    .await
                    .with_context(|| format!("[api]: cannot listen on {}", api.listen))?,
            ),
        };
        let api_tls = match &config.api {
            None => None,
            Some(api) => airlock_core::tls::optional_server_config(
                "[api]",
                api.tls_cert.as_deref(),
                api.tls_key.as_deref(),
                &[b"http/1.1"],
            )?,
        };
        let api_addr = api_socket.as_ref().map(|s| s.local_addr()).transpose()?;
        let approvals_url = match (&config.gateway.public_url, api_addr, &config.api) {
            (Some(url), _, _) => url.clone(),
            (None, Some(addr), Some(api)) => format!("{}://{addr}", api.scheme()),
            _ => public_url(config),
        };
        let notifier: Option<Arc<dyn Notifier>> = if config.approvals.webhooks.is_empty() {
            None
        } else {
            Some(WebhookNotifier::start(
                config.approvals.webhooks.clone(),
                recorder.clone(),
            )?)
        };
        let approvals = Approvals::new(
            store.clone(),
            recorder.clone(),
            notifier,
            approvals_url,
            &mask_key,
        )?;
        let gateway = Gateway::new(GatewayParts {
            verifier,
            policy,
            masking,
            recorder: recorder.clone(),
            targets: built.targets,
            approvals,
        });
        let mut tasks = JoinSet::new();
        let connections = workers::Connections::default();
        let (workers, addresses) = workers::Workers::start(
            built.listeners,
            config.gateway.workers,
            &gateway,
            &connections,
        )?;
        let api = match (api_socket, &config.api) {
            (Some(socket), Some(api)) => {
                let addr = socket.local_addr()?;
                let state = airlock_api::ApiState {
                    gateway: gateway.clone(),
                    store: store.clone(),
                    roles: airlock_api::Roles {
                        admins: api.admins.clone(),
                        approvers: api.approvers.clone(),
                        auditors: api.auditors.clone(),
                    },
                    audit_key: airlock_core::audit::public_key_in(data_dir)?,
                };
                tracing::info!(%addr, scheme = api.scheme(), "API listening");
                let limits = airlock_api::Limits {
                    max_connections: api.max_connections.max(1),
                    per_peer: api.max_connections_per_address.max(1),
                    ..airlock_api::Limits::default()
                };
                tasks.spawn(async move {
                    let app = airlock_api::router(state);
                    if let Err(e) = airlock_api::serve_with(socket, app, api_tls, limits).await {
                        tracing::error!(error = %e, "the API server stopped");
                    }
                });
                Some(addr)
            }
            _ => None,
        };
        Ok(Runtime {
            gateway,
            store,
            addresses,
            api,
            recorder,
            tasks,
            workers,
            connections,
            writer,
        })
    }

    /// The address of the listener called `name`.
    pub fn address(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stops accepting, seals the audit chain with a checkpoint and flushes the store.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.workers.stop_accepting();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // Sessions end (and record their end) before the recorder stops.
        self.connections.close().await;
        self.workers.join().await;
        self.recorder.shutdown().await?;
        let _ = self.writer.await;
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM (a service manager, `docker stop`): the
/// two ways a gateway is asked to stop, both of which must let it seal the
/// audit chain and stop what it started.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Where people reach the API: `gateway.public_url`, else the API listener.
pub fn public_url(config: &Config) -> String {
    match (&config.gateway.public_url, &config.api) {
        (Some(url), _) => url.clone(),
        (None, Some(api)) => format!("{}://{}", api.scheme(), api.listen),
        (None, None) => "http://127.0.0.1:8080".to_string(),
    }
}

/// Warns of places where access tokens cross a network in clear text: a
/// listener that accepts them without TLS, or the API (plain HTTP), on an
/// address other than loopback. A token read there opens every listener.
/// And of approval links that a client checking the API's certificate
/// would refuse.
fn startup_warnings(config: &Config) {
    for listener in &config.listeners {
        let l = listener.get_ref();
        let cleartext = l
            .options
            .get("allow_cleartext_without_tls")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        if cleartext && !l.listen.ip().is_loopback() {
            tracing::warn!(
                listener = %l.name,
                listen = %l.listen,
                "this listener accepts access tokens in clear text on an address other than loopback: anyone on the path can read them; configure tls_cert and tls_key, or listen on 127.0.0.1"
            );
        }
    }
    if let Some(api) = &config.api
        && !api.listen.ip().is_loopback()
        && !api.has_tls()
    {
        tracing::warn!(
            listen = %api.listen,
            "the API serves plain HTTP on an address other than loopback: bearer tokens (which also log in to the listeners) cross the network in clear; set tls_cert and tls_key in [api] (or put a TLS-terminating proxy in front of it), or listen on 127.0.0.1"
        );
    }
    if let Some(api) = &config.api
        && api.has_tls()
        && config.gateway.public_url.is_none()
    {
        tracing::warn!(
            listen = %api.listen,
            "approval links point at the API's listen address over https, which is not a name its certificate is likely to hold: set gateway.public_url to the API's URL as the certificate names it"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

    use std::sync::{Arc, Mutex};

    use super::*;

    /// The log lines `startup_warnings` writes for `toml`.
    fn warnings(toml: &str) -> String {
        let source = Source {
            path: "test.toml".into(),
            text: toml.to_string(),
        };
        let config = Config::parse(&source).unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Capture(out.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || startup_warnings(&config));
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Tokens in clear text off loopback are warned of; on loopback, or
    /// with TLS, they are not.
    #[test]
    fn cleartext_tokens_off_loopback_are_warned_of() {
        let config = |pg: &str, cleartext: bool, api: &str| {
            format!(
                "[api]\nlisten = \"{api}\"\n\n[[listeners]]\nname = \"pg\"\nprotocol = \"postgres\"\nlisten = \"{pg}\"\nallow_cleartext_without_tls = {cleartext}\n"
            )
        };
        let off = warnings(&config("192.0.2.10:5432", true, "192.0.2.10:8080"));
        assert!(off.contains("accepts access tokens in clear text"), "{off}");
        assert!(off.contains("the API serves plain HTTP"), "{off}");
        let https = config("192.0.2.10:5432", false, "192.0.2.10:8443").replace(
            "\n\n[[listeners]]",
            "\ntls_cert = \"api.crt\"\ntls_key = \"api.key\"\n\n[[listeners]]",
        );
        assert!(https.contains("tls_key"), "{https}");
        let links = warnings(&https);
        assert!(links.contains("set gateway.public_url"), "{links}");
        let https = format!("[gateway]\npublic_url = \"https://airlock.example:8443\"\n\n{https}");
        for quiet in [
            config("127.0.0.1:5432", true, "127.0.0.1:8080"),
            config("192.0.2.10:5432", false, "[::1]:8080"),
            https,
        ] {
            assert_eq!(warnings(&quiet), "", "{quiet}");
        }
    }
}
