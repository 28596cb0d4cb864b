//! The shared store: PostgreSQL, with the same tables as SQLite (see
//! [`super::migrate`]), TLS per the URL's `sslmode` (see [`super::pg_tls`]),
//! and the same hourly rollups, so analyses over large ranges read a few
//! thousand rollup rows instead of every call.

use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use super::migrate;
use super::pg_tls::{SslMode, Target};
use super::query::{
    self, Columns, Dialect, INSERT_COLUMNS, Key, Merge, ROLLUP_KEY_COLUMNS, ROLLUP_SUM_COLUMNS,
};
use crate::analysis::{CostRow, GroupBy, RawGroupValue, Sums, make_row};
use crate::error::{AnalyticsError, Result};
use crate::histogram::Histogram;
use crate::prices::PriceTable;
use crate::record::CallRecord;
use crate::store::{DEFAULT_EXACT_LIMIT, RepriceReport, SpendFilter, i64_of};
use crate::time::unix_ms;

const D: Dialect = Dialect::Postgres;

// By value, to be `map_err(pg)`.
#[allow(clippy::needless_pass_by_value)]
fn pg(error: tokio_postgres::Error) -> AnalyticsError {
    AnalyticsError::postgres(&error)
}

/// The insert: one statement for a whole batch, one array per column. It
/// returns the call ids it stored: a row whose id the table held is skipped.
fn insert_sql() -> String {
    format!(
        "INSERT INTO calls ({INSERT_COLUMNS}) \
         SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26::jsonb, c27 FROM UNNEST(\
         $1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], \
         $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[], $15::text[], \
         $16::text[], $17::bigint[], $18::text[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], \
         $23::bigint[], $24::text[], $25::text[], $26::text[], $27::text[]) \
         AS batch(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27) \
         {} RETURNING call_id",
        query::ON_DUPLICATE_CALL
    )
}

/// Adds a batch's sums to its rollups (creating the missing ones) and returns
/// each rollup's id, key and stored histogram. The row locks it takes are held
/// until the transaction ends, so the histogram merged into each by
/// [`upsert_rollups`] is never overwritten by a concurrent writer's.
fn rollup_upsert_sql() -> String {
    format!(
        "INSERT INTO call_rollups ({ROLLUP_KEY_COLUMNS}, {}, latency_hist) \
         SELECT *, ''::bytea FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::bigint[], \
         $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[], \
         $19::bigint[], $20::bigint[], $21::bigint[]) \
         ON CONFLICT (hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, md5(tags)) \
         DO UPDATE SET {} \
         RETURNING id, {ROLLUP_KEY_COLUMNS}, latency_hist",
        ROLLUP_SUM_COLUMNS.join(", "),
        query::rollup_sum_updates("call_rollups.")
    )
}

const ROLLUP_HIST_UPDATE: &str = "UPDATE call_rollups SET latency_hist = u.hist \
     FROM UNNEST($1::bigint[], $2::bytea[]) AS u(id, hist) WHERE call_rollups.id = u.id";

