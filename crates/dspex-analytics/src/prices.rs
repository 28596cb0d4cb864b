//! Prices: the bundled table, overrides from `dspex.toml`, and exact cost
//! arithmetic.
//!
//! Prices are integer pico-USD (10⁻¹² USD) per token, so every price of the
//! source table is represented exactly. A call's cost is computed exactly in
//! pico-USD and rounded once, to the nearest nano-USD (10⁻⁹ USD): the unit of
//! every stored and reported cost. Summing a million calls therefore drifts by
//! at most half a thousandth of a cent.
//!
//! The bundled table (`data/prices.json`, written by
//! `scripts/build-price-table` from LiteLLM's price list) covers the chat and
//! embedding models of OpenAI, Anthropic, Gemini, Mistral, DeepSeek, Groq,
//! Together and xAI. Each price has an effective date; a model may have several
//! prices, and a call is priced with the latest one in effect on its day (the
//! earliest one for calls before every effective date).
//!
//! Lookup is tolerant of naming: `provider/model` first, then a model given as
//! `provider/model` itself, then the bare model name when exactly one provider
//! lists it. A model with no price is *unpriced*: its cost is `None`, never
//! zero.
//!
//! ```
//! use dspex_analytics::prices::{PriceTable, TokenUsage};
//! let table = PriceTable::bundled()?;
//! let usage = TokenUsage { input: 1_000_000, output: 1_000_000, ..TokenUsage::default() };
//! // gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output tokens.
//! let cost = table.cost("openai", "gpt-4o-mini", None, 0, &usage).unwrap();
//! assert_eq!(cost.nanos, 750_000_000);
//! assert!(table.cost("local", "my-finetune", None, 0, &usage).is_none());
//! # Ok::<(), dspex_analytics::AnalyticsError>(())
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{AnalyticsError, Result};
use crate::time::{DAY_MS, format_date, parse_date};

/// The bundled price table, as generated.
pub const BUNDLED_PRICES: &str = include_str!("../data/prices.json");

/// Pico-USD in a nano-USD.
const PICO_PER_NANO: u128 = 1_000;
/// The effective day of a price that applies to all time.
const ALL_TIME_DAY: i64 = i64::MIN / DAY_MS;
/// Nano-USD in a dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// Formats nano-USD as dollars, with enough digits for small calls
/// (`$0.000150`, `$12.34`).
pub fn format_usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let dollars = abs / 1_000_000_000;
    let frac = abs % 1_000_000_000;
    if dollars >= 100 {
        // Cents, rounded half up.
        let cents = (frac + 5_000_000) / 10_000_000;
        let (dollars, cents) = if cents == 100 {
            (dollars + 1, 0)
        } else {
            (dollars, cents)
        };
        format!("{sign}${dollars}.{cents:02}")
    } else {
        // Micro-dollars, rounded half up.
        let micros = (frac + 500) / 1_000;
        let (dollars, micros) = if micros == 1_000_000 {
            (dollars + 1, 0)
        } else {
            (dollars, micros)
        };
        format!("{sign}${dollars}.{micros:06}")
    }
}

/// Nano-USD as dollars (for display and JSON; the integer is exact).
pub fn nanos_to_usd(nanos: i64) -> f64 {
    // Split so large totals keep their cents exact in the float.
    let dollars = nanos / NANOS_PER_USD;
    let rest = nanos % NANOS_PER_USD;
    #[allow(clippy::cast_precision_loss)]
    let value = dollars as f64 + rest as f64 / 1e9;
    value
}

/// Dollars (per million tokens, as written in config) to pico-USD per token.
fn per_million_to_pico(key: &str, value: f64) -> Result<u64> {
    if !value.is_finite() || value < 0.0 {
        return Err(AnalyticsError::Config(dspex_core::CoreError::config(
            key,
            format!("`{value}` is not a price: expected dollars per million tokens, zero or more"),
        )));
    }
    // $/Mtok × 10¹² pico/$ ÷ 10⁶ tok/Mtok = $/Mtok × 10⁶ pico per token.
    let pico = (value * 1e6).round();
    if pico > 1e15 {
        return Err(AnalyticsError::Config(dspex_core::CoreError::config(
            key,
            format!("`{value}` dollars per million tokens is out of range"),
        )));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(pico as u64)
}

/// Tokens of one call, by kind (the raw usage analytics stores).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens, cached reads and cache writes included.
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
    /// Prompt tokens read from the provider's prompt cache.
    pub cached_input: u64,
    /// Prompt tokens written to the provider's prompt cache.
    pub cache_write: u64,
}

