//! The embedded store: SQLite in a file (WAL mode), or in memory for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::migrate;
use super::query::{
    self, Columns, Dialect, INSERT_COLUMNS, Key, Merge, ROLLUP_KEY_COLUMNS, ROLLUP_SUM_COLUMNS,
};
use crate::analysis::{CostRow, GroupBy, RawGroupValue, Sums, latency_percentiles, make_row};
use crate::error::{AnalyticsError, Result};
use crate::histogram::Histogram;
use crate::prices::PriceTable;
use crate::record::CallRecord;
use crate::store::{RepriceReport, SpendFilter, i64_of};
use crate::time::unix_ms;

const D: Dialect = Dialect::Sqlite;

/// Ranges covering more calls than this (in whole hours) are analysed from the
/// hourly rollups; smaller ones from the raw rows, with exact percentiles.
pub const DEFAULT_EXACT_LIMIT: u64 = 50_000;

fn upsert_rollup_sql() -> String {
    let params: Vec<String> = (1..=22).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO call_rollups ({ROLLUP_KEY_COLUMNS}, {}, latency_hist) VALUES ({}) \
         ON CONFLICT ({ROLLUP_KEY_COLUMNS}) DO UPDATE SET {}, \
         latency_hist = dspex_hist_merge(latency_hist, excluded.latency_hist)",
        ROLLUP_SUM_COLUMNS.join(", "),
        params.join(", "),
        query::rollup_sum_updates("")
    )
}

