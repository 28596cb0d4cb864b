#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dspex_analytics::prices::Price;
use dspex_analytics::report::{render_csv, render_json, render_table};
use dspex_analytics::time::unix_ms;
use dspex_analytics::{CallRecord, GroupBy, PriceTable, SpendFilter, Store, TimeRange};

use common::{MINI, MINI_2000, SONNET, Spec, ms, prices, traffic, usage};

async fn store_with_traffic() -> Store {
    let store = Store::open(":memory:", None).await.unwrap();
    store.insert(Arc::new(traffic())).await.unwrap();
    store
}

fn day_24() -> TimeRange {
    TimeRange::parse("2026-11-24..2026-11-25").unwrap()
}

#[tokio::test]
async fn groups_by_provider_and_model() {
    let store = store_with_traffic().await;
    let rows = store
        .get_cost_analysis(day_24(), &[GroupBy::Provider, GroupBy::Model])
        .await
        .unwrap();
    let keys: Vec<Vec<Option<String>>> = rows.iter().map(|r| r.group.clone()).collect();
    let s = |a: &str, b: &str| vec![Some(a.to_owned()), Some(b.to_owned())];
    assert_eq!(
        keys,
        vec![
            s("anthropic", "claude-sonnet-4-20250514"),
            s("local", "my-finetune"),
            s("openai", "gpt-4o-mini"),
        ]
    );
    let sonnet = &rows[0];
    assert_eq!(sonnet.requests, 2);
    assert_eq!(sonnet.errors, 1);
    assert_eq!(sonnet.input_tokens, 1_000);
    assert_eq!(sonnet.cached_input_tokens, 400);
    assert_eq!(sonnet.cost_nanos, SONNET);
    let local = &rows[1];
    assert_eq!(local.unpriced_requests, 1);
    assert_eq!(local.cost_nanos, 0);
    assert_eq!(local.input_tokens, 500);
    let openai = &rows[2];
    // The 25th is outside the range: 4 calls + 1 cache hit.
    assert_eq!(openai.requests, 5);
    assert_eq!(openai.cost_nanos, 4 * MINI);
    assert_eq!(openai.cache_hits, 1);
    assert_eq!(openai.saved_cost_nanos, MINI);
    assert_eq!(openai.input_tokens, 4_000);
}

#[tokio::test]
async fn time_ranges_bound_the_rows() {
    let store = store_with_traffic().await;
    let total = |rows: Vec<dspex_analytics::CostRow>| rows.first().map_or(0, |r| r.requests);
    assert_eq!(
        total(store.get_cost_analysis(TimeRange::All, &[]).await.unwrap()),
        9
    );
    assert_eq!(
        total(store.get_cost_analysis(day_24(), &[]).await.unwrap()),
        8
    );
    // `from` inclusive, `until` exclusive.
    let hour = TimeRange::parse("2026-11-24T10:00:00Z..2026-11-24T11:00:00Z").unwrap();
    let rows = store.get_cost_analysis(hour, &[]).await.unwrap();
    assert_eq!(total(rows.clone()), 4);
    assert_eq!(rows[0].cost_nanos, 4 * MINI);
    // Nothing in range: no rows at all.
    let empty = TimeRange::parse("2020-01-01..2020-01-02").unwrap();
    assert!(
        store
            .get_cost_analysis(empty, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn relative_ranges_end_now() {
    // A store of its own: the fixed-date traffic above would fall inside a
    // relative range on the day the wall clock reaches it (it once did).
    let store = Store::open(":memory:", None).await.unwrap();
    let total = |rows: Vec<dspex_analytics::CostRow>| rows.first().map_or(0, |r| r.requests);
    // Rows stamped now are in `last 5 minutes`, rows from an hour ago are
    // not, and rows in the future are in no relative range.
    let now = unix_ms(SystemTime::now());
    let p = prices();
    let spec = Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0));
    store
        .insert(Arc::new(vec![
            spec.record_ms(now - 1_000, &p),
            spec.record_ms(now - 3_600_000, &p),
            spec.record_ms(now + 3_600_000, &p),
        ]))
        .await
        .unwrap();
    let recent = store
        .get_cost_analysis(TimeRange::parse("last 5 minutes").unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(total(recent), 1);
    let two_hours = store
        .get_cost_analysis(TimeRange::parse("2h").unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(total(two_hours), 2);
}

#[tokio::test]
async fn groups_by_hour_and_day_buckets() {
    let store = store_with_traffic().await;
    let rows = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Hour])
        .await
        .unwrap();
    let buckets: Vec<(&str, u64, i64)> = rows
        .iter()
        .map(|r| (r.group[0].as_deref().unwrap(), r.requests, r.cost_nanos))
        .collect();
    assert_eq!(
        buckets,
        vec![
            ("2026-11-24T10:00:00Z", 4, 4 * MINI),
            ("2026-11-24T11:00:00Z", 3, SONNET),
            ("2026-11-24T12:00:00Z", 1, 0),
            ("2026-11-25T09:00:00Z", 1, MINI_2000),
        ]
    );
    assert_eq!(rows[0].bucket_start_ms, Some(ms("2026-11-24T10:00:00Z")));
    let days = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Day])
        .await
        .unwrap();
    let days: Vec<(&str, u64)> = days
        .iter()
        .map(|r| (r.group[0].as_deref().unwrap(), r.requests))
        .collect();
    assert_eq!(
        days,
        vec![("2026-11-24T00:00:00Z", 8), ("2026-11-25T00:00:00Z", 1)]
    );
}

