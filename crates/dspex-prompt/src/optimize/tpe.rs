//! A Tree-structured Parzen Estimator (TPE) over categorical parameters, as
//! Optuna's `TPESampler` does it: the search strategy of MIPROv2.
//!
//! DSPy's MIPROv2 runs `optuna.samplers.TPESampler(seed=seed,
//! multivariate=True)` over the parameters `"{i}_predictor_instruction"` and
//! `"{i}_predictor_demos"`, each a categorical over candidate indices, and
//! maximises a score; it also adds trials it evaluated itself (full
//! evaluations of a chosen combination) to the study. [`Tpe`] is that
//! sampler, stateless: every [`Tpe::suggest`] gets the whole history, so an
//! externally evaluated trial is just one more [`Observation`].
//!
//! Hand-written rather than taken from a crate: the `tpe` crate is
//! univariate only (one optimiser per parameter, no joint sampling), and the
//! Optuna-like crates (`optimizer`, `parzen`) bring a study framework of their
//! own (trials, storage, many samplers) where MIPROv2 needs one function from
//! a history to the next combination. Categorical-only TPE with Optuna's
//! estimator is a few hundred lines and no new dependency.
//!
//! ```
//! use dspex_prompt::optimize::tpe::{Observation, Param, SplitMix64, Tpe, TpeConfig};
//!
//! let tpe = Tpe::new(
//!     vec![Param::new("0_predictor_instruction", 3), Param::new("0_predictor_demos", 4)],
//!     TpeConfig::default(),
//! )?;
//! let mut rng = SplitMix64::seed_from_u64(0);
//! let mut history = Vec::new();
//! for _ in 0..25 {
//!     let values = tpe.suggest(&history, &mut rng);
//!     // The objective: one point per coordinate equal to the best combination [2, 1].
//!     let score = f64::from(u8::from(values[0] == 2) + u8::from(values[1] == 1));
//!     history.push(Observation { values, score });
//! }
//! // A combination evaluated elsewhere (say on the full devset) joins the history as it is.
//! history.push(Observation { values: vec![2, 1], score: 2.0 });
//! let next = tpe.suggest(&history, &mut rng);
//! assert!(next[0] < 3 && next[1] < 4);
//! assert!(history.iter().filter(|o| o.values == [2, 1]).count() > 1);
//! # Ok::<(), dspex_prompt::optimize::tpe::TpeError>(())
//! ```
//!
//! # How a suggestion is made
//!
//! Let `n` be the number of usable observations (see [`Tpe::is_usable`]).
//!
//! * **Startup.** While `n < n_startup_trials`, each parameter is drawn
//!   uniformly and independently (Optuna's `RandomSampler`).
//! * **Split.** The best `gamma(n) = min(ceil(n / 10), 25)` observations by
//!   score (higher is better) are "below" (good), the rest "above". The sort is
//!   stable, so of equal scores the earlier observation ranks first, as
//!   Python's `sorted(..., reverse=True)` does in Optuna. Each group keeps
//!   history order.
//! * **Weights.** A group of `m` observations weighs them as Optuna's
//!   `default_weights`: all 1 when `m < 25`, else `linspace(1/m, 1, m - 25)`
//!   for the oldest `m - 25` and 1 for the newest 25.
//! * **Estimator** of a group (Optuna's `_ParzenEstimator` for categoricals),
//!   with `p = prior_weight`: an empty group is the uniform distribution.
//!   Otherwise it is a mixture of one component per observation, weighted
//!   `pi_i = w_i / (sum(w) + p)`, plus a prior component weighted
//!   `pi_0 = p / (sum(w) + p)`. Component `i` is a product over parameters
//!   `d` (with `C_d` choices) of the kernel
//!   `K_id(x) = (s + [x = x_id]) / (1 + C_d * s)` with `s = p / (m + 1)`, and
//!   the prior component is uniform, `K_0d(x) = 1 / C_d`.
//! * **Multivariate** (the default, and what MIPROv2 uses):
//!   `l(x) = sum_k pi_k * prod_d K_kd(x_d)` over the below group, `g(x)` the
//!   same over the above group. `n_ei_candidates` points are drawn from `l`
//!   (a component by `pi`, then each coordinate from its kernel), and the
//!   first one maximising `ln l(x) - ln g(x)` (computed with log-sum-exp) is
//!   returned.
//! * **Univariate:** each parameter on its own, with the 1-D mixture
//!   `l_d(x) = pi_0 / C_d + sum_i pi_i * K_id(x)` (and `g_d` likewise):
//!   `n_ei_candidates` values drawn from `l_d`, the first maximising
//!   `ln l_d(x) - ln g_d(x)` wins.
//!
//! # Where this differs from Optuna, and why
//!
//! * Categorical only, so `consider_magic_clip` and `consider_endpoints`
//!   (numerical kernels only) do not exist here; `consider_prior` is
//!   deprecated in Optuna and always on (a `prior_weight` of 0 turns the prior
//!   off). `gamma` and `weights` are fixed to Optuna's defaults, which is what
//!   MIPROv2 uses.
//! * Single objective, complete trials only: no pruned, running or infeasible
//!   trials, no `constant_liar`, no `group` decomposition, no
//!   `categorical_distance_func`. MIPROv2 uses none of them.
//! * The random numbers come from [`RandomSource`] (SplitMix64 by default),
//!   not numpy's Mersenne Twister: a seed gives the same suggestions on every
//!   run here, not the ones Optuna would give. The univariate mode draws
//!   directly from the marginal `l_d` rather than a component then a kernel:
//!   the same distribution with fewer draws.
//! * Optuna leaves single-choice parameters out of the joint search space;
//!   here they stay in, where their kernel is 1 and they change nothing.
//! * Observations that do not fit the parameters (another number of values, a
//!   value out of range, a NaN score) are ignored rather than rejected, so a
//!   caller's bookkeeping slip cannot stop a search; Optuna could not hold such
//!   trials at all (it fails a trial with a NaN value). Infinite scores are
//!   ordinary scores.

