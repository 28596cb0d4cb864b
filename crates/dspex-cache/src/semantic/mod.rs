//! L3: semantic matching of prompts by embedding similarity.
//!
//! Vectors are L2-normalised, so cosine similarity is a dot product. Entries
//! live in one index per (namespace, [`SemanticScope`]): requests that differ
//! in anything but the final user message can never match each other (unlike
//! GPTCache's last-message matching, which serves wrong answers in multi-turn
//! chats).
//!
//! An L3 entry points at the exact key whose value answered it; the value
//! itself lives in L1 and L2. A match whose value has left both tiers is
//! dropped from the index and counts as a miss.
//!
//! The index lives in memory: each process starts with it empty and fills it
//! as values are stored (exact-key hits in L2 still work from the start).

pub mod calibrate;
pub(crate) mod index;
pub mod lexical;
#[cfg(feature = "local-embeddings")]
pub mod local;

use futures::future::BoxFuture;

use crate::error::Result;

pub use crate::key::SemanticScope;

/// Turns texts into L2-normalised vectors.
///
/// Implementations: [`lexical::LexicalEmbedder`] (built in, no model files, the
/// default), `local::LocalEmbedder` (feature `local-embeddings`: a BERT-family
/// sentence transformer from a Hugging Face model directory, run with candle),
/// and embeddings APIs (implemented in the client crate).
pub trait Embedder: Send + Sync {
    /// A short name, used in stats and errors (`lexical`, `minilm`...).
    fn name(&self) -> &str;

    /// The length of every vector.
    fn dimension(&self) -> usize;

    /// Identifies the vector space: vectors persisted under another
    /// fingerprint are discarded on open, never compared. Override it when
    /// [`Embedder::name`] does not name the model.
    fn fingerprint(&self) -> String {
        format!("{}/{}", self.name(), self.dimension())
    }

    /// The similarity at or above which two texts are treated as the same
    /// question, measured for this embedder (see [`calibrate`]).
    fn default_threshold(&self) -> f32;

    /// Embeds `texts`, one L2-normalised vector each, in order.
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>>;
}

/// A second, stricter check before a semantic hit is served, such as an LM
/// judge. It sees the new prompt and the cached prompt that matched.
pub trait Verifier: Send + Sync {
    /// Whether `cached` asks the same thing as `query`.
    fn verify<'a>(&'a self, query: &'a str, cached: &'a str) -> BoxFuture<'a, bool>;
}

/// L2-normalises `v` in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// The dot product (cosine similarity for normalised vectors).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Sixteen independent accumulators: the compiler turns them into four SIMD
    // registers even at the baseline target (SSE2), without reassociating
    // floating point on its own.
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        for n in [0, 1, 15, 16, 17, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n = {n}");
        }
    }
}
