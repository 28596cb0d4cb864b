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

fn retry_hint(after: Option<Duration>) -> String {
    after.map_or_else(String::new, |d| {
        format!(" (retry after {})", format_duration(d))
    })
}

/// What went wrong in a provider call, with what only that kind of failure
/// knows. The fields every failure shares (provider, HTTP status,
/// Retry-After, message, context) live on [`ClientError`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientErrorKind {
    /// The upstream answered with an error status ([`ClientError::status`]).
    Api {
        /// What the status means.
        kind: ApiErrorKind,
        /// The provider's error code or type, such as `rate_limit_exceeded`.
        code: Option<String>,
        /// The provider's request id.
        request_id: Option<String>,
    },
    /// A timeout fired.
    Timeout {
        /// Which timeout.
        phase: TimeoutPhase,
        /// Its length.
        after: Duration,
    },
    /// The connection could not be made or broke before a response.
    Connect,
    /// The upstream answered 2xx with a body that is not what its API promises.
    MalformedResponse {
        /// Whether trying again may help: true for a garbled body or a
        /// stream garbled before its first event reached the caller (unless
        /// the provider sets `retry_malformed = false`); false once part of
        /// a stream was delivered, or for a transport's own bug.
        retryable: bool,
    },
    /// The response ended before it was complete.
    Truncated {
        /// Whether it was a stream (whose start already reached the caller).
        streaming: bool,
    },
    /// The provider's circuit breaker is open: failing fast until
    /// [`ClientError::retry_after`].
    CircuitOpen,
    /// A local rate-limit bucket had no room within the allowed wait.
    RateLimited {
        /// The full bucket, such as `tokens/1m`.
        bucket: String,
    },
    /// The call costs more than a bucket's whole limit: it can never be admitted.
    OverCapacity {
        /// The bucket.
        bucket: String,
        /// What the call needs.
        requested: u64,
        /// The bucket's limit.
        limit: u64,
    },
    /// The request is invalid before it is sent (no messages, a bad parameter,
    /// a prompt longer than a local model's context).
    InvalidRequest,
    /// A [`CallGuard`](crate::CallGuard) (a budget) refused the call before it
    /// was sent.
    Refused {
        /// Which guard refused (`budget`).
        guard: &'static str,
    },
    /// The provider does not offer this operation (Anthropic has no embeddings).
    Unsupported {
        /// The operation.
        operation: &'static str,
    },
    /// No provider is registered under this id.
    UnknownProvider {
        /// The id asked for.
        id: String,
        /// The ids that exist.
        known: Vec<String>,
    },
    /// The shared rate-limit backend (Redis) failed.
    Backend,
    /// A local model failed while generating (the message says how).
    Model,
    /// Configuration is invalid (names the key) or the client could not start.
    Config(CoreError),
}

impl ClientErrorKind {
    /// A stable snake_case name, for events, metrics and analytics
    /// (`rate_limited`, `server_error`, `timeout`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Api { kind, .. } => kind.as_str(),
            Self::Timeout { .. } => "timeout",
            Self::Connect => "connect",
            Self::MalformedResponse { .. } => "malformed_response",
            Self::Truncated { .. } => "truncated",
            Self::CircuitOpen => "circuit_open",
            Self::RateLimited { .. } => "local_rate_limit",
            Self::OverCapacity { .. } => "over_capacity",
            Self::InvalidRequest => "invalid_request",
            Self::Refused { .. } => "refused",
            Self::Unsupported { .. } => "unsupported",
            Self::UnknownProvider { .. } => "unknown_provider",
            Self::Backend => "backend",
            Self::Model => "model",
            Self::Config(_) => "config",
        }
    }
}

impl fmt::Display for ClientErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a provider call can fail with: a [`ClientErrorKind`] and the
/// fields every failure shares.
///
/// Call-time errors carry the provider id and an [`ErrorContext`]: the
/// correlation id and the breadcrumb trail (provider, model, every attempt and
/// wait). Messages from providers are scrubbed of the API key. One box holds
/// it all, so a `Result` carrying it stays one word wide.
#[derive(Clone)]
pub struct ClientError(Box<Details>);

