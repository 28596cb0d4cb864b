//! Cost and performance analytics for DSPex: what every LM call cost, how long
//! it took, and spend limits.
//!
//! - [`prices`]: a bundled price table (OpenAI, Anthropic, Gemini, Mistral,
//!   DeepSeek, Groq, Together, xAI; input, output, cached-input and
//!   cache-write prices with an effective date) plus overrides from
//!   `dspex.toml`. Costs are exact integers (nano-USD); a model with no price
//!   is recorded *unpriced*, never at zero.
//! - [`Recorder`]: subscribes losslessly to the client's event bus and writes
//!   one row per call (success or failure) in batches, off the call path.
//! - [`Store`]: SQLite in a file (default) or PostgreSQL, with the same
//!   `calls` table holding raw token counts, so history can be
//!   [re-priced](Store::reprice).
//! - [`Store::get_cost_analysis`]: requests, errors, tokens, cost, cache
//!   savings and exact latency p50/p95/p99 over a [`TimeRange`], grouped by any
//!   [`GroupBy`] dimensions; [`report`] renders it.
//! - [`budget`]: hard and soft spend limits per provider, model or tag, per
//!   day, month or run, checked before calls and settled after them.
//! - [`keys`]: virtual API keys for the gateway, stored hashed (SHA-256)
//!   in the same store.
//! - [`config`]: the `[analytics]` section of `dspex.toml` ([`CONFIG_KEYS`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use dspex_analytics::{GroupBy, PriceTable, Recorder, RecorderOptions, Store, TimeRange};
//! use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("openai", ScriptedLm::replies(["Paris"])).await?;
//! let store = Store::open(":memory:", None).await?;
//! let recorder = Recorder::attach(
//!     client.events(),
//!     store.clone(),
//!     Arc::new(PriceTable::bundled()?),
//!     RecorderOptions::default(),
//! );
//! client
//!     .request("openai", vec![Message::user("Capital of France?")], RequestOptions::new().model("gpt-4o-mini"))
//!     .await?;
//! recorder.shutdown().await?;
//!
//! let rows = store.get_cost_analysis(TimeRange::parse("24h")?, &[GroupBy::Provider, GroupBy::Model]).await?;
//! assert_eq!(rows[0].group, vec![Some("openai".to_owned()), Some("gpt-4o-mini".to_owned())]);
//! assert_eq!(rows[0].requests, 1);
//! assert!(rows[0].cost_nanos > 0);
//! # Ok(()) }
//! ```

pub mod analysis;
pub mod budget;
pub mod config;
mod error;
mod histogram;
pub mod keys;
pub mod prices;
pub mod record;
mod recorder;
pub mod report;
pub mod store;
pub mod time;
pub mod wal;

pub use analysis::{CostRow, GroupBy};
pub use budget::{Budget, BudgetDecision, BudgetEvent, BudgetPeriod, BudgetScope, Budgets};
pub use config::{AnalyticsConfig, CONFIG_KEYS, Durability};
pub use error::{AnalyticsError, Result};
pub use keys::{ApiKey, KeyLimits, KeySecret, KeyState};
pub use prices::{Price, PriceTable, TokenUsage};
pub use record::CallRecord;
pub use recorder::{Recorder, RecorderHandle, RecorderOptions, RecorderStats};
pub use store::{CallSink, PostgresStore, RepriceReport, SpendFilter, SqliteStore, Store};
pub use time::TimeRange;
pub use wal::{Journal, JournalStats};
