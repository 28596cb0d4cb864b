//! The client: providers in a registry, each behind its protection stack.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use dspex_core::protect::{
    Admission, CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService, CircuitState,
    ConcurrencyLimitLayer, ConcurrencyLimitService, Cost, LocalLimiter, RateLimitLayer,
    RateLimitService, RedisLimiter, RetryLayer, RetryService, TimeoutLayer, TimeoutService,
    Transition, Unit,
};
use dspex_core::registry::Registry;
use dspex_core::{CoreError, CorrelationId, Trail};
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

use crate::cache::ResponseCache;
use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::config::{ClientConfig, ProviderConfig};
use crate::error::{ClientError, ClientErrorKind};
use crate::events::{
    CacheServed, CallInfo, CircuitEvent, Event, EventBus, EventKind, LimitSource, Operation,
    RateLimitEvent, RetryEvent,
};
use crate::guard::CallGuard;
use crate::journal::CompletionJournal;
use crate::provider::{Capabilities, PrefixCacheStats, ProviderApi, Sent, Transport, api_for};
use crate::scripted::{ScriptedLm, ScriptedTransport};
use crate::stream::{ChatStream, StreamParts};
use crate::telemetry::{CallMetrics, Ending, Recorder};
use crate::tokens;
use crate::types::{
    ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message, RequestOptions, Usage,
};

/// What every part of a provider's stack shares.
pub(crate) struct ProviderShared {
    pub(crate) id: Arc<str>,
    pub(crate) config: ProviderConfig,
    /// What kind of provider this is; every provider-specific decision goes
    /// through it.
    pub(crate) api: &'static dyn ProviderApi,
    /// `api.capabilities(config)`, computed once.
    pub(crate) capabilities: Capabilities,
    pub(crate) host: Arc<str>,
    pub(crate) limiter: Arc<dyn Admission>,
    pub(crate) limits_tokens: bool,
    pub(crate) events: EventBus,
    pub(crate) metrics: Arc<CallMetrics>,
    /// The configured chat and embedding models, and the trail's first
    /// breadcrumb for each, built once rather than on every call.
    chat_model: (Arc<str>, Arc<str>),
    embedding_model: (Arc<str>, Arc<str>),
}

impl ProviderShared {
    /// The model a call asks for (or the default) and the breadcrumb naming
    /// provider and model.
    fn model_and_crumb(&self, requested: Option<&str>, embeddings: bool) -> (Arc<str>, Arc<str>) {
        let default = if embeddings {
            &self.embedding_model
        } else {
            &self.chat_model
        };
        match requested {
            Some(model) if model != &*default.0 => describe(&self.config, self.api, model),
            _ => (Arc::clone(&default.0), Arc::clone(&default.1)),
        }
    }
}

/// A model and the breadcrumb that names it with its provider.
fn describe(config: &ProviderConfig, api: &dyn ProviderApi, model: &str) -> (Arc<str>, Arc<str>) {
    let crumb = format!("{} ({}) model {model}", config.id, api.system());
    (Arc::from(model), Arc::from(crumb))
}

/// The whole stack, named so that a call costs no boxed future or service:
/// each layer's future is a concrete type.
/// Retries sit outermost so that every attempt passes the breaker, takes its
/// own rate-limit room (providers count every request, failed ones included)
/// and a pool slot that it gives back while the retry waits.
type Stack = RetryService<
    CircuitBreakerService<
        RateLimitService<ConcurrencyLimitService<TimeoutService<AttemptService>>, Call>,
    >,
    Call,
>;

/// The innermost service: one attempt through the transport.
#[derive(Clone)]
struct AttemptService {
    transport: Arc<dyn Transport>,
}

impl tower::Service<Call> for AttemptService {
    type Response = Reply;
    type Error = ClientError;
    type Future = Sent;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        call.begin_attempt();
        self.transport.send(call)
    }
}

