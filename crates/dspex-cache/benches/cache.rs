//! Cache speed: L1 hit, L2 (redb) hit, L3 lookup over 100,000 entries with the
//! built-in embedder (embedding included), the exact/HNSW crossover, and the
//! local MiniLM embedder per query (feature `local-embeddings`, with
//! `DSPEX_TEST_MINILM_DIR` set), and reopening a directory of 10,000
//! persisted vectors.
//!
//! `cargo bench -p dspex-cache --bench cache` (add `--features local-embeddings`
//! for MiniLM).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr,
    missing_docs
)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_cache::{Cache, CacheKey, LexicalEmbedder, SemanticQuery, SemanticScope};
use futures::FutureExt;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    text: String,
    model: String,
    input_tokens: u64,
    output_tokens: u64,
}

fn answer() -> Answer {
    Answer {
        text: "The capital of France is Paris. It has been the capital since the 10th century \
               and is the country's largest city, with about two million inhabitants."
            .repeat(3),
        model: "gpt-4o-mini".to_owned(),
        input_tokens: 25,
        output_tokens: 120,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Synthetic questions with a realistic word distribution: a 20,000-word
/// vocabulary drawn with Zipf's law (a few words everywhere, most words rare),
/// so that vectors spread the way real prompts do.
struct Corpus {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Corpus {
    fn new(rng: &mut rand::rngs::SmallRng) -> Self {
        const SYLLABLES: &[&str] = &[
            "ka", "lo", "mi", "ne", "ru", "ta", "ve", "so", "pi", "da", "gu", "he", "jo", "ze",
            "wa", "ri", "no", "be", "cu", "fy",
        ];
        let words: Vec<String> = (0..20_000)
            .map(|_| {
                let n = rng.random_range(1..4);
                (0..n)
                    .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                    .collect()
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=words.len())
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(1.05);
                total
            })
            .collect();
        Self { words, cumulative }
    }

    fn sentence(&self, rng: &mut rand::rngs::SmallRng) -> String {
        let total = *self.cumulative.last().unwrap();
        let n = rng.random_range(6..14);
        (0..n)
            .map(|_| {
                let x = rng.random_range(0.0..total);
                let i = self.cumulative.partition_point(|c| *c < x);
                self.words[i.min(self.words.len() - 1)].as_str()
            })
            .collect::<Vec<_>>()
            .join(" ")
            + "?"
    }
}

fn tiers(c: &mut Criterion) {
    let rt = runtime();
    let l1: Cache<Answer> = rt
        .block_on(Cache::builder().l1(10_000, 64 << 20).build())
        .unwrap();
    let key = CacheKey::from_bytes("bench", b"hit").unwrap();
    rt.block_on(l1.insert(&key, answer(), None, None)).unwrap();
    // An L1 hit completes on its first poll: `now_or_never` measures the cache,
    // not an executor.
    c.bench_function("l1_hit", |b| {
        b.iter(|| {
            black_box(
                l1.get(black_box(&key), None)
                    .now_or_never()
                    .flatten()
                    .unwrap(),
            )
        });
    });

    let dir = tempfile::tempdir().unwrap();
    let l2: Cache<Answer> = rt
        .block_on(Cache::builder().l2_redb(dir.path(), 1 << 30).build())
        .unwrap();
    for i in 0..10_000u32 {
        let k = CacheKey::from_bytes("bench", &i.to_le_bytes()).unwrap();
        if i % 1000 == 0 || i == 4242 {
            rt.block_on(l2.insert(&k, answer(), None, None)).unwrap();
        }
    }
    let k2 = CacheKey::from_bytes("bench", &4242u32.to_le_bytes()).unwrap();
    c.bench_function("l2_hit_redb", |b| {
        b.iter(|| {
            black_box(
                l2.get(black_box(&k2), None)
                    .now_or_never()
                    .flatten()
                    .unwrap(),
            )
        });
    });
}

fn build_l3(
    rt: &tokio::runtime::Runtime,
    n: usize,
    hnsw_min: usize,
) -> (Cache<String>, Vec<String>) {
    let cache: Cache<String> = rt
        .block_on(
            Cache::builder()
                .l1(n as u64 * 2, 1 << 32)
                .l3(Arc::new(LexicalEmbedder::new()))
                .l3_max_entries(n * 2)
                .hnsw_min(hnsw_min)
                .build(),
        )
        .unwrap();
    let scope = SemanticScope::from_bytes(b"bench");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let corpus = Corpus::new(&mut rng);
    let mut texts = Vec::with_capacity(n);
    for i in 0..n {
        let text = corpus.sentence(&mut rng);
        let key = CacheKey::from_bytes("bench", &(i as u64).to_le_bytes()).unwrap();
        let q = SemanticQuery::new(scope, text.clone());
        rt.block_on(cache.insert(&key, format!("answer {i}"), Some(&q), None))
            .unwrap();
        texts.push(text);
    }
    (cache, texts)
}

fn l3(c: &mut Criterion) {
    let rt = runtime();
    let scope = SemanticScope::from_bytes(b"bench");
    let miss_key = CacheKey::from_bytes("bench", b"not-stored").unwrap();
    for (name, n, hnsw_min) in [
        ("l3_lookup_exact_1k", 1_000, usize::MAX),
        ("l3_lookup_hnsw_1k", 1_000, 1),
        ("l3_lookup_exact_4k", 4_000, usize::MAX),
        ("l3_lookup_hnsw_4k", 4_000, 1),
        ("l3_lookup_hnsw_100k", 100_000, 2_048),
    ] {
        let started = std::time::Instant::now();
        let (cache, texts) = build_l3(&rt, n, hnsw_min);
        eprintln!("{name}: built {n} entries in {:.1?}", started.elapsed());
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                // Stored texts: the lookup embeds the query, searches the scope
                // and serves the matched value.
                i = (i + 7919) % texts.len();
                let q = SemanticQuery::new(scope, texts[i].clone());
                black_box(cache.get(&miss_key, Some(&q)).now_or_never().flatten())
            });
        });
    }
}

