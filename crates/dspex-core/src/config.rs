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
use std::ops::Range;
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
        let mut sources = Vec::new();
        if let Some(path) = &file {
            // Read it ourselves so a missing or unreadable file is an error (figment
            // silently treats a missing file as empty), and so errors can quote it.
            let text = std::fs::read_to_string(path).map_err(|e| CoreError::ConfigFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(path));
            sources.push(Source {
                label: path.display().to_string(),
                text,
            });
        }
        if let Some(text) = &self.toml {
            figment = figment.merge(Toml::string(text));
            sources.push(Source {
                label: "<config>".to_owned(),
                text: text.clone(),
            });
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
            sources: sources.into(),
        };
        // A syntax error: figment's message has the line; point at it too.
        for source in loader.sources.iter() {
            if let Err(e) = toml::de::DeTable::parse(&source.text) {
                let span = e.span().unwrap_or(0..0);
                return Err(CoreError::Config {
                    key: String::new(),
                    message: format!("invalid TOML: {}", e.message().trim_end()),
                    origin: Some(source.label.clone()),
                    locations: vec![SourceLocation::from_span(&source.label, &source.text, span)],
                });
            }
        }
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
    /// The TOML texts merged, in merge order (a later one wins), kept so
    /// errors can point into them.
    sources: Arc<[Source]>,
}

/// One TOML text the loader read.
struct Source {
    /// The file path, or `<config>` for text given directly.
    label: String,
    text: String,
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
    ///
    /// Keys `T` does not take are refused, every one of the section at once,
    /// each with its line and column (so the raw structs need no
    /// `deny_unknown_fields`, which stops at the first).
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        if !self.figment.contains(key) {
            return Ok(None);
        }
        let unknown = self.unknown_keys::<T>(key);
        if !unknown.is_empty() {
            return Err(self.unknown_keys_error(&unknown));
        }
        self.figment
            .extract_inner::<T>(key)
            .map(Some)
            .map_err(|e| self.locate(self.convert(&e, key)))
    }

    /// Adds to a [`CoreError::Config`] where its key is: the line and column
    /// of the value (or of the key's table when the file does not set it),
    /// with the line quoted. A value set by an environment variable names the
    /// variable instead. Other errors, and errors already located, are
    /// returned as they are.
    ///
    /// Phase-two validation (in each crate) makes errors that name a key
    /// only; whoever loads the config calls this on them.
    pub fn locate(&self, error: CoreError) -> CoreError {
        match error {
            CoreError::Config {
                key,
                message,
                origin,
                locations,
            } if locations.is_empty() => {
                let env = self.env_var(&key);
                let locations = if env.is_some() {
                    Vec::new()
                } else {
                    self.location(&key).into_iter().collect()
                };
                let origin = env
                    .or(origin)
                    .or_else(|| self.origin_of(&key))
                    .or_else(|| locations.first().map(|at| at.file.clone()));
                CoreError::Config {
                    origin,
                    key,
                    message,
                    locations,
                }
            }
            other => other,
        }
    }

    /// Where the value at `key` (dotted, with `[i]` or `.i` for array
    /// items) is written in the file, when a file sets it. When it does not,
    /// the innermost table of the path that the file has, labelled so.
    pub fn location(&self, key: &str) -> Option<SourceLocation> {
        self.location_focused(key, Focus::Value)
    }

    fn location_focused(&self, key: &str, focus: Focus) -> Option<SourceLocation> {
        // The last source that has the key is the one that won the merge.
        let mut fallback = None;
        for source in self.sources.iter().rev() {
            match toml_span(&source.text, key, focus) {
                Some((span, true)) => {
                    return Some(SourceLocation::from_span(&source.label, &source.text, span));
                }
                Some((span, false)) if fallback.is_none() => {
                    fallback = Some(
                        SourceLocation::from_span(&source.label, &source.text, span)
                            .with_label("in this table (the key is not set here)"),
                    );
                }
                _ => {}
            }
        }
        fallback
    }

    /// The environment variable that set `key`, when one did.
    fn env_var(&self, key: &str) -> Option<String> {
        let segments = key_segments(key);
        let (first, rest) = segments.split_first()?;
        let mut value = self.figment.find_value(first).ok()?;
        for segment in rest {
            value = match value {
                Value::Dict(_, mut dict) => dict.remove(segment)?,
                Value::Array(_, mut items) => {
                    let index = segment.parse::<usize>().ok()?;
                    if index >= items.len() {
                        return None;
                    }
                    items.swap_remove(index)
                }
                _ => return None,
            };
        }
        let metadata = self.figment.get_metadata(value.tag())?;
        if !metadata.name.contains("environment") {
            return None;
        }
        Some(env_var_name(segments.iter().map(String::as_str)))
    }

    /// The keys under `key` that `T` would ignore, as full paths.
    fn unknown_keys<T: DeserializeOwned>(&self, key: &str) -> Vec<Vec<String>> {
        let Ok(value) = self.figment.find_value(key) else {
            return Vec::new();
        };
        let prefix = key_segments(key);
        let mut unknown = Vec::new();
        // A type error is the typed extraction's to report (with figment's
        // paths and origins); only the ignored keys seen are wanted here.
        let _ = serde_ignored::deserialize::<_, _, T>(&value, |path| {
            let mut full = prefix.clone();
            full.extend(ignored_path(&path));
            unknown.push(full);
        });
        unknown
    }

    fn unknown_keys_error(&self, unknown: &[Vec<String>]) -> CoreError {
        let keys: Vec<String> = unknown.iter().map(|s| join_key(s)).collect();
        let locations = keys
            .iter()
            .zip(unknown)
            .filter_map(|(key, segments)| {
                let name = segments.last().map_or("", String::as_str);
                self.location_focused(key, Focus::Key)
                    .map(|at| at.with_label(format!("unknown key `{name}`")))
            })
            .collect();
        let first = keys.first().map_or("", String::as_str);
        CoreError::Config {
            key: keys.join(", "),
            message: if keys.len() == 1 {
                "unknown key".to_owned()
            } else {
                format!("{} unknown keys", keys.len())
            },
            origin: self.env_var(first).or_else(|| self.origin_of(first)),
            locations,
        }
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
        let locations = unknown
            .iter()
            .filter_map(|key| {
                self.location_focused(key, Focus::Key)
                    .map(|at| at.with_label(format!("unknown key `{key}`")))
            })
            .collect();
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
            locations,
        })
    }

    fn origin_of(&self, key: &str) -> Option<String> {
        let value: Value = self.figment.find_value(key).ok()?;
        let metadata = self.figment.get_metadata(value.tag())?;
        Some(match &metadata.source {
            Some(figment::Source::File(file)) => format!("{}", file.display()),
            _ if metadata.name.contains("environment") => env_var_name(key.split('.')),
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
            .map(|m| match &m.source {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ if m.name.contains("environment") => {
                    env_var_name(path.iter().map(String::as_str))
                }
                _ => m.name.to_string(),
            })
            .or_else(|| self.origin_of(&key));
        CoreError::Config {
            key,
            message: error.kind.to_string(),
            origin,
            locations: Vec::new(),
        }
    }
}

/// What of a key a location points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Focus {
    /// The key itself (an unknown key).
    Key,
    /// Its value (a value of the wrong type or out of range); a table's key
    /// when the value is a table.
    Value,
}

