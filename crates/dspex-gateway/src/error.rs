//! The gateway's errors: [`GatewayError`] for starting and running it, and
//! [`RequestError`], what one HTTP request is answered with (in OpenAI's
//! error shape, with the status an SDK maps to its typed exception).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dspex_client::{ApiErrorKind, ClientError, ClientErrorKind};
use dspex_core::CoreError;
use serde_json::json;

/// Why the gateway could not start, or why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The config is invalid; the message names the key.
    #[error(transparent)]
    Config(CoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's reason.
        message: String,
    },
    /// The server stopped with an I/O error.
    #[error("the gateway stopped: {message}")]
    Serve {
        /// What failed.
        message: String,
    },
    /// A request was refused or failed.
    #[error(transparent)]
    Request(Box<RequestError>),
    /// The key store (the analytics store) failed.
    #[error("key store: {0}")]
    Analytics(#[from] dspex_analytics::AnalyticsError),
    /// A backing service named by the config (`what`) is unreachable.
    #[error("{what}: {message}")]
    Backend {
        /// The config key naming it.
        what: &'static str,
        /// What failed (never a URL's password).
        message: String,
    },
}

impl From<RequestError> for GatewayError {
    fn from(error: RequestError) -> Self {
        Self::Request(Box::new(error))
    }
}

impl GatewayError {
    /// Whether trying again may help: a busy address, or a request that
    /// failed for a reason that passes ([`RequestError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Serve { .. } => false,
            Self::Bind { .. } | Self::Backend { .. } => true,
            Self::Request(error) => error.is_retryable(),
            Self::Analytics(error) => error.is_retryable(),
        }
    }
}

/// What a request is answered with when it fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
#[non_exhaustive]
pub struct RequestError {
    /// The HTTP status.
    pub status: u16,
    /// OpenAI's error `type` (`invalid_request_error`, `rate_limit_error`...).
    pub kind: &'static str,
    /// OpenAI's error `code` (`model_not_found`, `rate_limit_exceeded`...).
    pub code: Option<String>,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// What went wrong, for a person. Never holds a key: provider messages
    /// reach it through the client, which scrubs them.
    pub message: String,
    /// When to try again (the `Retry-After` header).
    pub retry_after: Option<Duration>,
    /// The provider that failed, when one did.
    pub provider: Option<String>,
}