/// Adds `rows` to the hourly rollups, inside the caller's transaction.
async fn upsert_rollups(client: &impl GenericClient, rows: &[CallRecord]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let groups = query::rollups_of(rows);
    let mut hours = Vec::with_capacity(groups.len());
    let mut dims: [Vec<&str>; 9] = Default::default();
    let mut sums: [Vec<i64>; 11] = Default::default();
    for ((hour, key), acc) in &groups {
        hours.push(*hour);
        for (column, value) in dims.iter_mut().zip(key) {
            column.push(value);
        }
        for (column, value) in sums.iter_mut().zip(acc.values) {
            column.push(value);
        }
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&hours];
    for column in &dims {
        params.push(column);
    }
    for column in &sums {
        params.push(column);
    }
    let stored = client
        .query(&rollup_upsert_sql(), &params)
        .await
        .map_err(pg)?;
    let mut ids = Vec::with_capacity(stored.len());
    let mut hists = Vec::with_capacity(stored.len());
    for row in &stored {
        let texts: Vec<&str> = (2..11)
            .map(|i| row.try_get::<_, &str>(i))
            .collect::<std::result::Result<_, _>>()
            .map_err(pg)?;
        let mut key: [&str; 9] = Default::default();
        for (slot, text) in key.iter_mut().zip(texts) {
            *slot = text;
        }
        let Some(acc) = groups.get(&(row.try_get::<_, i64>(1).map_err(pg)?, key)) else {
            continue;
        };
        let mut hist = Histogram::decode(row.try_get::<_, &[u8]>(11).map_err(pg)?);
        hist.merge(&acc.hist);
        ids.push(row.try_get::<_, i64>(0).map_err(pg)?);
        hists.push(hist.encode());
    }
    client
        .execute(ROLLUP_HIST_UPDATE, &[&ids, &hists])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Rebuilds every rollup from the raw rows (after re-pricing, or for a
/// database written before rollups existed), inside the caller's transaction.
async fn rebuild_rollups(client: &impl GenericClient) -> Result<()> {
    const CHUNK: i64 = 50_000;
    client
        .batch_execute("DELETE FROM call_rollups")
        .await
        .map_err(pg)?;
    let sql = format!(
        "SELECT {}, id FROM calls WHERE id > $1 ORDER BY id LIMIT $2",
        INSERT_COLUMNS.replace("tags", "tags::text")
    );
    let mut after = 0_i64;
    loop {
        let rows = client.query(&sql, &[&after, &CHUNK]).await.map_err(pg)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        // `id` comes after the record's columns.
        after = last
            .try_get(INSERT_COLUMNS.split(',').count())
            .map_err(pg)?;
        let records = rows
            .iter()
            .map(Columns::record)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(pg)?;
        upsert_rollups(client, &records).await?;
    }
}

/// The advisory-lock key of a schema's migrations.
fn migration_lock(schema: Option<&str>) -> i64 {
    let digest = Sha256::digest(format!(
        "dspex-analytics migrations {}",
        schema.unwrap_or("")
    ));
    let mut bytes = [0_u8; 8];
    for (slot, byte) in bytes.iter_mut().zip(digest.iter()) {
        *slot = *byte;
    }
    i64::from_le_bytes(bytes)
}

/// Applies the missing migrations under a transaction-level advisory lock
/// (released at commit or when the connection drops).
async fn migrate(client: &mut Client, schema: Option<&str>) -> Result<()> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&migration_lock(schema)],
    )
    .await
    .map_err(pg)?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .map_err(pg)?;
    }
    tx.batch_execute(migrate::CREATE_MIGRATIONS_TABLE)
        .await
        .map_err(pg)?;
    let applied: Vec<i64> = tx
        .query(migrate::APPLIED_VERSIONS, &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()
        .map_err(pg)?;
    let mut changed = false;
    for migration in migrate::pending("postgres", &applied)? {
        tx.batch_execute(&migration.sql(D)).await.map_err(pg)?;
        tx.execute(
            &migrate::record_sql(D),
            &[
                &migration.version,
                &migration.name,
                &unix_ms(std::time::SystemTime::now()),
            ],
        )
        .await
        .map_err(pg)?;
        changed = true;
    }
    if changed {
        let missing: bool = tx
            .query_one(migrate::ROLLUPS_MISSING, &[])
            .await
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        if missing {
            rebuild_rollups(&tx).await?;
        }
    }
    tx.commit().await.map_err(pg)
}

/// A PostgreSQL store. Cloning shares the connections; a lost connection is
/// re-opened on the next operation. Reads share one connection; writes
/// (which run in transactions) have their own.
#[derive(Clone)]
pub struct PostgresStore {
    url: Arc<str>,
    target: Arc<Target>,
    schema: Option<Arc<str>>,
    reader: Arc<Mutex<Arc<Client>>>,
    writer: Arc<tokio::sync::Mutex<Option<Writer>>>,
    exact_limit: u64,
}

