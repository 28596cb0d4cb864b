//! The `[gateway]` section of `dspex.toml`: raw serde structs, then
//! validated types whose errors name the key.
//!
//! ```toml
//! [gateway]
//! listen = "127.0.0.1:4000"       # the default
//! max_body_bytes = 4194304        # 4 MiB, the default; larger bodies get 413
//! shutdown_grace_ms = 30000       # how long in-flight requests may finish
//! auth = "keys"                   # virtual keys required (default); "none": open
//! admin_key_env = "DSPEX_ADMIN_KEY"  # the variable holding the admin key
//! key_refresh_ms = 1000           # longest an instance serves a stale key view
//! rate_limit_backend = "redis://127.0.0.1:6379"  # keys' limits and budgets
//!                                 # shared by every instance (default: in-process)
//! cache_namespace = "key"         # "key": tenants never share cache entries;
//!                                 # "shared": they do
//! header_read_timeout_ms = 10000  # a client must send its headers within this
//! max_header_bytes = 65536        # larger request heads are refused (431)
//! body_read_timeout_ms = 30000    # a client must send its body within this (408)
//!
//! [gateway.models.fast]           # an alias a client may send as `model`
//! provider = "openai"
//! model = "gpt-4o-mini"           # default: the provider's model
//! fallbacks = ["anthropic/claude-3-5-haiku-latest"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dspex_core::CoreError;
use dspex_core::config::{ConfigLoader, Secret};
use serde::Deserialize;

use crate::error::GatewayError;

/// The top-level keys this crate reads.
pub const CONFIG_KEYS: &[&str] = &["gateway"];

/// The default listen address: loopback, so a gateway started by hand is not
/// reachable from the network until the config says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

/// The default request-body limit (4 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The environment variable that holds the admin key by default.
pub const DEFAULT_ADMIN_KEY_ENV: &str = "DSPEX_ADMIN_KEY";

/// How a request proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Every request carries a virtual key (`dspex keys create`).
    Keys,
    /// No key is asked for: a gateway on one developer's machine.
    None,
}

/// Whether tenants (keys) may be answered from each other's cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheNamespace {
    /// Each key has its own namespace: a tenant never sees another's answers.
    PerKey,
    /// Every key shares one namespace.
    Shared,
}

/// `[gateway]` as written. Its `Debug` hides `rate_limit_backend`, a URL
/// that may hold a password.
#[derive(Clone, Default, Deserialize)]
pub struct RawGatewayConfig {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// The largest request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests and streams may run after a shutdown
    /// signal.
    pub shutdown_grace_ms: Option<u64>,
    /// `keys` or `none`.
    pub auth: Option<String>,
    /// The environment variable holding the admin key.
    pub admin_key_env: Option<String>,
    /// How often each instance re-reads the keys, in ms.
    pub key_refresh_ms: Option<u64>,
    /// `redis://...` to share keys' limits and budgets, or `local`.
    pub rate_limit_backend: Option<String>,
    /// `key` or `shared`.
    pub cache_namespace: Option<String>,
    /// How long a client may take to send its request head, in ms.
    pub header_read_timeout_ms: Option<u64>,
    /// The largest request head, in bytes.
    pub max_header_bytes: Option<u64>,
    /// How long a client may take to send its request body, in ms.
    pub body_read_timeout_ms: Option<u64>,
    /// Model aliases.
    #[serde(default)]
    pub models: BTreeMap<String, RawModelAlias>,
}

/// `[gateway.models.NAME]` as written.
#[derive(Clone, Debug, Deserialize)]
pub struct RawModelAlias {
    /// The provider id (a `[providers.X]` name).
    pub provider: String,
    /// The model; the provider's own when absent.
    pub model: Option<String>,
    /// `provider/model` targets tried in order when the first cannot answer.
    #[serde(default)]
    pub fallbacks: Vec<String>,
}

impl std::fmt::Debug for RawGatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawGatewayConfig")
            .field("listen", &self.listen)
            .field("auth", &self.auth)
            .field(
                "rate_limit_backend",
                &self
                    .rate_limit_backend
                    .as_ref()
                    .map(|_| dspex_core::config::REDACTED),
            )
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

impl RawGatewayConfig {
    /// Reads `[gateway]` (all defaults when it is absent).
    pub fn from_loader(loader: &ConfigLoader) -> Result<Self, GatewayError> {
        Ok(loader
            .section("gateway")
            .map_err(GatewayError::Config)?
            .unwrap_or_default())
    }
}

