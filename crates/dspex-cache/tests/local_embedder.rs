//! The local MiniLM embedder (feature `local-embeddings`). Run with
//! `--features local-embeddings -- --ignored` and `DSPEX_TEST_MINILM_DIR`
//! pointing at the model directory (`scripts/fetch-minilm` prints it).
#![cfg(feature = "local-embeddings")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::PathBuf;
use std::sync::Arc;

use dspex_cache::semantic::dot;
use dspex_cache::semantic::local::LocalEmbedder;
use dspex_cache::{Cache, CacheKey, Embedder, LookupOptions, SemanticQuery, SemanticScope, Source};

fn model_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("DSPEX_TEST_MINILM_DIR")
            .expect("DSPEX_TEST_MINILM_DIR names the all-MiniLM-L6-v2 directory"),
    )
}

#[tokio::test]
#[ignore = "needs all-MiniLM-L6-v2 (DSPEX_TEST_MINILM_DIR; scripts/fetch-minilm)"]
async fn minilm_vectors_are_normalised_and_semantic() {
    let e = LocalEmbedder::load(&model_dir()).unwrap();
    assert_eq!(e.dimension(), 384);
    let v = e
        .embed(&[
            "How can I be a good geologist?",
            "What should I do to be a great geologist?",
            "How do I bake bread?",
        ])
        .await
        .unwrap();
    assert_eq!(v.len(), 3);
    assert!((dot(&v[0], &v[0]) - 1.0).abs() < 1e-4);
    let close = dot(&v[0], &v[1]);
    let far = dot(&v[0], &v[2]);
    assert!(close > 0.8 && far < 0.3, "close {close}, far {far}");
    // Batching does not change a text's vector (padding is masked out).
    let alone = e.embed(&["How do I bake bread?"]).await.unwrap();
    assert!(dot(&alone[0], &v[2]) > 0.9999);
}

#[tokio::test]
#[ignore = "needs all-MiniLM-L6-v2 (DSPEX_TEST_MINILM_DIR; scripts/fetch-minilm)"]
async fn minilm_paraphrase_hits_l3_within_scope_only() {
    let embedder = Arc::new(LocalEmbedder::load(&model_dir()).unwrap());
    let cache: Cache<String> = Cache::builder()
        .l1(100, 1 << 20)
        .l3(embedder)
        .build()
        .await
        .unwrap();
    let scope = SemanticScope::from_bytes(b"model=m;system=s");
    let q1 = SemanticQuery::new(scope, "How can I be a good geologist?");
    let k1 = CacheKey::from_bytes("t", b"1").unwrap();
    cache
        .get_or_compute(
            &k1,
            Some(&q1),
            async { Ok::<_, std::io::Error>("study rocks".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    let q2 = SemanticQuery::new(scope, "What should I do to be a great geologist?");
    let k2 = CacheKey::from_bytes("t", b"2").unwrap();
    let hit = cache
        .get_or_compute(
            &k2,
            Some(&q2),
            async { Ok::<_, std::io::Error>("x".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert!(matches!(hit.source, Source::L3 { .. }), "{:?}", hit.source);
    let other = SemanticQuery::new(SemanticScope::from_bytes(b"other"), q2.text.clone());
    let k3 = CacheKey::from_bytes("t", b"3").unwrap();
    let miss = cache
        .get_or_compute(
            &k3,
            Some(&other),
            async { Ok::<_, std::io::Error>("y".to_owned()) },
            &LookupOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(miss.source, Source::Computed);
}
