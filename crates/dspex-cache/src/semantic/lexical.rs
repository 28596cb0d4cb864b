//! The built-in lexical embedder: no model files, a few microseconds a text.
//!
//! Feature hashing (signed, FNV-1a) of normalised word unigrams, word bigrams
//! and character trigrams of content words into 256 dimensions, then L2
//! normalisation. Function words weigh less than content words, standing in for
//! the IDF weights a corpus would give.
//!
//! It sees words, not meaning: on QQP's hard negatives ("best laptop in India"
//! vs "best laptop in China") lexical overlap stays high, so its calibrated
//! default threshold is strict and it matches only near-verbatim repeats
//! (case, punctuation, spacing, small word-order or function-word changes).
//! Use a transformer embedder for paraphrases.

use futures::future::BoxFuture;

use crate::error::Result;
use crate::semantic::{Embedder, normalize};

/// The vector length.
pub const DIMENSION: usize = 256;

/// The default threshold, chosen on `qqp-dev.jsonl` (see `dspex cache
/// calibrate`): pairwise precision 0.83 there (0.96 is the lowest threshold
/// reaching 0.80, at 0.818). Lexical similarity never separates QQP's hard
/// negatives well (precision stays near 0.56 from 0.5 to 0.9), so the
/// default only accepts near-verbatim repeats.
pub const DEFAULT_THRESHOLD: f32 = 0.97;

const UNIGRAM: f32 = 1.0;
const STOP_UNIGRAM: f32 = 0.2;
const BIGRAM: f32 = 0.7;
const TRIGRAMS: f32 = 0.5;

const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "been", "by", "can", "could", "did", "do",
    "does", "for", "from", "he", "how", "i", "if", "in", "into", "is", "it", "may", "me", "might",
    "must", "my", "no", "not", "of", "on", "or", "shall", "she", "should", "so", "than", "that",
    "the", "their", "then", "there", "these", "they", "this", "those", "to", "us", "was", "we",
    "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your",
];

/// The built-in lexical embedder.
#[derive(Clone, Debug, Default)]
pub struct LexicalEmbedder;

impl LexicalEmbedder {
    /// A new embedder.
    pub fn new() -> Self {
        Self
    }

    /// Embeds one text synchronously.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; DIMENSION];
        let lower = text.to_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let is_stop = |w: &str| STOP_WORDS.binary_search(&w).is_ok();
        for word in &words {
            let weight = if is_stop(word) { STOP_UNIGRAM } else { UNIGRAM };
            add(&mut v, &[b"u", word.as_bytes()], weight);
        }
        for pair in words.windows(2) {
            if let [a, b] = pair {
                let weight = if is_stop(a) && is_stop(b) {
                    BIGRAM / 2.0
                } else {
                    BIGRAM
                };
                add(&mut v, &[b"b", a.as_bytes(), b" ", b.as_bytes()], weight);
            }
        }
        let mut buf: Vec<char> = Vec::with_capacity(32);
        let mut tri = [0u8; 12];
        for word in words.iter().filter(|w| !is_stop(w)) {
            buf.clear();
            buf.push('<');
            buf.extend(word.chars());
            buf.push('>');
            let n = buf.len().saturating_sub(2);
            let weight = TRIGRAMS / (n.max(1) as f32).sqrt();
            for window in buf.windows(3) {
                let mut len = 0;
                for c in window {
                    let encoded = c.encode_utf8(tri.get_mut(len..).unwrap_or_default());
                    len += encoded.len();
                }
                add(&mut v, &[b"c", tri.get(..len).unwrap_or_default()], weight);
            }
        }
        normalize(&mut v);
        v
    }
}

fn add(v: &mut [f32], parts: &[&[u8]], weight: f32) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            h ^= u64::from(*byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Mix the high bits down: FNV's low bits are weak for short inputs.
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 32;
    let sign = if h & (1 << 63) == 0 { 1.0 } else { -1.0 };
    let slot = (h % DIMENSION as u64) as usize;
    if let Some(x) = v.get_mut(slot) {
        *x += sign * weight;
    }
}

impl Embedder for LexicalEmbedder {
    fn name(&self) -> &str {
        "lexical"
    }

    fn dimension(&self) -> usize {
        DIMENSION
    }

    fn default_threshold(&self) -> f32 {
        DEFAULT_THRESHOLD
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        let out = texts.iter().map(|t| self.embed_one(t)).collect();
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantic::dot;

    #[test]
    fn stop_words_are_sorted_for_binary_search() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn vectors_are_normalised_and_similar_texts_are_close() {
        let e = LexicalEmbedder::new();
        let a = e.embed_one("How do I learn Rust quickly?");
        let b = e.embed_one("how do i learn rust quickly");
        let c = e.embed_one("What is the capital of France?");
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        assert!(dot(&a, &b) > 0.999);
        assert!(dot(&a, &c) < 0.5);
        assert_eq!(e.embed_one("").iter().filter(|x| **x != 0.0).count(), 0);
    }
}
