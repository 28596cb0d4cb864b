//! A Redis admission is one round trip: one `EVALSHA` and nothing else. (Its own
//! test binary, so no other test's Redis traffic is counted.) Run with
//! `--ignored`; needs Redis at `DSPEX_TEST_REDIS_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use dspex_core::protect::{Admission, BucketSpec, Cost, RedisLimiter, Unit};

fn redis_url() -> String {
    std::env::var("DSPEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn stat(info: &str, key: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(['=', ':']).split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Calls of EVALSHA, EVAL and SCRIPT made by clients so far.
async fn counts(connection: &mut redis::aio::MultiplexedConnection) -> (u64, u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    (
        stat(&info, "cmdstat_evalsha:calls"),
        stat(&info, "cmdstat_eval:calls"),
        stat(&info, "cmdstat_script|load:calls") + stat(&info, "cmdstat_script:calls"),
    )
}

#[tokio::test]
#[ignore = "needs Redis at DSPEX_TEST_REDIS_URL (default redis://127.0.0.1:6379); run with --ignored"]
async fn redis_admission_is_one_round_trip() {
    let name = format!("rtt-{}", uuid::Uuid::new_v4());
    let buckets = vec![
        BucketSpec::new(Unit::Requests, 1_000_000, Duration::from_secs(60)),
        BucketSpec::new(Unit::Tokens, 1_000_000_000, Duration::from_secs(60)),
    ];
    let limiter = RedisLimiter::connect(&redis_url(), &name, buckets)
        .await
        .expect("Redis reachable");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut probe = client.get_multiplexed_async_connection().await.unwrap();
    // The first admission loads the script; measure the steady state after it.
    drop(
        limiter
            .reserve(Cost::call(10, 10), Duration::ZERO)
            .await
            .unwrap(),
    );
    let before = counts(&mut probe).await;
    const N: u64 = 100;
    for _ in 0..N {
        // Dropped unsettled: no settlement traffic, only admissions.
        drop(
            limiter
                .reserve(Cost::call(10, 10), Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    let after = counts(&mut probe).await;
    // One EVALSHA per admission; the commands inside the script run on the
    // server within that one call.
    assert_eq!(after.0 - before.0, N, "one EVALSHA per admission");
    assert_eq!(after.1, before.1, "no EVAL: the script stayed cached");
    assert_eq!(after.2, before.2, "no SCRIPT LOAD");
}