fn upsert_rollups(tx: &rusqlite::Transaction<'_>, rows: &[CallRecord]) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let mut stmt = tx.prepare_cached(&upsert_rollup_sql()).map_err(sql)?;
    for ((hour, dims), acc) in query::rollups_of(rows) {
        let hist = acc.hist.encode();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&hour];
        for dim in &dims {
            values.push(dim);
        }
        for value in &acc.values {
            values.push(value);
        }
        values.push(&hist);
        stmt.execute(values.as_slice()).map_err(sql)?;
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
        batch.push(row.record().map_err(sql)?);
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
        let mut conn = open_connection(path.as_deref())?;
        migrate_schema(&mut conn)?;
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

    /// The schema version: the newest migration applied.
    pub async fn schema_version(&self) -> Result<i64> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM dspex_schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(|e| AnalyticsError::sqlite(&e))
        })
        .await
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64> {
        self.read(|conn| {
            let n: i64 = conn
                .query_row(query::COUNT, [], |r| r.get(0))
                .map_err(|e| AnalyticsError::sqlite(&e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Every row in `[from_ms, until_ms)`, oldest first.
    pub async fn rows(&self, from_ms: i64, until_ms: i64) -> Result<Vec<CallRecord>> {
        self.read(move |conn| records(conn, &query::rows_sql(D), params![from_ms, until_ms]))
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
            records(
                conn,
                &query::recent_failures_sql(D),
                params![from_ms, until_ms, limit],
            )
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
            let (sql, values) = query::spent_sql(&filter, D);
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
                    .prepare(query::REPRICE_SELECT)
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
                    let usage = row.usage_at(5).map_err(sql)?;
                    let tier: Option<String> = row.get(9).map_err(sql)?;
                    let saved = row.usage_at(10).map_err(sql)?;
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

fn records(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<CallRecord>> {
    let err = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let mut stmt = conn.prepare(sql).map_err(err)?;
    let rows = stmt.query_map(params, |row| row.record()).map_err(err)?;
    rows.map(|r| r.map_err(err)).collect()
}

/// Applies the missing migrations in one `BEGIN IMMEDIATE` transaction: the
/// write lock makes a second process opening the same file wait, then find
/// them applied.
fn migrate_schema(conn: &mut Connection) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    tx.execute_batch(migrate::CREATE_MIGRATIONS_TABLE)
        .map_err(sql)?;
    let applied: Vec<i64> = {
        let mut stmt = tx.prepare(migrate::APPLIED_VERSIONS).map_err(sql)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql)?
    };
    for migration in migrate::pending("sqlite", &applied)? {
        tx.execute_batch(&migration.sql(D)).map_err(sql)?;
        tx.execute(
            &migrate::record_sql(D),
            params![
                migration.version,
                migration.name,
                unix_ms(std::time::SystemTime::now())
            ],
        )
        .map_err(sql)?;
    }
    // A database written before rollups existed: build them once.
    let missing: bool = tx
        .query_row(migrate::ROLLUPS_MISSING, [], |r| r.get(0))
        .map_err(sql)?;
    if missing {
        rebuild_rollups(&tx)?;
    }
    tx.commit().map_err(sql)
}

fn insert_rows(conn: &mut Connection, rows: &[CallRecord]) -> Result<()> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let tx = conn.transaction().map_err(sql)?;
    // Rows whose call id the table already held (a replayed journal): not
    // stored again, and not added to the rollups again.
    let mut duplicates = Vec::new();
    {
        let placeholders: Vec<String> = (1..=27).map(|i| format!("?{i}")).collect();
        let mut stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO calls ({INSERT_COLUMNS}) VALUES ({}) {}",
                placeholders.join(", "),
                query::ON_DUPLICATE_CALL
            ))
            .map_err(sql)?;
        for (index, r) in rows.iter().enumerate() {
            let inserted = stmt
                .execute(params![
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
                    r.call_id,
                ])
                .map_err(sql)?;
            if inserted == 0 {
                duplicates.push(index);
            }
        }
    }
    if duplicates.is_empty() {
        upsert_rollups(&tx, rows)?;
    } else {
        upsert_rollups(&tx, &query::without(rows, &duplicates))?;
    }
    tx.commit().map_err(sql)
}

fn analyse(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    group_by: &[GroupBy],
    exact_limit: u64,
) -> Result<Vec<CostRow>> {
    let hours = query::full_hours(from_ms, until_ms);
    if hours.0 < hours.1 {
        let covered: i64 = conn
            .query_row(&query::covered_sql(D), params![hours.0, hours.1], |r| {
                r.get(0)
            })
            .map_err(|e| AnalyticsError::sqlite(&e))?;
        if u64::try_from(covered).unwrap_or(0) > exact_limit {
            return analyse_rollups(conn, (from_ms, until_ms), hours, group_by);
        }
    }
    analyse_exact(conn, from_ms, until_ms, group_by)
}

fn read_key(row: &rusqlite::Row<'_>, i: usize, group: &GroupBy) -> rusqlite::Result<Key> {
    use rusqlite::types::ValueRef;
    // json_extract may return a number for a numeric tag value.
    Ok(match row.get_ref(i)? {
        ValueRef::Null => Key::Null,
        ValueRef::Integer(v) if group.is_time_bucket() => Key::Bucket(v),
        ValueRef::Integer(v) => Key::Text(v.to_string()),
        ValueRef::Real(v) => Key::Text(v.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Key::Text(String::from_utf8_lossy(t).into_owned()),
    })
}

fn read_keys(row: &rusqlite::Row<'_>, group_by: &[GroupBy]) -> rusqlite::Result<Vec<Key>> {
    group_by
        .iter()
        .enumerate()
        .map(|(i, g)| read_key(row, i, g))
        .collect()
}

fn with_tags<'a>(bounds: [&'a i64; 2], tags: &'a [String]) -> Vec<&'a dyn rusqlite::ToSql> {
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![bounds[0], bounds[1]];
    for tag in tags {
        params.push(tag);
    }
    params
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
    let mut merge = Merge::default();
    let q = query::rollups_sql(group_by, D);
    let mut stmt = conn.prepare(&q.sql).map_err(sql)?;
    let mut rows = stmt
        .query(with_tags([&hours_from, &hours_until], &q.tag_params).as_slice())
        .map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        row.add_rollup_to(&mut merge, read_keys(row, group_by).map_err(sql)?, n)
            .map_err(sql)?;
    }
    drop(rows);
    drop(stmt);

    let q = query::raw_calls_sql(group_by, D);
    let mut stmt = conn.prepare(&q.sql).map_err(sql)?;
    for (a, b) in [(from_ms, hours_from), (hours_until, until_ms)] {
        if a >= b {
            continue;
        }
        let mut rows = stmt
            .query(with_tags([&a, &b], &q.tag_params).as_slice())
            .map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            row.add_call_to(&mut merge, read_keys(row, group_by).map_err(sql)?, n)
                .map_err(sql)?;
        }
    }
    Ok(merge.finish())
}

fn analyse_exact(
    conn: &Connection,
    from_ms: i64,
    until_ms: i64,
    group_by: &[GroupBy],
) -> Result<Vec<CostRow>> {
    let sql = |e: rusqlite::Error| AnalyticsError::sqlite(&e);
    let q = query::build_query(group_by, D);
    let mut stmt = conn.prepare(&q.sql).map_err(sql)?;
    let n = group_by.len();
    let mut rows = stmt
        .query(with_tags([&from_ms, &until_ms], &q.tag_params).as_slice())
        .map_err(sql)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let raw = read_keys(row, group_by)
            .map_err(sql)?
            .into_iter()
            .map(RawGroupValue::from)
            .collect();
        let percentiles: Option<String> = row.get(n + 11).map_err(sql)?;
        let sums = Sums {
            values: row.sums_at(n).map_err(sql)?,
            percentiles_us: parse_percentiles(percentiles.as_deref()),
        };
        if sums.values[0] == 0 {
            continue;
        }
        out.push(make_row(raw, &sums));
    }
    Ok(out)
}
