//! The HTTP transport: one attempt of a call, in any [`Dialect`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::Uri;
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Chunk, Dialect, Sent, Transport, WireError, excerpt};
use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::client::ProviderShared;
use crate::config::ProviderConfig;
use crate::error::{ClientError, ClientErrorKind, TimeoutPhase};
use crate::events::{Event, EventKind, LimitSource, Operation, RateLimitEvent};

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// Sends calls over HTTP with one pooled client per provider.
///
/// Built on hyper-util's pooled client, the layer reqwest itself wraps, rather
/// than on reqwest: reqwest's redirect layer re-parses the URL twice per
/// request (measured: ~13k instructions a call, more than this whole crate's
/// protection stack), and LM APIs never redirect.
pub(crate) struct HttpTransport {
    shared: Arc<ProviderShared>,
    dialect: &'static dyn Dialect,
    http: HttpClient,
    headers: HeaderMap,
    chat_uri: Uri,
    embeddings_uri: Uri,
}

/// A header value from config; the error names the key.
pub(crate) fn header_value(key: &str, value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|_| {
        config_error(
            key.to_owned(),
            "holds characters not allowed in an HTTP header",
        )
    })
}

fn config_error(key: String, message: impl Into<String>) -> ClientError {
    ClientError::config(dspex_core::CoreError::config(key, message))
}

/// Every header a request of `config` carries: content type, user agent, the
/// dialect's authentication and version headers, the configured extras.
/// Values that may hold credentials are marked sensitive.
pub(crate) fn request_headers(
    config: &ProviderConfig,
    dialect: &dyn Dialect,
) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("dspex/", env!("CARGO_PKG_VERSION"))),
    );
    dialect.headers(config, &mut headers)?;
    for (name, value) in &config.headers {
        let key = format!("providers.{}.headers.{name}", config.id);
        let name = header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| config_error(key.clone(), "is not a valid header name"))?;
        let mut value = header_value(&key, value)?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// The endpoint `path` under the configured base URL.
pub(crate) fn endpoint(config: &ProviderConfig, path: &str) -> Result<Uri, ClientError> {
    format!("{}{path}", config.base_url)
        .parse::<Uri>()
        .map_err(|e| config_error(format!("providers.{}.base_url", config.id), e.to_string()))
}

impl HttpTransport {
    pub(crate) fn new(
        shared: Arc<ProviderShared>,
        dialect: &'static dyn Dialect,
    ) -> Result<Self, ClientError> {
        let config = &shared.config;
        let headers = request_headers(config, dialect)?;
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeouts.connect));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_platform_verifier()
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(connector);
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(config.pool_size)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
        let chat_uri = endpoint(config, dialect.chat_path())?;
        let embeddings_uri = endpoint(config, dialect.embeddings_path())?;
        Ok(Self {
            shared,
            dialect,
            http,
            headers,
            chat_uri,
            embeddings_uri,
        })
    }
}

impl Transport for HttpTransport {
    fn send(&self, call: Call) -> Sent {
        Sent::Later(self.send_http(call))
    }
}

impl HttpTransport {
    fn send_http(&self, call: Call) -> BoxFuture<'static, Result<Reply, ClientError>> {
        let shared = Arc::clone(&self.shared);
        let dialect = self.dialect;
        let uri = match call.inner().operation {
            Operation::Chat | Operation::ChatStream => self.chat_uri.clone(),
            Operation::Embeddings => self.embeddings_uri.clone(),
        };
        let stream = call.inner().operation == Operation::ChatStream;
        let model = &*call.inner().model;
        let config = &self.shared.config;
        let body = call.body(|payload: &Payload| dialect.encode(payload, model, stream, config));
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                let error = wire_error(&self.shared, &call, error, false);
                return Box::pin(async move { Err(error) });
            }
        };
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = self.headers.clone();
        let sent = self.http.request(request);
        Box::pin(async move { attempt(&shared, dialect, &call, sent).await })
    }
}

