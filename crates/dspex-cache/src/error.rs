//! The cache's error type.

use std::convert::Infallible;
use std::sync::Arc;

use dspex_core::CoreError;

/// Everything the cache can fail with.
///
/// `E` is the error type of the caller's `compute` future in
/// [`Cache::get_or_compute`](crate::Cache::get_or_compute); every other
/// operation uses `CacheError<Infallible>` (the default), which
/// [`CacheError::widen`] turns into any `CacheError<E>`.
///
/// Each variant names what is wrong: the config key, the file, the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError<E = Infallible> {
    /// The caller's computation failed. The error is shared (`Arc`) because
    /// single-flight hands the same failure to every caller that was waiting on
    /// it; it is never cached.
    #[error("compute failed: {0}")]
    Compute(Arc<E>),

    /// A configuration value is missing, malformed or out of range.
    #[error(transparent)]
    Config(#[from] CoreError),

    /// The on-disk store failed (open, read, write or repair).
    #[error("cache store {path}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What failed.
        message: String,
    },

    /// The Redis backend failed.
    #[error("cache backend {url}: {message}")]
    Redis {
        /// The backend URL, without credentials.
        url: String,
        /// The backend's message.
        message: String,
    },

    /// A value could not be serialized for storage, or a stored value could not
    /// be decoded into the requested type.
    #[error("cache value for `{key}` cannot be (de)serialized: {message}")]
    Codec {
        /// The entry (namespace and short hash).
        key: String,
        /// Why.
        message: String,
    },

    /// An embedder failed.
    #[error("embedder `{embedder}`: {message}")]
    Embedding {
        /// The embedder's name.
        embedder: String,
        /// Why.
        message: String,
    },

    /// A model directory or file could not be used.
    #[error("model {path}: {message}")]
    Model {
        /// The file or directory.
        path: String,
        /// Why.
        message: String,
    },

    /// A key or namespace is not acceptable.
    #[error("invalid {what} `{value}`: {message}")]
    Invalid {
        /// What was checked (`namespace`, `tier`...).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it was refused.
        message: String,
    },

    /// A file could not be read (calibration pairs, for instance).
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

impl<E> CacheError<E> {
    /// Whether trying the same thing again later may succeed: a backend that
    /// may come back (Redis, a busy store, an embeddings API). A compute error's
    /// retryability is the caller's to judge: inspect it with
    /// [`CacheError::compute_error`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis { .. } | Self::Embedding { .. } => true,
            Self::Config(error) => error.is_retryable(),
            Self::Compute(_)
            | Self::Store { .. }
            | Self::Codec { .. }
            | Self::Model { .. }
            | Self::Invalid { .. }
            | Self::Io { .. } => false,
        }
    }

    /// The caller's own error, when `compute` failed.
    pub fn compute_error(&self) -> Option<&Arc<E>> {
        match self {
            Self::Compute(error) => Some(error),
            _ => None,
        }
    }
}

impl CacheError {
    /// Turns a storage error into the error type of a `get_or_compute` call.
    pub fn widen<E>(self) -> CacheError<E> {
        match self {
            Self::Compute(never) => match *never {},
            Self::Config(e) => CacheError::Config(e),
            Self::Store { path, message } => CacheError::Store { path, message },
            Self::Redis { url, message } => CacheError::Redis { url, message },
            Self::Codec { key, message } => CacheError::Codec { key, message },
            Self::Embedding { embedder, message } => CacheError::Embedding { embedder, message },
            Self::Model { path, message } => CacheError::Model { path, message },
            Self::Invalid {
                what,
                value,
                message,
            } => CacheError::Invalid {
                what,
                value,
                message,
            },
            Self::Io { path, message } => CacheError::Io { path, message },
        }
    }

    /// An embedder error.
    pub fn embedding(embedder: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Embedding {
            embedder: embedder.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for results of cache operations that run no computation.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
