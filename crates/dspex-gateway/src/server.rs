//! The HTTP server: routing a request's `model` to providers, calling the
//! client (with fallbacks), and answering in OpenAI's format.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dspex_client::{
    CacheMode, ChatParams, ChatResponse, ChatStream, Client, ClientError, ClientErrorKind, Message,
    RequestOptions, StreamEvent, WireFormat,
};
use dspex_core::CorrelationId;
use dspex_core::telemetry::PrometheusMetrics;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{GatewayConfig, Target};
use crate::error::{GatewayError, RequestError};
use crate::openai;

const CORRELATION: HeaderName = HeaderName::from_static("x-dspex-correlation-id");
const CACHE: HeaderName = HeaderName::from_static("x-dspex-cache");
const PROVIDER: HeaderName = HeaderName::from_static("x-dspex-provider");
const MODEL: HeaderName = HeaderName::from_static("x-dspex-model");

/// A gateway: the client, the validated `[gateway]` config, and the
/// Prometheus handle `/metrics` renders (when one is installed).
#[derive(Clone)]
pub struct Gateway {
    state: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.state.config.listen)
            .field(
                "aliases",
                &self.state.config.models.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: Client,
    config: GatewayConfig,
    metrics: Option<PrometheusMetrics>,
}

/// What one routed request resolved to, for headers and metric labels.
struct Resolved {
    provider: String,
    model: String,
}

impl Gateway {
    /// A gateway over `client`. Fails when an alias names a provider the
    /// client does not have (the error names the config key).
    pub fn new(client: Client, config: GatewayConfig) -> Result<Self, GatewayError> {
        let known = client.provider_ids();
        for (name, alias) in &config.models {
            let targets = std::iter::once(&alias.primary).chain(&alias.fallbacks);
            for (i, target) in targets.enumerate() {
                if !known.contains(&target.provider) {
                    let key = if i == 0 {
                        format!("gateway.models.{name}.provider")
                    } else {
                        format!("gateway.models.{name}.fallbacks[{}]", i - 1)
                    };
                    return Err(GatewayError::Config(dspex_core::CoreError::config(
                        &key,
                        format!(
                            "no provider `{}` is configured (known: {})",
                            target.provider,
                            known.join(", ")
                        ),
                    )));
                }
            }
        }
        Ok(Self {
            state: Arc::new(Shared {
                client,
                config,
                metrics: None,
            }),
        })
    }

    /// Serves `metrics` at `/metrics` (see
    /// [`install_prometheus`](dspex_core::telemetry::install_prometheus)).
    #[must_use]
    pub fn with_metrics(self, metrics: PrometheusMetrics) -> Self {
        let Shared { client, config, .. } = match Arc::try_unwrap(self.state) {
            Ok(shared) => shared,
            Err(shared) => Shared {
                client: shared.client.clone(),
                config: shared.config.clone(),
                metrics: None,
            },
        };
        Self {
            state: Arc::new(Shared {
                client,
                config,
                metrics: Some(metrics),
            }),
        }
    }

    /// The validated config.
    pub fn config(&self) -> &GatewayConfig {
        &self.state.config
    }

    /// The routes, for serving or for embedding in a larger axum app.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .layer(DefaultBodyLimit::max(self.state.config.max_body_bytes))
            .with_state(Arc::clone(&self.state))
    }

    /// Binds the configured `listen` address.
    pub async fn bind(&self) -> Result<TcpListener, GatewayError> {
        let addr = self.state.config.listen;
        TcpListener::bind(addr)
            .await
            .map_err(|e| GatewayError::Bind {
                addr: addr.to_string(),
                message: e.to_string(),
            })
    }

    /// Serves on `listener` until `shutdown` completes; then stops
    /// accepting, lets in-flight requests and streams finish for up to
    /// `shutdown_grace`, and returns. Flushing analytics is the caller's
    /// next step (`Runtime::shutdown`).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
        let mut graceful = stopping_rx.clone();
        let serve = axum::serve(listener, self.router()).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });
        let signal = tokio::spawn(async move {
            shutdown.await;
            let _ = stopping_tx.send(true);
        });
        let grace = self.state.config.shutdown_grace;
        let mut deadline = stopping_rx;
        let result = tokio::select! {
            result = serve => result.map_err(|e| GatewayError::Serve { message: e.to_string() }),
            () = async move {
                let _ = deadline.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis(), "shutdown grace period over; dropping the requests still running");
                Ok(())
            }
        };
        signal.abort();
        result
    }
}

