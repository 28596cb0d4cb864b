//! What the commands share: output, failures and exit codes, config loading.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use dspex::core::config::ConfigLoader;
use dspex::{Client, ClientConfig, ClientError, ClientErrorKind};

/// Every top-level key any DSPex crate reads from `dspex.toml`.
pub(crate) fn known_keys() -> Vec<&'static str> {
    let mut keys = dspex::config::CONFIG_KEYS.to_vec();
    keys.extend_from_slice(dspex::cache::CONFIG_KEYS);
    keys.extend_from_slice(dspex_analytics::CONFIG_KEYS);
    keys
}

/// Writes a line to stdout; a closed pipe is not an error worth a panic.
pub(crate) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

/// Writes a line to stderr.
pub(crate) fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}

/// A failed command and its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad arguments or config: exit 2.
    Usage(anyhow::Error),
    /// The provider failed: exit 3.
    Provider(ClientError),
    /// The program failed after calling the provider (a reply that would not
    /// parse): exit 3.
    Program(dspex::PromptError),
    /// A workflow step failed: exit 3 (the step history goes to stderr first).
    Workflow(dspex::workflow::WorkflowError),
}

impl Failure {
    pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self::Usage(error.into())
    }

    pub(crate) fn report(self) -> ExitCode {
        match self {
            Self::Usage(error) => {
                err(&format!("error: {error:#}"));
                ExitCode::from(2)
            }
            Self::Program(error) => {
                err(&format!("error: {error}"));
                ExitCode::from(3)
            }
            Self::Workflow(error) => {
                err(&format!("error: {error}"));
                ExitCode::from(3)
            }
            Self::Provider(error) => {
                err(&format!("error: {error}"));
                if let Some(context) = error.context() {
                    err(&format!("  correlation id: {}", context.correlation_id));
                    for crumb in &context.breadcrumbs {
                        err(&format!("  {crumb}"));
                    }
                }
                ExitCode::from(3)
            }
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error.kind() {
            ClientErrorKind::Config(_)
            | ClientErrorKind::UnknownProvider { .. }
            | ClientErrorKind::InvalidRequest => Self::Usage(error.into()),
            _ => Self::Provider(error),
        }
    }
}

impl From<dspex::core::CoreError> for Failure {
    fn from(error: dspex::core::CoreError) -> Self {
        Self::Usage(error.into())
    }
}

/// Loads and validates the config the way every command does.
pub(crate) fn load_config(path: Option<&Path>) -> Result<(ConfigLoader, ClientConfig), Failure> {
    let loader = ConfigLoader::builder(&known_keys())
        .discover(path)
        .build()?;
    let config = ClientConfig::load(&loader)?;
    Ok((loader, config))
}

/// Builds the client for a loaded config, with the response cache when the
/// config has a `[cache]` section.
pub(crate) async fn build_client(
    loader: &ConfigLoader,
    config: &ClientConfig,
) -> Result<Client, Failure> {
    let client = Client::from_config(config).await?;
    if loader.contains("cache") {
        let cache_config = dspex::cache::CacheConfig::load(loader)?;
        let embedder: Option<std::sync::Arc<dyn dspex::cache::Embedder>> = if cache_config.l3
            && cache_config.embedder == dspex::cache::EmbedderKind::Api
        {
            let provider = config.default_provider_id().ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "cache.embedder = \"api\" embeds with the default provider: set default_provider"
                    ))
                })?;
            let threshold = cache_config.threshold.ok_or_else(|| {
                    Failure::usage(anyhow::anyhow!(
                        "cache.embedder = \"api\" needs cache.threshold (measure it with `dspex cache calibrate`)"
                    ))
                })?;
            Some(std::sync::Arc::new(
                dspex::ApiEmbedder::new(&client, provider, None, threshold).await?,
            ))
        } else {
            None
        };
        let cache = dspex::ResponseCache::from_config(&cache_config, embedder)
            .await
            .map_err(|e| Failure::usage(anyhow::anyhow!("cache: {e}")))?;
        client.set_cache(cache)?;
    }
    if loader.contains("analytics") {
        attach_analytics(loader, &client).await?;
    }
    Ok(client)
}

/// The recorder of this command's calls, flushed when the command ends.
static RECORDER: std::sync::Mutex<Option<dspex_analytics::RecorderHandle>> =
    std::sync::Mutex::new(None);

/// Records every call of this command into the `[analytics]` store, and
/// installs its budgets as the client's guard.
async fn attach_analytics(loader: &ConfigLoader, client: &Client) -> Result<(), Failure> {
    let config = dspex_analytics::AnalyticsConfig::load(loader).map_err(Failure::usage)?;
    if !config.enabled {
        return Ok(());
    }
    let store = dspex_analytics::Store::open(&config.store, config.schema.as_deref())
        .await
        .map_err(Failure::usage)?;
    if !config.budgets.is_empty() {
        let budgets = config.budgets();
        budgets.prime(&store).await.map_err(Failure::usage)?;
        client.set_guard(std::sync::Arc::new(budgets))?;
    }
    let handle = dspex_analytics::Recorder::attach(
        client.events(),
        store,
        std::sync::Arc::clone(&config.prices),
        config.recorder,
    );
    if let Ok(mut slot) = RECORDER.lock() {
        *slot = Some(handle);
    }
    Ok(())
}

/// Flushes the calls recorded by this command (nothing when no `[analytics]`).
pub(crate) async fn finish_recording() {
    let handle = RECORDER.lock().ok().and_then(|mut slot| slot.take());
    if let Some(handle) = handle {
        match handle.shutdown().await {
            Ok(stats) if stats.rows_lost > 0 => err(&format!(
                "warning: {} call record(s) could not be written to the analytics store",
                stats.rows_lost
            )),
            Ok(_) => {}
            Err(error) => err(&format!("warning: analytics recorder: {error}")),
        }
    }
}

/// Builds the client and picks the provider: the one named, else the default.
pub(crate) async fn client_for(
    path: Option<&Path>,
    provider: Option<&str>,
) -> Result<(Client, String), Failure> {
    let (loader, config) = load_config(path)?;
    let provider = match provider.or(config.default_provider_id()) {
        Some(provider) => provider.to_owned(),
        None if config.providers.is_empty() => {
            return Err(Failure::usage(anyhow::anyhow!(
                "no provider is configured: write a dspex.toml (see README) or set OPENAI_API_KEY / ANTHROPIC_API_KEY"
            )));
        }
        None => {
            return Err(Failure::usage(anyhow::anyhow!(
                "several providers are configured ({}); choose one with --provider",
                config
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    let client = build_client(&loader, &config).await?;
    // Unknown names fail here with the list of known ones, before any work.
    client.provider(&provider)?;
    Ok((client, provider))
}
