//! Clearing and purging the semantic tier reaches its persisted vectors: a
//! cache opened afterwards on the same directory (a new process) reloads
//! none of them and never answers from L3 what was cleared.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use dspex_cache::{
    Cache, CacheKey, LexicalEmbedder, LookupOptions, SemanticQuery, SemanticScope, Source, Tier,
};
use serde_json::json;

fn key(ns: &str, prompt: &str) -> CacheKey {
    CacheKey::from_canonical_json(ns, &json!({"model": "m", "prompt": prompt})).unwrap()
}

async fn open(dir: &std::path::Path, l3: bool) -> Cache<String> {
    let builder = Cache::builder().l1(100, 1 << 20).l2_redb(dir, 1 << 30);
    let builder = if l3 {
        builder.l3(Arc::new(LexicalEmbedder::new()))
    } else {
        builder
    };
    builder.build().await.unwrap()
}

fn scope() -> SemanticScope {
    SemanticScope::from_canonical_json(&json!({"model": "m", "history": []}))
}

const ASKED: &str = "How do I learn Rust quickly?";
const REPHRASED: &str = "how do I learn rust quickly";

async fn store(cache: &Cache<String>, ns: &str) {
    let query = SemanticQuery::new(scope(), ASKED);
    let stored = cache
        .get_or_compute(
            &key(ns, ASKED),
            Some(&query),
            async { Ok::<_, std::io::Error>("read the book".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(stored.source, Source::Computed);
}

async fn source_of_rephrasing(cache: &Cache<String>, ns: &str) -> Source {
    let query = SemanticQuery::new(scope(), REPHRASED);
    cache
        .get_or_compute(
            &key(ns, REPHRASED),
            Some(&query),
            async { Ok::<_, std::io::Error>("computed".to_owned()) },
            &LookupOptions::new().no_store(),
        )
        .await
        .unwrap()
        .source
}

#[tokio::test]
async fn clearing_l3_deletes_the_persisted_vectors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = open(dir.path(), true).await;
        store(&cache, "t").await;
    }
    // Before clearing, a reopened cache answers the rephrasing from L3.
    {
        let cache = open(dir.path(), true).await;
        assert!(matches!(
            source_of_rephrasing(&cache, "t").await,
            Source::L3 { .. }
        ));
        let cleared = cache.clear(None, Some(Tier::L3)).await.unwrap();
        assert_eq!(cleared, vec![(Tier::L3, 1)]);
        let check = cache.verify_store().await.unwrap().unwrap();
        assert!(check.is_consistent(), "{check:?}");
        assert_eq!((check.entries, check.semantic_rows), (1, 0), "{check:?}");
    }
    let cache = open(dir.path(), true).await;
    assert_eq!(
        source_of_rephrasing(&cache, "t").await,
        Source::Computed,
        "a cleared vector was reloaded"
    );
    // The exact entry stays in L2: only the semantic tier was cleared.
    let exact = cache
        .get_or_compute(
            &key("t", ASKED),
            Some(&SemanticQuery::new(scope(), ASKED)),
            async { Ok::<_, std::io::Error>("computed".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(exact.source, Source::L2);
    assert_eq!(*exact.value, "read the book");
}

#[tokio::test]
async fn a_cache_without_an_embedder_still_clears_the_persisted_vectors() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = open(dir.path(), true).await;
        store(&cache, "a").await;
        store(&cache, "b").await;
    }
    {
        // What `dspex cache clear --tier l3` opens for an embedder whose
        // model it does not load: L2 only.
        let cache = open(dir.path(), false).await;
        let cleared = cache.clear(Some("a"), Some(Tier::L3)).await.unwrap();
        assert_eq!(cleared, vec![(Tier::L3, 1)]);
    }
    let cache = open(dir.path(), true).await;
    assert_eq!(source_of_rephrasing(&cache, "a").await, Source::Computed);
    assert!(
        matches!(source_of_rephrasing(&cache, "b").await, Source::L3 { .. }),
        "another namespace keeps its vectors"
    );
}

#[tokio::test]
async fn purging_expired_entries_drops_their_vectors_from_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), true).await;
    let query = SemanticQuery::new(scope(), ASKED);
    cache
        .insert(
            &key("t", ASKED),
            "read the book".to_owned(),
            Some(&query),
            Some(Duration::from_millis(1)),
        )
        .await
        .unwrap();
    // Wait (without a timed assertion) until the entry has expired.
    while cache.verify_store().await.unwrap().unwrap().entries == 1
        && cache.get(&key("t", ASKED), None).await.is_some()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cache.purge_expired().await.unwrap(), 1);
    let check = cache.verify_store().await.unwrap().unwrap();
    assert!(check.is_consistent(), "{check:?}");
    assert_eq!((check.entries, check.semantic_rows), (0, 0), "{check:?}");
    let l3 = cache
        .stats()
        .await
        .tiers
        .into_iter()
        .find(|t| t.tier == Some(Tier::L3))
        .unwrap();
    assert_eq!(l3.entries, 0, "the purged vector left the index: {l3:?}");
}
