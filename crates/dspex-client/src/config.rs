//! Provider configuration: raw serde structs (phase one), validated types (phase
//! two), and the environment fallback used when no file configures providers.
//!
//! ```toml
//! rate_limit_backend = "redis://127.0.0.1:6379"   # optional: share limits across processes
//! default_provider = "openai"
//!
//! [providers.openai]
//! kind = "openai"              # or "anthropic"; "openai" also serves any OpenAI-compatible server
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//! model = "gpt-4o-mini"
//! pool_size = 16
//! timeout_ms = 60000
//! max_retries = 4
//! rpm = 500
//! tpm = 200000
//! limits = [ { kind = "requests", limit = 10, window = "1s" } ]
//! [providers.openai.circuit_breaker]
//! failure_threshold = 5
//! open_ms = 30000
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use dspex_core::config::{ConfigLoader, Secret, parse_window};
use dspex_core::protect::{Backoff, BreakerConfig, BucketSpec, Unit};
use dspex_core::{CoreError, Result};
use serde::{Deserialize, Serialize, Serializer};

/// The top-level keys this crate reads from `dspex.toml`.
pub const CONFIG_KEYS: &[&str] = &["providers", "rate_limit_backend", "default_provider"];

/// Which kind of provider an entry configures (its wire protocol, or in
/// process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, also spoken by vLLM, Ollama, llama.cpp, LiteLLM,
    /// Together, Groq and most other servers.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// An in-process [`ScriptedLm`](crate::ScriptedLm), registered with
    /// [`Client::add_scripted`](crate::Client::add_scripted); not available
    /// from config files.
    Scripted,
    /// A GGUF model run in process (the `local-lm` feature).
    Local,
}

impl ProviderKind {
    /// The OpenTelemetry `gen_ai.system` value.
    pub fn system(self) -> &'static str {
        crate::provider::api_for(self).system()
    }

    /// Reads a config file's `kind`.
    fn parse(key: String, kind: Option<&str>) -> Result<Self> {
        const EXPECTED: &str = "expected `openai` (also for OpenAI-compatible servers), `anthropic` or `local` (a GGUF model in process)";
        match kind {
            Some("openai") => Ok(Self::OpenAi),
            Some("anthropic") => Ok(Self::Anthropic),
            Some("local") => Ok(Self::Local),
            Some(other) => Err(CoreError::config(
                key,
                format!("unknown kind `{other}`; {EXPECTED}"),
            )),
            None => Err(CoreError::config(key, format!("missing; {EXPECTED}"))),
        }
    }
}

/// Raw `[providers.<id>]` entry, as written.
#[derive(Clone, Default, Deserialize)]
pub struct RawProvider {
    /// `openai` or `anthropic`.
    pub kind: Option<String>,
    /// The API base URL.
    pub base_url: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The default model.
    pub model: Option<String>,
    /// The default embedding model.
    pub embedding_model: Option<String>,
    /// Concurrent requests and pooled connections.
    pub pool_size: Option<u32>,
    /// Total timeout of one attempt, in ms.
    pub timeout_ms: Option<u64>,
    /// Connect timeout, in ms.
    pub connect_timeout_ms: Option<u64>,
    /// Time to the first byte of the response, in ms.
    pub first_byte_timeout_ms: Option<u64>,
    /// Retries after the first attempt.
    pub max_retries: Option<u32>,
    /// First backoff bound, in ms.
    pub retry_base_ms: Option<u64>,
    /// Largest backoff, in ms.
    pub retry_max_ms: Option<u64>,
    /// Longest Retry-After honoured, in ms.
    pub max_retry_after_ms: Option<u64>,
    /// Whether a 200 reply whose body is garbled (or a stream garbled before
    /// its first event reached the caller) is retried; default true.
    pub retry_malformed: Option<bool>,
    /// Longest wait for rate-limit room and for a pool slot, per attempt, in ms.
    pub max_wait_ms: Option<u64>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Extra buckets.
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    /// Circuit breaker settings.
    pub circuit_breaker: Option<RawBreaker>,
    /// `redis://...` to share this provider's limits across processes.
    pub rate_limit_backend: Option<String>,
    /// `max_tokens` when a call sets none (required by Anthropic; also the
    /// output estimate for token buckets).
    pub default_max_tokens: Option<u32>,
    /// The `anthropic-version` header.
    pub anthropic_version: Option<String>,
    /// Ask OpenAI-compatible servers for usage in streams (`stream_options`).
    pub stream_usage: Option<bool>,
    /// Extra HTTP headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `kind = "local"`: the GGUF file.
    pub model_path: Option<String>,
    /// `kind = "local"`: the file's expected SHA-256, checked on load.
    pub sha256: Option<String>,
    /// `kind = "local"`: the context window in tokens (at most the model's).
    pub context_length: Option<u32>,
    /// `kind = "local"`: threads of one generation.
    pub threads: Option<u32>,
    /// `kind = "local"`: memory for the KV caches of recent prompt prefixes, in MiB.
    pub prefix_cache_mb: Option<u32>,
    /// `kind = "local"`: the temperature when a call sets none.
    pub temperature: Option<f32>,
    /// `kind = "local"`: the top-p when a call sets none.
    pub top_p: Option<f32>,
    /// `kind = "local"`: the seed when a call sets none.
    pub seed: Option<u64>,
}

