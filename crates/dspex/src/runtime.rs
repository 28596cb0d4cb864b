//! The composition root: one [`Runtime`] built from one `dspex.toml` owns the
//! client, the response cache, the analytics recorder and the budgets, and
//! flushes what it recorded on [`Runtime::shutdown`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // ./dspex.toml ($DSPEX_CONFIG, or a path), every section of it.
//! let runtime = dspex::Runtime::from_config(&dspex::Runtime::loader(None)?).await?;
//! let provider = runtime.provider(None)?; // the default provider
//! let reply = runtime
//!     .client()
//!     .request(&provider, vec![dspex::Message::user("Name a prime.")], dspex::RequestOptions::new())
//!     .await?;
//! println!("{}", reply.text());
//! runtime.shutdown().await?; // every call recorded before this returns
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use dspex_analytics::{
    AnalyticsConfig, AnalyticsError, Durability, Recorder, RecorderHandle, RecorderStats,
};
use dspex_cache::{CacheConfig, CacheError, EmbedderKind};
use dspex_client::{ApiEmbedder, Client, ClientConfig, ClientError, ResponseCache};
use dspex_core::CoreError;
use dspex_core::config::ConfigLoader;

/// Why a runtime could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The config is invalid; the message names the key.
    #[error(transparent)]
    Config(#[from] CoreError),
    /// An MCP server of `[mcp.servers]` is misconfigured or unreachable.
    #[cfg(feature = "mcp")]
    #[error(transparent)]
    Mcp(#[from] dspex_mcp::McpError),
    /// A provider could not be built, or (in [`Runtime::provider`]) none fits.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The response cache could not be opened.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// The analytics store could not be opened, or lost rows on shutdown.
    #[error("analytics: {0}")]
    Analytics(#[from] AnalyticsError),
    /// No provider can be chosen: none is configured, or several are and
    /// none was named.
    #[error("{message}")]
    NoProvider {
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl RuntimeError {
    /// Whether trying again may help (a store or provider that was briefly
    /// unreachable); config errors never are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Client(error) => error.is_retryable(),
            Self::Cache(error) => error.is_retryable(),
            Self::Analytics(error) => error.is_retryable(),
            #[cfg(feature = "mcp")]
            Self::Mcp(error) => error.is_retryable(),
            Self::Config(_) | Self::NoProvider { .. } => false,
        }
    }
}

/// Every top-level key a DSPex crate reads from `dspex.toml`: the client's,
/// the cache's and the analytics'. A loader built with fewer rejects the
/// others as unknown.
pub fn config_keys() -> Vec<&'static str> {
    let mut keys = dspex_client::config::CONFIG_KEYS.to_vec();
    // Read by dspex-gateway (`dspex serve`), which this crate depends on only
    // with the `gateway` feature: one dspex.toml serves a library program
    // and the gateway alike, so the key is known either way.
    keys.push("gateway");
    // Read by dspex-mcp with the `mcp` feature; known either way for the
    // same reason.
    keys.push("mcp");
    for key in dspex_cache::CONFIG_KEYS
        .iter()
        .chain(dspex_analytics::CONFIG_KEYS)
        .chain(dspex_prompt::optimize::config::CONFIG_KEYS)
    {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys
}

/// Everything one process needs to make LM calls the way its config says:
/// providers behind their protection stacks, the response cache
/// (`[cache]`), the call recorder and budgets (`[analytics]`).
///
/// Build one per process and share [`Runtime::client`] (cloning a client is
/// cheap). Call [`Runtime::shutdown`] before exiting: it waits until every
/// call made so far is written to the analytics store. A runtime dropped
/// without it keeps recording in the background until the client's event bus
/// goes away, which a process that exits may not wait for.
pub struct Runtime {
    client: Client,
    client_config: ClientConfig,
    recorder: Option<RecorderHandle>,
    store: Option<dspex_analytics::Store>,
    prices: Option<Arc<dspex_analytics::PriceTable>>,
    /// `[mcp.servers]`, checked at start; connected on first use.
    #[cfg(feature = "mcp")]
    mcp: McpState,
}

#[cfg(feature = "mcp")]
#[derive(Debug, Default)]
struct McpState {
    servers: dspex_mcp::McpServers,
    connected: tokio::sync::OnceCell<dspex_mcp::McpToolset>,
}

/// How [`Runtime::from_config_with`] builds a runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeOptions {
    /// Record calls to the analytics store even when the config has no
    /// `[analytics]` section (its defaults: `dspex-analytics.sqlite`). The
    /// gateway sets it: its keys, budgets and dashboard live in that store.
    pub analytics_by_default: bool,
}

impl RuntimeOptions {
    /// Analytics on unless the config turns them off.
    pub fn analytics_by_default(mut self) -> Self {
        self.analytics_by_default = true;
        self
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("client", &self.client)
            .field("cache", &self.client.cache().is_some())
            .field("recorder", &self.recorder)
            .finish()
    }
}

/// What [`Runtime::shutdown`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The recorder's final counts, when `[analytics]` recorded calls.
    pub recorded: Option<RecorderStats>,
}

