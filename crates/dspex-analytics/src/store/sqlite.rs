//! The embedded store: SQLite in a file (WAL mode), or in memory for tests.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::{Connection, OptionalExtension, params};

use crate::analysis::{
    CostRow, Dialect, GroupBy, PERCENTILES, RawGroupValue, Source, Sums, build_query, group_exprs,
    latency_percentiles, make_row,
};
use crate::error::{AnalyticsError, Result};
use crate::histogram::Histogram;
use crate::prices::{PriceTable, TokenUsage};
use crate::record::CallRecord;
use crate::store::{INSERT_COLUMNS, RepriceReport, SpendFilter, i64_of};
use crate::time::HOUR_MS;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    correlation_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    response_model TEXT,
    operation TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_nanos INTEGER,
    price_version TEXT,
    latency_us INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    error_kind TEXT,
    http_status INTEGER,
    cache_tier TEXT,
    saved_input_tokens INTEGER NOT NULL,
    saved_output_tokens INTEGER NOT NULL,
    saved_cached_input_tokens INTEGER NOT NULL,
    saved_cache_write_tokens INTEGER NOT NULL,
    saved_cost_nanos INTEGER,
    workflow TEXT,
    step TEXT,
    tags TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_at_ms ON calls (at_ms);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    budget_nanos INTEGER,
    budget_period TEXT,
    rpm INTEGER,
    tpm INTEGER,
    models TEXT NOT NULL,
    expires_ms INTEGER
);
CREATE TABLE IF NOT EXISTS call_rollups (
    hour_ms INTEGER NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    error_kind TEXT NOT NULL,
    cache_tier TEXT NOT NULL,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    tags TEXT NOT NULL,
    requests INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_nanos INTEGER NOT NULL,
    unpriced INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    saved_cost_nanos INTEGER NOT NULL,
    latency_hist BLOB NOT NULL,
    PRIMARY KEY (hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, tags)
);
";

/// Ranges covering more calls than this (in whole hours) are analysed from the
/// hourly rollups; smaller ones from the raw rows, with exact percentiles.
pub const DEFAULT_EXACT_LIMIT: u64 = 50_000;

const UPSERT_ROLLUP: &str = "INSERT INTO call_rollups (hour_ms, provider, model, operation, status, error_kind, \
     cache_tier, workflow, step, tags, requests, failed, cancelled, input_tokens, output_tokens, cached_input_tokens, \
     cache_write_tokens, cost_nanos, unpriced, cache_hits, saved_cost_nanos, latency_hist) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22) \
     ON CONFLICT (hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, tags) DO UPDATE SET \
     requests = requests + excluded.requests, failed = failed + excluded.failed, \
     cancelled = cancelled + excluded.cancelled, input_tokens = input_tokens + excluded.input_tokens, \
     output_tokens = output_tokens + excluded.output_tokens, \
     cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens, \
     cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, \
     cost_nanos = cost_nanos + excluded.cost_nanos, unpriced = unpriced + excluded.unpriced, \
     cache_hits = cache_hits + excluded.cache_hits, saved_cost_nanos = saved_cost_nanos + excluded.saved_cost_nanos, \
     latency_hist = dspex_hist_merge(latency_hist, excluded.latency_hist)";

/// One rollup's key: the hour and every dimension (`''` for none), borrowed
/// from the batch's rows.
type RollupKey<'r> = (i64, [&'r str; 9]);

/// Sums in the order of [`Sums::values`], and the latency histogram.
#[derive(Default)]
struct Acc {
    values: [i64; 11],
    hist: Histogram,
}

impl Acc {
    /// Adds one call.
    #[allow(clippy::too_many_arguments)]
    fn add_call(
        &mut self,
        status: &str,
        usage: [i64; 4],
        cost: Option<i64>,
        hit: bool,
        saved: Option<i64>,
        latency_us: i64,
    ) {
        let v = &mut self.values;
        let add = |slot: &mut i64, n: i64| *slot = slot.saturating_add(n);
        let [input, output, cached, write] = usage;
        let cells: [i64; 11] = [
            1,
            i64::from(status == "failed"),
            i64::from(status == "cancelled"),
            input,
            output,
            cached,
            write,
            cost.unwrap_or(0),
            i64::from(cost.is_none()),
            i64::from(hit),
            saved.unwrap_or(0),
        ];
        for (slot, n) in v.iter_mut().zip(cells) {
            add(slot, n);
        }
        self.hist.record(latency_us);
    }
}

