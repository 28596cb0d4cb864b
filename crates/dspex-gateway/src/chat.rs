//! One chat request, from body to answer, for both wire formats:
//!
//! 1. the caller's key (401), the body read within its limit and time (413,
//!    408) and decoded (400 naming the field);
//! 2. the `model` routed to targets (404), the key's model list (403), and
//!    what would not translate to a target's format (400);
//! 3. the key's own rate limits and budget (429 with Retry-After), reserved
//!    with the call's estimate;
//! 4. the client, target by target (fallbacks), with the key's tag and
//!    cache namespace;
//! 5. the answer in the caller's format, the key's reservations settled with
//!    the real usage (at the end of a stream, or with the estimate when the
//!    caller goes away mid-stream).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use dspex_analytics::record::KEY_TAG;
use dspex_analytics::time::unix_ms;
use dspex_client::{
    CacheMode, ChatParams, ChatResponse, ChatStream, ClientError, ClientErrorKind, Message,
    RequestOptions, StreamEvent, Usage, WireFormat,
};
use dspex_core::CorrelationId;
use dspex_core::protect::{CircuitState, Cost, Reservation};
use futures::{Stream, StreamExt};

use crate::anthropic::{self, EventEncoder, MessagesRequest};
use crate::config::{CacheNamespace, Target};
use crate::error::{RequestError, Wire};
use crate::keys::Tenant;
use crate::openai;
use crate::server::{Caller, Shared};
use crate::spend::{Hold, Ledger};

pub(crate) const CORRELATION: HeaderName = HeaderName::from_static("x-dspex-correlation-id");
pub(crate) const CACHE: HeaderName = HeaderName::from_static("x-dspex-cache");
const PROVIDER: HeaderName = HeaderName::from_static("x-dspex-provider");
const MODEL: HeaderName = HeaderName::from_static("x-dspex-model");

/// The lower-case name of a circuit state, as `/readyz` and the dashboard
/// show it.
pub(crate) fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

/// What one routed request resolved to, for headers and metric labels.
pub(crate) struct Resolved {
    pub(crate) provider: String,
    pub(crate) model: String,
}

/// Labels and headers of a finished request.
pub(crate) struct Outcome {
    pub(crate) resolved: Option<Resolved>,
    pub(crate) cache: &'static str,
    pub(crate) key: Option<Arc<str>>,
}

impl Outcome {
    fn new(key: Option<Arc<str>>) -> Self {
        Self {
            resolved: None,
            cache: "miss",
            key,
        }
    }
}

/// Reads a request body up to the configured limit (413 past it) within the
/// body timeout (408 past it: a client trickling its body holds no slot for
/// ever).
pub(crate) async fn read_body(shared: &Shared, body: Body) -> Result<Bytes, RequestError> {
    let limit = shared.config.max_body_bytes;
    let read = axum::body::to_bytes(body, limit);
    match tokio::time::timeout(shared.config.body_read_timeout, read).await {
        Err(_) => Err(RequestError::timeout_reading_body(
            shared.config.body_read_timeout,
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>())
                || error.to_string().contains("length limit");
            if too_large {
                Err(RequestError::too_large(limit))
            } else {
                Err(RequestError::bad_request(
                    None,
                    format!("the request body could not be read: {error}"),
                ))
            }
        }
    }
}

/// What a key reserved for one call: room in its rate limits and in its
/// budget. Settled once with the real usage; dropped unsettled (the caller
/// went away mid-stream), it keeps the estimate, so a key never gets more
/// than its limits.
pub(crate) struct KeyCharge {
    shared: Arc<Shared>,
    reservation: Option<Reservation>,
    hold: Option<(Arc<Ledger>, Hold)>,
}

impl KeyCharge {
    pub(crate) fn none(shared: &Arc<Shared>) -> Self {
        Self {
            shared: Arc::clone(shared),
            reservation: None,
            hold: None,
        }
    }