impl From<&dspex_client::Usage> for TokenUsage {
    fn from(usage: &dspex_client::Usage) -> Self {
        Self {
            input: usage.input_tokens,
            output: usage.output_tokens,
            cached_input: usage.cached_input_tokens,
            cache_write: usage.cache_write_tokens,
        }
    }
}

impl TokenUsage {
    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// One model's prices, in pico-USD per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: u64,
    /// Generated tokens.
    #[serde(default)]
    pub output: u64,
    /// Prompt tokens read from the prompt cache (the input price when `None`).
    #[serde(default)]
    pub cached_input: Option<u64>,
    /// Prompt tokens written to the prompt cache (the input price when `None`).
    #[serde(default)]
    pub cache_write: Option<u64>,
}

impl Price {
    /// The exact cost of `usage` in pico-USD.
    pub fn cost_pico(&self, usage: &TokenUsage) -> u128 {
        let uncached = usage
            .input
            .saturating_sub(usage.cached_input)
            .saturating_sub(usage.cache_write);
        u128::from(uncached) * u128::from(self.input)
            + u128::from(usage.cached_input) * u128::from(self.cached_input.unwrap_or(self.input))
            + u128::from(usage.cache_write) * u128::from(self.cache_write.unwrap_or(self.input))
            + u128::from(usage.output) * u128::from(self.output)
    }

    /// The cost of `usage` in nano-USD, rounded half up from the exact value.
    pub fn cost_nanos(&self, usage: &TokenUsage) -> i64 {
        let nanos = (self.cost_pico(usage) + PICO_PER_NANO / 2) / PICO_PER_NANO;
        i64::try_from(nanos).unwrap_or(i64::MAX)
    }
}

/// Where a price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// The bundled table.
    Bundled,
    /// `[analytics.prices]` in `dspex.toml`, or added in code.
    Override,
}

impl PriceSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bundled => "bundled",
            Self::Override => "override",
        }
    }
}

/// One price of one model, with the day it took effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PriceEntry {
    /// The prices.
    pub price: Price,
    /// The first day (days since 1970-01-01, UTC) it applies to.
    pub effective_day: i64,
    /// Where it came from.
    pub source: PriceSource,
    // Spelled once: every recorded call carries it.
    #[serde(skip)]
    version: Arc<str>,
}

impl PriceEntry {
    /// A price from `source`, in effect from `effective_day`.
    pub fn new(price: Price, effective_day: i64, source: PriceSource) -> Self {
        let version = if effective_day == ALL_TIME_DAY {
            Arc::from(source.as_str())
        } else {
            Arc::from(format!(
                "{}@{}",
                source.as_str(),
                format_date(effective_day.saturating_mul(DAY_MS))
            ))
        };
        Self {
            price,
            effective_day,
            source,
            version,
        }
    }

    /// `bundled@2026-11-24`: what analytics stores as the row's price version.
    pub fn version(&self) -> String {
        self.version.to_string()
    }
}

/// A priced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    /// The cost, in nano-USD.
    pub nanos: i64,
    /// The `provider/model` key of the price used.
    pub key: String,
    /// The price version (`bundled@2026-11-24`).
    pub version: String,
}

impl Cost {
    /// A call that ran on this machine (a local model): it costs nothing,
    /// and is priced, not unpriced.
    pub fn local(model: &str) -> Self {
        Self {
            nanos: 0,
            key: format!("{LOCAL_SYSTEM}/{model}"),
            version: LOCAL_SYSTEM.to_owned(),
        }
    }
}

/// The `gen_ai.system` of providers that run on this machine; their calls
/// cost zero.
pub use dspex_client::LOCAL_SYSTEM;

