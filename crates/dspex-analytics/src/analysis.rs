//! Cost analysis: rows grouped by any mix of dimensions over a time range.
//!
//! The grouping and the sums run in the store's SQL. Latency percentiles use
//! linear interpolation between the closest ranks (the definition of
//! PostgreSQL's `percentile_cont`), so both stores report the same values:
//! SQLite through an aggregate function implemented in Rust, PostgreSQL with
//! `percentile_cont`. Over large ranges SQLite answers from hourly rollups,
//! whose percentiles come from log-bucket histograms and are within 1% of the
//! exact value (see [`crate::store`]); counts, tokens and costs are always
//! exact. Latencies are stored in microseconds and reported in milliseconds.

use std::fmt;

use serde::Serialize;

use crate::error::{AnalyticsError, Result};
use crate::prices::nanos_to_usd;
use crate::record::{STEP_TAG, WORKFLOW_TAG};
use crate::time::format_rfc3339;

/// A dimension to group calls by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// The provider id.
    Provider,
    /// The requested model.
    Model,
    /// The UTC hour the call ended in.
    Hour,
    /// The UTC day the call ended in.
    Day,
    /// The `workflow` tag.
    Workflow,
    /// The `step` tag.
    Step,
    /// The value of a user tag (`tag:team`).
    Tag(String),
    /// `success`, `failed` or `cancelled`.
    Status,
    /// The cache tier that served the call (none for a provider call).
    CacheTier,
    /// The error kind of failed calls.
    ErrorKind,
    /// `chat`, `chat_stream` or `embeddings`.
    Operation,
}

const KNOWN: &str = "provider, model, hour, day, workflow, step, key, tag:<key>, status, cache_tier, error_kind, operation";

impl GroupBy {
    /// Parses one name: `provider`, `model`, `hour`, `day`, `workflow`, `step`,
    /// `tag:<key>` (or `tag=<key>`), `status`, `cache_tier` (or `cache`),
    /// `error_kind`, `operation`, and `key` (the gateway's virtual key name,
    /// which is the tag [`KEY_TAG`](crate::record::KEY_TAG)).
    pub fn parse(name: &str) -> Result<Self> {
        let trimmed = name.trim();
        let lower = trimmed.to_ascii_lowercase();
        let unknown = || AnalyticsError::UnknownGroupBy {
            name: name.to_owned(),
            known: KNOWN.to_owned(),
        };
        Ok(match lower.as_str() {
            "provider" => Self::Provider,
            "model" => Self::Model,
            "hour" | "hourly" => Self::Hour,
            "day" | "daily" => Self::Day,
            "workflow" => Self::Workflow,
            "step" => Self::Step,
            "status" => Self::Status,
            "cache_tier" | "cache-tier" | "cache" | "tier" => Self::CacheTier,
            "error_kind" | "error-kind" | "error" => Self::ErrorKind,
            "operation" => Self::Operation,
            "key" => Self::Tag(crate::record::KEY_TAG.to_owned()),
            _ => {
                let key = trimmed
                    .get(..4)
                    .filter(|p| p.eq_ignore_ascii_case("tag:") || p.eq_ignore_ascii_case("tag="))
                    .and_then(|_| trimmed.get(4..))
                    .map(str::trim)
                    .ok_or_else(unknown)?;
                if key.is_empty() || key.contains(['"', '\\']) {
                    return Err(AnalyticsError::UnknownGroupBy {
                        name: name.to_owned(),
                        known: format!(
                            "{KNOWN}; a tag key is non-empty, without quotes or backslashes"
                        ),
                    });
                }
                match key {
                    WORKFLOW_TAG => Self::Workflow,
                    STEP_TAG => Self::Step,
                    _ => Self::Tag(key.to_owned()),
                }
            }
        })
    }

    /// Parses a comma-separated list such as `provider,model`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// Whether this is a time bucket (`hour`, `day`).
    pub fn is_time_bucket(&self) -> bool {
        matches!(self, Self::Hour | Self::Day)
    }

    /// The column heading for this dimension.
    pub fn label(&self) -> String {
        match self {
            Self::Tag(key) => format!("tag:{key}"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Provider => "provider",
            Self::Model => "model",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Workflow => "workflow",
            Self::Step => "step",
            Self::Tag(key) => return write!(f, "tag:{key}"),
            Self::Status => "status",
            Self::CacheTier => "cache_tier",
            Self::ErrorKind => "error_kind",
            Self::Operation => "operation",
        })
    }
}

/// One group of an analysis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostRow {
    /// The group's values, one per requested dimension, in order (`None`: the
    /// calls had no value, such as no tag or no cache tier). Time buckets are
    /// their start as RFC 3339 UTC text.
    pub group: Vec<Option<String>>,
    /// Time bucket start in Unix ms, when grouped by hour or day.
    pub bucket_start_ms: Option<i64>,
    /// Calls.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// Cancelled calls.
    pub cancelled: u64,
    /// Input tokens (cached included).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Cache-write tokens.
    pub cache_write_tokens: u64,
    /// The cost of the priced calls, in nano-USD.
    pub cost_nanos: i64,
    /// The same in dollars.
    pub cost_usd: f64,
    /// Calls whose model has no price (their cost is not in `cost_nanos`).
    pub unpriced_requests: u64,
    /// Calls served from the response cache.
    pub cache_hits: u64,
    /// What the cache hits saved, in nano-USD.
    pub saved_cost_nanos: i64,
    /// The same in dollars.
    pub saved_cost_usd: f64,
    /// Median latency, ms.
    pub latency_p50_ms: f64,
    /// 95th percentile latency, ms.
    pub latency_p95_ms: f64,
    /// 99th percentile latency, ms.
    pub latency_p99_ms: f64,
}

