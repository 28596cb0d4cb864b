//! The `[cache]` section of `dspex.toml`: raw serde struct (phase one) and
//! validated [`CacheConfig`] (phase two).
//!
//! ```toml
//! [cache]
//! enabled = true                 # false turns every tier off
//! dir = ".dspex/cache"           # where the on-disk tier lives
//! ttl = "7d"                     # default time to live
//! namespace = "default"          # default namespace (tenant or program)
//! l1 = true
//! l1_max_entries = 10000
//! l1_max_bytes = "64MiB"
//! l2 = "redb"                    # "redb", "redis://host:6379/0", or "off"
//! l2_max_bytes = "1GiB"          # redb only; Redis uses its own maxmemory
//! redis_prefix = "dspex:cache:"
//! l3 = false                     # semantic matching
//! embedder = "lexical"           # "lexical", "local" (feature local-embeddings), "api"
//! model_dir = "models/all-MiniLM-L6-v2"   # for "local"
//! threshold = 0.97               # default: the embedder's calibrated default
//! l3_max_entries = 100000
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use dspex_core::config::ConfigLoader;
use dspex_core::{CoreError, Result};
use serde::{Deserialize, Serialize, Serializer};

use crate::key::{DEFAULT_NAMESPACE, validate_namespace};
use crate::l2::redis_store::{DEFAULT_PREFIX, redacted_url};

/// The top-level keys this crate reads from `dspex.toml`.
pub const CONFIG_KEYS: &[&str] = &["cache"];

/// A size in bytes, written as a number or as text such as `64MiB` or `1GB`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// Bytes.
    Bytes(u64),
    /// Text with a unit.
    Text(String),
}

/// Raw `[cache]` table, as written.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawCacheConfig {
    /// Whether caching is on at all.
    pub enabled: Option<bool>,
    /// The cache directory.
    pub dir: Option<PathBuf>,
    /// Default time to live (`30m`, `7d`).
    pub ttl: Option<String>,
    /// Default namespace.
    pub namespace: Option<String>,
    /// Whether L1 is on.
    pub l1: Option<bool>,
    /// L1 entry bound.
    pub l1_max_entries: Option<u64>,
    /// L1 byte bound.
    pub l1_max_bytes: Option<RawSize>,
    /// `redb`, `redis://...` or `off`.
    pub l2: Option<String>,
    /// redb size cap.
    pub l2_max_bytes: Option<RawSize>,
    /// Redis key prefix.
    pub redis_prefix: Option<String>,
    /// Whether L3 is on.
    pub l3: Option<bool>,
    /// `lexical`, `local` or `api`.
    pub embedder: Option<String>,
    /// Model directory for `local`.
    pub model_dir: Option<PathBuf>,
    /// Similarity threshold.
    pub threshold: Option<f32>,
    /// L3 entry bound.
    pub l3_max_entries: Option<u64>,
    /// Live vectors per scope from which HNSW is used instead of exact search.
    pub hnsw_min: Option<u64>,
}

impl RawCacheConfig {
    /// Reads `[cache]` from a loaded config (defaults when absent).
    pub fn from_loader(loader: &ConfigLoader) -> Result<Self> {
        Ok(loader.section("cache")?.unwrap_or_default())
    }
}

/// Where L2 lives.
#[derive(Clone, PartialEq, Eq)]
pub enum L2Backend {
    /// No L2.
    Off,
    /// `dir/l2.redb`.
    Redb,
    /// A shared Redis at this URL (it may carry a password: printed redacted).
    Redis(String),
}

impl fmt::Debug for L2Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("Off"),
            Self::Redb => f.write_str("Redb"),
            Self::Redis(url) => write!(f, "Redis({})", redacted_url(url)),
        }
    }
}

impl Serialize for L2Backend {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_str("off"),
            Self::Redb => s.serialize_str("redb"),
            Self::Redis(url) => s.serialize_str(&redacted_url(url)),
        }
    }
}

/// Which embedder L3 uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// The built-in lexical embedder.
    Lexical,
    /// A local transformer from `model_dir` (feature `local-embeddings`).
    Local,
    /// An embeddings API, supplied by the caller (the client crate).
    Api,
}

/// The validated `[cache]` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Whether caching is on.
    pub enabled: bool,
    /// The cache directory.
    pub dir: PathBuf,
    /// Default time to live.
    #[serde(serialize_with = "dspex_core::serde_duration::serialize")]
    pub ttl: Duration,
    /// Default namespace.
    pub namespace: String,
    /// Whether L1 is on.
    pub l1: bool,
    /// L1 entry bound.
    pub l1_max_entries: u64,
    /// L1 byte bound.
    pub l1_max_bytes: u64,
    /// L2 backend.
    pub l2: L2Backend,
    /// redb size cap.
    pub l2_max_bytes: u64,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Whether L3 is on.
    pub l3: bool,
    /// The embedder.
    pub embedder: EmbedderKind,
    /// Model directory for [`EmbedderKind::Local`].
    pub model_dir: Option<PathBuf>,
    /// Similarity threshold; `None` uses the embedder's default.
    pub threshold: Option<f32>,
    /// L3 entry bound.
    pub l3_max_entries: u64,
    /// Live vectors per scope from which HNSW replaces exact search.
    pub hnsw_min: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from(".dspex/cache"),
            ttl: Duration::from_secs(7 * 86_400),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            l1: true,
            l1_max_entries: 10_000,
            l1_max_bytes: 64 << 20,
            l2: L2Backend::Redb,
            l2_max_bytes: 1 << 30,
            redis_prefix: DEFAULT_PREFIX.to_owned(),
            l3: false,
            embedder: EmbedderKind::Lexical,
            model_dir: None,
            threshold: None,
            l3_max_entries: 100_000,
            hnsw_min: 2_048,
        }
    }
}