/// Where a request goes: a provider id and, optionally, the model to ask it
/// for (the provider's configured model otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The provider id.
    pub provider: String,
    /// The model.
    pub model: Option<String>,
}

/// A validated alias: the target, then its fallbacks in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// The first target.
    pub primary: Target,
    /// Tried in order when the one before could not answer.
    pub fallbacks: Vec<Target>,
}

/// The validated `[gateway]` section.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The largest request body.
    pub max_body_bytes: usize,
    /// The shutdown grace period.
    pub shutdown_grace: Duration,
    /// Aliases by name.
    pub models: BTreeMap<String, Alias>,
    /// Whether requests need a virtual key.
    pub auth: Auth,
    /// The environment variable holding the admin key.
    pub admin_key_env: String,
    /// How stale an instance's view of the keys may be: a key revoked
    /// through another instance is refused here within this time.
    pub key_refresh: Duration,
    /// Where keys' rate limits and budgets are held: `None` in process,
    /// else a Redis URL shared by every instance (a secret: it may hold a
    /// password).
    pub rate_limit_backend: Option<Secret>,
    /// Whether keys share cache entries.
    pub cache_namespace: CacheNamespace,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// The largest request head.
    pub max_header_bytes: usize,
    /// How long a client may take to send a request body.
    pub body_read_timeout: Duration,
}

/// The default request-head limit (64 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: Duration::from_secs(30),
            models: BTreeMap::new(),
            auth: Auth::Keys,
            admin_key_env: DEFAULT_ADMIN_KEY_ENV.to_owned(),
            key_refresh: Duration::from_secs(1),
            rate_limit_backend: None,
            cache_namespace: CacheNamespace::PerKey,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

fn config_error(key: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::Config(CoreError::config(key, message.into()))
}

/// `provider/model` (the model may itself contain slashes).
fn parse_target(key: &str, text: &str) -> Result<Target, GatewayError> {
    match text.split_once('/') {
        Some((provider, model)) if !provider.is_empty() && !model.is_empty() => Ok(Target {
            provider: provider.to_owned(),
            model: Some(model.to_owned()),
        }),
        _ => Err(config_error(
            key,
            format!("`{text}` is not `provider/model`"),
        )),
    }
}

impl GatewayConfig {
    /// Phase one and two: reads and validates `[gateway]`.
    pub fn load(loader: &ConfigLoader) -> Result<Self, GatewayError> {
        Self::validate(&RawGatewayConfig::from_loader(loader)?)
    }

