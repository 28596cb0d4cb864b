//! Configuration loading: a TOML file plus environment overrides, in two phases.
//!
//! Phase one (this module) finds the file, layers the environment over it and
//! deserializes each section into the *raw* serde structs of the crate that owns
//! it. Phase two (in each crate) turns raw structs into validated types. Both
//! phases report errors as [`CoreError::Config`] naming the dotted key path and,
//! when known, where the value came from.
//!
//! File resolution: an explicit path (`--config`), else `$DSPEX_CONFIG`, else
//! `./dspex.toml` if it exists, else no file (each crate then falls back to its own
//! defaults, such as providers from `OPENAI_API_KEY`).
//!
//! Environment overrides use the `DSPEX_` prefix and `__` between key segments:
//! `DSPEX_PROVIDERS__OPENAI__POOL_SIZE=8` overrides `providers.openai.pool_size`.
//! Only variables whose first segment is a known top-level key are read, so
//! unrelated `DSPEX_*` variables (such as `DSPEX_CONFIG`) are never mistaken for
//! config.
//!
//! ```
//! use dspex_core::config::ConfigLoader;
//! #[derive(serde::Deserialize)]
//! struct Server { port: u16 }
//! let loader = ConfigLoader::builder(&["server"])
//!     .toml_str("[server]\nport = 8080")
//!     .without_env()
//!     .build()
//!     .unwrap();
//! let server: Server = loader.section("server").unwrap().unwrap();
//! assert_eq!(server.port, 8080);
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::error::{CoreError, Result};

/// The default config file name, looked up in the working directory.
pub const DEFAULT_FILE: &str = "dspex.toml";
/// The environment variable that names a config file.
pub const CONFIG_ENV: &str = "DSPEX_CONFIG";
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "DSPEX_";

/// Builds a [`ConfigLoader`].
#[derive(Debug)]
pub struct ConfigLoaderBuilder {
    known_keys: Vec<String>,
    file: Option<PathBuf>,
    discover: bool,
    toml: Option<String>,
    env: bool,
}

impl ConfigLoaderBuilder {
    /// Reads this file (it must exist).
    #[must_use]
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Resolves the file as the CLI does: `explicit`, else `$DSPEX_CONFIG`, else
    /// `./dspex.toml` if present, else none.
    #[must_use]
    pub fn discover(mut self, explicit: Option<&Path>) -> Self {
        match explicit {
            Some(path) => self.file = Some(path.to_path_buf()),
            None => self.discover = true,
        }
        self
    }

    /// Uses this TOML text instead of a file (tests, embedded defaults).
    #[must_use]
    pub fn toml_str(mut self, text: impl Into<String>) -> Self {
        self.toml = Some(text.into());
        self
    }

    /// Ignores environment overrides.
    #[must_use]
    pub fn without_env(mut self) -> Self {
        self.env = false;
        self
    }

    /// Reads the sources and checks that every top-level key is known.
    pub fn build(self) -> Result<ConfigLoader> {
        let mut file = self.file;
        if self.discover && file.is_none() {
            if let Some(path) = std::env::var_os(CONFIG_ENV) {
                file = Some(PathBuf::from(path));
            } else if Path::new(DEFAULT_FILE).is_file() {
                file = Some(PathBuf::from(DEFAULT_FILE));
            }
        }
        let mut figment = Figment::new();
        if let Some(path) = &file {
            // Read it ourselves so a missing or unreadable file is an error (figment
            // silently treats a missing file as empty).
            std::fs::File::open(path).map_err(|e| CoreError::ConfigFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(text) = &self.toml {
            figment = figment.merge(Toml::string(text));
        }
        let known: Arc<[String]> = self.known_keys.into();
        if self.env {
            let filter_known = Arc::clone(&known);
            figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").filter(move |key| {
                // Keys are still upper case here; figment lowercases them later.
                let first = key.as_str().split('.').next().unwrap_or_default();
                filter_known.iter().any(|k| k.eq_ignore_ascii_case(first))
            }));
        }
        let loader = ConfigLoader {
            figment,
            file,
            known,
        };
        loader.check_top_level()?;
        Ok(loader)
    }
}

