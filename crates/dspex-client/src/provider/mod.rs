//! Providers on the wire: the HTTP transport (one attempt of a call) and the
//! OpenAI and Anthropic encodings it uses.

pub(crate) mod anthropic;
mod json_text;
pub(crate) mod openai;
mod tool_calls;

pub(crate) use tool_calls::ToolCalls;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::client::ProviderShared;
use crate::config::ProviderKind;
use crate::error::{ApiErrorKind, ClientError, TimeoutPhase};
use crate::events::{Event, EventKind, LimitSource, Operation, RateLimitEvent};
use crate::types::{ChatDelta, Choice, Usage};

/// Why a body could not be encoded or decoded.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The request cannot be expressed for this provider.
    Invalid(String),
    /// The response is not what the API promises.
    Malformed(String),
    /// The stream carried an error event.
    Upstream {
        status: u16,
        message: String,
        code: Option<String>,
    },
}

impl WireError {
    pub(crate) fn malformed(error: &serde_json::Error, body: &[u8]) -> Self {
        Self::Malformed(format!("{error}; body starts: {}", excerpt(body)))
    }
}

/// The first 120 characters of a body, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// A complete chat response, before the client adds latency and attempts.
pub(crate) struct ParsedChat {
    pub(crate) id: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) choices: Vec<Choice>,
    pub(crate) usage: Option<Usage>,
}

/// A complete embeddings response.
pub(crate) struct ParsedEmbeddings {
    pub(crate) model: Option<String>,
    pub(crate) vectors: Vec<Vec<f32>>,
    pub(crate) usage: Usage,
}

/// Usage numbers as they arrive in a stream: each field, when present, is the
/// running total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageUpdate {
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cached_input_tokens: Option<u64>,
    pub(crate) cache_write_tokens: Option<u64>,
}

impl UsageUpdate {
    pub(crate) fn apply(&self, usage: &mut Usage) {
        if let Some(v) = self.input_tokens {
            usage.input_tokens = v;
        }
        if let Some(v) = self.output_tokens {
            usage.output_tokens = v;
        }
        if let Some(v) = self.cached_input_tokens {
            usage.cached_input_tokens = v;
        }
        if let Some(v) = self.cache_write_tokens {
            usage.cache_write_tokens = v;
        }
    }
}

/// One decoded piece of a stream.
#[derive(Debug)]
pub(crate) enum Chunk {
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    Delta(ChatDelta),
    Usage(UsageUpdate),
    End,
}

/// One server-sent event.
#[derive(Debug)]
pub(crate) struct RawEvent {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// Turns a provider's stream events into [`Chunk`]s.
pub(crate) enum Decoder {
    OpenAi(openai::StreamDecoder),
    Anthropic(anthropic::StreamDecoder),
}

impl Decoder {
    pub(crate) fn new(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::OpenAi | ProviderKind::Scripted => {
                Self::OpenAi(openai::StreamDecoder::default())
            }
            ProviderKind::Anthropic => Self::Anthropic(anthropic::StreamDecoder),
        }
    }

    /// Folds one delta's tool-call fragments into `calls`.
    pub(crate) fn merge_tool_calls(&self, calls: &mut ToolCalls, fragments: &serde_json::Value) {
        match self {
            Self::OpenAi(_) => calls.merge_openai(fragments),
            Self::Anthropic(_) => calls.merge_anthropic(fragments),
        }
    }

    pub(crate) fn decode(
        &mut self,
        event: &RawEvent,
        out: &mut Vec<Chunk>,
    ) -> Result<(), WireError> {
        match self {
            Self::OpenAi(decoder) => decoder.decode(&event.data, out),
            Self::Anthropic(decoder) => decoder.decode(&event.event, &event.data, out),
        }
    }
}

/// Sends one attempt of a call. The HTTP implementation is the only one today;
/// the trait keeps the protection stack independent of how bytes move.
pub(crate) trait Transport: Send + Sync + 'static {
    fn send(&self, call: Call) -> Sent;
}

/// An attempt's future: already answered (an in-process transport, which then
/// costs no boxed future) or on its way.
#[allow(
    clippy::large_enum_variant,
    reason = "the inline reply is the point: an in-process answer costs no allocation"
)]
pub(crate) enum Sent {
    Ready(Option<Result<Reply, ClientError>>),
    Later(BoxFuture<'static, Result<Reply, ClientError>>),
}

impl Future for Sent {
    type Output = Result<Reply, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut *self {
            // Polled again after it finished: never resolves a second time.
            Self::Ready(result) => result
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            Self::Later(future) => future.as_mut().poll(cx),
        }
    }
}

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
    http: HttpClient,
    headers: HeaderMap,
    chat_uri: Uri,
    embeddings_uri: Uri,
}

fn header_value(key: &str, value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|_| {
        ClientError::Config(dspex_core::CoreError::config(
            key,
            "holds characters not allowed in an HTTP header",
        ))
    })
}