    /// Phase two: checks every value. Provider ids are checked against the
    /// client when the gateway is built ([`crate::Gateway::new`]).
    pub fn validate(raw: &RawGatewayConfig) -> Result<Self, GatewayError> {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse::<SocketAddr>().map_err(|e| {
            config_error(
                "gateway.listen",
                format!("`{listen_text}` is not host:port ({e})"),
            )
        })?;
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(0) => return Err(config_error("gateway.max_body_bytes", "must be above 0")),
            Some(n) => usize::try_from(n)
                .map_err(|_| config_error("gateway.max_body_bytes", format!("{n} is too large")))?,
        };
        let shutdown_grace = Duration::from_millis(raw.shutdown_grace_ms.unwrap_or(30_000));
        let mut models = BTreeMap::new();
        for (name, alias) in &raw.models {
            let key = format!("gateway.models.{name}");
            if name.trim().is_empty() {
                return Err(config_error(&key, "an alias needs a name"));
            }
            if alias.provider.trim().is_empty() {
                return Err(config_error(&format!("{key}.provider"), "empty"));
            }
            let fallbacks = alias
                .fallbacks
                .iter()
                .enumerate()
                .map(|(i, text)| parse_target(&format!("{key}.fallbacks[{i}]"), text))
                .collect::<Result<Vec<_>, _>>()?;
            models.insert(
                name.clone(),
                Alias {
                    primary: Target {
                        provider: alias.provider.clone(),
                        model: alias.model.clone(),
                    },
                    fallbacks,
                },
            );
        }
        let auth = match raw.auth.as_deref().map(str::trim) {
            None | Some("keys") => Auth::Keys,
            Some("none") => Auth::None,
            Some(other) => {
                return Err(config_error(
                    "gateway.auth",
                    format!("`{other}` is not `keys` or `none`"),
                ));
            }
        };
        let admin_key_env = raw
            .admin_key_env
            .clone()
            .unwrap_or_else(|| DEFAULT_ADMIN_KEY_ENV.to_owned());
        if admin_key_env.is_empty() || admin_key_env.contains(['=', '\0']) {
            return Err(config_error(
                "gateway.admin_key_env",
                format!("`{admin_key_env}` is not an environment variable name"),
            ));
        }
        let key_refresh = match raw.key_refresh_ms {
            None => Duration::from_secs(1),
            Some(ms) if (10..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(config_error(
                    "gateway.key_refresh_ms",
                    format!("{ms} is outside 10..=3600000"),
                ));
            }
        };
        let rate_limit_backend = match raw.rate_limit_backend.as_deref().map(str::trim) {
            None | Some("local" | "memory") => None,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(Secret::new(url))
            }
            Some(_) => {
                return Err(config_error(
                    "gateway.rate_limit_backend",
                    "expected `local` or a redis:// URL",
                ));
            }
        };
        let cache_namespace = match raw.cache_namespace.as_deref().map(str::trim) {
            None | Some("key") => CacheNamespace::PerKey,
            Some("shared") => CacheNamespace::Shared,
            Some(other) => {
                return Err(config_error(
                    "gateway.cache_namespace",
                    format!("`{other}` is not `key` or `shared`"),
                ));
            }
        };
        let header_read_timeout = match raw.header_read_timeout_ms {
            None => Duration::from_secs(10),
            Some(0) => {
                return Err(config_error(
                    "gateway.header_read_timeout_ms",
                    "must be above 0",
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let max_header_bytes = match raw.max_header_bytes {
            None => DEFAULT_MAX_HEADER_BYTES,
            // hyper's own floor for its read buffer.
            Some(n) if (8_192..=16 * 1024 * 1024).contains(&n) => {
                usize::try_from(n).unwrap_or(DEFAULT_MAX_HEADER_BYTES)
            }
            Some(n) => {
                return Err(config_error(
                    "gateway.max_header_bytes",
                    format!("{n} is outside 8192..=16777216"),
                ));
            }
        };
        let body_read_timeout = match raw.body_read_timeout_ms {
            None => Duration::from_secs(30),
            Some(0) => {
                return Err(config_error(
                    "gateway.body_read_timeout_ms",
                    "must be above 0",
                ));
            }
            Some(ms) => Duration::from_millis(ms),
        };
        Ok(Self {
            listen,
            max_body_bytes,
            shutdown_grace,
            models,
            body_read_timeout,
            auth,
            admin_key_env,
            key_refresh,
            rate_limit_backend,
            cache_namespace,
            header_read_timeout,
            max_header_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<GatewayConfig, GatewayError> {
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(toml)
            .without_env()
            .build()
            .map_err(GatewayError::Config)?;
        GatewayConfig::load(&loader)
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let config = load("").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn aliases_parse_with_fallbacks() {
        let config = load(
            "[gateway.models.fast]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n\
             fallbacks = [\"anthropic/claude-3-5-haiku-latest\", \"local/org/model\"]\n",
        )
        .unwrap();
        let alias = &config.models["fast"];
        assert_eq!(alias.primary.provider, "openai");
        assert_eq!(alias.fallbacks[1].model.as_deref(), Some("org/model"));
    }

    #[test]
    fn errors_name_the_key() {
        for (toml, key) in [
            ("[gateway]\nlisten = \"nowhere\"\n", "gateway.listen"),
            ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes"),
            (
                "[gateway.models.fast]\nprovider = \"openai\"\nfallbacks = [\"bare\"]\n",
                "gateway.models.fast.fallbacks[0]",
            ),
            ("[gateway]\nlisten_on = \"x\"\n", "listen_on"),
            ("[gateway]\nauth = \"maybe\"\n", "gateway.auth"),
            ("[gateway]\nkey_refresh_ms = 0\n", "gateway.key_refresh_ms"),
            (
                "[gateway]\nrate_limit_backend = \"memcached://x\"\n",
                "gateway.rate_limit_backend",
            ),
            (
                "[gateway]\ncache_namespace = \"team\"\n",
                "gateway.cache_namespace",
            ),
            (
                "[gateway]\nmax_header_bytes = 10\n",
                "gateway.max_header_bytes",
            ),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }
}
