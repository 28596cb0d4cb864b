//! Tier order, promotion, TTL, errors, single-flight, namespaces, semantic
//! scope, events and stats.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dspex_cache::{
    Cache, CacheError, CacheEvent, CacheKey, LexicalEmbedder, LookupOptions, SemanticQuery,
    SemanticScope, Source, Tier,
};
use dspex_core::events::Delivery;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Answer {
    text: String,
    tokens: u64,
}

fn answer(text: &str) -> Answer {
    Answer {
        text: text.to_owned(),
        tokens: 10,
    }
}

fn key(ns: &str, prompt: &str) -> CacheKey {
    CacheKey::from_canonical_json(ns, &json!({"model": "m", "prompt": prompt})).unwrap()
}

type Res = Result<Answer, std::io::Error>;

async fn ok(text: &str) -> Res {
    Ok(answer(text))
}

async fn full_cache(dir: &std::path::Path) -> Cache<Answer> {
    Cache::builder()
        .l1(100, 1 << 20)
        .l2_redb(dir, 1 << 30)
        .token_estimator(|a: &Answer| a.tokens)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn tier_order_and_promotion() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("t", "hello");
    {
        let cache = full_cache(dir.path()).await;
        let first = cache
            .get_or_compute(&k, None, ok("one"), &LookupOptions::new())
            .await
            .unwrap();
        assert_eq!(first.source, Source::Computed);
        let second = cache
            .get_or_compute(&k, None, ok("two"), &LookupOptions::new())
            .await
            .unwrap();
        assert_eq!(second.source, Source::L1);
        assert_eq!(second.value.text, "one");
    }
    // A new process (a new cache on the same directory): L1 is empty, L2 answers
    // and promotes to L1.
    let cache = full_cache(dir.path()).await;
    let third = cache
        .get_or_compute(&k, None, ok("three"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(third.source, Source::L2);
    assert_eq!(third.value.text, "one");
    let fourth = cache.get(&k, None).await.unwrap();
    assert_eq!(fourth.source, Source::L1);
    let stats = cache.stats().await;
    assert_eq!(stats.tier(Tier::L2).unwrap().hits, 1);
    assert_eq!(stats.tier(Tier::L1).unwrap().hits, 1);
    assert_eq!(stats.tier(Tier::L1).unwrap().tokens_saved, 10);
    assert_eq!(stats.tier(Tier::L2).unwrap().entries, 1);
    assert!(stats.tier(Tier::L2).unwrap().bytes > 0);
    let check = cache.verify_store().await.unwrap().unwrap();
    assert!(check.is_consistent(), "{check:?}");
}

#[tokio::test]
async fn ttl_expiry_in_every_tier_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let cache = full_cache(dir.path()).await;
    let k = key("t", "short-lived");
    let opts = LookupOptions::new().ttl(Duration::from_millis(300));
    cache
        .get_or_compute(&k, None, ok("v1"), &opts)
        .await
        .unwrap();
    assert_eq!(cache.get(&k, None).await.unwrap().source, Source::L1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(cache.get(&k, None).await.is_none(), "expired in L1 and L2");
    let again = cache
        .get_or_compute(&k, None, ok("v2"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (again.source, again.value.text.as_str()),
        (Source::Computed, "v2")
    );
    // purge_expired removes expired L2 rows.
    let k2 = key("t", "other");
    cache
        .get_or_compute(
            &k2,
            None,
            ok("x"),
            &LookupOptions::new().ttl(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.purge_expired().await.unwrap(), 1);
    assert_eq!(cache.stats().await.tier(Tier::L2).unwrap().entries, 1);
}

#[tokio::test]
async fn errors_are_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = full_cache(dir.path()).await;
    let k = key("t", "flaky");
    let err = cache
        .get_or_compute(
            &k,
            None,
            async { Err::<Answer, _>(std::io::Error::other("upstream 500")) },
            &LookupOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, CacheError::Compute(e) if e.to_string() == "upstream 500"));
    assert!(err.to_string().contains("upstream 500"));
    assert!(cache.get(&k, None).await.is_none());
    let ok = cache
        .get_or_compute(&k, None, ok("fine"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(ok.source, Source::Computed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_100_identical_requests_reach_upstream_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = full_cache(dir.path()).await;
    let calls = Arc::new(AtomicU32::new(0));
    let k = key("t", "popular");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(
                    &k,
                    None,
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(answer("shared"))
                    },
                    &LookupOptions::new(),
                )
                .await
                .unwrap()
        }));
    }
    let mut sources = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.value.text, "shared");
        sources.push(got.source);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Computed).count(),
        1
    );
    let stats = cache.stats().await;
    assert_eq!(stats.computes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_shares_errors_and_survives_a_cancelled_leader() {
    let cache: Cache<Answer> = Cache::builder().l1(100, 1 << 20).build().await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let k = key("t", "failing");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, calls, k) = (cache.clone(), Arc::clone(&calls), k.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(
                    &k,
                    None,
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err::<Answer, _>(std::io::Error::other("down"))
                    },
                    &LookupOptions::new(),
                )
                .await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(CacheError::Compute(_))));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "waiters share the leader's error"
    );

    // A leader that is cancelled: the waiter takes over and computes.
    let k = key("t", "cancelled");
    let leader = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute(
                    &k,
                    None,
                    async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, std::io::Error>(answer("never"))
                    },
                    &LookupOptions::new(),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiter = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute(&k, None, ok("waiter"), &LookupOptions::new())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter does not hang")
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.source, got.value.text.as_str()),
        (Source::Computed, "waiter")
    );
}