/// A configured provider behind its protection stack: retries, and for each
/// attempt the circuit breaker, rate-limit admission, a pool slot and a timeout.
pub struct Provider {
    shared: Arc<ProviderShared>,
    transport: Arc<dyn Transport>,
    stack: Stack,
    breaker: Arc<CircuitBreaker>,
    pool: ConcurrencyLimitLayer,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.shared.id)
            .field("config", &self.shared.config)
            .field("circuit", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Builds the provider's stack. Connects to Redis when its limits are shared.
    pub async fn build(config: ProviderConfig, events: EventBus) -> Result<Self, ClientError> {
        let limiter: Arc<dyn Admission> = match &config.rate_limit_backend {
            Some(url) => Arc::new(
                RedisLimiter::connect(url, &config.id, config.limits.clone())
                    .await
                    .map_err(|e| match e {
                        CoreError::Backend { message } => ClientError::config(CoreError::config(
                            format!("providers.{}.rate_limit_backend", config.id),
                            format!("cannot connect: {message}"),
                        )),
                        other => ClientError::config(other),
                    })?,
            ),
            None => Arc::new(LocalLimiter::new(config.limits.clone())),
        };
        let shared = Self::shared(config, events, limiter);
        let transport = shared.api.transport(&shared).await?;
        Ok(Self::assemble(shared, transport))
    }

    fn shared(
        config: ProviderConfig,
        events: EventBus,
        limiter: Arc<dyn Admission>,
    ) -> Arc<ProviderShared> {
        let host = url::Url::parse(&config.base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let api = api_for(config.kind);
        Arc::new(ProviderShared {
            chat_model: describe(&config, api, &config.model),
            embedding_model: describe(&config, api, &config.embedding_model),
            capabilities: api.capabilities(&config),
            api,
            id: Arc::from(config.id.as_str()),
            limits_tokens: config.limits.iter().any(|b| b.unit != Unit::Requests),
            host: Arc::from(host),
            limiter,
            events,
            metrics: Arc::default(),
            config,
        })
    }

    fn assemble(shared: Arc<ProviderShared>, transport: Arc<dyn Transport>) -> Self {
        let config = &shared.config;
        let breaker = {
            let events = shared.events.clone();
            let id = Arc::clone(&shared.id);
            CircuitBreaker::new(
                Arc::clone(&shared.id),
                config.circuit_breaker.clone(),
                Some(Arc::new(move |t: &Transition| {
                    events.publish(Event::now(
                        None,
                        EventKind::CircuitChanged(CircuitEvent {
                            provider: Arc::clone(&id),
                            from: t.from,
                            to: t.to,
                        }),
                    ));
                })),
            )
        };
        let on_wait = {
            let events = shared.events.clone();
            let id = Arc::clone(&shared.id);
            Arc::new(move |call: &Call, bucket: &str, wait| {
                events.publish(Event::now(
                    Some(call.inner().trail.correlation_id().clone()),
                    EventKind::RateLimited(RateLimitEvent {
                        provider: Arc::clone(&id),
                        bucket: bucket.to_owned(),
                        wait,
                        source: LimitSource::Local,
                    }),
                ));
            })
        };
        let on_retry = {
            let events = shared.events.clone();
            let id = Arc::clone(&shared.id);
            Arc::new(move |call: &Call, attempt, delay| {
                metrics::counter!("dspex_retries_total", "provider" => id.to_string()).increment(1);
                events.publish(Event::now(
                    Some(call.inner().trail.correlation_id().clone()),
                    EventKind::Retrying(RetryEvent {
                        provider: Arc::clone(&id),
                        attempt,
                        delay,
                    }),
                ));
            })
        };
        let pool = ConcurrencyLimitLayer::new(config.pool_size, config.max_wait);
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(config.retry.clone()).with_observer(on_retry))
            .layer(CircuitBreakerLayer::new(Arc::clone(&breaker)))
            .layer(
                RateLimitLayer::new(Arc::clone(&shared.limiter), config.max_wait)
                    .with_observer(on_wait),
            )
            .layer(pool.clone())
            .layer(TimeoutLayer::new(config.timeouts.total))
            .service(AttemptService {
                transport: Arc::clone(&transport),
            });
        Self {
            transport,
            stack,
            shared,
            breaker,
            pool,
        }
    }

    /// The provider id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Its validated config.
    pub fn config(&self) -> &ProviderConfig {
        &self.shared.config
    }

    /// What it can do (tool calling, JSON Schema output, streaming usage,
    /// embeddings...).
    pub fn capabilities(&self) -> Capabilities {
        self.shared.capabilities
    }

    /// Its OpenTelemetry `gen_ai.system` name (`openai`, `anthropic`, `local`...).
    pub fn system(&self) -> &'static str {
        self.shared.api.system()
    }

    /// The HTTP request a chat call with `request` would send, headers (the
    /// key among them, marked sensitive) and body included: what a bare
    /// client needs to send the same bytes (the load tool's baseline). An
    /// in-process provider has none.
    pub fn http_request(
        &self,
        request: &ChatRequest,
    ) -> Result<http::Request<bytes::Bytes>, ClientError> {
        let Some(dialect) = self.shared.api.dialect() else {
            return Err(ClientError::unsupported("an HTTP request").with_provider(&self.shared.id));
        };
        let config = &self.shared.config;
        let payload = Payload::Chat(request.clone());
        let model = request.params.model.as_deref().unwrap_or(&config.model);
        let body = dialect
            .encode(&payload, model, false, config)
            .map_err(|e| {
                ClientError::new(ClientErrorKind::InvalidRequest, e.into_message())
                    .with_provider(&self.shared.id)
            })?;
        let mut http_request = http::Request::new(bytes::Bytes::from(body));
        *http_request.method_mut() = http::Method::POST;
        *http_request.uri_mut() = crate::provider::endpoint(config, dialect.chat_path())?;
        *http_request.headers_mut() = crate::provider::request_headers(config, dialect)?;
        Ok(http_request)
    }

    /// Its circuit breaker's state.
    pub fn circuit_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// A local model's prompt-prefix cache counters (`None` for providers
    /// reached over HTTP).
    pub fn prefix_cache(&self) -> Option<PrefixCacheStats> {
        self.transport.prefix_cache()
    }

    /// Free pool slots now.
    pub fn available_slots(&self) -> usize {
        self.pool.available()
    }

    /// Its rate-limit buckets now, as `(name, used, limit)`: what an
    /// in-process limiter holds; empty for a Redis-held one (reading it
    /// would take a round trip) or when it has no limits.
    pub fn rate_limit_usage(&self) -> Vec<(String, u64, u64)> {
        self.shared.limiter.usage_now()
    }
}

