//! The `[gateway]` section of `dspex.toml`: raw serde structs, then
//! validated types whose errors name the key.
//!
//! ```toml
//! [gateway]
//! listen = "127.0.0.1:4000"       # the default
//! max_body_bytes = 4194304        # 4 MiB, the default; larger bodies get 413
//! shutdown_grace_ms = 30000       # how long in-flight requests may finish
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
use dspex_core::config::ConfigLoader;
use serde::Deserialize;

use crate::error::GatewayError;

/// The top-level keys this crate reads.
pub const CONFIG_KEYS: &[&str] = &["gateway"];

/// The default listen address: loopback, so a gateway started by hand is not
/// reachable from the network until the config says so.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

/// The default request-body limit (4 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// `[gateway]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// The largest request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long in-flight requests and streams may run after a shutdown
    /// signal.
    pub shutdown_grace_ms: Option<u64>,
    /// Model aliases.
    #[serde(default)]
    pub models: BTreeMap<String, RawModelAlias>,
}

/// `[gateway.models.NAME]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelAlias {
    /// The provider id (a `[providers.X]` name).
    pub provider: String,
    /// The model; the provider's own when absent.
    pub model: Option<String>,
    /// `provider/model` targets tried in order when the first cannot answer.
    #[serde(default)]
    pub fallbacks: Vec<String>,
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: Duration::from_secs(30),
            models: BTreeMap::new(),
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
        Ok(Self {
            listen,
            max_body_bytes,
            shutdown_grace,
            models,
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
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }
}