fn rollup_key(r: &CallRecord) -> RollupKey<'_> {
    fn opt(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }
    (
        r.at_ms.div_euclid(HOUR_MS) * HOUR_MS,
        [
            &r.provider,
            &r.model,
            &r.operation,
            &r.status,
            opt(&r.error_kind),
            opt(&r.cache_tier),
            opt(&r.workflow),
            opt(&r.step),
            &r.tags,
        ],
    )
}

fn upsert_rollups(tx: &rusqlite::Transaction<'_>, rows: &[CallRecord]) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let mut groups: HashMap<RollupKey<'_>, Acc> = HashMap::new();
    for r in rows {
        groups.entry(rollup_key(r)).or_default().add_call(
            &r.status,
            [
                i64_of(r.usage.input),
                i64_of(r.usage.output),
                i64_of(r.usage.cached_input),
                i64_of(r.usage.cache_write),
            ],
            r.cost_nanos,
            r.cache_tier.is_some(),
            r.saved_cost_nanos,
            r.latency_us,
        );
    }
    let mut stmt = tx.prepare_cached(UPSERT_ROLLUP).map_err(sql)?;
    for ((hour, dims), acc) in groups {
        let [
            provider,
            model,
            operation,
            status,
            error_kind,
            cache_tier,
            workflow,
            step,
            tags,
        ] = dims;
        let v = acc.values;
        stmt.execute(params![
            hour,
            provider,
            model,
            operation,
            status,
            error_kind,
            cache_tier,
            workflow,
            step,
            tags,
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            v[8],
            v[9],
            v[10],
            acc.hist.encode()
        ])
        .map_err(sql)?;
    }
    Ok(())
}

/// Rebuilds every rollup from the raw rows (after re-pricing, or for a
/// database written before rollups existed).
fn rebuild_rollups(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    tx.execute("DELETE FROM call_rollups", []).map_err(sql)?;
    let mut stmt = tx
        .prepare(&format!("SELECT {INSERT_COLUMNS} FROM calls ORDER BY id"))
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut batch = Vec::with_capacity(10_000);
    while let Some(row) = rows.next().map_err(sql)? {
        batch.push(row_to_record(row).map_err(sql)?);
        if batch.len() == 10_000 {
            upsert_rollups(tx, &batch)?;
            batch.clear();
        }
    }
    upsert_rollups(tx, &batch)
}

/// Exact p50/p95/p99 of a group's latencies, as `p50,p95,p99` text.
struct LatencyPercentiles;

impl Aggregate<Vec<i64>, Option<String>> for LatencyPercentiles {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Vec<i64>> {
        Ok(Vec::new())
    }