struct ClientInner {
    providers: Registry<Provider>,
    events: EventBus,
    /// Metrics of calls to unknown providers.
    metrics: Arc<CallMetrics>,
    default_provider: Option<String>,
    guard: std::sync::OnceLock<Arc<dyn CallGuard>>,
    cache: std::sync::OnceLock<ResponseCache>,
    journal: std::sync::OnceLock<Arc<dyn CompletionJournal>>,
}

/// The protected LM client: providers by id, each behind a circuit breaker,
/// rate-limit admission, a connection pool, retries and timeouts.
///
/// Cloning is cheap and shares everything.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("providers", &self.inner.providers)
            .finish_non_exhaustive()
    }
}

/// A transport answered with another kind of reply than the call asked for
/// (a bug in a transport, never an upstream's doing): record and report it.
fn wrong_reply(
    provider: &Provider,
    call: &Call,
    recorder: Recorder,
    expected: &str,
) -> ClientError {
    let error = ClientError::new(
        ClientErrorKind::MalformedResponse { retryable: false },
        format!("the transport returned a reply that is not a {expected} reply"),
    )
    .attach(&provider.shared.id, &call.inner().trail);
    recorder.finish(Ending::failed(&error));
    error
}

/// A call resolved to its provider, encoded and ready for the stack.
struct Prepared {
    provider: Arc<Provider>,
    call: Call,
    recorder: Recorder,
    estimated_input: Option<u64>,
}

