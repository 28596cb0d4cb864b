//! The gateway itself: its shared state, the routes, and the HTTP/1 server
//! loop (hyper, with a header-read timeout and a request-head size limit,
//! which `axum::serve` does not set).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dspex_analytics::keys::{KeyHash, hash_key};
use dspex_analytics::{PriceTable, Store};
use dspex_client::Client;
use dspex_core::config::Secret;
use dspex_core::telemetry::PrometheusMetrics;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Auth, GatewayConfig, Target};
use crate::error::{GatewayError, RequestError};
use crate::keys::{KeyRing, LimitBackend, Tenant, presented_key};
use crate::spend::Ledger;
use crate::{admin, chat, embeddings};

/// A gateway: a client, the validated `[gateway]` config, the keys (when
/// `auth = "keys"`), and the Prometheus handle `/metrics` renders.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) state: Arc<Shared>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.state.config.listen)
            .field(
                "aliases",
                &self.state.config.models.keys().collect::<Vec<_>>(),
            )
            .field("keys", &self.state.keys)
            .finish_non_exhaustive()
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) config: GatewayConfig,
    pub(crate) metrics: Option<PrometheusMetrics>,
    pub(crate) prices: Arc<PriceTable>,
    /// The analytics store: keys, spend, the dashboard's numbers.
    pub(crate) store: Option<Store>,
    /// Present when `auth = "keys"`.
    pub(crate) keys: Option<Arc<KeyRing>>,
    /// Present when `auth = "keys"`.
    pub(crate) ledger: Option<Arc<Ledger>>,
    /// The admin key's hash; `None` turns the admin API and dashboard off.
    pub(crate) admin_key: Option<KeyHash>,
    /// Request metrics, registered once per label set.
    pub(crate) metric_handles:
        parking_lot::RwLock<std::collections::HashMap<chat::MetricLabels, chat::MetricHandles>>,
    refresh: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.refresh.take() {
            task.abort();
        }
    }
}

/// Builds a [`Gateway`]: the client and config, plus what `auth = "keys"`
/// and the admin API need.
#[must_use = "call build()"]
pub struct GatewayBuilder {
    client: Client,
    config: GatewayConfig,
    store: Option<Store>,
    prices: Option<Arc<PriceTable>>,
    metrics: Option<PrometheusMetrics>,
    admin_key: Option<Secret>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("config", &self.config)
            .field("store", &self.store.as_ref().map(Store::backend))
            .field("admin_key", &self.admin_key)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// The analytics store holding the virtual keys (required with
    /// `auth = "keys"`, and by the admin API and dashboard).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// The price table budgets are estimated and settled with (default: the
    /// bundled one).
    pub fn prices(mut self, prices: Arc<PriceTable>) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Serves `metrics` at `/metrics` (see
    /// [`install_prometheus`](dspex_core::telemetry::install_prometheus)).
    pub fn metrics(mut self, metrics: PrometheusMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The admin key, instead of reading the variable `admin_key_env`
    /// names.
    pub fn admin_key(mut self, key: Secret) -> Self {
        self.admin_key = Some(key);
        self
    }

    /// Checks the aliases against the client's providers, loads the keys and
    /// connects the limit backend. Errors name the config key.
    pub async fn build(self) -> Result<Gateway, GatewayError> {
        let Self {
            client,
            config,
            store,
            prices,
            metrics,
            admin_key,
        } = self;
        check_aliases(&client, &config)?;
        // Keys' token limits estimate every prompt: load the tokenizers of
        // the configured models now, not during the first request.
        let models: Vec<String> = client
            .provider_ids()
            .iter()
            .filter_map(|id| client.provider(id).ok().map(|p| p.config().model.clone()))
            .chain(
                config
                    .models
                    .values()
                    .filter_map(|a| a.primary.model.clone()),
            )
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for model in &models {
                dspex_client::tokens::warm_up(model);
            }
        })
        .await;
        let prices = match prices {
            Some(prices) => prices,
            None => Arc::new(PriceTable::bundled().map_err(GatewayError::Analytics)?),
        };
        let admin_key = admin_key
            .or_else(|| std::env::var(&config.admin_key_env).ok().map(Secret::new))
            .filter(|key| !key.expose().trim().is_empty())
            .map(|key| hash_key(key.expose().trim()));
        let (keys, ledger, refresh) = match (config.auth, &store) {
            (Auth::None, _) => (None, None, None),
            (Auth::Keys, None) => {
                return Err(GatewayError::Config(dspex_core::CoreError::config(
                    "gateway.auth",
                    "`keys` needs the analytics store that holds them ([analytics] store, on by default for `dspex serve`); set auth = \"none\" to serve without keys",
                )));
            }
            (Auth::Keys, Some(store)) => {
                let backend =
                    LimitBackend::connect(config.rate_limit_backend.as_ref().map(Secret::expose))
                        .await?;
                let ledger = match &backend {
                    LimitBackend::Local => Ledger::local(store.clone()),
                    LimitBackend::Redis(connection) => {
                        Ledger::redis(store.clone(), connection.clone())
                    }
                };
                let ring =
                    Arc::new(KeyRing::open(store.clone(), backend, config.key_refresh).await?);
                let refresh = ring.spawn_refresh(config.key_refresh);
                (Some(ring), Some(Arc::new(ledger)), Some(refresh))
            }
        };
        Ok(Gateway {
            state: Arc::new(Shared {
                client,
                config,
                metrics,
                prices,
                store,
                keys,
                ledger,
                admin_key,
                metric_handles: parking_lot::RwLock::default(),
                refresh,
            }),
        })
    }
}