#[tokio::test]
async fn groups_by_tags_workflow_step_status_and_cache_tier() {
    let store = store_with_traffic().await;
    let by_team = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::parse("tag:team").unwrap()])
        .await
        .unwrap();
    let teams: Vec<(Option<&str>, u64, i64)> = by_team
        .iter()
        .map(|r| (r.group[0].as_deref(), r.requests, r.cost_nanos))
        .collect();
    assert_eq!(
        teams,
        vec![
            (None, 3, MINI_2000),
            (Some("ads"), 2, SONNET),
            (Some("search"), 4, 4 * MINI)
        ]
    );
    let by_step = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Workflow, GroupBy::Step])
        .await
        .unwrap();
    assert_eq!(by_step.len(), 2);
    assert_eq!(
        by_step[1].group,
        vec![Some("qa".to_owned()), Some("answer".to_owned())]
    );
    assert_eq!(by_step[1].requests, 2);
    let by_status = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Status])
        .await
        .unwrap();
    let statuses: Vec<(&str, u64)> = by_status
        .iter()
        .map(|r| (r.group[0].as_deref().unwrap(), r.requests))
        .collect();
    assert_eq!(statuses, vec![("failed", 1), ("success", 8)]);
    let by_tier = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::CacheTier])
        .await
        .unwrap();
    assert_eq!(by_tier[1].group, vec![Some("l1".to_owned())]);
    assert_eq!(by_tier[1].cache_hits, 1);
    assert_eq!(by_tier[1].saved_cost_nanos, MINI);
}

#[tokio::test]
async fn latency_percentiles_are_exact() {
    let store = Store::open(":memory:", None).await.unwrap();
    let p = prices();
    // 1..=100 ms for provider a; 7 ms ×3 for provider b.
    let mut rows: Vec<CallRecord> = (1..=100)
        .map(|i| {
            Spec::new("a", "m", usage(1, 1, 0, 0))
                .latency_ms(i)
                .record_ms(ms("2026-11-24T10:00:00Z") + i as i64, &p)
        })
        .collect();
    for _ in 0..3 {
        rows.push(
            Spec::new("b", "m", usage(1, 1, 0, 0))
                .latency_ms(7)
                .record("2026-11-24T10:00:00Z", &p),
        );
    }
    store.insert(Arc::new(rows)).await.unwrap();
    let result = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Provider])
        .await
        .unwrap();
    // percentile_cont: linear interpolation between the closest ranks.
    assert_eq!(result[0].latency_p50_ms, 50.5);
    assert_eq!(result[0].latency_p95_ms, 95.05);
    assert_eq!(result[0].latency_p99_ms, 99.01);
    assert_eq!(result[1].latency_p50_ms, 7.0);
    assert_eq!(result[1].latency_p99_ms, 7.0);
    let all = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(all[0].requests, 103);
    // 103 values: 7,7,7,1..100 sorted = 1..6,7,7,7,7,8..100; median is the 52nd = 49.
    assert_eq!(all[0].latency_p50_ms, 49.0);
}

