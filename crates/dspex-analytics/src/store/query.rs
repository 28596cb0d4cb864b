//! The SQL both stores run, written once with a [`Dialect`] switch
//! (placeholders `?1` or `$1`, JSON access, integer casts), and what both do
//! with the rows: reading a [`CallRecord`] from any row type, the hourly
//! rollups (keys, sums and latency histograms of a batch), and merging
//! rollups and raw rows into the analysis rows.

use std::collections::{BTreeMap, HashMap};

use crate::analysis::{CostRow, GroupBy, PERCENTILES, RawGroupValue, Sums, make_row};
use crate::histogram::Histogram;
use crate::prices::TokenUsage;
use crate::record::{CallRecord, STEP_TAG, WORKFLOW_TAG};
use crate::store::{SpendFilter, i64_of};
use crate::time::HOUR_MS;

/// Which SQL the text is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Parameter `n` (1-based).
    pub(crate) fn param(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}"),
        }
    }

    /// Text parameter `n`: PostgreSQL needs the type where it cannot infer it
    /// (a JSON key, a comparison with a text column inside `->>`).
    fn text_param(self, n: usize) -> String {
        match self {
            Self::Sqlite => format!("?{n}"),
            Self::Postgres => format!("${n}::text"),
        }
    }

    /// The cast that makes an aggregate a 64-bit integer (PostgreSQL's
    /// `SUM(bigint)` is `numeric`).
    fn int(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => "::bigint",
        }
    }

    /// The expression of tag `key_param` of a JSON text or JSONB column.
    fn tag(self, column: &str, key_param: usize, source: Source) -> String {
        match (self, source) {
            (Self::Sqlite, _) => format!("json_extract({column}, ?{key_param})"),
            (Self::Postgres, Source::Calls) => format!("({column} ->> ${key_param}::text)"),
            // Rollups keep the tags as the recorded text (an exact key).
            (Self::Postgres, Source::Rollups) => {
                format!("(NULLIF({column}, '')::jsonb ->> ${key_param}::text)")
            }
        }
    }

    /// The bound value that selects tag `key` in [`Dialect::tag`].
    fn tag_key(self, key: &str) -> String {
        match self {
            Self::Sqlite => format!("$.\"{}\"", key.replace(['"', '\\'], "")),
            Self::Postgres => key.to_owned(),
        }
    }
}

/// The stored columns, in insert order.
pub(crate) const INSERT_COLUMNS: &str = "at_ms, correlation_id, provider, model, response_model, operation, \
     input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, cost_nanos, price_version, \
     latency_us, attempts, status, error_kind, http_status, cache_tier, saved_input_tokens, \
     saved_output_tokens, saved_cached_input_tokens, saved_cache_write_tokens, saved_cost_nanos, \
     workflow, step, tags, call_id";

/// What an insert does with a row whose call id the store holds: nothing
/// (the row came twice: a replayed journal).
pub(crate) const ON_DUPLICATE_CALL: &str = "ON CONFLICT (call_id) DO NOTHING";

/// `rows` but those at `skip` (ascending indexes).
pub(crate) fn without(rows: &[CallRecord], skip: &[usize]) -> Vec<CallRecord> {
    rows.iter()
        .enumerate()
        .filter(|(i, _)| skip.binary_search(i).is_err())
        .map(|(_, r)| r.clone())
        .collect()
}

/// The stored columns as read back into a [`CallRecord`] (JSONB as text).
fn select_columns(dialect: Dialect) -> String {
    match dialect {
        Dialect::Sqlite => INSERT_COLUMNS.to_owned(),
        Dialect::Postgres => INSERT_COLUMNS.replace("tags", "tags::text"),
    }
}

pub(crate) const COUNT: &str = "SELECT COUNT(*) FROM calls";

/// Every row in `[$1, $2)`, oldest first.
pub(crate) fn rows_sql(dialect: Dialect) -> String {
    format!(
        "SELECT {} FROM calls WHERE at_ms >= {} AND at_ms < {} ORDER BY at_ms, id",
        select_columns(dialect),
        dialect.param(1),
        dialect.param(2)
    )
}

