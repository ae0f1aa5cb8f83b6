//! The plugin interface: what a protocol connector implements, and the
//! registry the binary fills with the connectors compiled in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{Config, Secret, Source, connector_options};
use crate::{ClientInfo, Error, Gateway, Result};

/// A client's byte stream (a TCP connection, or an in-memory pipe in tests).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// A boxed client stream.
pub type ClientStream = Box<dyn ClientIo>;

/// A protocol plugin: speaks one wire protocol to clients and targets, and
/// asks the [`Gateway`] and its [`crate::Session`]s about everything else.
///
/// The binary registers each compiled-in connector with
/// [`Registry::add`]. For every `[[listeners]]` entry whose `protocol` is
/// [`Connector::PROTOCOL`], the registry deserializes the listener's own keys
/// into [`Connector::Listener`] and every target of that protocol into
/// [`Connector::Target`], and calls [`Connector::new`].
#[async_trait]
pub trait Connector: Sized + Send + Sync + 'static {
    /// The `protocol` value that selects this connector in config ("postgres").
    const PROTOCOL: &'static str;

    /// The connector's listener options (the listener table minus `name`,
    /// `protocol`, `listen`). Use `#[serde(deny_unknown_fields)]`; the field
    /// docs are the user's reference.
    type Listener: DeserializeOwned + Send + Sync;

    /// The connector's target options (the target table minus `protocol`,
    /// `description`). Use `#[serde(deny_unknown_fields)]`.
    type Target: DeserializeOwned + Send + Sync;

    /// Called once per listener when the configuration is loaded, with all
    /// targets of this protocol. An error stops the gateway from starting and
    /// is shown to the operator with the listener's position in the file.
    fn new(listener: Self::Listener, targets: BTreeMap<String, Self::Target>) -> Result<Self>;

    /// The credentials this connector holds for its targets. Called once after
    /// [`Connector::new`]; every value is added to the masking dictionary so it
    /// can never leave the gateway or reach the audit store.
    fn held_secrets(&self) -> Vec<Secret> {
        Vec::new()
    }

    /// Serves one client connection, from the first byte to the close. Called
    /// on its own task for every accepted connection. The connector tells the
    /// client about refusals in its own protocol before returning; an `Err`
    /// is logged with the client's address and does not affect other sessions.
    async fn serve(&self, client: ClientStream, info: ClientInfo, gateway: Gateway) -> Result<()>;
}

/// A connector instance behind a trait object.
#[async_trait]
pub trait Serve: Send + Sync {
    /// See [`Connector::serve`].
    async fn serve(&self, client: ClientStream, info: ClientInfo, gateway: Gateway) -> Result<()>;
}

#[async_trait]
impl<C: Connector> Serve for C {
    async fn serve(&self, client: ClientStream, info: ClientInfo, gateway: Gateway) -> Result<()> {
        Connector::serve(self, client, info, gateway).await
    }
}

/// A configured listener, ready to accept connections.
#[derive(Clone)]
pub struct BoundListener {
    /// Its name.
    pub name: String,
    /// Its protocol.
    pub protocol: &'static str,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The connector instance that serves it.
    pub connector: Arc<dyn Serve>,
}

impl std::fmt::Debug for BoundListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundListener")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("listen", &self.listen)
            .finish()
    }
}

/// What the registry built from a configuration.
#[derive(Debug, Default)]
pub struct Built {
    /// One per `[[listeners]]` entry.
    pub listeners: Vec<BoundListener>,
    /// Every credential the connectors hold (for the masking dictionary).
    pub held_secrets: Vec<Secret>,
    /// Target name to protocol, for grants and sessions.
    pub targets: BTreeMap<String, String>,
}

type BuildFn = dyn Fn(&Config, &Source) -> Result<(Vec<BoundListener>, Vec<Secret>)> + Send + Sync;

/// The connectors compiled into this binary.
#[derive(Default)]
pub struct Registry {
    builders: BTreeMap<&'static str, Box<BuildFn>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.builders.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers connector `C` under [`Connector::PROTOCOL`].
    pub fn add<C: Connector>(&mut self) -> &mut Self {
        self.builders.insert(C::PROTOCOL, Box::new(build::<C>));
        self
    }

    /// The protocols registered, sorted.
    pub fn protocols(&self) -> Vec<&'static str> {
        self.builders.keys().copied().collect()
    }

    /// Builds every listener and checks every target of the configuration.
    pub fn build(&self, config: &Config, source: &Source) -> Result<Built> {
        let mut built = Built::default();
        for (name, target) in &config.targets {
            let protocol = &target.get_ref().protocol;
            self.require(
                protocol,
                &source.at(target.span()),
                &format!("target {name:?}"),
            )?;
            built.targets.insert(name.clone(), protocol.clone());
        }
        for listener in &config.listeners {
            let l = listener.get_ref();
            self.require(
                &l.protocol,
                &source.at(listener.span()),
                &format!("listener {:?}", l.name),
            )?;
        }
        for builder in self.builders.values() {
            let (listeners, secrets) = builder(config, source)?;
            built.listeners.extend(listeners);
            built.held_secrets.extend(secrets);
        }
        Ok(built)
    }

    fn require(&self, protocol: &str, at: &str, what: &str) -> Result<()> {
        if self.builders.contains_key(protocol) {
            return Ok(());
        }
        let compiled = self.protocols().join(", ");
        Err(Error::Config(format!(
            "{at}: {what} uses protocol {protocol:?}, which this gateway was not built with (built with: {}); rebuild with `--features {protocol}` or remove it",
            if compiled.is_empty() {
                "none"
            } else {
                &compiled
            }
        )))
    }
}

fn build<C: Connector>(
    config: &Config,
    source: &Source,
) -> Result<(Vec<BoundListener>, Vec<Secret>)> {
    // Targets are parsed once up front so that a bad target is reported even
    // when no listener of its protocol is configured.
    let parse_targets = || -> Result<BTreeMap<String, C::Target>> {
        let mut targets = BTreeMap::new();
        for (name, target) in &config.targets {
            if target.get_ref().protocol != C::PROTOCOL {
                continue;
            }
            let at = source.at(target.span());
            let t = connector_options(&target.get_ref().options, &format!("targets.{name}"), &at)?;
            targets.insert(name.clone(), t);
        }
        Ok(targets)
    };
    parse_targets()?;
    let mut listeners = Vec::new();
    let mut secrets = Vec::new();
    for listener in &config.listeners {
        let l = listener.get_ref();
        if l.protocol != C::PROTOCOL {
            continue;
        }
        let at = source.at(listener.span());
        let options: C::Listener =
            connector_options(&l.options, &format!("listener {:?}", l.name), &at)?;
        let connector = C::new(options, parse_targets()?)
            .map_err(|e| Error::Config(format!("{at}: listener {:?}: {e}", l.name)))?;
        secrets.extend(connector.held_secrets());
        listeners.push(BoundListener {
            name: l.name.clone(),
            protocol: C::PROTOCOL,
            listen: l.listen,
            connector: Arc::new(connector),
        });
    }
    Ok((listeners, secrets))
}