#[tokio::test]
async fn options_no_cache_no_store_and_namespaces_isolate_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let cache = full_cache(dir.path()).await;
    let a = key("tenant-a", "same prompt");
    let b = key("tenant-b", "same prompt");
    cache
        .get_or_compute(&a, None, ok("for a"), &LookupOptions::new())
        .await
        .unwrap();
    let got_b = cache
        .get_or_compute(&b, None, ok("for b"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (got_b.source, got_b.value.text.as_str()),
        (Source::Computed, "for b")
    );
    // The namespace option re-homes a key.
    let via_option = cache
        .get_or_compute(
            &a,
            None,
            ok("x"),
            &LookupOptions::new().namespace("tenant-b"),
        )
        .await
        .unwrap();
    assert_eq!(via_option.value.text, "for b");
    // no_cache skips the lookup but stores; no_store computes without storing.
    let fresh = cache
        .get_or_compute(&a, None, ok("fresh a"), &LookupOptions::new().no_cache())
        .await
        .unwrap();
    assert_eq!(fresh.source, Source::Computed);
    assert_eq!(cache.get(&a, None).await.unwrap().value.text, "fresh a");
    let c = key("tenant-a", "unstored");
    cache
        .get_or_compute(&c, None, ok("temp"), &LookupOptions::new().no_store())
        .await
        .unwrap();
    assert!(cache.get(&c, None).await.is_none());
    // Clearing one namespace leaves the other.
    let cleared = cache.clear(Some("tenant-a"), None).await.unwrap();
    assert!(
        cleared.iter().any(|(t, n)| *t == Tier::L2 && *n == 1),
        "{cleared:?}"
    );
    assert!(cache.get(&a, None).await.is_none());
    assert_eq!(cache.get(&b, None).await.unwrap().value.text, "for b");
    assert!(cache.clear(Some("bad:ns"), None).await.is_err());
}

