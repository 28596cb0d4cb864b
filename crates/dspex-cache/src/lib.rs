//! DSPex's generic multi-tier cache. It knows nothing about language models:
//! the client builds canonical request keys and semantic scopes and hands them
//! here.
//!
//! - **L1**: values in memory ([moka]), bounded by entries and bytes, with a TTL.
//!   A hit returns the stored `Arc<V>`: no copy, no decoding.
//! - **L2**: serialized values on disk ([redb]; every write one atomic
//!   transaction, a size cap with oldest-first eviction) or in a shared Redis
//!   (`cache.l2 = "redis://..."`). Hits are promoted to L1.
//! - **L3**: semantic matching of the final user message within a
//!   [`SemanticScope`] (everything else in the request), by an [`Embedder`]:
//!   the built-in [`LexicalEmbedder`], an embeddings API, or a local transformer
//!   (feature `local-embeddings`). Exact search for small scopes, HNSW above.
//!   With redb as L2, each vector is stored beside its entry (same
//!   transaction, evicted and counted with it) and reloaded on open, so the
//!   tier survives a restart; vectors of another embedder (its
//!   [`Embedder::fingerprint`]) are discarded then. With Redis or no L2 the
//!   index is rebuilt from new traffic.
//! - **Single-flight**: concurrent identical misses run `compute` once.
//! - **Events and stats**: hits by tier, misses, stores, evictions on an
//!   [`EventBus`](dspex_core::events::EventBus); counters per tier.
//! - **Calibration**: [`semantic::calibrate`] measures precision, recall and hit
//!   rate of an embedder on labelled pairs and suggests a threshold.
//!
//! Keys must be built without credentials: the cache stores what it is given.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use dspex_cache::{Cache, CacheKey, LookupOptions, Source};
//! use serde_json::json;
//!
//! let cache: Cache<String> = Cache::builder().l1(1_000, 1 << 20).build().await?;
//! let key = CacheKey::from_canonical_json("tenant-a", &json!({"model": "m", "prompt": "hi"}))?;
//! let first = cache
//!     .get_or_compute(&key, None, async { Ok::<_, std::io::Error>("hello".to_owned()) }, &LookupOptions::new())
//!     .await?;
//! assert_eq!(first.source, Source::Computed);
//! let second = cache
//!     .get_or_compute(&key, None, async { Ok::<_, std::io::Error>(unreachable!()) }, &LookupOptions::new())
//!     .await?;
//! assert_eq!((second.source, second.value.as_str()), (Source::L1, "hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod cache;
pub mod config;
pub mod error;
pub mod events;
pub mod key;
mod l1;
mod l2;
pub mod semantic;

pub use cache::{
    Cache, CacheBuilder, Cached, LookupOptions, REDIS_PREFIX, SemanticQuery, Source, StoreCheck,
    TokenEstimator, embedder_from_config,
};
pub use config::{CONFIG_KEYS, CacheConfig, EmbedderKind, L2Backend, RawCacheConfig};
pub use error::{CacheError, Result};
pub use events::{CacheEvent, CacheStats, EvictReason, Tier, TierStats};
pub use key::{CacheKey, SemanticScope, canonical_json};
pub use l2::redb_store::FILE_NAME as REDB_FILE_NAME;
pub use semantic::lexical::LexicalEmbedder;
pub use semantic::{Embedder, Verifier};