impl Client {
    /// A client for `config`, with a new event bus.
    pub async fn from_config(config: &ClientConfig) -> Result<Self, ClientError> {
        Self::with_events(config, EventBus::new()).await
    }

    /// A client for `config` publishing on `events`.
    pub async fn with_events(config: &ClientConfig, events: EventBus) -> Result<Self, ClientError> {
        let client = Self {
            inner: Arc::new(ClientInner {
                providers: Registry::new("provider"),
                events,
                metrics: Arc::default(),
                default_provider: config.default_provider_id().map(str::to_owned),
                guard: std::sync::OnceLock::new(),
                cache: std::sync::OnceLock::new(),
                journal: std::sync::OnceLock::new(),
            }),
        };
        for provider in config.providers.values() {
            client.add_provider(provider.clone()).await?;
        }
        Ok(client)
    }

    /// Registers another provider.
    pub async fn add_provider(&self, config: ProviderConfig) -> Result<(), ClientError> {
        let id = config.id.clone();
        let provider = Provider::build(config, self.inner.events.clone()).await?;
        self.inner
            .providers
            .register(id, Arc::new(provider))
            .map_err(ClientError::config)
    }

    /// Registers a scripted in-process LM as provider `id`. Calls to it go
    /// through the same protection stack, events and telemetry as calls to a
    /// real provider.
    pub async fn add_scripted(&self, id: &str, lm: ScriptedLm) -> Result<(), ClientError> {
        let config = ProviderConfig::scripted(id, "scripted").map_err(ClientError::config)?;
        let shared = Provider::shared(
            config,
            self.inner.events.clone(),
            Arc::new(LocalLimiter::new(Vec::new())),
        );
        let transport: Arc<dyn Transport> = Arc::new(ScriptedTransport {
            lm,
            provider: Arc::clone(&shared.id),
        });
        self.inner
            .providers
            .register(id, Arc::new(Provider::assemble(shared, transport)))
            .map_err(ClientError::config)
    }

    /// Installs `guard` (a budget) to admit and settle every later call. A
    /// client has at most one guard: a second one is a configuration error.
    pub fn set_guard(&self, guard: Arc<dyn CallGuard>) -> Result<(), ClientError> {
        let name = guard.name();
        self.inner.guard.set(guard).map_err(|_| {
            ClientError::config(CoreError::config(
                "guard",
                format!("this client already has a guard; cannot add `{name}`"),
            ))
        })
    }

    /// Puts `cache` in front of every later chat call (see
    /// [`CachePolicy`](crate::CachePolicy) for which calls it answers). A
    /// client has at most one cache.
    pub fn set_cache(&self, cache: ResponseCache) -> Result<(), ClientError> {
        self.inner.cache.set(cache).map_err(|_| {
            ClientError::config(CoreError::config(
                "cache",
                "this client already has a response cache",
            ))
        })
    }

    /// Makes every later call's completion durable in `journal` before the
    /// call returns (see [`CompletionJournal`]). A client has at most one.
    pub fn set_journal(&self, journal: Arc<dyn CompletionJournal>) -> Result<(), ClientError> {
        self.inner.journal.set(journal).map_err(|_| {
            ClientError::config(CoreError::config(
                "analytics.durability",
                "this client already has a completion journal",
            ))
        })
    }

    /// The response cache, when one is set.
    pub fn cache(&self) -> Option<&ResponseCache> {
        self.inner.cache.get()
    }

    /// The event bus calls publish on.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// The provider registered under `id`.
    pub fn provider(&self, id: &str) -> Result<Arc<Provider>, ClientError> {
        self.inner
            .providers
            .get(id)
            .map_err(|_| ClientError::unknown_provider(id, self.inner.providers.ids()))
    }

    /// The registered provider ids.
    pub fn provider_ids(&self) -> Vec<String> {
        self.inner.providers.ids()
    }

    /// The default provider id, when the config names one (or has only one).
    pub fn default_provider(&self) -> Option<&str> {
        self.inner.default_provider.as_deref()
    }