    fn step(&self, ctx: &mut Context<'_>, values: &mut Vec<i64>) -> rusqlite::Result<()> {
        if let Some(value) = ctx.get::<Option<i64>>(0)? {
            values.push(value);
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        values: Option<Vec<i64>>,
    ) -> rusqlite::Result<Option<String>> {
        let Some(mut values) = values else {
            return Ok(None);
        };
        Ok(latency_percentiles(&mut values).map(|[a, b, c]| format!("{a},{b},{c}")))
    }
}

fn hist_merge(ctx: &Context<'_>) -> rusqlite::Result<Vec<u8>> {
    let mut merged = Histogram::decode(ctx.get_raw(0).as_blob().unwrap_or_default());
    merged.merge(&Histogram::decode(
        ctx.get_raw(1).as_blob().unwrap_or_default(),
    ));
    Ok(merged.encode())
}

fn parse_percentiles(text: Option<&str>) -> Option<[f64; 3]> {
    let mut parts = text?.split(',').map(|p| p.parse::<f64>().ok());
    Some([parts.next()??, parts.next()??, parts.next()??])
}

fn open_connection(location: Option<&Path>) -> Result<Connection> {
    let conn = match location {
        Some(path) => Connection::open(path),
        None => Connection::open_in_memory(),
    }
    .map_err(|e| AnalyticsError::sqlite(&e))?;
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(sql)?;
    if location.is_some() {
        // WAL: readers (analyses) do not block the writer, and a commit is one
        // append; NORMAL sync is durable across process crashes.
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
    }
    conn.create_aggregate_function(
        "dspex_latency_percentiles",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        LatencyPercentiles,
    )
    .map_err(sql)?;
    conn.create_scalar_function(
        "dspex_hist_merge",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        hist_merge,
    )
    .map_err(sql)?;
    Ok(conn)
}

/// SQLite in a file (or in memory). Cloning shares the connection.
#[derive(Clone)]
pub struct SqliteStore {
    path: Option<PathBuf>,
    writer: Arc<Mutex<Connection>>,
    exact_limit: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| AnalyticsError::Store {
                backend: "sqlite",
                message: format!("cannot create {}: {e}", parent.display()),
                retryable: false,
            })?;
        }
        Self::with_connection(Some(path))
    }

    /// A private in-memory database (for tests and one-off analyses).
    pub fn in_memory() -> Result<Self> {
        Self::with_connection(None)
    }

    fn with_connection(path: Option<PathBuf>) -> Result<Self> {
        let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
        let mut conn = open_connection(path.as_deref())?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // A database written before rollups existed: build them once.
        let missing: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM calls) AND NOT EXISTS (SELECT 1 FROM call_rollups)",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if missing {
            let tx = conn.transaction().map_err(sql)?;
            rebuild_rollups(&tx)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Self {
            path,
            writer: Arc::new(Mutex::new(conn)),
            exact_limit: DEFAULT_EXACT_LIMIT,
        })
    }

    /// Sets the number of calls above which analyses read the hourly rollups
    /// (exact sums, percentiles within 1%) instead of the raw rows (exact
    /// percentiles). Default [`DEFAULT_EXACT_LIMIT`].
    #[must_use]
    pub fn with_exact_limit(mut self, calls: u64) -> Self {
        self.exact_limit = calls;
        self
    }

    /// The database file, if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on a connection for reading, on a blocking thread: a fresh one
    /// for a file (WAL lets it read while the writer writes), the only one in
    /// memory.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path.clone();
        let writer = Arc::clone(&self.writer);
        blocking(move || match path {
            Some(path) => f(&open_connection(Some(&path))?),
            None => f(&writer.lock()),
        })
        .await
    }

    pub(super) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = Arc::clone(&self.writer);
        blocking(move || f(&mut writer.lock())).await
    }

    /// Inserts `rows` in one transaction.
    pub async fn insert(&self, rows: Arc<Vec<CallRecord>>) -> Result<()> {
        self.write(move |conn| insert_rows(conn, &rows)).await
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
                .map_err(|e| AnalyticsError::sqlite(&e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Every row in `[from_ms, until_ms)`, oldest first.
    pub async fn rows(&self, from_ms: i64, until_ms: i64) -> Result<Vec<CallRecord>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {INSERT_COLUMNS} FROM calls WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms, id"
            );
            let mut stmt = conn.prepare(&sql).map_err(|e| AnalyticsError::sqlite(&e))?;
            let rows = stmt
                .query_map(params![from_ms, until_ms], row_to_record)
                .map_err(|e| AnalyticsError::sqlite(&e))?;
            rows.map(|r| r.map_err(|e| AnalyticsError::sqlite(&e))).collect()
        })
        .await
    }

    /// The newest `limit` failed calls in `[from_ms, until_ms)`, newest
    /// first.
    pub async fn recent_failures(
        &self,
        from_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<CallRecord>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {INSERT_COLUMNS} FROM calls WHERE at_ms >= ?1 AND at_ms < ?2 \
                 AND status = 'failed' ORDER BY at_ms DESC, id DESC LIMIT ?3"
            );
            let mut stmt = conn.prepare(&sql).map_err(|e| AnalyticsError::sqlite(&e))?;
            let rows = stmt
                .query_map(params![from_ms, until_ms, limit], row_to_record)
                .map_err(|e| AnalyticsError::sqlite(&e))?;
            rows.map(|r| r.map_err(|e| AnalyticsError::sqlite(&e)))
                .collect()
        })
        .await
    }

    /// The cost analysis over `[from_ms, until_ms)`.
    pub async fn cost_analysis(
        &self,
        from_ms: i64,
        until_ms: i64,
        group_by: &[GroupBy],
    ) -> Result<Vec<CostRow>> {
        let group_by = group_by.to_vec();
        let limit = self.exact_limit;
        self.read(move |conn| analyse(conn, from_ms, until_ms, &group_by, limit))
            .await
    }

    /// The cost of the priced calls matching `filter` in `[from_ms, until_ms)`.
    pub async fn spent(&self, filter: &SpendFilter, from_ms: i64, until_ms: i64) -> Result<i64> {
        let filter = filter.clone();
        self.read(move |conn| {
            let (clause, values) = filter.sql(Dialect::Sqlite, 3);
            let sql = format!(
                "SELECT COALESCE(SUM(cost_nanos), 0) FROM calls WHERE at_ms >= ?1 AND at_ms < ?2{clause}"
            );
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&from_ms, &until_ms];
            for value in &values {
                params.push(value);
            }
            conn.query_row(&sql, params.as_slice(), |r| r.get(0))
                .map_err(|e| AnalyticsError::sqlite(&e))
        })
        .await
    }

    /// Recomputes every row's cost from its raw tokens with `prices`.
    pub async fn reprice(&self, prices: Arc<PriceTable>) -> Result<RepriceReport> {
        self.write(move |conn| {
            let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
            let tx = conn.transaction().map_err(sql)?;
            let mut report = RepriceReport::default();
            {
                let mut select = tx
                    .prepare(
                        "SELECT id, at_ms, provider, model, response_model, input_tokens, output_tokens, \
                         cached_input_tokens, cache_write_tokens, cache_tier, saved_input_tokens, \
                         saved_output_tokens, saved_cached_input_tokens, saved_cache_write_tokens FROM calls",
                    )
                    .map_err(sql)?;
                let mut update = tx
                    .prepare(
                        "UPDATE calls SET cost_nanos = ?2, price_version = ?3, saved_cost_nanos = ?4 WHERE id = ?1",
                    )
                    .map_err(sql)?;
                let mut rows = select.query([]).map_err(sql)?;
                while let Some(row) = rows.next().map_err(sql)? {
                    let id: i64 = row.get(0).map_err(sql)?;
                    let at_ms: i64 = row.get(1).map_err(sql)?;
                    let provider: String = row.get(2).map_err(sql)?;
                    let model: String = row.get(3).map_err(sql)?;
                    let response_model: Option<String> = row.get(4).map_err(sql)?;
                    let usage = usage_at(row, 5).map_err(sql)?;
                    let tier: Option<String> = row.get(9).map_err(sql)?;
                    let saved = usage_at(row, 10).map_err(sql)?;
                    let cost = prices.cost(&provider, &model, response_model.as_deref(), at_ms, &usage);
                    let saved_cost = tier
                        .and_then(|_| prices.cost(&provider, &model, response_model.as_deref(), at_ms, &saved))
                        .map(|c| c.nanos);
                    report.count(cost.is_some());
                    update
                        .execute(params![
                            id,
                            cost.as_ref().map(|c| c.nanos),
                            cost.as_ref().map(|c| c.version.as_str()),
                            saved_cost
                        ])
                        .map_err(sql)?;
                }
            }
            rebuild_rollups(&tx)?;
            tx.commit().map_err(sql)?;
            Ok(report)
        })
        .await
    }

    /// The newest row's time, if any.
    pub async fn latest_ms(&self) -> Result<Option<i64>> {
        self.read(|conn| {
            conn.query_row("SELECT MAX(at_ms) FROM calls", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(|e| AnalyticsError::sqlite(&e))
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AnalyticsError::Store {
            backend: "sqlite",
            message: format!("the database thread failed: {e}"),
            retryable: false,
        })?
}

fn usage_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TokenUsage> {
    let get = |i: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(i)?).unwrap_or(0))
    };
    Ok(TokenUsage {
        input: get(first)?,
        output: get(first + 1)?,
        cached_input: get(first + 2)?,
        cache_write: get(first + 3)?,
    })
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallRecord> {
    Ok(CallRecord {
        at_ms: row.get(0)?,
        correlation_id: row.get(1)?,
        provider: row.get(2)?,
        model: row.get(3)?,
        response_model: row.get(4)?,
        operation: row.get(5)?,
        usage: usage_at(row, 6)?,
        cost_nanos: row.get(10)?,
        price_version: row.get(11)?,
        latency_us: row.get(12)?,
        attempts: row.get(13)?,
        status: row.get(14)?,
        error_kind: row.get(15)?,
        http_status: row.get(16)?,
        cache_tier: row.get(17)?,
        saved_usage: usage_at(row, 18)?,
        saved_cost_nanos: row.get(22)?,
        workflow: row.get(23)?,
        step: row.get(24)?,
        tags: row.get(25)?,
    })
}

