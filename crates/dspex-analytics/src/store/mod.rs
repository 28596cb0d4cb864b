//! Where rows go: SQLite (embedded default) or PostgreSQL (shared), with the
//! same `calls` table in both.
//!
//! The table holds one row per LM call with its raw token counts (input,
//! output, cached input, cache write, and what a cache hit saved), so costs can
//! be recomputed when prices change ([`Store::reprice`]). `cost_nanos` and
//! `saved_cost_nanos` are NULL for an unpriced model, and `price_version`
//! names the price used (`bundled@2026-11-24`). `at_ms` (Unix ms) is indexed.
//!
//! SQLite also keeps `call_rollups`: per UTC hour and per combination of every
//! dimension (provider, model, operation, status, error kind, cache tier,
//! workflow, step, tags), the sums of a row plus a latency histogram, updated
//! in the same transaction as the rows (and rebuilt by re-pricing). An
//! analysis whose whole hours cover more than
//! [`SqliteStore::with_exact_limit`] calls (default [`DEFAULT_EXACT_LIMIT`])
//! reads the rollups for those hours and the raw rows for the partial hours
//! at either end: sums stay exact, latency percentiles are within 1%. Smaller
//! ranges are analysed from the raw rows with exact percentiles. PostgreSQL
//! keeps the same rollups (the histogram merged under the row lock of the
//! upsert) and answers the same way; its exact path uses `percentile_cont`.
//!
//! Both stores apply the same numbered schema migrations when they open
//! (`dspex_schema_migrations`), under a lock that makes concurrent openers
//! wait (see `migrate.rs`); the SQL text of every query is written once, with
//! a dialect switch (`query.rs`).
//!
//! PostgreSQL connects with TLS as the URL's `sslmode` says: `disable`,
//! `prefer` (the default: TLS when offered, certificate not checked),
//! `require` (TLS, certificate not checked), `verify-ca` (chain checked
//! against `sslrootcert=<PEM file>` or the platform roots), `verify-full`
//! (chain and host name); `sslrootcert=system` uses the platform roots and
//! implies `verify-full`. A certificate failure is a non-retryable
//! [`AnalyticsError::Store`] whose message names the cause (host-name
//! mismatch, unknown issuer); a bad `sslmode` or unreadable `sslrootcert` is
//! an [`AnalyticsError::Config`] naming `analytics.store`.

mod keys;
mod migrate;
mod pg_tls;
mod postgres;
mod query;
mod sqlite;

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

pub use pg_tls::SslMode;
pub use postgres::PostgresStore;
pub use sqlite::{DEFAULT_EXACT_LIMIT, SqliteStore};

use crate::analysis::{CostRow, GroupBy};
use crate::error::{AnalyticsError, Result};
use crate::prices::PriceTable;
use crate::record::CallRecord;
use crate::time::TimeRange;

pub(crate) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Where the [`Recorder`](crate::Recorder) writes batches. [`Store`]
/// implements it; tests wrap it to simulate a slow or failing store.
pub trait CallSink: Send + Sync + 'static {
    /// Writes `rows` atomically (all or none).
    fn write(&self, rows: Arc<Vec<CallRecord>>) -> impl Future<Output = Result<()>> + Send;
}

/// What [`Store::reprice`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepriceReport {
    /// Rows looked at.
    pub rows: u64,
    /// Rows now priced.
    pub priced: u64,
    /// Rows whose model has no price in the new table.
    pub unpriced: u64,
}

impl RepriceReport {
    pub(crate) fn count(&mut self, priced: bool) {
        self.rows += 1;
        if priced {
            self.priced += 1;
        } else {
            self.unpriced += 1;
        }
    }
}

/// Which calls a spend total covers: all of these that are set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpendFilter {
    /// The provider id.
    pub provider: Option<String>,
    /// The requested model.
    pub model: Option<String>,
    /// A tag `(key, value)`; `workflow` and `step` match their own columns.
    pub tag: Option<(String, String)>,
}