/// The byte range in the TOML `source` of the key at `path` or of its value
/// (`path` is dotted, with `[i]` or `.i` for array items; a segment may
/// itself hold dots, as a quoted key does). With `true` when the whole path
/// is in the document; with `false`, the range of the innermost part that
/// is (a table whose key is missing). `None` when the text does not parse or
/// has none of the path.
pub fn toml_span(source: &str, path: &str, focus: Focus) -> Option<(Range<usize>, bool)> {
    let document = toml::de::DeTable::parse(source).ok()?;
    let segments = key_segments(path);
    table_span(document.get_ref(), &segments, focus, None)
}

fn table_span(
    table: &toml::de::DeTable<'_>,
    segments: &[String],
    focus: Focus,
    parent: Option<Range<usize>>,
) -> Option<(Range<usize>, bool)> {
    if segments.is_empty() {
        return parent.map(|span| (span, true));
    }
    // The longest run of segments that names a key: `a.b` may be one
    // quoted key.
    for n in (1..=segments.len()).rev() {
        let name = segments.get(..n)?.join(".");
        if let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) {
            return value_span(value, key.span(), segments.get(n..)?, focus);
        }
    }
    parent.map(|span| (span, false))
}

fn value_span(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    key: Range<usize>,
    rest: &[String],
    focus: Focus,
) -> Option<(Range<usize>, bool)> {
    use toml::de::DeValue;
    let Some((first, after)) = rest.split_first() else {
        return Some(match (focus, value.get_ref()) {
            (Focus::Key, _) | (_, DeValue::Table(_)) => (key, true),
            _ => (value.span(), true),
        });
    };
    match value.get_ref() {
        DeValue::Table(table) => table_span(table, rest, focus, Some(key)),
        DeValue::Array(items) => match first.parse::<usize>().ok().and_then(|i| items.get(i)) {
            Some(item) => {
                // An item has no key: its own span stands for it (for a
                // `[[table]]` item, where the table starts).
                let span = item.span();
                match item.get_ref() {
                    DeValue::Table(table) if !after.is_empty() => {
                        table_span(table, after, focus, Some(span))
                    }
                    _ => value_span(item, span, after, focus),
                }
            }
            None => Some((key, false)),
        },
        _ => Some((key, false)),
    }
}

