//! # airlock-store
//!
//! Implementations of [`airlock_core::store::Store`], where the gateway keeps
//! its audit chain and the session index derived from it.
//!
//! [`SledStore`] is the embedded default: an append-only log that makes every
//! record durable before the gateway forwards the action it describes, plus a
//! sled database, built from the log behind the acknowledgement, that indexes
//! the chain for search and replay.
//!
//! ```no_run
//! # async fn demo() -> airlock_core::Result<()> {
//! let store = airlock_store::SledStore::open(std::path::Path::new("airlock-data"))?;
//! # Ok(()) }
//! ```

mod error;
mod log;
mod sled_store;

pub use error::{Error, Result};
pub use sled_store::{SledStore, TornEnd};