#[tokio::test]
async fn spend_filters_prime_budgets() {
    let store = store_with_traffic().await;
    let (from, until) = (ms("2026-11-24T00:00:00Z"), ms("2026-11-25T00:00:00Z"));
    let spent = |f: SpendFilter| {
        let store = store.clone();
        async move { store.spent(&f, from, until).await.unwrap() }
    };
    assert_eq!(spent(SpendFilter::default()).await, 4 * MINI + SONNET);
    assert_eq!(
        spent(SpendFilter {
            provider: Some("openai".into()),
            ..Default::default()
        })
        .await,
        4 * MINI
    );
    assert_eq!(
        spent(SpendFilter {
            model: Some("claude-sonnet-4-20250514".into()),
            ..Default::default()
        })
        .await,
        SONNET
    );
    assert_eq!(
        spent(SpendFilter {
            tag: Some(("team".into(), "search".into())),
            ..Default::default()
        })
        .await,
        4 * MINI
    );
    assert_eq!(
        spent(SpendFilter {
            tag: Some(("workflow".into(), "qa".into())),
            ..Default::default()
        })
        .await,
        SONNET
    );
}

#[tokio::test]
async fn repricing_recomputes_costs_from_raw_tokens() {
    let store = store_with_traffic().await;
    let mut table = PriceTable::empty();
    // gpt-4o-mini now $1/M in, $2/M out; my-finetune gets a price; sonnet has none.
    table
        .insert(
            "openai/gpt-4o-mini",
            Price {
                input: 1_000_000,
                output: 2_000_000,
                cached_input: None,
                cache_write: None,
            },
            None,
        )
        .unwrap();
    table
        .insert(
            "local/my-finetune",
            Price {
                input: 100_000,
                output: 100_000,
                cached_input: None,
                cache_write: None,
            },
            None,
        )
        .unwrap();
    let report = store.reprice(Arc::new(table)).await.unwrap();
    assert_eq!(report.rows, 9);
    assert_eq!(report.unpriced, 2);
    assert_eq!(report.priced, 7);
    let rows = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Provider])
        .await
        .unwrap();
    // anthropic: now unpriced.
    assert_eq!(rows[0].cost_nanos, 0);
    assert_eq!(rows[0].unpriced_requests, 2);
    // local: 550 tokens × 100,000 pico = 55,000 nano.
    assert_eq!(rows[1].cost_nanos, 55_000);
    assert_eq!(rows[1].unpriced_requests, 0);
    // openai: 4 × (1,000 × 1,000 + 100 × 2,000) + 2,000 × 1,000 nano; the hit saved 1,200,000.
    assert_eq!(rows[2].cost_nanos, 4 * 1_200_000 + 2_000_000);
    assert_eq!(rows[2].saved_cost_nanos, 1_200_000);
    let raw = store.rows(TimeRange::All).await.unwrap();
    assert_eq!(raw[0].price_version.as_deref(), Some("override"));
}

#[tokio::test]
async fn reports_render_as_table_csv_and_json() {
    let store = store_with_traffic().await;
    let group = [GroupBy::Hour];
    let rows = store
        .get_cost_analysis(TimeRange::All, &group)
        .await
        .unwrap();
    let table = render_table(&rows, &group);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("hour"), "{table}");
    assert!(
        lines[0].contains("requests") && lines[0].contains("p99 ms"),
        "{table}"
    );
    // One line per bucket plus the header and a total.
    assert_eq!(lines.len(), 6, "{table}");
    // Bars proportional to cost: 11:00 (3,420,000) is the largest and gets 40
    // blocks, 10:00 (840,000) 840/3420 of 40 = 9, 12:00 (0) none, 09:00 on the
    // 25th (300,000) 3.
    let blocks = |line: &str| line.chars().filter(|&c| c == '█').count();
    assert_eq!(blocks(lines[1]), 9, "{table}");
    assert_eq!(blocks(lines[2]), 40, "{table}");
    assert_eq!(blocks(lines[3]), 0, "{table}");
    assert_eq!(blocks(lines[4]), 3, "{table}");
    assert!(lines[0].ends_with("trend"), "{table}");
    assert!(lines[5].starts_with("total"), "{table}");
    assert!(lines[1].contains("$0.000840"), "{table}");
    // Columns line up: every row's cost column ends at the same offset.
    let header_width = lines[0].find("unpriced").unwrap();
    assert!(
        lines[1..5]
            .iter()
            .all(|l| l.char_indices().nth(header_width).is_some()),
        "{table}"
    );
    let no_bars = render_table(&rows, &[GroupBy::Hour, GroupBy::Provider][..1]);
    assert!(no_bars.contains('█'));
    let by_provider = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Provider])
        .await
        .unwrap();
    assert!(!render_table(&by_provider, &[GroupBy::Provider]).contains('█'));

    let csv = render_csv(&rows, &group);
    let csv_lines: Vec<&str> = csv.lines().collect();
    assert!(
        csv_lines[0].starts_with("hour,requests,errors,cancelled,"),
        "{csv}"
    );
    assert_eq!(csv_lines.len(), 5);
    assert!(
        csv_lines[1].starts_with("2026-11-24T10:00:00Z,4,0,0,4000,400,0,0,0.000840000,"),
        "{csv}"
    );

    let json: serde_json::Value = serde_json::from_str(&render_json(&rows, &group)).unwrap();
    assert_eq!(json[0]["group"]["hour"], "2026-11-24T10:00:00Z");
    assert_eq!(json[0]["cost_nanos"], 840_000);
    assert_eq!(json[1]["requests"], 3);
}