fn config_error(key: String, message: impl Into<String>) -> ClientError {
    ClientError::Config(dspex_core::CoreError::config(key, message))
}

impl HttpTransport {
    pub(crate) fn new(shared: Arc<ProviderShared>) -> Result<Self, ClientError> {
        let config = &shared.config;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("dspex/", env!("CARGO_PKG_VERSION"))),
        );
        let key_path = format!("providers.{}.api_key_env", config.id);
        match config.kind {
            ProviderKind::OpenAi | ProviderKind::Scripted => {
                if let Some(key) = &config.api_key {
                    let mut value =
                        header_value(&key_path, &format!("Bearer {}", key.secret.expose()))?;
                    value.set_sensitive(true);
                    headers.insert(header::AUTHORIZATION, value);
                }
            }
            ProviderKind::Anthropic => {
                if let Some(key) = &config.api_key {
                    let mut value = header_value(&key_path, key.secret.expose())?;
                    value.set_sensitive(true);
                    headers.insert(HeaderName::from_static("x-api-key"), value);
                }
                headers.insert(
                    HeaderName::from_static("anthropic-version"),
                    header_value(
                        &format!("providers.{}.anthropic_version", config.id),
                        &config.anthropic_version,
                    )?,
                );
            }
        }
        for (name, value) in &config.headers {
            let key = format!("providers.{}.headers.{name}", config.id);
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| config_error(key.clone(), "is not a valid header name"))?;
            let mut value = header_value(&key, value)?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
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
        let uri = |path: &str| {
            format!("{}{path}", config.base_url)
                .parse::<Uri>()
                .map_err(|e| {
                    config_error(format!("providers.{}.base_url", config.id), e.to_string())
                })
        };
        let (chat_uri, embeddings_uri) = match config.kind {
            ProviderKind::OpenAi | ProviderKind::Scripted => {
                (uri("/chat/completions")?, uri("/embeddings")?)
            }
            ProviderKind::Anthropic => (uri("/v1/messages")?, uri("/v1/embeddings")?),
        };
        Ok(Self {
            shared,
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
        let uri = match call.inner().operation {
            Operation::Chat | Operation::ChatStream => self.chat_uri.clone(),
            Operation::Embeddings => self.embeddings_uri.clone(),
        };
        let config = &self.shared.config;
        let stream = call.inner().operation == Operation::ChatStream;
        let model = &*call.inner().model;
        let body = call.body(|payload| match (payload, config.kind) {
            (Payload::Embeddings(request), _) => openai::embeddings_body(request, model),
            (Payload::Chat(request), ProviderKind::Anthropic) => {
                anthropic::chat_body(request, model, stream, config.default_max_tokens)
            }
            (Payload::Chat(request), _) => {
                openai::chat_body(request, model, stream, config.stream_usage)
            }
        });
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
        Box::pin(async move { attempt(&shared, &call, sent).await })
    }
}

