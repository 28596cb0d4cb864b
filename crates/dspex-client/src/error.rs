//! The client's error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dspex_core::context::format_duration;
use dspex_core::protect::{Cost, ProtectedError};
use dspex_core::{CoreError, CorrelationId, ErrorContext, Trail};

/// What an upstream HTTP error status means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: the API key is missing or wrong.
    Authentication,
    /// 403: the key may not do this.
    PermissionDenied,
    /// 404: no such model or route.
    NotFound,
    /// 408: the upstream timed out waiting for the request.
    RequestTimeout,
    /// 409: a conflict (retryable by convention).
    Conflict,
    /// 413: the request is too large.
    PayloadTooLarge,
    /// 422: the request is well-formed but invalid.
    UnprocessableEntity,
    /// 429: the upstream's rate limit.
    RateLimited,
    /// 5xx: the upstream failed.
    Server,
    /// 529: the upstream is overloaded (Anthropic).
    Overloaded,
    /// Any other status.
    Other,
}

impl ApiErrorKind {
    /// The kind for an HTTP status.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => Self::BadRequest,
            401 => Self::Authentication,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            422 => Self::UnprocessableEntity,
            429 => Self::RateLimited,
            529 => Self::Overloaded,
            500..=599 => Self::Server,
            _ => Self::Other,
        }
    }

    /// A stable snake_case name, used in events, metrics and analytics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Authentication => "authentication",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::RequestTimeout => "request_timeout",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnprocessableEntity => "unprocessable_entity",
            Self::RateLimited => "rate_limited",
            Self::Server => "server_error",
            Self::Overloaded => "overloaded",
            Self::Other => "http_error",
        }
    }
}

impl fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutPhase {
    /// Opening the connection.
    Connect,
    /// Waiting for the first byte of the response (headers, or the first event of a stream).
    FirstByte,
    /// The whole call.
    Total,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::FirstByte => "first byte",
            Self::Total => "total",
        })
    }
}

/// `"provider: "`, or nothing for an error made inside the protection stack,
/// which learns its provider only when the client returns it (the retry
/// layer's trail still shows such errors, and must not start with `": "`).
fn prefix(provider: &str) -> String {
    if provider.is_empty() {
        String::new()
    } else {
        format!("{provider}: ")
    }
}

fn retry_hint(after: Option<&Duration>) -> String {
    after.map_or_else(String::new, |d| {
        format!(" (retry after {})", format_duration(*d))
    })
}

