//! The prompt-prefix KV cache.
//!
//! DSPy-style programs send the same instructions and demos on every call
//! and change only the last user turn. After a prompt is processed its
//! keys and values are kept here (an LRU bounded in bytes); a later prompt
//! that shares a token prefix with one of them starts from a copy of that
//! prefix's KV and runs only the remaining tokens.

use std::sync::Arc;

use candle_core::Tensor;

/// Counters of the prefix cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Generations that reused at least one cached token.
    pub hits: u64,
    /// Generations that found nothing to reuse.
    pub misses: u64,
    /// Prompt tokens not recomputed thanks to the cache, summed.
    pub reused_tokens: u64,
    /// Prompts currently held.
    pub entries: usize,
    /// Bytes of KV currently held.
    pub bytes: usize,
    /// The configured bound.
    pub capacity_bytes: usize,
}

/// One cached prompt: its tokens and per-layer `(K, V)`, each
/// `(kv_heads, tokens, head_dim)`.
pub(crate) struct Entry {
    pub(crate) tokens: Vec<u32>,
    pub(crate) kv: Vec<(Tensor, Tensor)>,
    pub(crate) bytes: usize,
}

pub(crate) struct PrefixCache {
    /// Most recently used first. A handful of entries: a linear scan with a
    /// prefix comparison is cheaper than any index.
    entries: Vec<Arc<Entry>>,
    bytes: usize,
    capacity: usize,
    hits: u64,
    misses: u64,
    reused: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            capacity,
            hits: 0,
            misses: 0,
            reused: 0,
        }
    }

    /// The entry sharing the longest prefix with `prompt`, and how many of
    /// its tokens to reuse: all it shares, but always leaving at least one
    /// prompt token to run, since the model must produce logits for the
    /// last one. (Any split is bit-exact: a prompt row's arithmetic does not
    /// depend on which call processes it; see the crate doc.)
    pub(crate) fn lookup(&mut self, prompt: &[u32]) -> Option<(Arc<Entry>, usize)> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)));
        let limit = prompt.len().saturating_sub(1);
        let usable = |n: usize| n.min(limit);
        match best {
            Some((i, n)) if usable(n) > 0 => {
                let entry = self.entries.remove(i);
                self.entries.insert(0, Arc::clone(&entry));
                let reuse = usable(n);
                self.hits += 1;
                self.reused += reuse as u64;
                Some((entry, reuse))
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Whether an entry of `bytes` could be stored at all.
    pub(crate) fn accepts(&self, bytes: usize) -> bool {
        bytes > 0 && bytes <= self.capacity
    }

    /// Stores a prompt's KV. Entries whose tokens are a prefix of the new
    /// one are dropped (the new one answers every lookup they would);
    /// then the least recently used go until the bound holds.
    pub(crate) fn insert(&mut self, entry: Entry) {
        if !self.accepts(entry.bytes) {
            return;
        }
        let tokens = &entry.tokens;
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let subsumed = e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens);
            if subsumed {
                *bytes -= e.bytes;
            }
            !subsumed
        });
        // An existing entry that extends the new prompt already covers it.
        if self
            .entries
            .iter()
            .any(|e| e.tokens.starts_with(&entry.tokens))
        {
            return;
        }
        self.bytes += entry.bytes;
        self.entries.insert(0, Arc::new(entry));
        while self.bytes > self.capacity {
            match self.entries.pop() {
                Some(e) => self.bytes -= e.bytes,
                None => break,
            }
        }
    }

    /// Whether storing `prompt` would add nothing (an entry already starts
    /// with it), so the snapshot copy can be skipped.
    pub(crate) fn covers(&self, prompt: &[u32]) -> bool {
        self.entries.iter().any(|e| e.tokens.starts_with(prompt))
    }

    /// Drops every entry; the counters stay.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    pub(crate) fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            hits: self.hits,
            misses: self.misses,
            reused_tokens: self.reused,
            entries: self.entries.len(),
            bytes: self.bytes,
            capacity_bytes: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tokens: &[u32], bytes: usize) -> Entry {
        Entry {
            tokens: tokens.to_vec(),
            kv: Vec::new(),
            bytes,
        }
    }

    #[test]
    fn longest_prefix_wins_and_leaves_one_token() {
        let mut c = PrefixCache::new(1000);
        c.insert(entry(&[1, 2, 3], 10));
        c.insert(entry(&[1, 9, 9, 9], 10));
        let (e, n) = c
            .lookup(&[1, 2, 3, 4])
            .map(|(e, n)| (e.tokens.clone(), n))
            .unwrap_or_default();
        assert_eq!((e, n), (vec![1, 2, 3], 3));
        // The identical prompt reuses all but its last token.
        assert_eq!(c.lookup(&[1, 2, 3]).map(|(_, n)| n), Some(2));
        assert!(c.lookup(&[7, 7]).is_none());
        // A prompt of one token has nothing to reuse.
        assert!(c.lookup(&[1]).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.reused_tokens), (2, 2, 5));
    }

    #[test]
    fn bounded_lru_and_subsumption() {
        let mut c = PrefixCache::new(25);
        c.insert(entry(&[1], 10));
        c.insert(entry(&[1, 2], 10)); // subsumes [1]
        assert_eq!(c.stats().entries, 1);
        c.insert(entry(&[5], 10));
        c.insert(entry(&[6], 10)); // evicts [1, 2], the least recently used
        let s = c.stats();
        assert_eq!((s.entries, s.bytes), (2, 20));
        assert!(c.lookup(&[1, 2, 3]).is_none());
        c.insert(entry(&[9], 30)); // larger than the cache: not stored
        assert_eq!(c.stats().entries, 2);
    }
}