/// The routes a request's `model` may take, in order.
fn route(shared: &Shared, model: &str) -> Result<Vec<Target>, RequestError> {
    let config = &shared.config;
    if let Some(alias) = config.models.get(model) {
        let mut targets = vec![alias.primary.clone()];
        targets.extend(alias.fallbacks.iter().cloned());
        return Ok(targets);
    }
    let client = &shared.client;
    let providers = client.provider_ids();
    if let Some((provider, rest)) = model.split_once('/')
        && !rest.is_empty()
        && providers.iter().any(|p| p == provider)
    {
        return Ok(vec![Target {
            provider: provider.to_owned(),
            model: Some(rest.to_owned()),
        }]);
    }
    for id in &providers {
        if let Ok(provider) = client.provider(id)
            && provider.config().model == model
        {
            return Ok(vec![Target {
                provider: id.clone(),
                model: Some(model.to_owned()),
            }]);
        }
    }
    if let [only] = providers.as_slice() {
        return Ok(vec![Target {
            provider: only.clone(),
            model: Some(model.to_owned()),
        }]);
    }
    Err(RequestError::model_not_found(model, &model_names(shared)))
}

/// Every name `/v1/models` lists: the aliases, then `provider/model`.
fn model_names(shared: &Shared) -> Vec<String> {
    let mut names: Vec<String> = shared.config.models.keys().cloned().collect();
    for id in shared.client.provider_ids() {
        if let Ok(provider) = shared.client.provider(&id) {
            names.push(format!("{id}/{}", provider.config().model));
        }
    }
    names
}

