//! The core's one error type.

use crate::identity::AuthFailure;

/// Which side of the gateway an error comes from, so connectors can map it to
/// the right protocol-native error (a Postgres SQLSTATE, an HTTP status, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The client sent something wrong: a bad credential, a malformed message.
    Client,
    /// Policy refused the request (no grant, a deny rule, a denied review).
    Policy,
    /// The target refused or failed.
    Upstream,
    /// The gateway itself failed (audit store, configuration, a bug).
    Internal,
}

/// Everything that can go wrong in the core.
///
/// Messages are written for the person at the client: they say what happened
/// and, where there is something to do, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client's credential was refused; the reason says why.
    #[error("authentication failed: {0}")]
    Unauthenticated(#[from] AuthFailure),

    /// The identity may not use the target, or the target does not exist.
    #[error("{0}")]
    Forbidden(String),

    /// The configuration is invalid. The message names the place in the file.
    #[error("{0}")]
    Config(String),

    /// The audit store could not durably record; the action was refused.
    #[error(
        "the audit store could not record this action, so it was refused: {0} (the gateway fails closed; an operator must check the data directory)"
    )]
    Store(String),

    /// The client broke its protocol or sent something too large.
    #[error("{0}")]
    Client(String),

    /// The target refused or failed.
    #[error("{0}")]
    Upstream(String),

    /// A bug or an unexpected failure inside the gateway.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The side of the gateway this error comes from.
    pub fn side(&self) -> Side {
        match self {
            Error::Unauthenticated(_) | Error::Client(_) => Side::Client,
            Error::Forbidden(_) => Side::Policy,
            Error::Upstream(_) => Side::Upstream,
            Error::Config(_) | Error::Store(_) | Error::Internal(_) => Side::Internal,
        }
    }

    /// Shorthand for an [`Error::Store`] from anything printable.
    pub fn store(e: impl std::fmt::Display) -> Self {
        Error::Store(e.to_string())
    }
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
