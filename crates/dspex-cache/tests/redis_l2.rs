//! The shared Redis L2 against the local Redis. Run with `--ignored`; needs
//! Redis at `DSPEX_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::Duration;

use dspex_cache::{Cache, CacheKey, LookupOptions, Source, Tier};

fn redis_url() -> String {
    std::env::var("DSPEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("dspex-test:{}:{nanos}:", std::process::id())
}

async fn cache(prefix: &str) -> Cache<String> {
    Cache::builder()
        .l1(100, 1 << 20)
        .l2_redis(redis_url(), prefix)
        .build()
        .await
        .expect("Redis reachable")
}

#[tokio::test]
#[ignore = "needs Redis (DSPEX_TEST_REDIS_URL)"]
async fn two_processes_share_entries_through_redis() {
    let prefix = unique_prefix();
    let a = cache(&prefix).await;
    let b = cache(&prefix).await;
    let k = CacheKey::from_bytes("team", b"question").unwrap();
    let first = a
        .get_or_compute(
            &k,
            None,
            async { Ok::<_, std::io::Error>("answer".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(first.source, Source::Computed);
    // b has its own L1: the value comes from Redis, then from b's L1.
    let second = b
        .get_or_compute(
            &k,
            None,
            async { Ok::<_, std::io::Error>("other".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (second.source, second.value.as_str()),
        (Source::L2, "answer")
    );
    assert_eq!(b.get(&k, None).await.unwrap().source, Source::L1);
    let stats = b.stats().await;
    let l2 = stats.tier(Tier::L2).unwrap();
    assert_eq!((l2.backend.as_str(), l2.entries), ("redis", 1));
    assert!(l2.bytes > 0);
    a.clear(None, None).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (DSPEX_TEST_REDIS_URL)"]
async fn redis_ttl_and_clear_by_namespace() {
    let prefix = unique_prefix();
    let c = cache(&prefix).await;
    let short = CacheKey::from_bytes("ns1", b"short").unwrap();
    c.insert(
        &short,
        "v".to_owned(),
        None,
        Some(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let keep = CacheKey::from_bytes("ns2", b"keep").unwrap();
    let gone = CacheKey::from_bytes("ns1", b"gone").unwrap();
    c.insert(&keep, "k".to_owned(), None, None).await.unwrap();
    c.insert(&gone, "g".to_owned(), None, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    c.clear(None, Some(Tier::L1)).await.unwrap();
    assert!(c.get(&short, None).await.is_none(), "expired in Redis");
    let cleared = c.clear(Some("ns1"), Some(Tier::L2)).await.unwrap();
    assert_eq!(cleared, vec![(Tier::L2, 1)]);
    assert!(c.get(&gone, None).await.is_none());
    assert_eq!(c.get(&keep, None).await.unwrap().value.as_str(), "k");
    c.clear(None, None).await.unwrap();
    assert_eq!(c.stats().await.tier(Tier::L2).unwrap().entries, 0);
}

#[tokio::test]
async fn a_redis_outage_is_a_miss_not_a_failure() {
    // Nothing listens on port 1: the connection fails at start-up with an
    // error naming the URL without its password.
    let err = Cache::<String>::builder()
        .l2_redis("redis://user:secret@127.0.0.1:1/0", "x:")
        .build()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(err.is_retryable());
}
