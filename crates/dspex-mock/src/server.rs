//! The HTTP server: routing, the shared state, and the per-request pipeline
//! (auth, queued fault, limits, fraction fault, latency) common to every model route.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::MockConfig;
use crate::content::Responder;
use crate::faults::{Fault, FaultQueue, FractionFault, jitter, pick_fraction_fault};
use crate::limits::{LimitInfo, Limiter};
use crate::stats::{Injected, RecordedRequest, Recorder, Route, Stats, StatsCollector};
use crate::wire::{
    ApiError, Flavor, json_response, limit_headers, openai_duration, retry_after_secs,
};
use crate::{anthropic, embeddings, openai};

/// Largest request body accepted (prompts can be long; load runs send many).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How long [`MockServer::shutdown`] waits for open requests before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How a successful answer's body is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyMode {
    Normal,
    Malformed,
    /// A stream whose first event is garbled (plain bodies: as `Malformed`).
    MalformedStart,
    Truncate,
}

/// What the fault and limit stages decided for a request that will be answered 200.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) mode: BodyMode,
    /// Content forced by [`Fault::Reply`].
    pub(crate) forced: Option<String>,
    /// For the rate-limit headers.
    pub(crate) limits: LimitInfo,
}

/// State shared by every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: MockConfig,
    pub(crate) stats: StatsCollector,
    pub(crate) responder: Responder,
    faults: FaultQueue,
    limiter: Option<Limiter>,
    recorder: Option<Recorder>,
    seq: AtomicU64,
    models_body: Bytes,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn new(config: MockConfig) -> io::Result<Self> {
        let script = config.validate()?;
        let models: Vec<Value> = config
            .models
            .iter()
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "dspex-mock"}))
            .collect();
        let models_body = Bytes::from(json!({"object": "list", "data": models}).to_string());
        Ok(Self {
            limiter: Limiter::new(config.rpm, config.tpm),
            recorder: Recorder::new(config.record_requests),
            responder: Responder::new(script),
            stats: StatsCollector::default(),
            faults: FaultQueue::default(),
            seq: AtomicU64::new(0),
            models_body,
            shutdown: watch::Sender::new(false),
            config,
        })
    }

    /// The next request sequence number (1, 2, ...), used in ids and fault draws.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Whether requests are recorded (and so must be read as a whole `Value`).
    pub(crate) fn records_requests(&self) -> bool {
        self.recorder.is_some()
    }

    /// Parses the body as JSON and records the request if recording is on.
    pub(crate) fn read_body(
        &self,
        route: Route,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Value> {
        let value = serde_json::from_slice::<Value>(body).ok();
        if let Some(recorder) = &self.recorder {
            let mut recorded = BTreeMap::new();
            for (name, value) in headers {
                let value = String::from_utf8_lossy(value.as_bytes());
                recorded
                    .entry(name.as_str().to_owned())
                    .and_modify(|joined: &mut String| {
                        joined.push_str(", ");
                        joined.push_str(&value);
                    })
                    .or_insert_with(|| value.into_owned());
            }
            recorder.record(RecordedRequest {
                route: route.name().to_owned(),
                headers: recorded,
                body: value.clone().unwrap_or(Value::Null),
            });
        }
        value
    }

    /// Step 1: the API key check, if a key is required.
    pub(crate) fn check_auth(&self, flavor: Flavor, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.config.require_api_key else {
            return Ok(());
        };
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let refusal = match flavor {
            Flavor::OpenAi => match header("authorization") {
                None => Some(
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                        .to_owned(),
                ),
                Some(value) => {
                    let sent = value.strip_prefix("Bearer ").unwrap_or(&value).trim();
                    (sent != expected).then(|| {
                        format!(
                            "Incorrect API key provided: {sent}. You can find your API key in your \
                             mock provider's settings."
                        )
                    })
                }
            },
            Flavor::Anthropic => match header("x-api-key") {
                None => Some("x-api-key header is required".to_owned()),
                Some(sent) => {
                    (sent.trim() != expected).then(|| format!("invalid x-api-key: {sent}"))
                }
            },
        };
        match refusal {
            None => Ok(()),
            Some(message) => {
                self.stats.injected_status(401);
                Err(ApiError::new(StatusCode::UNAUTHORIZED, message))
            }
        }
    }

    /// Steps 2 to 5: a queued fault, else the limits and a fraction-based fault; then
    /// the latency. `cost` gives the request's token cost for the TPM limit.
    pub(crate) async fn plan(
        &self,
        seq: u64,
        flavor: Flavor,
        cost: impl FnOnce() -> u64,
    ) -> Result<Plan, Response> {
        let mut plan = Plan {
            mode: BodyMode::Normal,
            forced: None,
            limits: LimitInfo::default(),
        };
        let mut extra = Duration::ZERO;
        if let Some(fault) = self.faults.pop() {
            match fault {
                Fault::Status {
                    code,
                    retry_after_secs,
                    message,
                } => {
                    self.stats.injected_status(code);
                    let mut error = ApiError::status(code, &message, flavor);
                    error.retry_after_secs = retry_after_secs;
                    return Err(error.into_response(flavor));
                }
                Fault::Hang(duration) => {
                    self.stats.injected(Injected::Hang);
                    extra = duration;
                }
                Fault::Delay(duration) => {
                    self.stats.injected(Injected::Delay);
                    extra = duration;
                }
                Fault::Malformed => {
                    self.stats.injected(Injected::Malformed);
                    plan.mode = BodyMode::Malformed;
                }
                Fault::MalformedStart => {
                    self.stats.injected(Injected::Malformed);
                    plan.mode = BodyMode::MalformedStart;
                }
                Fault::Truncate => {
                    self.stats.injected(Injected::Truncate);
                    plan.mode = BodyMode::Truncate;
                }
                Fault::Reply(content) => {
                    self.stats.injected(Injected::Reply);
                    plan.forced = Some(content);
                }
            }
        } else {
            if let Some(limiter) = &self.limiter {
                let tokens = if limiter.has_tpm() { cost() } else { 0 };
                let (info, refusal) = limiter.admit(tokens);
                plan.limits = info;
                if let Some(refusal) = refusal {
                    self.stats.injected(Injected::Limit429);
                    let wait = openai_duration(refusal.retry_after);
                    let message = match flavor {
                        Flavor::OpenAi => format!(
                            "Rate limit reached in organization org-mock on {} per min: Limit {}, \
                             Used {}, Requested {}. Please try again in {wait}.",
                            refusal.dimension, refusal.limit, refusal.used, refusal.requested
                        ),
                        Flavor::Anthropic => format!(
                            "This request would exceed your organization's rate limit of {} {} per \
                             minute. Please try again in {wait}.",
                            refusal.limit, refusal.dimension
                        ),
                    };
                    let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message);
                    error.retry_after_secs = Some(retry_after_secs(refusal.retry_after));
                    let mut response = error.into_response(flavor);
                    limit_headers(response.headers_mut(), &info, flavor);
                    return Err(response);
                }
            }
            match pick_fraction_fault(&self.config, seq) {
                None => {}
                Some(FractionFault::TooManyRequests) => {
                    self.stats.injected_status(429);
                    let mut error = ApiError::status(429, "", flavor);
                    error.retry_after_secs = Some(self.config.retry_after_secs);
                    let mut response = error.into_response(flavor);
                    limit_headers(response.headers_mut(), &plan.limits, flavor);
                    return Err(response);
                }
                Some(FractionFault::ServerError) => {
                    self.stats.injected_status(500);
                    return Err(ApiError::status(500, "", flavor).into_response(flavor));
                }
                Some(FractionFault::Hang) => {
                    self.stats.injected(Injected::Hang);
                    extra = Duration::from_millis(self.config.hang_ms);
                }
                Some(FractionFault::Malformed) => {
                    self.stats.injected(Injected::Malformed);
                    plan.mode = BodyMode::Malformed;
                }
                Some(FractionFault::Truncate) => {
                    self.stats.injected(Injected::Truncate);
                    plan.mode = BodyMode::Truncate;
                }
            }
        }
        let delay = Duration::from_millis(self.config.latency_ms)
            .saturating_add(jitter(&self.config, seq))
            .saturating_add(extra);
        if !self.sleep(delay).await {
            let error = ApiError::status(503, "The mock server is shutting down.", flavor);
            return Err(error.into_response(flavor));
        }
        Ok(plan)
    }

    /// Sleeps unless the server shuts down first; `false` if it did.
    async fn sleep(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return true;
        }
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = shutdown.wait_for(|stopping| *stopping) => false,
        }
    }

    /// Counts the response's status and stamps the request id.
    pub(crate) fn finish(&self, mut response: Response, seq: u64, flavor: Flavor) -> Response {
        self.stats.status(response.status().as_u16());
        if let Ok(value) = HeaderValue::from_str(&format!("req_{seq}")) {
            let name = match flavor {
                Flavor::OpenAi => "x-request-id",
                Flavor::Anthropic => "request-id",
            };
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Adds the rate-limit headers of a plan to a successful response.
pub(crate) fn with_limits(mut response: Response, plan: &Plan, flavor: Flavor) -> Response {
    limit_headers(response.headers_mut(), &plan.limits, flavor);
    response
}

type AppState = State<Arc<Shared>>;

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

async fn models(State(shared): AppState, headers: HeaderMap) -> Response {
    let _in_flight = shared.stats.begin(Route::Models);
    let response = match shared.check_auth(Flavor::OpenAi, &headers) {
        Ok(()) => json_response(StatusCode::OK, shared.models_body.clone()),
        Err(error) => error.into_response(Flavor::OpenAi),
    };
    shared.stats.status(response.status().as_u16());
    response
}

async fn stats(State(shared): AppState) -> Response {
    match serde_json::to_vec(&shared.stats.snapshot()) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn reset_stats(State(shared): AppState) -> &'static str {
    shared.stats.reset();
    "ok"
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Invalid URL ({method} {})", uri.path()),
    );
    error.into_response(Flavor::OpenAi)
}

/// A running mock upstream on a loopback (or given) address.
///
/// Dropping it stops the server (its task is aborted); [`MockServer::shutdown`]
/// stops it gracefully.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Starts a server on `127.0.0.1` with a free port.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for out-of-range settings and
    /// [`io::ErrorKind::InvalidData`] for a bad script (the message names the file
    /// and the problem). Must be called within a Tokio runtime.
    pub async fn start(config: MockConfig) -> io::Result<Self> {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a server on `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> io::Result<Self> {
        let shared = Arc::new(Shared::new(config)?);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            // Small request/response exchanges: don't wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                tracing::warn!(error = %err, "mock server stopped with an error");
            }
        });
        tracing::debug!(%addr, "mock server listening");
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// OpenAI-style base URL: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Anthropic-style base URL (clients append `/v1/messages`): `http://127.0.0.1:PORT`.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Zeroes the statistics.
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Queues faults for the next model requests, in order (see [`Fault`]).
    pub fn enqueue(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.faults.push(faults);
    }

    /// The last recorded requests, oldest first (empty unless `record_requests > 0`).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared
            .recorder
            .as_ref()
            .map(Recorder::all)
            .unwrap_or_default()
    }

    /// Forgets the recorded requests.
    pub fn clear_recorded(&self) {
        if let Some(recorder) = &self.shared.recorder {
            recorder.clear();
        }
    }

    /// Stops accepting connections, ends sleeping (latency, hang) requests with a
    /// 503, waits up to 5 s for open requests, then aborts what is left.
    pub async fn shutdown(mut self) {
        self.stop_gracefully().await;
    }

    /// Serves until Ctrl-C, then shuts down gracefully (for the CLI).
    pub async fn run_until_ctrl_c(mut self) {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C; serving until stopped");
            if let Some(task) = self.task.as_mut() {
                let _ = task.await;
            }
            return;
        }
        self.stop_gracefully().await;
    }

    async fn stop_gracefully(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