    /// Settles with what an answered call used (zero for a cache hit), or
    /// with nothing when the call failed.
    pub(crate) fn settle(mut self, answered: Option<Answered<'_>>) {
        let usage = answered.as_ref().map_or_else(Usage::default, |a| *a.usage);
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(Cost::call(usage.input_tokens, usage.output_tokens));
        }
        if let Some((ledger, hold)) = self.hold.take() {
            let cost = answered.map_or(0, |answered| self.cost_of(&answered));
            ledger.settle(hold, cost);
        }
    }

    fn cost_of(&self, answered: &Answered<'_>) -> i64 {
        if *answered.usage == Usage::default() {
            return 0;
        }
        let system = self
            .shared
            .client
            .provider(answered.provider)
            .map_or("", |p| p.system());
        self.shared
            .prices
            .cost_of_call(
                system,
                answered.provider,
                answered.model,
                Some(answered.response_model),
                unix_ms(SystemTime::now()),
                &answered.usage.into(),
            )
            .map_or(0, |cost| cost.nanos)
    }
}

/// What an answered call used, for settling a key's charge.
pub(crate) struct Answered<'a> {
    /// The provider id.
    pub(crate) provider: &'a str,
    /// The model asked for.
    pub(crate) model: &'a str,
    /// The model that answered.
    pub(crate) response_model: &'a str,
    /// Its usage.
    pub(crate) usage: &'a Usage,
}

impl Drop for KeyCharge {
    fn drop(&mut self) {
        // The reservation, dropped, keeps its estimate by itself; the
        // budget hold is charged its estimate here.
        if let Some((ledger, hold)) = self.hold.take() {
            let reserved = hold.reserved();
            ledger.settle(hold, reserved);
        }
    }
}

/// A decoded chat request in the client's types.
pub(crate) struct Inbound {
    requested_model: String,
    messages: Vec<Message>,
    params: ChatParams,
    stream: bool,
    stream_usage: bool,
    /// The request holds something only its own wire format expresses.
    native_only: Option<String>,
}

/// Everything checked and reserved: ready to call.
struct Admitted {
    messages: Vec<Message>,
    stream: bool,
    stream_usage: bool,
    targets: Vec<Target>,
    options: RequestOptions,
    charge: KeyCharge,
}

/// The format a provider speaks, named for errors.
fn format_name(format: Option<WireFormat>) -> &'static str {
    match format {
        Some(WireFormat::OpenAiChat) => "OpenAI Chat Completions",
        Some(WireFormat::AnthropicMessages) => "Anthropic Messages",
        _ => "an in-process model",
    }
}

/// Refuses what would be dropped or mistranslated on the way to `target`:
/// anything only the request's own format expresses reaches only a provider
/// that speaks that format.
fn check_translates(
    shared: &Shared,
    target: &Target,
    wire: Wire,
    inbound: &Inbound,
) -> Result<(), RequestError> {
    let Some(field) = &inbound.native_only else {
        return Ok(());
    };
    let provider = shared
        .client
        .provider(&target.provider)
        .map_err(|e| RequestError::from_client(&e))?;
    let format = provider.capabilities().wire_format;
    let own = match wire {
        Wire::OpenAi => WireFormat::OpenAiChat,
        Wire::Anthropic => WireFormat::AnthropicMessages,
    };
    if format == Some(own) {
        return Ok(());
    }
    Err(RequestError::bad_request(
        Some(field.clone()),
        format!(
            "`{field}` does not translate to provider `{}` ({}): send it only to a provider of the request's own format",
            target.provider,
            format_name(format)
        ),
    ))
}

/// Whether the next fallback should be tried after `error`: the provider
/// is failing fast, has no rate-limit room, or failed after its own
/// retries for a reason that passes.
fn falls_back(error: &ClientError) -> bool {
    matches!(
        error.kind(),
        ClientErrorKind::CircuitOpen | ClientErrorKind::RateLimited { .. }
    ) || error.is_retryable()
}

/// The per-call options from the request's headers and caller.
fn options_from(
    shared: &Shared,
    headers: &HeaderMap,
    correlation_id: &CorrelationId,
    caller: &Caller,
    params: ChatParams,
) -> RequestOptions {
    let mut options = RequestOptions::new()
        .params(params)
        .correlation_id(correlation_id.clone())
        .tag("via", "gateway");
    if let Some(tenant) = caller {
        options = options.tag(KEY_TAG, tenant.key.name.clone());
        if shared.config.cache_namespace == CacheNamespace::PerKey {
            options.cache.namespace = Some(key_namespace(&tenant.key.name));
        }
    }
    options.cache.mode = cache_mode(headers);
    options
}