/// Raw `limits` entry.
#[derive(Clone, Debug, Deserialize)]
pub struct RawLimit {
    /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
    pub kind: String,
    /// Units per window.
    pub limit: u64,
    /// The window, such as `1s`, `1m`, `1d`.
    pub window: String,
}

/// Raw `circuit_breaker` table.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawBreaker {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: Option<u32>,
    /// How long it stays open, in ms.
    pub open_ms: Option<u64>,
    /// Concurrent probes while half-open.
    pub half_open_probes: Option<u32>,
}

/// Raw client configuration: the top-level keys in [`CONFIG_KEYS`].
#[derive(Clone, Default)]
pub struct RawClientConfig {
    /// `[providers.<id>]` tables.
    pub providers: BTreeMap<String, RawProvider>,
    /// Default shared limiter backend for every provider.
    pub rate_limit_backend: Option<String>,
    /// The provider used when a command names none.
    pub default_provider: Option<String>,
}

impl RawClientConfig {
    /// Reads this crate's keys from a loaded config.
    pub fn from_loader(loader: &ConfigLoader) -> Result<Self> {
        Ok(Self {
            providers: loader.section("providers")?.unwrap_or_default(),
            rate_limit_backend: loader.section("rate_limit_backend")?,
            default_provider: loader.section("default_provider")?,
        })
    }
}

/// Timeouts of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Opening a connection.
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub connect: Duration,
    /// To the first byte of the response.
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub first_byte: Duration,
    /// The whole attempt (for a stream: the whole stream).
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub total: Duration,
}

/// Where the API key comes from. Serializes without the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// The variable it was read from.
    pub env: String,
    /// The key.
    pub secret: Secret,
}

impl Serialize for ApiKey {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{} (from ${})",
            dspex_core::config::REDACTED,
            self.env
        ))
    }
}

/// A validated provider. `Debug` and `Serialize` redact the key, header values
/// and URL credentials.
#[derive(Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// Its registry id.
    pub id: String,
    /// Its protocol.
    pub kind: ProviderKind,
    /// The API base URL (`.../v1` for OpenAI-style, the host for Anthropic).
    #[serde(serialize_with = "redact_url_str")]
    pub base_url: String,
    /// The key, when one is configured.
    pub api_key: Option<ApiKey>,
    /// The default model.
    pub model: String,
    /// The default embedding model.
    pub embedding_model: String,
    /// Concurrent requests and pooled connections.
    pub pool_size: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: Backoff,
    /// Whether a garbled 2xx reply is retried (never once part of a stream
    /// reached the caller).
    pub retry_malformed: bool,
    /// Longest wait for rate-limit room and for a pool slot, per attempt.
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub max_wait: Duration,
    /// Rate-limit buckets.
    pub limits: Vec<BucketSpec>,
    /// Circuit breaker.
    pub circuit_breaker: BreakerConfig,
    /// Shared limiter backend (`redis://...`); in-process when `None`.
    #[serde(serialize_with = "redact_url")]
    pub rate_limit_backend: Option<String>,
    /// `max_tokens` when a call sets none.
    pub default_max_tokens: u32,
    /// The `anthropic-version` header.
    pub anthropic_version: String,
    /// Whether to ask for usage in OpenAI-style streams.
    pub stream_usage: bool,
    /// Extra headers (values are not printed: they may hold credentials).
    #[serde(serialize_with = "redact_headers")]
    pub headers: BTreeMap<String, String>,
    /// The model file and its settings, for `kind = "local"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalSettings>,
}

