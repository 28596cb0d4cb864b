//! The cache: tiers in order, single-flight, stores, stats.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dspex_core::events::EventBus;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::config::{CacheConfig, EmbedderKind, L2Backend};
use crate::error::{CacheError, Result};
use crate::events::{CacheEvent, CacheStats, EvictReason, Tier, TierCounters, TierStats};
use crate::key::{CacheKey, SemanticScope};
use crate::l1::L1;
use crate::l2::redb_store::RedbStore;
use crate::l2::redis_store::{DEFAULT_PREFIX, RedisStore};
use crate::l2::{L2, SemanticRecord, now_ms};
use crate::semantic::index::VectorIndex;
use crate::semantic::lexical::LexicalEmbedder;
use crate::semantic::{Embedder, Verifier};

/// Where a result came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// The in-memory tier.
    L1,
    /// The on-disk or shared tier.
    L2,
    /// A semantic match.
    L3 {
        /// Cosine similarity between the query and the cached prompt.
        similarity: f32,
    },
    /// This call ran `compute`.
    Computed,
    /// Another call with the same key was already computing; this one waited
    /// for its result (single-flight).
    Coalesced,
}

impl Source {
    /// Whether the value came from a cache tier.
    pub fn is_hit(&self) -> bool {
        matches!(self, Self::L1 | Self::L2 | Self::L3 { .. })
    }
}

/// A value and where it came from.
#[derive(Debug)]
pub struct Cached<V> {
    /// The value, shared with the cache (an L1 hit copies nothing).
    pub value: Arc<V>,
    /// Where it came from.
    pub source: Source,
}

impl<V> Clone for Cached<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            source: self.source,
        }
    }
}

/// The semantic part of a lookup: requests match semantically only within one
/// scope (everything but the final user message), on the text to embed (that
/// final message).
#[derive(Clone, Debug)]
pub struct SemanticQuery {
    /// The scope hash.
    pub scope: SemanticScope,
    /// The text to embed.
    pub text: String,
}

impl SemanticQuery {
    /// A query in `scope` for `text`.
    pub fn new(scope: SemanticScope, text: impl Into<String>) -> Self {
        Self {
            scope,
            text: text.into(),
        }
    }
}

/// Per-request options.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LookupOptions {
    /// Skip the lookup (and single-flight): always compute. The result is
    /// still stored unless `no_store`.
    pub no_cache: bool,
    /// Do not store the computed result.
    pub no_store: bool,
    /// Time to live of a stored result (default: the cache's).
    pub ttl: Option<Duration>,
    /// Look up and store in this namespace instead of the key's.
    pub namespace: Option<String>,
}

impl LookupOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skip the lookup.
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Do not store.
    #[must_use]
    pub fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// Time to live of the stored result.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Namespace override.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

/// Estimates the tokens a cached value saves when it is served.
pub type TokenEstimator<V> = Arc<dyn Fn(&V) -> u64 + Send + Sync>;

/// What [`Cache::verify_store`] found in the on-disk tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreCheck {
    /// Entries that decode (header and value).
    pub entries: u64,
    /// Entries that do not.
    pub corrupt: u64,
    /// The byte count the store keeps for its size cap.
    pub recorded_bytes: u64,
    /// The byte count recomputed from the entries.
    pub counted_bytes: u64,
    /// Rows of the eviction order (one per entry when consistent).
    pub order_rows: u64,
    /// Persisted L3 vectors (their bytes are in the counts above).
    pub semantic_rows: u64,
    /// Persisted L3 vectors whose entry is gone (0 when consistent).
    pub semantic_orphans: u64,
}

impl StoreCheck {
    /// Whether every entry decodes and the bookkeeping matches the entries.
    pub fn is_consistent(&self) -> bool {
        self.corrupt == 0
            && self.recorded_bytes == self.counted_bytes
            && self.order_rows == self.entries
            && self.semantic_orphans == 0
    }
}

enum FlightState<V> {
    Pending,
    Done(Arc<V>),
    // The caller's `Arc<E>`, type-erased: the in-flight table is shared by
    // calls with any error type.
    Failed(Arc<dyn Any + Send + Sync>),
}

/// Computations in flight, by key: the flight's id and its result channel.
type Inflight<V> = Mutex<HashMap<CacheKey, (u64, watch::Receiver<FlightState<V>>)>>;

struct L3<V> {
    embedder: Arc<dyn Embedder>,
    index: VectorIndex,
    threshold: f32,
    verifier: Option<Arc<dyn Verifier>>,
    _value: std::marker::PhantomData<fn() -> V>,
}