/// Refuses what would be dropped or mistranslated on the way to `target`:
/// fields DSPex has no name for, and tools, reach only a provider that
/// speaks OpenAI's format.
fn check_translates(
    shared: &Shared,
    target: &Target,
    params: &ChatParams,
) -> Result<(), RequestError> {
    let provider = shared
        .client
        .provider(&target.provider)
        .map_err(|e| RequestError::from_client(&e))?;
    let format = provider.capabilities().wire_format;
    if format == Some(WireFormat::OpenAiChat) {
        return Ok(());
    }
    let untranslated = params
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
    match untranslated {
        Some(field) => Err(RequestError::bad_request(
            Some(field.clone()),
            format!(
                "`{field}` does not translate to provider `{}` ({}): send it only to an OpenAI-format provider",
                target.provider,
                match format {
                    Some(WireFormat::AnthropicMessages) => "Anthropic Messages",
                    _ => "an in-process model",
                }
            ),
        )),
        None => Ok(()),
    }
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

/// The per-call options from the request's headers.
fn options_from(
    headers: &HeaderMap,
    correlation_id: &CorrelationId,
    params: ChatParams,
) -> RequestOptions {
    let mut options = RequestOptions::new()
        .params(params)
        .correlation_id(correlation_id.clone())
        .tag("via", "gateway");
    let cache_control = headers
        .get(axum::http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let no_cache = cache_control.contains("no-cache");
    let no_store = cache_control.contains("no-store");
    options.cache.mode = match (no_cache, no_store) {
        (true, true) => CacheMode::Skip,
        (true, false) => CacheMode::Refresh,
        (false, true) => CacheMode::NoStore,
        (false, false) => CacheMode::Auto,
    };
    // The explicit override wins over Cache-Control.
    if let Some(mode) = headers.get(&CACHE).and_then(|v| v.to_str().ok()) {
        options.cache.mode = match mode.trim().to_ascii_lowercase().as_str() {
            "skip" | "off" | "bypass" => CacheMode::Skip,
            "refresh" => CacheMode::Refresh,
            "no-store" => CacheMode::NoStore,
            "always" => CacheMode::Always,
            _ => options.cache.mode,
        };
    }
    options
}

/// The caller's correlation id when it sent a usable one, else a new one.
fn correlation_of(headers: &HeaderMap) -> CorrelationId {
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

fn set_headers(
    response: &mut Response,
    correlation_id: &CorrelationId,
    cache: &str,
    resolved: Option<&Resolved>,
) {
    let headers = response.headers_mut();
    headers.insert(CORRELATION, header_value(correlation_id.as_str()));
    headers.insert(CACHE, header_value(cache));
    if let Some(resolved) = resolved {
        headers.insert(PROVIDER, header_value(&resolved.provider));
        headers.insert(MODEL, header_value(&resolved.model));
    }
}

fn record(route: &'static str, resolved: Option<&Resolved>, status: u16, started: Instant) {
    // Labels come from the config (provider, model), never from the raw
    // request, so a client cannot grow the series without bound.
    let (provider, model) = resolved.map_or(("none", "none"), |r| {
        (r.provider.as_str(), r.model.as_str())
    });
    let labels = [
        ("route", route.to_owned()),
        ("provider", provider.to_owned()),
        ("model", model.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("dspex_gateway_requests_total", &labels).increment(1);
    metrics::histogram!("dspex_gateway_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
}

fn resolved_of(shared: &Shared, target: &Target) -> Resolved {
    let model = target.model.clone().unwrap_or_else(|| {
        shared
            .client
            .provider(&target.provider)
            .map(|p| p.config().model.clone())
            .unwrap_or_default()
    });
    Resolved {
        provider: target.provider.clone(),
        model,
    }
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let correlation_id = correlation_of(&headers);
    let (result, resolved, cache) = match body {
        Ok(body) => chat(&shared, &headers, &body, &correlation_id).await,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => (
            Err(RequestError::too_large(shared.config.max_body_bytes)),
            None,
            "miss",
        ),
        Err(rejection) => (
            Err(RequestError::bad_request(None, rejection.body_text())),
            None,
            "miss",
        ),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status >= 500 {
                tracing::warn!(status = error.status, provider = ?error.provider, message = %error.message, "gateway request failed");
            }
            error.into_response()
        }
    };
    set_headers(&mut response, &correlation_id, cache, resolved.as_ref());
    record(
        "chat_completions",
        resolved.as_ref(),
        response.status().as_u16(),
        started,
    );
    response
}

type ChatOutcome = (
    Result<Response, RequestError>,
    Option<Resolved>,
    &'static str,
);

async fn chat(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: &[u8],
    correlation_id: &CorrelationId,
) -> ChatOutcome {
    let request = match openai::decode(body) {
        Ok(request) => request,
        Err(error) => return (Err(error), None, "miss"),
    };
    let requested_model = request.model.clone();
    let streams = request.streams();
    let stream_usage = request.stream_usage();
    let targets = match route(shared, &requested_model) {
        Ok(targets) => targets,
        Err(error) => return (Err(error), None, "miss"),
    };
    let (messages, params) = match request.into_parts() {
        Ok(parts) => parts,
        Err(error) => return (Err(error), None, "miss"),
    };
    for target in &targets {
        if let Err(error) = check_translates(shared, target, &params) {
            return (Err(error), Some(resolved_of(shared, target)), "miss");
        }
    }
    let options = options_from(headers, correlation_id, params);
    if streams {
        stream_chat(shared, &targets, messages, options, stream_usage).await
    } else {
        plain_chat(shared, &targets, messages, options).await
    }
}

/// Tries each target in turn until one answers or an error is final.
async fn plain_chat(
    shared: &Shared,
    targets: &[Target],
    messages: Vec<Message>,
    options: RequestOptions,
) -> ChatOutcome {
    let mut last = None;
    for (i, target) in targets.iter().enumerate() {
        let mut options = options.clone();
        options.params.model.clone_from(&target.model);
        let resolved = resolved_of(shared, target);
        match shared
            .client
            .request(&target.provider, messages.clone(), options)
            .await
        {
            Ok(response) => {
                let cache = cache_tier(&response);
                let resolved = Resolved {
                    model: response.model.clone(),
                    ..resolved
                };
                let body = openai::completion_json(&response, &response.model);
                return (Ok(axum::Json(body).into_response()), Some(resolved), cache);
            }
            Err(error) if i + 1 < targets.len() && falls_back(&error) => {
                tracing::info!(provider = %target.provider, error = %error, "falling back to the next target");
                last = Some(resolved);
            }
            Err(error) => {
                return (
                    Err(RequestError::from_client(&error)),
                    Some(resolved),
                    "miss",
                );
            }
        }
    }
    (
        Err(RequestError::bad_request(None, "no target to route to")),
        last,
        "miss",
    )
}

fn cache_tier(response: &ChatResponse) -> &'static str {
    response.cache.as_ref().map_or("miss", |served| served.tier)
}

async fn stream_chat(
    shared: &Shared,
    targets: &[Target],
    messages: Vec<Message>,
    options: RequestOptions,
    include_usage: bool,
) -> ChatOutcome {
    for (i, target) in targets.iter().enumerate() {
        let mut options = options.clone();
        options.params.model.clone_from(&target.model);
        let resolved = resolved_of(shared, target);
        match shared
            .client
            .request_stream(&target.provider, messages.clone(), options.clone())
            .await
        {
            Ok(stream) => {
                let id = format!(
                    "chatcmpl-{}",
                    options
                        .correlation_id
                        .as_ref()
                        .map_or_else(String::new, ToString::to_string)
                );
                let events = sse_events(stream, id, resolved.model.clone(), include_usage);
                let response = Sse::new(events).into_response();
                return (Ok(response), Some(resolved), "miss");
            }
            Err(error) if i + 1 < targets.len() && falls_back(&error) => {
                tracing::info!(provider = %target.provider, error = %error, "falling back to the next target");
            }
            Err(error) => {
                return (
                    Err(RequestError::from_client(&error)),
                    Some(resolved),
                    "miss",
                );
            }
        }
    }
    (
        Err(RequestError::bad_request(None, "no target to route to")),
        None,
        "miss",
    )
}

/// Where the SSE body is.
enum Phase {
    Streaming,
    /// Only `[DONE]` is left.
    Done,
    Finished,
}

struct SseState {
    stream: ChatStream,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: Vec<bool>,
    phase: Phase,
}

/// The stream's events as OpenAI SSE: a chunk per delta (the first of a
/// choice with its role), the usage chunk when asked for, `[DONE]`. A
/// failure mid-stream becomes an `error` event (what OpenAI sends, and
/// what the SDK raises as an `APIError`) and ends the stream.
fn sse_events(
    stream: ChatStream,
    id: String,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let state = SseState {
        stream,
        id,
        model,
        created: openai::now_unix(),
        include_usage,
        started: Vec::new(),
        phase: Phase::Streaming,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            match state.phase {
                Phase::Finished => return None,
                Phase::Done => {
                    state.phase = Phase::Finished;
                    return Some((Ok(Event::default().data("[DONE]")), state));
                }
                Phase::Streaming => {}
            }
            match state.stream.next().await {
                Some(Ok(StreamEvent::Delta(delta))) => {
                    let index = delta.index as usize;
                    if state.started.len() <= index {
                        state.started.resize(index + 1, false);
                    }
                    let first = state.started.get(index).is_some_and(|s| !s);
                    if let Some(slot) = state.started.get_mut(index) {
                        *slot = true;
                    }
                    let chunk =
                        openai::chunk_json(&state.id, state.created, &state.model, &delta, first);
                    return Some((Ok(Event::default().data(chunk.to_string())), state));
                }
                Some(Ok(StreamEvent::Done(response))) => {
                    state.phase = Phase::Done;
                    if state.include_usage {
                        let chunk = openai::usage_chunk_json(
                            &state.id,
                            state.created,
                            &state.model,
                            &response.usage,
                        );
                        return Some((Ok(Event::default().data(chunk.to_string())), state));
                    }
                }
                Some(Err(error)) => {
                    state.phase = Phase::Finished;
                    let body = RequestError::from_client(&error).openai_body();
                    return Some((Ok(Event::default().data(body.to_string())), state));
                }
                None => state.phase = Phase::Done,
            }
        }
    })
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let data: Vec<_> = shared
        .config
        .models
        .iter()
        .map(|(name, alias)| json!({"id": name, "object": "model", "created": 0, "owned_by": alias.primary.provider}))
        .chain(shared.client.provider_ids().into_iter().filter_map(|id| {
            let provider = shared.client.provider(&id).ok()?;
            Some(json!({"id": format!("{id}/{}", provider.config().model), "object": "model", "created": 0, "owned_by": id}))
        }))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.client.status();
    let providers: serde_json::Map<_, _> = status
        .iter()
        .map(|(id, (circuit, slots))| {
            (
                id.clone(),
                json!({"circuit": format!("{circuit:?}").to_lowercase(), "free_slots": slots}),
            )
        })
        .collect();
    let ready = !providers.is_empty();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({"ready": ready, "providers": providers})),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match &shared.metrics {
        Some(metrics) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            metrics.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled (start with --metrics)",
        )
            .into_response(),
    }
}
