//! Threshold calibration on labelled pairs.
//!
//! Two measurements, both swept over thresholds:
//!
//! - **Pairwise**: each pair `(a, b, duplicate)` is a prediction "same
//!   question" when `cos(a, b) >= t`. Precision is the share of predictions that
//!   are right, recall the share of duplicates found, hit rate the share of
//!   pairs predicted.
//! - **Retrieval** (the protocol GPTCache publishes): store every `a`, query
//!   every `b` against all of them; a query whose nearest stored text reaches
//!   `t` is a hit, *correct* when that text is known to ask the same thing
//!   (identical after case folding, or a pair labelled duplicate), *wrong*
//!   otherwise; the rest are misses.
//!
//! A wrong cached answer costs more than a miss, so the suggested threshold is
//! the lowest (highest recall) whose pairwise precision is at least
//! [`TARGET_PRECISION`], among thresholds with enough predictions to measure.
//!
//! With a [`Verifier`], every candidate at or above the threshold must also pass
//! it; the `verified_*` fields report the same curves after that check.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};
use crate::semantic::{Embedder, Verifier, dot};

/// The precision the suggested threshold must reach.
pub const TARGET_PRECISION: f64 = 0.80;

/// Fewest predictions a threshold needs before its precision counts.
pub const MIN_SUPPORT: u64 = 10;

/// One labelled pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledPair {
    /// The first text.
    pub a: String,
    /// The second text.
    pub b: String,
    /// Whether they ask the same thing.
    pub duplicate: bool,
}

/// Reads `{"a", "b", "duplicate"}` lines (blank lines skipped).
pub fn read_pairs(path: &Path) -> Result<Vec<LabelledPair>> {
    let text = std::fs::read_to_string(path).map_err(|e| CacheError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair = serde_json::from_str(line).map_err(|e| CacheError::Io {
            path: format!("{}:{}", path.display(), n + 1),
            message: format!("not a {{\"a\", \"b\", \"duplicate\"}} line: {e}"),
        })?;
        pairs.push(pair);
    }
    Ok(pairs)
}

/// One point of the pairwise curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairPoint {
    /// The threshold.
    pub threshold: f32,
    /// Correct "same" predictions.
    pub true_positives: u64,
    /// Wrong "same" predictions.
    pub false_positives: u64,
    /// Precision (1 when nothing is predicted).
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// Share of pairs predicted "same".
    pub hit_rate: f64,
}

/// One point of the retrieval curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetrievalPoint {
    /// The threshold.
    pub threshold: f32,
    /// Hits that returned the query's own duplicate.
    pub correct: u64,
    /// Hits that returned anything else.
    pub wrong: u64,
    /// Queries below the threshold.
    pub misses: u64,
    /// correct / (correct + wrong).
    pub precision: f64,
    /// (correct + wrong) / queries.
    pub hit_rate: f64,
}

/// What [`calibrate`] measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationReport {
    /// The embedder's name.
    pub embedder: String,
    /// Pairs measured.
    pub pairs: u64,
    /// Duplicates among them.
    pub duplicates: u64,
    /// The pairwise curve.
    pub pairwise: Vec<PairPoint>,
    /// The retrieval curve.
    pub retrieval: Vec<RetrievalPoint>,
    /// The pairwise curve with the verifier applied, when one was given.
    pub verified_pairwise: Option<Vec<PairPoint>>,
    /// The retrieval curve with the verifier applied, when one was given.
    pub verified_retrieval: Option<Vec<RetrievalPoint>>,
    /// The suggested threshold: highest recall with precision at least
    /// [`TARGET_PRECISION`]; `None` when no threshold reaches it.
    pub suggested: Option<f32>,
    /// Mean time to embed one text, in microseconds.
    pub embed_micros_per_text: f64,
}

/// The thresholds swept: 0.50 to 0.99 by 0.01, then 0.995 and 0.999.
pub fn thresholds() -> Vec<f32> {
    let mut out: Vec<f32> = (50..100).map(|i| i as f32 / 100.0).collect();
    out.extend([0.995, 0.999]);
    out
}