/// A local model's validated settings (`kind = "local"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LocalSettings {
    /// The GGUF file.
    pub model_path: std::path::PathBuf,
    /// Its expected SHA-256 (lowercase hex), checked on load.
    pub sha256: Option<String>,
    /// The context window; the model's own (bounded to 8,192) when `None`.
    pub context_length: Option<usize>,
    /// Threads of one generation; the available cores when `None`.
    pub threads: Option<usize>,
    /// Memory for the KV caches of recent prompt prefixes, in bytes.
    pub prefix_cache_bytes: usize,
    /// The temperature when a call sets none (0 = greedy).
    pub temperature: f32,
    /// The top-p when a call sets none.
    pub top_p: Option<f32>,
    /// The seed when a call sets none.
    pub seed: Option<u64>,
}

impl LocalSettings {
    /// The `local` settings of `raw`: required for `kind = "local"`, refused
    /// for every other kind (a typo there would silently do nothing).
    fn validate(id: &str, kind: ProviderKind, raw: &RawProvider) -> Result<Option<Self>> {
        let key = |field: &str| format!("providers.{id}.{field}");
        if kind != ProviderKind::Local {
            for (field, set) in [
                ("model_path", raw.model_path.is_some()),
                ("sha256", raw.sha256.is_some()),
                ("context_length", raw.context_length.is_some()),
                ("threads", raw.threads.is_some()),
                ("prefix_cache_mb", raw.prefix_cache_mb.is_some()),
                ("temperature", raw.temperature.is_some()),
                ("top_p", raw.top_p.is_some()),
                ("seed", raw.seed.is_some()),
            ] {
                if set {
                    return Err(CoreError::config(
                        key(field),
                        "applies only to `kind = \"local\"` providers",
                    ));
                }
            }
            return Ok(None);
        }
        let model_path = match raw.model_path.as_deref() {
            Some(path) if !path.trim().is_empty() => std::path::PathBuf::from(path),
            _ => {
                return Err(CoreError::config(
                    key("model_path"),
                    "missing; a local provider needs the path of a GGUF file (scripts/fetch-model prints one)",
                ));
            }
        };
        if let Some(hash) = &raw.sha256
            && !(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(CoreError::config(
                key("sha256"),
                "must be 64 hexadecimal digits",
            ));
        }
        let positive = |field: &str, value: Option<u32>| match value {
            Some(0) => Err(CoreError::config(key(field), "must be greater than 0")),
            other => Ok(other.map(|v| v as usize)),
        };
        let context_length = positive("context_length", raw.context_length)?;
        if context_length.is_some_and(|n| n < 16) {
            return Err(CoreError::config(
                key("context_length"),
                "must be at least 16 tokens",
            ));
        }
        let threads = positive("threads", raw.threads)?;
        let temperature = raw.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(CoreError::config(
                key("temperature"),
                format!("{temperature} is out of range 0..=2"),
            ));
        }
        if let Some(top_p) = raw.top_p
            && !(top_p > 0.0 && top_p <= 1.0)
        {
            return Err(CoreError::config(
                key("top_p"),
                format!("{top_p} is out of range (0, 1]"),
            ));
        }
        Ok(Some(Self {
            model_path,
            sha256: raw.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            context_length,
            threads,
            prefix_cache_bytes: raw.prefix_cache_mb.unwrap_or(256) as usize * 1024 * 1024,
            temperature,
            top_p: raw.top_p,
            seed: raw.seed,
        }))
    }

    /// The model name when the config sets none: the file name without
    /// `.gguf`.
    fn default_model_name(&self) -> String {
        self.model_path
            .file_stem()
            .map_or_else(|| "local".to_owned(), |s| s.to_string_lossy().into_owned())
    }
}