impl RequestError {
    fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
            provider: None,
        }
    }

    /// 400: the body is not what the API takes; `param` names the field.
    pub fn bad_request(param: Option<String>, message: impl Into<String>) -> Self {
        Self {
            param,
            ..Self::new(400, "invalid_request_error", message)
        }
    }

    /// 401: no key, or one that is unknown, revoked or expired (`code`
    /// says which).
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code.to_owned()),
            ..Self::new(401, "invalid_request_error", message)
        }
    }

    /// 403: the key may not do this (`model_not_allowed`, `admin_only`).
    pub fn forbidden(code: &str, param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            code: Some(code.to_owned()),
            param: param.map(str::to_owned),
            ..Self::new(403, "permission_error", message)
        }
    }

    /// 429 `budget_exceeded`: the key's budget for its period is spent;
    /// Retry-After is the end of the period.
    pub fn budget_exceeded(message: impl Into<String>, until_period_end: Duration) -> Self {
        Self {
            code: Some("budget_exceeded".into()),
            retry_after: Some(until_period_end),
            ..Self::new(429, "rate_limit_error", message)
        }
    }

    /// A key's own rate limit refused the request: 429 with Retry-After, 400
    /// when the request is bigger than the whole limit, 503 when the limit
    /// could not be checked.
    pub fn key_limited(name: &str, error: &CoreError) -> Self {
        match error {
            CoreError::OverCapacity {
                bucket,
                requested,
                limit,
            } => Self::bad_request(
                None,
                format!(
                    "this request needs {requested} in key `{name}`'s bucket `{bucket}`, whose whole limit is {limit}"
                ),
            ),
            CoreError::RateLimited { .. } => Self {
                code: Some("rate_limit_exceeded".into()),
                retry_after: error.retry_after(),
                ..Self::new(429, "rate_limit_error", format!("key `{name}`: {error}"))
            },
            // The limit could not be checked (Redis unreachable): refuse
            // rather than let the call through unmetered.
            other => Self::unavailable(format!(
                "the gateway cannot check key `{name}`'s rate limit right now: {other}"
            )),
        }
    }

    /// 408: the body did not arrive within the body-read timeout.
    pub fn timeout_reading_body(limit: Duration) -> Self {
        Self::new(
            408,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {} ms (gateway.body_read_timeout_ms)",
                limit.as_millis()
            ),
        )
    }

    /// 503: something the gateway needs is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "api_error", message)
    }

    /// 404 for a path or resource that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: Some("not_found".into()),
            ..Self::new(404, "invalid_request_error", message)
        }
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str, known: &[String]) -> Self {
        Self {
            code: Some("model_not_found".into()),
            param: Some("model".into()),
            ..Self::new(
                404,
                "invalid_request_error",
                format!(
                    "the model `{model}` does not exist here; use an alias or provider/model (known: {})",
                    known.join(", ")
                ),
            )
        }
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            format!(
                "the request body is over the gateway's limit of {limit} bytes (gateway.max_body_bytes)"
            ),
        )
    }

    /// Whether the same request may succeed later (429 and 5xx).
    pub fn is_retryable(&self) -> bool {
        self.status == 429 || self.status >= 500
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`,
    /// with Anthropic's type for the status (what its SDK maps to exceptions).
    pub fn anthropic_body(&self) -> serde_json::Value {
        let kind = match self.status {
            400 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        };
        json!({"type": "error", "error": {"type": kind, "message": self.message}})
    }

    /// The response in `wire`'s error shape.
    pub(crate) fn into_response_for(self, wire: Wire) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = match wire {
            Wire::OpenAi => self.openai_body(),
            Wire::Anthropic => self.anthropic_body(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an
            // immediate retry that fails the same way.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }

    /// The client's failure as a gateway answer. Upstream 4xx statuses
    /// pass through (the caller's request was at fault), except 401/403:
    /// those mean the gateway's own upstream key was refused, which is not
    /// the caller's doing, so they become 502. Local refusals (circuit
    /// open, a rate-limit bucket, a budget) keep their own statuses.
    pub fn from_client(error: &ClientError) -> Self {
        let message = error.message().to_owned();
        let mut answer = match error.kind() {
            ClientErrorKind::Api { kind, code, .. } => {
                let status = error.status().unwrap_or(502);
                let mut answer = match kind {
                    ApiErrorKind::Authentication | ApiErrorKind::PermissionDenied => Self::new(
                        502,
                        "api_error",
                        format!("the upstream refused the gateway's credentials: {message}"),
                    ),
                    ApiErrorKind::RateLimited => Self::new(429, "rate_limit_error", message),
                    ApiErrorKind::Server | ApiErrorKind::Overloaded | ApiErrorKind::Other => {
                        Self::new(502, "api_error", message)
                    }
                    _ if (400..500).contains(&status) => {
                        Self::new(status, "invalid_request_error", message)
                    }
                    _ => Self::new(502, "api_error", message),
                };
                answer.code = code.clone();
                answer
            }
            ClientErrorKind::Timeout { .. } => Self::new(504, "timeout", message),
            ClientErrorKind::Connect
            | ClientErrorKind::MalformedResponse { .. }
            | ClientErrorKind::Truncated { .. } => Self::new(502, "api_error", message),
            ClientErrorKind::CircuitOpen => Self {
                code: Some("circuit_open".into()),
                ..Self::new(503, "api_error", message)
            },
            ClientErrorKind::RateLimited { .. } => Self {
                code: Some("rate_limit_exceeded".into()),
                ..Self::new(429, "rate_limit_error", message)
            },
            ClientErrorKind::OverCapacity { .. } | ClientErrorKind::InvalidRequest => {
                Self::new(400, "invalid_request_error", message)
            }
            ClientErrorKind::Refused { guard } => Self {
                code: Some(format!("{guard}_exceeded")),
                ..Self::new(429, "rate_limit_error", message)
            },
            ClientErrorKind::Unsupported { .. } => Self::new(400, "invalid_request_error", message),
            ClientErrorKind::UnknownProvider { .. } => Self {
                code: Some("model_not_found".into()),
                ..Self::new(404, "invalid_request_error", message)
            },
            _ => Self::new(500, "api_error", message),
        };
        answer.retry_after = error.retry_after();
        answer.provider = error.provider().map(str::to_owned);
        answer
    }
}

/// Which API's shapes a route answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// OpenAI's (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`,
    /// the admin API).
    OpenAi,
    /// Anthropic's (`/v1/messages`).
    Anthropic,
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        self.into_response_for(Wire::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_limit_maps_to_the_status_sdks_expect() {
        let limited = RequestError::key_limited(
            "team-a",
            &CoreError::RateLimited {
                bucket: "requests/1m".into(),
                retry_after: Duration::from_millis(1_500),
            },
        );
        assert_eq!(
            (limited.status, limited.code.as_deref()),
            (429, Some("rate_limit_exceeded"))
        );
        assert_eq!(limited.retry_after, Some(Duration::from_millis(1_500)));
        let too_big = RequestError::key_limited(
            "team-a",
            &CoreError::OverCapacity {
                bucket: "tokens/1m".into(),
                requested: 10,
                limit: 5,
            },
        );
        assert_eq!(too_big.status, 400);
        // Redis unreachable: refused, never let through unmetered.
        let unchecked = RequestError::key_limited(
            "team-a",
            &CoreError::Backend {
                message: "connection refused".into(),
            },
        );
        assert_eq!(unchecked.status, 503);
        assert_eq!(
            unchecked.anthropic_body()["error"]["type"],
            "overloaded_error"
        );
    }
}