/// The percentile `p` (0..=1) of `values` by linear interpolation between the
/// closest ranks (PostgreSQL's `percentile_cont`). Reorders `values`.
pub fn percentile_cont(values: &mut [i64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let last = values.len() - 1;
    #[allow(clippy::cast_precision_loss)]
    let position = p.clamp(0.0, 1.0) * last as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let low = (position.floor() as usize).min(last);
    let (_, low_value, above) = values.select_nth_unstable(low);
    let low_value = *low_value;
    #[allow(clippy::cast_precision_loss)]
    let fraction = position - low as f64;
    if fraction <= 0.0 {
        #[allow(clippy::cast_precision_loss)]
        return Some(low_value as f64);
    }
    let high_value = above.iter().copied().min().unwrap_or(low_value);
    #[allow(clippy::cast_precision_loss)]
    Some(low_value as f64 + (high_value - low_value) as f64 * fraction)
}

/// The percentiles every row reports.
pub(crate) const PERCENTILES: [f64; 3] = [0.5, 0.95, 0.99];

/// p50, p95 and p99 of `values`, exact.
pub(crate) fn latency_percentiles(values: &mut [i64]) -> Option<[f64; 3]> {
    Some([
        percentile_cont(values, PERCENTILES[0])?,
        percentile_cont(values, PERCENTILES[1])?,
        percentile_cont(values, PERCENTILES[2])?,
    ])
}

/// The aggregate values of one result row, before the group values.
pub(crate) struct Sums {
    pub(crate) values: [i64; 11],
    pub(crate) percentiles_us: Option<[f64; 3]>,
}

/// Builds a row from the raw group values (text, or a bucket start in ms).
pub(crate) fn make_row(raw: Vec<RawGroupValue>, sums: &Sums) -> CostRow {
    let mut bucket_start_ms = None;
    let group = raw
        .into_iter()
        .map(|value| match value {
            RawGroupValue::Text(text) => text,
            RawGroupValue::Bucket(ms) => {
                bucket_start_ms = bucket_start_ms.or(Some(ms));
                Some(format_rfc3339(ms))
            }
            RawGroupValue::Null => None,
        })
        .collect();
    let v = |i: usize| sums.values.get(i).copied().unwrap_or(0);
    let u = |i: usize| u64::try_from(v(i)).unwrap_or(0);
    let [p50, p95, p99] = sums.percentiles_us.unwrap_or([0.0; 3]);
    CostRow {
        group,
        bucket_start_ms,
        requests: u(0),
        errors: u(1),
        cancelled: u(2),
        input_tokens: u(3),
        output_tokens: u(4),
        cached_input_tokens: u(5),
        cache_write_tokens: u(6),
        cost_nanos: v(7),
        cost_usd: nanos_to_usd(v(7)),
        unpriced_requests: u(8),
        cache_hits: u(9),
        saved_cost_nanos: v(10),
        saved_cost_usd: nanos_to_usd(v(10)),
        latency_p50_ms: p50 / 1000.0,
        latency_p95_ms: p95 / 1000.0,
        latency_p99_ms: p99 / 1000.0,
    }
}

/// A group value as read from the store.
pub(crate) enum RawGroupValue {
    Text(Option<String>),
    Bucket(i64),
    Null,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn percentiles_interpolate_like_postgres() {
        let mut v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile_cont(&mut v, 0.5), Some(50.5));
        assert_eq!(percentile_cont(&mut v, 0.95), Some(95.05));
        assert_eq!(percentile_cont(&mut v, 0.99), Some(99.01));
        assert_eq!(percentile_cont(&mut v, 0.0), Some(1.0));
        assert_eq!(percentile_cont(&mut v, 1.0), Some(100.0));
        let mut one = vec![7];
        assert_eq!(percentile_cont(&mut one, 0.99), Some(7.0));
        assert_eq!(percentile_cont(&mut [], 0.5), None);
    }

    #[test]
    fn parses_group_by() {
        assert_eq!(
            GroupBy::parse_list("provider, model,tag:team,day").unwrap(),
            vec![
                GroupBy::Provider,
                GroupBy::Model,
                GroupBy::Tag("team".into()),
                GroupBy::Day
            ]
        );
        assert_eq!(GroupBy::parse("tag:workflow").unwrap(), GroupBy::Workflow);
        let err = GroupBy::parse("colour").unwrap_err();
        assert!(
            err.to_string().contains("unknown group-by `colour`"),
            "{err}"
        );
        assert!(err.to_string().contains("cache_tier"), "{err}");
        assert!(GroupBy::parse("tag:").is_err());
    }
}
