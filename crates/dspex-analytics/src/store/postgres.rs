//! The shared store: PostgreSQL, with the same `calls` table as SQLite.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::analysis::{CostRow, Dialect, GroupBy, RawGroupValue, Sums, build_query, make_row};
use crate::error::{AnalyticsError, Result};
use crate::prices::{PriceTable, TokenUsage};
use crate::record::CallRecord;
use crate::store::{INSERT_COLUMNS, RepriceReport, SpendFilter, i64_of};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    correlation_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    response_model TEXT,
    operation TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    cost_nanos BIGINT,
    price_version TEXT,
    latency_us BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    status TEXT NOT NULL,
    error_kind TEXT,
    http_status BIGINT,
    cache_tier TEXT,
    saved_input_tokens BIGINT NOT NULL,
    saved_output_tokens BIGINT NOT NULL,
    saved_cached_input_tokens BIGINT NOT NULL,
    saved_cache_write_tokens BIGINT NOT NULL,
    saved_cost_nanos BIGINT,
    workflow TEXT,
    step TEXT,
    tags JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_at_ms ON calls (at_ms);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    revoked_ms BIGINT,
    budget_nanos BIGINT,
    budget_period TEXT,
    rpm BIGINT,
    tpm BIGINT,
    models TEXT NOT NULL,
    expires_ms BIGINT
);
";

/// The insert: one statement for a whole batch, one array per column.
const INSERT: &str = "INSERT INTO calls (at_ms, correlation_id, provider, model, response_model, operation, \
     input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, cost_nanos, price_version, \
     latency_us, attempts, status, error_kind, http_status, cache_tier, saved_input_tokens, \
     saved_output_tokens, saved_cached_input_tokens, saved_cache_write_tokens, saved_cost_nanos, \
     workflow, step, tags) \
     SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26::jsonb FROM UNNEST(\
     $1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], \
     $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[], $14::bigint[], $15::text[], \
     $16::text[], $17::bigint[], $18::text[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[], \
     $23::bigint[], $24::text[], $25::text[], $26::text[]) \
     AS batch(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26)";

/// A PostgreSQL store. Cloning shares the connection; a lost connection is
/// re-opened on the next operation.
#[derive(Clone)]
pub struct PostgresStore {
    url: Arc<str>,
    schema: Option<Arc<str>>,
    conn: Arc<Mutex<Conn>>,
}

struct Conn {
    client: Arc<Client>,
    // The prepared insert, on this connection.
    insert: Option<Statement>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &dspex_client::config::redacted_url(&self.url))
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

async fn open_client(url: &str, schema: Option<&str>) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| AnalyticsError::postgres(&e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "analytics PostgreSQL connection closed");
        }
    });
    let mut setup = String::new();
    if let Some(schema) = schema {
        setup.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\";"
        ));
    }
    setup.push_str(SCHEMA);
    client
        .batch_execute(&setup)
        .await
        .map_err(|e| AnalyticsError::postgres(&e))?;
    Ok(client)
}

impl PostgresStore {
    /// Connects (without TLS: use it on a trusted network or through a local
    /// proxy) and creates the schema if needed; the tables go in `schema` when
    /// given (an SQL identifier).
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self> {
        if let Some(schema) = schema
            && !valid_identifier(schema)
        {
            return Err(AnalyticsError::Config(dspex_core::CoreError::config(
                "analytics.schema",
                format!("`{schema}` is not a plain SQL identifier (letters, digits, _)"),
            )));
        }
        let client = open_client(url, schema).await?;
        Ok(Self {
            url: Arc::from(url),
            schema: schema.map(Arc::from),
            conn: Arc::new(Mutex::new(Conn {
                client: Arc::new(client),
                insert: None,
            })),
        })
    }

    pub(super) async fn client(&self) -> Result<Arc<Client>> {
        let current = Arc::clone(&self.conn.lock().client);
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(open_client(&self.url, self.schema.as_deref()).await?);
        *self.conn.lock() = Conn {
            client: Arc::clone(&fresh),
            insert: None,
        };
        Ok(fresh)
    }