/// A key's cache namespace: `key/NAME`, or `key-hex/HEX(NAME)` for a name
/// with characters a namespace may not hold (`@`), so two keys can never
/// share one.
pub(crate) fn key_namespace(name: &str) -> String {
    if name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        format!("key/{name}")
    } else {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("key-hex/{hex}")
    }
}

/// `Cache-Control: no-cache` (look up nothing), `no-store` (store nothing),
/// and the `x-dspex-cache` override, which wins.
pub(crate) fn cache_mode(headers: &HeaderMap) -> CacheMode {
    let cache_control = headers
        .get(axum::http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let no_cache = cache_control.contains("no-cache");
    let no_store = cache_control.contains("no-store");
    let mode = match (no_cache, no_store) {
        (true, true) => CacheMode::Skip,
        (true, false) => CacheMode::Refresh,
        (false, true) => CacheMode::NoStore,
        (false, false) => CacheMode::Auto,
    };
    match headers.get(&CACHE).and_then(|v| v.to_str().ok()) {
        Some(value) => match value.trim().to_ascii_lowercase().as_str() {
            "skip" | "off" | "bypass" => CacheMode::Skip,
            "refresh" => CacheMode::Refresh,
            "no-store" => CacheMode::NoStore,
            "always" => CacheMode::Always,
            _ => mode,
        },
        None => mode,
    }
}

/// The caller's correlation id when it sent a usable one, else a new one.
pub(crate) fn correlation_of(headers: &HeaderMap) -> CorrelationId {
    headers
        .get(&CORRELATION)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(CorrelationId::generate, CorrelationId::from)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

pub(crate) fn set_headers(
    response: &mut Response,
    correlation_id: &CorrelationId,
    outcome: &Outcome,
) {
    let headers = response.headers_mut();
    headers.insert(CORRELATION, header_value(correlation_id.as_str()));
    headers.insert(CACHE, HeaderValue::from_static(outcome.cache));
    if let Some(resolved) = &outcome.resolved {
        headers.insert(PROVIDER, header_value(&resolved.provider));
        headers.insert(MODEL, header_value(&resolved.model));
    }
}

/// A request's metric labels. Labels come from the config (provider, model)
/// and the key's name, never from raw request text, so a client cannot grow
/// the series without bound.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct MetricLabels {
    route: &'static str,
    key: Option<Arc<str>>,
    provider: Option<String>,
    model: Option<String>,
    status: u16,
}

/// The counter and histogram of one label set, registered once: building
/// the labels and finding the series in the registry on every request cost
/// as much as the rest of the gateway's bookkeeping.
#[derive(Clone)]
pub(crate) struct MetricHandles {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

/// Counts the request and its latency.
pub(crate) fn record(
    shared: &Shared,
    route: &'static str,
    outcome: Outcome,
    status: u16,
    started: Instant,
) {
    let labels = MetricLabels {
        route,
        key: outcome.key,
        provider: outcome.resolved.as_ref().map(|r| r.provider.clone()),
        model: outcome.resolved.map(|r| r.model),
        status,
    };
    let found = shared.metric_handles.read().get(&labels).cloned();
    let handles = found.unwrap_or_else(|| {
        let pairs = [
            ("route", route.to_owned()),
            ("key", labels.key.as_deref().unwrap_or("none").to_owned()),
            (
                "provider",
                labels.provider.clone().unwrap_or_else(|| "none".into()),
            ),
            (
                "model",
                labels.model.clone().unwrap_or_else(|| "none".into()),
            ),
            ("status", status.to_string()),
        ];
        let handles = MetricHandles {
            requests: metrics::counter!("dspex_gateway_requests_total", &pairs),
            duration: metrics::histogram!("dspex_gateway_request_duration_seconds", &pairs),
        };
        shared
            .metric_handles
            .write()
            .insert(labels, handles.clone());
        handles
    });
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
}

/// Checks the key's model list, the translation, the key's limits and
/// budget; reserves what the call may use.
async fn admit(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    correlation_id: &CorrelationId,
    caller: &Caller,
    wire: Wire,
    inbound: Inbound,
    outcome: &mut Outcome,
) -> Result<Admitted, RequestError> {
    let targets = shared.route(&inbound.requested_model)?;
    let Some(primary) = targets.first() else {
        return Err(RequestError::model_not_found(
            &inbound.requested_model,
            &shared.model_names(caller.as_deref()),
        ));
    };
    let primary_model = shared.model_of(primary);
    outcome.resolved = Some(Resolved {
        provider: primary.provider.clone(),
        model: primary_model.clone(),
    });
    if let Some(tenant) = caller
        && !tenant
            .key
            .allows_model(&inbound.requested_model, &primary.provider, &primary_model)
    {
        return Err(RequestError::forbidden(
            "model_not_allowed",
            Some("model"),
            format!(
                "key `{}` may not use `{}` (it may use: {})",
                tenant.key.name,
                inbound.requested_model,
                tenant.key.limits.models.join(", ")
            ),
        ));
    }
    for target in &targets {
        check_translates(shared, target, wire, &inbound)?;
    }
    let mut charge = KeyCharge::none(shared);
    if let Some(tenant) = caller {
        let input = dspex_client::tokens::estimate_chat_tokens(&primary_model, &inbound.messages);
        let default_max = shared
            .client
            .provider(&primary.provider)
            .map_or(1024, |p| p.config().default_max_tokens);
        let output = u64::from(inbound.params.max_tokens.unwrap_or(default_max))
            * u64::from(inbound.params.n.unwrap_or(1).max(1));
        charge = reserve_for_key(
            shared,
            tenant,
            &primary.provider,
            &primary_model,
            input,
            output,
        )
        .await?;
    }
    let Inbound {
        messages,
        params,
        stream,
        stream_usage,
        ..
    } = inbound;
    let options = options_from(shared, headers, correlation_id, caller, params);
    Ok(Admitted {
        messages,
        stream,
        stream_usage,
        targets,
        options,
        charge,
    })
}

/// Reserves a call's estimate in `tenant`'s rate limits (no waiting: a full
/// bucket is a 429 with Retry-After) and budget.
pub(crate) async fn reserve_for_key(
    shared: &Arc<Shared>,
    tenant: &Tenant,
    provider: &str,
    model: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Result<KeyCharge, RequestError> {
    let mut charge = KeyCharge::none(shared);
    if let Some(limiter) = &tenant.limiter {
        let cost = Cost::call(input_tokens, output_tokens);
        let reservation = match limiter.reserve_now(cost) {
            Some(reservation) => reservation,
            None => limiter
                .reserve(cost, std::time::Duration::ZERO)
                .await
                .map_err(|e| RequestError::key_limited(&tenant.key.name, &e))?,
        };
        charge.reservation = Some(reservation);
    }
    if let Some(ledger) = &shared.ledger {
        let system = shared.client.provider(provider).map_or("", |p| p.system());
        let now = unix_ms(SystemTime::now());
        let estimate = shared.prices.estimate_for_call(
            system,
            provider,
            model,
            input_tokens,
            output_tokens,
            now,
        );
        if let Some(hold) = ledger.reserve(&tenant.key, estimate.unwrap_or(0)).await? {
            charge.hold = Some((Arc::clone(ledger), hold));
        }
    }
    Ok(charge)
}

/// `POST /v1/chat/completions`.
pub(crate) async fn openai_chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(shared, headers, body, Wire::OpenAi).await
}

/// `POST /v1/messages`.
pub(crate) async fn anthropic_messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(shared, headers, body, Wire::Anthropic).await
}

async fn handle(shared: Arc<Shared>, headers: HeaderMap, body: Body, wire: Wire) -> Response {
    let started = Instant::now();
    let correlation_id = correlation_of(&headers);
    let route = match wire {
        Wire::OpenAi => "chat_completions",
        Wire::Anthropic => "messages",
    };
    let (result, outcome) = answer(&shared, &headers, body, wire, &correlation_id).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status >= 500 {
                tracing::warn!(status = error.status, provider = ?error.provider, message = %error.message, "gateway request failed");
            }
            error.into_response_for(wire)
        }
    };
    set_headers(&mut response, &correlation_id, &outcome);
    let status = response.status().as_u16();
    record(&shared, route, outcome, status, started);
    response
}

