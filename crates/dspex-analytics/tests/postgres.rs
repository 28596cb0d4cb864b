//! The PostgreSQL store, against a local server (`DSPEX_TEST_DATABASE_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`). Each test works in its
//! own schema, dropped at the end, so tests run in parallel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use dspex_analytics::prices::Price;
use dspex_analytics::{
    GroupBy, PriceTable, Recorder, RecorderOptions, SpendFilter, Store, TimeRange,
};
use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};

use common::{MINI, MINI_2000, SONNET, Spec, ms, prices, traffic, usage};

const IGNORE: &str = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)";

fn url() -> String {
    std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

struct Schema {
    name: String,
}

impl Schema {
    fn new(test: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self {
            name: format!("dspex_test_{test}_{}_{nanos}", std::process::id()),
        }
    }

    async fn store(&self) -> Store {
        Store::open(&url(), Some(&self.name)).await.unwrap()
    }

    async fn drop_schema(self) {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_analysis_matches_sqlite() {
    let _ = IGNORE;
    let schema = Schema::new("analysis");
    let store = schema.store().await;
    assert_eq!(store.backend(), "postgres");
    store.insert(Arc::new(traffic())).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 9);
    let day = TimeRange::parse("2026-11-24..2026-11-25").unwrap();
    let rows = store
        .get_cost_analysis(day, &[GroupBy::Provider, GroupBy::Model])
        .await
        .unwrap();
    let summary: Vec<(Option<String>, u64, u64, i64, u64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.group[0].clone(),
                r.requests,
                r.errors,
                r.cost_nanos,
                r.unpriced_requests,
                r.saved_cost_nanos,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("anthropic".into()), 2, 1, SONNET, 0, 0),
            (Some("local".into()), 1, 0, 0, 1, 0),
            (Some("openai".into()), 5, 0, 4 * MINI, 0, MINI),
        ]
    );
    // The same answer as SQLite for every dimension.
    let sqlite = Store::open(":memory:", None).await.unwrap();
    sqlite.insert(Arc::new(traffic())).await.unwrap();
    for group in [
        vec![GroupBy::Hour],
        vec![GroupBy::Day, GroupBy::Provider],
        vec![GroupBy::parse("tag:team").unwrap()],
        vec![GroupBy::Workflow, GroupBy::Step],
        vec![GroupBy::Status, GroupBy::ErrorKind],
        vec![GroupBy::CacheTier],
        vec![],
    ] {
        let pg = store
            .get_cost_analysis(TimeRange::All, &group)
            .await
            .unwrap();
        let lite = sqlite
            .get_cost_analysis(TimeRange::All, &group)
            .await
            .unwrap();
        assert_eq!(pg, lite, "group by {group:?}");
    }
    let hours = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Hour])
        .await
        .unwrap();
    assert_eq!(
        hours[3].group,
        vec![Some("2026-11-25T09:00:00Z".to_owned())]
    );
    assert_eq!(hours[3].cost_nanos, MINI_2000);
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_percentiles_spend_and_repricing() {
    let schema = Schema::new("pct");
    let store = schema.store().await;
    let p = prices();
    let rows: Vec<_> = (1..=100)
        .map(|i| {
            Spec::new("openai", "gpt-4o-mini", usage(1_000, 100, 0, 0))
                .tag("team", "search")
                .latency_ms(i)
                .record_ms(ms("2026-11-24T10:00:00Z") + i as i64, &p)
        })
        .collect();
    store.insert(Arc::new(rows)).await.unwrap();
    let result = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(result[0].latency_p50_ms, 50.5);
    assert_eq!(result[0].latency_p95_ms, 95.05);
    assert_eq!(result[0].latency_p99_ms, 99.01);
    assert_eq!(result[0].cost_nanos, 100 * MINI);
    let filter = SpendFilter {
        tag: Some(("team".into(), "search".into())),
        ..SpendFilter::default()
    };
    let (from, until) = (ms("2026-11-24T00:00:00Z"), ms("2026-11-25T00:00:00Z"));
    assert_eq!(store.spent(&filter, from, until).await.unwrap(), 100 * MINI);
    let other = SpendFilter {
        tag: Some(("team".into(), "ads".into())),
        ..SpendFilter::default()
    };
    assert_eq!(store.spent(&other, from, until).await.unwrap(), 0);
    let mut table = PriceTable::empty();
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
    let report = store.reprice(Arc::new(table)).await.unwrap();
    assert_eq!((report.rows, report.priced, report.unpriced), (100, 100, 0));
    let result = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    // 1,000 × $1/M + 100 × $2/M = $0.0012 per call.
    assert_eq!(result[0].cost_nanos, 100 * 1_200_000);
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_records_every_call() {
    const CALLS: usize = 20_000;
    let schema = Schema::new("record");
    let store = schema.store().await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let lm = ScriptedLm::from_fn(|request| {
        let last = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if last.ends_with("-13") {
            Err("nope".to_owned())
        } else {
            Ok("ok".to_owned())
        }
    });
    client.add_scripted("openai", lm).await.unwrap();
    let recorder = Recorder::attach(
        client.events(),
        store.clone(),
        Arc::new(PriceTable::bundled().unwrap()),
        RecorderOptions::default(),
    );
    let mut tasks = Vec::new();
    for t in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS / 4 {
                let _ = client
                    .request(
                        "openai",
                        vec![Message::user(format!("q{t}-{i}"))],
                        RequestOptions::new().model("gpt-4o-mini"),
                    )
                    .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.rows_written, CALLS as u64);
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(store.count().await.unwrap(), CALLS as u64);
    let by_kind = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::ErrorKind])
        .await
        .unwrap();
    // One failure per task (`q{t}-13`).
    assert_eq!(by_kind.len(), 2);
    // No error kind (the successes) sorts first.
    assert_eq!(by_kind[0].group, vec![None]);
    assert_eq!(by_kind[0].requests, CALLS as u64 - 4);
    assert_eq!(by_kind[0].errors, 0);
    assert_eq!(by_kind[1].group, vec![Some("invalid_request".to_owned())]);
    assert_eq!(by_kind[1].requests, 4);
    assert_eq!(by_kind[1].errors, 4);
    let rows = store.rows(TimeRange::All).await.unwrap();
    assert_eq!(rows.len(), CALLS);
    assert!(rows.iter().all(|r| r.tags == "{}"));
    schema.drop_schema().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_rejects_a_bad_schema_name() {
    let error = Store::open(&url(), Some("x; DROP TABLE calls"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("analytics.schema"), "{error}");
}