/// The write connection and its prepared statements.
struct Writer {
    client: Client,
    insert: Statement,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &dspex_client::config::redacted_url(&self.url))
            .field("sslmode", &self.target.mode())
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

async fn open_client(target: &Target, schema: Option<&str>) -> Result<Client> {
    let client = target.connect().await?;
    if let Some(schema) = schema {
        client
            .batch_execute(&format!("SET search_path TO \"{schema}\""))
            .await
            .map_err(pg)?;
    }
    Ok(client)
}

impl PostgresStore {
    /// Connects, with TLS as the URL's `sslmode` says (default `prefer`; see
    /// the [`store`](crate::store) docs), and applies the missing schema
    /// migrations; the tables go in `schema` when given (an SQL identifier).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        if let Some(schema) = schema
            && !valid_identifier(schema)
        {
            return Err(AnalyticsError::Config(dspex_core::CoreError::config(
                "analytics.schema",
                format!("`{schema}` is not a plain SQL identifier (letters, digits, _)"),
            )));
        }
        let target = Arc::new(Target::parse(url)?);
        let mut client = open_client(&target, schema).await?;
        migrate(&mut client, schema).await?;
        Ok(Self {
            url: Arc::from(url),
            target,
            schema: schema.map(Arc::from),
            reader: Arc::new(Mutex::new(Arc::new(client))),
            writer: Arc::new(tokio::sync::Mutex::new(None)),
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

    /// The TLS mode the URL asked for.
    pub fn ssl_mode(&self) -> SslMode {
        self.target.mode()
    }

    /// Whether the read connection is encrypted, as the server sees it
    /// (`pg_stat_ssl`).
    pub async fn tls_in_use(&self) -> Result<bool> {
        self.scalar(
            "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
        )
        .await
    }

    /// The schema version (the newest migration applied).
    pub async fn schema_version(&self) -> Result<i64> {
        self.scalar("SELECT COALESCE(MAX(version), 0)::bigint FROM dspex_schema_migrations")
            .await
    }

    /// The one value `sql` returns.
    async fn scalar<T>(&self, sql: &str) -> Result<T>
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        let client = self.client().await?;
        let row = client.query_one(sql, &[]).await.map_err(pg)?;
        row.try_get(0).map_err(pg)
    }

    pub(super) async fn client(&self) -> Result<Arc<Client>> {
        let current = Arc::clone(&self.reader.lock());
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(open_client(&self.target, self.schema.as_deref()).await?);
        *self.reader.lock() = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Runs `f` on the write connection (opened, or re-opened after a loss,
    /// first); one writer at a time.
    async fn with_writer<T>(&self, f: impl AsyncFnOnce(&mut Writer) -> Result<T>) -> Result<T> {
        let mut guard = self.writer.lock().await;
        let writer = match guard.take() {
            Some(writer) if !writer.client.is_closed() => writer,
            _ => {
                let client = open_client(&self.target, self.schema.as_deref()).await?;
                let insert = client.prepare(&insert_sql()).await.map_err(pg)?;
                Writer { client, insert }
            }
        };
        let writer = guard.insert(writer);
        let result = f(writer).await;
        if writer.client.is_closed() {
            *guard = None;
        }
        result
    }

    /// Inserts `rows` and adds them to the rollups, in one transaction.
    pub async fn insert(&self, rows: Arc<Vec<CallRecord>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.with_writer(async |writer: &mut Writer| {
            let tx = writer.client.transaction().await.map_err(pg)?;
            let duplicates = insert_calls(&tx, &writer.insert, &rows).await?;
            if duplicates.is_empty() {
                upsert_rollups(&tx, &rows).await?;
            } else {
                upsert_rollups(&tx, &query::without(&rows, &duplicates)).await?;
            }
            tx.commit().await.map_err(pg)
        })
        .await
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client.query_one(query::COUNT, &[]).await.map_err(pg)?;
        let n: i64 = row.try_get(0).map_err(pg)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn records(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<CallRecord>> {
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(pg)?;
        rows.iter().map(|row| row.record().map_err(pg)).collect()
    }

    /// Every row in `[from_ms, until_ms)`, oldest first.
    pub async fn rows(&self, from_ms: i64, until_ms: i64) -> Result<Vec<CallRecord>> {
        self.records(&query::rows_sql(D), &[&from_ms, &until_ms])
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
        let limit = i64::from(limit);
        self.records(
            &query::recent_failures_sql(D),
            &[&from_ms, &until_ms, &limit],
        )
        .await
    }

    /// The cost analysis over `[from_ms, until_ms)`: from the rollups for the
    /// whole hours when they cover more than the exact limit, else exact.
    pub async fn cost_analysis(
        &self,
        from_ms: i64,
        until_ms: i64,
        group_by: &[GroupBy],
    ) -> Result<Vec<CostRow>> {
        let client = self.client().await?;
        let hours = query::full_hours(from_ms, until_ms);
        if hours.0 < hours.1 {
            let covered: i64 = client
                .query_one(&query::covered_sql(D), &[&hours.0, &hours.1])
                .await
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            if u64::try_from(covered).unwrap_or(0) > self.exact_limit {
                return analyse_rollups(&client, (from_ms, until_ms), hours, group_by).await;
            }
        }
        analyse_exact(&client, from_ms, until_ms, group_by).await
    }

    /// The cost of the priced calls matching `filter` in `[from_ms, until_ms)`.
    pub async fn spent(&self, filter: &SpendFilter, from_ms: i64, until_ms: i64) -> Result<i64> {
        let client = self.client().await?;
        let (sql, values) = query::spent_sql(filter, D);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from_ms, &until_ms];
        for value in &values {
            params.push(value);
        }
        let row = client.query_one(&sql, &params).await.map_err(pg)?;
        row.try_get(0).map_err(pg)
    }

    /// Recomputes every row's cost from its raw tokens with `prices`, and the
    /// rollups, in one transaction (updates are sent in chunks of 10,000
    /// rows).
    pub async fn reprice(&self, prices: Arc<PriceTable>) -> Result<RepriceReport> {
        self.with_writer(async |writer: &mut Writer| {
            let tx = writer.client.transaction().await.map_err(pg)?;
            let report = reprice_rows(&tx, &prices).await?;
            rebuild_rollups(&tx).await?;
            tx.commit().await.map_err(pg)?;
            Ok(report)
        })
        .await
    }
}

/// Inserts `rows`; returns the indexes of those skipped because their call
/// id was stored already.
async fn insert_calls(
    client: &impl GenericClient,
    statement: &Statement,
    rows: &[CallRecord],
) -> Result<Vec<usize>> {
    let col_i64 = |f: &dyn Fn(&CallRecord) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let col_opt_i64 =
        |f: &dyn Fn(&CallRecord) -> Option<i64>| rows.iter().map(f).collect::<Vec<Option<i64>>>();
    let col_str = |f: &dyn Fn(&CallRecord) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let col_opt_str =
        |f: &dyn Fn(&CallRecord) -> Option<&str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
    let at = col_i64(&|r| r.at_ms);
    let correlation = col_opt_str(&|r| r.correlation_id.as_deref());
    let provider = col_str(&|r| &r.provider);
    let model = col_str(&|r| &r.model);
    let response_model = col_opt_str(&|r| r.response_model.as_deref());
    let operation = col_str(&|r| &r.operation);
    let input = col_i64(&|r| i64_of(r.usage.input));
    let output = col_i64(&|r| i64_of(r.usage.output));
    let cached = col_i64(&|r| i64_of(r.usage.cached_input));
    let write = col_i64(&|r| i64_of(r.usage.cache_write));
    let cost = col_opt_i64(&|r| r.cost_nanos);
    let version = col_opt_str(&|r| r.price_version.as_deref());
    let latency = col_i64(&|r| r.latency_us);
    let attempts = col_i64(&|r| r.attempts);
    let status = col_str(&|r| &r.status);
    let error_kind = col_opt_str(&|r| r.error_kind.as_deref());
    let http_status = col_opt_i64(&|r| r.http_status);
    let tier = col_opt_str(&|r| r.cache_tier.as_deref());
    let s_input = col_i64(&|r| i64_of(r.saved_usage.input));
    let s_output = col_i64(&|r| i64_of(r.saved_usage.output));
    let s_cached = col_i64(&|r| i64_of(r.saved_usage.cached_input));
    let s_write = col_i64(&|r| i64_of(r.saved_usage.cache_write));
    let saved_cost = col_opt_i64(&|r| r.saved_cost_nanos);
    let workflow = col_opt_str(&|r| r.workflow.as_deref());
    let step = col_opt_str(&|r| r.step.as_deref());
    let tags = col_str(&|r| &r.tags);
    let call_ids = col_opt_str(&|r| r.call_id.as_deref());
    let params: [&(dyn ToSql + Sync); 27] = [
        &at,
        &correlation,
        &provider,
        &model,
        &response_model,
        &operation,
        &input,
        &output,
        &cached,
        &write,
        &cost,
        &version,
        &latency,
        &attempts,
        &status,
        &error_kind,
        &http_status,
        &tier,
        &s_input,
        &s_output,
        &s_cached,
        &s_write,
        &saved_cost,
        &workflow,
        &step,
        &tags,
        &call_ids,
    ];
    let stored = client.query(statement, &params).await.map_err(pg)?;
    if stored.len() == rows.len() {
        return Ok(Vec::new());
    }
    let mut stored_ids = std::collections::HashSet::with_capacity(stored.len());
    for row in &stored {
        if let Some(id) = row.try_get::<_, Option<String>>(0).map_err(pg)? {
            stored_ids.insert(id);
        }
    }
    Ok(rows
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.call_id
                .as_ref()
                .is_some_and(|id| !stored_ids.contains(id))
        })
        .map(|(i, _)| i)
        .collect())
}

async fn reprice_rows(client: &impl GenericClient, prices: &PriceTable) -> Result<RepriceReport> {
    let rows = client.query(query::REPRICE_SELECT, &[]).await.map_err(pg)?;
    let mut report = RepriceReport::default();
    let mut ids = Vec::new();
    let mut costs: Vec<Option<i64>> = Vec::new();
    let mut versions: Vec<Option<String>> = Vec::new();
    let mut saved: Vec<Option<i64>> = Vec::new();
    let update = "UPDATE calls SET cost_nanos = u.cost, price_version = u.version, saved_cost_nanos = u.saved \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[]) AS u(id, cost, version, saved) \
         WHERE calls.id = u.id";
    for (index, row) in rows.iter().enumerate() {
        let id: i64 = row.try_get(0).map_err(pg)?;
        let at_ms: i64 = row.try_get(1).map_err(pg)?;
        let provider: String = row.try_get(2).map_err(pg)?;
        let model: String = row.try_get(3).map_err(pg)?;
        let response_model: Option<String> = row.try_get(4).map_err(pg)?;
        let usage = row.usage_at(5).map_err(pg)?;
        let tier: Option<String> = row.try_get(9).map_err(pg)?;
        let saved_usage = row.usage_at(10).map_err(pg)?;
        let cost = prices.cost(&provider, &model, response_model.as_deref(), at_ms, &usage);
        report.count(cost.is_some());
        saved.push(
            tier.and_then(|_| {
                prices.cost(
                    &provider,
                    &model,
                    response_model.as_deref(),
                    at_ms,
                    &saved_usage,
                )
            })
            .map(|c| c.nanos),
        );
        ids.push(id);
        costs.push(cost.as_ref().map(|c| c.nanos));
        versions.push(cost.map(|c| c.version));
        if ids.len() == 10_000 || index + 1 == rows.len() {
            client
                .execute(update, &[&ids, &costs, &versions, &saved])
                .await
                .map_err(pg)?;
            ids.clear();
            costs.clear();
            versions.clear();
            saved.clear();
        }
    }
    Ok(report)
}

/// Group value `i` of `row`.
fn read_key(row: &Row, i: usize, group: &GroupBy) -> Result<Key> {
    Ok(if group.is_time_bucket() {
        match row.try_get::<_, Option<i64>>(i).map_err(pg)? {
            Some(ms) => Key::Bucket(ms),
            None => Key::Null,
        }
    } else {
        match row.try_get::<_, Option<String>>(i).map_err(pg)? {
            Some(text) => Key::Text(text),
            None => Key::Null,
        }
    })
}

fn read_keys(row: &Row, group_by: &[GroupBy]) -> Result<Vec<Key>> {
    group_by
        .iter()
        .enumerate()
        .map(|(i, g)| read_key(row, i, g))
        .collect()
}

fn with_tags<'a>(bounds: [&'a i64; 2], tags: &'a [String]) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![bounds[0], bounds[1]];
    for tag in tags {
        params.push(tag);
    }
    params
}