fn decode(wire: Wire, body: &[u8]) -> Result<Inbound, RequestError> {
    match wire {
        Wire::OpenAi => {
            let request = openai::decode(body)?;
            let requested_model = request.model.clone();
            let stream = request.streams();
            let stream_usage = request.stream_usage();
            let (messages, params) = request.into_parts()?;
            let native_only = params
                .extra
                .keys()
                .next()
                .cloned()
                .or_else(|| params.tools.as_ref().map(|_| "tools".to_owned()))
                .or_else(|| {
                    params
                        .tool_choice
                        .as_ref()
                        .map(|_| "tool_choice".to_owned())
                });
            Ok(Inbound {
                requested_model,
                messages,
                params,
                stream,
                stream_usage,
                native_only,
            })
        }
        Wire::Anthropic => {
            let request = anthropic::decode(body)?;
            let requested_model = request.model.clone();
            let stream = request.streams();
            let (messages, params) = request.into_parts()?;
            let native_only = MessagesRequest::native_only_field(&params, &messages);
            Ok(Inbound {
                requested_model,
                messages,
                params,
                stream,
                stream_usage: true,
                native_only,
            })
        }
    }
}

async fn answer(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    wire: Wire,
    correlation_id: &CorrelationId,
) -> (Result<Response, RequestError>, Outcome) {
    let caller = match shared.caller(headers).await {
        Ok(caller) => caller,
        Err(error) => return (Err(error), Outcome::new(None)),
    };
    let mut outcome = Outcome::new(caller.as_ref().map(|t| Arc::from(t.key.name.as_str())));
    let bytes = match read_body(shared, body).await {
        Ok(bytes) => bytes,
        Err(error) => return (Err(error), outcome),
    };
    let inbound = match decode(wire, &bytes) {
        Ok(inbound) => inbound,
        Err(error) => return (Err(error), outcome),
    };
    let admitted = match admit(
        shared,
        headers,
        correlation_id,
        &caller,
        wire,
        inbound,
        &mut outcome,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(error) => return (Err(error), outcome),
    };
    let result = if admitted.stream {
        stream_chat(shared, admitted, wire, &mut outcome).await
    } else {
        plain_chat(shared, admitted, wire, &mut outcome).await
    };
    (result, outcome)
}