#[tokio::test]
async fn semantic_hits_stay_inside_their_scope() {
    let cache: Cache<Answer> = Cache::builder()
        .l1(100, 1 << 20)
        .l3(Arc::new(LexicalEmbedder::new()))
        .build()
        .await
        .unwrap();
    let scope = SemanticScope::from_canonical_json(&json!({"model": "m", "history": []}));
    let other =
        SemanticScope::from_canonical_json(&json!({"model": "m", "history": ["earlier turn"]}));
    let q1 = SemanticQuery::new(scope, "How do I learn Rust quickly?");
    let k1 = key("t", "How do I learn Rust quickly?");
    cache
        .get_or_compute(&k1, Some(&q1), ok("read the book"), &LookupOptions::new())
        .await
        .unwrap();
    // A near-verbatim rephrasing in the same scope hits L3.
    let q2 = SemanticQuery::new(scope, "how do I learn rust quickly");
    let k2 = key("t", "how do I learn rust quickly");
    let hit = cache
        .get_or_compute(&k2, Some(&q2), ok("other"), &LookupOptions::new())
        .await
        .unwrap();
    let Source::L3 { similarity } = hit.source else {
        panic!("expected an L3 hit, got {:?}", hit.source)
    };
    assert!(similarity >= cache.threshold().unwrap());
    assert_eq!(hit.value.text, "read the book");
    // The same text in another scope (another conversation) must miss.
    let q3 = SemanticQuery::new(other, "How do I learn Rust quickly?");
    let k3 = key("t", "other scope");
    let miss = cache
        .get_or_compute(&k3, Some(&q3), ok("fresh"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(miss.source, Source::Computed);
    // And another namespace too.
    let k4 = key("u", "How do I learn Rust quickly?");
    let miss = cache
        .get_or_compute(&k4, Some(&q1), ok("tenant u"), &LookupOptions::new())
        .await
        .unwrap();
    assert_eq!(miss.source, Source::Computed);
    // A different question in the same scope misses.
    let q5 = SemanticQuery::new(scope, "What is the capital of France?");
    let miss = cache
        .get_or_compute(
            &key("t", "france"),
            Some(&q5),
            ok("Paris"),
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(miss.source, Source::Computed);
}

struct RejectAll;

impl dspex_cache::Verifier for RejectAll {
    fn verify<'a>(&'a self, _q: &'a str, _c: &'a str) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

#[tokio::test]
async fn a_verifier_can_veto_semantic_hits() {
    let cache: Cache<Answer> = Cache::builder()
        .l1(100, 1 << 20)
        .l3(Arc::new(LexicalEmbedder::new()))
        .verifier(Arc::new(RejectAll))
        .build()
        .await
        .unwrap();
    let mut events = cache.events().subscribe("test", Delivery::Lossless);
    let scope = SemanticScope::from_bytes(b"s");
    let q = SemanticQuery::new(scope, "Where is the Eiffel tower?");
    cache
        .get_or_compute(&key("t", "1"), Some(&q), ok("Paris"), &LookupOptions::new())
        .await
        .unwrap();
    let again = cache
        .get_or_compute(
            &key("t", "2"),
            Some(&q),
            ok("recomputed"),
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(again.source, Source::Computed);
    let mut rejected = false;
    while let Some(e) = events.try_recv() {
        rejected |= matches!(*e, CacheEvent::Rejected { .. });
    }
    assert!(rejected);
}

#[tokio::test]
async fn events_report_hits_by_tier_misses_stores_and_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let cache = full_cache(dir.path()).await;
    let mut events = cache.events().subscribe("test", Delivery::Lossless);
    let k = key("t", "evented");
    cache
        .get_or_compute(&k, None, ok("v"), &LookupOptions::new())
        .await
        .unwrap();
    cache
        .get_or_compute(&k, None, ok("v"), &LookupOptions::new())
        .await
        .unwrap();
    cache.clear(None, Some(Tier::L2)).await.unwrap();
    let mut seen = Vec::new();
    while let Some(e) = events.try_recv() {
        seen.push((*e).clone());
    }
    assert!(
        seen.iter().any(|e| matches!(e, CacheEvent::Miss { .. })),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, CacheEvent::Store { tier: Tier::L1, .. }))
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, CacheEvent::Store { tier: Tier::L2, .. }))
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, CacheEvent::Hit { tier: Tier::L1, .. }))
    );
    assert!(seen.iter().any(|e| matches!(
        e,
        CacheEvent::Evict {
            tier: Tier::L2,
            count: 1,
            ..
        }
    )));
}

