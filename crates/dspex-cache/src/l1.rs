//! L1: values in memory (moka), bounded by entries and bytes, with a TTL per
//! entry.
//!
//! moka bounds one weighted capacity. To bound both entries and bytes, each
//! entry weighs `max(size, max_bytes / max_entries)`: no more than
//! `max_entries` entries fit (each weighs at least the per-entry share), and no
//! more than `max_bytes` bytes (each weighs at least its size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_core::events::EventBus;
use moka::notification::RemovalCause;
use moka::sync::Cache as Moka;

use crate::events::{CacheEvent, EvictReason, Tier, TierCounters};
use crate::key::CacheKey;

/// One L1 entry: the value, shared so a hit costs no copy and no decoding.
pub(crate) struct L1Entry<V> {
    pub(crate) value: Arc<V>,
    pub(crate) bytes: u32,
    pub(crate) ttl: Duration,
}

impl<V> Clone for L1Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            bytes: self.bytes,
            ttl: self.ttl,
        }
    }
}

struct PerEntryTtl;

impl<V> moka::Expiry<CacheKey, L1Entry<V>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &L1Entry<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &L1Entry<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub(crate) struct L1<V> {
    moka: Moka<CacheKey, L1Entry<V>>,
}

impl<V: Send + Sync + 'static> L1<V> {
    pub(crate) fn new(
        max_entries: u64,
        max_bytes: u64,
        events: EventBus<CacheEvent>,
        counters: Arc<TierCounters>,
    ) -> Self {
        let floor = u32::try_from(max_bytes / max_entries.max(1))
            .unwrap_or(u32::MAX)
            .max(1);
        let moka = Moka::builder()
            .max_capacity(max_bytes.max(1))
            .weigher(move |_key: &CacheKey, entry: &L1Entry<V>| entry.bytes.max(floor))
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _entry, cause| {
                let reason = match cause {
                    RemovalCause::Expired => EvictReason::Expired,
                    RemovalCause::Size => EvictReason::Size,
                    RemovalCause::Explicit => EvictReason::Cleared,
                    RemovalCause::Replaced => return,
                };
                TierCounters::add(&counters.evictions, 1);
                events.publish(CacheEvent::Evict {
                    tier: Tier::L1,
                    count: 1,
                    reason,
                });
            })
            .build();
        Self { moka }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<V>> {
        self.moka.get(key).map(|entry| entry.value)
    }

    pub(crate) fn insert(&self, key: CacheKey, value: Arc<V>, bytes: usize, ttl: Duration) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.moka.insert(key, L1Entry { value, bytes, ttl });
    }

    pub(crate) fn remove(&self, key: &CacheKey) {
        self.moka.invalidate(key);
    }

    /// Removes every entry of `namespace`, or every entry. Returns how many.
    pub(crate) fn clear(&self, namespace: Option<&str>) -> u64 {
        let mut removed = 0;
        match namespace {
            None => {
                removed = self.moka.entry_count();
                self.moka.invalidate_all();
            }
            Some(ns) => {
                let keys: Vec<Arc<CacheKey>> = self
                    .moka
                    .iter()
                    .filter(|(k, _)| k.namespace() == ns)
                    .map(|(k, _)| k)
                    .collect();
                for key in keys {
                    self.moka.invalidate(&*key);
                    removed += 1;
                }
            }
        }
        self.moka.run_pending_tasks();
        removed
    }

    pub(crate) fn run_pending_tasks(&self) {
        self.moka.run_pending_tasks();
    }

    /// (entries, bytes) held now.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.moka.run_pending_tasks();
        let bytes = self
            .moka
            .iter()
            .map(|(_, entry)| u64::from(entry.bytes))
            .sum();
        (self.moka.entry_count(), bytes)
    }
}
