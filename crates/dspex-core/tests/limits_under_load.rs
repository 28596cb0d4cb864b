//! The configured limits are never exceeded, with many concurrent callers, in
//! process and (with `--ignored`, against a real Redis) across processes' worth
//! of separate clients.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use dspex_core::protect::{Admission, BucketSpec, Cost, LocalLimiter, RedisLimiter, Unit};
use parking_lot::Mutex;

/// `(admitted_at_micros, requests, settled_tokens)` of every admission.
type Log = Arc<Mutex<Vec<(u64, u64, u64)>>>;

/// Asserts that in every window `(t - window, t]` the admitted amounts stay
/// within `limit`. The worst window always ends at an admission, so checking
/// those is exhaustive.
fn assert_within(
    log: &[(u64, u64, u64)],
    window: Duration,
    limit: u64,
    pick: fn(&(u64, u64, u64)) -> u64,
) -> u64 {
    let mut entries: Vec<(u64, u64)> = log.iter().map(|e| (e.0, pick(e))).collect();
    entries.sort_unstable();
    let window = u64::try_from(window.as_micros()).unwrap();
    let (mut start, mut sum, mut worst) = (0, 0, 0);
    for end in 0..entries.len() {
        sum += entries[end].1;
        while entries[start].0 + window <= entries[end].0 {
            sum -= entries[start].1;
            start += 1;
        }
        assert!(
            sum <= limit,
            "{sum} admitted within one window, limit {limit}"
        );
        worst = worst.max(sum);
    }
    worst
}

async fn hammer(limiter: Arc<dyn Admission>, tasks: usize, run_for: Duration, log: Log) {
    let deadline = tokio::time::Instant::now() + run_for;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let limiter = Arc::clone(&limiter);
        let log = Arc::clone(&log);
        handles.push(tokio::spawn(async move {
            let mut i = task as u64;
            while tokio::time::Instant::now() < deadline {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let estimate = 50 + (i >> 33) % 100;
                let Ok(reservation) = limiter
                    .reserve(Cost::call(estimate, 0), Duration::from_millis(300))
                    .await
                else {
                    continue;
                };
                // Real usage is at most the estimate here: refunds only.
                let actual = estimate - (i >> 40) % 40;
                log.lock()
                    .push((reservation.admitted_at_micros(), 1, actual));
                reservation.settle(Cost::call(actual, 0));
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

fn buckets() -> Vec<BucketSpec> {
    vec![
        BucketSpec::new(Unit::Requests, 40, Duration::from_millis(250)),
        BucketSpec::new(Unit::Tokens, 3_000, Duration::from_millis(250)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_limits_hold_under_64_concurrent_callers() {
    let limiter: Arc<dyn Admission> = Arc::new(LocalLimiter::new(buckets()));
    let log: Log = Arc::default();
    hammer(limiter, 64, Duration::from_millis(1_500), Arc::clone(&log)).await;
    let log = log.lock();
    let worst_requests = assert_within(&log, Duration::from_millis(250), 40, |e| e.1);
    let worst_tokens = assert_within(&log, Duration::from_millis(250), 3_000, |e| e.2);
    // The limiter must also let traffic through, not just refuse it.
    assert!(log.len() >= 100, "only {} admissions", log.len());
    assert!(
        worst_requests >= 20 || worst_tokens >= 1_500,
        "limits barely used"
    );
}

fn redis_url() -> String {
    std::env::var("DSPEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis at DSPEX_TEST_REDIS_URL (default redis://127.0.0.1:6379); run with --ignored"]
async fn redis_limits_hold_across_two_clients() {
    let name = format!("test-{}", uuid::Uuid::new_v4());
    // Two limiters with their own connections: two processes' worth of clients.
    let a: Arc<dyn Admission> = Arc::new(
        RedisLimiter::connect(&redis_url(), &name, buckets())
            .await
            .expect("Redis reachable"),
    );
    let b: Arc<dyn Admission> = Arc::new(
        RedisLimiter::connect(&redis_url(), &name, buckets())
            .await
            .expect("Redis reachable"),
    );
    let log: Log = Arc::default();
    tokio::join!(
        hammer(a, 32, Duration::from_millis(2_000), Arc::clone(&log)),
        hammer(b, 32, Duration::from_millis(2_000), Arc::clone(&log)),
    );
    let log = log.lock();
    assert_within(&log, Duration::from_millis(250), 40, |e| e.1);
    assert!(log.len() >= 100, "only {} admissions", log.len());
}

#[tokio::test]
#[ignore = "needs Redis at DSPEX_TEST_REDIS_URL (default redis://127.0.0.1:6379); run with --ignored"]
async fn redis_settlement_refunds_and_pause_blocks() {
    let name = format!("test-{}", uuid::Uuid::new_v4());
    let limiter = RedisLimiter::connect(
        &redis_url(),
        &name,
        vec![BucketSpec::new(
            Unit::Tokens,
            1_000,
            Duration::from_secs(60),
        )],
    )
    .await
    .expect("Redis reachable");
    let r = limiter
        .reserve(Cost::call(900, 0), Duration::ZERO)
        .await
        .unwrap();
    let err = limiter
        .reserve(Cost::call(200, 0), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tokens/1m"), "{err}");
    r.settle(Cost::call(100, 0));
    // Settlement runs in the background: wait for it to land.
    let mut admitted = false;
    for _ in 0..50 {
        if let Ok(r) = limiter.reserve(Cost::call(800, 0), Duration::ZERO).await {
            r.settle(Cost::call(800, 0));
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted, "the refund freed room");
    let too_big = limiter
        .reserve(Cost::call(5_000, 0), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(
        too_big,
        dspex_core::CoreError::OverCapacity { .. }
    ));

    let other = RedisLimiter::connect(
        &redis_url(),
        &format!("{name}-pause"),
        vec![BucketSpec::new(
            Unit::Requests,
            1_000,
            Duration::from_secs(1),
        )],
    )
    .await
    .unwrap();
    other.pause(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let paused = other
        .reserve(Cost::call(1, 0), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        paused.to_string().contains("paused by upstream 429"),
        "{paused}"
    );
}
