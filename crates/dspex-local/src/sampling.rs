//! Token sampling: greedy, or temperature + nucleus (top-p) with a seeded
//! RNG of our own (SplitMix64), so that a seed means the same text across
//! versions of any dependency.

/// SplitMix64: tiny, fast, and good enough to draw one uniform per token.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed from the OS-seeded hasher of the standard library, for
    /// unseeded sampling.
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5DEE_CE66);
        Self(h.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit (the first one on ties); NaNs are ignored.
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(0)
}

/// Draws a token. `temperature <= 0` is greedy.
pub(crate) fn sample(logits: &[f32], temperature: f32, top_p: Option<f32>, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let inv_t = 1.0 / f64::from(temperature);
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return argmax(logits);
    }
    // Unnormalised probabilities; NaN logits get 0.
    let probs: Vec<f64> = logits
        .iter()
        .map(|&l| {
            if l.is_nan() {
                0.0
            } else {
                ((f64::from(l) - f64::from(max)) * inv_t).exp()
            }
        })
        .collect();
    let total: f64 = probs.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return argmax(logits);
    }

    let top_p = top_p.map(f64::from).filter(|&p| p < 1.0);
    let Some(top_p) = top_p else {
        return draw(probs.iter().copied().enumerate(), total, rng)
            .unwrap_or_else(|| argmax(logits));
    };

    // Nucleus: the smallest set of most likely tokens whose mass reaches
    // top_p. Sorting 262k probabilities per token is slow, so first find a
    // threshold whose survivors already hold top_p of the mass (they then
    // contain the nucleus), and sort only those.
    let need = top_p * total;
    let p_max = probs.iter().copied().fold(0.0, f64::max);
    let mut threshold = p_max;
    let mut candidates: Vec<(usize, f64)>;
    loop {
        candidates = probs
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, p)| p >= threshold)
            .collect();
        let mass: f64 = candidates.iter().map(|&(_, p)| p).sum();
        if mass >= need || threshold == 0.0 {
            break;
        }
        threshold = if threshold < 1e-300 {
            0.0
        } else {
            threshold / 16.0
        };
    }
    // Descending probability, ties by index so the order is deterministic.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut mass = 0.0;
    let mut cut = candidates.len();
    for (n, &(_, p)) in candidates.iter().enumerate() {
        mass += p;
        if mass >= need {
            cut = n + 1;
            break;
        }
    }
    candidates.truncate(cut);
    draw(candidates.into_iter(), mass, rng).unwrap_or_else(|| argmax(logits))
}

/// Draws from `(index, weight)` pairs with the given total weight.
fn draw(items: impl Iterator<Item = (usize, f64)>, total: f64, rng: &mut Rng) -> Option<u32> {
    let target = rng.next_f64() * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, p) in items {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        last = Some(i);
        if acc > target {
            break;
        }
    }
    last.and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(sample(&[0.1, 3.0, 2.0], 0.0, None, &mut Rng::new(1)), 1);
    }

    #[test]
    fn seeded_sampling_repeats() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 113) as f32 / 10.0)
            .collect();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| sample(&logits, 0.8, Some(0.9), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // p ~ [0.88, 0.12, ~0]: top_p 0.5 must always give token 0.
        let logits = [4.0f32, 2.0, -20.0];
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            assert_eq!(sample(&logits, 1.0, Some(0.5), &mut rng), 0);
        }
        // top_p 0.95 needs both tokens 0 and 1, never 2.
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            let t = sample(&logits, 1.0, Some(0.95), &mut rng) as usize;
            seen[t] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0 && seen[2] == 0, "{seen:?}");
    }
}