    /// The provider `provider_id`, or the recorded failure of a call to an
    /// unknown one (such calls get their completion event too).
    fn resolve(
        &self,
        provider_id: &str,
        operation: Operation,
        options: &RequestOptions,
    ) -> Result<Arc<Provider>, ClientError> {
        if let Ok(provider) = self.inner.providers.get(provider_id) {
            return Ok(provider);
        }
        let correlation_id = options
            .correlation_id
            .clone()
            .unwrap_or_else(CorrelationId::generate);
        let mut recorder = Recorder::start(
            &self.inner.events,
            &self.inner.metrics,
            "",
            CallInfo {
                provider: Arc::from(provider_id),
                system: "unknown",
                model: Arc::from(options.params.model.as_deref().unwrap_or_default()),
                operation,
                estimated_input_tokens: None,
                tags: Arc::new(options.tags.clone()),
            },
            correlation_id.clone(),
            None,
        );
        recorder.journal_to(self.inner.journal.get());
        let error = ClientError::unknown_provider(provider_id, self.inner.providers.ids())
            .in_trail(&Trail::new(correlation_id));
        recorder.finish(Ending::failed(&error));
        Err(error)
    }

    fn prepare(
        &self,
        provider: Arc<Provider>,
        operation: Operation,
        messages: Vec<Message>,
        embed: Option<EmbeddingRequest>,
        options: RequestOptions,
    ) -> Result<Prepared, ClientError> {
        let correlation_id = options
            .correlation_id
            .clone()
            .unwrap_or_else(CorrelationId::generate);
        let trail = Trail::new(correlation_id.clone());
        let tags = if options.tags.is_empty() {
            // Most calls carry no tags: share one empty map instead of
            // allocating one per call.
            static EMPTY: std::sync::OnceLock<Arc<BTreeMap<String, String>>> =
                std::sync::OnceLock::new();
            Arc::clone(EMPTY.get_or_init(Arc::default))
        } else {
            Arc::new(options.tags.clone())
        };
        let shared = &provider.shared;
        let config = &shared.config;
        let (model, crumb) = match (operation, &embed) {
            (Operation::Embeddings, Some(request)) => {
                shared.model_and_crumb(request.model.as_deref(), true)
            }
            _ => shared.model_and_crumb(options.params.model.as_deref(), false),
        };
        trail.push("provider", crumb);
        let estimated_input = match (operation, &embed) {
            (Operation::Embeddings, Some(request)) => shared.limits_tokens.then(|| {
                request
                    .input
                    .iter()
                    .map(|t| tokens::count_text_tokens(&model, t))
                    .sum()
            }),
            _ => shared
                .limits_tokens
                .then(|| tokens::estimate_chat_tokens(&model, &messages)),
        };
        let mut recorder = Recorder::start(
            &shared.events,
            &shared.metrics,
            &shared.host,
            CallInfo {
                provider: Arc::clone(&shared.id),
                system: shared.api.system(),
                model: Arc::clone(&model),
                operation,
                estimated_input_tokens: estimated_input,
                tags,
            },
            correlation_id,
            Some(&options.params),
        );
        recorder.journal_to(self.inner.journal.get());
        let output_estimate = match operation {
            Operation::Embeddings => 0,
            _ => {
                u64::from(
                    options
                        .params
                        .max_tokens
                        .unwrap_or(config.default_max_tokens),
                ) * u64::from(options.params.n.unwrap_or(1).max(1))
            }
        };
        let cost = match estimated_input {
            Some(input) => Cost::call(input, output_estimate),
            None => Cost {
                requests: 1,
                ..Cost::ZERO
            },
        };
        let refuse = |error: ClientError, recorder: Recorder| {
            let error = error.attach(&shared.id, &trail);
            recorder.finish(Ending::failed(&error));
            error
        };
        let invalid = |message: String, recorder: Recorder| {
            refuse(
                ClientError::new(ClientErrorKind::InvalidRequest, message),
                recorder,
            )
        };
        let payload = match (operation, embed) {
            (Operation::Embeddings, Some(request)) => {
                if !shared.capabilities.embeddings {
                    return Err(refuse(ClientError::unsupported("embeddings"), recorder));
                }
                if request.input.is_empty() {
                    return Err(invalid("no input to embed".into(), recorder));
                }
                Payload::Embeddings(request)
            }
            _ => {
                if messages.is_empty() {
                    return Err(invalid(
                        "a chat needs at least one message".into(),
                        recorder,
                    ));
                }
                if let Err(message) = options.params.check() {
                    return Err(invalid(message, recorder));
                }
                let request = ChatRequest {
                    messages,
                    params: options.params,
                };
                // Refuse what the provider cannot express before taking any
                // rate-limit room or pool slot.
                if let Err(message) = shared.api.validate(&request) {
                    return Err(invalid(message, recorder));
                }
                Payload::Chat(request)
            }
        };
        if let Some(guard) = self.inner.guard.get() {
            // A guard prices the call before it is sent, so it needs a prompt
            // estimate even when no token bucket asked for one.
            let input = estimated_input.unwrap_or_else(|| match &payload {
                Payload::Chat(request) => tokens::estimate_chat_tokens(&model, &request.messages),
                Payload::Embeddings(request) => request
                    .input
                    .iter()
                    .map(|t| tokens::count_text_tokens(&model, t))
                    .sum(),
            });
            let estimate = Usage {
                input_tokens: input,
                output_tokens: output_estimate,
                ..Usage::default()
            };
            let checking = tokio::time::Instant::now();
            if let Err(message) = guard.admit(recorder.info(), recorder.correlation_id(), &estimate)
            {
                // A refusal's latency is the check's own time: what came
                // before it (the first prompt estimate loads a tiktoken
                // encoding, about 100 ms) is not the refusal's, and would
                // skew the latency percentiles of the calls recorded.
                recorder.time_from(checking);
                trail.push(guard.name(), message.clone());
                return Err(refuse(
                    ClientError::new(
                        ClientErrorKind::Refused {
                            guard: guard.name(),
                        },
                        message,
                    ),
                    recorder,
                ));
            }
            recorder.settle_with(Arc::clone(guard));
        }
        let call = Call::new(operation, payload, cost, options.max_wait, trail, model);
        recorder.attach(call.clone());
        Ok(Prepared {
            provider,
            call,
            recorder,
            estimated_input,
        })
    }