/// `a.b[0].c` (or `a.b.0.c`) as `["a", "b", "0", "c"]`.
fn key_segments(key: &str) -> Vec<String> {
    let mut segments = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part
            .split_once('[')
            .map_or((part, ""), |(name, rest)| (name, rest));
        if !name.is_empty() {
            segments.push(name.to_owned());
        }
        while let Some((index, after)) = rest.split_once(']') {
            segments.push(index.to_owned());
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    segments
}

/// `["a", "b", "0", "c"]` as `a.b[0].c`, the form phase-two errors use.
fn join_key(segments: &[String]) -> String {
    let mut key = String::new();
    for segment in segments {
        if !key.is_empty() && segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// An ignored field's path as keys and indexes (`Option` and newtype
/// levels, which the document does not have, left out).
fn ignored_path(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut segments = ignored_path(parent);
            segments.push(index.to_string());
            segments
        }
        Path::Map { parent, key } => {
            let mut segments = ignored_path(parent);
            segments.push(key.clone());
            segments
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// A place in a text (a config or workflow file, a template, a dataset):
/// its line and column and the line itself, for messages that point at it
/// as rustc does:
///
/// ```text
///   --> dspex.toml:7:13
///    |
///  7 | pool_size = "eight"
///    |             ^^^^^^^
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceLocation {
    /// The file (or template) name.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
    /// The line's text, without its line break.
    pub text: String,
    /// How many characters are underlined (at least 1; never past the line).
    pub width: usize,
    /// Words after the underline, when the message needs them (which of
    /// several keys this is).
    pub label: Option<String>,
}

impl SourceLocation {
    /// The place of the byte range `span` of `source`, named `file`. A range
    /// past the end, or not on character boundaries, is pulled back in.
    pub fn from_span(file: impl Into<String>, source: &str, span: Range<usize>) -> Self {
        let start = floor_boundary(source, span.start);
        let before = source.get(..start).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = source
            .get(start..)
            .and_then(|after| after.find('\n'))
            .map_or(source.len(), |i| start + i);
        let end = floor_boundary(source, span.end.clamp(start, line_end));
        let text = source.get(line_start..line_end).unwrap_or_default();
        Self {
            file: file.into(),
            line: before.bytes().filter(|b| *b == b'\n').count() + 1,
            column: source
                .get(line_start..start)
                .map_or(0, |s| s.chars().count())
                + 1,
            text: text.strip_suffix('\r').unwrap_or(text).to_owned(),
            width: source
                .get(start..end)
                .map_or(0, |s| s.chars().count())
                .max(1),
            label: None,
        }
    }

    /// The place at `line` (from 1) and byte `column` (from 1) of `source`,
    /// `width` characters wide; the end of the text when `line` is past it.
    pub fn from_line_column(
        file: impl Into<String>,
        source: &str,
        line: usize,
        column: usize,
        width: usize,
    ) -> Self {
        let mut offset = 0;
        for _ in 1..line.max(1) {
            match source.get(offset..).and_then(|rest| rest.find('\n')) {
                Some(i) => offset += i + 1,
                None => {
                    offset = source.len();
                    break;
                }
            }
        }
        let start = offset.saturating_add(column.saturating_sub(1));
        let mut location = Self::from_span(file, source, start..start);
        let room = location
            .text
            .chars()
            .count()
            .saturating_sub(location.column - 1);
        location.width = width.min(room).max(1);
        location
    }

    /// This place with words after its underline.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Every place in turn, each as `--> file:line:column` and its line
    /// underlined, the line numbers aligned.
    pub fn render_all(locations: &[Self]) -> String {
        let width = locations
            .iter()
            .map(|l| l.line.to_string().len())
            .max()
            .unwrap_or(1);
        let pad = " ".repeat(width + 1);
        let mut out = Vec::new();
        for location in locations {
            // Keep tabs so the carets line up under them.
            let indent: String = location
                .text
                .chars()
                .take(location.column.saturating_sub(1))
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let label = location
                .label
                .as_deref()
                .map(|l| format!(" {l}"))
                .unwrap_or_default();
            out.push(format!(
                "{pad}--> {}:{}:{}\n{pad} |\n {:>width$} | {}\n{pad} | {indent}{}{label}",
                location.file,
                location.line,
                location.column,
                location.line,
                location.text,
                "^".repeat(location.width),
            ));
        }
        out.join("\n")
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::render_all(std::slice::from_ref(self)))
    }
}

/// `at`, moved back to a character boundary of `text` (and into it).
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The environment variable that sets the key of `segments`, as the loader
/// reads them: the prefix, then the segments upper-cased and joined by `__`
/// (figment's own interpolation joins them with dots, which names no
/// variable a user could set).
fn env_var_name<'a>(segments: impl Iterator<Item = &'a str>) -> String {
    let mut name = ENV_PREFIX.to_owned();
    for (i, segment) in segments.enumerate() {
        if i > 0 {
            name.push_str("__");
        }
        name.push_str(&segment.to_ascii_uppercase());
    }
    name
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
            ..
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
            msg.starts_with(
                "analytic, cahce, provders: unknown keys (known top-level keys: providers)"
            ) && msg.contains("<config>:4:2")
                && msg.contains("<config>:3:2")
                && msg.contains("<config>:1:2"),
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
