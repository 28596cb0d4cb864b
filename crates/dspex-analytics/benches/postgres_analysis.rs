//! The standard analyses (what `dspex costs` runs) over one million rows on
//! PostgreSQL (`DSPEX_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each two ways: from the hourly
//! rollups (the default for large ranges) and exactly from the raw rows (what
//! every analysis did before rollups). The rows go in a schema of their own,
//! dropped at the end. Skipped, with a message, when PostgreSQL is not
//! reachable.
//!
//! `cargo bench -p dspex-analytics --bench postgres_analysis`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    missing_docs
)]

mod fixture;

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_analytics::{GroupBy, Store, TimeRange};

fn analyses() -> Vec<(&'static str, &'static str, Vec<GroupBy>, usize)> {
    let all = "all";
    let week = "2025-11-16T10:30:00Z..2025-11-23T10:30:00Z";
    vec![
        (
            "provider_model",
            all,
            vec![GroupBy::Provider, GroupBy::Model],
            8,
        ),
        (
            "provider_model_last_7_days",
            week,
            vec![GroupBy::Provider, GroupBy::Model],
            8,
        ),
        ("day", all, vec![GroupBy::Day], 30),
        (
            "tag_team",
            all,
            vec![GroupBy::parse("tag:team").unwrap()],
            3,
        ),
        (
            "status_error_kind",
            all,
            vec![GroupBy::Status, GroupBy::ErrorKind],
            2,
        ),
        ("workflow", all, vec![GroupBy::Workflow], 3),
        ("total", all, vec![], 1),
    ]
}

fn range(text: &str) -> TimeRange {
    if text == "all" {
        TimeRange::All
    } else {
        TimeRange::parse(text).unwrap()
    }
}

fn postgres(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("dspex_bench_pg_{}", std::process::id());
    let Some(store) = runtime.block_on(async {
        let store = Store::open(&url, Some(&schema)).await.ok()?;
        let started = Instant::now();
        fixture::fill(&store).await;
        eprintln!(
            "inserted {} rows (with rollups) in {:.1} s",
            fixture::ROWS,
            started.elapsed().as_secs_f64()
        );
        Some(store)
    }) else {
        eprintln!("PostgreSQL not reachable at {url}: skipping");
        return;
    };
    let (rolled, exact) = match &store {
        Store::Postgres(pg) => (
            Store::Postgres(pg.clone()),
            Store::Postgres(pg.clone().with_exact_limit(u64::MAX)),
        ),
        Store::Sqlite(_) => unreachable!(),
    };
    let mut group = c.benchmark_group("postgres_1m_rows");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for (name, text, by, expected) in analyses() {
        for (how, store) in [("rollups", &rolled), ("exact", &exact)] {
            group.bench_function(format!("{how}/{name}"), |b| {
                b.to_async(&runtime).iter(|| async {
                    let rows = store.get_cost_analysis(range(text), &by).await.unwrap();
                    if expected == 30 {
                        assert!(rows.len() >= 30);
                    } else {
                        assert_eq!(rows.len(), expected, "{how}/{name}");
                    }
                });
            });
        }
    }
    group.finish();
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

criterion_group!(benches, postgres);
criterion_main!(benches);
