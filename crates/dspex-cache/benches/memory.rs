//! Memory per L1 entry and per L3 vector, measured with a counting allocator:
//! net heap bytes after inserting N entries, divided by N.
//!
//! `cargo bench -p dspex-cache --bench memory`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::alloc::System;
use std::sync::Arc;

use dspex_cache::{Cache, CacheKey, LexicalEmbedder, SemanticQuery, SemanticScope};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 20_000;

fn net(region: &Region<'_, System>) -> i64 {
    let s = region.change();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A 100-byte value: the L1 overhead is what is measured, beside the value.
    let value = "x".repeat(100);
    let keys: Vec<CacheKey> = (0..N)
        .map(|i| CacheKey::from_bytes("mem", &(i as u64).to_le_bytes()).unwrap())
        .collect();
    let texts: Vec<String> = (0..N)
        .map(|i| format!("how do I learn topic number {i} quickly and well?"))
        .collect();

    let l1_only = {
        let cache: Cache<String> = rt
            .block_on(Cache::builder().l1(N as u64 * 2, 1 << 32).build())
            .unwrap();
        let region = Region::new(GLOBAL);
        for k in &keys {
            rt.block_on(cache.insert(k, value.clone(), None, None))
                .unwrap();
        }
        rt.block_on(cache.stats());
        net(&region)
    };
    let with_l3 = {
        let cache: Cache<String> = rt
            .block_on(
                Cache::builder()
                    .l1(N as u64 * 2, 1 << 32)
                    .l3(Arc::new(LexicalEmbedder::new()))
                    .l3_max_entries(N * 2)
                    .hnsw_min(usize::MAX)
                    .build(),
            )
            .unwrap();
        let scope = SemanticScope::from_bytes(b"mem");
        let region = Region::new(GLOBAL);
        for (k, t) in keys.iter().zip(&texts) {
            let q = SemanticQuery::new(scope, t.clone());
            rt.block_on(cache.insert(k, value.clone(), Some(&q), None))
                .unwrap();
        }
        rt.block_on(cache.stats());
        net(&region)
    };
    let with_hnsw = {
        let cache: Cache<String> = rt
            .block_on(
                Cache::builder()
                    .l1(N as u64 * 2, 1 << 32)
                    .l3(Arc::new(LexicalEmbedder::new()))
                    .l3_max_entries(N * 2)
                    .hnsw_min(1)
                    .build(),
            )
            .unwrap();
        let scope = SemanticScope::from_bytes(b"mem");
        let region = Region::new(GLOBAL);
        for (k, t) in keys.iter().zip(&texts) {
            let q = SemanticQuery::new(scope, t.clone());
            rt.block_on(cache.insert(k, value.clone(), Some(&q), None))
                .unwrap();
        }
        rt.block_on(cache.stats());
        net(&region)
    };
    let per_hnsw = (with_hnsw - l1_only) as f64 / N as f64;
    let per_l1 = l1_only as f64 / N as f64;
    let per_l3 = (with_l3 - l1_only) as f64 / N as f64;
    let text_len = texts.iter().map(String::len).sum::<usize>() as f64 / N as f64;
    println!("memory per L1 entry (100-byte String value included): {per_l1:.0} bytes");
    println!(
        "memory per L3 vector, exact search (256 x f32 = 1024 bytes, the {text_len:.0}-byte prompt text, key, bookkeeping): {per_l3:.0} bytes"
    );
    println!("memory per L3 vector with an HNSW graph (hnsw_rs, M = 12): {per_hnsw:.0} bytes");
}
