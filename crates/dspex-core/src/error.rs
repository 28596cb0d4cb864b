//! The error type of the generic layer.

use std::time::Duration;

use crate::config::SourceLocation;
use crate::context::format_duration;

/// Everything the generic layer can fail with.
///
/// Each variant names what is wrong: the config key, the registry id, the bucket.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A configuration value is missing, malformed or out of range.
    ///
    /// With `locations`, it prints as rustc does: the key path and message,
    /// then each place in the file with its line quoted.
    #[error("{}", render_config(key, message, origin.as_deref(), locations))]
    Config {
        /// The dotted key path, such as `providers.openai.pool_size`.
        key: String,
        /// What is wrong with it.
        message: String,
        /// Where the value came from (a file path or an environment variable), when known.
        origin: Option<String>,
        /// Where in the file the offending key or value is (several for
        /// several unknown keys); empty when not known or not from a file.
        /// [`crate::config::ConfigLoader::locate`] fills it in.
        locations: Vec<SourceLocation>,
    },

    /// A configuration file could not be read.
    #[error("cannot read config file {path}: {message}")]
    ConfigFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },

    /// Nothing is registered under this id.
    #[error("no {kind} named `{id}` is registered (known: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    NotRegistered {
        /// What was looked up (`provider`, `cache`...).
        kind: &'static str,
        /// The id asked for.
        id: String,
        /// The ids that do exist.
        known: Vec<String>,
    },

    /// Something is already registered under this id.
    #[error("a {kind} named `{id}` is already registered")]
    AlreadyRegistered {
        /// What was registered.
        kind: &'static str,
        /// The id.
        id: String,
    },

    /// A rate-limit bucket has no room within the allowed wait.
    #[error("rate limit `{bucket}` is full; retry after {}", format_duration(*retry_after))]
    RateLimited {
        /// The bucket that is full, such as `tokens/1m`.
        bucket: String,
        /// When there will be room.
        retry_after: Duration,
    },

    /// A request costs more than a bucket can ever hold, so waiting would not help.
    #[error("request needs {requested} in bucket `{bucket}` but its limit is {limit}")]
    OverCapacity {
        /// The bucket.
        bucket: String,
        /// What the request asked for.
        requested: u64,
        /// The bucket's whole limit.
        limit: u64,
    },

    /// The circuit breaker is open: calls fail fast until it half-opens.
    #[error("circuit `{name}` is open; next try in {}", format_duration(*retry_in))]
    CircuitOpen {
        /// The breaker's name (the provider id).
        name: String,
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },

    /// The shared (Redis) limiter backend failed.
    #[error("rate-limit backend error: {message}")]
    Backend {
        /// The backend's message.
        message: String,
    },

    /// Metrics could not be installed.
    #[error("telemetry error: {message}")]
    Telemetry {
        /// Why.
        message: String,
    },
}

impl CoreError {
    /// A config error for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
            origin: None,
            locations: Vec::new(),
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::CircuitOpen { .. } | Self::Backend { .. }
        )
    }

    /// How long to wait before trying again, when the error says.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            _ => None,
        }
    }
}

fn render_config(
    key: &str,
    message: &str,
    origin: Option<&str>,
    locations: &[SourceLocation],
) -> String {
    if locations.is_empty() {
        let origin = origin.map(|o| format!(" (from {o})")).unwrap_or_default();
        return format!("config error at `{key}`{origin}: {message}");
    }
    format!(
        "{key}: {message}\n{}",
        SourceLocation::render_all(locations)
    )
}

/// Shorthand for results of the generic layer.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;