    async fn run(prepared: &Prepared) -> Result<Reply, ClientError> {
        let span = prepared.recorder.span().clone();
        prepared
            .provider
            .stack
            .clone()
            .oneshot(prepared.call.clone())
            .instrument(span)
            .await
            .map_err(|e| e.attach(&prepared.provider.shared.id, &prepared.call.inner().trail))
    }

    /// Sends a chat through `provider_id`'s protection stack and returns the
    /// normalised response.
    ///
    /// Publishes one started and one completed event, and records a span and
    /// metrics, whatever the outcome.
    pub async fn request(
        &self,
        provider_id: &str,
        messages: Vec<Message>,
        options: RequestOptions,
    ) -> Result<ChatResponse, ClientError> {
        // Back-pressure from a batched subscriber that has fallen behind (the
        // analytics recorder under a slow store): one atomic load otherwise.
        self.inner.events.congestion().await;
        // The one registry lookup of the call: everything below gets the
        // provider itself.
        let provider = self.resolve(provider_id, Operation::Chat, &options)?;
        if let Some(cache) = self.inner.cache.get() {
            let model = options
                .params
                .model
                .as_deref()
                .unwrap_or(&provider.shared.config.model);
            if let Some(plan) = crate::cache::plan(cache, provider_id, model, &messages, &options) {
                return self
                    .request_cached(cache, provider, plan, messages, options)
                    .await;
            }
        }
        self.request_uncached(provider, messages, options).await
    }