/// Measures `embedder` on `pairs`.
pub async fn calibrate(
    embedder: &dyn Embedder,
    pairs: &[LabelledPair],
    verifier: Option<&dyn Verifier>,
) -> Result<CalibrationReport> {
    let started = std::time::Instant::now();
    let a = embed_all(embedder, pairs.iter().map(|p| p.a.as_str())).await?;
    let b = embed_all(embedder, pairs.iter().map(|p| p.b.as_str())).await?;
    let embed_micros_per_text =
        started.elapsed().as_secs_f64() * 1e6 / (2 * pairs.len()).max(1) as f64;
    let labels: Vec<bool> = pairs.iter().map(|p| p.duplicate).collect();
    let sims: Vec<f32> = a.iter().zip(&b).map(|(x, y)| dot(x, y)).collect();

    // Retrieval: nearest stored `a` (deduplicated by text) for every `b`.
    let mut stored: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, pair) in pairs.iter().enumerate() {
        seen.entry(pair.a.as_str()).or_insert_with(|| {
            stored.push(i);
            i
        });
    }
    let nearest: Vec<(usize, f32)> = b
        .iter()
        .map(|q| {
            stored
                .iter()
                .filter_map(|&j| a.get(j).map(|v| (j, dot(v, q))))
                .max_by(|x, y| x.1.total_cmp(&y.1))
                .unwrap_or((usize::MAX, f32::MIN))
        })
        .collect();
    // A hit is correct when the stored text it found is known to ask the same
    // thing as the query: the same text (after trimming and case folding), or
    // a pair labelled duplicate in the data. Anything else (a non-duplicate
    // pair, or an unlabelled one) counts as wrong: the conservative reading.
    let norm = |t: &str| t.trim().to_lowercase();
    let mut labelled: std::collections::HashMap<(String, String), bool> =
        std::collections::HashMap::new();
    for pair in pairs {
        labelled.insert((norm(&pair.a), norm(&pair.b)), pair.duplicate);
        labelled.insert((norm(&pair.b), norm(&pair.a)), pair.duplicate);
    }
    let correct_target: Vec<bool> = nearest
        .iter()
        .zip(pairs)
        .map(|((j, _), pair)| {
            pairs.get(*j).is_some_and(|m| {
                let (found, query) = (norm(&m.a), norm(&pair.b));
                found == query || labelled.get(&(found, query)).copied().unwrap_or(false)
            })
        })
        .collect();

    let pairwise = pair_curve(&sims, &labels, None);
    let retrieval = retrieval_curve(&nearest, &correct_target, None);
    let (verified_pairwise, verified_retrieval) = match verifier {
        Some(verifier) => {
            let mut pair_ok = Vec::with_capacity(pairs.len());
            for pair in pairs {
                pair_ok.push(verifier.verify(&pair.b, &pair.a).await);
            }
            let mut near_ok = Vec::with_capacity(pairs.len());
            for ((j, _), pair) in nearest.iter().zip(pairs) {
                let ok = match pairs.get(*j) {
                    Some(m) => verifier.verify(&pair.b, &m.a).await,
                    None => false,
                };
                near_ok.push(ok);
            }
            (
                Some(pair_curve(&sims, &labels, Some(&pair_ok))),
                Some(retrieval_curve(&nearest, &correct_target, Some(&near_ok))),
            )
        }
        None => (None, None),
    };
    let suggested = suggest(verified_pairwise.as_ref().unwrap_or(&pairwise));
    Ok(CalibrationReport {
        embedder: embedder.name().to_owned(),
        pairs: pairs.len() as u64,
        duplicates: labels.iter().filter(|d| **d).count() as u64,
        pairwise,
        retrieval,
        verified_pairwise,
        verified_retrieval,
        suggested,
        embed_micros_per_text,
    })
}

