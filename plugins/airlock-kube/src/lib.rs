//! # airlock-kube
//!
//! The Kubernetes API connector: unchanged `kubectl` connects through Airlock.
//!
//! **Status:** not yet implemented. The crate is registered by the gateway's
//! `kube` Cargo feature so that the plugin can be filled in without touching
//! core or the binary; until then a configuration that defines a `kube`
//! listener is refused at start-up with a clear message (tracked as a later issue).

use std::collections::BTreeMap;

use airlock_core::{ClientInfo, ClientStream, Connector, Error, Gateway, Result};
use async_trait::async_trait;
use serde::de::IgnoredAny;

/// The kube connector. It cannot be constructed yet: [`Connector::new`]
/// refuses every configuration, so no listener of this protocol can start.
#[derive(Debug)]
pub struct KubeConnector {
    never: std::convert::Infallible,
}

#[async_trait]
impl Connector for KubeConnector {
    const PROTOCOL: &'static str = "kube";
    type Listener = IgnoredAny;
    type Target = IgnoredAny;

    fn new(_listener: IgnoredAny, _targets: BTreeMap<String, IgnoredAny>) -> Result<Self> {
        Err(Error::Config(
            "the kube connector is not available in this release yet (tracked as a later issue); remove this listener".into(),
        ))
    }

    async fn serve(
        &self,
        _client: ClientStream,
        _info: ClientInfo,
        _gateway: Gateway,
    ) -> Result<()> {
        match self.never {}
    }
}