#[derive(Clone, Debug)]
struct Details {
    kind: ClientErrorKind,
    /// `None` for errors not tied to a provider, and for errors made inside
    /// the protection stack until the client attaches its provider.
    provider: Option<Arc<str>>,
    status: Option<u16>,
    retry_after: Option<Duration>,
    message: String,
    context: ErrorContext,
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        f.debug_struct("ClientError")
            .field("kind", &d.kind)
            .field("provider", &d.provider)
            .field("status", &d.status)
            .field("retry_after", &d.retry_after)
            .field("message", &d.message)
            .field("context", &d.context)
            .finish()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        if let ClientErrorKind::Config(error) = &d.kind {
            return fmt::Display::fmt(error, f);
        }
        if let Some(provider) = d.provider.as_deref().filter(|p| !p.is_empty()) {
            write!(f, "{provider}: ")?;
        }
        let message = &d.message;
        match &d.kind {
            ClientErrorKind::Api { kind, .. } => write!(
                f,
                "{kind} (HTTP {}): {message}{}",
                d.status.unwrap_or_default(),
                retry_hint(d.retry_after)
            ),
            ClientErrorKind::Connect => write!(f, "connection failed: {message}"),
            ClientErrorKind::MalformedResponse { .. } => {
                write!(f, "malformed response: {message}")
            }
            ClientErrorKind::Truncated { streaming } => write!(
                f,
                "{} ended early: {message}",
                if *streaming {
                    "stream"
                } else {
                    "response body"
                }
            ),
            ClientErrorKind::InvalidRequest => write!(f, "invalid request: {message}"),
            ClientErrorKind::Refused { guard } => write!(f, "refused by {guard}: {message}"),
            ClientErrorKind::Backend => write!(f, "rate-limit backend failed: {message}"),
            ClientErrorKind::Model => write!(f, "local model failed: {message}"),
            // The message is the whole sentence.
            _ => f.write_str(message),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            ClientErrorKind::Config(error) => Some(error),
            _ => None,
        }
    }
}

fn blank_context() -> ErrorContext {
    ErrorContext::new(CorrelationId::from(""))
}

impl From<CoreError> for ClientError {
    /// Maps errors of the protection layers; the client fills in the provider and
    /// context before the error reaches the caller.
    fn from(error: CoreError) -> Self {
        match error {
            CoreError::RateLimited {
                bucket,
                retry_after,
            } => Self::new(
                ClientErrorKind::RateLimited {
                    bucket: bucket.clone(),
                },
                format!(
                    "rate limit `{bucket}` is full; retry after {}",
                    format_duration(retry_after)
                ),
            )
            .with_retry_after(Some(retry_after)),
            CoreError::OverCapacity {
                bucket,
                requested,
                limit,
            } => Self::new(
                ClientErrorKind::OverCapacity {
                    bucket: bucket.clone(),
                    requested,
                    limit,
                },
                format!(
                    "call needs {requested} in bucket `{bucket}`, more than its limit of {limit}"
                ),
            ),
            CoreError::CircuitOpen { retry_in, .. } => Self::new(
                ClientErrorKind::CircuitOpen,
                format!(
                    "circuit open after repeated upstream failures; next try in {}",
                    format_duration(retry_in)
                ),
            )
            .with_retry_after(Some(retry_in)),
            CoreError::Backend { message } => Self::new(ClientErrorKind::Backend, message),
            other => Self::config(other),
        }
    }
}