/// Opening a redb + L3 cache whose directory holds 10,000 entries with their
/// vectors: the read of every vector and the rebuild of the index (HNSW, as
/// the scope is above `hnsw_min`). Also reports what persisting the vectors
/// adds to a store.
fn l3_reopen(c: &mut Criterion) {
    const N: usize = 10_000;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Cache::<String>::builder()
            .l2_redb(dir.path(), 1 << 32)
            .l3(Arc::new(LexicalEmbedder::new()))
            .build()
    };
    let scope = SemanticScope::from_bytes(b"bench");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
    let corpus = Corpus::new(&mut rng);
    {
        let cache = rt.block_on(open()).unwrap();
        let started = std::time::Instant::now();
        for i in 0..N {
            let key = CacheKey::from_bytes("bench", &(i as u64).to_le_bytes()).unwrap();
            let q = SemanticQuery::new(scope, corpus.sentence(&mut rng));
            rt.block_on(cache.insert(&key, format!("answer {i}"), Some(&q), None))
                .unwrap();
        }
        eprintln!(
            "l3_reopen: stored {N} entries with vectors in {:.1?}",
            started.elapsed()
        );
    }
    let mut group = c.benchmark_group("l3_reopen");
    group.sample_size(10);
    group.bench_function("10k_vectors", |b| {
        b.iter(|| black_box(rt.block_on(open()).unwrap()));
    });
    group.finish();
}

#[cfg(feature = "local-embeddings")]
fn minilm(c: &mut Criterion) {
    use dspex_cache::semantic::local::LocalEmbedder;
    let Some(dir) = std::env::var_os("DSPEX_TEST_MINILM_DIR") else {
        eprintln!("minilm: DSPEX_TEST_MINILM_DIR is not set; skipped");
        return;
    };
    let e = LocalEmbedder::load(std::path::Path::new(&dir)).unwrap();
    c.bench_function("minilm_embed_one_short_sentence", |b| {
        b.iter(|| {
            black_box(
                e.embed_blocking(&["How can I be a good geologist?"])
                    .unwrap(),
            )
        });
    });
    let batch: Vec<&str> = vec!["What should I do to be a great geologist?"; 32];
    c.bench_function("minilm_embed_batch_32_per_batch", |b| {
        b.iter(|| black_box(e.embed_blocking(&batch).unwrap()));
    });
}

#[cfg(not(feature = "local-embeddings"))]
fn minilm(_c: &mut Criterion) {}

fn lexical(c: &mut Criterion) {
    let e = LexicalEmbedder::new();
    c.bench_function("lexical_embed_one", |b| {
        b.iter(|| black_box(e.embed_one(black_box("How can I be a good geologist in India?"))));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = tiers, lexical, l3, l3_reopen, minilm
}
criterion_main!(benches);