#[tokio::test]
async fn l1_is_bounded_by_entries_and_l2_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cache: Cache<String> = Cache::builder()
        .l1(10, 1 << 20)
        .l2_redb(dir.path(), 20_000)
        .build()
        .await
        .unwrap();
    for i in 0..100 {
        let k = CacheKey::from_bytes("t", format!("{i}").as_bytes()).unwrap();
        cache.insert(&k, "x".repeat(500), None, None).await.unwrap();
    }
    let stats = cache.stats().await;
    let l1 = stats.tier(Tier::L1).unwrap();
    assert!(l1.entries <= 10, "{l1:?}");
    let l2 = stats.tier(Tier::L2).unwrap();
    assert!(l2.bytes <= 20_000, "{l2:?}");
    assert!(l2.entries >= 20, "{l2:?}");
    assert!(l2.evictions > 0);
    // The newest survive, the oldest were evicted.
    let newest = CacheKey::from_bytes("t", b"99").unwrap();
    assert!(cache.get(&newest, None).await.is_some());
    let oldest = CacheKey::from_bytes("t", b"0").unwrap();
    cache.clear(None, Some(Tier::L1)).await.unwrap();
    assert!(cache.get(&oldest, None).await.is_none());
    assert!(cache.verify_store().await.unwrap().unwrap().is_consistent());
}

#[tokio::test]
async fn two_caches_on_one_directory_share_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let a = full_cache(dir.path()).await;
    let b = full_cache(dir.path()).await;
    let k = key("t", "shared-db");
    a.get_or_compute(&k, None, ok("from a"), &LookupOptions::new())
        .await
        .unwrap();
    let got = b.get(&k, None).await.unwrap();
    assert_eq!(
        (got.source, got.value.text.as_str()),
        (Source::L2, "from a")
    );
}

#[tokio::test]
async fn config_builds_the_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let loader = dspex_core::config::ConfigLoader::builder(dspex_cache::CONFIG_KEYS)
        .toml_str(format!(
            "[cache]\ndir = \"{}\"\nl3 = true\nttl = \"1h\"\n",
            dir.path().display()
        ))
        .without_env()
        .build()
        .unwrap();
    let config = dspex_cache::CacheConfig::load(&loader).unwrap();
    let cache: Cache<Answer> = Cache::from_config(&config, None).await.unwrap();
    assert_eq!(
        cache.threshold(),
        Some(dspex_cache::semantic::lexical::DEFAULT_THRESHOLD)
    );
    let stats = cache.stats().await;
    assert!(stats.tiers.iter().all(|t| t.enabled), "{stats:?}");
    assert!(dir.path().join(dspex_cache::REDB_FILE_NAME).exists());
}

/// The lexical embedder under another name: another vector space as far as
/// persistence can tell.
struct Renamed(LexicalEmbedder);

impl dspex_cache::Embedder for Renamed {
    fn name(&self) -> &str {
        "lexical-renamed"
    }
    fn dimension(&self) -> usize {
        self.0.dimension()
    }
    fn default_threshold(&self) -> f32 {
        self.0.default_threshold()
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [&'a str],
    ) -> futures::future::BoxFuture<'a, dspex_cache::Result<Vec<Vec<f32>>>> {
        self.0.embed(texts)
    }
}