impl ClientError {
    /// An error of `kind` with `message`, not yet tied to a provider or a call.
    pub fn new(kind: ClientErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Details {
            kind,
            provider: None,
            status: None,
            retry_after: None,
            message: message.into(),
            context: blank_context(),
        }))
    }

    /// A configuration error (the message names the key).
    pub fn config(error: CoreError) -> Self {
        let message = error.to_string();
        Self::new(ClientErrorKind::Config(error), message)
    }

    /// An upstream error status with the provider's message.
    pub fn api(
        status: u16,
        message: impl Into<String>,
        code: Option<String>,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    ) -> Self {
        let mut error = Self::new(
            ClientErrorKind::Api {
                kind: ApiErrorKind::from_status(status),
                code,
                request_id,
            },
            message,
        );
        error.0.status = Some(status);
        error.0.retry_after = retry_after;
        error
    }

    /// A timeout of `phase` after `after`.
    pub fn timeout(phase: TimeoutPhase, after: Duration) -> Self {
        Self::new(
            ClientErrorKind::Timeout { phase, after },
            format!(
                "timed out waiting for the {phase} after {}",
                format_duration(after)
            ),
        )
    }

    /// The provider does not offer `operation`.
    pub fn unsupported(operation: &'static str) -> Self {
        Self::new(
            ClientErrorKind::Unsupported { operation },
            format!("{operation} is not supported by this provider"),
        )
    }

    /// No provider `id` among `known`.
    pub fn unknown_provider(id: &str, known: Vec<String>) -> Self {
        let message = format!(
            "no provider named `{id}` (configured: {})",
            if known.is_empty() {
                "none; set OPENAI_API_KEY or write a dspex.toml".to_owned()
            } else {
                known.join(", ")
            }
        );
        let mut error = Self::new(
            ClientErrorKind::UnknownProvider {
                id: id.to_owned(),
                known,
            },
            message,
        );
        error.0.context = ErrorContext::new(CorrelationId::generate());
        error
    }

    /// Sets the provider.
    #[must_use]
    pub fn with_provider(mut self, provider: &Arc<str>) -> Self {
        self.0.provider = Some(Arc::clone(provider));
        self
    }

    /// Sets the wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.0.retry_after = retry_after;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> &ClientErrorKind {
        &self.0.kind
    }

    /// Whether the same call may succeed if tried again: 408, 409, 429, 5xx,
    /// timeouts, broken connections, a plain body cut short, a full local bucket,
    /// an open circuit.
    pub fn is_retryable(&self) -> bool {
        match &self.0.kind {
            ClientErrorKind::Api { kind, .. } => matches!(
                kind,
                ApiErrorKind::RequestTimeout
                    | ApiErrorKind::Conflict
                    | ApiErrorKind::RateLimited
                    | ApiErrorKind::Server
                    | ApiErrorKind::Overloaded
            ),
            ClientErrorKind::Timeout { .. }
            | ClientErrorKind::Connect
            | ClientErrorKind::Backend
            | ClientErrorKind::CircuitOpen
            | ClientErrorKind::RateLimited { .. } => true,
            ClientErrorKind::Truncated { streaming } => !streaming,
            ClientErrorKind::MalformedResponse { retryable } => *retryable,
            _ => false,
        }
    }

    /// Whether the request was refused because the prompt does not fit the
    /// model's context window: OpenAI's `context_length_exceeded`,
    /// Anthropic's "prompt is too long", a local model's prompt too long,
    /// and the wordings compatible servers use. Agents react by shortening
    /// their history.
    pub fn is_context_window_exceeded(&self) -> bool {
        let refused = match &self.0.kind {
            ClientErrorKind::Api { kind, code, .. } => {
                if code.as_deref() == Some("context_length_exceeded") {
                    return true;
                }
                matches!(
                    kind,
                    ApiErrorKind::BadRequest
                        | ApiErrorKind::PayloadTooLarge
                        | ApiErrorKind::UnprocessableEntity
                )
            }
            ClientErrorKind::InvalidRequest => true,
            _ => false,
        };
        refused && {
            let message = self.0.message.to_ascii_lowercase();
            [
                "context length",
                "context_length",
                "context window",
                "maximum context",
                "prompt is too long",
                "does not fit the context",
                "too many tokens",
            ]
            .iter()
            .any(|phrase| message.contains(phrase))
        }
    }

    /// The HTTP status, for upstream errors.
    pub fn status(&self) -> Option<u16> {
        self.0.status
    }

    /// How long to wait before trying again, when known: the provider's
    /// Retry-After (or rate-limit reset), an open circuit's next probe, a
    /// full bucket's next room.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The provider's (or our) message, without the provider prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The provider id, for call-time errors.
    pub fn provider(&self) -> Option<&str> {
        self.0.provider.as_deref().filter(|p| !p.is_empty())
    }

    /// The provider's request id, for upstream errors that carried one.
    pub fn request_id(&self) -> Option<&str> {
        match &self.0.kind {
            ClientErrorKind::Api { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// The correlation id and breadcrumbs, for call-time errors.
    pub fn context(&self) -> Option<&ErrorContext> {
        match &self.0.kind {
            ClientErrorKind::Config(_) => None,
            ClientErrorKind::UnknownProvider { .. } => Some(&self.0.context),
            _ => self.provider().map(|_| &self.0.context),
        }
    }

    /// Fills in the provider (where the layer that made the error did not know
    /// it) and replaces the context with the call's trail.
    pub(crate) fn attach(mut self, provider_id: &Arc<str>, trail: &Trail) -> Self {
        if self.provider().is_none()
            && !matches!(
                self.0.kind,
                ClientErrorKind::UnknownProvider { .. } | ClientErrorKind::Config(_)
            )
        {
            self.0.provider = Some(Arc::clone(provider_id));
        }
        self.in_trail(trail)
    }

    /// Replaces the context with the call's trail.
    pub(crate) fn in_trail(mut self, trail: &Trail) -> Self {
        if !matches!(self.0.kind, ClientErrorKind::Config(_)) {
            self.0.context = trail.snapshot();
        }
        self
    }
}

impl ProtectedError for ClientError {
    fn reached_upstream(&self) -> bool {
        matches!(
            self.0.kind,
            ClientErrorKind::Api { .. }
                | ClientErrorKind::Timeout { .. }
                | ClientErrorKind::Connect
                | ClientErrorKind::MalformedResponse { .. }
                | ClientErrorKind::Truncated { .. }
                | ClientErrorKind::Model
        )
    }

    fn trips_breaker(&self) -> bool {
        match &self.0.kind {
            ClientErrorKind::Api { kind, .. } => {
                matches!(kind, ApiErrorKind::Server | ApiErrorKind::Overloaded)
            }
            ClientErrorKind::Timeout { .. }
            | ClientErrorKind::Connect
            | ClientErrorKind::MalformedResponse { .. }
            | ClientErrorKind::Truncated { .. }
            | ClientErrorKind::Model => true,
            _ => false,
        }
    }

    fn is_retryable(&self) -> bool {
        // Local admission failures are final inside the stack: the rate-limit
        // layer already waited as long as allowed, and the breaker is outside.
        !matches!(
            self.0.kind,
            ClientErrorKind::RateLimited { .. } | ClientErrorKind::CircuitOpen
        ) && ClientError::is_retryable(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        ClientError::retry_after(self)
    }

    fn charged(&self, reserved: Cost) -> Cost {
        match &self.0.kind {
            // Never reached the upstream: nothing was used.
            ClientErrorKind::Connect
            | ClientErrorKind::InvalidRequest
            | ClientErrorKind::Refused { .. }
            | ClientErrorKind::Unsupported { .. } => Cost::ZERO,
            // The upstream answered and refused: the request counts, tokens do not.
            ClientErrorKind::Api { .. } => Cost {
                requests: reserved.requests,
                ..Cost::ZERO
            },
            // The upstream may have done the work: keep the estimate.
            _ => reserved,
        }
    }

    fn timed_out(after: Duration) -> Self {
        Self::timeout(TimeoutPhase::Total, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ClientError {
        ClientError::api(status, "nope", None, None, None).with_provider(&Arc::from("openai"))
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
            assert_eq!(e.kind().as_str(), kind, "{status}");
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

    #[test]
    fn context_window_errors_are_recognised() {
        let openai = ClientError::api(
            400,
            "This model's maximum context length is 128000 tokens.",
            Some("context_length_exceeded".into()),
            None,
            None,
        );
        assert!(openai.is_context_window_exceeded());
        let anthropic = ClientError::api(
            400,
            "prompt is too long: 210000 tokens > 200000 maximum",
            None,
            None,
            None,
        );
        assert!(anthropic.is_context_window_exceeded());
        let local = ClientError::new(
            ClientErrorKind::InvalidRequest,
            "prompt of 9000 tokens does not fit the context of 8192 tokens",
        );
        assert!(local.is_context_window_exceeded());
        assert!(!api(400).is_context_window_exceeded());
        let overloaded = ClientError::api(529, "context window busy", None, None, None);
        assert!(!overloaded.is_context_window_exceeded());
    }
}
