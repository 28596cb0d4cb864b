//! The vector index: one per (namespace, scope).
//!
//! Below `hnsw_min` live vectors a scope is searched exactly (a dot product
//! per vector over one contiguous buffer: fastest for small scopes, and
//! exact). From `hnsw_min` on, a scope also keeps an HNSW graph (hnsw_rs) and
//! searches that: approximate, so the nearest entry is occasionally missed,
//! which costs a cache miss and never a wrong answer (the threshold still
//! applies to the true similarity).
//!
//! Deletions (eviction, clear, replaced values) are tombstones: the vector
//! stays in the buffer and the graph and is skipped by searches. When
//! tombstones outnumber live entries the scope is rebuilt without them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use hnsw_rs::prelude::{Distance, Hnsw};
use parking_lot::RwLock;

use crate::key::SemanticScope;
use crate::semantic::dot;

/// Cosine distance for normalised vectors: `1 - dot`, clamped at 0 (hnsw_rs's
/// own `DistDot` asserts on rounding error above 1).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DotDistance;

impl Distance<f32> for DotDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

const HNSW_M: usize = 12;
const HNSW_EF_CONSTRUCTION: usize = 48;
const HNSW_EF_SEARCH: usize = 24;
const HNSW_LAYERS: usize = 16;

/// One indexed prompt.
struct Slot {
    key: [u8; 32],
    text: Arc<str>,
    alive: bool,
    seq: u64,
}

#[derive(Default)]
struct ScopeIndex {
    vectors: Vec<f32>,
    slots: Vec<Slot>,
    by_key: HashMap<[u8; 32], usize>,
    live: usize,
    hnsw: Option<Hnsw<'static, f32, DotDistance>>,
}

/// A semantic match.
#[derive(Clone, Debug)]
pub(crate) struct Match {
    pub(crate) key: [u8; 32],
    pub(crate) text: Arc<str>,
    pub(crate) similarity: f32,
}

type ScopeId = (Arc<str>, SemanticScope);

struct Inner {
    scopes: HashMap<ScopeId, ScopeIndex>,
    /// Insertion order over all scopes, for the entry cap (oldest first).
    order: VecDeque<(ScopeId, [u8; 32], u64)>,
    live: usize,
    next_seq: u64,
}

pub(crate) struct VectorIndex {
    dim: usize,
    hnsw_min: usize,
    max_entries: usize,
    inner: RwLock<Inner>,
}

impl VectorIndex {
    pub(crate) fn new(dim: usize, hnsw_min: usize, max_entries: usize) -> Self {
        Self {
            dim,
            hnsw_min: hnsw_min.max(1),
            max_entries: max_entries.max(1),
            inner: RwLock::new(Inner {
                scopes: HashMap::new(),
                order: VecDeque::new(),
                live: 0,
                next_seq: 0,
            }),
        }
    }

    /// The best match in the scope, if its similarity is at least `threshold`.
    pub(crate) fn search(
        &self,
        namespace: &str,
        scope: &SemanticScope,
        query: &[f32],
        threshold: f32,
    ) -> Option<Match> {
        if query.len() != self.dim {
            return None;
        }
        let inner = self.inner.read();
        // Look the scope up without allocating an Arc<str> for the namespace.
        let index = inner
            .scopes
            .iter()
            .find(|((ns, sc), _)| sc == scope && &**ns == namespace)
            .map(|(_, index)| index)?;
        let best = match &index.hnsw {
            Some(hnsw) => hnsw
                .search(query, 4, HNSW_EF_SEARCH)
                .into_iter()
                .filter_map(|n| {
                    let slot = index.slots.get(n.d_id)?;
                    slot.alive
                        .then(|| (n.d_id, index.vector(n.d_id).map(|v| dot(v, query))))
                })
                .filter_map(|(id, sim)| Some((id, sim?)))
                .max_by(|a, b| a.1.total_cmp(&b.1)),
            None => index
                .slots
                .iter()
                .zip(index.vectors.chunks_exact(self.dim))
                .enumerate()
                .filter(|(_, (slot, _))| slot.alive)
                .map(|(id, (_, v))| (id, dot(v, query)))
                .max_by(|a, b| a.1.total_cmp(&b.1)),
        };
        let (id, similarity) = best?;
        if similarity < threshold {
            return None;
        }
        let slot = index.slots.get(id)?;
        Some(Match {
            key: slot.key,
            text: Arc::clone(&slot.text),
            similarity,
        })
    }

    /// Adds (or replaces) the vector of `key`; returns how many entries the cap
    /// evicted.
    pub(crate) fn insert(
        &self,
        namespace: &str,
        scope: SemanticScope,
        key: [u8; 32],
        text: &str,
        vector: &[f32],
    ) -> u64 {
        if vector.len() != self.dim {
            return 0;
        }
        let mut guard = self.inner.write();
        self.insert_locked(&mut guard, namespace, scope, key, text, vector, true)
    }