/// The pairwise curve alone (no retrieval protocol, which compares every `b`
/// with every `a`): enough to check a threshold quickly.
pub async fn pairwise(embedder: &dyn Embedder, pairs: &[LabelledPair]) -> Result<Vec<PairPoint>> {
    let a = embed_all(embedder, pairs.iter().map(|p| p.a.as_str())).await?;
    let b = embed_all(embedder, pairs.iter().map(|p| p.b.as_str())).await?;
    let labels: Vec<bool> = pairs.iter().map(|p| p.duplicate).collect();
    let sims: Vec<f32> = a.iter().zip(&b).map(|(x, y)| dot(x, y)).collect();
    Ok(pair_curve(&sims, &labels, None))
}

/// The lowest threshold with precision at least [`TARGET_PRECISION`] and at
/// least [`MIN_SUPPORT`] predictions.
pub fn suggest(curve: &[PairPoint]) -> Option<f32> {
    curve
        .iter()
        .filter(|p| {
            p.true_positives + p.false_positives >= MIN_SUPPORT && p.precision >= TARGET_PRECISION
        })
        .map(|p| p.threshold)
        .min_by(f32::total_cmp)
}

async fn embed_all<'a>(
    embedder: &dyn Embedder,
    texts: impl Iterator<Item = &'a str>,
) -> Result<Vec<Vec<f32>>> {
    let texts: Vec<&str> = texts.collect();
    // Batch texts of similar length together: transformer embedders pad each
    // batch to its longest text, so sorted batches waste far less compute.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts.get(i).map_or(0, |t| t.len()));
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(32) {
        let batch: Vec<&str> = chunk
            .iter()
            .filter_map(|&i| texts.get(i).copied())
            .collect();
        let vectors = embedder.embed(&batch).await?;
        if vectors.len() != batch.len() {
            return Err(CacheError::embedding(
                embedder.name(),
                format!(
                    "returned {} vectors for {} texts",
                    vectors.len(),
                    batch.len()
                ),
            ));
        }
        for (&i, v) in chunk.iter().zip(vectors) {
            if let Some(slot) = out.get_mut(i) {
                *slot = v;
            }
        }
    }
    Ok(out)
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 1.0 } else { n as f64 / d as f64 }
}

fn pair_curve(sims: &[f32], labels: &[bool], verified: Option<&[bool]>) -> Vec<PairPoint> {
    let positives = labels.iter().filter(|l| **l).count() as u64;
    thresholds()
        .into_iter()
        .map(|t| {
            let (mut tp, mut fp) = (0u64, 0u64);
            for (i, (s, dup)) in sims.iter().zip(labels).enumerate() {
                let pass = verified.is_none_or(|v| v.get(i).copied().unwrap_or(false));
                if *s >= t && pass {
                    if *dup {
                        tp += 1;
                    } else {
                        fp += 1;
                    }
                }
            }
            PairPoint {
                threshold: t,
                true_positives: tp,
                false_positives: fp,
                precision: ratio(tp, tp + fp),
                recall: if positives == 0 {
                    0.0
                } else {
                    tp as f64 / positives as f64
                },
                hit_rate: if sims.is_empty() {
                    0.0
                } else {
                    (tp + fp) as f64 / sims.len() as f64
                },
            }
        })
        .collect()
}

fn retrieval_curve(
    nearest: &[(usize, f32)],
    correct_target: &[bool],
    verified: Option<&[bool]>,
) -> Vec<RetrievalPoint> {
    thresholds()
        .into_iter()
        .map(|t| {
            let (mut correct, mut wrong, mut misses) = (0u64, 0u64, 0u64);
            for (i, ((_, s), ok)) in nearest.iter().zip(correct_target).enumerate() {
                let pass = verified.is_none_or(|v| v.get(i).copied().unwrap_or(false));
                if *s >= t && pass {
                    if *ok {
                        correct += 1;
                    } else {
                        wrong += 1;
                    }
                } else {
                    misses += 1;
                }
            }
            RetrievalPoint {
                threshold: t,
                correct,
                wrong,
                misses,
                precision: ratio(correct, correct + wrong),
                hit_rate: ratio(correct + wrong, nearest.len() as u64),
            }
        })
        .collect()
}