use serde::{Deserialize, Serialize};

use crate::error::PromptError;

/// Optuna's `default_gamma` cap: at most this many observations are "below".
const MAX_BELOW: usize = 25;

/// Optuna's `default_weights`: the newest this many observations of a group
/// weigh 1, older ones ramp up from `1/m`.
const FLAT_WEIGHTS: usize = 25;

/// One categorical parameter: a name and how many choices it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// The parameter's name, as in MIPROv2's `"0_predictor_instruction"`.
    pub name: String,
    /// How many choices it has; values are `0..choices`.
    pub choices: usize,
}

impl Param {
    /// A parameter named `name` with `choices` choices.
    pub fn new(name: impl Into<String>, choices: usize) -> Self {
        Self {
            name: name.into(),
            choices,
        }
    }
}

/// One finished trial: a choice index per parameter (in the order of the
/// parameters) and its score (higher is better).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The choice of each parameter, in the order of [`Tpe::params`].
    pub values: Vec<usize>,
    /// The score; higher is better.
    pub score: f64,
}

/// How [`Tpe`] searches. The defaults are Optuna's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TpeConfig {
    /// Observations drawn uniformly at random before the estimator is used
    /// (Optuna: 10).
    pub n_startup_trials: usize,
    /// Candidates drawn from the good-trials estimator per suggestion, of
    /// which the one with the best `l(x) / g(x)` is suggested (Optuna: 24).
    pub n_ei_candidates: usize,
    /// Weight of the uniform prior, in the mixture and in each kernel
    /// (Optuna: 1.0). Must be finite and not negative.
    pub prior_weight: f64,
    /// Model the parameters jointly (Optuna's `multivariate=True`, as MIPROv2
    /// sets it) rather than each on its own.
    pub multivariate: bool,
}

impl Default for TpeConfig {
    fn default() -> Self {
        Self {
            n_startup_trials: 10,
            n_ei_candidates: 24,
            prior_weight: 1.0,
            multivariate: true,
        }
    }
}

/// Why a [`Tpe`] cannot be built.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TpeError {
    /// There are no parameters to search.
    #[error("TPE needs at least one parameter")]
    NoParams,
    /// A parameter has no choices.
    #[error("TPE parameter `{name}` has no choices")]
    NoChoices {
        /// The parameter's name.
        name: String,
    },
    /// `n_ei_candidates` is 0, so there is nothing to choose from.
    #[error("TPE n_ei_candidates must be at least 1")]
    NoCandidates,
    /// `prior_weight` is negative, infinite or NaN.
    #[error("TPE prior_weight must be finite and not negative, not {prior_weight}")]
    PriorWeight {
        /// The weight given.
        prior_weight: f64,
    },
}