fn insert_rows(conn: &mut Connection, rows: &[CallRecord]) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let tx = conn.transaction().map_err(sql)?;
    {
        let placeholders: Vec<String> = (1..=26).map(|i| format!("?{i}")).collect();
        let mut stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO calls ({INSERT_COLUMNS}) VALUES ({})",
                placeholders.join(", ")
            ))
            .map_err(sql)?;
        for r in rows {
            stmt.execute(params![
                r.at_ms,
                r.correlation_id,
                r.provider,
                r.model,
                r.response_model,
                r.operation,
                i64_of(r.usage.input),
                i64_of(r.usage.output),
                i64_of(r.usage.cached_input),
                i64_of(r.usage.cache_write),
                r.cost_nanos,
                r.price_version,
                r.latency_us,
                r.attempts,
                r.status,
                r.error_kind,
                r.http_status,
                r.cache_tier,
                i64_of(r.saved_usage.input),
                i64_of(r.saved_usage.output),
                i64_of(r.saved_usage.cached_input),
                i64_of(r.saved_usage.cache_write),
                r.saved_cost_nanos,
                r.workflow,
                r.step,
                r.tags,
            ])
            .map_err(sql)?;
        }
    }
    upsert_rollups(&tx, rows)?;
    tx.commit().map_err(sql)
}