struct Inner<V> {
    l1: Option<L1<V>>,
    l2: Option<L2>,
    l3: Option<L3<V>>,
    ttl: Duration,
    namespace: String,
    events: EventBus<CacheEvent>,
    counters: [Arc<TierCounters>; 3],
    misses: AtomicU64,
    computes: AtomicU64,
    coalesced: AtomicU64,
    next_flight: AtomicU64,
    inflight: Inflight<V>,
    tokens: Option<TokenEstimator<V>>,
}

/// A multi-tier cache of `V` values. Cheap to clone (shared).
///
/// Lookups try L1 (memory), then L2 (disk or Redis), then L3 (semantic) when
/// a [`SemanticQuery`] is given and L3 is on. A tier that fails (Redis down, a
/// value that no longer decodes) counts as a miss in that tier and publishes
/// [`CacheEvent::TierError`]: the cache never fails a request the upstream
/// could serve.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("l1", &self.inner.l1.is_some())
            .field("l2", &self.inner.l2.as_ref().map(L2::backend))
            .field("l3", &self.inner.l3.as_ref().map(|l3| l3.embedder.name()))
            .finish_non_exhaustive()
    }
}

/// Builds a [`Cache`].
pub struct CacheBuilder<V> {
    l1: Option<(u64, u64)>,
    l2: Option<L2Spec>,
    l3: Option<Arc<dyn Embedder>>,
    threshold: Option<f32>,
    verifier: Option<Arc<dyn Verifier>>,
    l3_max_entries: usize,
    hnsw_min: usize,
    ttl: Duration,
    namespace: String,
    events: EventBus<CacheEvent>,
    tokens: Option<TokenEstimator<V>>,
}

enum L2Spec {
    Redb(PathBuf, u64),
    Redis(String, String),
}

impl<V> fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("l1", &self.l1)
            .field("l3", &self.l3.as_ref().map(|e| e.name().to_owned()))
            .finish_non_exhaustive()
    }
}

impl<V> CacheBuilder<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Turns L1 on, bounded by `max_entries` and `max_bytes` (serialized size).
    #[must_use]
    pub fn l1(mut self, max_entries: u64, max_bytes: u64) -> Self {
        self.l1 = Some((max_entries, max_bytes));
        self
    }

    /// Turns L1 off.
    #[must_use]
    pub fn no_l1(mut self) -> Self {
        self.l1 = None;
        self
    }

    /// L2 in `dir/l2.redb`, capped at `max_bytes`.
    #[must_use]
    pub fn l2_redb(mut self, dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        self.l2 = Some(L2Spec::Redb(dir.into(), max_bytes));
        self
    }

    /// L2 in Redis at `url`, keys prefixed with `prefix`.
    #[must_use]
    pub fn l2_redis(mut self, url: impl Into<String>, prefix: impl Into<String>) -> Self {
        self.l2 = Some(L2Spec::Redis(url.into(), prefix.into()));
        self
    }

    /// Turns L3 on with this embedder.
    #[must_use]
    pub fn l3(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.l3 = Some(embedder);
        self
    }

    /// The similarity threshold (default: the embedder's).
    #[must_use]
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// A second check before a semantic hit is served.
    #[must_use]
    pub fn verifier(mut self, verifier: Arc<dyn Verifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Bound on L3 entries (oldest evicted first).
    #[must_use]
    pub fn l3_max_entries(mut self, n: usize) -> Self {
        self.l3_max_entries = n;
        self
    }

    /// Live vectors per scope from which HNSW replaces exact search.
    #[must_use]
    pub fn hnsw_min(mut self, n: usize) -> Self {
        self.hnsw_min = n;
        self
    }

    /// Default time to live.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Default namespace (used by [`Cache::key`]).
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Publishes events on this bus (default: a bus of its own).
    #[must_use]
    pub fn events(mut self, events: EventBus<CacheEvent>) -> Self {
        self.events = events;
        self
    }

    /// Counts the tokens each hit saves.
    #[must_use]
    pub fn token_estimator(mut self, estimate: impl Fn(&V) -> u64 + Send + Sync + 'static) -> Self {
        self.tokens = Some(Arc::new(estimate));
        self
    }

    /// Opens the tiers.
    pub async fn build(self) -> Result<Cache<V>> {
        crate::key::validate_namespace(&self.namespace)?;
        let counters: [Arc<TierCounters>; 3] = Default::default();
        let [c1, _, _] = &counters;
        let l1 = self
            .l1
            .map(|(entries, bytes)| L1::new(entries, bytes, self.events.clone(), Arc::clone(c1)));
        let l2 = match self.l2 {
            None => None,
            Some(L2Spec::Redb(dir, max_bytes)) => {
                let store = tokio::task::spawn_blocking(move || RedbStore::open(&dir, max_bytes))
                    .await
                    .map_err(|e| CacheError::Store {
                        path: String::new(),
                        message: format!("open task failed: {e}"),
                    })??;
                Some(L2::Redb(Arc::new(store)))
            }
            Some(L2Spec::Redis(url, prefix)) => {
                Some(L2::Redis(RedisStore::connect(&url, &prefix).await?))
            }
        };
        let l3 = match self.l3 {
            None => None,
            Some(embedder) => {
                let mut index =
                    VectorIndex::new(embedder.dimension(), self.hnsw_min, self.l3_max_entries);
                // The semantic tier picks up where the last process left it:
                // the vectors persisted beside live L2 entries, oldest first, so
                // the index's own cap evicts in the same order as before. The
                // rebuild is CPU work (an HNSW graph for large scopes): off the
                // async workers.
                if let Some(l2) = &l2 {
                    let rows = l2.load_semantic(&embedder.fingerprint()).await?;
                    if !rows.is_empty() {
                        index = tokio::task::spawn_blocking(move || {
                            index.insert_many(rows.iter().map(|(key, record)| {
                                (
                                    key.namespace(),
                                    record.scope,
                                    *key.hash(),
                                    record.text.as_str(),
                                    record.vector.as_slice(),
                                )
                            }));
                            index
                        })
                        .await
                        .map_err(|e| CacheError::Store {
                            path: String::new(),
                            message: format!("semantic index rebuild failed: {e}"),
                        })?;
                    }
                }
                Some(L3 {
                    threshold: self
                        .threshold
                        .unwrap_or_else(|| embedder.default_threshold()),
                    index,
                    embedder,
                    verifier: self.verifier,
                    _value: std::marker::PhantomData,
                })
            }
        };
        Ok(Cache {
            inner: Arc::new(Inner {
                l1,
                l2,
                l3,
                ttl: self.ttl,
                namespace: self.namespace,
                events: self.events,
                counters,
                misses: AtomicU64::new(0),
                computes: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                next_flight: AtomicU64::new(0),
                inflight: Mutex::new(HashMap::new()),
                tokens: self.tokens,
            }),
        })
    }
}

