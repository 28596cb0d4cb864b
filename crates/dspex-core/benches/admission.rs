//! Admission cost of the in-process limiter across two buckets.
#![allow(missing_docs, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_core::protect::{Admission, BucketSpec, Cost, LocalLimiter, RedisLimiter, Unit};

fn limiter_buckets() -> Vec<BucketSpec> {
    // Limits far above what the bench admits in a window, so it measures the
    // admission path, not waiting.
    vec![
        BucketSpec::new(Unit::Requests, 1 << 50, Duration::from_secs(1)),
        BucketSpec::new(Unit::Tokens, 1 << 60, Duration::from_secs(1)),
    ]
}

fn limiter() -> LocalLimiter {
    LocalLimiter::new(limiter_buckets())
}

fn admission(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission");
    let local = limiter();
    let cost = Cost::call(500, 200);
    group.bench_function("two_buckets_uncontended", |b| {
        b.iter(|| {
            let reservation = local.try_reserve(cost).expect("room");
            reservation.settle(Cost::call(420, 180));
        });
    });
    group.finish();

    // 8 threads hammering one limiter: report admissions per second.
    let shared = Arc::new(limiter());
    c.bench_function("admission/two_buckets_8_threads_x_10k", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    let limiter = Arc::clone(&shared);
                    scope.spawn(move || {
                        for _ in 0..10_000 {
                            let r = limiter.try_reserve(cost).expect("room");
                            r.settle(Cost::call(420, 180));
                        }
                    });
                }
            });
        });
    });
}

/// One admission against Redis (a single `EVALSHA` round trip), when a Redis is
/// reachable at `DSPEX_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
fn redis_admission(c: &mut Criterion) {
    let url = std::env::var("DSPEX_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let name = format!("bench-{}", std::process::id());
    let Ok(limiter) = runtime.block_on(RedisLimiter::connect(&url, &name, limiter_buckets()))
    else {
        eprintln!("admission/redis: skipped, no Redis at {url}");
        return;
    };
    let cost = Cost::call(500, 200);
    c.bench_function("admission/redis_two_buckets", |b| {
        b.to_async(&runtime).iter(|| async {
            // Dropped unsettled: measures the admission round trip alone.
            drop(limiter.reserve(cost, Duration::ZERO).await.expect("room"));
        });
    });
}

criterion_group!(benches, admission, redis_admission);
criterion_main!(benches);