impl From<TpeError> for PromptError {
    fn from(error: TpeError) -> Self {
        Self::Optimize {
            message: error.to_string(),
        }
    }
}

/// Where [`Tpe::suggest`] gets its randomness: 64 random bits at a time.
///
/// `dspex-prompt` does not depend on `rand` (its few-shot shuffles use
/// SplitMix64 too); any `FnMut() -> u64` is a source, so a `rand` generator
/// plugs in as `tpe.suggest(&history, &mut || rng.next_u64())`.
pub trait RandomSource {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64 + ?Sized> RandomSource for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64: a tiny seeded generator, so that a seed means the same
/// suggestions on every platform and with every version of any dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        Self { state: seed }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The sampler: categorical parameters and a [`TpeConfig`].
#[derive(Clone, Debug)]
pub struct Tpe {
    params: Vec<Param>,
    config: TpeConfig,
}

impl Tpe {
    /// A sampler over `params`. Fails, naming the culprit, when there are no
    /// parameters, a parameter has no choices, `n_ei_candidates` is 0 or
    /// `prior_weight` is negative or not finite.
    pub fn new(params: Vec<Param>, config: TpeConfig) -> Result<Self, TpeError> {
        if params.is_empty() {
            return Err(TpeError::NoParams);
        }
        if let Some(param) = params.iter().find(|param| param.choices == 0) {
            return Err(TpeError::NoChoices {
                name: param.name.clone(),
            });
        }
        if config.n_ei_candidates == 0 {
            return Err(TpeError::NoCandidates);
        }
        if !(config.prior_weight.is_finite() && config.prior_weight >= 0.0) {
            return Err(TpeError::PriorWeight {
                prior_weight: config.prior_weight,
            });
        }
        Ok(Self { params, config })
    }

    /// The parameters, in the order of every [`Observation::values`].
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The configuration.
    pub fn config(&self) -> &TpeConfig {
        &self.config
    }

    /// Whether `observation` counts: one value per parameter, each in range,
    /// and a score that is not NaN. [`Tpe::suggest`] ignores the others.
    pub fn is_usable(&self, observation: &Observation) -> bool {
        observation.values.len() == self.params.len()
            && observation
                .values
                .iter()
                .zip(&self.params)
                .all(|(&value, param)| value < param.choices)
            && !observation.score.is_nan()
    }

    /// The next combination to try, one choice per parameter, given every
    /// finished observation in the order they finished. Deterministic for a
    /// given `rng` state.
    pub fn suggest<R: RandomSource + ?Sized>(
        &self,
        history: &[Observation],
        rng: &mut R,
    ) -> Vec<usize> {
        let usable: Vec<&Observation> = history
            .iter()
            .filter(|observation| self.is_usable(observation))
            .collect();
        if usable.len() < self.config.n_startup_trials {
            return self
                .params
                .iter()
                .map(|param| uniform_index(rng, param.choices))
                .collect();
        }
        let (below, above) = split(&usable);
        let below = Parzen::new(&below, self.config.prior_weight);
        let above = Parzen::new(&above, self.config.prior_weight);
        if self.config.multivariate {
            self.suggest_jointly(&below, &above, rng)
        } else {
            self.suggest_independently(&below, &above, rng)
        }
    }

    /// Multivariate TPE: candidates drawn jointly from `l`, scored jointly.
    fn suggest_jointly<R: RandomSource + ?Sized>(
        &self,
        below: &Parzen<'_>,
        above: &Parzen<'_>,
        rng: &mut R,
    ) -> Vec<usize> {
        let candidates = (0..self.config.n_ei_candidates).map(|_| {
            let candidate = below.sample(&self.params, rng);
            let acquisition =
                below.log_pdf(&self.params, &candidate) - above.log_pdf(&self.params, &candidate);
            (candidate, acquisition)
        });
        first_max(candidates).unwrap_or_default()
    }

