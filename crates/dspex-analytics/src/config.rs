//! The `[analytics]` section of `dspex.toml`: raw serde structs (phase one)
//! and the validated [`AnalyticsConfig`] (phase two).
//!
//! ```toml
//! [analytics]
//! enabled = true
//! store = "dspex-analytics.sqlite"      # a SQLite file (default), or "postgres://user@host/db"
//! schema = "dspex"                      # PostgreSQL only: the schema for the tables
//! batch_size = 1000                     # rows per transaction
//! flush_interval_ms = 50                # longest wait before a partial batch is written
//! max_pending = 10000                   # events waiting before new calls wait for the writer
//! durability = "batched"                # or "wal": no completed call lost to a crash (below)
//! journal_dir = "dspex-analytics.sqlite.journal"   # "wal" only; default: the store's path + ".journal"
//!
//! [analytics.prices."openai/gpt-4o"]    # overrides and additions to the bundled table
//! input_per_million = 2.5
//! output_per_million = 10.0
//! cached_input_per_million = 1.25
//! effective = "2026-01-01"
//!
//! [[analytics.budgets]]
//! name = "openai-daily"
//! provider = "openai"
//! period = "day"
//! limit_usd = 25.0
//! warn_at = 0.8
//! ```
//!
//! `durability = "batched"` writes rows in batches off the call path; a crash
//! (kill -9, power loss) loses the calls not yet written: at most one batch
//! plus what completed in the last `flush_interval_ms`. `"wal"` appends each
//! completed call to a journal file and syncs it (grouped: one `fdatasync`
//! covers every call that completed during the previous one) before the call
//! returns; the next start replays it into the store.
//!
//! Environment overrides follow the core rules:
//! `DSPEX_ANALYTICS__STORE=postgres://...`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dspex_core::CoreError;
use dspex_core::config::ConfigLoader;
use serde::{Deserialize, Serialize};

use crate::budget::{Budget, Budgets, RawBudget};
use crate::error::{AnalyticsError, Result};
use crate::prices::{PriceTable, RawPrice};
use crate::recorder::RecorderOptions;

/// The top-level keys this crate reads from `dspex.toml`.
pub const CONFIG_KEYS: &[&str] = &["analytics"];

/// The default store: a SQLite file in the working directory.
pub const DEFAULT_STORE: &str = "dspex-analytics.sqlite";

/// Raw `[analytics]` table, as written.
#[derive(Clone, Default, Deserialize)]
pub struct RawAnalyticsConfig {
    /// Record calls at all.
    pub enabled: Option<bool>,
    /// A SQLite path or `postgres://` URL.
    pub store: Option<String>,
    /// The PostgreSQL schema.
    pub schema: Option<String>,
    /// Rows per transaction.
    pub batch_size: Option<usize>,
    /// Longest wait before a partial batch is written, in ms.
    pub flush_interval_ms: Option<u64>,
    /// Events waiting to be written before new calls wait for the writer.
    pub max_pending: Option<usize>,
    /// `batched` (default) or `wal`.
    pub durability: Option<String>,
    /// Where `wal` keeps its journal.
    pub journal_dir: Option<PathBuf>,
    /// Price overrides by `provider/model`.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    /// Budgets.
    #[serde(default)]
    pub budgets: Vec<RawBudget>,
}

impl std::fmt::Debug for RawAnalyticsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAnalyticsConfig")
            .field("enabled", &self.enabled)
            .field(
                "store",
                &self
                    .store
                    .as_deref()
                    .map(dspex_client::config::redacted_url),
            )
            .field("schema", &self.schema)
            .field("prices", &self.prices.keys().collect::<Vec<_>>())
            .field("budgets", &self.budgets.len())
            .finish_non_exhaustive()
    }
}

impl RawAnalyticsConfig {
    /// Reads this crate's keys from a loaded config.
    pub fn from_loader(loader: &ConfigLoader) -> Result<Self> {
        Ok(loader.section("analytics")?.unwrap_or_default())
    }
}

/// What a crash may lose of the calls recorded (`[analytics] durability`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Durability {
    /// Rows written in batches off the call path: a crash loses at most one
    /// batch plus what completed in the last flush interval.
    Batched,
    /// Each completed call journaled (and synced) before it returns; the
    /// journal is replayed at the next start. A crash loses no call that
    /// returned.
    Wal {
        /// The journal's folder (one subfolder per process).
        journal_dir: PathBuf,
    },
}

/// The journal folder used when `journal_dir` is not set: next to a SQLite
/// store, or `.dspex/analytics-journal` for PostgreSQL.
pub fn default_journal_dir(store: &str) -> PathBuf {
    if store.starts_with("postgres://") || store.starts_with("postgresql://") || store == ":memory:"
    {
        PathBuf::from(".dspex/analytics-journal")
    } else {
        PathBuf::from(format!("{store}.journal"))
    }
}

