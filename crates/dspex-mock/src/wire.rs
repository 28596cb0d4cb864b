//! HTTP plumbing shared by the routes: provider-shaped errors, JSON/SSE/truncated
//! bodies and rate-limit headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use crate::limits::{LimitInfo, LimitState};

/// Which provider's wire conventions a route follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Anthropic,
}

/// An error answer, rendered in the route's provider shape.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// OpenAI's `code` (Anthropic has none).
    pub(crate) code: Option<&'static str>,
    /// OpenAI's `param` (Anthropic has none).
    pub(crate) param: Option<String>,
    pub(crate) retry_after_secs: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
            param: None,
            retry_after_secs: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 for a request parameter, with OpenAI's `param` and `code`.
    pub(crate) fn invalid_param(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code: Some(code),
            param: Some(param.into()),
            ..Self::bad_request(message)
        }
    }

    /// An error for an arbitrary status code, with the provider's default message
    /// if `message` is empty.
    pub(crate) fn status(code: u16, message: &str, flavor: Flavor) -> Self {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if message.is_empty() {
            default_message(status, flavor).to_owned()
        } else {
            message.to_owned()
        };
        Self::new(status, message)
    }

    /// Renders the error body and headers.
    pub(crate) fn into_response(self, flavor: Flavor) -> Response {
        let body = match flavor {
            Flavor::OpenAi => {
                let code = self.code.or_else(|| openai_code(self.status));
                json!({"error": {
                    "message": self.message,
                    "type": openai_type(self.status),
                    "param": self.param,
                    "code": code,
                }})
            }
            Flavor::Anthropic => json!({
                "type": "error",
                "error": {"type": anthropic_type(self.status), "message": self.message},
            }),
        };
        let mut response = json_response(self.status, body.to_string().into_bytes());
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_exceeded",
        403 => "permission_error",
        404 => "not_found_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

fn openai_code(status: StatusCode) -> Option<&'static str> {
    match status.as_u16() {
        401 => Some("invalid_api_key"),
        429 => Some("rate_limit_exceeded"),
        500..=599 => Some("server_error"),
        _ => None,
    }
}

fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn default_message(status: StatusCode, flavor: Flavor) -> &'static str {
    match (status.as_u16(), flavor) {
        (429, Flavor::OpenAi) => "Rate limit reached for requests. Please try again later.",
        (429, Flavor::Anthropic) => {
            "Number of requests has exceeded your rate limit. Please try again later."
        }
        (500, Flavor::OpenAi) => {
            "The server had an error while processing your request. Sorry about that!"
        }
        (500, Flavor::Anthropic) => "Internal server error",
        (502, _) => "Bad gateway",
        (503, Flavor::OpenAi) => "The engine is currently overloaded, please try again later.",
        (503, Flavor::Anthropic) => "Service unavailable",
        (529, _) => "Overloaded",
        (400, _) => "Invalid request",
        (401, _) => "Invalid authentication",
        (403, _) => "Permission denied",
        (404, _) => "Not found",
        _ => "Mock error",
    }
}

/// A complete JSON response.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(Body::from(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A complete server-sent-events response.
pub(crate) fn sse_response(body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(Body::from(body.into()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A 200 JSON response whose body breaks off after half its bytes: the half is sent
/// (and flushed), then the body stream fails, so the server aborts the connection
/// mid-body and the client sees an incomplete message.
pub(crate) fn truncated_json_response(body: &[u8]) -> Response {
    let half = Bytes::copy_from_slice(body.get(..body.len() / 2).unwrap_or_default());
    let chunks = futures::stream::unfold(Some(Some(half)), |state| async move {
        match state {
            Some(Some(half)) => Some((Ok(half), Some(None))),
            Some(None) => {
                // Let the half reach the client before the connection is cut.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let error = std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "mock truncated the body",
                );
                Some((Err(error), None))
            }
            None => None,
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Inserts a header whose value is known to be valid (digits, ASCII).
pub(crate) fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Adds the rate-limit headers: OpenAI's `x-ratelimit-*` always, and Anthropic's
/// `anthropic-ratelimit-*` for the Anthropic flavor.
pub(crate) fn limit_headers(headers: &mut HeaderMap, info: &LimitInfo, flavor: Flavor) {
    let write = |headers: &mut HeaderMap, state: &LimitState, names: [&'static str; 6]| {
        let [limit, remaining, reset, a_limit, a_remaining, a_reset] = names;
        put(headers, limit, &state.limit.to_string());
        put(headers, remaining, &state.remaining.to_string());
        put(headers, reset, &openai_duration(state.reset));
        if flavor == Flavor::Anthropic {
            put(headers, a_limit, &state.limit.to_string());
            put(headers, a_remaining, &state.remaining.to_string());
            put(headers, a_reset, &rfc3339(SystemTime::now() + state.reset));
        }
    };
    if let Some(state) = &info.requests {
        write(
            headers,
            state,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ],
        );
    }
    if let Some(state) = &info.tokens {
        write(
            headers,
            state,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                "anthropic-ratelimit-tokens-limit",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
            ],
        );
    }
}

/// A duration the way OpenAI writes it in `x-ratelimit-reset-*`: `"20ms"`, `"1.2s"`.
pub(crate) fn openai_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let text = format!("{:.3}", duration.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}s")
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub(crate) fn retry_after_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(1)
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// An RFC 3339 UTC timestamp with second precision.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(openai_duration(Duration::from_secs(6)), "6s");
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "2024-02-29T23:59:59Z"
        );
    }
}