#[tokio::test]
async fn the_semantic_tier_survives_a_restart_on_disk() {
    use dspex_cache::Embedder;
    let dir = tempfile::tempdir().unwrap();
    let open = |embedder: Arc<dyn Embedder>| {
        Cache::<Answer>::builder()
            .l1(100, 1 << 20)
            .l2_redb(dir.path(), 1 << 30)
            .l3(embedder)
            .build()
    };
    let scope = SemanticScope::from_canonical_json(&json!({"model": "m", "history": []}));
    let rust = SemanticQuery::new(scope, "How do I learn Rust quickly?");
    let france = SemanticQuery::new(scope, "What is the capital of France?");
    {
        let cache = open(Arc::new(LexicalEmbedder::new())).await.unwrap();
        for (query, value) in [(&rust, "read the book"), (&france, "Paris")] {
            cache
                .get_or_compute(
                    &key("t", &query.text),
                    Some(query),
                    ok(value),
                    &LookupOptions::new(),
                )
                .await
                .unwrap();
        }
        // A removed entry takes its vector with it, in the same transaction.
        cache.remove(&key("t", &france.text)).await.unwrap();
        let check = cache.verify_store().await.unwrap().unwrap();
        assert!(check.is_consistent(), "{check:?}");
        assert_eq!((check.entries, check.semantic_rows), (1, 1), "{check:?}");
    }
    // A new cache on the directory (a restarted process) answers a
    // rephrasing from L3 without computing.
    {
        let cache = open(Arc::new(LexicalEmbedder::new())).await.unwrap();
        let hit = cache
            .get_or_compute(
                &key("t", "how do I learn rust quickly"),
                Some(&SemanticQuery::new(scope, "how do I learn rust quickly")),
                ok("computed again"),
                &LookupOptions::new(),
            )
            .await
            .unwrap();
        assert!(matches!(hit.source, Source::L3 { .. }), "{:?}", hit.source);
        assert_eq!(hit.value.text, "read the book");
        let miss = cache
            .get_or_compute(
                &key("t", "what is the capital of france"),
                Some(&SemanticQuery::new(scope, "what is the capital of france")),
                ok("computed"),
                &LookupOptions::new(),
            )
            .await
            .unwrap();
        assert_eq!(miss.source, Source::Computed);
    }
    // Vectors from another embedder are another space: discarded on open,
    // while the exact entries stay.
    let cache = open(Arc::new(Renamed(LexicalEmbedder::new())))
        .await
        .unwrap();
    let check = cache.verify_store().await.unwrap().unwrap();
    assert!(check.is_consistent(), "{check:?}");
    assert_eq!(check.semantic_rows, 0, "{check:?}");
    // The Rust answer and the France one computed after the restart (an L3
    // hit stores nothing under the rephrasing's key).
    assert_eq!(check.entries, 2, "{check:?}");
    let miss = cache
        .get_or_compute(
            &key("t", "how do I learn Rust fast?"),
            Some(&SemanticQuery::new(scope, "how do I learn Rust fast?")),
            ok("fresh"),
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_ne!(miss.value.text, "read the book");
    let exact = cache
        .get_or_compute(
            &key("t", &rust.text),
            Some(&rust),
            ok("computed"),
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(exact.value.text, "read the book");
    assert_eq!(exact.source, Source::L2);
}

#[tokio::test]
async fn evicted_entries_take_their_vectors_with_them() {
    let dir = tempfile::tempdir().unwrap();
    // A cap small enough that a few hundred entries overflow it.
    let cache: Cache<Answer> = Cache::builder()
        .l2_redb(dir.path(), 64 * 1024)
        .l3(Arc::new(LexicalEmbedder::new()))
        .build()
        .await
        .unwrap();
    let scope = SemanticScope::from_canonical_json(&json!({"model": "m"}));
    for i in 0..300 {
        let text = format!("question number {i} about topic {}", i * 7919 % 1000);
        cache
            .get_or_compute(
                &key("t", &text),
                Some(&SemanticQuery::new(scope, text.clone())),
                ok("answer"),
                &LookupOptions::new(),
            )
            .await
            .unwrap();
    }
    let check = cache.verify_store().await.unwrap().unwrap();
    assert!(check.is_consistent(), "{check:?}");
    assert!(check.entries < 300, "the cap evicted: {check:?}");
    assert_eq!(check.semantic_rows, check.entries, "{check:?}");
    assert!(check.recorded_bytes <= 64 * 1024, "{check:?}");
    cache.clear(None, None).await.unwrap();
    let check = cache.verify_store().await.unwrap().unwrap();
    assert_eq!((check.entries, check.semantic_rows), (0, 0), "{check:?}");
    assert_eq!(check.recorded_bytes, 0, "{check:?}");
}
