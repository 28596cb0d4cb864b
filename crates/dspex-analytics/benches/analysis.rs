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

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_analytics::{GroupBy, Store, TimeRange};

mod fixture;

use fixture::fill;

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
