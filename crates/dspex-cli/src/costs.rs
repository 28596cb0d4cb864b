//! `dspex costs`: what recorded LM calls cost and how fast they were.
//!
//! ```text
//! dspex costs                                   # last 24h by provider and model
//! dspex costs --since 7d --group-by day         # a daily trend, one bar per day
//! dspex costs --from 2026-11-01 --until 2026-12-01 --group-by tag:team --format csv
//! ```
//!
//! Reads the store named by `analytics.store` in `dspex.toml` (default
//! `dspex-analytics.sqlite`), or by `--store`.

use std::path::Path;

use anyhow::{Context as _, bail};
use dspex::analytics::{AnalyticsConfig, GroupBy, Store, TimeRange, report};

use crate::common;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CostsFormat {
    /// Aligned columns; a bar per row when grouped by hour or day.
    Table,
    /// A JSON array of rows.
    Json,
    /// CSV with a header line.
    Csv,
}

#[derive(clap::Args, Debug)]
pub(crate) struct CostsArgs {
    /// How far back: `24h`, `90m`, `7d`, `last 30 minutes` (default: 24h).
    #[arg(long, value_name = "DURATION", conflicts_with_all = ["from", "until"])]
    since: Option<String>,
    /// Start of an absolute range, inclusive: RFC 3339 UTC (`2026-11-24T13:00:00Z`) or a date.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of an absolute range, exclusive (default: now).
    #[arg(long, value_name = "TIME", requires = "from")]
    until: Option<String>,
    /// Dimensions, comma-separated: provider, model, hour, day, workflow, step,
    /// tag:<key>, status, cache_tier, error_kind, operation.
    #[arg(long, value_name = "DIMS", default_value = "provider,model")]
    group_by: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CostsFormat::Table)]
    format: CostsFormat,
    /// The store, overriding `analytics.store`: a SQLite file or a postgres:// URL.
    #[arg(long, value_name = "PATH|URL")]
    store: Option<String>,
}

impl CostsArgs {
    fn time_range(&self) -> anyhow::Result<TimeRange> {
        if let Some(since) = &self.since {
            return Ok(TimeRange::parse(since)?);
        }
        match (&self.from, &self.until) {
            (Some(from), Some(until)) => Ok(TimeRange::parse(&format!("{from}..{until}"))?),
            (Some(from), None) => {
                let from = dspex::analytics::time::parse_time(from)?;
                Ok(TimeRange::between(from, std::time::SystemTime::now())?)
            }
            _ => Ok(TimeRange::parse("24h")?),
        }
    }
}

pub(crate) async fn run(args: CostsArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let range = args.time_range()?;
    let group_by = GroupBy::parse_list(&args.group_by)?;
    let loader = common::loader(config).map_err(common::Failure::into_error)?;
    let analytics = AnalyticsConfig::load(&loader)?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| analytics.store.clone());
    let is_postgres = location.starts_with("postgres://") || location.starts_with("postgresql://");
    if !is_postgres {
        let path = location
            .strip_prefix("sqlite://")
            .or_else(|| location.strip_prefix("sqlite:"))
            .unwrap_or(&location);
        if path != ":memory:" && !Path::new(path).exists() {
            bail!(
                "no analytics store at `{path}`: nothing has been recorded yet (set analytics.store in dspex.toml or pass --store)"
            );
        }
    }
    let printable = dspex::config::redacted_url(&location);
    let store = Store::open(&location, analytics.schema.as_deref())
        .await
        .with_context(|| format!("cannot open the analytics store `{printable}`"))?;
    let rows = store
        .get_cost_analysis(range, &group_by)
        .await
        .with_context(|| format!("cannot read the analytics store `{printable}`"))?;
    match args.format {
        CostsFormat::Json => common::out(&report::render_json(&rows, &group_by)),
        CostsFormat::Csv => common::out(report::render_csv(&rows, &group_by).trim_end()),
        CostsFormat::Table if rows.is_empty() => {
            common::err("no calls recorded in that time range");
        }
        CostsFormat::Table => common::out(report::render_table(&rows, &group_by).trim_end()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: CostsArgs,
    }

    #[test]
    fn parses_ranges_and_groups() {
        let w = Wrapper::try_parse_from([
            "costs",
            "--since",
            "7d",
            "--group-by",
            "day,provider",
            "--format",
            "csv",
        ])
        .unwrap();
        assert_eq!(
            w.args.time_range().unwrap(),
            TimeRange::parse("7d").unwrap()
        );
        assert_eq!(w.args.format, CostsFormat::Csv);
        assert_eq!(
            GroupBy::parse_list(&w.args.group_by).unwrap(),
            vec![GroupBy::Day, GroupBy::Provider]
        );
        let w = Wrapper::try_parse_from(["costs", "--from", "2026-11-01", "--until", "2026-11-24"])
            .unwrap();
        assert!(matches!(
            w.args.time_range().unwrap(),
            TimeRange::Between { .. }
        ));
        assert!(
            Wrapper::try_parse_from(["costs", "--since", "1h", "--from", "2026-11-01"]).is_err()
        );
        assert!(Wrapper::try_parse_from(["costs", "--until", "2026-11-01"]).is_err());
        let w = Wrapper::try_parse_from(["costs"]).unwrap();
        assert_eq!(
            w.args.time_range().unwrap(),
            TimeRange::parse("24h").unwrap()
        );
        assert_eq!(w.args.format, CostsFormat::Table);
    }
}