/// Whole hours from the rollups, the partial hours at either end from the raw
/// rows; percentiles from the merged histograms.
async fn analyse_rollups(
    client: &Client,
    (from_ms, until_ms): (i64, i64),
    (hours_from, hours_until): (i64, i64),
    group_by: &[GroupBy],
) -> Result<Vec<CostRow>> {
    let n = group_by.len();
    let mut merge = Merge::default();
    let q = query::rollups_sql(group_by, D);
    let rows = client
        .query(
            &q.sql,
            &with_tags([&hours_from, &hours_until], &q.tag_params),
        )
        .await
        .map_err(pg)?;
    for row in &rows {
        row.add_rollup_to(&mut merge, read_keys(row, group_by)?, n)
            .map_err(pg)?;
    }
    let q = query::raw_calls_sql(group_by, D);
    for (a, b) in [(from_ms, hours_from), (hours_until, until_ms)] {
        if a >= b {
            continue;
        }
        let rows = client
            .query(&q.sql, &with_tags([&a, &b], &q.tag_params))
            .await
            .map_err(pg)?;
        for row in &rows {
            row.add_call_to(&mut merge, read_keys(row, group_by)?, n)
                .map_err(pg)?;
        }
    }
    Ok(merge.finish())
}

async fn analyse_exact(
    client: &Client,
    from_ms: i64,
    until_ms: i64,
    group_by: &[GroupBy],
) -> Result<Vec<CostRow>> {
    let q = query::build_query(group_by, D);
    let rows = client
        .query(&q.sql, &with_tags([&from_ms, &until_ms], &q.tag_params))
        .await
        .map_err(pg)?;
    let n = group_by.len();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let raw = read_keys(row, group_by)?
            .into_iter()
            .map(RawGroupValue::from)
            .collect();
        let values = row.sums_at(n).map_err(pg)?;
        let percentiles: Option<Vec<Option<f64>>> = row.try_get(n + 11).map_err(pg)?;
        let percentiles_us = percentiles.and_then(|p| match p.as_slice() {
            [Some(a), Some(b), Some(c)] => Some([*a, *b, *c]),
            _ => None,
        });
        if values[0] == 0 {
            continue;
        }
        out.push(make_row(
            raw,
            &Sums {
                values,
                percentiles_us,
            },
        ));
    }
    Ok(out)
}