async fn attempt(
    shared: &Arc<ProviderShared>,
    dialect: &'static dyn Dialect,
    call: &Call,
    sent: hyper_util::client::legacy::ResponseFuture,
) -> Result<Reply, ClientError> {
    let inner = call.inner();
    let config = &shared.config;
    let provider = &shared.id;
    let first_byte = config.timeouts.first_byte;
    let started = Instant::now();
    let first_byte_timeout =
        || ClientError::timeout(TimeoutPhase::FirstByte, first_byte).attach(provider, &inner.trail);
    // The timeout layer already bounds the whole attempt; a second timer is only
    // worth its cost when the first-byte bound is tighter.
    let response = if first_byte < config.timeouts.total {
        match tokio::time::timeout(first_byte, sent).await {
            Ok(result) => result,
            Err(_) => return Err(first_byte_timeout()),
        }
    } else {
        sent.await
    };
    let response = response.map_err(|e| transport_error(shared, call, &e, false))?;
    let request_id = response
        .headers()
        .get("x-request-id")
        .or_else(|| response.headers().get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !response.status().is_success() {
        return Err(api_error(shared, dialect, call, response, request_id).await);
    }
    let body = match inner.operation {
        Operation::Chat => {
            let bytes = read_body(response.into_body())
                .await
                .map_err(|e| transport_error(shared, call, &e, false))?;
            ReplyBody::Chat(
                dialect
                    .parse_chat(&bytes)
                    .map_err(|e| wire_error(shared, call, e, false))?,
            )
        }
        Operation::Embeddings => {
            let bytes = read_body(response.into_body())
                .await
                .map_err(|e| transport_error(shared, call, &e, false))?;
            ReplyBody::Embeddings(
                dialect
                    .parse_embeddings(&bytes, call.inputs())
                    .map_err(|e| wire_error(shared, call, e, false))?,
            )
        }
        Operation::ChatStream => {
            let mut events = response.into_body().into_data_stream().eventsource();
            let remaining = first_byte.saturating_sub(started.elapsed());
            let first = match tokio::time::timeout(remaining, events.next()).await {
                Err(_) => return Err(first_byte_timeout()),
                // Nothing has reached the caller yet, so these stay retryable.
                Ok(None) => {
                    return Err(ClientError::new(
                        ClientErrorKind::Truncated { streaming: false },
                        "the stream closed before its first event",
                    )
                    .attach(provider, &inner.trail));
                }
                Ok(Some(Err(error))) => return Err(first_event_error(shared, call, &error)),
                Ok(Some(Ok(event))) => event,
            };
            let mut decoder = dialect.stream_decoder();
            let mut chunks = Vec::new();
            // An error as the very first event (an overloaded upstream that
            // already sent 200) reached no caller yet: fail the attempt, so
            // the retry layer and the breaker see it like an error status.
            if let Err(error) = decoder.decode(&first.event, &first.data, &mut chunks) {
                return Err(wire_error(shared, call, error, false));
            }
            let rest = {
                let shared = Arc::clone(shared);
                let call = call.clone();
                events.map(move |event| {
                    // Once the stream has started, any broken event is a truncation.
                    let event = event.map_err(|error| {
                        ClientError::new(
                            ClientErrorKind::Truncated { streaming: true },
                            shared.scrub(&sse_message(&error)),
                        )
                        .attach(&shared.id, &call.inner().trail)
                    })?;
                    let mut chunks = Vec::with_capacity(2);
                    decoder
                        .decode(&event.event, &event.data, &mut chunks)
                        .map_err(|error| wire_error(&shared, &call, error, true))?;
                    Ok::<Vec<Chunk>, ClientError>(chunks)
                })
            };
            ReplyBody::Stream(Box::pin(
                futures::stream::once(async move { Ok(chunks) }).chain(rest),
            ))
        }
    };
    let mut reply = Reply::new(body, request_id);
    reply.started = started;
    Ok(reply)
}

async fn read_body(body: Incoming) -> Result<Bytes, hyper::Error> {
    Ok(body.collect().await?.to_bytes())
}

/// An error with its causes, as text.
fn error_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether any cause in the chain is an I/O timeout.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Maps a failure of the connection or of reading the body.
fn transport_error(
    shared: &ProviderShared,
    call: &Call,
    error: &(dyn std::error::Error + 'static),
    streaming: bool,
) -> ClientError {
    let connecting = error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect);
    let error = if connecting && timed_out(error) {
        ClientError::timeout(TimeoutPhase::Connect, shared.config.timeouts.connect)
    } else {
        // Messages never carry the URL: a base URL may carry credentials.
        let message = shared.scrub(&error_message(error));
        if !connecting && error.downcast_ref::<hyper::Error>().is_some() {
            // The connection was made and broke while the body was read.
            ClientError::new(ClientErrorKind::Truncated { streaming }, message)
        } else {
            ClientError::new(ClientErrorKind::Connect, message)
        }
    };
    error.attach(&shared.id, &call.inner().trail)
}

fn sse_message(error: &eventsource_stream::EventStreamError<hyper::Error>) -> String {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => error_message(e),
        other => other.to_string(),
    }
}

/// A failure reading a stream's first event, which has reached no caller yet.
fn first_event_error(
    shared: &ProviderShared,
    call: &Call,
    error: &eventsource_stream::EventStreamError<hyper::Error>,
) -> ClientError {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => {
            transport_error(shared, call, e, false)
        }
        other => ClientError::new(
            ClientErrorKind::MalformedResponse {
                retryable: shared.config.retry_malformed,
            },
            other.to_string(),
        )
        .attach(&shared.id, &call.inner().trail),
    }
}