impl Runtime {
    /// The loader of `path`, or of the first of `$DSPEX_CONFIG` and
    /// `./dspex.toml` that exists, with `DSPEX_*` environment overrides, and
    /// every DSPex key allowed.
    pub fn loader(path: Option<&Path>) -> Result<ConfigLoader, RuntimeError> {
        Ok(ConfigLoader::builder(&config_keys())
            .discover(path)
            .build()?)
    }

    /// Builds the runtime `loader`'s config describes: the providers (from
    /// the SDK environment variables when the file has none), the response
    /// cache with a `[cache]` section, the recorder and budgets with an
    /// enabled `[analytics]` section.
    pub async fn from_config(loader: &ConfigLoader) -> Result<Self, RuntimeError> {
        Self::from_config_with_env(loader, &|name| std::env::var(name).ok()).await
    }

    /// [`Runtime::from_config`], reading API keys through `env` instead of
    /// the process environment (a secret store, a test).
    pub async fn from_config_with_env(
        loader: &ConfigLoader,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Self, RuntimeError> {
        Self::from_config_with(loader, env, RuntimeOptions::default()).await
    }

    /// [`Runtime::from_config_with_env`] with `options`.
    pub async fn from_config_with(
        loader: &ConfigLoader,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        options: RuntimeOptions,
    ) -> Result<Self, RuntimeError> {
        let client_config = ClientConfig::load_with_env(loader, env)?;
        let client = Client::from_config(&client_config).await?;
        if loader.contains("cache") {
            let cache = open_cache(loader, &client, &client_config).await?;
            client.set_cache(cache)?;
        }
        let mut recorder = None;
        let mut store_opened = None;
        let mut prices = None;
        if options.analytics_by_default || loader.contains("analytics") {
            let config = AnalyticsConfig::load(loader)?;
            prices = Some(Arc::clone(&config.prices));
            if config.enabled {
                let store =
                    dspex_analytics::Store::open(&config.store, config.schema.as_deref()).await?;
                if !config.budgets.is_empty() {
                    let budgets = config.budgets();
                    // Today's and this month's spend so far, so a restart
                    // does not reset a budget.
                    budgets.prime(&store).await?;
                    client.set_guard(Arc::new(budgets))?;
                }
                recorder = Some(match &config.durability {
                    Durability::Wal { journal_dir } => {
                        Recorder::attach_journaled(
                            &client,
                            store.clone(),
                            Arc::clone(&config.prices),
                            config.recorder,
                            journal_dir,
                        )
                        .await?
                    }
                    // `Batched`, and any mode a newer analytics crate adds.
                    _ => Recorder::attach(
                        client.events(),
                        store.clone(),
                        Arc::clone(&config.prices),
                        config.recorder,
                    ),
                });
                store_opened = Some(store);
            }
        }
        Ok(Self {
            client,
            client_config,
            recorder,
            store: store_opened,
            prices,
            #[cfg(feature = "mcp")]
            mcp: McpState {
                servers: dspex_mcp::McpServers::load(loader)?,
                connected: tokio::sync::OnceCell::new(),
            },
        })
    }

    /// [`Runtime::loader`] then [`Runtime::from_config`].
    pub async fn discover(path: Option<&Path>) -> Result<Self, RuntimeError> {
        Self::from_config(&Self::loader(path)?).await
    }

    /// The client: every provider, with the cache and budget in front.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The validated client config (providers, default provider).
    pub fn client_config(&self) -> &ClientConfig {
        &self.client_config
    }

    /// The provider to use: `requested`, else the config's default (or its
    /// only provider). The error says what to configure or choose.
    pub fn provider(&self, requested: Option<&str>) -> Result<String, RuntimeError> {
        let config = &self.client_config;
        let id = match requested.or(config.default_provider_id()) {
            Some(id) => id.to_owned(),
            None if config.providers.is_empty() && self.client.provider_ids().is_empty() => {
                return Err(RuntimeError::NoProvider {
                    message: "no provider is configured: write a dspex.toml (see README) or set OPENAI_API_KEY / ANTHROPIC_API_KEY".into(),
                });
            }
            None => {
                return Err(RuntimeError::NoProvider {
                    message: format!(
                        "several providers are configured ({}); choose one",
                        self.client.provider_ids().join(", ")
                    ),
                });
            }
        };
        // Unknown names fail here with the list of known ones, before any work.
        self.client.provider(&id)?;
        Ok(id)
    }

    /// The analytics store calls are recorded in, when analytics are on.
    pub fn store(&self) -> Option<&dspex_analytics::Store> {
        self.store.as_ref()
    }

    /// The price table (bundled, with `[analytics.prices]` over it), when
    /// analytics are configured.
    pub fn prices(&self) -> Option<&Arc<dspex_analytics::PriceTable>> {
        self.prices.as_ref()
    }

    /// The tools of the config's `[mcp.servers]`: the servers are started
    /// (or connected to) on the first call and stay up until
    /// [`Runtime::shutdown`]. None when the config names no server.
    #[cfg(feature = "mcp")]
    pub async fn tools(&self) -> Result<Vec<dspex_prompt::Tool>, RuntimeError> {
        if self.mcp.servers.is_empty() {
            return Ok(Vec::new());
        }
        let toolset = self
            .mcp
            .connected
            .get_or_try_init(|| self.mcp.servers.connect())
            .await?;
        Ok(toolset.tools())
    }

    /// The recorder's counts so far, when `[analytics]` records calls.
    pub fn recorder_stats(&self) -> Option<RecorderStats> {
        self.recorder.as_ref().map(RecorderHandle::stats)
    }

    /// Writes every call recorded so far to the analytics store and stops the
    /// recorder. Rows the store refused are counted in
    /// [`RecorderStats::rows_lost`], never dropped silently.
    pub async fn shutdown(self) -> Result<ShutdownReport, RuntimeError> {
        #[cfg(feature = "mcp")]
        if let Some(toolset) = self.mcp.connected.into_inner() {
            toolset.shutdown().await;
        }
        let recorded = match self.recorder {
            Some(recorder) => Some(recorder.shutdown().await?),
            None => None,
        };
        Ok(ShutdownReport { recorded })
    }
}

/// The `[cache]` the config describes; an API embedder embeds with the
/// default provider, so it needs one and a calibrated threshold.
async fn open_cache(
    loader: &ConfigLoader,
    client: &Client,
    client_config: &ClientConfig,
) -> Result<ResponseCache, RuntimeError> {
    let config = CacheConfig::load(loader)?;
    let embedder: Option<Arc<dyn dspex_cache::Embedder>> =
        if config.l3 && config.embedder == EmbedderKind::Api {
            let provider = client_config.default_provider_id().ok_or_else(|| {
                CoreError::config(
                    "cache.embedder",
                    "\"api\" embeds with the default provider: set default_provider",
                )
            })?;
            let threshold = config.threshold.ok_or_else(|| {
            CoreError::config(
                "cache.threshold",
                "embedder = \"api\" needs a threshold (measure it with `dspex cache calibrate`)",
            )
        })?;
            Some(Arc::new(
                ApiEmbedder::new(client, provider, None, threshold).await?,
            ))
        } else {
            None
        };
    Ok(ResponseCache::from_config(&config, embedder).await?)
}

#[cfg(all(test, feature = "gateway"))]
mod tests {
    #[test]
    fn the_gateway_keys_are_known() {
        for key in dspex_gateway::CONFIG_KEYS {
            assert!(super::config_keys().contains(key), "{key}");
        }
    }
}