/// Tries each target in turn until one answers or an error is final.
async fn plain_chat(
    shared: &Shared,
    admitted: Admitted,
    wire: Wire,
    outcome: &mut Outcome,
) -> Result<Response, RequestError> {
    let Admitted {
        messages,
        targets,
        options,
        charge,
        ..
    } = admitted;
    let last = targets.len().saturating_sub(1);
    for (i, target) in targets.iter().enumerate() {
        let mut options = options.clone();
        options.params.model.clone_from(&target.model);
        outcome.resolved = Some(Resolved {
            provider: target.provider.clone(),
            model: shared.model_of(target),
        });
        match shared
            .client
            .request(&target.provider, messages.clone(), options)
            .await
        {
            Ok(response) => {
                outcome.cache = response.cache.as_ref().map_or("miss", |served| served.tier);
                outcome.resolved = Some(Resolved {
                    provider: target.provider.clone(),
                    model: response.model.clone(),
                });
                let body = match wire {
                    Wire::OpenAi => openai::completion_json(&response, &response.model),
                    Wire::Anthropic => anthropic::message_json(&response, &response.model)
                        .to_string()
                        .into_bytes(),
                };
                let model = shared.model_of(target);
                charge.settle(Some(Answered {
                    provider: &target.provider,
                    model: &model,
                    response_model: &response.model,
                    usage: &response.usage,
                }));
                return Ok(json_response(body));
            }
            Err(error) if i < last && falls_back(&error) => {
                tracing::info!(provider = %target.provider, error = %error, "falling back to the next target");
            }
            Err(error) => {
                charge.settle(None);
                return Err(RequestError::from_client(&error));
            }
        }
    }
    charge.settle(None);
    Err(RequestError::bad_request(None, "no target to route to"))
}