/// The client error of a body that could not be encoded or decoded.
pub(crate) fn wire_error(
    shared: &ProviderShared,
    call: &Call,
    error: WireError,
    streaming: bool,
) -> ClientError {
    let error = match error {
        WireError::Invalid(message) => ClientError::new(ClientErrorKind::InvalidRequest, message),
        // Before anything reached the caller, trying again may get a whole
        // reply; after, it would repeat what the caller already has.
        WireError::Malformed(message) => ClientError::new(
            ClientErrorKind::MalformedResponse {
                retryable: !streaming && shared.config.retry_malformed,
            },
            if streaming {
                format!("garbled stream event: {}", shared.scrub(&message))
            } else {
                shared.scrub(&message)
            },
        ),
        WireError::Upstream {
            status,
            message,
            code,
        } => ClientError::api(status, shared.scrub(&message), code, None, None),
    };
    error.attach(&shared.id, &call.inner().trail)
}

/// The most of an error body read; real error bodies are far smaller.
const MAX_ERROR_BODY: usize = 64 * 1024;

async fn api_error(
    shared: &ProviderShared,
    dialect: &dyn Dialect,
    call: &Call,
    response: http::Response<Incoming>,
    request_id: Option<String>,
) -> ClientError {
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers(), status == 429, SystemTime::now());
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY);
    let body = limited
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let (message, code) = dialect.parse_error(&body).unwrap_or_else(|| {
        let text = excerpt(&body);
        (
            if text.is_empty() {
                format!("HTTP {status} with an empty body")
            } else {
                text
            },
            None,
        )
    });
    if status == 429 {
        // Bounded: one reply must not stop a provider for longer than a retry
        // would ever wait.
        let pause = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(shared.config.retry.max_retry_after);
        shared.limiter.pause(pause);
        call.inner().trail.push(
            "rate_limit",
            format!(
                "upstream 429: pausing for {}",
                dspex_core::context::format_duration(pause)
            ),
        );
        shared.events.publish(Event::now(
            Some(call.inner().trail.correlation_id().clone()),
            EventKind::RateLimited(RateLimitEvent {
                provider: Arc::clone(&shared.id),
                bucket: "upstream".into(),
                wait: pause,
                source: LimitSource::Upstream,
            }),
        ));
    }
    ClientError::api(
        status,
        shared.scrub(&message),
        code,
        retry_after,
        request_id,
    )
    .attach(&shared.id, &call.inner().trail)
}

/// The wait an error response asks for: `retry-after-ms`, `retry-after`
/// (seconds or an HTTP date), and for 429s the rate-limit reset headers of
/// OpenAI (`x-ratelimit-reset-*`, Go durations such as `6m0s`) and Anthropic
/// (`anthropic-ratelimit-*-reset`, RFC 3339 times).
pub(crate) fn retry_after(
    headers: &HeaderMap,
    rate_limited: bool,
    now: SystemTime,
) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1_000.0).ok();
    }
    if let Some(value) = get("retry-after") {
        if let Ok(secs) = value.parse::<f64>() {
            return Duration::try_from_secs_f64(secs).ok();
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(now).unwrap_or_default());
        }
    }
    if !rate_limited {
        return None;
    }
    // Reset headers give the time until a bucket is full again, which is longer
    // than the time until the next request fits: take the soonest.
    let mut soonest: Option<Duration> = None;
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        if let Some(d) = get(name).and_then(parse_go_duration) {
            soonest = Some(soonest.map_or(d, |l| l.min(d)));
        }
    }
    for name in [
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-reset",
    ] {
        if let Some(at) = get(name).and_then(|v| humantime::parse_rfc3339_weak(v).ok()) {
            let d = at.duration_since(now).unwrap_or_default();
            soonest = Some(soonest.map_or(d, |l| l.min(d)));
        }
    }
    soonest
}

/// Parses Go's duration format (`1h2m3.5s`, `6m0s`, `20ms`).
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0_f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().ok()?;
        let (scale, unit_len) = if tail.starts_with("ms") {
            (1e-3, 2)
        } else if tail.starts_with("us") {
            (1e-6, 2)
        } else if tail.starts_with("µs") {
            (1e-6, "µs".len())
        } else if tail.starts_with("ns") {
            (1e-9, 2)
        } else if tail.starts_with('h') {
            (3600.0, 1)
        } else if tail.starts_with('m') {
            (60.0, 1)
        } else if tail.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += value * scale;
        rest = tail.get(unit_len..)?;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_go_duration("1.5s"),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3s"),
            Some(Duration::from_secs(3_723))
        );
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("5"), None);
    }

    #[test]
    fn retry_after_headers_in_every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, true, now), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(
            retry_after(&h, true, now),
            Some(Duration::from_millis(1_500))
        );
        let mut h = HeaderMap::new();
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&h, false, now), Some(Duration::from_secs(30)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        assert_eq!(retry_after(&h, true, now), Some(Duration::from_secs(1)));
        assert_eq!(
            retry_after(&h, false, now),
            None,
            "reset headers only count for 429s"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "anthropic-ratelimit-requests-reset",
            HeaderValue::from_static("2023-11-14T22:13:40Z"),
        );
        assert_eq!(retry_after(&h, true, now), Some(Duration::from_secs(20)));
    }
}
