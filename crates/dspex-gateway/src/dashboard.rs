//! The gateway's web dashboard, rendered on the server: analytics the server
//! has already queried become one self-contained HTML page (inline CSS,
//! charts as inline SVG, nothing fetched from elsewhere), plus the admin
//! login page.
//!
//! This module does no I/O and knows nothing of HTTP, so a page is a plain
//! string that tests can read. Every string that comes from data (key names,
//! models, error kinds, tags) goes through [`escape`]. The one inline
//! `<script>` only submits the range form when the selection changes; the
//! page reads the same without it.
//!
//! Browser tests compare the page with `dspex costs --format json` through
//! these attributes, whose values are the raw numbers (integers as integers,
//! money as `cost_nanos`, latencies as the `f64` printed with `{}`) while the
//! visible text is formatted:
//!
//! - headline numbers: `data-metric="NAME" data-value="RAW"` for `requests`,
//!   `errors`, `input_tokens`, `output_tokens`, `cost_nanos`, `cache_hits`,
//!   `saved_cost_nanos`, `latency_p50_ms`, `latency_p95_ms`,
//!   `latency_p99_ms`. With no calls in the range every value is `0`.
//! - breakdowns: `<table data-breakdown="key|provider|model|status">`, one
//!   `<tr data-group="VALUE">` per row (`-` for no value), cells
//!   `<td data-col="COLUMN" data-value="RAW">` for `requests`, `errors`,
//!   `input_tokens`, `output_tokens`, `cost_nanos`, `cache_hits`,
//!   `latency_p50_ms`, `latency_p99_ms`.
//! - charts: one `<g class="bar" data-bucket-start="MS">` per time bucket.

use std::fmt::{self, Display, Write as _};

use dspex_analytics::prices::format_usd;
use dspex_analytics::record::KEY_TAG;
use dspex_analytics::time::{DAY_MS, HOUR_MS, format_date, format_rfc3339};
use dspex_analytics::{CallRecord, CostRow};

/// One provider's live state (circuit and rate-limit room), as the server
/// reads it from the client.
#[allow(dead_code, reason = "wired into the server by the router module")]
pub(crate) struct ProviderState {
    /// The provider id.
    pub(crate) id: String,
    /// The circuit breaker's state: `closed`, `open` or `half_open`.
    pub(crate) circuit: String,
    /// Free slots in the provider's connection pool.
    pub(crate) free_slots: usize,
    /// The rate-limit buckets and how full they are.
    pub(crate) buckets: Vec<BucketRoom>,
}

/// How full one rate-limit bucket is.
#[allow(dead_code, reason = "wired into the server by the router module")]
pub(crate) struct BucketRoom {
    /// What it counts and over which window, such as `requests/60s`.
    pub(crate) name: String,
    /// Units used in the current window.
    pub(crate) used: u64,
    /// Units allowed per window.
    pub(crate) limit: u64,
}

/// Everything the page shows, for one time range.
#[allow(dead_code, reason = "wired into the server by the router module")]
pub(crate) struct DashboardData {
    /// The range the user chose, such as `24h`.
    pub(crate) range_label: String,
    /// Start of the range, Unix ms (`i64::MIN` for all time).
    pub(crate) from_ms: i64,
    /// End of the range (exclusive), Unix ms (`i64::MAX` for all time).
    pub(crate) until_ms: i64,
    /// The ranges offered in the selector, such as `["1h", "24h", "7d", "30d"]`.
    pub(crate) ranges: Vec<&'static str>,
    /// The time bucket of `over_time`: `hour` or `day`.
    pub(crate) bucket: &'static str,
    /// One row with no group; `None` when nothing was recorded.
    pub(crate) totals: Option<CostRow>,
    /// Grouped by hour or day, ascending, `bucket_start_ms` set.
    pub(crate) over_time: Vec<CostRow>,
    /// Grouped by virtual key.
    pub(crate) by_key: Vec<CostRow>,
    /// Grouped by provider.
    pub(crate) by_provider: Vec<CostRow>,
    /// Grouped by requested model.
    pub(crate) by_model: Vec<CostRow>,
    /// Grouped by status (`success`, `failed`, `cancelled`).
    pub(crate) by_status: Vec<CostRow>,
    /// Failed calls, newest first, about twenty at most.
    pub(crate) recent_errors: Vec<CallRecord>,
    /// Every registered provider's live state.
    pub(crate) providers: Vec<ProviderState>,
    /// When the data was read, Unix ms.
    pub(crate) generated_at_ms: i64,
}

/// The dashboard page for `data`.
#[allow(dead_code, reason = "wired into the server by the router module")]
pub(crate) fn render(data: &DashboardData) -> String {
    let mut out = String::with_capacity(48 * 1024);
    // Writing into a String cannot fail.
    let _ = write_dashboard(&mut out, data);
    out
}

/// The login page: a form POSTing the field `admin_key` to
/// `/dashboard/login`, with `error` (such as a wrong key) shown above it.
#[allow(dead_code, reason = "wired into the server by the router module")]
pub(crate) fn render_login(error: Option<&str>) -> String {
    let mut out = String::with_capacity(4 * 1024);
    // Writing into a String cannot fail.
    let _ = write_login(&mut out, error);
    out
}

