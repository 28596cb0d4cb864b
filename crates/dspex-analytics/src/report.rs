//! Renders analyses as an aligned text table (with a bar per time bucket),
//! JSON or CSV, as `dspex costs` prints them.

use std::fmt::Write as _;

use crate::analysis::{CostRow, GroupBy};
use crate::prices::format_usd;

/// Widest bar, in characters.
const BAR_WIDTH: usize = 40;

/// An aligned table: one column per group dimension, then requests, errors,
/// tokens, cost, cache hits and savings, latency percentiles; with a time
/// bucket among the dimensions, a bar proportional to each row's cost.
pub fn render_table(rows: &[CostRow], group_by: &[GroupBy]) -> String {
    let mut headers: Vec<String> = group_by.iter().map(GroupBy::label).collect();
    headers.extend(
        [
            "requests", "errors", "in tok", "out tok", "cached", "cost", "unpriced", "hits",
            "saved", "p50 ms", "p95 ms", "p99 ms",
        ]
        .map(str::to_owned),
    );
    let numeric_from = group_by.len();
    let mut cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut line: Vec<String> = row
                .group
                .iter()
                .map(|v| v.clone().unwrap_or_else(|| "-".to_owned()))
                .collect();
            line.extend([
                row.requests.to_string(),
                row.errors.to_string(),
                row.input_tokens.to_string(),
                row.output_tokens.to_string(),
                row.cached_input_tokens.to_string(),
                format_usd(row.cost_nanos),
                row.unpriced_requests.to_string(),
                row.cache_hits.to_string(),
                format_usd(row.saved_cost_nanos),
                format!("{:.1}", row.latency_p50_ms),
                format!("{:.1}", row.latency_p95_ms),
                format!("{:.1}", row.latency_p99_ms),
            ]);
            line
        })
        .collect();
    if rows.len() > 1 {
        let sum = |f: fn(&CostRow) -> u64| rows.iter().map(f).sum::<u64>().to_string();
        let mut total: Vec<String> = vec![String::new(); numeric_from];
        if let Some(first) = total.first_mut() {
            "total".clone_into(first);
        }
        total.extend([
            sum(|r| r.requests),
            sum(|r| r.errors),
            sum(|r| r.input_tokens),
            sum(|r| r.output_tokens),
            sum(|r| r.cached_input_tokens),
            format_usd(rows.iter().map(|r| r.cost_nanos).sum()),
            sum(|r| r.unpriced_requests),
            sum(|r| r.cache_hits),
            format_usd(rows.iter().map(|r| r.saved_cost_nanos).sum()),
            String::new(),
            String::new(),
            String::new(),
        ]);
        cells.push(total);
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let bars = group_by.iter().any(GroupBy::is_time_bucket);
    let max_cost = rows.iter().map(|r| r.cost_nanos).max().unwrap_or(0).max(0);
    let mut out = String::new();
    let write_line = |out: &mut String, line: &[String]| {
        for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            if i < numeric_from {
                let _ = write!(out, "{cell:<width$}");
            } else {
                let _ = write!(out, "{cell:>width$}");
            }
        }
    };
    write_line(&mut out, &headers);
    if bars {
        out.push_str("  trend");
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
    for (index, line) in cells.iter().enumerate() {
        let start = out.len();
        write_line(&mut out, line);
        if bars && let Some(row) = rows.get(index) {
            out.push_str("  ");
            out.push_str(&bar(row.cost_nanos, max_cost));
        }
        let end = start + out.get(start..).map_or(0, |s| s.trim_end().len());
        out.truncate(end);
        out.push('\n');
    }
    out
}

/// A bar of `█` proportional to `value / max` (at least one block for any
/// non-zero value).
pub fn bar(value: i64, max: i64) -> String {
    if value <= 0 || max <= 0 {
        return String::new();
    }
    let width =
        (i128::from(value) * BAR_WIDTH as i128 / i128::from(max)).clamp(1, BAR_WIDTH as i128);
    "█".repeat(usize::try_from(width).unwrap_or(1))
}

/// CSV with a header line; costs in dollars with nine decimals (exact).
pub fn render_csv(rows: &[CostRow], group_by: &[GroupBy]) -> String {
    let mut out = String::new();
    let mut header: Vec<String> = group_by.iter().map(GroupBy::label).collect();
    header.extend(
        [
            "requests",
            "errors",
            "cancelled",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "cost_usd",
            "unpriced_requests",
            "cache_hits",
            "saved_cost_usd",
            "latency_p50_ms",
            "latency_p95_ms",
            "latency_p99_ms",
        ]
        .map(str::to_owned),
    );
    out.push_str(
        &header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push('\n');
    for row in rows {
        let mut fields: Vec<String> = row
            .group
            .iter()
            .map(|v| csv_field(v.as_deref().unwrap_or("")))
            .collect();
        fields.extend([
            row.requests.to_string(),
            row.errors.to_string(),
            row.cancelled.to_string(),
            row.input_tokens.to_string(),
            row.output_tokens.to_string(),
            row.cached_input_tokens.to_string(),
            row.cache_write_tokens.to_string(),
            dollars_exact(row.cost_nanos),
            row.unpriced_requests.to_string(),
            row.cache_hits.to_string(),
            dollars_exact(row.saved_cost_nanos),
            format!("{:.3}", row.latency_p50_ms),
            format!("{:.3}", row.latency_p95_ms),
            format!("{:.3}", row.latency_p99_ms),
        ]);
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// Nano-USD as an exact decimal dollar amount (`1.234567890`).
pub fn dollars_exact(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Pretty JSON: the rows with their group values keyed by dimension name.
pub fn render_json(rows: &[CostRow], group_by: &[GroupBy]) -> String {
    let items: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut value = serde_json::to_value(row).unwrap_or(serde_json::Value::Null);
            if let serde_json::Value::Object(map) = &mut value {
                let group: serde_json::Map<String, serde_json::Value> = group_by
                    .iter()
                    .zip(&row.group)
                    .map(|(g, v)| {
                        (
                            g.label(),
                            v.clone().map_or(serde_json::Value::Null, Into::into),
                        )
                    })
                    .collect();
                map.insert("group".to_owned(), serde_json::Value::Object(group));
            }
            value
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_owned())
}
