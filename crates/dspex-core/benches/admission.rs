//! Admission cost of the in-process limiter across two buckets.
#![allow(missing_docs, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_core::protect::{BucketSpec, Cost, LocalLimiter, Unit};

fn limiter() -> LocalLimiter {
    // Limits far above what the bench admits in a window, so it measures the
    // admission path, not waiting.
    LocalLimiter::new(vec![
        BucketSpec::new(Unit::Requests, u64::MAX / 4, Duration::from_secs(1)),
        BucketSpec::new(Unit::Tokens, u64::MAX / 4, Duration::from_secs(1)),
    ])
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

criterion_group!(benches, admission);
criterion_main!(benches);