async fn attempt(
    shared: &ProviderShared,
    call: &Call,
    sent: hyper_util::client::legacy::ResponseFuture,
) -> Result<Reply, ClientError> {
    let inner = call.inner();
    let config = &shared.config;
    let provider = &shared.id;
    let context = || ClientError::context_for(&inner.trail);
    let first_byte = config.timeouts.first_byte;
    let started = Instant::now();
    // The timeout layer already bounds the whole attempt; a second timer is only
    // worth its cost when the first-byte bound is tighter.
    let response = if first_byte < config.timeouts.total {
        match tokio::time::timeout(first_byte, sent).await {
            Ok(result) => result,
            Err(_) => {
                return Err(ClientError::Timeout {
                    provider: Arc::clone(provider),
                    phase: TimeoutPhase::FirstByte,
                    after: first_byte,
                    context: context(),
                });
            }
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
        return Err(api_error(shared, call, response, request_id).await);
    }
    let body = match inner.operation {
        Operation::Chat => {
            let bytes = read_body(response.into_body())
                .await
                .map_err(|e| transport_error(shared, call, &e, false))?;
            let parsed = match config.kind {
                ProviderKind::OpenAi | ProviderKind::Scripted => openai::parse_chat(&bytes),
                ProviderKind::Anthropic => anthropic::parse_chat(&bytes),
            };
            ReplyBody::Chat(parsed.map_err(|e| wire_error(shared, call, e, false))?)
        }
        Operation::Embeddings => {
            let bytes = read_body(response.into_body())
                .await
                .map_err(|e| transport_error(shared, call, &e, false))?;
            ReplyBody::Embeddings(
                openai::parse_embeddings(&bytes, call.inputs())
                    .map_err(|e| wire_error(shared, call, e, false))?,
            )
        }
        Operation::ChatStream => {
            let mut events = response.into_body().into_data_stream().eventsource();
            let remaining = first_byte.saturating_sub(started.elapsed());
            let first = match tokio::time::timeout(remaining, events.next()).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        provider: Arc::clone(provider),
                        phase: TimeoutPhase::FirstByte,
                        after: first_byte,
                        context: context(),
                    });
                }
                // Nothing has reached the caller yet, so these stay retryable.
                Ok(None) => {
                    return Err(ClientError::Truncated {
                        provider: Arc::clone(provider),
                        streaming: false,
                        message: "the stream closed before its first event".into(),
                        context: context(),
                    });
                }
                Ok(Some(Err(error))) => return Err(stream_error(shared, call, &error, false)),
                Ok(Some(Ok(event))) => event,
            };
            let provider = Arc::clone(provider);
            let trail = inner.trail.clone();
            let rest = events.map_err(move |error| ClientError::Truncated {
                provider: Arc::clone(&provider),
                streaming: true,
                message: sse_message(&error),
                context: Box::new(trail.snapshot()),
            });
            let first = RawEvent {
                event: first.event,
                data: first.data,
            };
            // An error as the very first event (an overloaded upstream that
            // already sent 200) reached no caller yet: fail the attempt, so
            // the retry layer and the breaker see it like an error status.
            let mut probe = Vec::new();
            if let Err(error @ WireError::Upstream { .. }) =
                Decoder::new(config.kind).decode(&first, &mut probe)
            {
                return Err(wire_error(shared, call, error, false));
            }
            let events =
                futures::stream::once(async move { Ok(first) }).chain(rest.map_ok(|e| RawEvent {
                    event: e.event,
                    data: e.data,
                }));
            ReplyBody::Stream(Box::pin(events))
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
    let provider = Arc::clone(&shared.id);
    let context = ClientError::context_for(&call.inner().trail);
    let connecting = error
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect);
    if connecting && timed_out(error) {
        return ClientError::Timeout {
            provider,
            phase: TimeoutPhase::Connect,
            after: shared.config.timeouts.connect,
            context,
        };
    }
    // Messages never carry the URL: a base URL may carry credentials.
    let message = shared.scrub(&error_message(error));
    let body_broke = error
        .downcast_ref::<hyper::Error>()
        .is_some_and(|e| e.is_incomplete_message() || e.is_body_write_aborted() || e.is_parse());
    if connecting {
        ClientError::Connect {
            provider,
            message,
            context,
        }
    } else if body_broke || error.downcast_ref::<hyper::Error>().is_some() {
        ClientError::Truncated {
            provider,
            streaming,
            message,
            context,
        }
    } else {
        ClientError::Connect {
            provider,
            message,
            context,
        }
    }
}

fn sse_message(error: &eventsource_stream::EventStreamError<hyper::Error>) -> String {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => error_message(e),
        other => other.to_string(),
    }
}

fn stream_error(
    shared: &ProviderShared,
    call: &Call,
    error: &eventsource_stream::EventStreamError<hyper::Error>,
    streaming: bool,
) -> ClientError {
    match error {
        eventsource_stream::EventStreamError::Transport(e) => {
            transport_error(shared, call, e, streaming)
        }
        other => ClientError::MalformedResponse {
            provider: Arc::clone(&shared.id),
            message: other.to_string(),
            context: ClientError::context_for(&call.inner().trail),
        },
    }
}

pub(crate) fn wire_error(
    shared: &ProviderShared,
    call: &Call,
    error: WireError,
    streaming: bool,
) -> ClientError {
    let provider = Arc::clone(&shared.id);
    let context = ClientError::context_for(&call.inner().trail);
    match error {
        WireError::Invalid(message) => ClientError::InvalidRequest {
            provider,
            message,
            context,
        },
        WireError::Malformed(message) => ClientError::MalformedResponse {
            provider,
            message: if streaming {
                format!("garbled stream event: {}", shared.scrub(&message))
            } else {
                shared.scrub(&message)
            },
            context,
        },
        WireError::Upstream {
            status,
            message,
            code,
        } => ClientError::Api {
            provider,
            kind: ApiErrorKind::from_status(status),
            status,
            message: shared.scrub(&message),
            code,
            retry_after: None,
            request_id: None,
            context,
        },
    }
}

/// The most of an error body read; real error bodies are far smaller.
const MAX_ERROR_BODY: usize = 64 * 1024;

async fn api_error(
    shared: &ProviderShared,
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
    let parsed = match shared.config.kind {
        ProviderKind::OpenAi | ProviderKind::Scripted => openai::parse_error(&body),
        ProviderKind::Anthropic => anthropic::parse_error(&body),
    };
    let (message, code) = parsed.unwrap_or_else(|| {
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
    ClientError::Api {
        provider: Arc::clone(&shared.id),
        kind: ApiErrorKind::from_status(status),
        status,
        message: shared.scrub(&message),
        code,
        retry_after,
        request_id,
        context: ClientError::context_for(&call.inner().trail),
    }
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

impl ProviderShared {
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) => key.secret.scrub(text),
            None => text.to_owned(),
        }
    }
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