impl PriceTable {
    /// [`PriceTable::cost`] for a call of `system`: zero for a local model,
    /// the table's price otherwise.
    pub fn cost_of_call(
        &self,
        system: &str,
        provider: &str,
        model: &str,
        response_model: Option<&str>,
        at_ms: i64,
        usage: &TokenUsage,
    ) -> Option<Cost> {
        if system == LOCAL_SYSTEM {
            return Some(Cost::local(model));
        }
        // A provider id the table does not know (`primary`, `oa`) is priced
        // as its system (`openai`), whose prices it pays.
        self.cost(provider, model, response_model, at_ms, usage)
            .or_else(|| self.cost(system, model, response_model, at_ms, usage))
    }
}

#[derive(Deserialize)]
struct BundledFile {
    effective: String,
    models: HashMap<String, Price>,
}

/// Prices by `provider/model`, each with one or more effective dates.
#[derive(Clone, Default)]
pub struct PriceTable {
    // Key: lower-case `provider/model`. Entries sorted by effective day.
    entries: HashMap<String, Vec<PriceEntry>>,
    // Lower-case bare model name -> the keys listing it.
    by_model: HashMap<String, Vec<String>>,
}

impl fmt::Debug for PriceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriceTable")
            .field("models", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// Provider names as other tools spell them, mapped to the DSPex ids the
/// bundled table uses.
fn canonical_provider(provider: &str) -> &str {
    match provider {
        "google" | "google_ai" | "vertex" => "gemini",
        "together_ai" | "togetherai" => "together",
        "x-ai" | "x_ai" | "grok" => "xai",
        "claude" => "anthropic",
        "mistralai" => "mistral",
        other => other,
    }
}

/// `name` trimmed and lower-cased, borrowed when it already is.
fn folded(name: &str) -> Cow<'_, str> {
    let trimmed = name.trim();
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// `provider/model` spelled into `buffer`, or `None` when it does not fit.
fn join_key<'b>(buffer: &'b mut [u8; 128], provider: &str, model: &str) -> Option<&'b str> {
    let len = provider.len() + 1 + model.len();
    let out = buffer.get_mut(..len)?;
    let (head, tail) = out.split_at_mut(provider.len());
    head.copy_from_slice(provider.as_bytes());
    let (slash, rest) = tail.split_first_mut()?;
    *slash = b'/';
    rest.copy_from_slice(model.as_bytes());
    std::str::from_utf8(out).ok()
}

/// The version in effect on the day of `at_ms`; before the first, the first.
fn in_effect(versions: &[PriceEntry], at_ms: i64) -> Option<&PriceEntry> {
    let day = at_ms.div_euclid(DAY_MS);
    versions
        .iter()
        .rev()
        .find(|e| e.effective_day <= day)
        .or_else(|| versions.first())
}

impl PriceTable {
    /// A table with no prices: every call is unpriced.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The bundled table.
    pub fn bundled() -> Result<Self> {
        Self::from_json(BUNDLED_PRICES)
    }

    /// Reads a table in the bundled format: `{"effective": "YYYY-MM-DD",
    /// "models": {"provider/model": {"input": pico, "output": pico,
    /// "cached_input": pico, "cache_write": pico}}}`.
    pub fn from_json(text: &str) -> Result<Self> {
        let file: BundledFile = serde_json::from_str(text).map_err(|e| AnalyticsError::Prices {
            key: "prices.json".to_owned(),
            message: e.to_string(),
        })?;
        let effective = parse_date(&file.effective).ok_or_else(|| AnalyticsError::Prices {
            key: "effective".to_owned(),
            message: format!("`{}` is not a date like 2026-11-24", file.effective),
        })?;
        let mut table = Self::empty();
        for (key, price) in file.models {
            table.insert_entry(
                &key,
                PriceEntry::new(price, effective, PriceSource::Bundled),
            )?;
        }
        Ok(table)
    }