    /// The client and its prepared insert statement.
    async fn insert_statement(&self) -> Result<(Arc<Client>, Statement)> {
        let client = self.client().await?;
        {
            let conn = self.conn.lock();
            if Arc::ptr_eq(&conn.client, &client)
                && let Some(statement) = &conn.insert
            {
                return Ok((client, statement.clone()));
            }
        }
        let statement = client
            .prepare(INSERT)
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        let mut conn = self.conn.lock();
        if Arc::ptr_eq(&conn.client, &client) {
            conn.insert = Some(statement.clone());
        }
        Ok((client, statement))
    }

    /// Inserts `rows` in one statement (so atomically).
    pub async fn insert(&self, rows: Arc<Vec<CallRecord>>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let (client, statement) = self.insert_statement().await?;
        let col_i64 = |f: &dyn Fn(&CallRecord) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let col_opt_i64 = |f: &dyn Fn(&CallRecord) -> Option<i64>| {
            rows.iter().map(f).collect::<Vec<Option<i64>>>()
        };
        let col_str = |f: &dyn Fn(&CallRecord) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let col_opt_str = |f: &dyn Fn(&CallRecord) -> Option<&str>| {
            rows.iter().map(f).collect::<Vec<Option<&str>>>()
        };
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
        let params: [&(dyn ToSql + Sync); 26] = [
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
        ];
        client
            .execute(&statement, &params)
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        Ok(())
    }

    /// Rows stored.
    pub async fn count(&self) -> Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COUNT(*) FROM calls", &[])
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        let n: i64 = row.try_get(0).map_err(|e| AnalyticsError::postgres(&e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Every row in `[from_ms, until_ms)`, oldest first.
    pub async fn rows(&self, from_ms: i64, until_ms: i64) -> Result<Vec<CallRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM calls WHERE at_ms >= $1 AND at_ms < $2 ORDER BY at_ms, id",
            INSERT_COLUMNS.replace("tags", "tags::text")
        );
        let rows = client
            .query(&sql, &[&from_ms, &until_ms])
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        rows.iter()
            .map(|row| row_to_record(row).map_err(|e| AnalyticsError::postgres(&e)))
            .collect()
    }