/// The whole hours inside `[from, until)`.
fn full_hours(from: i64, until: i64) -> (i64, i64) {
    // Rounded without overflow at the ends of the i64 range (`TimeRange::All`).
    let rem = from.rem_euclid(HOUR_MS);
    let start = if rem == 0 {
        from
    } else {
        from.saturating_add(HOUR_MS - rem)
    };
    (start, until.saturating_sub(until.rem_euclid(HOUR_MS)))
}

fn analyse(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    group_by: &[GroupBy],
    exact_limit: u64,
) -> Result<Vec<CostRow>> {
    let (hours_from, hours_until) = full_hours(from_ms, until_ms);
    if hours_from < hours_until {
        let covered: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(requests), 0) FROM call_rollups WHERE hour_ms >= ?1 AND hour_ms < ?2",
                params![hours_from, hours_until],
                |r| r.get(0),
            )
            .map_err(|e| AnalyticsError::sqlite(&e))?;
        if u64::try_from(covered).unwrap_or(0) > exact_limit {
            return analyse_rollups(
                conn,
                (from_ms, until_ms),
                (hours_from, hours_until),
                group_by,
            );
        }
    }
    analyse_exact(conn, from_ms, until_ms, group_by)
}

/// A group value, ordered as SQL orders them (none first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Null,
    Bucket(i64),
    Text(String),
}

fn read_key(row: &rusqlite::Row<'_>, i: usize, group: &GroupBy) -> rusqlite::Result<Key> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Null => Key::Null,
        ValueRef::Integer(v) if group.is_time_bucket() => Key::Bucket(v),
        ValueRef::Integer(v) => Key::Text(v.to_string()),
        ValueRef::Real(v) => Key::Text(v.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Key::Text(String::from_utf8_lossy(t).into_owned()),
    })
}