/// A loaded configuration: the merged file and environment, ready for each crate
/// to extract its sections.
#[derive(Clone)]
pub struct ConfigLoader {
    figment: Figment,
    file: Option<PathBuf>,
    known: Arc<[String]>,
}

impl fmt::Debug for ConfigLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print values: they may hold anything a user put there.
        f.debug_struct("ConfigLoader")
            .field("file", &self.file)
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

impl ConfigLoader {
    /// Starts a loader that accepts these top-level keys.
    pub fn builder(known_keys: &[&str]) -> ConfigLoaderBuilder {
        ConfigLoaderBuilder {
            known_keys: known_keys.iter().map(|k| (*k).to_owned()).collect(),
            file: None,
            discover: false,
            toml: None,
            env: true,
        }
    }

    /// The file that was read, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Whether any source set `key` (a dotted path).
    pub fn contains(&self, key: &str) -> bool {
        self.figment.contains(key)
    }

    /// Deserializes the value at `key` (a dotted path) into `T`, or `None` when no
    /// source sets it. Errors name the full key path and the value's origin.
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        if !self.figment.contains(key) {
            return Ok(None);
        }
        self.figment
            .extract_inner::<T>(key)
            .map(Some)
            .map_err(|e| self.convert(&e, key))
    }

    /// Refuses unknown top-level keys, all of them in one error.
    fn check_top_level(&self) -> Result<()> {
        let data = self.figment.data().map_err(|e| self.convert(&e, ""))?;
        let empty = Dict::new();
        let dict = data.get(&Profile::Default).unwrap_or(&empty);
        let unknown: Vec<&String> = dict
            .keys()
            .filter(|key| !self.known.iter().any(|k| k == *key))
            .collect();
        let Some(first) = unknown.first() else {
            return Ok(());
        };
        let mut known: Vec<&str> = self.known.iter().map(String::as_str).collect();
        known.sort_unstable();
        Err(CoreError::Config {
            key: unknown
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            message: format!(
                "unknown key{} (known top-level keys: {})",
                if unknown.len() > 1 { "s" } else { "" },
                known.join(", ")
            ),
            origin: self.origin_of(first),
        })
    }

    fn origin_of(&self, key: &str) -> Option<String> {
        let value: Value = self.figment.find_value(key).ok()?;
        let metadata = self.figment.get_metadata(value.tag())?;
        let path: Vec<&str> = key.split('.').collect();
        Some(metadata.interpolate(&Profile::Default, &path)).map(|name| match &metadata.source {
            Some(figment::Source::File(file)) => format!("{}", file.display()),
            _ if metadata.name.contains("environment") => name,
            _ => metadata.name.to_string(),
        })
    }

    fn convert(&self, error: &figment::Error, prefix: &str) -> CoreError {
        // figment appends the extracted key's segments to the end of the path of
        // the failing value; put them back in front.
        let mut path: Vec<String> = error.path.clone();
        let prefix_segments: Vec<String> = prefix
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !prefix_segments.is_empty() && path.ends_with(&prefix_segments) {
            path.truncate(path.len() - prefix_segments.len());
        }
        if !path.starts_with(&prefix_segments) {
            let mut full = prefix_segments;
            full.append(&mut path);
            path = full;
        }
        let key = if path.is_empty() {
            prefix.to_owned()
        } else {
            path.join(".")
        };
        let origin = error
            .metadata
            .as_ref()
            .map(|m| {
                let segments: Vec<&str> = path.iter().map(String::as_str).collect();
                match &m.source {
                    Some(figment::Source::File(file)) => file.display().to_string(),
                    _ if m.name.contains("environment") => {
                        m.interpolate(&Profile::Default, &segments)
                    }
                    _ => m.name.to_string(),
                }
            })
            .or_else(|| self.origin_of(&key));
        CoreError::Config {
            key,
            message: error.kind.to_string(),
            origin,
        }
    }
}

/// A URL with its credentials (user name and password) replaced, for printing.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest.get(..authority_end).and_then(|a| a.rfind('@')) {
        // Replace the text itself: setting it through `Url` would percent-encode
        // the marker.
        Some(at) => format!(
            "{scheme}://{}{}",
            REDACTED,
            rest.get(at..).unwrap_or_default()
        ),
        None => url.to_owned(),
    }
}

