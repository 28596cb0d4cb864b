//! The error type of the analytics crate.

use dspex_core::CoreError;

use crate::prices::format_usd;

/// Everything analytics can fail with.
///
/// Each variant names what is wrong: the config key, the time-range text, the
/// group-by name, the budget and its amounts, the store backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalyticsError {
    /// A configuration value is missing, malformed or out of range (the
    /// [`CoreError::Config`] names the dotted key path).
    #[error(transparent)]
    Config(#[from] CoreError),

    /// A time range could not be parsed.
    #[error("invalid time range `{text}`: {message}")]
    TimeRange {
        /// The text given.
        text: String,
        /// What is wrong with it.
        message: String,
    },

    /// A group-by name is not one of the known dimensions.
    #[error("unknown group-by `{name}` (known: {known})")]
    UnknownGroupBy {
        /// The name given.
        name: String,
        /// The accepted names.
        known: String,
    },

    /// A hard budget refused a call before it was sent: its spend so far plus
    /// the call's estimated cost would pass its limit.
    #[error(
        "budget `{budget}` ({period}) would be exceeded: limit {}, spent {}, this call is estimated at {}",
        format_usd(*limit_nanos),
        format_usd(*spent_nanos),
        format_usd(*estimated_nanos)
    )]
    BudgetExceeded {
        /// The budget's name.
        budget: String,
        /// Its period as text (`day 2026-11-24`, `month 2026-11`, `run <id>`).
        period: String,
        /// Its limit, in nano-USD.
        limit_nanos: i64,
        /// What was spent (and reserved by calls in flight) in the period, in nano-USD.
        spent_nanos: i64,
        /// The refused call's estimated cost, in nano-USD.
        estimated_nanos: i64,
    },

    /// The store (SQLite or PostgreSQL) failed.
    #[error("analytics store error ({backend}): {message}")]
    Store {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The backend's message.
        message: String,
        /// Whether the same operation may succeed later (a lost connection, a
        /// busy database), as opposed to a schema or query error.
        retryable: bool,
    },

    /// The price table could not be read or has an invalid entry.
    #[error("price table error at `{key}`: {message}")]
    Prices {
        /// The entry (`provider/model`) or field.
        key: String,
        /// What is wrong.
        message: String,
    },

    /// A virtual key with this name already exists (revoked keys keep their
    /// name, so spend history stays unambiguous).
    #[error(
        "a key named `{name}` already exists (names are never reused; rotate it or choose another name)"
    )]
    KeyExists {
        /// The name.
        name: String,
    },

    /// No virtual key has this name.
    #[error("no key named `{name}`")]
    KeyNotFound {
        /// The name.
        name: String,
    },

    /// The write-ahead journal (`durability = "wal"`) could not be written or
    /// read.
    #[error("analytics journal error at {path}: {message}")]
    Journal {
        /// The file or folder.
        path: String,
        /// What failed.
        message: String,
    },

    /// The recorder's background task is gone (it panicked or was aborted).
    #[error("the analytics recorder task stopped unexpectedly: {message}")]
    RecorderStopped {
        /// Why, as far as known.
        message: String,
    },
}

impl AnalyticsError {
    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store { retryable, .. } => *retryable,
            Self::Config(error) => error.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn time_range(text: &str, message: impl Into<String>) -> Self {
        Self::TimeRange {
            text: text.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn sqlite(error: &rusqlite::Error) -> Self {
        let retryable = matches!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        Self::Store {
            backend: "sqlite",
            message: error.to_string(),
            retryable,
        }
    }

    pub(crate) fn postgres(error: &tokio_postgres::Error) -> Self {
        // A closed connection or an I/O failure may heal; a SQL error will not.
        let retryable = error.is_closed() || error.code().is_none();
        let message = match error.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => error.to_string(),
        };
        Self::Store {
            backend: "postgres",
            message,
            retryable,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = AnalyticsError> = std::result::Result<T, E>;