    /// The newest `limit` failed calls in `[from_ms, until_ms)`, newest
    /// first.
    pub async fn recent_failures(
        &self,
        from_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<Vec<CallRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM calls WHERE at_ms >= $1 AND at_ms < $2 AND status = 'failed' \
             ORDER BY at_ms DESC, id DESC LIMIT $3",
            INSERT_COLUMNS.replace("tags", "tags::text")
        );
        let limit = i64::from(limit);
        let rows = client
            .query(&sql, &[&from_ms, &until_ms, &limit])
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        rows.iter()
            .map(|row| row_to_record(row).map_err(|e| AnalyticsError::postgres(&e)))
            .collect()
    }

    /// The cost analysis over `[from_ms, until_ms)`.
    pub async fn cost_analysis(
        &self,
        from_ms: i64,
        until_ms: i64,
        group_by: &[GroupBy],
    ) -> Result<Vec<CostRow>> {
        let client = self.client().await?;
        let query = build_query(group_by, Dialect::Postgres);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from_ms, &until_ms];
        for tag in &query.tag_params {
            params.push(tag);
        }
        let rows = client
            .query(&query.sql, &params)
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        let n = group_by.len();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let pg = |e: tokio_postgres::Error| AnalyticsError::postgres(&e);
            let mut raw = Vec::with_capacity(n);
            for (i, group) in group_by.iter().enumerate() {
                raw.push(if group.is_time_bucket() {
                    match row.try_get::<_, Option<i64>>(i).map_err(pg)? {
                        Some(ms) => RawGroupValue::Bucket(ms),
                        None => RawGroupValue::Null,
                    }
                } else {
                    RawGroupValue::Text(row.try_get::<_, Option<String>>(i).map_err(pg)?)
                });
            }
            let mut values = [0_i64; 11];
            for (k, slot) in values.iter_mut().enumerate() {
                *slot = row
                    .try_get::<_, Option<i64>>(n + k)
                    .map_err(pg)?
                    .unwrap_or(0);
            }
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

    /// The cost of the priced calls matching `filter` in `[from_ms, until_ms)`.
    pub async fn spent(&self, filter: &SpendFilter, from_ms: i64, until_ms: i64) -> Result<i64> {
        let client = self.client().await?;
        let (clause, values) = filter.sql(Dialect::Postgres, 3);
        let sql = format!(
            "SELECT COALESCE(SUM(cost_nanos), 0)::bigint FROM calls WHERE at_ms >= $1 AND at_ms < $2{clause}"
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from_ms, &until_ms];
        for value in &values {
            params.push(value);
        }
        let row = client
            .query_one(&sql, &params)
            .await
            .map_err(|e| AnalyticsError::postgres(&e))?;
        row.try_get(0).map_err(|e| AnalyticsError::postgres(&e))
    }

    /// Recomputes every row's cost from its raw tokens with `prices`, in one
    /// transaction (updates are sent in chunks of 10,000 rows).
    pub async fn reprice(&self, prices: Arc<PriceTable>) -> Result<RepriceReport> {
        let pg = |e: tokio_postgres::Error| AnalyticsError::postgres(&e);
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(pg)?;
        let result = async {
            let rows = client
                .query(
                    "SELECT id, at_ms, provider, model, response_model, input_tokens, output_tokens, \
                     cached_input_tokens, cache_write_tokens, cache_tier, saved_input_tokens, \
                     saved_output_tokens, saved_cached_input_tokens, saved_cache_write_tokens FROM calls",
                    &[],
                )
                .await
                .map_err(pg)?;
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
                let usage = usage_at(row, 5).map_err(pg)?;
                let tier: Option<String> = row.try_get(9).map_err(pg)?;
                let saved_usage = usage_at(row, 10).map_err(pg)?;
                let cost = prices.cost(&provider, &model, response_model.as_deref(), at_ms, &usage);
                report.count(cost.is_some());
                saved.push(
                    tier.and_then(|_| {
                        prices.cost(&provider, &model, response_model.as_deref(), at_ms, &saved_usage)
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
            Ok::<_, AnalyticsError>(report)
        }
        .await;
        match result {
            Ok(report) => {
                client.batch_execute("COMMIT").await.map_err(pg)?;
                Ok(report)
            }
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
}

fn usage_at(row: &Row, first: usize) -> std::result::Result<TokenUsage, tokio_postgres::Error> {
    let get = |i: usize| -> std::result::Result<u64, tokio_postgres::Error> {
        Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
    };
    Ok(TokenUsage {
        input: get(first)?,
        output: get(first + 1)?,
        cached_input: get(first + 2)?,
        cache_write: get(first + 3)?,
    })
}

fn row_to_record(row: &Row) -> std::result::Result<CallRecord, tokio_postgres::Error> {
    Ok(CallRecord {
        at_ms: row.try_get(0)?,
        correlation_id: row.try_get(1)?,
        provider: row.try_get(2)?,
        model: row.try_get(3)?,
        response_model: row.try_get(4)?,
        operation: row.try_get(5)?,
        usage: usage_at(row, 6)?,
        cost_nanos: row.try_get(10)?,
        price_version: row.try_get(11)?,
        latency_us: row.try_get(12)?,
        attempts: row.try_get(13)?,
        status: row.try_get(14)?,
        error_kind: row.try_get(15)?,
        http_status: row.try_get(16)?,
        cache_tier: row.try_get(17)?,
        saved_usage: usage_at(row, 18)?,
        saved_cost_nanos: row.try_get(22)?,
        workflow: row.try_get(23)?,
        step: row.try_get(24)?,
        tags: row.try_get(25)?,
    })
}