#[test]
fn time_range_errors_name_the_text() {
    let error = TimeRange::parse("since tuesday").unwrap_err().to_string();
    assert!(error.contains("`since tuesday`"), "{error}");
    let error = TimeRange::parse("2026-11-24..tomorrow")
        .unwrap_err()
        .to_string();
    assert!(error.contains("`tomorrow`"), "{error}");
    assert_eq!(
        TimeRange::parse("last 3 days").unwrap(),
        TimeRange::Last(Duration::from_secs(3 * 86_400))
    );
}

#[tokio::test]
async fn rollups_give_the_same_sums_and_percentiles_within_one_percent() {
    // Force the rollup path (exact limit 0) and compare with the raw scan.
    let rollups = Store::Sqlite(
        dspex_analytics::SqliteStore::in_memory()
            .unwrap()
            .with_exact_limit(0),
    );
    let exact = Store::open(":memory:", None).await.unwrap();
    let p = prices();
    let mut rows = traffic();
    // Plus 2,000 calls with spread latencies, one hour and a half long.
    for i in 0..2_000_i64 {
        rows.push(
            Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0))
                .tag("team", "search")
                .latency_ms(10 + (i * 7919) as u64 % 3_000)
                .record_ms(ms("2026-11-24T13:00:00Z") + i * 2_700, &p),
        );
    }
    for store in [&rollups, &exact] {
        // In two batches, so rollups merge across transactions.
        store
            .insert(Arc::new(rows[..1_000].to_vec()))
            .await
            .unwrap();
        store
            .insert(Arc::new(rows[1_000..].to_vec()))
            .await
            .unwrap();
    }
    for (range, group) in [
        (TimeRange::All, vec![GroupBy::Provider, GroupBy::Model]),
        (TimeRange::All, vec![GroupBy::Hour]),
        (
            TimeRange::All,
            vec![GroupBy::parse("tag:team").unwrap(), GroupBy::Status],
        ),
        (TimeRange::All, vec![GroupBy::CacheTier, GroupBy::Workflow]),
        // Partial hours at both ends come from the raw rows.
        (
            TimeRange::parse("2026-11-24T10:30:00Z..2026-11-24T13:45:00Z").unwrap(),
            vec![GroupBy::Provider],
        ),
        (
            TimeRange::parse("2026-11-24T10:30:00Z..2026-11-24T13:45:00Z").unwrap(),
            vec![],
        ),
    ] {
        let a = rollups.get_cost_analysis(range, &group).await.unwrap();
        let b = exact.get_cost_analysis(range, &group).await.unwrap();
        assert_eq!(a.len(), b.len(), "{group:?}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.group, y.group);
            assert_eq!(
                (
                    x.requests,
                    x.errors,
                    x.input_tokens,
                    x.output_tokens,
                    x.cached_input_tokens
                ),
                (
                    y.requests,
                    y.errors,
                    y.input_tokens,
                    y.output_tokens,
                    y.cached_input_tokens
                ),
                "{group:?}"
            );
            assert_eq!(
                (x.cost_nanos, x.unpriced_requests),
                (y.cost_nanos, y.unpriced_requests)
            );
            assert_eq!(
                (x.cache_hits, x.saved_cost_nanos),
                (y.cache_hits, y.saved_cost_nanos)
            );
            for (approx, truth) in [
                (x.latency_p50_ms, y.latency_p50_ms),
                (x.latency_p95_ms, y.latency_p95_ms),
                (x.latency_p99_ms, y.latency_p99_ms),
            ] {
                // Histogram buckets are within 1% of every value in them.
                let tolerance = truth * 0.0101;
                assert!(
                    (approx - truth).abs() <= tolerance,
                    "{group:?}: {approx} vs {truth}"
                );
            }
        }
    }
}