enum Lookup<V> {
    Hit(Cached<V>),
    Miss { embedding: Option<Vec<f32>> },
}

/// Removes the in-flight entry when the leader finishes or is dropped
/// (cancelled): waiters then see the result, or a closed channel and retry.
struct FlightGuard<'a, V> {
    inflight: &'a Inflight<V>,
    key: CacheKey,
    id: u64,
    tx: watch::Sender<FlightState<V>>,
}

impl<V> Drop for FlightGuard<'_, V> {
    fn drop(&mut self) {
        let mut map = self.inflight.lock();
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder with no tiers, a TTL of 7 days and the `default` namespace.
    pub fn builder() -> CacheBuilder<V> {
        CacheBuilder {
            l1: None,
            l2: None,
            l3: None,
            threshold: None,
            verifier: None,
            l3_max_entries: 100_000,
            hnsw_min: 2_048,
            ttl: Duration::from_secs(7 * 86_400),
            namespace: crate::key::DEFAULT_NAMESPACE.to_owned(),
            events: EventBus::new(),
            tokens: None,
        }
    }

    /// Opens the cache `[cache]` describes. `embedder` supplies the L3
    /// embedder for `embedder = "api"` (the client's embeddings API) and
    /// overrides the configured one when given. With `enabled = false` every
    /// tier is off and every call computes.
    pub async fn from_config(
        config: &CacheConfig,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Result<Self> {
        let mut builder = Self::builder()
            .ttl(config.ttl)
            .namespace(config.namespace.clone())
            .l3_max_entries(usize::try_from(config.l3_max_entries).unwrap_or(usize::MAX))
            .hnsw_min(usize::try_from(config.hnsw_min).unwrap_or(usize::MAX));
        if !config.enabled {
            return builder.build().await;
        }
        if config.l1 {
            builder = builder.l1(config.l1_max_entries, config.l1_max_bytes);
        }
        builder = match &config.l2 {
            L2Backend::Off => builder,
            L2Backend::Redb => builder.l2_redb(&config.dir, config.l2_max_bytes),
            L2Backend::Redis(url) => builder.l2_redis(url, &config.redis_prefix),
        };
        if config.l3 {
            let embedder = match embedder {
                Some(e) => e,
                None => embedder_from_config(config)?,
            };
            builder = builder.l3(embedder);
            if let Some(t) = config.threshold {
                builder = builder.threshold(t);
            }
        }
        builder.build().await
    }

    /// A key in the cache's default namespace for a canonical request.
    pub fn key(&self, request: &serde_json::Value) -> Result<CacheKey> {
        CacheKey::from_canonical_json(&self.inner.namespace, request)
    }

    /// A key in the cache's default namespace for a request that serialises
    /// deterministically (see [`CacheKey::from_serialize`]).
    pub fn key_of<T: Serialize + ?Sized>(&self, request: &T) -> Result<CacheKey> {
        CacheKey::from_serialize(&self.inner.namespace, request)
    }

    /// Whether the semantic tier is on (callers can skip building scopes).
    pub fn has_semantic_tier(&self) -> bool {
        self.inner.l3.is_some()
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus<CacheEvent> {
        &self.inner.events
    }

    /// The L3 threshold in force, when L3 is on.
    pub fn threshold(&self) -> Option<f32> {
        self.inner.l3.as_ref().map(|l3| l3.threshold)
    }

    /// Looks `key` up in every tier (L3 only with `semantic`), or computes it.
    ///
    /// On a total miss `compute` runs once and its value is stored in every
    /// tier (unless `no_store`). Concurrent calls for the same key share one
    /// computation (single-flight): they get [`Source::Coalesced`] with the
    /// leader's value, or the leader's error as [`CacheError::Compute`] with
    /// the same `Arc`. Errors are never cached. If the leader is cancelled
    /// (its future dropped), one waiter takes over and runs its own `compute`;
    /// no waiter hangs.
    pub async fn get_or_compute<E, F>(
        &self,
        key: &CacheKey,
        semantic: Option<&SemanticQuery>,
        compute: F,
        options: &LookupOptions,
    ) -> std::result::Result<Cached<V>, CacheError<E>>
    where
        F: Future<Output = std::result::Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let key = match &options.namespace {
            Some(ns) => key.with_namespace(ns).map_err(CacheError::widen)?,
            None => key.clone(),
        };
        let mut compute = Some(compute);
        if options.no_cache {
            self.note_miss(&key);
            let embedding = self.embed_for_store(semantic).await;
            return self
                .run_compute(&key, semantic, embedding, &mut compute, options, None)
                .await;
        }
        let mut embedding = match self.lookup(&key, semantic).await {
            Lookup::Hit(hit) => return Ok(hit),
            Lookup::Miss { embedding } => embedding,
        };
        loop {
            let (leader, mut rx) = {
                let mut map = self.inner.inflight.lock();
                match map.get(&key) {
                    Some((_, rx)) => (None, rx.clone()),
                    None => {
                        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(FlightState::Pending);
                        map.insert(key.clone(), (id, rx.clone()));
                        let guard = FlightGuard {
                            inflight: &self.inner.inflight,
                            key: key.clone(),
                            id,
                            tx,
                        };
                        (Some(guard), rx)
                    }
                }
            };
            if let Some(guard) = leader {
                // A leader that just finished may have stored the value between
                // our lookup and taking the slot.
                if let Some(value) = self.inner.l1.as_ref().and_then(|l1| l1.get(&key)) {
                    return Ok(Cached {
                        value,
                        source: Source::L1,
                    });
                }
                self.note_miss(&key);
                return self
                    .run_compute(
                        &key,
                        semantic,
                        embedding.take(),
                        &mut compute,
                        options,
                        Some(guard),
                    )
                    .await;
            }
            TierCounters::add(&self.inner.coalesced, 1);
            let outcome = match rx
                .wait_for(|state| !matches!(state, FlightState::Pending))
                .await
            {
                Ok(state) => match &*state {
                    FlightState::Done(value) => Some(Ok(Arc::clone(value))),
                    FlightState::Failed(error) => {
                        error.downcast_ref::<Arc<E>>().map(|e| Err(Arc::clone(e)))
                    }
                    FlightState::Pending => None,
                },
                // The leader was cancelled.
                Err(_) => None,
            };
            match outcome {
                Some(Ok(value)) => {
                    return Ok(Cached {
                        value,
                        source: Source::Coalesced,
                    });
                }
                Some(Err(error)) => return Err(CacheError::Compute(error)),
                None => {
                    // Cancelled leader (or one with another error type): look
                    // again, then try to lead.
                    if let Lookup::Hit(hit) = self.lookup(&key, semantic).await {
                        return Ok(hit);
                    }
                }
            }
        }
    }

    async fn run_compute<E, F>(
        &self,
        key: &CacheKey,
        semantic: Option<&SemanticQuery>,
        embedding: Option<Vec<f32>>,
        compute: &mut Option<F>,
        options: &LookupOptions,
        guard: Option<FlightGuard<'_, V>>,
    ) -> std::result::Result<Cached<V>, CacheError<E>>
    where
        F: Future<Output = std::result::Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let Some(compute) = compute.take() else {
            // Unreachable by construction: a call leads at most once.
            return Err(CacheError::Invalid {
                what: "computation",
                value: key.to_string(),
                message: "computed twice".to_owned(),
            });
        };
        TierCounters::add(&self.inner.computes, 1);
        match compute.await {
            Ok(value) => {
                let value = Arc::new(value);
                let ttl = options.ttl.unwrap_or(self.inner.ttl);
                let payload = if options.no_store {
                    None
                } else {
                    self.encode(key, &value)
                };
                // L1 first, so that no caller arriving after the flight ends
                // misses; then release the waiters; then the slower tiers.
                if let (Some(l1), Some(payload)) = (&self.inner.l1, &payload) {
                    l1.insert(key.clone(), Arc::clone(&value), payload.len(), ttl);
                    self.note_store(Tier::L1, key, payload.len());
                }
                // Waiters get the value now; the in-flight entry stays until the
                // slower tiers hold it, so a caller arriving meanwhile takes the
                // value from the flight instead of computing again.
                if let Some(guard) = &guard {
                    guard.tx.send_replace(FlightState::Done(Arc::clone(&value)));
                }
                if let Some(payload) = payload {
                    self.store_slow_tiers(key, &payload, ttl, semantic, embedding)
                        .await;
                }
                drop(guard);
                Ok(Cached {
                    value,
                    source: Source::Computed,
                })
            }
            Err(error) => {
                let error = Arc::new(error);
                if let Some(guard) = guard {
                    let shared: Arc<dyn Any + Send + Sync> = Arc::new(Arc::clone(&error));
                    guard.tx.send_replace(FlightState::Failed(shared));
                }
                Err(CacheError::Compute(error))
            }
        }
    }

    /// Looks `key` up (L1, L2, then L3 with `semantic`) without computing.
    pub async fn get(&self, key: &CacheKey, semantic: Option<&SemanticQuery>) -> Option<Cached<V>> {
        match self.lookup(key, semantic).await {
            Lookup::Hit(hit) => Some(hit),
            Lookup::Miss { .. } => {
                self.note_miss(key);
                None
            }
        }
    }

    /// Stores `value` under `key` in every tier (L3 with `semantic`).
    pub async fn insert(
        &self,
        key: &CacheKey,
        value: V,
        semantic: Option<&SemanticQuery>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let value = Arc::new(value);
        let payload = serde_json::to_vec(&*value).map_err(|e| CacheError::Codec {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        let ttl = ttl.unwrap_or(self.inner.ttl);
        if let Some(l1) = &self.inner.l1 {
            l1.insert(key.clone(), value, payload.len(), ttl);
            self.note_store(Tier::L1, key, payload.len());
        }
        let embedding = self.embed_for_store(semantic).await;
        self.store_slow_tiers(key, &payload, ttl, semantic, embedding)
            .await;
        Ok(())
    }

    /// Removes `key` from every tier.
    pub async fn remove(&self, key: &CacheKey) -> Result<()> {
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key);
        }
        if let Some(l3) = &self.inner.l3 {
            l3.index.remove(key.namespace(), key.hash());
        }
        if let Some(l2) = &self.inner.l2 {
            l2.remove(key).await?;
        }
        Ok(())
    }

    /// Removes the entries of `namespace` (all with `None`) from `tier` (all
    /// with `None`). Returns how many entries went, per tier.
    pub async fn clear(
        &self,
        namespace: Option<&str>,
        tier: Option<Tier>,
    ) -> Result<Vec<(Tier, u64)>> {
        if let Some(ns) = namespace {
            crate::key::validate_namespace(ns)?;
        }
        let mut out = Vec::new();
        let wants = |t: Tier| tier.is_none_or(|x| x == t);
        if wants(Tier::L1)
            && let Some(l1) = &self.inner.l1
        {
            out.push((Tier::L1, l1.clear(namespace)));
        }
        if wants(Tier::L2)
            && let Some(l2) = &self.inner.l2
        {
            let n = l2.clear(namespace).await?;
            self.note_evict(Tier::L2, n, EvictReason::Cleared);
            out.push((Tier::L2, n));
        }
        if wants(Tier::L3) {
            // The vectors persisted beside L2 entries go too (clearing L2
            // took them already): otherwise the next process would reload
            // them and answer from L3 what was cleared. A cache opened
            // without L3 (no embedder loaded) still clears them.
            let in_memory = self.inner.l3.as_ref().map(|l3| l3.index.clear(namespace));
            let persisted = match &self.inner.l2 {
                Some(l2 @ L2::Redb(_)) if !wants(Tier::L2) => {
                    Some(l2.clear_semantic(namespace).await?)
                }
                _ => None,
            };
            if in_memory.is_some() || persisted.is_some() {
                let n = in_memory.unwrap_or(0).max(persisted.unwrap_or(0));
                self.note_evict(Tier::L3, n, EvictReason::Cleared);
                out.push((Tier::L3, n));
            }
        }
        Ok(out)
    }

    /// Deletes expired entries from L2 with their persisted L3 vectors, and
    /// drops those from the semantic index (L1 expires on its own, Redis
    /// too). Returns how many entries went.
    pub async fn purge_expired(&self) -> Result<u64> {
        if let Some(l1) = &self.inner.l1 {
            l1.run_pending_tasks();
        }
        let removed = match &self.inner.l2 {
            Some(l2) => l2.purge_expired().await?,
            None => Vec::new(),
        };
        if let Some(l3) = &self.inner.l3 {
            let gone = removed
                .iter()
                .filter(|key| l3.index.remove(key.namespace(), key.hash()))
                .count() as u64;
            self.note_evict(Tier::L3, gone, EvictReason::Expired);
        }
        let n = removed.len() as u64;
        self.note_evict(Tier::L2, n, EvictReason::Expired);
        Ok(n)
    }

    /// Statistics of every tier.
    pub async fn stats(&self) -> CacheStats {
        let tier_stats = |tier: Tier, enabled: bool, backend: &str, usage: (u64, u64)| {
            let c = self.counters(tier);
            TierStats {
                tier: Some(tier),
                enabled,
                backend: backend.to_owned(),
                hits: c.hits.load(Ordering::Relaxed),
                misses: c.misses.load(Ordering::Relaxed),
                stores: c.stores.load(Ordering::Relaxed),
                evictions: c.evictions.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
                entries: usage.0,
                bytes: usage.1,
                tokens_saved: c.tokens_saved.load(Ordering::Relaxed),
            }
        };
        let l1 = self.inner.l1.as_ref().map(L1::usage);
        let l2 = match &self.inner.l2 {
            Some(l2) => match l2.usage().await {
                Ok(usage) => Some(usage),
                Err(error) => {
                    self.note_error(Tier::L2, &error);
                    Some((0, 0))
                }
            },
            None => None,
        };
        let l3 = self.inner.l3.as_ref().map(|l3| l3.index.usage());
        CacheStats {
            tiers: vec![
                tier_stats(Tier::L1, l1.is_some(), "moka", l1.unwrap_or_default()),
                tier_stats(
                    Tier::L2,
                    l2.is_some(),
                    self.inner.l2.as_ref().map_or("off", L2::backend),
                    l2.unwrap_or_default(),
                ),
                tier_stats(
                    Tier::L3,
                    l3.is_some(),
                    self.inner
                        .l3
                        .as_ref()
                        .map_or("off", |l3| l3.embedder.name()),
                    l3.unwrap_or_default(),
                ),
            ],
            misses: self.inner.misses.load(Ordering::Relaxed),
            computes: self.inner.computes.load(Ordering::Relaxed),
            coalesced: self.inner.coalesced.load(Ordering::Relaxed),
        }
    }

    /// Reads every L2 (redb) entry back and checks that it decodes as `V` and
    /// that the size bookkeeping matches: the check run after a crash. `None`
    /// when L2 is not redb.
    pub async fn verify_store(&self) -> Result<Option<StoreCheck>> {
        let Some(L2::Redb(store)) = &self.inner.l2 else {
            return Ok(None);
        };
        let store = Arc::clone(store);
        let path = store.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let scan = store.scan()?;
            let mut check = StoreCheck {
                recorded_bytes: scan.recorded_bytes,
                counted_bytes: scan.counted_bytes,
                order_rows: scan.order_rows,
                semantic_rows: scan.semantic_rows,
                semantic_orphans: scan.semantic_orphans,
                ..StoreCheck::default()
            };
            for (key, entry) in scan.entries {
                let ok = CacheKey::from_storage_bytes(&key).is_some()
                    && entry.is_some_and(|e| serde_json::from_slice::<V>(&e.payload).is_ok());
                if ok {
                    check.entries += 1;
                } else {
                    check.corrupt += 1;
                }
            }
            Ok(Some(check))
        })
        .await
        .map_err(|e| CacheError::Store {
            path,
            message: format!("check task failed: {e}"),
        })?
    }

    // ---- internals ----

    fn counters(&self, tier: Tier) -> &TierCounters {
        let [c1, c2, c3] = &self.inner.counters;
        match tier {
            Tier::L1 => c1,
            Tier::L2 => c2,
            Tier::L3 => c3,
        }
    }

    async fn lookup(&self, key: &CacheKey, semantic: Option<&SemanticQuery>) -> Lookup<V> {
        if let Some(l1) = &self.inner.l1 {
            if let Some(value) = l1.get(key) {
                return self.hit(Tier::L1, key, value, None);
            }
            TierCounters::add(&self.counters(Tier::L1).misses, 1);
        }
        if self.inner.l2.is_some() {
            if let Some(value) = self.l2_get(key).await {
                return self.hit(Tier::L2, key, value, None);
            }
            TierCounters::add(&self.counters(Tier::L2).misses, 1);
        }
        let (Some(l3), Some(query)) = (&self.inner.l3, semantic) else {
            return Lookup::Miss { embedding: None };
        };
        let embedding = match l3.embedder.embed(&[query.text.as_str()]).await {
            Ok(mut vectors) if vectors.len() == 1 => vectors.pop(),
            Ok(_) => {
                self.note_error(
                    Tier::L3,
                    &CacheError::embedding(
                        l3.embedder.name(),
                        "returned the wrong number of vectors",
                    ),
                );
                None
            }
            Err(error) => {
                self.note_error(Tier::L3, &error);
                None
            }
        };
        let Some(vector) = embedding else {
            TierCounters::add(&self.counters(Tier::L3).misses, 1);
            return Lookup::Miss { embedding: None };
        };
        if let Some(found) = l3
            .index
            .search(key.namespace(), &query.scope, &vector, l3.threshold)
        {
            let matched = CacheKey::new(key.namespace(), found.key);
            let value = match matched {
                Ok(matched) => match self.inner.l1.as_ref().and_then(|l1| l1.get(&matched)) {
                    Some(v) => Some(v),
                    None => self.l2_get(&matched).await,
                },
                Err(_) => None,
            };
            match value {
                None => {
                    // The value left L1 and L2: the vector is stale.
                    l3.index.remove(key.namespace(), &found.key);
                }
                Some(value) => {
                    let accepted = match &l3.verifier {
                        Some(verifier) => verifier.verify(&query.text, &found.text).await,
                        None => true,
                    };
                    if accepted {
                        return self.hit(Tier::L3, key, value, Some(found.similarity));
                    }
                    self.inner.events.publish(CacheEvent::Rejected {
                        similarity: found.similarity,
                    });
                }
            }
        }
        TierCounters::add(&self.counters(Tier::L3).misses, 1);
        Lookup::Miss {
            embedding: Some(vector),
        }
    }

    async fn l2_get(&self, key: &CacheKey) -> Option<Arc<V>> {
        let l2 = self.inner.l2.as_ref()?;
        let entry = match l2.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return None,
            Err(error) => {
                self.note_error(Tier::L2, &error);
                return None;
            }
        };
        let now = now_ms();
        if entry.is_expired(now) {
            return None;
        }
        match serde_json::from_slice::<V>(&entry.payload) {
            Ok(value) => {
                let value = Arc::new(value);
                if let Some(l1) = &self.inner.l1 {
                    let remaining = Duration::from_millis(entry.expires_ms.saturating_sub(now));
                    l1.insert(
                        key.clone(),
                        Arc::clone(&value),
                        entry.payload.len(),
                        remaining,
                    );
                }
                Some(value)
            }
            Err(error) => {
                // A value of an older shape: drop it rather than fail every call.
                self.note_error(
                    Tier::L2,
                    &CacheError::Codec {
                        key: key.to_string(),
                        message: error.to_string(),
                    },
                );
                let _ = l2.remove(key).await;
                None
            }
        }
    }

    fn hit(&self, tier: Tier, key: &CacheKey, value: Arc<V>, similarity: Option<f32>) -> Lookup<V> {
        let counters = self.counters(tier);
        TierCounters::add(&counters.hits, 1);
        if let Some(estimate) = &self.inner.tokens {
            TierCounters::add(&counters.tokens_saved, estimate(&value));
        }
        if self.inner.events.has_subscribers() {
            self.inner.events.publish(CacheEvent::Hit {
                tier,
                namespace: Arc::from(key.namespace()),
                similarity,
            });
        }
        let source = match (tier, similarity) {
            (Tier::L1, _) => Source::L1,
            (Tier::L2, _) => Source::L2,
            (Tier::L3, s) => Source::L3 {
                similarity: s.unwrap_or(0.0),
            },
        };
        Lookup::Hit(Cached { value, source })
    }

    fn encode(&self, key: &CacheKey, value: &V) -> Option<Vec<u8>> {
        match serde_json::to_vec(value) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                self.note_error(
                    Tier::L1,
                    &CacheError::Codec {
                        key: key.to_string(),
                        message: error.to_string(),
                    },
                );
                None
            }
        }
    }

    async fn embed_for_store(&self, semantic: Option<&SemanticQuery>) -> Option<Vec<f32>> {
        let (l3, query) = (self.inner.l3.as_ref()?, semantic?);
        match l3.embedder.embed(&[query.text.as_str()]).await {
            Ok(mut v) => v.pop(),
            Err(error) => {
                self.note_error(Tier::L3, &error);
                None
            }
        }
    }

    async fn store_slow_tiers(
        &self,
        key: &CacheKey,
        payload: &[u8],
        ttl: Duration,
        semantic: Option<&SemanticQuery>,
        embedding: Option<Vec<f32>>,
    ) {
        // Only redb keeps vectors beside entries.
        let semantic_record = match (&self.inner.l2, &self.inner.l3, semantic, &embedding) {
            (Some(L2::Redb(_)), Some(_), Some(query), Some(vector)) => Some(
                SemanticRecord::encode_parts(&query.scope, vector, &query.text),
            ),
            _ => None,
        };
        if let Some(l2) = &self.inner.l2 {
            match l2.put(key, payload, ttl, semantic_record).await {
                Ok(evicted) => {
                    self.note_store(Tier::L2, key, payload.len());
                    self.note_evict(Tier::L2, evicted, EvictReason::Size);
                }
                Err(error) => self.note_error(Tier::L2, &error),
            }
        }
        if let (Some(l3), Some(query), Some(vector)) = (&self.inner.l3, semantic, embedding) {
            let evicted = l3.index.insert(
                key.namespace(),
                query.scope,
                *key.hash(),
                &query.text,
                &vector,
            );
            self.note_store(Tier::L3, key, vector.len() * 4 + query.text.len());
            self.note_evict(Tier::L3, evicted, EvictReason::Size);
        }
    }

    fn note_miss(&self, key: &CacheKey) {
        TierCounters::add(&self.inner.misses, 1);
        if self.inner.events.has_subscribers() {
            self.inner.events.publish(CacheEvent::Miss {
                namespace: Arc::from(key.namespace()),
            });
        }
    }

    fn note_store(&self, tier: Tier, key: &CacheKey, bytes: usize) {
        TierCounters::add(&self.counters(tier).stores, 1);
        if self.inner.events.has_subscribers() {
            self.inner.events.publish(CacheEvent::Store {
                tier,
                namespace: Arc::from(key.namespace()),
                bytes: bytes as u64,
            });
        }
    }

    fn note_evict(&self, tier: Tier, count: u64, reason: EvictReason) {
        if count == 0 {
            return;
        }
        TierCounters::add(&self.counters(tier).evictions, count);
        self.inner.events.publish(CacheEvent::Evict {
            tier,
            count,
            reason,
        });
    }

    fn note_error(&self, tier: Tier, error: &CacheError) {
        TierCounters::add(&self.counters(tier).errors, 1);
        tracing::warn!(tier = tier.as_str(), %error, "cache tier error; treated as a miss");
        self.inner.events.publish(CacheEvent::TierError {
            tier,
            message: error.to_string(),
        });
    }
}