/// The newest `$3` failed rows in `[$1, $2)`, newest first.
pub(crate) fn recent_failures_sql(dialect: Dialect) -> String {
    format!(
        "SELECT {} FROM calls WHERE at_ms >= {} AND at_ms < {} AND status = 'failed' \
         ORDER BY at_ms DESC, id DESC LIMIT {}",
        select_columns(dialect),
        dialect.param(1),
        dialect.param(2),
        dialect.param(3)
    )
}

/// What re-pricing reads: id, time, provider, model, response model, the four
/// token counts, cache tier and the four saved token counts.
pub(crate) const REPRICE_SELECT: &str = "SELECT id, at_ms, provider, model, response_model, input_tokens, \
     output_tokens, cached_input_tokens, cache_write_tokens, cache_tier, saved_input_tokens, \
     saved_output_tokens, saved_cached_input_tokens, saved_cache_write_tokens FROM calls";

impl SpendFilter {
    /// The `AND ...` clause and its values, parameters numbered from `first`.
    pub(crate) fn sql(&self, dialect: Dialect, first: usize) -> (String, Vec<String>) {
        let mut sql = Clause {
            dialect,
            first,
            text: String::new(),
            values: Vec::new(),
        };
        if let Some(provider) = &self.provider {
            sql.equals("provider", provider);
        }
        if let Some(model) = &self.model {
            sql.equals("model", model);
        }
        match &self.tag {
            Some((key, value)) if key == WORKFLOW_TAG => sql.equals("workflow", value),
            Some((key, value)) if key == STEP_TAG => sql.equals("step", value),
            Some((key, value)) => {
                let n = sql.bind(dialect.tag_key(key));
                sql.equals(&dialect.tag("tags", n, Source::Calls), value);
            }
            None => {}
        }
        (sql.text, sql.values)
    }
}

/// A `WHERE` clause's tail being built, parameters numbered from `first`.
struct Clause {
    dialect: Dialect,
    first: usize,
    text: String,
    values: Vec<String>,
}

impl Clause {
    /// Binds `value`; returns its parameter number.
    fn bind(&mut self, value: String) -> usize {
        self.values.push(value);
        self.first + self.values.len() - 1
    }

    /// ` AND <expr> = <value>`.
    fn equals(&mut self, expr: &str, value: &str) {
        let n = self.bind(value.to_owned());
        self.text
            .push_str(&format!(" AND {expr} = {}", self.dialect.text_param(n)));
    }
}

/// The priced spend of the calls in `[$1, $2)` that match `filter`, and the
/// values to bind from parameter 3 on.
pub(crate) fn spent_sql(filter: &SpendFilter, dialect: Dialect) -> (String, Vec<String>) {
    let (clause, values) = filter.sql(dialect, 3);
    (
        format!(
            "SELECT COALESCE(SUM(cost_nanos), 0){} FROM calls WHERE at_ms >= {} AND at_ms < {}{clause}",
            dialect.int(),
            dialect.param(1),
            dialect.param(2)
        ),
        values,
    )
}

/// Which table group expressions read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The raw `calls` table.
    Calls,
    /// The hourly `call_rollups` (`''` stands for none there).
    Rollups,
}

/// The SQL expression of each dimension, and the tag keys to bind from
/// parameter 3 on.
pub(crate) fn group_exprs(
    group_by: &[GroupBy],
    dialect: Dialect,
    source: Source,
) -> (Vec<String>, Vec<String>) {
    let mut tag_params = Vec::new();
    let mut columns = Vec::new();
    let text = |column: &str| match source {
        Source::Calls => column.to_owned(),
        Source::Rollups => format!("NULLIF({column}, '')"),
    };
    let time = match source {
        Source::Calls => "at_ms",
        Source::Rollups => "hour_ms",
    };
    for group in group_by {
        let expr = match group {
            GroupBy::Provider => text("provider"),
            GroupBy::Model => text("model"),
            GroupBy::Hour => format!("({time} / 3600000) * 3600000"),
            GroupBy::Day => format!("({time} / 86400000) * 86400000"),
            GroupBy::Workflow => text("workflow"),
            GroupBy::Step => text("step"),
            GroupBy::Status => text("status"),
            GroupBy::CacheTier => text("cache_tier"),
            GroupBy::ErrorKind => text("error_kind"),
            GroupBy::Operation => text("operation"),
            GroupBy::Tag(key) => {
                let n = tag_params.len() + 3;
                tag_params.push(dialect.tag_key(key));
                dialect.tag("tags", n, source)
            }
        };
        columns.push(expr);
    }
    (columns, tag_params)
}