    /// Univariate TPE: each parameter drawn and scored on its own marginal.
    fn suggest_independently<R: RandomSource + ?Sized>(
        &self,
        below: &Parzen<'_>,
        above: &Parzen<'_>,
        rng: &mut R,
    ) -> Vec<usize> {
        self.params
            .iter()
            .enumerate()
            .map(|(d, param)| {
                let l = below.marginal(d, param.choices);
                let g = above.marginal(d, param.choices);
                let candidates = (0..self.config.n_ei_candidates).map(|_| {
                    let value = sample_index(rng, &l);
                    let density = |probabilities: &[f64]| {
                        probabilities.get(value).copied().unwrap_or(0.0).ln()
                    };
                    (value, density(&l) - density(&g))
                });
                first_max(candidates).unwrap_or(0)
            })
            .collect()
    }
}

/// The values of the best `gamma(n)` observations and of the rest, each in
/// history order.
fn split<'a>(usable: &[&'a Observation]) -> (Vec<&'a [usize]>, Vec<&'a [usize]>) {
    let mut ranked: Vec<usize> = (0..usable.len()).collect();
    // Stable, so of equal scores the earlier observation ranks first.
    ranked.sort_by(|&a, &b| {
        let score = |i: usize| usable.get(i).map_or(f64::NEG_INFINITY, |o| o.score);
        // Not `total_cmp`: 0.0 and -0.0 are equal scores. NaNs were filtered out.
        score(b)
            .partial_cmp(&score(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let n_below = gamma(usable.len());
    let mut below_indices: Vec<usize> = ranked.iter().copied().take(n_below).collect();
    let mut above_indices: Vec<usize> = ranked.iter().copied().skip(n_below).collect();
    below_indices.sort_unstable();
    above_indices.sort_unstable();
    let values = |indices: Vec<usize>| -> Vec<&'a [usize]> {
        indices
            .into_iter()
            .filter_map(|i| usable.get(i).map(|o| o.values.as_slice()))
            .collect()
    };
    (values(below_indices), values(above_indices))
}

/// Optuna's `default_gamma`: how many of `n` observations are "below".
fn gamma(n: usize) -> usize {
    n.div_ceil(10).min(MAX_BELOW)
}

/// Optuna's `default_weights` for a group of `m` observations, oldest first.
#[allow(clippy::cast_precision_loss)] // counts are far below 2^52
fn default_weights(m: usize) -> Vec<f64> {
    if m < FLAT_WEIGHTS {
        return vec![1.0; m];
    }
    let ramp = m - FLAT_WEIGHTS;
    let start = 1.0 / m as f64;
    // numpy's linspace(start, 1, ramp): one point is `start` alone.
    let step = if ramp > 1 {
        (1.0 - start) / (ramp - 1) as f64
    } else {
        0.0
    };
    (0..ramp)
        .map(|i| start + step * i as f64)
        .chain(std::iter::repeat_n(1.0, FLAT_WEIGHTS))
        .collect()
}

/// The Parzen estimator of one group of observations (see the module doc
/// for the formulas).
#[derive(Debug)]
struct Parzen<'a> {
    /// Each observation's values and its mixture weight `pi_i`.
    components: Vec<(&'a [usize], f64)>,
    /// The mixture weight `pi_0` of the uniform prior component.
    prior: f64,
    /// The kernels' smoothing `s = prior_weight / (m + 1)`.
    smoothing: f64,
}

impl<'a> Parzen<'a> {
    #[allow(clippy::cast_precision_loss)] // counts are far below 2^52
    fn new(group: &[&'a [usize]], prior_weight: f64) -> Self {
        if group.is_empty() {
            return Self {
                components: Vec::new(),
                prior: 1.0,
                smoothing: 0.0,
            };
        }
        let weights = default_weights(group.len());
        // Positive: the weights are, and the prior weight is not negative.
        let total = weights.iter().sum::<f64>() + prior_weight;
        Self {
            components: group
                .iter()
                .zip(&weights)
                .map(|(&values, &weight)| (values, weight / total))
                .collect(),
            prior: prior_weight / total,
            smoothing: prior_weight / (group.len() + 1) as f64,
        }
    }

    /// A kernel's probability at its centre and at each other choice, for a
    /// parameter with `choices` choices: `(s + 1) / (1 + C s)` and
    /// `s / (1 + C s)`.
    #[allow(clippy::cast_precision_loss)] // choice counts are small
    fn kernel_values(&self, choices: usize) -> (f64, f64) {
        let norm = 1.0 + choices as f64 * self.smoothing;
        ((self.smoothing + 1.0) / norm, self.smoothing / norm)
    }

    /// `K(x)` of the kernel centred on `centre`.
    fn kernel(&self, centre: Option<usize>, choices: usize, x: usize) -> f64 {
        let (at_centre, elsewhere) = self.kernel_values(choices);
        if centre == Some(x) {
            at_centre
        } else {
            elsewhere
        }
    }

    /// The 1-D mixture of parameter `d` (the marginal `l_d` or `g_d`), as a
    /// probability per choice.
    #[allow(clippy::cast_precision_loss)] // choice counts are small
    fn marginal(&self, d: usize, choices: usize) -> Vec<f64> {
        (0..choices)
            .map(|x| {
                self.prior / choices as f64
                    + self
                        .components
                        .iter()
                        .map(|(values, weight)| {
                            weight * self.kernel(values.get(d).copied(), choices, x)
                        })
                        .sum::<f64>()
            })
            .collect()
    }

    /// One joint draw: a component by its weight, then each coordinate from
    /// that component's kernel.
    fn sample<R: RandomSource + ?Sized>(&self, params: &[Param], rng: &mut R) -> Vec<usize> {
        let mixture: Vec<f64> = self
            .components
            .iter()
            .map(|&(_, weight)| weight)
            .chain(std::iter::once(self.prior))
            .collect();
        match self.components.get(sample_index(rng, &mixture)) {
            Some(&(values, _)) => params
                .iter()
                .enumerate()
                .map(|(d, param)| {
                    let kernel: Vec<f64> = (0..param.choices)
                        .map(|x| self.kernel(values.get(d).copied(), param.choices, x))
                        .collect();
                    sample_index(rng, &kernel)
                })
                .collect(),
            // The prior component: uniform.
            None => params
                .iter()
                .map(|param| uniform_index(rng, param.choices))
                .collect(),
        }
    }

    /// `ln l(x)` of the joint mixture, by log-sum-exp over its components.
    #[allow(clippy::cast_precision_loss)] // choice counts are small
    fn log_pdf(&self, params: &[Param], x: &[usize]) -> f64 {
        // A kernel takes two values per parameter: at its centre or not.
        let log_kernel: Vec<(f64, f64)> = params
            .iter()
            .map(|param| {
                let (at_centre, elsewhere) = self.kernel_values(param.choices);
                (at_centre.ln(), elsewhere.ln())
            })
            .collect();
        let prior_term = (self.prior > 0.0).then(|| {
            self.prior.ln()
                - params
                    .iter()
                    .map(|param| (param.choices as f64).ln())
                    .sum::<f64>()
        });
        let terms: Vec<f64> = self
            .components
            .iter()
            .map(|&(values, weight)| {
                weight.ln()
                    + values
                        .iter()
                        .zip(x)
                        .zip(&log_kernel)
                        .map(
                            |((centre, value), &(hit, miss))| {
                                if centre == value { hit } else { miss }
                            },
                        )
                        .sum::<f64>()
            })
            .chain(prior_term)
            .collect();
        log_sum_exp(&terms)
    }
}

/// `ln(sum(exp(terms)))` without overflow; `-inf` when every term is.
fn log_sum_exp(terms: &[f64]) -> f64 {
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + terms
        .iter()
        .map(|term| (term - max).exp())
        .sum::<f64>()
        .ln()
}

/// The item with the largest score, the first of equals (numpy's `argmax`);
/// a NaN score loses to any other.
fn first_max<T>(candidates: impl IntoIterator<Item = (T, f64)>) -> Option<T> {
    let mut best: Option<(T, f64)> = None;
    for (item, score) in candidates {
        let better = match &best {
            None => true,
            Some((_, best_score)) => score > *best_score || best_score.is_nan(),
        };
        if better {
            best = Some((item, score));
        }
    }
    best.map(|(item, _)| item)
}

/// A uniform index in `0..n` (0 when `n` is 0). Multiply-shift: the bias is
/// below `n / 2^64`.
fn uniform_index<R: RandomSource + ?Sized>(rng: &mut R, n: usize) -> usize {
    let wide = (u128::from(rng.next_u64()) * n as u128) >> 64;
    usize::try_from(wide).unwrap_or(0)
}

/// A uniform float in `[0, 1)`.
#[allow(clippy::cast_precision_loss)] // 53 bits fit an f64 exactly
fn uniform_unit<R: RandomSource + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An index drawn with probability proportional to `weights` (by the inverse
/// CDF, as Optuna does), never one of weight 0.
fn sample_index<R: RandomSource + ?Sized>(rng: &mut R, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let target = uniform_unit(rng) * total;
    let mut cumulative = 0.0;
    for (index, &weight) in weights.iter().enumerate() {
        cumulative += weight;
        if target < cumulative {
            return index;
        }
    }
    // Rounding left `target` at the very top: the last index that can occur.
    weights
        .iter()
        .rposition(|&weight| weight > 0.0)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn params(choices: &[usize]) -> Vec<Param> {
        choices
            .iter()
            .enumerate()
            .map(|(i, &c)| Param::new(format!("p{i}"), c))
            .collect()
    }

    fn tpe(choices: &[usize], multivariate: bool) -> Tpe {
        let config = TpeConfig {
            multivariate,
            ..TpeConfig::default()
        };
        Tpe::new(params(choices), config).unwrap()
    }

    /// Runs `trials` trials of `objective`, returning the history.
    fn run(
        tpe: &Tpe,
        seed: u64,
        trials: usize,
        objective: impl Fn(&[usize]) -> f64,
    ) -> Vec<Observation> {
        let mut rng = SplitMix64::seed_from_u64(seed);
        let mut history = Vec::new();
        for _ in 0..trials {
            let values = tpe.suggest(&history, &mut rng);
            let score = objective(&values);
            history.push(Observation { values, score });
        }
        history
    }

    #[test]
    fn same_seed_same_suggestions() {
        let tpe = tpe(&[6, 6, 6], true);
        let objective = |v: &[usize]| v.iter().map(|&x| x as f64).sum::<f64>();
        let a = run(&tpe, 7, 40, objective);
        let b = run(&tpe, 7, 40, objective);
        let c = run(&tpe, 8, 40, objective);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn new_rejects_bad_input_naming_the_parameter() {
        assert_eq!(
            Tpe::new(Vec::new(), TpeConfig::default()).unwrap_err(),
            TpeError::NoParams
        );
        let error = Tpe::new(
            vec![
                Param::new("0_predictor_instruction", 3),
                Param::new("0_predictor_demos", 0),
            ],
            TpeConfig::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("`0_predictor_demos`"), "{error}");
        let no_candidates = TpeConfig {
            n_ei_candidates: 0,
            ..TpeConfig::default()
        };
        assert_eq!(
            Tpe::new(params(&[2]), no_candidates).unwrap_err(),
            TpeError::NoCandidates
        );
        for prior_weight in [-1.0, f64::NAN, f64::INFINITY] {
            let config = TpeConfig {
                prior_weight,
                ..TpeConfig::default()
            };
            assert!(matches!(
                Tpe::new(params(&[2]), config),
                Err(TpeError::PriorWeight { .. })
            ));
        }
        let prompt_error = PromptError::from(TpeError::NoParams);
        assert!(matches!(prompt_error, PromptError::Optimize { .. }));
    }

    #[test]
    fn startup_is_uniform_random_whatever_the_history() {
        let tpe = tpe(&[4, 6], true);
        // Nine observations, one short of the startup count: [0, 0] is by far the best.
        let mut history: Vec<Observation> = (1..9)
            .map(|i| Observation {
                values: vec![i % 4, i % 5 + 1],
                score: 0.0,
            })
            .collect();
        history.insert(
            3,
            Observation {
                values: vec![0, 0],
                score: 1.0,
            },
        );
        let mut rng = SplitMix64::seed_from_u64(1);
        let draws = 24_000;
        let mut counts = [vec![0usize; 4], vec![0usize; 6]];
        for _ in 0..draws {
            let values = tpe.suggest(&history, &mut rng);
            counts[0][values[0]] += 1;
            counts[1][values[1]] += 1;
        }
        for count in &counts {
            let expected = draws / count.len();
            for &c in count {
                assert!(c.abs_diff(expected) < expected / 10, "{counts:?}");
            }
        }
        // One more observation and the estimator takes over: [0, 0] dominates.
        history.push(Observation {
            values: vec![3, 5],
            score: 0.0,
        });
        let best = (0..1000)
            .filter(|_| tpe.suggest(&history, &mut rng) == [0, 0])
            .count();
        assert!(best > 900, "{best}");
    }

    #[test]
    fn gamma_and_weights_are_optunas() {
        assert_eq!(
            [0, 1, 10, 11, 30, 250, 251, 1000].map(gamma),
            [0, 1, 1, 2, 3, 25, 25, 25]
        );
        assert_eq!(default_weights(0), Vec::<f64>::new());
        assert_eq!(default_weights(24), vec![1.0; 24]);
        assert_eq!(default_weights(25), vec![1.0; 25]);
        assert_eq!(default_weights(26)[0], 1.0 / 26.0);
        assert_eq!(default_weights(26)[1..], vec![1.0; 25]);
        let w = default_weights(30);
        assert_eq!(w.len(), 30);
        let ramp = [
            1.0 / 30.0,
            0.275,
            0.516_666_666_666_666_7,
            0.758_333_333_333_333_4,
            1.0,
        ];
        for (a, b) in w.iter().zip(ramp) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        assert_eq!(w[5..], vec![1.0; 25]);
    }

    #[test]
    fn ties_go_to_the_earlier_observation_and_groups_keep_history_order() {
        let observations: Vec<Observation> =
            [0.5, 1.0, 1.0, -3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
                .iter()
                .enumerate()
                .map(|(i, &score)| Observation {
                    values: vec![i],
                    score,
                })
                .collect();
        let usable: Vec<&Observation> = observations.iter().collect();
        // 11 observations: gamma = 2, the first two of the three 1.0s.
        let (below, above) = split(&usable);
        assert_eq!(below, [&[1][..], &[2][..]]);
        let above: Vec<usize> = above.iter().map(|v| v[0]).collect();
        assert_eq!(above, [0, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn the_estimators_are_normalised_and_the_marginal_matches_the_joint() {
        let params = params(&[3, 4]);
        let group: Vec<&[usize]> = vec![&[0, 1], &[2, 1], &[0, 3]];
        for prior_weight in [0.0, 1.0, 2.5] {
            let parzen = Parzen::new(&group, prior_weight);
            // The joint summed over b, for each a.
            let marginal: Vec<f64> = (0..3)
                .map(|a| (0..4).map(|b| parzen.log_pdf(&params, &[a, b]).exp()).sum())
                .collect();
            let total: f64 = marginal.iter().sum();
            assert!((total - 1.0).abs() < 1e-12, "{total}");
            for (joint, univariate) in marginal.iter().zip(parzen.marginal(0, 3)) {
                assert!((joint - univariate).abs() < 1e-12);
            }
        }
        // Optuna's numbers for one observation [0] of 3 choices, prior weight 1:
        // kernel (0.5 + [x = 0]) / 2.5, mixed half and half with the uniform prior.
        let parzen = Parzen::new(&[&[0]], 1.0);
        let expected = [
            0.5 * 0.6 + 0.5 / 3.0,
            0.5 * 0.2 + 0.5 / 3.0,
            0.5 * 0.2 + 0.5 / 3.0,
        ];
        for (got, want) in parzen.marginal(0, 3).iter().zip(expected) {
            assert!((got - want).abs() < 1e-12);
        }
        // An empty group is uniform.
        let empty = Parzen::new(&[], 1.0);
        assert!((empty.log_pdf(&params, &[1, 2]).exp() - 1.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn odd_histories_never_break_it() {
        let choices = [3, 1, 5];
        for multivariate in [true, false] {
            for prior_weight in [0.0, 1.0] {
                let config = TpeConfig {
                    multivariate,
                    prior_weight,
                    n_startup_trials: 0,
                    ..TpeConfig::default()
                };
                let tpe = Tpe::new(params(&choices), config).unwrap();
                let mut rng = SplitMix64::seed_from_u64(3);
                let in_range =
                    |v: &[usize]| v.len() == 3 && v.iter().zip(choices).all(|(&x, c)| x < c);
                // No history at all, then equal, negative and infinite scores.
                assert!(in_range(&tpe.suggest(&[], &mut rng)));
                let mut history = Vec::new();
                for score in [0.0, 0.0, -5.0, f64::NEG_INFINITY, f64::INFINITY, -0.0, 0.0] {
                    let values = tpe.suggest(&history, &mut rng);
                    assert!(in_range(&values), "{values:?}");
                    history.push(Observation { values, score });
                }
                // Observations that do not fit are ignored: same suggestion as without them.
                let mut noisy = history.clone();
                noisy.insert(
                    0,
                    Observation {
                        values: vec![0, 0],
                        score: 9.0,
                    },
                );
                noisy.insert(
                    2,
                    Observation {
                        values: vec![0, 1, 0],
                        score: 9.0,
                    },
                );
                noisy.push(Observation {
                    values: vec![0, 0, 0],
                    score: f64::NAN,
                });
                assert!(!tpe.is_usable(&noisy[0]) && !tpe.is_usable(&noisy[2]));
                let clean = tpe.suggest(&history, &mut SplitMix64::seed_from_u64(4));
                let with_noise = tpe.suggest(&noisy, &mut SplitMix64::seed_from_u64(4));
                assert_eq!(clean, with_noise);
            }
        }
    }

    /// Trials until `tpe` first suggests a combination scoring 1.0 (`cap`
    /// when it has not by then).
    fn trials_to_best(
        tpe: &Tpe,
        seed: u64,
        cap: usize,
        objective: impl Fn(&[usize]) -> f64,
    ) -> usize {
        let mut rng = SplitMix64::seed_from_u64(seed);
        let mut history = Vec::new();
        for trial in 1..=cap {
            let values = tpe.suggest(&history, &mut rng);
            let score = objective(&values);
            if score >= 1.0 {
                return trial;
            }
            history.push(Observation { values, score });
        }
        cap
    }

    /// Mean of `trials_to_best` over seeds `0..seeds`, the objective made per seed.
    fn mean_trials_to_best<O: Fn(&[usize]) -> f64>(
        tpe: &Tpe,
        seeds: u64,
        cap: usize,
        objective: impl Fn(u64) -> O,
    ) -> f64 {
        let total: usize = (0..seeds)
            .map(|seed| trials_to_best(tpe, seed, cap, objective(seed)))
            .sum();
        total as f64 / seeds as f64
    }

    /// Uniform random search's exact mean of `min(trials to the best, cap)`
    /// when `good` of `space` combinations are best: sum over k < cap of
    /// (1 - good/space)^k.
    fn random_search_mean(good: usize, space: usize, cap: usize) -> f64 {
        let miss = 1.0 - good as f64 / space as f64;
        (0..cap).map(|k| miss.powi(k as i32)).sum()
    }

    #[test]
    fn finds_the_best_in_clearly_fewer_trials_than_random_search() {
        // 216 combinations, one scores 1.0, the others 0.25 per right coordinate.
        // A different best per seed, so no choice index is favoured.
        let objective = |seed: u64| {
            let seed = seed as usize;
            let best = [seed % 6, (seed / 6) % 6, (seed * 5 + 1) % 6];
            move |values: &[usize]| {
                let right = values.iter().zip(best).filter(|&(&v, b)| v == b).count();
                if right == 3 { 1.0 } else { 0.25 * right as f64 }
            }
        };
        let cap = 200;
        let random = random_search_mean(1, 216, cap);
        let multivariate = mean_trials_to_best(&tpe(&[6, 6, 6], true), 20, cap, objective);
        let univariate = mean_trials_to_best(&tpe(&[6, 6, 6], false), 20, cap, objective);
        eprintln!(
            "mean trials to the best: random search {random:.1}, multivariate {multivariate:.1}, univariate {univariate:.1}"
        );
        assert!(multivariate * 3.0 < random, "{multivariate} vs {random}");
        assert!(univariate * 2.0 < random, "{univariate} vs {random}");
    }

    #[test]
    fn multivariate_beats_univariate_when_parameters_interact() {
        // Half a point for a == b, half for b == c: every choice of every parameter is
        // as good as any other on its own, so only a joint model sees where the best are.
        let objective = |_seed: u64| {
            |values: &[usize]| {
                0.5 * f64::from(u8::from(values[0] == values[1]))
                    + 0.5 * f64::from(u8::from(values[1] == values[2]))
            }
        };
        let cap = 150;
        let random = random_search_mean(6, 216, cap);
        let multivariate = mean_trials_to_best(&tpe(&[6, 6, 6], true), 40, cap, objective);
        let univariate = mean_trials_to_best(&tpe(&[6, 6, 6], false), 40, cap, objective);
        eprintln!(
            "mean trials to a best: random search {random:.1}, multivariate {multivariate:.1}, univariate {univariate:.1}"
        );
        assert!(
            multivariate * 1.3 < univariate,
            "{multivariate} vs {univariate}"
        );
    }
}