/// The longest window, TTL or duration a setting takes: a year (366 days).
/// Anything longer is a typo, and a huge one would overflow the clock
/// arithmetic that uses it.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

/// Parses a window such as `1s`, `1m`, `1h`, `1d` or `90s`: longer than
/// zero and at most [`MAX_WINDOW`].
pub fn parse_window(key: &str, text: &str) -> Result<Duration> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        CoreError::config(
            key,
            format!("`{text}` is not a duration like 1s, 1m, 1h or 1d ({e})"),
        )
    })?;
    if duration.is_zero() {
        return Err(CoreError::config(key, "a window must be longer than zero"));
    }
    if duration > MAX_WINDOW {
        return Err(CoreError::config(
            key,
            format!("`{text}` is longer than a year (366d), the longest window"),
        ));
    }
    Ok(duration)
}

/// A secret value, such as an API key. It is never printed: `Debug`, `Display` and
/// `Serialize` all show `[redacted]`; only [`Secret::expose`] gives the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret text, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the secret in `text` with `[redacted]`, for
    /// messages that may echo it back (some providers quote the key they refused).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&*self.0, REDACTED)
    }
}

/// What a secret prints as.
pub const REDACTED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Provider {
        pool_size: u32,
        model: Option<String>,
    }

    #[test]
    fn errors_name_the_full_key_path_and_file() {
        let dir = std::env::temp_dir().join(format!("dspex-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[providers.openai]\npool_size = \"many\"\n").unwrap();
        let loader = ConfigLoader::builder(&["providers"])
            .file(&file)
            .without_env()
            .build()
            .unwrap();
        let err = loader
            .section::<std::collections::BTreeMap<String, Provider>>("providers")
            .unwrap_err();
        let CoreError::Config {
            key,
            message,
            origin,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(key, "providers.openai.pool_size");
        assert!(message.contains("string"), "{message}");
        assert_eq!(origin.as_deref(), Some(file.display().to_string().as_str()));
        assert!(err.to_string().contains("providers.openai.pool_size"));
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let err = ConfigLoader::builder(&["providers"])
            .toml_str("[provders.openai]\nmodel = \"x\"\n")
            .without_env()
            .build()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`provders`"), "{msg}");
        assert!(msg.contains("providers"), "{msg}");
        // Several at once, all named.
        let err = ConfigLoader::builder(&["providers"])
            .toml_str("[provders.openai]\nmodel = \"x\"\n[cahce]\n[analytic]\n")
            .without_env()
            .build()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("config error at `analytic, cahce, provders`")
                && msg.contains("unknown keys (known top-level keys: providers)"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_nested_key_is_named() {
        let loader = ConfigLoader::builder(&["providers"])
            .toml_str("[providers.openai]\npool_size = 3\npool_sise = 4\n")
            .without_env()
            .build()
            .unwrap();
        let err = loader
            .section::<std::collections::BTreeMap<String, Provider>>("providers")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pool_sise"), "{msg}");
        assert!(msg.contains("providers.openai"), "{msg}");
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = ConfigLoader::builder(&["providers"])
            .file("/nonexistent/dspex.toml")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dspex.toml"));
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("k", "1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_window("k", "1m").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_window("k", "1d").unwrap(),
            Duration::from_secs(86_400)
        );
        let err = parse_window("limits[0].window", "soon").unwrap_err();
        assert!(err.to_string().contains("limits[0].window"));
        assert!(parse_window("k", "0s").is_err());
        assert_eq!(parse_window("k", "366d").unwrap(), MAX_WINDOW);
        let err = parse_window("limits[0].window", "100000000000d").unwrap_err();
        assert!(
            err.to_string().contains("limits[0].window") && err.to_string().contains("a year"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("sk-test-1234567890");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(
            secret.scrub("Incorrect API key provided: sk-test-1234567890."),
            "Incorrect API key provided: [redacted]."
        );
        assert_eq!(secret.expose(), "sk-test-1234567890");
    }
}
