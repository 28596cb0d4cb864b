//! Cache events and statistics.
//!
//! Every lookup publishes one [`CacheEvent::Hit`] (naming the tier that
//! answered) or one [`CacheEvent::Miss`]; stores, evictions and tier errors
//! are published too. Statistics are kept per tier whether or not anyone
//! subscribes.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// A cache tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// In memory (moka).
    L1,
    /// On disk (redb) or shared (Redis).
    L2,
    /// Semantic (embeddings).
    L3,
}

impl Tier {
    /// `l1`, `l2` or `l3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
            Self::L3 => "l3",
        }
    }

    /// Parses `l1`, `l2` or `l3` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "l1" => Some(Self::L1),
            "l2" => Some(Self::L2),
            "l3" => Some(Self::L3),
            _ => None,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why entries left a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EvictReason {
    /// Their time to live ran out.
    Expired,
    /// The tier was over its size cap.
    Size,
    /// A caller cleared them.
    Cleared,
    /// A newer value replaced them.
    Replaced,
}

/// Something that happened in the cache.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheEvent {
    /// A lookup was answered by `tier`.
    Hit {
        /// The tier that answered.
        tier: Tier,
        /// The entry's namespace.
        namespace: Arc<str>,
        /// For a semantic (L3) hit, the cosine similarity of the match.
        similarity: Option<f32>,
    },
    /// No tier had the entry (or the lookup was skipped by `no_cache`).
    Miss {
        /// The namespace looked in.
        namespace: Arc<str>,
    },
    /// A value was written to `tier`.
    Store {
        /// The tier written.
        tier: Tier,
        /// The entry's namespace.
        namespace: Arc<str>,
        /// The serialized size of the value.
        bytes: u64,
    },
    /// Entries left `tier`.
    Evict {
        /// The tier.
        tier: Tier,
        /// How many entries.
        count: u64,
        /// Why.
        reason: EvictReason,
    },
    /// A tier failed; the lookup went on as a miss in that tier, or the store
    /// was skipped in it. The caller's request is never failed by a tier.
    TierError {
        /// The tier.
        tier: Tier,
        /// What failed.
        message: String,
    },
    /// A semantic candidate was found but the verifier rejected it.
    Rejected {
        /// The candidate's similarity.
        similarity: f32,
    },
}

/// Counters of one tier.
#[derive(Default, Debug)]
pub(crate) struct TierCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) tokens_saved: AtomicU64,
}

impl TierCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Statistics of one tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TierStats {
    /// The tier.
    pub tier: Option<Tier>,
    /// Whether the tier is enabled.
    pub enabled: bool,
    /// The backend (`moka`, `redb`, `redis`, or the embedder's name).
    pub backend: String,
    /// Lookups this tier answered (since this process opened the cache).
    pub hits: u64,
    /// Lookups this tier could not answer.
    pub misses: u64,
    /// Values written.
    pub stores: u64,
    /// Entries evicted (expired, over the cap or cleared).
    pub evictions: u64,
    /// Errors (each one turned into a miss or a skipped store).
    pub errors: u64,
    /// Entries held now (approximate for moka and Redis).
    pub entries: u64,
    /// Bytes held now (serialized values; for L3, vectors and texts).
    pub bytes: u64,
    /// Tokens the hits saved, by the cache's token estimator (0 without one).
    pub tokens_saved: u64,
}

/// Statistics of every tier.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// L1, L2 and L3, in order.
    pub tiers: Vec<TierStats>,
    /// Lookups no tier answered.
    pub misses: u64,
    /// Computations run (single-flight leaders).
    pub computes: u64,
    /// Callers that waited on another caller's computation instead of running
    /// their own.
    pub coalesced: u64,
}

impl CacheStats {
    /// The statistics of one tier.
    pub fn tier(&self, tier: Tier) -> Option<&TierStats> {
        self.tiers.iter().find(|t| t.tier == Some(tier))
    }
}