    /// Adds many vectors under one lock, building each scope's HNSW graph
    /// once at the end (in parallel) rather than growing it insert by insert:
    /// the reload of persisted vectors on open. Returns how many the cap
    /// evicted.
    pub(crate) fn insert_many<'a>(
        &self,
        rows: impl IntoIterator<Item = (&'a str, SemanticScope, [u8; 32], &'a str, &'a [f32])>,
    ) -> u64 {
        let mut guard = self.inner.write();
        let mut evicted = 0;
        for (namespace, scope, key, text, vector) in rows {
            if vector.len() == self.dim {
                evicted +=
                    self.insert_locked(&mut guard, namespace, scope, key, text, vector, false);
            }
        }
        for index in guard.scopes.values_mut() {
            if index.hnsw.is_none() && index.live >= self.hnsw_min {
                index.build_hnsw(self.dim);
            }
        }
        evicted
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_locked(
        &self,
        inner: &mut Inner,
        namespace: &str,
        scope: SemanticScope,
        key: [u8; 32],
        text: &str,
        vector: &[f32],
        build_hnsw: bool,
    ) -> u64 {
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let id: ScopeId = (Arc::from(namespace), scope);
        let index = inner.scopes.entry(id.clone()).or_default();
        if index.remove(&key) {
            inner.live -= 1;
        }
        index.push(self.dim, key, text, vector, seq);
        inner.live += 1;
        if build_hnsw && index.hnsw.is_none() && index.live >= self.hnsw_min {
            index.build_hnsw(self.dim);
        }
        inner.order.push_back((id, key, seq));
        let mut evicted = 0;
        while inner.live > self.max_entries {
            let Some((scope_id, old_key, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if let Some(index) = inner.scopes.get_mut(&scope_id)
                && index.remove_if_seq(&old_key, old_seq)
            {
                inner.live -= 1;
                evicted += 1;
                index.maybe_compact(self.dim, self.hnsw_min);
            }
        }
        evicted
    }

    /// Tombstones `key` in every scope of `namespace`.
    pub(crate) fn remove(&self, namespace: &str, key: &[u8; 32]) -> bool {
        let mut guard = self.inner.write();
        let inner = &mut *guard;
        let mut removed = false;
        for ((ns, _), index) in &mut inner.scopes {
            if &**ns == namespace && index.remove(key) {
                inner.live -= 1;
                removed = true;
                index.maybe_compact(self.dim, self.hnsw_min);
            }
        }
        removed
    }

    /// Drops every scope of `namespace` (all with `None`); returns how many
    /// entries went.
    pub(crate) fn clear(&self, namespace: Option<&str>) -> u64 {
        let mut inner = self.inner.write();
        let before = inner.live;
        match namespace {
            None => {
                inner.scopes.clear();
                inner.order.clear();
            }
            Some(ns) => {
                inner.scopes.retain(|(n, _), _| &**n != ns);
                inner.order.retain(|((n, _), _, _)| &**n != ns);
            }
        }
        inner.live = inner.scopes.values().map(|s| s.live).sum();
        (before - inner.live) as u64
    }

    /// (live entries, bytes): vectors, texts and keys, tombstones included.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let inner = self.inner.read();
        let bytes: usize = inner
            .scopes
            .values()
            .map(|s| {
                s.vectors.len() * 4
                    + s.slots
                        .iter()
                        .map(|slot| slot.text.len() + size_of::<Slot>())
                        .sum::<usize>()
            })
            .sum();
        (inner.live as u64, bytes as u64)
    }
}

impl ScopeIndex {
    fn vector(&self, id: usize) -> Option<&[f32]> {
        let dim = self.vectors.len() / self.slots.len().max(1);
        self.vectors.get(id * dim..(id + 1) * dim)
    }

    fn push(&mut self, dim: usize, key: [u8; 32], text: &str, vector: &[f32], seq: u64) {
        let id = self.slots.len();
        self.vectors.extend_from_slice(vector);
        self.slots.push(Slot {
            key,
            text: Arc::from(text),
            alive: true,
            seq,
        });
        self.by_key.insert(key, id);
        self.live += 1;
        if let Some(hnsw) = &self.hnsw
            && let Some(v) = self.vectors.get(id * dim..(id + 1) * dim)
        {
            hnsw.insert_slice((v, id));
        }
    }

    fn remove(&mut self, key: &[u8; 32]) -> bool {
        let Some(id) = self.by_key.remove(key) else {
            return false;
        };
        match self.slots.get_mut(id) {
            Some(slot) if slot.alive => {
                slot.alive = false;
                self.live -= 1;
                true
            }
            _ => false,
        }
    }

    fn remove_if_seq(&mut self, key: &[u8; 32], seq: u64) -> bool {
        let current = self
            .by_key
            .get(key)
            .and_then(|id| self.slots.get(*id))
            .map(|slot| slot.seq);
        current == Some(seq) && self.remove(key)
    }

    fn build_hnsw(&mut self, dim: usize) {
        let hnsw = Hnsw::new(
            HNSW_M,
            self.slots.len().max(1024),
            HNSW_LAYERS,
            HNSW_EF_CONSTRUCTION,
            DotDistance,
        );
        let points: Vec<(&[f32], usize)> = self
            .vectors
            .chunks_exact(dim)
            .enumerate()
            .filter(|(id, _)| self.slots.get(*id).is_some_and(|s| s.alive))
            .map(|(id, v)| (v, id))
            .collect();
        hnsw.parallel_insert_slice(&points);
        self.hnsw = Some(hnsw);
    }

    /// Rebuilds without tombstones once they outnumber live entries.
    fn maybe_compact(&mut self, dim: usize, hnsw_min: usize) {
        let dead = self.slots.len() - self.live;
        if dead <= self.live || dead < 64 {
            return;
        }
        let old_vectors = std::mem::take(&mut self.vectors);
        let old_slots = std::mem::take(&mut self.slots);
        self.by_key.clear();
        self.live = 0;
        self.hnsw = None;
        for (slot, v) in old_slots.into_iter().zip(old_vectors.chunks_exact(dim)) {
            if slot.alive {
                let id = self.slots.len();
                self.vectors.extend_from_slice(v);
                self.by_key.insert(slot.key, id);
                self.slots.push(slot);
                self.live += 1;
            }
        }
        if self.live >= hnsw_min {
            self.build_hnsw(dim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantic::normalize;
    use rand::{Rng, SeedableRng};

    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
                normalize(&mut v);
                v
            })
            .collect()
    }

    fn key(i: usize) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        k
    }

    #[test]
    fn exact_and_hnsw_find_the_same_near_duplicates() {
        let dim = 32;
        let vectors = random_vectors(600, dim, 7);
        let scope = SemanticScope::from_bytes(b"s");
        let exact = VectorIndex::new(dim, usize::MAX, 10_000);
        let graph = VectorIndex::new(dim, 100, 10_000);
        for (i, v) in vectors.iter().enumerate() {
            exact.insert("ns", scope, key(i), "t", v);
            graph.insert("ns", scope, key(i), "t", v);
        }
        let mut agree = 0;
        for (i, v) in vectors.iter().enumerate().take(200) {
            let mut q = v.clone();
            q[0] += 0.05;
            normalize(&mut q);
            let e = exact.search("ns", &scope, &q, 0.9).unwrap();
            assert_eq!(e.key, key(i));
            if graph.search("ns", &scope, &q, 0.9).map(|m| m.key) == Some(key(i)) {
                agree += 1;
            }
        }
        assert!(agree >= 190, "hnsw recall too low: {agree}/200");
        // Another scope or namespace never matches.
        let other = SemanticScope::from_bytes(b"other");
        assert!(exact.search("ns", &other, &vectors[0], 0.0).is_none());
        assert!(exact.search("ns2", &scope, &vectors[0], 0.0).is_none());
    }

    #[test]
    fn bulk_loading_builds_the_graph_once_and_keeps_the_cap() {
        let dim = 32;
        let vectors = random_vectors(600, dim, 11);
        let scope = SemanticScope::from_bytes(b"s");
        // Cap 500: the 100 oldest of the 600 rows are evicted, as inserting
        // them one by one would.
        let index = VectorIndex::new(dim, 100, 500);
        let evicted = index.insert_many(
            vectors
                .iter()
                .enumerate()
                .map(|(i, v)| ("ns", scope, key(i), "t", v.as_slice())),
        );
        assert_eq!(evicted, 100);
        assert_eq!(index.usage().0, 500);
        let inner = index.inner.read();
        let built = inner.scopes.values().next().unwrap();
        assert!(
            built.hnsw.is_some(),
            "a scope above hnsw_min gets its graph"
        );
        drop(inner);
        assert!(index.search("ns", &scope, &vectors[0], 0.99).is_none());
        let mut found = 0;
        for (i, v) in vectors.iter().enumerate().skip(100) {
            if index.search("ns", &scope, v, 0.99).map(|m| m.key) == Some(key(i)) {
                found += 1;
            }
        }
        assert!(found >= 490, "recall after a bulk load: {found}/500");
        // Vectors of the wrong length are skipped, not stored.
        assert_eq!(
            index.insert_many([("ns", scope, key(9_999), "t", &[1.0_f32][..])]),
            0
        );
        assert_eq!(index.usage().0, 500);
    }

    #[test]
    fn tombstones_cap_and_compaction() {
        let dim = 16;
        let vectors = random_vectors(300, dim, 3);
        let scope = SemanticScope::from_bytes(b"s");
        let index = VectorIndex::new(dim, 50, 200);
        let mut evicted = 0;
        for (i, v) in vectors.iter().enumerate() {
            evicted += index.insert("ns", scope, key(i), "t", v);
        }
        assert_eq!(evicted, 100);
        assert_eq!(index.usage().0, 200);
        // The oldest were evicted; the newest are found.
        assert!(index.search("ns", &scope, &vectors[0], 0.999).is_none());
        assert_eq!(
            index
                .search("ns", &scope, &vectors[299], 0.999)
                .unwrap()
                .key,
            key(299)
        );
        assert!(index.remove("ns", &key(299)));
        assert!(index.search("ns", &scope, &vectors[299], 0.999).is_none());
        assert_eq!(index.clear(Some("ns")), 199);
        assert_eq!(index.usage(), (0, 0));
    }
}