fn redact_url<S: Serializer>(url: &Option<String>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_some(&redacted_url(url)),
        None => s.serialize_none(),
    }
}

pub use dspex_core::config::redacted_url;

fn redact_url_str<S: Serializer>(url: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

fn redact_headers<S: Serializer>(
    headers: &BTreeMap<String, String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> = headers
        .keys()
        .map(|k| (k.as_str(), dspex_core::config::REDACTED))
        .collect();
    redacted.serialize(s)
}

impl fmt::Debug for RawProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values, backend URLs and base URLs may carry credentials.
        f.debug_struct("RawProvider")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url.as_deref().map(redacted_url))
            .field("api_key_env", &self.api_key_env)
            .field("model", &self.model)
            .field(
                "rate_limit_backend",
                &self.rate_limit_backend.as_deref().map(redacted_url),
            )
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RawClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClientConfig")
            .field("providers", &self.providers)
            .field(
                "rate_limit_backend",
                &self.rate_limit_backend.as_deref().map(redacted_url),
            )
            .field("default_provider", &self.default_provider)
            .finish()
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serialized form is the redacted one; print that.
        match serde_json::to_string(self) {
            Ok(text) => write!(f, "ProviderConfig {text}"),
            Err(_) => f.write_str("ProviderConfig { .. }"),
        }
    }
}

/// The validated client configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Providers by id.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// The provider used when none is named.
    pub default_provider: Option<String>,
}

impl ClientConfig {
    /// Reads and validates this crate's part of a loaded config; falls back to
    /// the environment (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) when no provider is
    /// configured.
    pub fn load(loader: &ConfigLoader) -> Result<Self> {
        Self::load_with_env(loader, &|name| std::env::var(name).ok())
    }

    /// [`ClientConfig::load`], reading API keys (and the SDK fallback
    /// variables) through `env` instead of the process environment: for a
    /// secret store, or a test.
    pub fn load_with_env(
        loader: &ConfigLoader,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let raw = RawClientConfig::from_loader(loader)?;
        if raw.providers.is_empty() {
            let mut config = Self::from_env(env)?;
            if let Some(default) = raw.default_provider {
                config.default_provider = Some(default);
            }
            return Ok(config);
        }
        Self::validate(&raw, env)
    }