    /// Adds (or, for the same effective day, replaces) a price for `key`
    /// (`provider/model`), effective from `effective` (`YYYY-MM-DD`; `None`:
    /// from the beginning of time, so it also reprices older calls).
    pub fn insert(&mut self, key: &str, price: Price, effective: Option<&str>) -> Result<()> {
        let effective_day = match effective {
            None => ALL_TIME_DAY,
            Some(text) => parse_date(text).ok_or_else(|| AnalyticsError::Prices {
                key: key.to_owned(),
                message: format!("effective date `{text}` is not a date like 2026-11-24"),
            })?,
        };
        self.insert_entry(
            key,
            PriceEntry::new(price, effective_day, PriceSource::Override),
        )
    }

    fn insert_entry(&mut self, key: &str, entry: PriceEntry) -> Result<()> {
        let key = key.trim().to_ascii_lowercase();
        let Some((provider, model)) = key.split_once('/') else {
            return Err(AnalyticsError::Prices {
                key,
                message: "a price key is `provider/model`".to_owned(),
            });
        };
        if provider.is_empty() || model.is_empty() {
            return Err(AnalyticsError::Prices {
                key,
                message: "a price key is `provider/model`, both non-empty".to_owned(),
            });
        }
        let key = format!("{}/{model}", canonical_provider(provider));
        let model = model.to_owned();
        let versions = self.entries.entry(key.clone()).or_default();
        versions.retain(|e| e.effective_day != entry.effective_day);
        versions.push(entry);
        versions.sort_by_key(|e| e.effective_day);
        let keys = self.by_model.entry(model).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
        Ok(())
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no price at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `provider/model` key a call resolves to, if any.
    pub fn resolve(&self, provider: &str, model: &str) -> Option<&str> {
        self.resolve_versions(provider, model).map(|(key, _)| key)
    }

    /// The key and price versions a call resolves to. Recording prices every
    /// call, so the common case (names already trimmed and lower-case, as the
    /// client's are) allocates nothing: the `provider/model` key is spelled in
    /// a stack buffer.
    fn resolve_versions(&self, provider: &str, model: &str) -> Option<(&str, &[PriceEntry])> {
        let provider = folded(provider);
        let provider = canonical_provider(&provider);
        let model = folded(model);
        if let Some(found) = self.get_pair(provider, &model) {
            return Some(found);
        }
        if let Some((prefix, rest)) = model.split_once('/')
            && let Some(found) = self.get_pair(canonical_provider(prefix), rest)
        {
            return Some(found);
        }
        match self.by_model.get(&*model).map(Vec::as_slice) {
            Some([only]) => self
                .entries
                .get_key_value(only)
                .map(|(k, v)| (k.as_str(), v.as_slice())),
            _ => None,
        }
    }

    fn get_pair(&self, provider: &str, model: &str) -> Option<(&str, &[PriceEntry])> {
        let mut buffer = [0u8; 128];
        let joined = join_key(&mut buffer, provider, model);
        let found = match &joined {
            Some(key) => self.entries.get_key_value(*key),
            None => self.entries.get_key_value(&format!("{provider}/{model}")),
        };
        found.map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The price in effect for `provider`/`model` on the day of `at_ms` (Unix ms).
    pub fn lookup(&self, provider: &str, model: &str, at_ms: i64) -> Option<&PriceEntry> {
        let (_, versions) = self.resolve_versions(provider, model)?;
        in_effect(versions, at_ms)
    }

    /// The cost of a call: priced by the requested `model`, else by the
    /// `response_model` the provider reported. `None` when neither has a price.
    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        response_model: Option<&str>,
        at_ms: i64,
        usage: &TokenUsage,
    ) -> Option<Cost> {
        let (key, entry) = std::iter::once(model).chain(response_model).find_map(|m| {
            let (key, versions) = self.resolve_versions(provider, m)?;
            Some((key, in_effect(versions, at_ms)?))
        })?;
        Some(Cost {
            nanos: entry.price.cost_nanos(usage),
            key: key.to_owned(),
            version: entry.version(),
        })
    }

    /// [`PriceTable::estimate`] for a call of `system`: zero for a local
    /// model; a provider id the table does not know is priced as its system.
    pub fn estimate_for_call(
        &self,
        system: &str,
        provider: &str,
        model: &str,
        estimated_input_tokens: u64,
        max_output_tokens: u64,
        at_ms: i64,
    ) -> Option<i64> {
        if system == LOCAL_SYSTEM {
            return Some(0);
        }
        self.estimate(
            provider,
            model,
            estimated_input_tokens,
            max_output_tokens,
            at_ms,
        )
        .or_else(|| {
            self.estimate(
                system,
                model,
                estimated_input_tokens,
                max_output_tokens,
                at_ms,
            )
        })
    }

    /// The estimated cost of a call before it is sent: every estimated prompt
    /// token at the uncached input price plus `max_output_tokens` at the output
    /// price (an upper bound for the output). `None` when the model is unpriced.
    pub fn estimate(
        &self,
        provider: &str,
        model: &str,
        estimated_input_tokens: u64,
        max_output_tokens: u64,
        at_ms: i64,
    ) -> Option<i64> {
        let entry = self.lookup(provider, model, at_ms)?;
        Some(entry.price.cost_nanos(&TokenUsage {
            input: estimated_input_tokens,
            output: max_output_tokens,
            ..TokenUsage::default()
        }))
    }

    /// Every key with its price versions, sorted by key (for reports).
    pub fn entries(&self) -> Vec<(&str, &[PriceEntry])> {
        let mut all: Vec<(&str, &[PriceEntry])> = self
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// A price written in `dspex.toml`, in dollars per million tokens:
///
/// ```toml
/// [analytics.prices."openai/gpt-4o"]
/// input_per_million = 2.5
/// output_per_million = 10.0
/// cached_input_per_million = 1.25
/// cache_write_per_million = 3.125
/// effective = "2026-01-01"      # optional; without it the price applies to all time
/// ```
#[derive(Clone, Debug, Deserialize)]
pub struct RawPrice {
    /// Dollars per million uncached input tokens.
    pub input_per_million: f64,
    /// Dollars per million output tokens.
    #[serde(default)]
    pub output_per_million: f64,
    /// Dollars per million cached input tokens (default: the input price).
    pub cached_input_per_million: Option<f64>,
    /// Dollars per million cache-write tokens (default: the input price).
    pub cache_write_per_million: Option<f64>,
    /// The first day (`YYYY-MM-DD`, UTC) the price applies to.
    pub effective: Option<String>,
}

impl RawPrice {
    /// Validates the price; `key` is the config path used in errors.
    pub fn validate(&self, key: &str) -> Result<Price> {
        Ok(Price {
            input: per_million_to_pico(
                &format!("{key}.input_per_million"),
                self.input_per_million,
            )?,
            output: per_million_to_pico(
                &format!("{key}.output_per_million"),
                self.output_per_million,
            )?,
            cached_input: self
                .cached_input_per_million
                .map(|v| per_million_to_pico(&format!("{key}.cached_input_per_million"), v))
                .transpose()?,
            cache_write: self
                .cache_write_per_million
                .map(|v| per_million_to_pico(&format!("{key}.cache_write_per_million"), v))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn formats_dollars() {
        assert_eq!(format_usd(0), "$0.000000");
        assert_eq!(format_usd(150), "$0.000000");
        assert_eq!(format_usd(1_500), "$0.000002");
        assert_eq!(format_usd(1_234_567_890), "$1.234568");
        assert_eq!(format_usd(123_456_789_012), "$123.46");
        assert_eq!(format_usd(-2_000_000_000), "-$2.000000");
        assert!((nanos_to_usd(1_234_567_890) - 1.234_567_89).abs() < 1e-12);
    }

    #[test]
    fn config_prices_convert_exactly() {
        let raw = RawPrice {
            input_per_million: 2.5,
            output_per_million: 10.0,
            cached_input_per_million: Some(1.25),
            cache_write_per_million: None,
            effective: None,
        };
        let price = raw.validate("analytics.prices.x").unwrap();
        assert_eq!(price.input, 2_500_000);
        assert_eq!(price.output, 10_000_000);
        assert_eq!(price.cached_input, Some(1_250_000));
        let bad = RawPrice {
            input_per_million: -1.0,
            ..raw
        };
        let err = bad.validate("analytics.prices.\"a/b\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("analytics.prices.\"a/b\".input_per_million"),
            "{err}"
        );
    }
}