/// `text` made safe for HTML text and quoted attribute values, SVG included.
pub(crate) fn escape(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// Text that escapes itself when displayed; see [`escape`].
pub(crate) struct Escaped<'a>(&'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                _ => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

const STYLE: &str = r#"
:root { color-scheme: light; --ink: #1f2933; --muted: #616e7c; --line: #d9e2ec; --panel: #f5f7fa;
  --accent: #2f5fd0; --input: #2f5fd0; --output: #e0891b; --bad: #c62828; --warn: #b7791f; --good: #2e7d32; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
header, main, footer { max-width: 1240px; margin: 0 auto; padding: 0 20px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; justify-content: space-between; gap: 12px; padding-top: 16px; border-bottom: 1px solid var(--line); padding-bottom: 12px; }
h1 { font-size: 20px; margin: 0; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.period { color: var(--muted); margin: 4px 0 0; }
form.range { display: flex; align-items: center; gap: 8px; }
select, button, input { font: inherit; padding: 4px 8px; border: 1px solid #9aa5b1; border-radius: 4px; background: #fff; }
button { background: var(--accent); border-color: var(--accent); color: #fff; cursor: pointer; }
.empty { color: var(--muted); font-style: italic; }
p.empty { padding: 16px; background: var(--panel); border-radius: 6px; }
dl.tiles { display: grid; grid-template-columns: repeat(5, minmax(0, 1fr)); gap: 10px; margin: 0; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.tile dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.tile dd { margin: 2px 0 0; }
.tile .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.tile .note { color: var(--muted); font-size: 12px; }
.tile.bad .value { color: var(--bad); }
figure { margin: 0 0 8px; }
figure svg { display: block; width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figcaption { font-weight: 600; margin-bottom: 6px; }
.legend { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; vertical-align: baseline; margin: 0 4px 0 10px; }
table { width: 100%; border-collapse: collapse; margin-bottom: 8px; }
caption { text-align: left; font-weight: 600; padding: 6px 0; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--panel); font-size: 12px; color: var(--muted); font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody th { font-weight: 500; word-break: break-word; }
table[data-breakdown] { table-layout: fixed; }
table[data-breakdown] thead th:first-child { width: 24%; }
td.bad { color: var(--bad); font-weight: 600; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; background: var(--muted); }
.badge.closed { background: var(--good); }
.badge.open { background: var(--bad); }
.badge.half_open { background: var(--warn); }
.bucket { display: flex; align-items: center; gap: 8px; white-space: nowrap; }
.bucket .name { min-width: 150px; }
.grid2 { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
footer { color: var(--muted); font-size: 12px; padding: 24px 20px; }
.login { max-width: 380px; margin: 12vh auto; padding: 24px; border: 1px solid var(--line); border-radius: 8px; background: var(--panel); }
.login label { display: block; margin: 12px 0 4px; font-weight: 600; }
.login input { width: 100%; }
.login button { margin-top: 14px; }
.alert { color: var(--bad); font-weight: 600; }
"#;

/// The document up to and including `<body>`.
fn write_head(out: &mut String, title: &str) -> fmt::Result {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    )
}

fn write_login(out: &mut String, error: Option<&str>) -> fmt::Result {
    write_head(out, "DSPex gateway: sign in")?;
    out.push_str("<main class=\"login\">\n<h1>DSPex gateway</h1>\n<p>Sign in with the gateway's admin key to see the dashboard.</p>\n");
    if let Some(error) = error {
        writeln!(
            out,
            "<p class=\"alert\" role=\"alert\">{}</p>",
            escape(error)
        )?;
    }
    out.push_str(
        "<form method=\"post\" action=\"/dashboard/login\">\n\
         <label for=\"admin_key\">Admin key</label>\n\
         <input type=\"password\" id=\"admin_key\" name=\"admin_key\" autocomplete=\"current-password\" required autofocus>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n</main>\n</body>\n</html>\n",
    );
    Ok(())
}

fn write_dashboard(out: &mut String, data: &DashboardData) -> fmt::Result {
    write_head(out, "DSPex gateway: dashboard")?;
    write_header(out, data)?;
    out.push_str("<main>\n");
    let has_calls = data.totals.as_ref().is_some_and(|t| t.requests > 0);
    if !has_calls {
        out.push_str("<p class=\"empty\" data-empty=\"true\">No calls in this range.</p>\n");
    }
    write_tiles(out, data.totals.as_ref())?;
    write_charts(out, data)?;
    out.push_str(
        "<section aria-labelledby=\"breakdowns-h\">\n<h2 id=\"breakdowns-h\">Breakdowns</h2>\n",
    );
    write_breakdown(out, "key", "By virtual key", "Key", &data.by_key)?;
    write_breakdown(
        out,
        "provider",
        "By provider",
        "Provider",
        &data.by_provider,
    )?;
    write_breakdown(out, "model", "By model", "Model", &data.by_model)?;
    write_breakdown(out, "status", "By status", "Status", &data.by_status)?;
    out.push_str("</section>\n");
    write_recent_errors(out, &data.recent_errors)?;
    write_providers(out, &data.providers)?;
    out.push_str("</main>\n");
    writeln!(
        out,
        "<footer>Generated {} UTC by <code>dspex serve</code>.</footer>",
        format_utc(data.generated_at_ms)
    )?;
    // Progressive only: the Show button submits the same form without script.
    out.push_str(
        "<script>\ndocument.getElementById(\"range\").addEventListener(\"change\", function () { this.form.submit(); });\n</script>\n</body>\n</html>\n",
    );
    Ok(())
}

/// Title, the period shown and the range selector.
fn write_header(out: &mut String, data: &DashboardData) -> fmt::Result {
    out.push_str("<header>\n<div>\n<h1>DSPex gateway dashboard</h1>\n");
    let from = if data.from_ms == i64::MIN {
        "the first recorded call".to_owned()
    } else {
        format!("{} UTC", format_utc(data.from_ms))
    };
    let until = if data.until_ms == i64::MAX {
        "now".to_owned()
    } else {
        format!("{} UTC", format_utc(data.until_ms))
    };
    writeln!(
        out,
        "<p class=\"period\">Showing <strong>{}</strong>: {from} to {until}.</p>\n</div>",
        escape(&data.range_label)
    )?;
    out.push_str("<form class=\"range\" method=\"get\" action=\"/dashboard\">\n<label for=\"range\">Time range</label>\n<select id=\"range\" name=\"range\">\n");
    // A range typed into the URL (say `48h`) stays selected even when it is
    // not one of the offered choices.
    if !data.ranges.contains(&data.range_label.as_str()) {
        writeln!(
            out,
            "<option value=\"{0}\" selected>{0}</option>",
            escape(&data.range_label)
        )?;
    }
    for range in &data.ranges {
        let selected = if *range == data.range_label {
            " selected"
        } else {
            ""
        };
        writeln!(
            out,
            "<option value=\"{0}\"{selected}>{0}</option>",
            escape(range)
        )?;
    }
    out.push_str("</select>\n<button type=\"submit\">Show</button>\n</form>\n</header>\n");
    Ok(())
}

/// The headline numbers.
fn write_tiles(out: &mut String, totals: Option<&CostRow>) -> fmt::Result {
    let count = |f: fn(&CostRow) -> u64| totals.map_or(0, f);
    let requests = count(|t| t.requests);
    let errors = count(|t| t.errors);
    let cancelled = count(|t| t.cancelled);
    let input = count(|t| t.input_tokens);
    let output = count(|t| t.output_tokens);
    let cached = count(|t| t.cached_input_tokens);
    let hits = count(|t| t.cache_hits);
    let unpriced = count(|t| t.unpriced_requests);
    let cost = totals.map_or(0, |t| t.cost_nanos);
    let saved = totals.map_or(0, |t| t.saved_cost_nanos);
    let has_calls = requests > 0;
    let latency = |f: fn(&CostRow) -> f64| {
        let value = totals.map_or(0.0, f);
        (
            value,
            if has_calls {
                format_ms(value)
            } else {
                "–".to_owned()
            },
        )
    };

    out.push_str("<section aria-labelledby=\"totals-h\">\n<h2 id=\"totals-h\">Totals</h2>\n<dl class=\"tiles\">\n");
    let error_note = if cancelled > 0 {
        format!("{} cancelled", grouped(cancelled))
    } else {
        String::new()
    };
    let tiles: [(&str, &str, String, String, String, bool); 7] = [
        (
            "Requests",
            "requests",
            requests.to_string(),
            grouped(requests),
            String::new(),
            false,
        ),
        (
            "Errors",
            "errors",
            errors.to_string(),
            grouped(errors),
            error_note,
            errors > 0,
        ),
        (
            "Input tokens",
            "input_tokens",
            input.to_string(),
            grouped(input),
            if cached > 0 {
                format!("{} cached", grouped(cached))
            } else {
                String::new()
            },
            false,
        ),
        (
            "Output tokens",
            "output_tokens",
            output.to_string(),
            grouped(output),
            String::new(),
            false,
        ),
        (
            "Spend",
            "cost_nanos",
            cost.to_string(),
            format_usd(cost),
            if unpriced > 0 {
                format!("{} unpriced calls not included", grouped(unpriced))
            } else {
                String::new()
            },
            false,
        ),
        (
            "Cache hit rate",
            "cache_hits",
            hits.to_string(),
            hit_rate(hits, requests),
            if has_calls {
                format!("{} of {} requests", grouped(hits), grouped(requests))
            } else {
                String::new()
            },
            false,
        ),
        (
            "Saved by the cache",
            "saved_cost_nanos",
            saved.to_string(),
            format_usd(saved),
            String::new(),
            false,
        ),
    ];
    for (label, metric, raw, shown, note, bad) in &tiles {
        write_tile(out, label, metric, raw, shown, note, *bad)?;
    }
    for (label, metric, (value, shown)) in [
        (
            "Latency p50",
            "latency_p50_ms",
            latency(|t| t.latency_p50_ms),
        ),
        (
            "Latency p95",
            "latency_p95_ms",
            latency(|t| t.latency_p95_ms),
        ),
        (
            "Latency p99",
            "latency_p99_ms",
            latency(|t| t.latency_p99_ms),
        ),
    ] {
        write_tile(out, label, metric, &value.to_string(), &shown, "", false)?;
    }
    out.push_str("</dl>\n</section>\n");
    Ok(())
}

fn write_tile(
    out: &mut String,
    label: &str,
    metric: &str,
    raw: &str,
    shown: &str,
    note: &str,
    bad: bool,
) -> fmt::Result {
    let class = if bad { "tile bad" } else { "tile" };
    write!(
        out,
        "<div class=\"{class}\"><dt>{label}</dt><dd class=\"value\" data-metric=\"{metric}\" data-value=\"{}\">{}</dd>",
        escape(raw),
        escape(shown)
    )?;
    if !note.is_empty() {
        write!(out, "<dd class=\"note\">{}</dd>", escape(note))?;
    }
    out.push_str("</div>\n");
    Ok(())
}

// The view box of a chart and the margins that hold its axis labels.
const CHART_WIDTH: f64 = 1200.0;
const CHART_HEIGHT: f64 = 240.0;
const MARGIN_LEFT: f64 = 88.0;
const MARGIN_RIGHT: f64 = 40.0;
const MARGIN_TOP: f64 = 14.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// Beyond this many buckets the chart spans only the buckets with calls
/// (an `all` range would otherwise be millions of empty hours).
const MAX_SLOTS: i128 = 800;
/// About this many labels on the time axis.
const X_LABELS: i128 = 8;
const INPUT_COLOUR: &str = "#2f5fd0";
const OUTPUT_COLOUR: &str = "#e0891b";
const SPEND_COLOUR: &str = "#2f5fd0";

/// One time bucket of a chart.
struct Bar {
    start_ms: i64,
    /// Stacked from the axis up: value and fill colour.
    segments: Vec<(u64, &'static str)>,
    tooltip: String,
}

/// What a chart shows and how its axes are labelled.
struct ChartSpec<'a> {
    id: &'a str,
    title: &'a str,
    description: String,
    y_title: &'a str,
    x_title: String,
    bucket: &'a str,
    bucket_ms: i64,
    from_ms: i64,
    until_ms: i64,
    y_tick: fn(u64) -> String,
}

fn write_charts(out: &mut String, data: &DashboardData) -> fmt::Result {
    out.push_str("<section aria-labelledby=\"charts-h\">\n<h2 id=\"charts-h\">Over time</h2>\n");
    let rows: Vec<&CostRow> = data
        .over_time
        .iter()
        .filter(|r| r.bucket_start_ms.is_some())
        .collect();
    if rows.is_empty() {
        out.push_str(
            "<p class=\"empty\">No calls in this range, so nothing to chart.</p>\n</section>\n",
        );
        return Ok(());
    }
    let bucket_ms = if data.bucket == "day" {
        DAY_MS
    } else {
        HOUR_MS
    };
    let bucket = if data.bucket == "day" { "day" } else { "hour" };
    let x_title = format!("Time (UTC), one bar per {bucket}");
    let spend: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            let start_ms = r.bucket_start_ms?;
            Some(Bar {
                start_ms,
                segments: vec![(non_negative(r.cost_nanos), SPEND_COLOUR)],
                tooltip: format!(
                    "{} UTC: {} over {} requests",
                    format_utc(start_ms),
                    format_usd(r.cost_nanos),
                    grouped(r.requests)
                ),
            })
        })
        .collect();
    let total_cost: i64 = rows.iter().map(|r| r.cost_nanos).sum();
    write_bar_chart(
        out,
        &ChartSpec {
            id: "spend",
            title: &format!("Spend per {bucket}"),
            description: format!(
                "Bar chart of spend in US dollars per {bucket}, {} buckets, {} in all.",
                rows.len(),
                format_usd(total_cost)
            ),
            y_title: "Spend (USD)",
            x_title: x_title.clone(),
            bucket,
            bucket_ms,
            from_ms: data.from_ms,
            until_ms: data.until_ms,
            y_tick: |nanos| usd_short(i64::try_from(nanos).unwrap_or(i64::MAX)),
        },
        &spend,
    )?;
    let tokens: Vec<Bar> = rows
        .iter()
        .filter_map(|r| {
            let start_ms = r.bucket_start_ms?;
            Some(Bar {
                start_ms,
                segments: vec![
                    (r.input_tokens, INPUT_COLOUR),
                    (r.output_tokens, OUTPUT_COLOUR),
                ],
                tooltip: format!(
                    "{} UTC: {} input and {} output tokens",
                    format_utc(start_ms),
                    grouped(r.input_tokens),
                    grouped(r.output_tokens)
                ),
            })
        })
        .collect();
    write_bar_chart(
        out,
        &ChartSpec {
            id: "tokens",
            title: &format!("Tokens per {bucket}"),
            description: format!(
                "Stacked bar chart of input tokens (blue, bottom) and output tokens (orange, top) per {bucket}, {} buckets.",
                rows.len()
            ),
            y_title: "Tokens",
            x_title,
            bucket,
            bucket_ms,
            from_ms: data.from_ms,
            until_ms: data.until_ms,
            y_tick: compact,
        },
        &tokens,
    )?;
    writeln!(
        out,
        "<p class=\"legend\"><span class=\"swatch\" style=\"background:{INPUT_COLOUR}\"></span>Input tokens<span class=\"swatch\" style=\"background:{OUTPUT_COLOUR}\"></span>Output tokens</p>"
    )?;
    out.push_str("</section>\n");
    Ok(())
}

/// The time span a chart covers: `(start_ms, slots)`, whole buckets.
fn chart_span(spec: &ChartSpec<'_>, bars: &[Bar]) -> (i64, i128) {
    let bucket = i128::from(spec.bucket_ms.max(1));
    let align = |ms: i64| i128::from(ms).div_euclid(bucket) * bucket;
    let first = bars.iter().map(|b| align(b.start_ms)).min().unwrap_or(0);
    let end = bars
        .iter()
        .map(|b| align(b.start_ms) + bucket)
        .max()
        .unwrap_or(first + bucket);
    let slots = |from: i128, until: i128| (until - from + bucket - 1).div_euclid(bucket);
    // The chosen range when it is small enough to draw, so quiet hours show
    // as gaps; otherwise only the buckets with calls.
    let range_from = align(spec.from_ms);
    let start = if range_from <= first && slots(range_from, end) <= MAX_SLOTS {
        range_from
    } else {
        first
    };
    let range_until = i128::from(spec.until_ms);
    let end = if range_until >= end && slots(start, range_until) <= MAX_SLOTS {
        range_until
    } else {
        end
    };
    let start_ms = i64::try_from(start).unwrap_or(i64::MIN);
    (start_ms, slots(start, end).max(1))
}

fn write_bar_chart(out: &mut String, spec: &ChartSpec<'_>, bars: &[Bar]) -> fmt::Result {
    let (start_ms, slots) = chart_span(spec, bars);
    let plot_width = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let baseline = MARGIN_TOP + plot_height;
    let slot_width = plot_width / slots as f64;
    let bar_width = if slot_width > 3.0 {
        slot_width * 0.8
    } else {
        slot_width.max(0.5)
    };
    let peak = bars
        .iter()
        .map(|b| {
            b.segments
                .iter()
                .map(|(v, _)| *v)
                .fold(0_u64, u64::saturating_add)
        })
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(peak);
    let height_of = |value: u64| value as f64 / top as f64 * plot_height;
    let x_of_slot = |slot: f64| MARGIN_LEFT + slot * slot_width;
    let bucket_ms = spec.bucket_ms.max(1);

    writeln!(
        out,
        "<figure>\n<figcaption id=\"{0}-h\">{1}</figcaption>",
        spec.id,
        escape(spec.title)
    )?;
    writeln!(
        out,
        "<svg class=\"chart\" data-chart=\"{id}\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"system-ui, sans-serif\" font-size=\"12\">",
        id = spec.id
    )?;
    writeln!(
        out,
        "<title id=\"{0}-title\">{1}</title>\n<desc id=\"{0}-desc\">{2}</desc>",
        spec.id,
        escape(spec.title),
        escape(&spec.description)
    )?;

    // Horizontal grid lines with their values.
    let divisions = tick_divisions(top);
    for step in 0..=divisions {
        let value = top / divisions * step;
        let y = baseline - height_of(value);
        writeln!(
            out,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"1\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#616e7c\">{}</text>",
            CHART_WIDTH - MARGIN_RIGHT,
            if step == 0 { "#9aa5b1" } else { "#e4e7eb" },
            MARGIN_LEFT - 8.0,
            y + 4.0,
            escape(&(spec.y_tick)(value))
        )?;
    }

    // Time labels under a few evenly spaced buckets.
    let every = ((slots + X_LABELS - 1) / X_LABELS).max(1);
    let mut slot = 0_i128;
    while slot < slots {
        let label_ms = i128::from(start_ms) + slot * i128::from(bucket_ms);
        let label = format_utc(i64::try_from(label_ms).unwrap_or(i64::MAX));
        let label = if spec.bucket == "day" {
            label.get(5..10).unwrap_or(&label).to_owned()
        } else {
            label.get(5..).unwrap_or(&label).to_owned()
        };
        let x = x_of_slot(slot as f64 + 0.5);
        writeln!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{baseline:.1}\" y2=\"{:.1}\" stroke=\"#9aa5b1\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#616e7c\">{}</text>",
            baseline + 4.0,
            baseline + 17.0,
            escape(&label)
        )?;
        slot += every;
    }
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#3e4c59\">{}</text>",
        MARGIN_LEFT + plot_width / 2.0,
        CHART_HEIGHT - 8.0,
        escape(&spec.x_title)
    )?;
    writeln!(
        out,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#3e4c59\">{}</text>",
        MARGIN_TOP + plot_height / 2.0,
        escape(spec.y_title)
    )?;

    for bar in bars {
        let slot = (i128::from(bar.start_ms) - i128::from(start_ms)) as f64 / bucket_ms as f64;
        let x = x_of_slot(slot) + (slot_width - bar_width) / 2.0;
        write!(
            out,
            "<g class=\"bar\" data-bucket-start=\"{}\"><title>{}</title>",
            bar.start_ms,
            escape(&bar.tooltip)
        )?;
        let mut stacked = 0_u64;
        for (value, colour) in &bar.segments {
            let bottom = baseline - height_of(stacked);
            stacked = stacked.saturating_add(*value);
            let height = height_of(*value);
            // A non-zero value stays visible however small next to the peak.
            let height = if *value > 0 { height.max(1.0) } else { 0.0 };
            write!(
                out,
                "<rect x=\"{x:.2}\" y=\"{:.2}\" width=\"{bar_width:.2}\" height=\"{height:.2}\" fill=\"{colour}\"/>",
                bottom - height
            )?;
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n</figure>\n");
    Ok(())
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1).
fn nice_ceiling(value: u64) -> u64 {
    let mut power = 1_u64;
    loop {
        for mantissa in [1_u64, 2, 5] {
            let candidate = mantissa.saturating_mul(power);
            if candidate >= value {
                return candidate;
            }
        }
        if power > u64::MAX / 10 {
            return u64::MAX;
        }
        power *= 10;
    }
}

/// Grid steps for an axis topped at `top` (from [`nice_ceiling`]), chosen so
/// every step is a whole number.
fn tick_divisions(top: u64) -> u64 {
    let leading = top / 10_u64.pow(top.max(1).ilog10());
    let wanted = if leading == 2 { 4 } else { 5 };
    wanted.min(top.max(1))
}

fn write_breakdown(
    out: &mut String,
    kind: &str,
    caption: &str,
    name_heading: &str,
    rows: &[CostRow],
) -> fmt::Result {
    writeln!(
        out,
        "<table data-breakdown=\"{kind}\">\n<caption>{caption}</caption>\n<thead><tr><th scope=\"col\">{name_heading}</th>\
         <th scope=\"col\" class=\"num\">Requests</th><th scope=\"col\" class=\"num\">Errors</th>\
         <th scope=\"col\" class=\"num\">Input tok</th><th scope=\"col\" class=\"num\">Output tok</th>\
         <th scope=\"col\" class=\"num\">Spend</th><th scope=\"col\" class=\"num\">Cache hits</th>\
         <th scope=\"col\" class=\"num\">p50 ms</th><th scope=\"col\" class=\"num\">p99 ms</th></tr></thead>\n<tbody>"
    )?;
    if rows.is_empty() {
        out.push_str("<tr><td colspan=\"9\" class=\"empty\">No calls in this range.</td></tr>\n");
    }
    for row in rows {
        let name = group_name(row);
        write!(
            out,
            "<tr data-group=\"{0}\"><th scope=\"row\">{0}</th>",
            escape(&name)
        )?;
        write_count_cell(out, "requests", row.requests, false)?;
        write_count_cell(out, "errors", row.errors, row.errors > 0)?;
        write_count_cell(out, "input_tokens", row.input_tokens, false)?;
        write_count_cell(out, "output_tokens", row.output_tokens, false)?;
        write!(
            out,
            "<td class=\"num\" data-col=\"cost_nanos\" data-value=\"{}\">{}</td>",
            row.cost_nanos,
            escape(&format_usd(row.cost_nanos))
        )?;
        write_count_cell(out, "cache_hits", row.cache_hits, false)?;
        for (col, value) in [
            ("latency_p50_ms", row.latency_p50_ms),
            ("latency_p99_ms", row.latency_p99_ms),
        ] {
            write!(
                out,
                "<td class=\"num\" data-col=\"{col}\" data-value=\"{value}\">{value:.1}</td>"
            )?;
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    Ok(())
}

fn write_count_cell(out: &mut String, col: &str, value: u64, bad: bool) -> fmt::Result {
    let class = if bad { "num bad" } else { "num" };
    write!(
        out,
        "<td class=\"{class}\" data-col=\"{col}\" data-value=\"{value}\">{}</td>",
        grouped(value)
    )
}

fn write_recent_errors(out: &mut String, errors: &[CallRecord]) -> fmt::Result {
    out.push_str(
        "<section aria-labelledby=\"errors-h\">\n<h2 id=\"errors-h\">Recent errors</h2>\n\
         <table data-table=\"recent-errors\">\n<caption>The latest failed calls, newest first</caption>\n\
         <thead><tr><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Provider</th><th scope=\"col\">Model</th>\
         <th scope=\"col\">Error</th><th scope=\"col\" class=\"num\">HTTP status</th><th scope=\"col\">Key</th></tr></thead>\n<tbody>\n",
    );
    if errors.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"empty\">No errors in this range.</td></tr>\n");
    }
    for record in errors {
        // A cancelled call has no error kind; its status says what happened.
        let kind = record.error_kind.as_deref().unwrap_or(&record.status);
        let status = record
            .http_status
            .map_or_else(|| "–".to_owned(), |s| s.to_string());
        let key = key_tag(&record.tags).unwrap_or_else(|| "–".to_owned());
        writeln!(
            out,
            "<tr><td><time datetime=\"{}\">{}</time></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&format_rfc3339(record.at_ms)),
            format_utc(record.at_ms),
            escape(&record.provider),
            escape(&record.model),
            escape(kind),
            escape(&status),
            escape(&key)
        )?;
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_providers(out: &mut String, providers: &[ProviderState]) -> fmt::Result {
    out.push_str(
        "<section aria-labelledby=\"providers-h\">\n<h2 id=\"providers-h\">Providers</h2>\n\
         <table data-table=\"providers\">\n<caption>Circuit breaker, connection pool and rate-limit room, right now</caption>\n\
         <thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Circuit</th>\
         <th scope=\"col\" class=\"num\">Free pool slots</th><th scope=\"col\">Rate limits (used / limit)</th></tr></thead>\n<tbody>\n",
    );
    if providers.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"empty\">No providers registered.</td></tr>\n");
    }
    for provider in providers {
        // Only known states become a CSS class; anything else is shown as text.
        let class = match provider.circuit.as_str() {
            "closed" => "closed",
            "open" => "open",
            "half_open" => "half_open",
            _ => "unknown",
        };
        write!(
            out,
            "<tr data-provider=\"{0}\" data-circuit=\"{1}\"><th scope=\"row\">{0}</th><td><span class=\"badge {class}\">{2}</span></td><td class=\"num\" data-col=\"free_slots\" data-value=\"{3}\">{3}</td><td>",
            escape(&provider.id),
            escape(&provider.circuit),
            escape(&provider.circuit.replace('_', "-")),
            provider.free_slots
        )?;
        if provider.buckets.is_empty() {
            out.push_str("<span class=\"empty\">no limits configured</span>");
        }
        for bucket in &provider.buckets {
            write_bucket(out, bucket)?;
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    Ok(())
}

fn write_bucket(out: &mut String, bucket: &BucketRoom) -> fmt::Result {
    const WIDTH: f64 = 140.0;
    let share = if bucket.limit == 0 {
        0.0
    } else {
        (bucket.used as f64 / bucket.limit as f64).clamp(0.0, 1.0)
    };
    let colour = if share >= 0.9 {
        "#c62828"
    } else if share >= 0.7 {
        "#b7791f"
    } else {
        "#2e7d32"
    };
    let name = escape(&bucket.name);
    write!(
        out,
        "<div class=\"bucket\" data-bucket=\"{name}\" data-used=\"{used}\" data-limit=\"{limit}\"><span class=\"name\">{name}</span>\
         <svg role=\"img\" width=\"{WIDTH}\" height=\"10\" viewBox=\"0 0 {WIDTH} 10\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title>{name}: {used} of {limit} used</title>\
         <rect width=\"{WIDTH}\" height=\"10\" rx=\"2\" fill=\"#e4e7eb\"/><rect width=\"{:.1}\" height=\"10\" rx=\"2\" fill=\"{colour}\"/></svg>\
         <span class=\"num\">{} / {}</span></div>",
        share * WIDTH,
        grouped(bucket.used),
        grouped(bucket.limit),
        used = bucket.used,
        limit = bucket.limit,
    )
}

/// A row's group values joined for display, `-` for none.
fn group_name(row: &CostRow) -> String {
    if row.group.is_empty() {
        return "-".to_owned();
    }
    row.group
        .iter()
        .map(|v| v.as_deref().unwrap_or("-"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The virtual key named in a record's tags (a JSON object), if any.
fn key_tag(tags: &str) -> Option<String> {
    let tags: serde_json::Map<String, serde_json::Value> = serde_json::from_str(tags).ok()?;
    Some(match tags.get(KEY_TAG)? {
        serde_json::Value::String(key) => key.clone(),
        other => other.to_string(),
    })
}

/// `YYYY-MM-DD HH:MM` of Unix ms, UTC.
fn format_utc(ms: i64) -> String {
    let in_day = ms.rem_euclid(DAY_MS);
    format!(
        "{} {:02}:{:02}",
        format_date(ms),
        in_day / HOUR_MS,
        in_day % HOUR_MS / 60_000
    )
}

/// `1234567` as `1,234,567`.
fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A short count for axis labels: `950`, `12k`, `1.5M`.
fn compact(value: u64) -> String {
    let (scaled, suffix) = match value {
        0..1_000 => return value.to_string(),
        1_000..1_000_000 => (value as f64 / 1e3, "k"),
        1_000_000..1_000_000_000 => (value as f64 / 1e6, "M"),
        _ => (value as f64 / 1e9, "B"),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
}

/// Dollars without trailing zeros, for axis labels (`$0.5`, `$0.00015`).
fn usd_short(nanos: i64) -> String {
    let text = format_usd(nanos);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

fn format_ms(value: f64) -> String {
    format!("{value:.1} ms")
}

/// `cache_hits / requests` as a percentage with one decimal.
fn hit_rate(hits: u64, requests: u64) -> String {
    if requests == 0 {
        return "–".to_owned();
    }
    format!("{:.1}%", hits as f64 * 100.0 / requests as f64)
}

fn non_negative(nanos: i64) -> u64 {
    u64::try_from(nanos).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use dspex_analytics::prices::TokenUsage;
    use dspex_analytics::time::days_from_civil;

    use super::*;

    /// 2026-11-24 00:00 UTC.
    fn day_start() -> i64 {
        days_from_civil(2026, 11, 24) * DAY_MS
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        group: Option<&str>,
        requests: u64,
        errors: u64,
        input: u64,
        output: u64,
        cost_nanos: i64,
        cache_hits: u64,
        latency: [f64; 3],
    ) -> CostRow {
        CostRow {
            group: vec![group.map(str::to_owned)],
            bucket_start_ms: None,
            requests,
            errors,
            cancelled: 0,
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: input / 10,
            cache_write_tokens: 0,
            cost_nanos,
            cost_usd: cost_nanos as f64 / 1e9,
            unpriced_requests: 0,
            cache_hits,
            saved_cost_nanos: cost_nanos / 7,
            saved_cost_usd: cost_nanos as f64 / 7e9,
            latency_p50_ms: latency[0],
            latency_p95_ms: latency[1],
            latency_p99_ms: latency[2],
        }
    }

    fn error_record(at_ms: i64, provider: &str, model: &str, kind: &str, tags: &str) -> CallRecord {
        CallRecord {
            call_id: None,
            at_ms,
            correlation_id: None,
            provider: provider.to_owned(),
            model: model.to_owned(),
            response_model: None,
            operation: "chat".to_owned(),
            usage: TokenUsage::default(),
            cost_nanos: None,
            price_version: None,
            latency_us: 1_200_000,
            attempts: 3,
            status: "failed".to_owned(),
            error_kind: Some(kind.to_owned()),
            http_status: Some(429),
            cache_tier: None,
            saved_usage: TokenUsage::default(),
            saved_cost_nanos: None,
            workflow: None,
            step: None,
            tags: tags.to_owned(),
        }
    }

    /// A busy day: 24 hourly buckets with a quiet gap, three keys, two providers.
    fn sample() -> DashboardData {
        let until = day_start() + 14 * HOUR_MS + 5 * 60_000;
        let from = until - DAY_MS;
        let over_time: Vec<CostRow> = (0..24_i64)
            .filter(|h| !(3..6).contains(h))
            .map(|h| {
                let wave = u64::try_from((h * 37) % 23 + 5).unwrap();
                let mut r = row(
                    None,
                    wave * 40,
                    wave / 6,
                    wave * 21_000,
                    wave * 4_300,
                    i64::try_from(wave).unwrap() * 9_876_543,
                    wave * 9,
                    [420.0, 1_300.0, 2_100.0],
                );
                r.group = vec![Some(format_rfc3339(from + h * HOUR_MS))];
                r.bucket_start_ms = Some((from + h * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS);
                r
            })
            .collect();
        let totals = CostRow {
            group: Vec::new(),
            cancelled: 4,
            unpriced_requests: 12,
            ..row(
                None,
                12_345,
                67,
                9_876_543,
                1_234_567,
                4_321_987_654,
                2_345,
                [812.25, 1_904.5, 3_400.0],
            )
        };
        DashboardData {
            range_label: "24h".to_owned(),
            from_ms: from,
            until_ms: until,
            ranges: vec!["1h", "24h", "7d", "30d"],
            bucket: "hour",
            totals: Some(totals),
            over_time,
            by_key: vec![
                row(
                    Some("team-search"),
                    8_000,
                    20,
                    6_000_000,
                    700_000,
                    2_500_000_000,
                    1_900,
                    [700.0, 1_800.0, 3_000.0],
                ),
                row(
                    Some("batch-eval"),
                    4_000,
                    40,
                    3_500_000,
                    500_000,
                    1_700_000_000,
                    400,
                    [950.5, 2_100.0, 3_900.0],
                ),
                row(
                    None,
                    345,
                    7,
                    376_543,
                    34_567,
                    121_987_654,
                    45,
                    [300.0, 900.0, 1_000.0],
                ),
            ],
            by_provider: vec![
                row(
                    Some("openai"),
                    9_000,
                    50,
                    7_000_000,
                    900_000,
                    3_000_000_000,
                    2_000,
                    [650.0, 1_700.0, 3_100.0],
                ),
                row(
                    Some("anthropic"),
                    3_345,
                    17,
                    2_876_543,
                    334_567,
                    1_321_987_654,
                    345,
                    [1_100.0, 2_300.0, 3_800.0],
                ),
            ],
            by_model: vec![
                row(
                    Some("gpt-4o-mini"),
                    7_000,
                    30,
                    5_000_000,
                    600_000,
                    750_000_000,
                    1_500,
                    [600.0, 1_500.0, 2_900.0],
                ),
                row(
                    Some("gpt-4o"),
                    2_000,
                    20,
                    2_000_000,
                    300_000,
                    2_250_000_000,
                    500,
                    [900.0, 2_000.0, 3_300.0],
                ),
                row(
                    Some("claude-sonnet-4-5"),
                    3_345,
                    17,
                    2_876_543,
                    334_567,
                    1_321_987_654,
                    345,
                    [1_100.0, 2_300.0, 3_800.0],
                ),
            ],
            by_status: vec![
                row(
                    Some("success"),
                    12_274,
                    0,
                    9_876_543,
                    1_234_567,
                    4_321_987_654,
                    2_345,
                    [800.0, 1_900.0, 3_300.0],
                ),
                row(
                    Some("failed"),
                    67,
                    67,
                    0,
                    0,
                    0,
                    0,
                    [1_500.0, 9_000.0, 12_000.0],
                ),
                row(Some("cancelled"), 4, 0, 0, 0, 0, 0, [200.0, 250.0, 260.0]),
            ],
            recent_errors: vec![
                error_record(
                    until - 60_000,
                    "openai",
                    "gpt-4o",
                    "rate_limited",
                    r#"{"key":"team-search"}"#,
                ),
                error_record(
                    until - 3_600_000,
                    "anthropic",
                    "claude-sonnet-4-5",
                    "server_error",
                    "{}",
                ),
                error_record(
                    until - 7_300_000,
                    "openai",
                    "gpt-4o-mini",
                    "timeout",
                    r#"{"key":"batch-eval","team":"ml"}"#,
                ),
            ],
            providers: vec![
                ProviderState {
                    id: "openai".to_owned(),
                    circuit: "closed".to_owned(),
                    free_slots: 58,
                    buckets: vec![
                        BucketRoom {
                            name: "requests/60s".to_owned(),
                            used: 212,
                            limit: 500,
                        },
                        BucketRoom {
                            name: "tokens/60s".to_owned(),
                            used: 171_000,
                            limit: 200_000,
                        },
                    ],
                },
                ProviderState {
                    id: "anthropic".to_owned(),
                    circuit: "half_open".to_owned(),
                    free_slots: 16,
                    buckets: vec![BucketRoom {
                        name: "requests/60s".to_owned(),
                        used: 49,
                        limit: 50,
                    }],
                },
                ProviderState {
                    id: "local".to_owned(),
                    circuit: "open".to_owned(),
                    free_slots: 0,
                    buckets: Vec::new(),
                },
            ],
            generated_at_ms: until,
        }
    }

    fn empty() -> DashboardData {
        DashboardData {
            range_label: "1h".to_owned(),
            from_ms: day_start(),
            until_ms: day_start() + HOUR_MS,
            ranges: vec!["1h", "24h", "7d", "30d"],
            bucket: "hour",
            totals: None,
            over_time: Vec::new(),
            by_key: Vec::new(),
            by_provider: Vec::new(),
            by_model: Vec::new(),
            by_status: Vec::new(),
            recent_errors: Vec::new(),
            providers: Vec::new(),
            generated_at_ms: day_start() + HOUR_MS,
        }
    }

    /// The value of attribute `attr` in the first tag at or after `needle`.
    fn attr_after<'a>(html: &'a str, needle: &str, attr: &str) -> Option<&'a str> {
        let at = html.find(needle)?;
        let tag_end = at + html[at..].find('>')?;
        let tag = &html[at..tag_end];
        let start = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
        let len = tag[start..].find('"')?;
        Some(&tag[start..start + len])
    }

    /// The text between `start` and the next `end` after it.
    fn section<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
        let at = html.find(start).unwrap_or_else(|| panic!("no {start}"));
        let len = html[at..].find(end).unwrap();
        &html[at..at + len]
    }

    #[test]
    fn headline_data_values_equal_the_totals() {
        let data = sample();
        let html = render(&data);
        let t = data.totals.as_ref().unwrap();
        let expected = [
            ("requests", t.requests.to_string()),
            ("errors", t.errors.to_string()),
            ("input_tokens", t.input_tokens.to_string()),
            ("output_tokens", t.output_tokens.to_string()),
            ("cost_nanos", t.cost_nanos.to_string()),
            ("cache_hits", t.cache_hits.to_string()),
            ("saved_cost_nanos", t.saved_cost_nanos.to_string()),
            ("latency_p50_ms", "812.25".to_owned()),
            ("latency_p95_ms", "1904.5".to_owned()),
            ("latency_p99_ms", "3400".to_owned()),
        ];
        for (metric, value) in expected {
            let needle = format!("data-metric=\"{metric}\"");
            assert_eq!(html.matches(&needle).count(), 1, "{metric}");
            assert_eq!(
                attr_after(&html, &needle, "data-value"),
                Some(value.as_str()),
                "{metric}"
            );
        }
        // Visible text is formatted.
        assert!(html.contains(">12,345</dd>"));
        assert!(html.contains(">$4.321988</dd>"));
        assert!(html.contains(">19.0%</dd>"), "2345 / 12345 hits");
    }

    #[test]
    fn breakdown_cells_carry_the_raw_values() {
        let data = sample();
        let html = render(&data);
        for (kind, rows) in [
            ("key", &data.by_key),
            ("provider", &data.by_provider),
            ("model", &data.by_model),
            ("status", &data.by_status),
        ] {
            let table = section(
                &html,
                &format!("<table data-breakdown=\"{kind}\">"),
                "</table>",
            );
            assert_eq!(
                table.matches("<tr data-group=").count(),
                rows.len(),
                "{kind}"
            );
            for r in rows {
                let group = r.group[0].as_deref().unwrap_or("-");
                let tr = section(table, &format!("<tr data-group=\"{group}\">"), "</tr>");
                for (col, value) in [
                    ("requests", r.requests.to_string()),
                    ("errors", r.errors.to_string()),
                    ("input_tokens", r.input_tokens.to_string()),
                    ("output_tokens", r.output_tokens.to_string()),
                    ("cost_nanos", r.cost_nanos.to_string()),
                    ("cache_hits", r.cache_hits.to_string()),
                    ("latency_p50_ms", r.latency_p50_ms.to_string()),
                    ("latency_p99_ms", r.latency_p99_ms.to_string()),
                ] {
                    let needle = format!("data-col=\"{col}\"");
                    assert_eq!(
                        attr_after(tr, &needle, "data-value"),
                        Some(value.as_str()),
                        "{kind} {group} {col}"
                    );
                }
            }
        }
    }

    #[test]
    fn data_strings_come_out_inert() {
        let evil = "<script>alert(\"x\")</script>";
        let mut data = sample();
        data.by_key[0].group = vec![Some(evil.to_owned())];
        data.by_model[0].group = vec![Some("a'b\"c&d".to_owned())];
        data.recent_errors[0].model = evil.to_owned();
        data.recent_errors[0].error_kind = Some(evil.to_owned());
        data.recent_errors[0].tags =
            format!(r#"{{"key":{}}}"#, serde_json::to_string(evil).unwrap());
        data.providers[0].id = evil.to_owned();
        data.providers[0].circuit = evil.to_owned();
        data.providers[0].buckets[0].name = evil.to_owned();
        data.range_label = evil.to_owned();
        let html = render(&data);
        assert!(!html.contains("<script>alert"));
        // Only the page's own script element remains.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(
            html.contains("<tr data-group=\"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;\">")
        );
        assert!(html.contains("data-group=\"a&#39;b&quot;c&amp;d\""));
        assert!(html.contains("<span class=\"badge unknown\">"));
        assert_eq!(
            escape("<a href='x'>&\"").to_string(),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );

        let login = render_login(Some(evil));
        assert!(!login.contains("<script"));
        assert!(login.contains("&lt;script&gt;"));
    }

    #[test]
    fn empty_data_renders_a_readable_empty_state() {
        let html = render(&empty());
        assert!(html.contains("No calls in this range."));
        assert!(!html.contains("<svg class=\"chart\""));
        assert!(!html.contains("class=\"bar\""));
        assert!(!html.contains("NaN") && !html.contains("inf"));
        for metric in [
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "cost_nanos",
            "cache_hits",
            "saved_cost_nanos",
            "latency_p50_ms",
            "latency_p95_ms",
            "latency_p99_ms",
        ] {
            let needle = format!("data-metric=\"{metric}\"");
            assert_eq!(
                attr_after(&html, &needle, "data-value"),
                Some("0"),
                "{metric}"
            );
        }
        for kind in ["key", "provider", "model", "status"] {
            let table = section(
                &html,
                &format!("<table data-breakdown=\"{kind}\">"),
                "</table>",
            );
            assert!(!table.contains("data-group"));
            assert!(table.contains("No calls in this range."));
        }
        assert!(html.contains("No errors in this range."));
        assert!(html.contains("No providers registered."));
    }

    #[test]
    fn one_svg_bar_per_time_bucket() {
        let data = sample();
        let html = render(&data);
        for chart in ["spend", "tokens"] {
            let svg = section(&html, &format!("data-chart=\"{chart}\""), "</svg>");
            assert!(svg.contains("role=\"img\""));
            assert_eq!(
                svg.matches("<g class=\"bar\"").count(),
                data.over_time.len(),
                "{chart}"
            );
            assert_eq!(
                svg.matches("<title>").count(),
                data.over_time.len(),
                "{chart}: a tooltip per bar"
            );
        }
        let tokens = section(&html, "data-chart=\"tokens\"", "</svg>");
        assert_eq!(
            tokens.matches("<rect").count(),
            2 * data.over_time.len(),
            "input and output stacked"
        );

        // Days over a month, and an `all` range, still draw one bar per row.
        let mut data = sample();
        data.bucket = "day";
        data.from_ms = i64::MIN;
        data.until_ms = i64::MAX;
        for (i, r) in data.over_time.iter_mut().enumerate() {
            r.bucket_start_ms = Some(day_start() - i64::try_from(i).unwrap() * 3 * DAY_MS);
        }
        data.over_time.reverse();
        let html = render(&data);
        let svg = section(&html, "data-chart=\"spend\"", "</svg>");
        assert_eq!(
            svg.matches("<g class=\"bar\"").count(),
            data.over_time.len()
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(html.contains("the first recorded call to now"));
    }

    #[test]
    fn range_selector_is_a_get_form_on_dashboard() {
        let html = render(&sample());
        let form = section(&html, "<form class=\"range\"", "</form>");
        assert!(form.contains("method=\"get\" action=\"/dashboard\""));
        assert!(form.contains("name=\"range\""));
        assert!(form.contains("<option value=\"24h\" selected>24h</option>"));
        assert_eq!(form.matches("<option").count(), 4);
        assert!(form.contains("<button type=\"submit\">"));

        let mut data = sample();
        data.range_label = "48h".to_owned();
        let html = render(&data);
        assert!(html.contains("<option value=\"48h\" selected>48h</option>"));
    }

    #[test]
    fn login_page_posts_the_admin_key() {
        let html = render_login(None);
        assert!(html.contains("<form method=\"post\" action=\"/dashboard/login\">"));
        assert!(html.contains("name=\"admin_key\""));
        assert!(html.contains("type=\"password\""));
        assert!(!html.contains("role=\"alert\""));
        assert!(
            render_login(Some("Wrong key."))
                .contains("<p class=\"alert\" role=\"alert\">Wrong key.</p>")
        );
    }

    #[test]
    fn recent_errors_show_time_and_key_tag() {
        let data = sample();
        let html = render(&data);
        let table = section(&html, "<table data-table=\"recent-errors\">", "</table>");
        assert!(table.contains(">2026-11-24 14:04</time>"));
        assert!(table.contains("<td>team-search</td>"));
        assert!(table.contains("<td>batch-eval</td>"));
        assert!(table.contains("<td>rate_limited</td><td class=\"num\">429</td>"));
    }

    #[test]
    fn providers_show_circuit_slots_and_buckets() {
        let html = render(&sample());
        let table = section(&html, "<table data-table=\"providers\">", "</table>");
        assert!(table.contains("data-provider=\"anthropic\" data-circuit=\"half_open\""));
        assert!(table.contains("<span class=\"badge half_open\">half-open</span>"));
        assert!(
            table.contains("data-bucket=\"tokens/60s\" data-used=\"171000\" data-limit=\"200000\"")
        );
        assert!(table.contains("<title>requests/60s: 49 of 50 used</title>"));
        assert!(table.contains("no limits configured"));
    }

    #[test]
    fn helpers_format_as_documented() {
        assert_eq!(
            format_utc(day_start() + 13 * HOUR_MS + 5 * 60_000 + 59_999),
            "2026-11-24 13:05"
        );
        assert_eq!(format_utc(-60_000), "1969-12-31 23:59");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(compact(950), "950");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(1_500_000), "1.5M");
        assert_eq!(usd_short(500_000_000), "$0.5");
        assert_eq!(usd_short(150_000), "$0.00015");
        assert_eq!(usd_short(0), "$0");
        assert_eq!(hit_rate(1, 3), "33.3%");
        assert_eq!(hit_rate(0, 0), "–");
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(1_999), 2_000);
        assert_eq!(nice_ceiling(2_001), 5_000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
        for top in [1, 2, 5, 10, 20, 50, 100, 2_000, 5_000_000] {
            let divisions = tick_divisions(top);
            assert!(top.is_multiple_of(divisions), "{top}");
        }
        assert_eq!(key_tag(r#"{"key":"k1","team":"x"}"#), Some("k1".to_owned()));
        assert_eq!(key_tag("{}"), None);
        assert_eq!(key_tag("not json"), None);
    }

    /// `DSPEX_DASHBOARD_SAMPLE=/tmp/dashboard-sample.html cargo test -p
    /// dspex-gateway --lib dashboard` writes a sample page to look at (any
    /// value not ending in `.html` writes `dashboard-sample.html` in the
    /// temporary directory).
    #[test]
    fn writes_a_sample_page_when_asked() {
        let Some(target) = std::env::var_os("DSPEX_DASHBOARD_SAMPLE") else {
            return;
        };
        let path = if target.to_string_lossy().ends_with(".html") {
            std::path::PathBuf::from(target)
        } else {
            std::env::temp_dir().join("dashboard-sample.html")
        };
        std::fs::write(&path, render(&sample())).unwrap();
        std::fs::write(
            path.with_file_name("dashboard-empty-sample.html"),
            render(&empty()),
        )
        .unwrap();
        let login = path.with_file_name("dashboard-login-sample.html");
        std::fs::write(login, render_login(Some("That admin key is not valid."))).unwrap();
    }
}
