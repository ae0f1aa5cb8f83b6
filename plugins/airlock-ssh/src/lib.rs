//! # airlock-ssh
//!
//! The SSH connector: unchanged `ssh`, `scp` and `sftp` connect through Airlock.
//!
//! **Status:** not yet implemented. The crate is registered by the gateway's
//! `ssh` Cargo feature so that the plugin can be filled in without touching
//! core or the binary; until then a configuration that defines a `ssh`
//! listener is refused at start-up with a clear message (tracked as a later issue).

use std::collections::BTreeMap;

use airlock_core::{ClientInfo, ClientStream, Connector, Error, Gateway, Result};
use async_trait::async_trait;
use serde::de::IgnoredAny;

/// The ssh connector. It cannot be constructed yet: [`Connector::new`]
/// refuses every configuration, so no listener of this protocol can start.
#[derive(Debug)]
pub struct SshConnector {
    never: std::convert::Infallible,
}

#[async_trait]
impl Connector for SshConnector {
    const PROTOCOL: &'static str = "ssh";
    type Listener = IgnoredAny;
    type Target = IgnoredAny;

    fn new(_listener: IgnoredAny, _targets: BTreeMap<String, IgnoredAny>) -> Result<Self> {
        Err(Error::Config(
            "the ssh connector is not available in this release yet (tracked as a later issue); remove this listener".into(),
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
