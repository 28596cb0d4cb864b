//! Cost analysis over one million rows, grouped by provider and model (and by
//! day), on SQLite and — when `DSPEX_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) is reachable — on PostgreSQL.
//!
//! `cargo bench -p dspex-analytics --bench analysis`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_analytics::prices::TokenUsage;
use dspex_analytics::{CallRecord, GroupBy, Store, TimeRange};

const ROWS: usize = 1_000_000;
const BATCH: usize = 10_000;

const MODELS: [(&str, &str, i64); 8] = [
    ("openai", "gpt-4o-mini", 150),
    ("openai", "gpt-4o", 2_500),
    ("openai", "text-embedding-3-small", 20),
    ("anthropic", "claude-sonnet-4-20250514", 3_000),
    ("anthropic", "claude-haiku-4-5", 1_000),
    ("gemini", "gemini-2.0-flash", 100),
    ("groq", "llama-3.3-70b-versatile", 590),
    ("local", "my-finetune", 0),
];

/// A deterministic pseudo-random row `i` over the 30 days from 2025-10-25:
/// 8 provider/model pairs, each used by one of 3 workflows (one team per
/// workflow), 2% failures, 10% cache hits, latencies 20 ms to 2 s.
fn row(i: usize) -> CallRecord {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    let (provider, model, nano_per_kilo) = MODELS[(x % 8) as usize];
    let input = 100 + (x >> 8) % 4_000;
    let output = 10 + (x >> 20) % 800;
    let failed = (x >> 40).is_multiple_of(50);
    CallRecord {
        at_ms: 1_761_350_400_000 + ((x >> 12) % (30 * 86_400_000)) as i64,
        correlation_id: Some(format!("run-{}", i / 10)),
        provider: provider.to_owned(),
        model: model.to_owned(),
        response_model: Some(model.to_owned()),
        operation: "chat".to_owned(),
        usage: TokenUsage {
            input,
            output,
            cached_input: input / 4,
            cache_write: 0,
        },
        cost_nanos: (provider != "local").then(|| (input + output) as i64 * nano_per_kilo / 1000),
        price_version: Some("bundled@2026-11-24".to_owned()),
        latency_us: 20_000 + ((x >> 28) % 2_000_000) as i64,
        attempts: 1,
        status: if failed { "failed" } else { "success" }.to_owned(),
        error_kind: failed.then(|| "server_error".to_owned()),
        http_status: failed.then_some(500),
        cache_tier: (x >> 50).is_multiple_of(10).then(|| "l1".to_owned()),
        saved_usage: TokenUsage::default(),
        saved_cost_nanos: None,
        workflow: Some(["qa", "summarise", "extract"][((x % 8) % 3) as usize].to_owned()),
        step: None,
        tags: format!("{{\"team\":\"t{}\"}}", (x % 8) % 3),
    }
}

async fn fill(store: &Store) {
    for start in (0..ROWS).step_by(BATCH) {
        let batch: Vec<CallRecord> = (start..start + BATCH).map(row).collect();
        store.insert(Arc::new(batch)).await.unwrap();
    }
    assert_eq!(store.count().await.unwrap(), ROWS as u64);
}

fn analysis(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.sqlite");
    let sqlite = runtime.block_on(async {
        let store = Store::open(path.to_str().unwrap(), None).await.unwrap();
        fill(&store).await;
        store
    });
    let mut group = c.benchmark_group("analysis_1m_rows");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let by_model = [GroupBy::Provider, GroupBy::Model];
    group.bench_function("sqlite/provider_model/last_7_days", |b| {
        b.to_async(&runtime).iter(|| async {
            let week = TimeRange::parse("2025-11-16T10:30:00Z..2025-11-23T10:30:00Z").unwrap();
            let rows = sqlite.get_cost_analysis(week, &by_model).await.unwrap();
            assert_eq!(rows.len(), 8);
        });
    });
    let exact = match &sqlite {
        Store::Sqlite(s) => Store::Sqlite(s.clone().with_exact_limit(u64::MAX)),
        other => other.clone(),
    };
    group.bench_function("sqlite/provider_model/exact_raw_scan", |b| {
        b.to_async(&runtime).iter(|| async {
            let rows = exact
                .get_cost_analysis(TimeRange::All, &by_model)
                .await
                .unwrap();
            assert_eq!(rows.len(), 8);
        });
    });
    group.bench_function("sqlite/provider_model", |b| {
        b.to_async(&runtime).iter(|| async {
            let rows = sqlite
                .get_cost_analysis(TimeRange::All, &by_model)
                .await
                .unwrap();
            assert_eq!(rows.len(), 8);
        });
    });
    group.bench_function("sqlite/day", |b| {
        b.to_async(&runtime).iter(|| async {
            let rows = sqlite
                .get_cost_analysis(TimeRange::All, &[GroupBy::Day])
                .await
                .unwrap();
            assert!(rows.len() >= 30);
        });
    });
    group.bench_function("sqlite/tag_team", |b| {
        let team = [GroupBy::parse("tag:team").unwrap()];
        b.to_async(&runtime).iter(|| async {
            let rows = sqlite
                .get_cost_analysis(TimeRange::All, &team)
                .await
                .unwrap();
            assert_eq!(rows.len(), 3);
        });
    });
    let url = std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("dspex_bench_{}", std::process::id());
    let postgres = runtime.block_on(async {
        let store = Store::open(&url, Some(&schema)).await.ok()?;
        fill(&store).await;
        Some(store)
    });
    match &postgres {
        Some(postgres) => {
            group.bench_function("postgres/provider_model", |b| {
                b.to_async(&runtime).iter(|| async {
                    let rows = postgres
                        .get_cost_analysis(TimeRange::All, &by_model)
                        .await
                        .unwrap();
                    assert_eq!(rows.len(), 8);
                });
            });
        }
        None => eprintln!("PostgreSQL not reachable at {url}: skipping its bench"),
    }
    group.finish();
    if postgres.is_some() {
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
                .unwrap();
        });
    }
}

criterion_group!(benches, analysis);
criterion_main!(benches);