    /// Answers from the cache, or makes the call once (concurrent identical
    /// calls share it) and stores the response.
    async fn request_cached(
        &self,
        cache: &ResponseCache,
        provider: Arc<Provider>,
        plan: crate::cache::Plan,
        messages: Vec<Message>,
        options: RequestOptions,
    ) -> Result<ChatResponse, ClientError> {
        let started = tokio::time::Instant::now();
        let correlation_id = options
            .correlation_id
            .clone()
            .unwrap_or_else(CorrelationId::generate);
        let params = options.params.clone();
        let tags = options.tags.clone();
        let options = RequestOptions {
            correlation_id: Some(correlation_id.clone()),
            ..options
        };
        let compute = self.request_uncached(Arc::clone(&provider), messages, options);
        let cached = match cache
            .get_or_compute(&plan.key, plan.semantic.as_ref(), compute, &plan.lookup)
            .await
        {
            Ok(cached) => cached,
            Err(dspex_cache::CacheError::Compute(error)) => {
                return Err(Arc::try_unwrap(error).unwrap_or_else(|shared| (*shared).clone()));
            }
            Err(other) => {
                return Err(ClientError::new(
                    ClientErrorKind::Backend,
                    format!("response cache: {other}"),
                )
                .attach(&provider.shared.id, &Trail::new(correlation_id)));
            }
        };
        let (tier, similarity) = match cached.source {
            dspex_cache::Source::Computed => return Ok(Arc::unwrap_or_clone(cached.value)),
            dspex_cache::Source::L1 => ("l1", None),
            dspex_cache::Source::L2 => ("l2", None),
            dspex_cache::Source::L3 { similarity } => ("l3", Some(similarity)),
            // Another call with the same key made the request while this one
            // waited: this call cost nothing either.
            dspex_cache::Source::Coalesced => ("inflight", None),
        };
        let mut response = Arc::unwrap_or_clone(cached.value);
        let served = CacheServed {
            tier,
            similarity,
            saved: response.usage,
        };
        let shared = &provider.shared;
        let mut recorder = Recorder::start(
            &shared.events,
            &shared.metrics,
            &shared.host,
            CallInfo {
                provider: Arc::clone(&shared.id),
                system: shared.api.system(),
                model: Arc::from(response.model.as_str()),
                operation: Operation::Chat,
                estimated_input_tokens: None,
                tags: Arc::new(tags),
            },
            correlation_id.clone(),
            Some(&params),
        );
        recorder.journal_to(self.inner.journal.get());
        response.usage = Usage::default();
        response.latency = started.elapsed();
        response.attempts = 0;
        response.correlation_id = correlation_id;
        response.cache = Some(served.clone());
        recorder
            .finish_durably(Ending {
                outcome: crate::events::Outcome::Success,
                usage: Usage::default(),
                finish_reason: response.finish_reason().cloned(),
                response_model: Some(response.model.clone()),
                response_id: response.id.clone(),
                request_id: response.request_id.clone(),
                cache: Some(Box::new(served)),
            })
            .await;
        Ok(response)
    }