impl CacheConfig {
    /// Reads and validates `[cache]` from a loaded config.
    pub fn load(loader: &ConfigLoader) -> Result<Self> {
        Self::validate(&RawCacheConfig::from_loader(loader)?)
    }

    /// Phase two: checks every value.
    pub fn validate(raw: &RawCacheConfig) -> Result<Self> {
        let d = Self::default();
        let ttl = match &raw.ttl {
            Some(text) => dspex_core::config::parse_window("cache.ttl", text)?,
            None => d.ttl,
        };
        let namespace = raw.namespace.clone().unwrap_or(d.namespace);
        validate_namespace(&namespace)
            .map_err(|e| CoreError::config("cache.namespace", e.to_string()))?;
        let l2 = match raw.l2.as_deref().map(str::trim) {
            None | Some("redb") => L2Backend::Redb,
            Some("off" | "none" | "") => L2Backend::Off,
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                L2Backend::Redis(url.to_owned())
            }
            Some(other) => {
                return Err(CoreError::config(
                    "cache.l2",
                    format!(
                        "`{}` is not a backend: use \"redb\", \"off\" or a redis:// URL",
                        redacted_url(other)
                    ),
                ));
            }
        };
        let embedder = match raw.embedder.as_deref() {
            None | Some("lexical") => EmbedderKind::Lexical,
            Some("local") => EmbedderKind::Local,
            Some("api") => EmbedderKind::Api,
            Some(other) => {
                return Err(CoreError::config(
                    "cache.embedder",
                    format!("`{other}` is not an embedder: use \"lexical\", \"local\" or \"api\""),
                ));
            }
        };
        let l3 = raw.l3.unwrap_or(d.l3);
        if l3 && embedder == EmbedderKind::Local && raw.model_dir.is_none() {
            return Err(CoreError::config(
                "cache.model_dir",
                "the local embedder needs a model directory (config.json, tokenizer.json, model.safetensors)",
            ));
        }
        if let Some(t) = raw.threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(CoreError::config(
                "cache.threshold",
                format!("{t} is not a similarity in (0, 1]"),
            ));
        }
        let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64> {
            match v {
                Some(0) => Err(CoreError::config(key, "must be greater than zero")),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let size = |key: &str, v: &Option<RawSize>, default: u64| -> Result<u64> {
            let bytes = match v {
                None => return Ok(default),
                Some(RawSize::Bytes(b)) => *b,
                Some(RawSize::Text(t)) => parse_size(t).ok_or_else(|| {
                    CoreError::config(
                        key,
                        format!("`{t}` is not a size like 64MiB, 1GB or 1048576"),
                    )
                })?,
            };
            if bytes == 0 {
                return Err(CoreError::config(key, "must be greater than zero"));
            }
            Ok(bytes)
        };
        Ok(Self {
            enabled: raw.enabled.unwrap_or(d.enabled),
            dir: raw.dir.clone().unwrap_or(d.dir),
            ttl,
            namespace,
            l1: raw.l1.unwrap_or(d.l1),
            l1_max_entries: positive("cache.l1_max_entries", raw.l1_max_entries, d.l1_max_entries)?,
            l1_max_bytes: size("cache.l1_max_bytes", &raw.l1_max_bytes, d.l1_max_bytes)?,
            l2,
            l2_max_bytes: size("cache.l2_max_bytes", &raw.l2_max_bytes, d.l2_max_bytes)?,
            redis_prefix: raw.redis_prefix.clone().unwrap_or(d.redis_prefix),
            l3,
            embedder,
            model_dir: raw.model_dir.clone(),
            threshold: raw.threshold,
            l3_max_entries: positive("cache.l3_max_entries", raw.l3_max_entries, d.l3_max_entries)?,
            hnsw_min: positive("cache.hnsw_min", raw.hnsw_min, d.hnsw_min)?,
        })
    }
}

/// Parses `1048576`, `64KB`, `64KiB`, `64MB`, `64MiB`, `1GB`, `1GiB`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<CacheConfig> {
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(text)
            .without_env()
            .build()?;
        CacheConfig::load(&loader)
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(load("").unwrap(), CacheConfig::default());
        let c = load(
            "[cache]\nttl = \"1h\"\nl1_max_bytes = \"2MiB\"\nl2 = \"redis://u:pw@127.0.0.1:6379/0\"\nl3 = true\nthreshold = 0.9\n",
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.l1_max_bytes, 2 << 20);
        assert!(matches!(c.l2, L2Backend::Redis(_)));
        let printed = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!printed.contains("pw"), "{printed}");
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[cache]\nl2 = \"memcached://x\"\n", "cache.l2"),
            ("[cache]\nttl = \"soon\"\n", "cache.ttl"),
            ("[cache]\nthreshold = 1.5\n", "cache.threshold"),
            ("[cache]\nl1_max_bytes = \"lots\"\n", "cache.l1_max_bytes"),
            (
                "[cache]\nl3 = true\nembedder = \"local\"\n",
                "cache.model_dir",
            ),
            ("[cache]\nembedder = \"bert\"\n", "cache.embedder"),
            ("[cache]\nnamespace = \"a:b\"\n", "cache.namespace"),
            ("[cache]\nl1_max_entrys = 3\n", "l1_max_entrys"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_size("x"), None);
    }
}