/// Fails when an alias names a provider the client does not have (the error
/// names the config key).
fn check_aliases(client: &Client, config: &GatewayConfig) -> Result<(), GatewayError> {
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
    Ok(())
}

impl Gateway {
    /// Starts building a gateway over `client`.
    pub fn builder(client: Client, config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            client,
            config,
            store: None,
            prices: None,
            metrics: None,
            admin_key: None,
        }
    }

    /// The validated config.
    pub fn config(&self) -> &GatewayConfig {
        &self.state.config
    }

    /// Re-reads the keys from the store now, as the periodic refresh does.
    pub async fn reload_keys(&self) -> Result<(), GatewayError> {
        match &self.state.keys {
            Some(keys) => keys.reload().await,
            None => Ok(()),
        }
    }

    /// The routes, for serving or for embedding in a larger axum app.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/v1/chat/completions", post(chat::openai_chat))
            .route("/v1/messages", post(chat::anthropic_messages))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/v1/models", get(models))
            // The body limit is applied when the body is read, so an
            // oversized body gets the API's own 413 (not axum's text).
            .layer(DefaultBodyLimit::disable());
        Router::new()
            .merge(api)
            .merge(admin::routes())
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .fallback(|| async {
                RequestError::not_found("no such route on this gateway").into_response()
            })
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

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops
    /// accepting, lets in-flight requests and streams finish for up to
    /// `shutdown_grace`, and returns. Flushing analytics is the caller's
    /// next step (`Runtime::shutdown`).
    ///
    /// Each connection must send a request head within
    /// `header_read_timeout` (slow-loris) and no larger than
    /// `max_header_bytes` (431 past it).
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let config = &self.state.config;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes)
            .keep_alive(true);
        let service = TowerToHyperService::new(self.router());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: pause
                            // rather than spin, keep serving what is open.
                            tracing::warn!(error = %error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let connection = http.serve_connection(TokioIo::new(stream), service.clone());
                    let watched = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(error) = watched.await {
                            tracing::debug!(error = %error, "connection ended with an error");
                        }
                    });
                }
            }
        }
        drop(listener);
        let grace = config.shutdown_grace;
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!(grace_ms = grace.as_millis(), "shutdown grace period over; dropping the requests still running");
            }
        }
        Ok(())
    }
}

/// Who made a request: a tenant (a virtual key), or nobody when
/// `auth = "none"`.
pub(crate) type Caller = Option<Arc<Tenant>>;

impl Shared {
    /// The caller a request's key belongs to; 401 when `auth = "keys"` and
    /// the key is missing, unknown, revoked or expired.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, RequestError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let Some(presented) = presented_key(headers) else {
            return Err(RequestError::unauthorized(
                "missing_api_key",
                "no API key: send `Authorization: Bearer <key>` (or `x-api-key`) with a key from `dspex keys create`",
            ));
        };
        keys.authenticate(presented).await.map(Some)
    }

    /// The routes a request's `model` may take, in order.
    pub(crate) fn route(&self, model: &str) -> Result<Vec<Target>, RequestError> {
        if let Some(alias) = self.config.models.get(model) {
            let mut targets = vec![alias.primary.clone()];
            targets.extend(alias.fallbacks.iter().cloned());
            return Ok(targets);
        }
        let providers = self.client.provider_ids();
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
            if let Ok(provider) = self.client.provider(id)
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
        Err(RequestError::model_not_found(
            model,
            &self.model_names(None),
        ))
    }

    /// The model a target asks for (its own, else the provider's).
    pub(crate) fn model_of(&self, target: &Target) -> String {
        target.model.clone().unwrap_or_else(|| {
            self.client
                .provider(&target.provider)
                .map(|p| p.config().model.clone())
                .unwrap_or_default()
        })
    }

    /// Every name `/v1/models` lists for `caller`: the aliases, then
    /// `provider/model`, those the caller's key may use.
    pub(crate) fn model_names(&self, caller: Option<&Tenant>) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .models
            .iter()
            .filter(|(name, alias)| {
                caller.is_none_or(|t| {
                    t.key.allows_model(
                        name,
                        &alias.primary.provider,
                        &self.model_of(&alias.primary),
                    )
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for id in self.client.provider_ids() {
            if let Ok(provider) = self.client.provider(&id) {
                let model = &provider.config().model;
                let full = format!("{id}/{model}");
                if caller.is_none_or(|t| t.key.allows_model(&full, &id, model)) {
                    names.push(full);
                }
            }
        }
        names
    }
}

async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let caller = match shared.caller(&headers).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let data: Vec<_> = shared
        .model_names(caller.as_deref())
        .into_iter()
        .map(|name| {
            let owner = shared
                .config
                .models
                .get(&name)
                .map(|alias| alias.primary.provider.clone())
                .or_else(|| name.split_once('/').map(|(p, _)| p.to_owned()))
                .unwrap_or_default();
            json!({"id": name, "object": "model", "created": 0, "owned_by": owner})
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// 200 when the config is loaded, a provider is registered and the key store
/// answers; 503 otherwise, saying which part is not ready.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.client.status();
    let providers: serde_json::Map<_, _> = status
        .iter()
        .map(|(id, (circuit, slots))| {
            (
                id.clone(),
                json!({"circuit": chat::circuit_name(*circuit), "free_slots": slots}),
            )
        })
        .collect();
    let store_ready = match &shared.store {
        None => None,
        Some(store) => Some(store.count().await.is_ok()),
    };
    let ready = !providers.is_empty() && store_ready != Some(false);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({"ready": ready, "providers": providers, "store": store_ready})),
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