    async fn request_uncached(
        &self,
        provider: Arc<Provider>,
        messages: Vec<Message>,
        options: RequestOptions,
    ) -> Result<ChatResponse, ClientError> {
        let prepared = self.prepare(provider, Operation::Chat, messages, None, options)?;
        let result = Self::run(&prepared).await;
        let Prepared {
            provider,
            call,
            recorder,
            estimated_input,
        } = prepared;
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => {
                recorder.finish_durably(Ending::failed(&error)).await;
                return Err(error);
            }
        };
        let Reply {
            body, request_id, ..
        } = reply;
        let ReplyBody::Chat(parsed) = body else {
            return Err(wrong_reply(&provider, &call, recorder, "chat"));
        };
        let model = parsed
            .model
            .unwrap_or_else(|| call.inner().model.to_string());
        let usage = parsed.usage.unwrap_or_else(|| {
            call.inner()
                .trail
                .push("usage", "the response reported no usage; estimated it");
            let text: String = parsed
                .choices
                .iter()
                .filter_map(|c| c.content.as_deref())
                .collect();
            Usage {
                input_tokens: estimated_input.unwrap_or(0),
                output_tokens: tokens::count_text_tokens(&model, &text),
                ..Usage::default()
            }
        });
        let response = ChatResponse {
            provider: Arc::clone(&provider.shared.id),
            model,
            id: parsed.id,
            request_id,
            choices: parsed.choices,
            usage,
            latency: recorder.elapsed(),
            attempts: call.attempts(),
            correlation_id: recorder.correlation_id().clone(),
            cache: None,
        };
        recorder
            .finish_durably(Ending {
                outcome: crate::events::Outcome::Success,
                usage,
                finish_reason: response.finish_reason().cloned(),
                response_model: Some(response.model.clone()),
                response_id: response.id.clone(),
                request_id: response.request_id.clone(),
                cache: None,
            })
            .await;
        Ok(response)
    }

    /// Like [`Client::request`], but streams the reply. Retries happen only
    /// before the first event reaches the caller.
    pub async fn request_stream(
        &self,
        provider_id: &str,
        messages: Vec<Message>,
        options: RequestOptions,
    ) -> Result<ChatStream, ClientError> {
        self.inner.events.congestion().await;
        let provider = self.resolve(provider_id, Operation::ChatStream, &options)?;
        let prepared = self.prepare(provider, Operation::ChatStream, messages, None, options)?;
        let result = Self::run(&prepared).await;
        let Prepared {
            provider,
            call,
            recorder,
            estimated_input,
        } = prepared;
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => {
                recorder.finish_durably(Ending::failed(&error)).await;
                return Err(error);
            }
        };
        let Reply {
            body,
            started,
            request_id,
            reservation,
            slot,
        } = reply;
        let ReplyBody::Stream(events) = body else {
            return Err(wrong_reply(&provider, &call, recorder, "stream"));
        };
        Ok(ChatStream::new(StreamParts {
            events,
            attempt_started: started,
            shared: Arc::clone(&provider.shared),
            recorder,
            reservation,
            slot,
            request_id,
            estimated_input,
            call,
        }))
    }

    /// Embeds texts through `provider_id` (OpenAI-compatible providers).
    pub async fn embed(
        &self,
        provider_id: &str,
        request: EmbeddingRequest,
        options: RequestOptions,
    ) -> Result<EmbeddingResponse, ClientError> {
        self.inner.events.congestion().await;
        let provider = self.resolve(provider_id, Operation::Embeddings, &options)?;
        let prepared = self.prepare(
            provider,
            Operation::Embeddings,
            Vec::new(),
            Some(request),
            options,
        )?;
        let result = Self::run(&prepared).await;
        let Prepared {
            provider,
            call,
            recorder,
            ..
        } = prepared;
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => {
                recorder.finish_durably(Ending::failed(&error)).await;
                return Err(error);
            }
        };
        let ReplyBody::Embeddings(parsed) = reply.body else {
            return Err(wrong_reply(&provider, &call, recorder, "embeddings"));
        };
        let model = parsed
            .model
            .unwrap_or_else(|| call.inner().model.to_string());
        let response = EmbeddingResponse {
            provider: Arc::clone(&provider.shared.id),
            model: model.clone(),
            vectors: parsed.vectors,
            usage: parsed.usage,
            latency: recorder.elapsed(),
            attempts: call.attempts(),
            correlation_id: recorder.correlation_id().clone(),
        };
        recorder
            .finish_durably(Ending {
                outcome: crate::events::Outcome::Success,
                usage: parsed.usage,
                finish_reason: None,
                response_model: Some(model),
                response_id: None,
                request_id: reply.request_id,
                cache: None,
            })
            .await;
        Ok(response)
    }

    /// Per-provider state for diagnostics: circuit state and free pool slots.
    pub fn status(&self) -> BTreeMap<String, (CircuitState, usize)> {
        self.inner
            .providers
            .ids()
            .into_iter()
            .filter_map(|id| {
                let provider = self.inner.providers.get(&id).ok()?;
                Some((id, (provider.circuit_state(), provider.available_slots())))
            })
            .collect()
    }
}
