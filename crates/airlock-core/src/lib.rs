//! # airlock-core
//!
//! The protocol-neutral heart of Airlock, the Layer 7 access gateway. It knows
//! policy, not protocols: connectors (the `airlock-postgres`, `airlock-ssh`,
//! ... crates) parse their wire protocol, turn client requests into
//! [`Operation`]s and ask a [`Session`] for a [`Decision`]; this crate verifies
//! identities ([`identity`]), evaluates grants and rules ([`policy`]), masks
//! sensitive data ([`mask`]) and writes every event durably into a
//! tamper-evident hash chain ([`audit`], [`recorder`]) before the connector
//! forwards anything.
//!
//! A connector implements [`Connector`]; the binary registers it in a
//! [`Registry`]. See `examples/src/bin/custom_connector.rs` in the
//! repository for a complete minimal connector.

pub mod approvals;
pub mod audit;
pub mod config;
pub mod connector;
mod error;
pub mod gateway;
pub mod identity;
mod keyfile;
pub mod mask;
mod model;
pub mod policy;
pub mod recorder;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use connector::{ClientStream, Connector, Registry};
pub use error::{Error, Result, Side};
pub use gateway::{Gateway, GatewayParts, PendingApproval, Session, TextMasker};
pub use keyfile::create_private_dir;
pub use model::*;
