//! # airlock-postgres
//!
//! The PostgreSQL wire-protocol connector: any unchanged Postgres client or driver connects through Airlock.
//!
//! **Status:** not yet implemented. The crate is registered by the gateway's
//! `postgres` Cargo feature so that the plugin can be filled in without touching
//! core or the binary; until then a configuration that defines a `postgres`
//! listener is refused at start-up with a clear message (tracked in issue #5).

pub mod classify;
use std::collections::BTreeMap;

use airlock_core::{ClientInfo, ClientStream, Connector, Error, Gateway, Result};
use async_trait::async_trait;
use serde::de::IgnoredAny;

/// The postgres connector. It cannot be constructed yet: [`Connector::new`]
/// refuses every configuration, so no listener of this protocol can start.
#[derive(Debug)]
pub struct PostgresConnector {
    never: std::convert::Infallible,
}

#[async_trait]
impl Connector for PostgresConnector {
    const PROTOCOL: &'static str = "postgres";
    type Listener = IgnoredAny;
    type Target = IgnoredAny;

    fn new(_listener: IgnoredAny, _targets: BTreeMap<String, IgnoredAny>) -> Result<Self> {
        Err(Error::Config(
            "the postgres connector is not available in this release yet (tracked in issue #5); remove this listener".into(),
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