/// A store: SQLite or PostgreSQL. Cloning shares the connection.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite (a file, or in memory).
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the store a location names: `postgres://...` or
    /// `postgresql://...` (tables in `schema` when given, created if needed),
    /// `sqlite://PATH`, `sqlite::memory:` or `:memory:`, or a plain file path
    /// for SQLite.
    pub async fn open(location: &str, schema: Option<&str>) -> Result<Self> {
        let location = location.trim();
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            return Ok(Self::Postgres(
                PostgresStore::connect(location, schema).await?,
            ));
        }
        let path = location
            .strip_prefix("sqlite://")
            .or_else(|| location.strip_prefix("sqlite:"))
            .unwrap_or(location);
        if path == ":memory:" {
            return Ok(Self::Sqlite(SqliteStore::in_memory()?));
        }
        if path.is_empty() {
            return Err(AnalyticsError::Store {
                backend: "sqlite",
                message: "empty database path".to_owned(),
                retryable: false,
            });
        }
        let path = path.to_owned();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(path))
            .await
            .map_err(|e| AnalyticsError::Store {
                backend: "sqlite",
                message: e.to_string(),
                retryable: false,
            })??;
        Ok(Self::Sqlite(store))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// The schema version: the newest migration applied.
    pub async fn schema_version(&self) -> Result<i64> {
        match self {
            Self::Sqlite(s) => s.schema_version().await,
            Self::Postgres(s) => s.schema_version().await,
        }
    }

    /// Inserts `rows` in one transaction.
    pub async fn insert(&self, rows: Arc<Vec<CallRecord>>) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.insert(rows).await,
            Self::Postgres(s) => s.insert(rows).await,
        }
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64> {
        match self {
            Self::Sqlite(s) => s.count().await,
            Self::Postgres(s) => s.count().await,
        }
    }

    /// Every row in `range`, oldest first (for exports and tests; an analysis
    /// should use [`Store::get_cost_analysis`]).
    pub async fn rows(&self, range: TimeRange) -> Result<Vec<CallRecord>> {
        let (from, until) = range.resolve(std::time::SystemTime::now());
        match self {
            Self::Sqlite(s) => s.rows(from, until).await,
            Self::Postgres(s) => s.rows(from, until).await,
        }
    }

    /// The newest `limit` failed calls in `[from_ms, until_ms)`, newest
    /// first (the gateway dashboard's recent errors).
    pub async fn recent_failures(
        &self,
        from_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<CallRecord>> {
        match self {
            Self::Sqlite(s) => s.recent_failures(from_ms, until_ms, limit).await,
            Self::Postgres(s) => s.recent_failures(from_ms, until_ms, limit).await,
        }
    }

    /// Costs, tokens, errors, cache savings and latency percentiles of the
    /// calls in `range`, grouped by `group_by` (all calls in one row when
    /// empty), ordered by the group values.
    pub async fn get_cost_analysis(
        &self,
        range: TimeRange,
        group_by: &[GroupBy],
    ) -> Result<Vec<CostRow>> {
        let (from, until) = range.resolve(std::time::SystemTime::now());
        self.cost_analysis_between(from, until, group_by).await
    }

    /// [`Store::get_cost_analysis`] over `[from_ms, until_ms)`.
    pub async fn cost_analysis_between(
        &self,
        from_ms: i64,
        until_ms: i64,
        group_by: &[GroupBy],
    ) -> Result<Vec<CostRow>> {
        match self {
            Self::Sqlite(s) => s.cost_analysis(from_ms, until_ms, group_by).await,
            Self::Postgres(s) => s.cost_analysis(from_ms, until_ms, group_by).await,
        }
    }

    /// The cost (nano-USD) of the priced calls matching `filter` in
    /// `[from_ms, until_ms)`: what budgets are primed with.
    pub async fn spent(&self, filter: &SpendFilter, from_ms: i64, until_ms: i64) -> Result<i64> {
        match self {
            Self::Sqlite(s) => s.spent(filter, from_ms, until_ms).await,
            Self::Postgres(s) => s.spent(filter, from_ms, until_ms).await,
        }
    }

    /// Recomputes every row's cost (and cache savings) from its raw tokens
    /// with `prices`, in one transaction.
    pub async fn reprice(&self, prices: Arc<PriceTable>) -> Result<RepriceReport> {
        match self {
            Self::Sqlite(s) => s.reprice(prices).await,
            Self::Postgres(s) => s.reprice(prices).await,
        }
    }
}

impl CallSink for Store {
    fn write(&self, rows: Arc<Vec<CallRecord>>) -> impl Future<Output = Result<()>> + Send {
        self.insert(rows)
    }
}