/// Whole hours from the rollups, the partial hours at either end from the raw
/// rows; percentiles from the merged histograms.
fn analyse_rollups(
    conn: &Connection,
    (from_ms, until_ms): (i64, i64),
    (hours_from, hours_until): (i64, i64),
    group_by: &[GroupBy],
) -> Result<Vec<CostRow>> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let n = group_by.len();
    let mut groups: BTreeMap<Vec<Key>, Acc> = BTreeMap::new();
    let keys = |row: &rusqlite::Row<'_>| -> rusqlite::Result<Vec<Key>> {
        group_by
            .iter()
            .enumerate()
            .map(|(i, g)| read_key(row, i, g))
            .collect()
    };

    let (exprs, tags) = group_exprs(group_by, Dialect::Sqlite, Source::Rollups);
    let mut select = exprs.join(", ");
    if !select.is_empty() {
        select.push_str(", ");
    }
    let query = format!(
        "SELECT {select}requests, failed, cancelled, input_tokens, output_tokens, cached_input_tokens, \
         cache_write_tokens, cost_nanos, unpriced, cache_hits, saved_cost_nanos, latency_hist \
         FROM call_rollups WHERE hour_ms >= ?1 AND hour_ms < ?2"
    );
    let mut stmt = conn.prepare(&query).map_err(sql)?;
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&hours_from, &hours_until];
    for tag in &tags {
        params.push(tag);
    }
    let mut rows = stmt.query(params.as_slice()).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let acc = groups.entry(keys(row).map_err(sql)?).or_default();
        for (k, slot) in acc.values.iter_mut().enumerate() {
            *slot = slot.saturating_add(row.get::<_, i64>(n + k).map_err(sql)?);
        }
        if let rusqlite::types::ValueRef::Blob(blob) = row.get_ref(n + 11).map_err(sql)? {
            acc.hist.merge(&Histogram::decode(blob));
        }
    }
    drop(rows);
    drop(stmt);

    let (exprs, tags) = group_exprs(group_by, Dialect::Sqlite, Source::Calls);
    let mut select = exprs.join(", ");
    if !select.is_empty() {
        select.push_str(", ");
    }
    let query = format!(
        "SELECT {select}status, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, cost_nanos, \
         cache_tier IS NOT NULL, saved_cost_nanos, latency_us FROM calls WHERE at_ms >= ?1 AND at_ms < ?2"
    );
    let mut stmt = conn.prepare(&query).map_err(sql)?;
    for (a, b) in [(from_ms, hours_from), (hours_until, until_ms)] {
        if a >= b {
            continue;
        }
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&a, &b];
        for tag in &tags {
            params.push(tag);
        }
        let mut rows = stmt.query(params.as_slice()).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let status: String = row.get(n).map_err(sql)?;
            let usage = [
                row.get(n + 1).map_err(sql)?,
                row.get(n + 2).map_err(sql)?,
                row.get(n + 3).map_err(sql)?,
                row.get(n + 4).map_err(sql)?,
            ];
            groups.entry(keys(row).map_err(sql)?).or_default().add_call(
                &status,
                usage,
                row.get(n + 5).map_err(sql)?,
                row.get(n + 6).map_err(sql)?,
                row.get(n + 7).map_err(sql)?,
                row.get(n + 8).map_err(sql)?,
            );
        }
    }
    Ok(groups
        .into_iter()
        .filter(|(_, acc)| acc.values[0] > 0)
        .map(|(key, acc)| {
            let raw = key
                .into_iter()
                .map(|k| match k {
                    Key::Null => RawGroupValue::Null,
                    Key::Bucket(ms) => RawGroupValue::Bucket(ms),
                    Key::Text(t) => RawGroupValue::Text(Some(t)),
                })
                .collect();
            let percentiles_us = match PERCENTILES.map(|p| acc.hist.percentile(p)) {
                [Some(a), Some(b), Some(c)] => Some([a, b, c]),
                _ => None,
            };
            make_row(
                raw,
                &Sums {
                    values: acc.values,
                    percentiles_us,
                },
            )
        })
        .collect())
}

fn analyse_exact(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    group_by: &[GroupBy],
) -> Result<Vec<CostRow>> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let query = build_query(group_by, Dialect::Sqlite);
    let mut stmt = conn.prepare(&query.sql).map_err(sql)?;
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&from_ms, &until_ms];
    for tag in &query.tag_params {
        params.push(tag);
    }
    let n = group_by.len();
    let mut rows = stmt.query(params.as_slice()).map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let mut raw = Vec::with_capacity(n);
        for (i, group) in group_by.iter().enumerate() {
            raw.push(if group.is_time_bucket() {
                match row.get::<_, Option<i64>>(i).map_err(sql)? {
                    Some(ms) => RawGroupValue::Bucket(ms),
                    None => RawGroupValue::Null,
                }
            } else {
                // json_extract may return a number for a numeric tag value.
                let value = match row.get_ref(i).map_err(sql)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                    rusqlite::types::ValueRef::Real(v) => Some(v.to_string()),
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                };
                RawGroupValue::Text(value)
            });
        }
        let mut values = [0_i64; 11];
        for (k, slot) in values.iter_mut().enumerate() {
            *slot = row.get::<_, Option<i64>>(n + k).map_err(sql)?.unwrap_or(0);
        }
        let percentiles: Option<String> = row.get(n + 11).map_err(sql)?;
        let sums = Sums {
            values,
            percentiles_us: parse_percentiles(percentiles.as_deref()),
        };
        if sums.values[0] == 0 {
            continue;
        }
        out.push(make_row(raw, &sums));
    }
    Ok(out)
}
