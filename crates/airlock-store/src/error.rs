//! The store crate's error type.

/// What can go wrong opening or using a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or the database could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What the store was doing.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The embedded database failed.
    #[error("{what}: {source}")]
    Sled {
        /// What the store was doing.
        what: String,
        /// sled's error.
        source: sled::Error,
    },
    /// Stored data is not what the store wrote.
    #[error("{0}")]
    Corrupt(String),
}

/// The store crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for airlock_core::Error {
    fn from(e: Error) -> Self {
        airlock_core::Error::Store(e.to_string())
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(sled::Error) -> Error {
    let what = what.into();
    move |source| Error::Sled { what, source }
}