async fn stream_chat(
    shared: &Shared,
    admitted: Admitted,
    wire: Wire,
    outcome: &mut Outcome,
) -> Result<Response, RequestError> {
    let Admitted {
        messages,
        stream_usage,
        targets,
        options,
        charge,
        ..
    } = admitted;
    let last = targets.len().saturating_sub(1);
    for (i, target) in targets.iter().enumerate() {
        let mut options = options.clone();
        options.params.model.clone_from(&target.model);
        let model = shared.model_of(target);
        outcome.resolved = Some(Resolved {
            provider: target.provider.clone(),
            model: model.clone(),
        });
        match shared
            .client
            .request_stream(&target.provider, messages.clone(), options.clone())
            .await
        {
            Ok(stream) => {
                let correlation = options
                    .correlation_id
                    .as_ref()
                    .map_or_else(String::new, ToString::to_string);
                let state = SseState {
                    stream,
                    target: target.clone(),
                    charge: Some(charge),
                    wire: match wire {
                        Wire::OpenAi => WireState::OpenAi {
                            id: format!("chatcmpl-{correlation}"),
                            created: openai::now_unix(),
                            include_usage: stream_usage,
                            started: Vec::new(),
                        },
                        Wire::Anthropic => WireState::Anthropic(Box::new(EventEncoder::new(
                            format!("msg_{correlation}"),
                            model.clone(),
                        ))),
                    },
                    model,
                    pending: std::collections::VecDeque::new(),
                    phase: Phase::Streaming,
                };
                return Ok(Sse::new(sse_events(state)).into_response());
            }
            Err(error) if i < last && falls_back(&error) => {
                tracing::info!(provider = %target.provider, error = %error, "falling back to the next target");
            }
            Err(error) => {
                charge.settle(None);
                return Err(RequestError::from_client(&error));
            }
        }
    }
    charge.settle(None);
    Err(RequestError::bad_request(None, "no target to route to"))
}