/// Everything a provider call can fail with.
///
/// Call-time variants carry the provider id and an [`ErrorContext`]: the
/// correlation id and the breadcrumb trail (provider, model, every attempt and
/// wait). Messages from providers are scrubbed of the API key.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The upstream answered with an error status.
    #[error("{provider}: {kind} (HTTP {status}): {message}{}", retry_hint(retry_after.as_ref()))]
    Api {
        /// The provider id.
        provider: Arc<str>,
        /// What the status means.
        kind: ApiErrorKind,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// The provider's error code or type, such as `rate_limit_exceeded`.
        code: Option<String>,
        /// The provider's Retry-After (or rate-limit reset) hint.
        retry_after: Option<Duration>,
        /// The provider's request id.
        request_id: Option<String>,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// A timeout fired.
    #[error("{}timed out waiting for the {phase} after {}", prefix(provider), format_duration(*after))]
    Timeout {
        /// The provider id.
        provider: Arc<str>,
        /// Which timeout.
        phase: TimeoutPhase,
        /// Its length.
        after: Duration,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The connection could not be made or broke before a response.
    #[error("{provider}: connection failed: {message}")]
    Connect {
        /// The provider id.
        provider: Arc<str>,
        /// What went wrong.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The upstream answered 2xx with a body that is not what its API promises.
    #[error("{provider}: malformed response: {message}")]
    MalformedResponse {
        /// The provider id.
        provider: Arc<str>,
        /// What is wrong, with a short excerpt of the body.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The response ended before it was complete.
    #[error("{provider}: {} ended early: {message}", if *streaming { "stream" } else { "response body" })]
    Truncated {
        /// The provider id.
        provider: Arc<str>,
        /// Whether it was a stream (whose start already reached the caller).
        streaming: bool,
        /// What was missing.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The provider's circuit breaker is open: failing fast.
    #[error("{}circuit open after repeated upstream failures; next try in {}", prefix(provider), format_duration(*retry_in))]
    CircuitOpen {
        /// The provider id.
        provider: Arc<str>,
        /// When a probe will be let through.
        retry_in: Duration,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// A local rate-limit bucket had no room within the allowed wait.
    #[error("{}rate limit `{bucket}` is full; retry after {}", prefix(provider), format_duration(*retry_after))]
    RateLimited {
        /// The provider id.
        provider: Arc<str>,
        /// The full bucket, such as `tokens/1m`.
        bucket: String,
        /// When it will have room.
        retry_after: Duration,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The call costs more than a bucket's whole limit: it can never be admitted.
    #[error(
        "{}call needs {requested} in bucket `{bucket}`, more than its limit of {limit}",
        prefix(provider)
    )]
    OverCapacity {
        /// The provider id.
        provider: Arc<str>,
        /// The bucket.
        bucket: String,
        /// What the call needs.
        requested: u64,
        /// The bucket's limit.
        limit: u64,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The request is invalid before it is sent (no messages, a bad parameter).
    #[error("{provider}: invalid request: {message}")]
    InvalidRequest {
        /// The provider id.
        provider: Arc<str>,
        /// What is wrong.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// A [`CallGuard`](crate::CallGuard) (a budget) refused the call before it
    /// was sent.
    #[error("{provider}: refused by {guard}: {message}")]
    Refused {
        /// The provider id.
        provider: Arc<str>,
        /// Which guard refused (`budget`).
        guard: &'static str,
        /// Why, naming the limit.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The provider does not offer this operation (Anthropic has no embeddings).
    #[error("{provider}: {operation} is not supported by this provider")]
    Unsupported {
        /// The provider id.
        provider: Arc<str>,
        /// The operation.
        operation: &'static str,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// No provider is registered under this id.
    #[error("no provider named `{id}` (configured: {})", if known.is_empty() { "none; set OPENAI_API_KEY or write a dspex.toml".to_owned() } else { known.join(", ") })]
    UnknownProvider {
        /// The id asked for.
        id: String,
        /// The ids that exist.
        known: Vec<String>,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// The shared rate-limit backend (Redis) failed.
    #[error("{}rate-limit backend failed: {message}", prefix(provider))]
    Backend {
        /// The provider id.
        provider: Arc<str>,
        /// The backend's message.
        message: String,
        /// Correlation id and breadcrumbs.
        context: Box<ErrorContext>,
    },

    /// Configuration is invalid (names the key) or the client could not start.
    #[error(transparent)]
    Config(CoreError),
}

fn blank_context() -> Box<ErrorContext> {
    Box::new(ErrorContext::new(CorrelationId::from("")))
}

impl From<CoreError> for ClientError {
    /// Maps errors of the protection layers; the client fills in the provider and
    /// context before the error reaches the caller.
    fn from(error: CoreError) -> Self {
        let provider: Arc<str> = Arc::from("");
        match error {
            CoreError::RateLimited {
                bucket,
                retry_after,
            } => Self::RateLimited {
                provider,
                bucket,
                retry_after,
                context: blank_context(),
            },
            CoreError::OverCapacity {
                bucket,
                requested,
                limit,
            } => Self::OverCapacity {
                provider,
                bucket,
                requested,
                limit,
                context: blank_context(),
            },
            CoreError::CircuitOpen { retry_in, .. } => Self::CircuitOpen {
                provider,
                retry_in,
                context: blank_context(),
            },
            CoreError::Backend { message } => Self::Backend {
                provider,
                message,
                context: blank_context(),
            },
            other => Self::Config(other),
        }
    }
}

impl ClientError {
    /// Whether the same call may succeed if tried again: 408, 409, 429, 5xx,
    /// timeouts, broken connections, a plain body cut short, a full local bucket,
    /// an open circuit.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { kind, .. } => matches!(
                kind,
                ApiErrorKind::RequestTimeout
                    | ApiErrorKind::Conflict
                    | ApiErrorKind::RateLimited
                    | ApiErrorKind::Server
                    | ApiErrorKind::Overloaded
            ),
            Self::Timeout { .. } | Self::Connect { .. } | Self::Backend { .. } => true,
            Self::Truncated { streaming, .. } => !streaming,
            Self::CircuitOpen { .. } | Self::RateLimited { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, for upstream errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long to wait before trying again, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            Self::CircuitOpen { retry_in, .. } => Some(*retry_in),
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The provider's (or our) message.
    pub fn message(&self) -> String {
        match self {
            Self::Api { message, .. }
            | Self::Connect { message, .. }
            | Self::MalformedResponse { message, .. }
            | Self::Truncated { message, .. }
            | Self::InvalidRequest { message, .. }
            | Self::Refused { message, .. }
            | Self::Backend { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The provider id, for call-time errors.
    pub fn provider(&self) -> Option<&str> {
        match self {
            Self::Api { provider, .. }
            | Self::Timeout { provider, .. }
            | Self::Connect { provider, .. }
            | Self::MalformedResponse { provider, .. }
            | Self::Truncated { provider, .. }
            | Self::CircuitOpen { provider, .. }
            | Self::RateLimited { provider, .. }
            | Self::OverCapacity { provider, .. }
            | Self::InvalidRequest { provider, .. }
            | Self::Refused { provider, .. }
            | Self::Unsupported { provider, .. }
            | Self::Backend { provider, .. } => Some(provider),
            Self::UnknownProvider { .. } | Self::Config(_) => None,
        }
    }

    /// The correlation id and breadcrumbs, for call-time errors.
    pub fn context(&self) -> Option<&ErrorContext> {
        match self {
            Self::UnknownProvider { context, .. } => Some(context),
            other => other.parts().map(|(_, context)| context),
        }
    }

    fn parts(&self) -> Option<(&Arc<str>, &ErrorContext)> {
        match self {
            Self::Api {
                provider, context, ..
            }
            | Self::Timeout {
                provider, context, ..
            }
            | Self::Connect {
                provider, context, ..
            }
            | Self::MalformedResponse {
                provider, context, ..
            }
            | Self::Truncated {
                provider, context, ..
            }
            | Self::CircuitOpen {
                provider, context, ..
            }
            | Self::RateLimited {
                provider, context, ..
            }
            | Self::OverCapacity {
                provider, context, ..
            }
            | Self::InvalidRequest {
                provider, context, ..
            }
            | Self::Refused {
                provider, context, ..
            }
            | Self::Unsupported {
                provider, context, ..
            }
            | Self::Backend {
                provider, context, ..
            } => Some((provider, &**context)),
            Self::UnknownProvider { .. } | Self::Config(_) => None,
        }
    }

    /// A stable snake_case name of the error's kind, for events, metrics and
    /// analytics (`rate_limited`, `server_error`, `timeout`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Api { kind, .. } => kind.as_str(),
            Self::Timeout { .. } => "timeout",
            Self::Connect { .. } => "connect",
            Self::MalformedResponse { .. } => "malformed_response",
            Self::Truncated { .. } => "truncated",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::RateLimited { .. } => "local_rate_limit",
            Self::OverCapacity { .. } => "over_capacity",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Refused { .. } => "refused",
            Self::Unsupported { .. } => "unsupported",
            Self::UnknownProvider { .. } => "unknown_provider",
            Self::Backend { .. } => "backend",
            Self::Config(_) => "config",
        }
    }

    /// Fills in the provider (where the layer that made the error did not know
    /// it) and replaces the context with the call's trail.
    pub(crate) fn attach(mut self, provider_id: &Arc<str>, trail: &Trail) -> Self {
        let snapshot = trail.snapshot();
        match &mut self {
            Self::Api {
                provider, context, ..
            }
            | Self::Timeout {
                provider, context, ..
            }
            | Self::Connect {
                provider, context, ..
            }
            | Self::MalformedResponse {
                provider, context, ..
            }
            | Self::Truncated {
                provider, context, ..
            }
            | Self::CircuitOpen {
                provider, context, ..
            }
            | Self::RateLimited {
                provider, context, ..
            }
            | Self::OverCapacity {
                provider, context, ..
            }
            | Self::InvalidRequest {
                provider, context, ..
            }
            | Self::Refused {
                provider, context, ..
            }
            | Self::Unsupported {
                provider, context, ..
            }
            | Self::Backend {
                provider, context, ..
            } => {
                if provider.is_empty() {
                    *provider = Arc::clone(provider_id);
                }
                **context = snapshot;
            }
            Self::UnknownProvider { context, .. } => **context = snapshot,
            Self::Config(_) => {}
        }
        self
    }

    pub(crate) fn context_for(trail: &Trail) -> Box<ErrorContext> {
        Box::new(trail.snapshot())
    }
}

impl ProtectedError for ClientError {
    fn reached_upstream(&self) -> bool {
        matches!(
            self,
            Self::Api { .. }
                | Self::Timeout { .. }
                | Self::Connect { .. }
                | Self::MalformedResponse { .. }
                | Self::Truncated { .. }
        )
    }

    fn trips_breaker(&self) -> bool {
        match self {
            Self::Api { kind, .. } => {
                matches!(kind, ApiErrorKind::Server | ApiErrorKind::Overloaded)
            }
            Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::MalformedResponse { .. }
            | Self::Truncated { .. } => true,
            _ => false,
        }
    }

    fn is_retryable(&self) -> bool {
        // Local admission failures are final inside the stack: the rate-limit
        // layer already waited as long as allowed, and the breaker is outside.
        !matches!(self, Self::RateLimited { .. } | Self::CircuitOpen { .. })
            && ClientError::is_retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        ClientError::retry_after(self)
    }

    fn charged(&self, reserved: Cost) -> Cost {
        match self {
            // Never reached the upstream: nothing was used.
            Self::Connect { .. }
            | Self::InvalidRequest { .. }
            | Self::Refused { .. }
            | Self::Unsupported { .. } => Cost::ZERO,
            // The upstream answered and refused: the request counts, tokens do not.
            Self::Api { .. } => Cost {
                requests: reserved.requests,
                ..Cost::ZERO
            },
            // The upstream may have done the work: keep the estimate.
            _ => reserved,
        }
    }

    fn timed_out(after: Duration) -> Self {
        Self::Timeout {
            provider: Arc::from(""),
            phase: TimeoutPhase::Total,
            after,
            context: blank_context(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::Api {
            provider: Arc::from("openai"),
            kind: ApiErrorKind::from_status(status),
            status,
            message: "nope".into(),
            code: None,
            retry_after: None,
            request_id: None,
            context: blank_context(),
        }
    }

    #[test]
    fn statuses_map_to_kinds_and_retryability() {
        for (status, kind, retryable, trips) in [
            (400, "bad_request", false, false),
            (401, "authentication", false, false),
            (403, "permission_denied", false, false),
            (404, "not_found", false, false),
            (408, "request_timeout", true, false),
            (413, "payload_too_large", false, false),
            (422, "unprocessable_entity", false, false),
            (429, "rate_limited", true, false),
            (500, "server_error", true, true),
            (503, "server_error", true, true),
            (529, "overloaded", true, true),
        ] {
            let e = api(status);
            assert_eq!(e.kind(), kind, "{status}");
            assert_eq!(e.is_retryable(), retryable, "{status}");
            assert_eq!(e.trips_breaker(), trips, "{status}");
            assert_eq!(e.status(), Some(status));
        }
    }

    #[test]
    fn attach_fills_provider_and_trail() {
        let trail = Trail::new(CorrelationId::from("run-9"));
        trail.push("provider", "openai / gpt-4o-mini");
        let e: ClientError = CoreError::RateLimited {
            bucket: "tokens/1m".into(),
            retry_after: Duration::from_secs(2),
        }
        .into();
        let e = e.attach(&Arc::from("openai"), &trail);
        assert_eq!(e.provider(), Some("openai"));
        assert_eq!(e.context().unwrap().correlation_id.as_str(), "run-9");
        assert_eq!(
            e.to_string(),
            "openai: rate limit `tokens/1m` is full; retry after 2.0s"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    }
}