/// The analysis query over the raw rows: SQL text, and the tag keys to bind
/// after the two time bounds (parameters 1 and 2).
pub(crate) struct Query {
    pub(crate) sql: String,
    pub(crate) tag_params: Vec<String>,
}

/// The exact analysis: group values, the eleven sums of [`Sums::values`] and
/// the three latency percentiles (`p50,p95,p99` text in SQLite, a `float8[]`
/// in PostgreSQL), grouped and ordered by the group values.
pub(crate) fn build_query(group_by: &[GroupBy], dialect: Dialect) -> Query {
    let (columns, tag_params) = group_exprs(group_by, dialect, Source::Calls);
    let int = dialect.int();
    let pct = match dialect {
        Dialect::Sqlite => "dspex_latency_percentiles(latency_us)",
        Dialect::Postgres => {
            "percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency_us)"
        }
    };
    let mut sql = String::from("SELECT ");
    for column in &columns {
        sql.push_str(column);
        sql.push_str(", ");
    }
    sql.push_str(&format!(
        "COUNT(*){int}, \
         COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0){int}, \
         COALESCE(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END), 0){int}, \
         COALESCE(SUM(input_tokens), 0){int}, \
         COALESCE(SUM(output_tokens), 0){int}, \
         COALESCE(SUM(cached_input_tokens), 0){int}, \
         COALESCE(SUM(cache_write_tokens), 0){int}, \
         COALESCE(SUM(cost_nanos), 0){int}, \
         COALESCE(SUM(CASE WHEN cost_nanos IS NULL THEN 1 ELSE 0 END), 0){int}, \
         COALESCE(SUM(CASE WHEN cache_tier IS NOT NULL THEN 1 ELSE 0 END), 0){int}, \
         COALESCE(SUM(saved_cost_nanos), 0){int}, \
         {pct} \
         FROM calls WHERE at_ms >= {} AND at_ms < {}",
        dialect.param(1),
        dialect.param(2)
    ));
    if !columns.is_empty() {
        let positions: Vec<String> = (1..=columns.len()).map(|i| i.to_string()).collect();
        sql.push_str(" GROUP BY ");
        sql.push_str(&positions.join(", "));
        sql.push_str(" ORDER BY ");
        sql.push_str(
            &positions
                .iter()
                .map(|p| format!("{p} NULLS FIRST"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    Query { sql, tag_params }
}

/// The calls the rollups of the hours in `[$1, $2)` cover.
pub(crate) fn covered_sql(dialect: Dialect) -> String {
    format!(
        "SELECT COALESCE(SUM(requests), 0){} FROM call_rollups WHERE hour_ms >= {} AND hour_ms < {}",
        dialect.int(),
        dialect.param(1),
        dialect.param(2)
    )
}

fn with_groups(exprs: &[String], rest: &str) -> String {
    let mut select = exprs.join(", ");
    if !select.is_empty() {
        select.push_str(", ");
    }
    select.push_str(rest);
    select
}

/// The rollups of the hours in `[$1, $2)`: group values, the eleven sums and
/// the encoded latency histogram; and the tag keys to bind.
pub(crate) fn rollups_sql(group_by: &[GroupBy], dialect: Dialect) -> Query {
    let (exprs, tag_params) = group_exprs(group_by, dialect, Source::Rollups);
    let select = with_groups(
        &exprs,
        "requests, failed, cancelled, input_tokens, output_tokens, cached_input_tokens, \
         cache_write_tokens, cost_nanos, unpriced, cache_hits, saved_cost_nanos, latency_hist",
    );
    Query {
        sql: format!(
            "SELECT {select} FROM call_rollups WHERE hour_ms >= {} AND hour_ms < {}",
            dialect.param(1),
            dialect.param(2)
        ),
        tag_params,
    }
}

/// The raw calls in `[$1, $2)` as [`Merge::add_call`] takes them: group
/// values, status, four token counts, cost, whether a cache served it, saved
/// cost and latency.
pub(crate) fn raw_calls_sql(group_by: &[GroupBy], dialect: Dialect) -> Query {
    let (exprs, tag_params) = group_exprs(group_by, dialect, Source::Calls);
    let select = with_groups(
        &exprs,
        &format!(
            "status, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, cost_nanos, \
         CASE WHEN cache_tier IS NULL THEN 0 ELSE 1 END{}, saved_cost_nanos, latency_us",
            dialect.int()
        ),
    );
    Query {
        sql: format!(
            "SELECT {select} FROM calls WHERE at_ms >= {} AND at_ms < {}",
            dialect.param(1),
            dialect.param(2)
        ),
        tag_params,
    }
}

/// The rollup columns that form its key, in order.
pub(crate) const ROLLUP_KEY_COLUMNS: &str =
    "hour_ms, provider, model, operation, status, error_kind, cache_tier, workflow, step, tags";

/// The rollup columns that are summed, in the order of [`Sums::values`].
pub(crate) const ROLLUP_SUM_COLUMNS: [&str; 11] = [
    "requests",
    "failed",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cost_nanos",
    "unpriced",
    "cache_hits",
    "saved_cost_nanos",
];

/// `col = <table>.col + excluded.col` for every summed column.
pub(crate) fn rollup_sum_updates(table: &str) -> String {
    ROLLUP_SUM_COLUMNS
        .iter()
        .map(|c| format!("{c} = {table}{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole hours inside `[from, until)`.
pub(crate) fn full_hours(from: i64, until: i64) -> (i64, i64) {
    // Rounded without overflow at the ends of the i64 range (`TimeRange::All`).
    let rem = from.rem_euclid(HOUR_MS);
    let start = if rem == 0 {
        from
    } else {
        from.saturating_add(HOUR_MS - rem)
    };
    (start, until.saturating_sub(until.rem_euclid(HOUR_MS)))
}

/// One rollup's key: the hour and every dimension (`''` for none), borrowed
/// from the batch's rows.
pub(crate) type RollupKey<'r> = (i64, [&'r str; 9]);

/// Sums in the order of [`Sums::values`], and the latency histogram.
#[derive(Default)]
pub(crate) struct Acc {
    pub(crate) values: [i64; 11],
    pub(crate) hist: Histogram,
}

/// One raw call as the rollups count it.
pub(crate) struct CallSums<'a> {
    pub(crate) status: &'a str,
    pub(crate) usage: [i64; 4],
    pub(crate) cost: Option<i64>,
    pub(crate) hit: bool,
    pub(crate) saved: Option<i64>,
    pub(crate) latency_us: i64,
}

impl Acc {
    /// Adds one call.
    pub(crate) fn add_call(&mut self, call: &CallSums<'_>) {
        let [input, output, cached, write] = call.usage;
        let cells: [i64; 11] = [
            1,
            i64::from(call.status == "failed"),
            i64::from(call.status == "cancelled"),
            input,
            output,
            cached,
            write,
            call.cost.unwrap_or(0),
            i64::from(call.cost.is_none()),
            i64::from(call.hit),
            call.saved.unwrap_or(0),
        ];
        self.add_values(&cells);
        self.hist.record(call.latency_us);
    }

    /// Adds another rollup's sums.
    pub(crate) fn add_values(&mut self, values: &[i64; 11]) {
        for (slot, n) in self.values.iter_mut().zip(values) {
            *slot = slot.saturating_add(*n);
        }
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

/// A batch's rows summed per rollup key, in key order (so that concurrent
/// writers lock rollup rows in the same order).
pub(crate) fn rollups_of(rows: &[CallRecord]) -> BTreeMap<RollupKey<'_>, Acc> {
    let mut groups: BTreeMap<RollupKey<'_>, Acc> = BTreeMap::new();
    for r in rows {
        groups
            .entry(rollup_key(r))
            .or_default()
            .add_call(&CallSums {
                status: &r.status,
                usage: [
                    i64_of(r.usage.input),
                    i64_of(r.usage.output),
                    i64_of(r.usage.cached_input),
                    i64_of(r.usage.cache_write),
                ],
                cost: r.cost_nanos,
                hit: r.cache_tier.is_some(),
                saved: r.saved_cost_nanos,
                latency_us: r.latency_us,
            });
    }
    groups
}

/// A group value, ordered as SQL orders them (none first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Key {
    Null,
    Bucket(i64),
    Text(String),
}

impl From<Key> for RawGroupValue {
    fn from(key: Key) -> Self {
        match key {
            Key::Null => Self::Null,
            Key::Bucket(ms) => Self::Bucket(ms),
            Key::Text(text) => Self::Text(Some(text)),
        }
    }
}

/// Rollups and raw rows merged into analysis rows by group.
#[derive(Default)]
pub(crate) struct Merge {
    groups: HashMap<Vec<Key>, Acc>,
}

impl Merge {
    /// Adds one rollup row (its encoded histogram as stored).
    pub(crate) fn add_rollup(&mut self, key: Vec<Key>, values: &[i64; 11], hist: &[u8]) {
        let acc = self.groups.entry(key).or_default();
        acc.add_values(values);
        acc.hist.merge(&Histogram::decode(hist));
    }

    /// Adds one raw call.
    pub(crate) fn add_call(&mut self, key: Vec<Key>, call: &CallSums<'_>) {
        self.groups.entry(key).or_default().add_call(call);
    }

    /// The analysis rows, ordered by group, percentiles from the merged
    /// histograms (within 1%).
    pub(crate) fn finish(self) -> Vec<CostRow> {
        let mut groups: Vec<(Vec<Key>, Acc)> = self
            .groups
            .into_iter()
            .filter(|(_, acc)| acc.values[0] > 0)
            .collect();
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups
            .into_iter()
            .map(|(key, acc)| {
                let raw = key.into_iter().map(RawGroupValue::from).collect();
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
            .collect()
    }
}

/// Column access shared by SQLite's and PostgreSQL's row types, so that a
/// [`CallRecord`] is read from either by one function.
pub(crate) trait Columns {
    /// The backend's error.
    type Error;
    fn i64_at(&self, i: usize) -> Result<i64, Self::Error>;
    fn opt_i64_at(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn text_at(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text_at(&self, i: usize) -> Result<Option<String>, Self::Error>;

    /// Four token counts from column `first` on.
    fn usage_at(&self, first: usize) -> Result<TokenUsage, Self::Error> {
        let get = |i: usize| -> Result<u64, Self::Error> {
            Ok(u64::try_from(self.i64_at(i)?).unwrap_or(0))
        };
        Ok(TokenUsage {
            input: get(first)?,
            output: get(first + 1)?,
            cached_input: get(first + 2)?,
            cache_write: get(first + 3)?,
        })
    }

    /// A row of [`INSERT_COLUMNS`].
    fn record(&self) -> Result<CallRecord, Self::Error> {
        Ok(CallRecord {
            at_ms: self.i64_at(0)?,
            correlation_id: self.opt_text_at(1)?,
            provider: self.text_at(2)?,
            model: self.text_at(3)?,
            response_model: self.opt_text_at(4)?,
            operation: self.text_at(5)?,
            usage: self.usage_at(6)?,
            cost_nanos: self.opt_i64_at(10)?,
            price_version: self.opt_text_at(11)?,
            latency_us: self.i64_at(12)?,
            attempts: self.i64_at(13)?,
            status: self.text_at(14)?,
            error_kind: self.opt_text_at(15)?,
            http_status: self.opt_i64_at(16)?,
            cache_tier: self.opt_text_at(17)?,
            saved_usage: self.usage_at(18)?,
            saved_cost_nanos: self.opt_i64_at(22)?,
            workflow: self.opt_text_at(23)?,
            step: self.opt_text_at(24)?,
            tags: self.text_at(25)?,
            call_id: self.opt_text_at(26)?,
        })
    }

    /// Column `i` as bytes.
    fn blob_at(&self, i: usize) -> Result<Vec<u8>, Self::Error>;

    /// Adds the rollup of a [`rollups_sql`] row (its sums from column `n`
    /// on) to `merge` under `key`.
    fn add_rollup_to(&self, merge: &mut Merge, key: Vec<Key>, n: usize) -> Result<(), Self::Error> {
        let values = self.sums_at(n)?;
        merge.add_rollup(key, &values, &self.blob_at(n + 11)?);
        Ok(())
    }

    /// Adds the call of a [`raw_calls_sql`] row (its values from column `n`
    /// on) to `merge` under `key`.
    fn add_call_to(&self, merge: &mut Merge, key: Vec<Key>, n: usize) -> Result<(), Self::Error> {
        let status = self.text_at(n)?;
        let call = CallSums {
            status: &status,
            usage: [
                self.i64_at(n + 1)?,
                self.i64_at(n + 2)?,
                self.i64_at(n + 3)?,
                self.i64_at(n + 4)?,
            ],
            cost: self.opt_i64_at(n + 5)?,
            hit: self.i64_at(n + 6)? != 0,
            saved: self.opt_i64_at(n + 7)?,
            latency_us: self.i64_at(n + 8)?,
        };
        merge.add_call(key, &call);
        Ok(())
    }

    /// The eleven sums from column `first` on (NULL as 0).
    fn sums_at(&self, first: usize) -> Result<[i64; 11], Self::Error> {
        let mut values = [0_i64; 11];
        for (k, slot) in values.iter_mut().enumerate() {
            *slot = self.opt_i64_at(first + k)?.unwrap_or(0);
        }
        Ok(values)
    }
}

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn i64_at(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    fn opt_i64_at(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }
    fn text_at(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text_at(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn blob_at(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(i)
    }
}

impl Columns for tokio_postgres::Row {
    type Error = tokio_postgres::Error;
    fn i64_at(&self, i: usize) -> Result<i64, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn opt_i64_at(&self, i: usize) -> Result<Option<i64>, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn text_at(&self, i: usize) -> Result<String, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn opt_text_at(&self, i: usize) -> Result<Option<String>, tokio_postgres::Error> {
        self.try_get(i)
    }
    fn blob_at(&self, i: usize) -> Result<Vec<u8>, tokio_postgres::Error> {
        self.try_get(i)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn dialects_differ_only_in_placeholders_casts_and_json() {
        let group = [GroupBy::Provider, GroupBy::Tag("team".into())];
        let lite = build_query(&group, Dialect::Sqlite);
        let pg = build_query(&group, Dialect::Postgres);
        assert!(lite.sql.contains("json_extract(tags, ?3)"), "{}", lite.sql);
        assert!(lite.sql.contains("at_ms >= ?1 AND at_ms < ?2"));
        assert_eq!(lite.tag_params, vec!["$.\"team\"".to_owned()]);
        assert!(pg.sql.contains("(tags ->> $3::text)"), "{}", pg.sql);
        assert!(pg.sql.contains("at_ms >= $1 AND at_ms < $2"));
        assert!(pg.sql.contains("COUNT(*)::bigint"));
        assert_eq!(pg.tag_params, vec!["team".to_owned()]);
        let filter = SpendFilter {
            provider: Some("openai".into()),
            tag: Some(("team".into(), "search".into())),
            ..SpendFilter::default()
        };
        let (sql, values) = spent_sql(&filter, Dialect::Postgres);
        assert!(
            sql.ends_with("AND provider = $3::text AND (tags ->> $4::text) = $5::text"),
            "{sql}"
        );
        assert_eq!(values, vec!["openai", "team", "search"]);
        let (sql, values) = spent_sql(&filter, Dialect::Sqlite);
        assert!(
            sql.ends_with("AND provider = ?3 AND json_extract(tags, ?4) = ?5"),
            "{sql}"
        );
        assert_eq!(values, vec!["openai", "$.\"team\"", "search"]);
    }

    #[test]
    fn full_hours_stay_inside_the_range() {
        assert_eq!(full_hours(1, 2 * HOUR_MS + 5), (HOUR_MS, 2 * HOUR_MS));
        assert_eq!(full_hours(0, HOUR_MS), (0, HOUR_MS));
        let (a, b) = full_hours(i64::MIN, i64::MAX);
        assert!(a < b);
        assert_eq!((a.rem_euclid(HOUR_MS), b.rem_euclid(HOUR_MS)), (0, 0));
    }
}