/// The validated analytics configuration.
#[derive(Clone, Serialize)]
#[non_exhaustive]
pub struct AnalyticsConfig {
    /// Whether to record calls.
    pub enabled: bool,
    /// A SQLite path or `postgres://` URL (printed without credentials).
    #[serde(serialize_with = "redact")]
    pub store: String,
    /// The PostgreSQL schema.
    pub schema: Option<String>,
    /// Batching and retries.
    pub recorder: RecorderOptions,
    /// What a crash may lose.
    pub durability: Durability,
    /// The bundled prices with the overrides applied.
    #[serde(skip)]
    pub prices: Arc<PriceTable>,
    /// The budgets.
    pub budgets: Vec<Budget>,
}

fn redact<S: serde::Serializer>(url: &str, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&dspex_client::config::redacted_url(url))
}

impl std::fmt::Debug for AnalyticsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnalyticsConfig")
            .field("enabled", &self.enabled)
            .field("store", &dspex_client::config::redacted_url(&self.store))
            .field("schema", &self.schema)
            .field("recorder", &self.recorder)
            .field("durability", &self.durability)
            .field("prices", &self.prices)
            .field("budgets", &self.budgets)
            .finish()
    }
}

impl AnalyticsConfig {
    /// Reads and validates the `[analytics]` section (defaults when absent).
    pub fn load(loader: &ConfigLoader) -> Result<Self> {
        Self::validate(&RawAnalyticsConfig::from_loader(loader)?)
    }

    /// Phase two: checks every value; errors name the key.
    pub fn validate(raw: &RawAnalyticsConfig) -> Result<Self> {
        let config =
            |key: &str, message: String| AnalyticsError::Config(CoreError::config(key, message));
        let store = raw
            .store
            .clone()
            .unwrap_or_else(|| DEFAULT_STORE.to_owned());
        if store.trim().is_empty() {
            return Err(config(
                "analytics.store",
                "empty: give a SQLite path or a postgres:// URL".to_owned(),
            ));
        }
        let defaults = RecorderOptions::default();
        let batch_size = raw.batch_size.unwrap_or(defaults.batch_size);
        if !(1..=10_000).contains(&batch_size) {
            return Err(config(
                "analytics.batch_size",
                format!("{batch_size} is out of range (1 to 10000)"),
            ));
        }
        let flush_interval = raw
            .flush_interval_ms
            .map_or(defaults.flush_interval, Duration::from_millis);
        if flush_interval.is_zero() {
            return Err(config(
                "analytics.flush_interval_ms",
                "must be more than 0".to_owned(),
            ));
        }
        let max_pending = raw.max_pending.unwrap_or(defaults.max_pending);
        if max_pending < batch_size {
            return Err(config(
                "analytics.max_pending",
                format!("{max_pending} is less than batch_size ({batch_size})"),
            ));
        }
        let durability = match raw.durability.as_deref().unwrap_or("batched") {
            "batched" => {
                if raw.journal_dir.is_some() {
                    return Err(config(
                        "analytics.journal_dir",
                        "is used only with durability = \"wal\"".to_owned(),
                    ));
                }
                Durability::Batched
            }
            "wal" => Durability::Wal {
                journal_dir: raw
                    .journal_dir
                    .clone()
                    .unwrap_or_else(|| default_journal_dir(&store)),
            },
            other => {
                return Err(config(
                    "analytics.durability",
                    format!("unknown mode `{other}` (expected \"batched\" or \"wal\")"),
                ));
            }
        };
        let mut prices = PriceTable::bundled()?;
        for (key, price) in &raw.prices {
            let path = format!("analytics.prices.\"{key}\"");
            let validated = price.validate(&path)?;
            prices
                .insert(key, validated, price.effective.as_deref())
                .map_err(|e| match e {
                    AnalyticsError::Prices { message, .. } => config(&path, message),
                    other => other,
                })?;
        }
        let mut budgets = Vec::with_capacity(raw.budgets.len());
        for (index, budget) in raw.budgets.iter().enumerate() {
            let validated = budget.validate(&format!("analytics.budgets[{index}]"))?;
            if budgets.iter().any(|b: &Budget| b.name == validated.name) {
                return Err(config(
                    &format!("analytics.budgets[{index}].name"),
                    format!("a budget named `{}` already exists", validated.name),
                ));
            }
            budgets.push(validated);
        }
        Ok(Self {
            enabled: raw.enabled.unwrap_or(true),
            store,
            schema: raw.schema.clone(),
            recorder: RecorderOptions {
                batch_size,
                flush_interval,
                max_pending,
                ..defaults
            },
            durability,
            prices: Arc::new(prices),
            budgets,
        })
    }

    /// The configured budgets, ready to check calls.
    pub fn budgets(&self) -> Budgets {
        Budgets::new(self.budgets.clone(), Arc::clone(&self.prices))
    }
}