/// The embedder `[cache]` names: `lexical`, or `local` (feature
/// `local-embeddings`) from `model_dir`. `api` embedders come from the client
/// crate and must be passed to [`Cache::from_config`].
pub fn embedder_from_config(config: &CacheConfig) -> Result<Arc<dyn Embedder>> {
    match config.embedder {
        EmbedderKind::Lexical => Ok(Arc::new(LexicalEmbedder::new())),
        EmbedderKind::Local => local_embedder(config.model_dir.as_deref()),
        EmbedderKind::Api => Err(CacheError::Config(dspex_core::CoreError::config(
            "cache.embedder",
            "\"api\" embedders are built by the client from a provider; pass one to Cache::from_config",
        ))),
    }
}

#[cfg(feature = "local-embeddings")]
fn local_embedder(dir: Option<&Path>) -> Result<Arc<dyn Embedder>> {
    let dir = dir.ok_or_else(|| {
        CacheError::Config(dspex_core::CoreError::config(
            "cache.model_dir",
            "the local embedder needs a model directory",
        ))
    })?;
    Ok(Arc::new(crate::semantic::local::LocalEmbedder::load(dir)?))
}

#[cfg(not(feature = "local-embeddings"))]
fn local_embedder(_dir: Option<&Path>) -> Result<Arc<dyn Embedder>> {
    Err(CacheError::Config(dspex_core::CoreError::config(
        "cache.embedder",
        "\"local\" needs dspex-cache built with the `local-embeddings` feature",
    )))
}

/// The Redis key prefix used when none is configured.
pub const REDIS_PREFIX: &str = DEFAULT_PREFIX;
