//! # airlock-http
//!
//! The HTTP reverse-proxy connector: `curl` and any HTTP client connect through Airlock.
//!
//! **Status:** not yet implemented. The crate is registered by the gateway's
//! `http` Cargo feature so that the plugin can be filled in without touching
//! core or the binary; until then a configuration that defines a `http`
//! listener is refused at start-up with a clear message (tracked as a later issue).

use std::collections::BTreeMap;

use airlock_core::{ClientInfo, ClientStream, Connector, Error, Gateway, Result};
use async_trait::async_trait;
use serde::de::IgnoredAny;

/// The http connector. It cannot be constructed yet: [`Connector::new`]
/// refuses every configuration, so no listener of this protocol can start.
#[derive(Debug)]
pub struct HttpConnector {
    never: std::convert::Infallible,
}

#[async_trait]
impl Connector for HttpConnector {
    const PROTOCOL: &'static str = "http";
    type Listener = IgnoredAny;
    type Target = IgnoredAny;

    fn new(_listener: IgnoredAny, _targets: BTreeMap<String, IgnoredAny>) -> Result<Self> {
        Err(Error::Config(
            "the http connector is not available in this release yet (tracked as a later issue); remove this listener".into(),
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