    /// Phase two: checks every value and reads the API keys from the environment
    /// through `env` (a function, so tests need not touch the process environment).
    pub fn validate(raw: &RawClientConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut providers = BTreeMap::new();
        for (id, entry) in &raw.providers {
            let provider =
                ProviderConfig::validate(id, entry, raw.rate_limit_backend.as_deref(), env)?;
            providers.insert(id.clone(), provider);
        }
        if let Some(default) = &raw.default_provider
            && !providers.contains_key(default)
        {
            return Err(CoreError::config(
                "default_provider",
                format!(
                    "`{default}` is not a configured provider (configured: {})",
                    providers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(Self {
            providers,
            default_provider: raw.default_provider.clone(),
        })
    }

    /// Providers from the variables the official SDKs read: `OPENAI_API_KEY`
    /// (with optional `OPENAI_BASE_URL`) and `ANTHROPIC_API_KEY` (with optional
    /// `ANTHROPIC_BASE_URL`).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut raw = RawClientConfig::default();
        for (id, kind, key_env, url_env) in [
            ("openai", "openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
            (
                "anthropic",
                "anthropic",
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
            ),
        ] {
            if env(key_env).is_some_and(|k| !k.is_empty()) {
                raw.providers.insert(
                    id.to_owned(),
                    RawProvider {
                        kind: Some(kind.to_owned()),
                        base_url: env(url_env).filter(|u| !u.is_empty()),
                        api_key_env: Some(key_env.to_owned()),
                        ..RawProvider::default()
                    },
                );
            }
        }
        let mut config = Self::validate(&raw, env)?;
        config.default_provider = config.providers.keys().next().cloned();
        Ok(config)
    }

    /// The provider to use when a command names none: `default_provider`, else
    /// the only provider, else none.
    pub fn default_provider_id(&self) -> Option<&str> {
        self.default_provider.as_deref().or_else(|| {
            if self.providers.len() == 1 {
                self.providers.keys().next().map(String::as_str)
            } else {
                None
            }
        })
    }
}

fn positive_ms(key: String, value: Option<u64>, default: u64) -> Result<Duration> {
    match value.unwrap_or(default) {
        0 => Err(CoreError::config(key, "must be greater than 0")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

impl ProviderConfig {
    /// Validates one raw entry; errors name `providers.<id>.<field>`.
    pub fn validate(
        id: &str,
        raw: &RawProvider,
        default_backend: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let key = |field: &str| format!("providers.{id}.{field}");
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CoreError::config(
                format!("providers.{id}"),
                "a provider id may hold only letters, digits, '-' and '_'",
            ));
        }
        let kind = ProviderKind::parse(key("kind"), raw.kind.as_deref())?;
        let api = crate::provider::api_for(kind);
        let local = LocalSettings::validate(id, kind, raw)?;
        if local.is_some() && raw.base_url.is_some() {
            return Err(CoreError::config(
                key("base_url"),
                "a local model is not reached over HTTP; set model_path instead",
            ));
        }
        let base_url = raw
            .base_url
            .clone()
            .unwrap_or_else(|| api.default_base_url().to_owned());
        match url::Url::parse(&base_url) {
            Ok(_) if local.is_some() => {}
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => {
                return Err(CoreError::config(
                    key("base_url"),
                    format!(
                        "`{}` must be an http:// or https:// URL",
                        redacted_url(&base_url)
                    ),
                ));
            }
            Err(e) => {
                return Err(CoreError::config(
                    key("base_url"),
                    format!("`{}` is not a URL: {e}", redacted_url(&base_url)),
                ));
            }
        }
        let api_key = match &raw.api_key_env {
            Some(var) if var.is_empty() => {
                return Err(CoreError::config(
                    key("api_key_env"),
                    "must name an environment variable",
                ));
            }
            Some(var) => match env(var) {
                Some(value) if !value.is_empty() => Some(ApiKey {
                    env: var.clone(),
                    secret: Secret::new(value),
                }),
                _ => {
                    return Err(CoreError::config(
                        key("api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    ));
                }
            },
            None => None,
        };
        let model = raw.model.clone().unwrap_or_else(|| match &local {
            Some(local) => local.default_model_name(),
            None => api.default_model().to_owned(),
        });
        if model.trim().is_empty() {
            return Err(CoreError::config(key("model"), "must not be empty"));
        }
        // A local model shares the machine's cores: one generation at a time
        // unless the config says otherwise.
        let pool_size = raw
            .pool_size
            .unwrap_or(if local.is_some() { 1 } else { 16 });
        if !(1..=4096).contains(&pool_size) {
            return Err(CoreError::config(
                key("pool_size"),
                format!("{pool_size} is out of range 1..=4096"),
            ));
        }
        let total = positive_ms(key("timeout_ms"), raw.timeout_ms, 60_000)?;
        let timeouts = Timeouts {
            connect: positive_ms(key("connect_timeout_ms"), raw.connect_timeout_ms, 10_000)?,
            first_byte: positive_ms(
                key("first_byte_timeout_ms"),
                raw.first_byte_timeout_ms,
                total.as_millis().try_into().unwrap_or(u64::MAX),
            )?,
            total,
        };
        let max_retries = raw.max_retries.unwrap_or(4);
        if max_retries > 20 {
            return Err(CoreError::config(
                key("max_retries"),
                format!("{max_retries} is more than 20"),
            ));
        }
        let retry = Backoff {
            max_retries,
            base: positive_ms(key("retry_base_ms"), raw.retry_base_ms, 250)?,
            max: positive_ms(key("retry_max_ms"), raw.retry_max_ms, 20_000)?,
            max_retry_after: positive_ms(
                key("max_retry_after_ms"),
                raw.max_retry_after_ms,
                60_000,
            )?,
        };
        let mut limits = Vec::new();
        for (field, value, unit) in [
            ("rpm", raw.rpm, Unit::Requests),
            ("tpm", raw.tpm, Unit::Tokens),
        ] {
            match value {
                Some(0) => return Err(CoreError::config(key(field), "must be greater than 0")),
                Some(limit) => limits.push(BucketSpec::new(unit, limit, Duration::from_secs(60))),
                None => {}
            }
        }
        for (i, limit) in raw.limits.iter().enumerate() {
            let at = |field: &str| key(&format!("limits[{i}].{field}"));
            let unit = match limit.kind.as_str() {
                "requests" => Unit::Requests,
                "tokens" => Unit::Tokens,
                "input_tokens" => Unit::InputTokens,
                "output_tokens" => Unit::OutputTokens,
                other => {
                    return Err(CoreError::config(
                        at("kind"),
                        format!(
                            "unknown kind `{other}`; expected requests, tokens, input_tokens or output_tokens"
                        ),
                    ));
                }
            };
            if limit.limit == 0 {
                return Err(CoreError::config(at("limit"), "must be greater than 0"));
            }
            limits.push(BucketSpec::new(
                unit,
                limit.limit,
                parse_window(&at("window"), &limit.window)?,
            ));
        }
        let breaker = raw.circuit_breaker.clone().unwrap_or_default();
        let circuit_breaker = BreakerConfig {
            failure_threshold: match breaker.failure_threshold.unwrap_or(5) {
                0 => {
                    return Err(CoreError::config(
                        key("circuit_breaker.failure_threshold"),
                        "must be greater than 0",
                    ));
                }
                n => n,
            },
            open_for: positive_ms(key("circuit_breaker.open_ms"), breaker.open_ms, 30_000)?,
            half_open_probes: match breaker.half_open_probes.unwrap_or(1) {
                0 => {
                    return Err(CoreError::config(
                        key("circuit_breaker.half_open_probes"),
                        "must be greater than 0",
                    ));
                }
                n => n,
            },
        };
        let backend_key = if raw.rate_limit_backend.is_some() {
            key("rate_limit_backend")
        } else {
            "rate_limit_backend".to_owned()
        };
        let rate_limit_backend = raw
            .rate_limit_backend
            .as_deref()
            .or(default_backend)
            .filter(|b| !b.is_empty() && *b != "memory")
            .map(str::to_owned);
        if let Some(url) = &rate_limit_backend
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
        {
            return Err(CoreError::config(
                backend_key,
                format!(
                    "`{}` is not a redis:// URL (or \"memory\")",
                    redacted_url(url)
                ),
            ));
        }
        let default_max_tokens = match raw.default_max_tokens.unwrap_or(1024) {
            0 => {
                return Err(CoreError::config(
                    key("default_max_tokens"),
                    "must be greater than 0",
                ));
            }
            n => n,
        };
        for name in raw.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(CoreError::config(
                    key(&format!("headers.{name}")),
                    "is not a valid HTTP header name",
                ));
            }
        }
        Ok(Self {
            id: id.to_owned(),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            embedding_model: raw
                .embedding_model
                .clone()
                .unwrap_or_else(|| "text-embedding-3-small".to_owned()),
            model,
            pool_size: pool_size as usize,
            timeouts,
            retry,
            retry_malformed: raw.retry_malformed.unwrap_or(true),
            max_wait: positive_ms(key("max_wait_ms"), raw.max_wait_ms, 30_000)?,
            limits,
            circuit_breaker,
            rate_limit_backend,
            default_max_tokens,
            anthropic_version: raw
                .anthropic_version
                .clone()
                .unwrap_or_else(|| "2023-06-01".to_owned()),
            stream_usage: raw.stream_usage.unwrap_or(true),
            headers: raw.headers.clone(),
            local,
        })
    }

    /// An in-process scripted provider with default protection settings and no
    /// limits.
    pub fn scripted(id: &str, model: &str) -> Result<Self> {
        // Validated as an HTTP provider for every other default, then marked
        // scripted: no request ever goes to its address.
        let mut config = Self::openai_compatible(id, "http://in-process", model)?;
        config.kind = ProviderKind::Scripted;
        config.base_url = crate::provider::api_for(ProviderKind::Scripted)
            .default_base_url()
            .to_owned();
        Ok(config)
    }

    /// A provider for an OpenAI-compatible server at `base_url` with defaults
    /// everywhere else and no key (local servers, the mock).
    pub fn openai_compatible(id: &str, base_url: &str, model: &str) -> Result<Self> {
        Self::validate(
            id,
            &RawProvider {
                kind: Some("openai".into()),
                base_url: Some(base_url.into()),
                model: Some(model.into()),
                ..RawProvider::default()
            },
            None,
            &|_| None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TEST_KEY").then(|| "sk-secret-value-123".to_owned())
    }

    fn validate(toml: &str) -> Result<ClientConfig> {
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(toml)
            .without_env()
            .build()?;
        ClientConfig::validate(&RawClientConfig::from_loader(&loader)?, &env)
    }

    #[test]
    fn the_documented_example_validates() {
        let config = validate(
            r#"
            [providers.openai]
            kind = "openai"
            base_url = "https://api.openai.com/v1"
            api_key_env = "TEST_KEY"
            model = "gpt-4o-mini"
            pool_size = 16
            timeout_ms = 60000
            max_retries = 4
            rpm = 500
            tpm = 200000
            limits = [ { kind = "requests", limit = 10, window = "1s" } ]
            [providers.openai.circuit_breaker]
            failure_threshold = 5
            open_ms = 30000
            "#,
        )
        .unwrap();
        let p = &config.providers["openai"];
        assert_eq!(p.kind, ProviderKind::OpenAi);
        assert_eq!(p.limits.len(), 3);
        assert_eq!(
            p.limits[2],
            BucketSpec::new(Unit::Requests, 10, Duration::from_secs(1))
        );
        assert_eq!(
            p.api_key.as_ref().unwrap().secret.expose(),
            "sk-secret-value-123"
        );
        assert_eq!(config.default_provider_id(), Some("openai"));
        // The effective config never shows the key.
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("sk-secret-value-123"), "{shown}");
        assert!(shown.contains("[redacted] (from $TEST_KEY)"), "{shown}");
    }

    #[test]
    fn errors_name_the_key() {
        for (toml, key, words) in [
            (
                "[providers.a]\nkind = \"azure\"",
                "providers.a.kind",
                "unknown kind `azure`",
            ),
            (
                "[providers.a]\nmodel = \"x\"",
                "providers.a.kind",
                "missing",
            ),
            (
                "[providers.a]\nkind = \"openai\"\npool_size = 0",
                "providers.a.pool_size",
                "out of range",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nbase_url = \"ftp://x\"",
                "providers.a.base_url",
                "http://",
            ),
            (
                "[providers.a]\nkind = \"openai\"\napi_key_env = \"NOPE\"",
                "providers.a.api_key_env",
                "`NOPE` is not set",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nlimits = [{kind = \"requests\", limit = 1, window = \"soon\"}]",
                "providers.a.limits[0].window",
                "not a duration",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nlimits = [{kind = \"bytes\", limit = 1, window = \"1s\"}]",
                "providers.a.limits[0].kind",
                "unknown kind",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nrate_limit_backend = \"http://x\"",
                "providers.a.rate_limit_backend",
                "redis://",
            ),
            (
                "[providers.a]\nkind = \"openai\"\n[providers.a.circuit_breaker]\nfailure_threshold = 0",
                "providers.a.circuit_breaker.failure_threshold",
                "greater than 0",
            ),
            (
                "default_provider = \"b\"\n[providers.a]\nkind = \"openai\"",
                "default_provider",
                "`b` is not a configured provider",
            ),
            (
                "[providers.a]\nkind = \"openai\"\ntimeout_ms = \"slow\"",
                "providers.a.timeout_ms",
                "string",
            ),
        ] {
            let err = validate(toml).unwrap_err();
            let CoreError::Config {
                key: got, message, ..
            } = &err
            else {
                panic!("{err:?}")
            };
            assert_eq!(got, key, "{toml}");
            assert!(message.contains(words), "{toml}: {message}");
        }
    }

    #[test]
    fn local_providers_validate_their_own_keys() {
        let config = validate(
            "[providers.smol]\nkind = \"local\"\nmodel_path = \"models/SmolLM2.Q4_1.gguf\"\ncontext_length = 4096\ntemperature = 0.7\nseed = 3\n",
        )
        .unwrap();
        let smol = &config.providers["smol"];
        assert_eq!(smol.kind, ProviderKind::Local);
        assert_eq!(
            smol.model, "SmolLM2.Q4_1",
            "the file name when no model is set"
        );
        assert_eq!(smol.pool_size, 1, "one generation at a time by default");
        let local = smol.local.as_ref().unwrap();
        assert_eq!(local.context_length, Some(4096));
        assert_eq!(local.seed, Some(3));
        assert_eq!(local.prefix_cache_bytes, 256 << 20);
        for (toml, key, words) in [
            (
                "[providers.a]\nkind = \"local\"",
                "providers.a.model_path",
                "missing",
            ),
            (
                "[providers.a]\nkind = \"local\"\nmodel_path = \"m.gguf\"\nsha256 = \"abc\"",
                "providers.a.sha256",
                "64 hexadecimal",
            ),
            (
                "[providers.a]\nkind = \"local\"\nmodel_path = \"m.gguf\"\ntemperature = 3.0",
                "providers.a.temperature",
                "out of range",
            ),
            (
                "[providers.a]\nkind = \"local\"\nmodel_path = \"m.gguf\"\nbase_url = \"http://x\"",
                "providers.a.base_url",
                "not reached over HTTP",
            ),
            (
                "[providers.a]\nkind = \"openai\"\nmodel_path = \"m.gguf\"",
                "providers.a.model_path",
                "only to `kind = \"local\"`",
            ),
        ] {
            let err = validate(toml).unwrap_err();
            let CoreError::Config {
                key: got, message, ..
            } = &err
            else {
                panic!("{err:?}")
            };
            assert_eq!(got, key, "{toml}");
            assert!(message.contains(words), "{toml}: {message}");
        }
    }

    #[test]
    fn environment_fallback_reads_the_sdk_variables() {
        let config = ClientConfig::from_env(&|name| match name {
            "OPENAI_API_KEY" => Some("sk-1".into()),
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:9/v1".into()),
            "ANTHROPIC_API_KEY" => Some("sk-ant-1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.providers["openai"].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(
            config.providers["anthropic"].base_url,
            "https://api.anthropic.com"
        );
        assert_eq!(config.providers["anthropic"].kind, ProviderKind::Anthropic);
        assert!(
            ClientConfig::from_env(&|_| None)
                .unwrap()
                .providers
                .is_empty()
        );
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_file_values() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "dspex.toml",
                "[providers.local]\nkind = \"openai\"\npool_size = 4\n",
            )?;
            jail.set_env("DSPEX_PROVIDERS__LOCAL__POOL_SIZE", "9");
            jail.set_env("DSPEX_CONFIG_UNRELATED", "ignored");
            let loader = ConfigLoader::builder(CONFIG_KEYS)
                .discover(None)
                .build()
                .map_err(|e| e.to_string())?;
            let config = ClientConfig::load(&loader).map_err(|e| e.to_string())?;
            assert_eq!(config.providers["local"].pool_size, 9);
            Ok(())
        });
    }

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            redacted_url("redis://:hunter2@host:6379/0"),
            "redis://[redacted]@host:6379/0"
        );
        assert_eq!(
            redacted_url("https://user:pw@proxy.example/v1?x=1"),
            "https://[redacted]@proxy.example/v1?x=1"
        );
        assert_eq!(
            redacted_url("https://api.openai.com/v1"),
            "https://api.openai.com/v1"
        );
    }
}