/// A JSON body (already encoded) with its content type.
fn json_response(body: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// An SSE `data:` event holding encoded JSON (always UTF-8).
fn sse_data(json: &[u8]) -> Event {
    Event::default().data(String::from_utf8_lossy(json))
}

/// Where the SSE body is.
enum Phase {
    Streaming,
    /// Only what is pending (and OpenAI's `[DONE]`) is left.
    Closing,
    Finished,
}

enum WireState {
    OpenAi {
        id: String,
        created: u64,
        include_usage: bool,
        started: Vec<bool>,
    },
    Anthropic(Box<EventEncoder>),
}

struct SseState {
    stream: ChatStream,
    target: Target,
    model: String,
    charge: Option<KeyCharge>,
    wire: WireState,
    pending: std::collections::VecDeque<Event>,
    phase: Phase,
}

impl SseState {
    fn on_delta(&mut self, delta: &dspex_client::ChatDelta) {
        match &mut self.wire {
            WireState::OpenAi {
                id,
                created,
                started,
                ..
            } => {
                let index = delta.index as usize;
                if started.len() <= index {
                    started.resize(index + 1, false);
                }
                let first = started.get(index).is_some_and(|s| !s);
                if let Some(slot) = started.get_mut(index) {
                    *slot = true;
                }
                let chunk = openai::chunk_json(id, *created, &self.model, delta, first);
                self.pending.push_back(sse_data(&chunk));
            }
            WireState::Anthropic(encoder) => {
                let mut out = Vec::new();
                encoder.delta(delta, &mut out);
                self.push_named(out);
            }
        }
    }

    fn on_done(&mut self, response: &ChatResponse) {
        if let Some(charge) = self.charge.take() {
            charge.settle(Some(Answered {
                provider: &self.target.provider,
                model: &self.model,
                response_model: &response.model,
                usage: &response.usage,
            }));
        }
        match &mut self.wire {
            WireState::OpenAi {
                id,
                created,
                include_usage,
                ..
            } => {
                if *include_usage {
                    let chunk =
                        openai::usage_chunk_json(id, *created, &self.model, &response.usage);
                    self.pending.push_back(sse_data(&chunk));
                }
                self.pending.push_back(Event::default().data("[DONE]"));
            }
            WireState::Anthropic(encoder) => {
                let mut out = Vec::new();
                encoder.finish(response, &mut out);
                self.push_named(out);
            }
        }
    }

    /// A failure mid-stream: OpenAI's `error` data event (what its SDK
    /// raises as an `APIError`), or Anthropic's `error` event.
    fn on_error(&mut self, error: &ClientError) {
        if let Some(charge) = self.charge.take() {
            charge.settle(None);
        }
        let answer = RequestError::from_client(error);
        match &self.wire {
            WireState::OpenAi { .. } => self
                .pending
                .push_back(Event::default().data(answer.openai_body().to_string())),
            WireState::Anthropic(_) => self.pending.push_back(
                Event::default()
                    .event("error")
                    .data(answer.anthropic_body().to_string()),
            ),
        }
    }

    fn push_named(&mut self, events: Vec<anthropic::SseEvent>) {
        for (name, data) in events {
            self.pending
                .push_back(Event::default().event(name).data(data.to_string()));
        }
    }
}

/// The stream's events in the caller's format.
fn sse_events(state: SseState) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            match state.phase {
                Phase::Finished => return None,
                Phase::Closing => {
                    state.phase = Phase::Finished;
                    continue;
                }
                Phase::Streaming => {}
            }
            match state.stream.next().await {
                Some(Ok(StreamEvent::Delta(delta))) => state.on_delta(&delta),
                Some(Ok(StreamEvent::Done(response))) => {
                    state.on_done(&response);
                    state.phase = Phase::Closing;
                }
                Some(Err(error)) => {
                    state.on_error(&error);
                    state.phase = Phase::Closing;
                }
                None => state.phase = Phase::Closing,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    /// JSON trees whose object keys are drawn from the fields the decoders
    /// know (and a few they do not), so generated bodies reach deep into the
    /// decoders instead of failing at the first field.
    fn json_value() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "model",
            "messages",
            "role",
            "content",
            "type",
            "text",
            "stream",
            "stream_options",
            "include_usage",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "stop_sequences",
            "n",
            "seed",
            "response_format",
            "json_schema",
            "name",
            "schema",
            "strict",
            "tools",
            "tool_choice",
            "tool_calls",
            "tool_call_id",
            "tool_use_id",
            "system",
            "input",
            "encoding_format",
            "dimensions",
            "metadata",
            "user",
            "x",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec![
                "user",
                "system",
                "assistant",
                "tool",
                "developer",
                "text",
                "tool_use",
                "tool_result",
                "json_schema",
                "json_object",
                "image",
                "base64",
                "float",
                "",
                "fast",
            ])
            .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    fn decode_all(bytes: &[u8]) {
        let _ = decode(Wire::OpenAi, bytes);
        let _ = decode(Wire::Anthropic, bytes);
        if let Ok(request) = openai::decode_json::<openai::EmbeddingsRequest>(bytes) {
            let _ = request.into_parts();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn no_body_makes_a_decoder_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            decode_all(&bytes);
        }

        #[test]
        fn no_json_body_makes_a_decoder_panic(value in json_value()) {
            decode_all(value.to_string().as_bytes());
        }

        #[test]
        fn well_formed_chats_decode_and_errors_name_a_field(
            role in prop::sample::select(vec!["user", "system", "assistant", "robot"]),
            content in ".{0,40}",
            max_tokens in prop::option::of(0u32..5000),
        ) {
            let body = serde_json::json!({
                "model": "fast", "max_tokens": max_tokens,
                "messages": [{"role": role, "content": content}],
            });
            for wire in [Wire::OpenAi, Wire::Anthropic] {
                match decode(wire, body.to_string().as_bytes()) {
                    Ok(inbound) => prop_assert_eq!(inbound.messages.len(), 1),
                    Err(error) => {
                        prop_assert_eq!(error.status, 400);
                        prop_assert!(error.param.is_some(), "{}", error.message);
                    }
                }
            }
        }
    }
}
