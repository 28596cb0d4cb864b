//! DSPy's `BootstrapFewShotWithRandomSearch`: several few-shot programs,
//! each scored on the valset; the best one wins.
//!
//! The candidates, as in DSPy, by candidate seed: `-3` the student with no
//! demos (zero-shot), `-2` labelled demos only ([`LabeledFewShot`], drawn by
//! a seeded sample), `-1` [`BootstrapFewShot`] over the trainset in order,
//! and `0..num_candidate_programs` bootstraps over a seeded shuffle of the
//! trainset with a seeded number of bootstrapped demos between 1 and
//! `max_bootstrapped_demos`. Ties keep the earlier candidate.
//!
//! Departure from DSPy: Python's `random.Random(seed)` is not reproduced;
//! shuffles and sizes come from the engine's seeded generators, so the same
//! seed gives the same candidates here, not DSPy's.

use serde::{Deserialize, Serialize};

use super::engine::{Engine, Split};
use super::report::{OptimizeReport, Trial, ValScore, trial, val_score};
use super::{BootstrapFewShot, LabeledFewShot};
use crate::error::Result;
use crate::module::{Module, ProgramState, program_state};

/// The optimiser's settings (DSPy's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomSearch {
    /// Most bootstrapped demos per predictor (default 4).
    pub max_bootstrapped_demos: usize,
    /// Most demos per predictor in all (default 16).
    pub max_labeled_demos: usize,
    /// Tries per trainset example when bootstrapping (default 1).
    pub max_rounds: usize,
    /// Shuffled bootstrap candidates, beyond the three fixed ones (default 16).
    pub num_candidate_programs: usize,
    /// Stop as soon as a candidate scores at least this on the valset.
    pub stop_at_score: Option<f64>,
}

impl Default for RandomSearch {
    fn default() -> Self {
        Self {
            max_bootstrapped_demos: 4,
            max_labeled_demos: 16,
            max_rounds: 1,
            num_candidate_programs: 16,
            stop_at_score: None,
        }
    }
}

const NAME: &str = "random-search";

impl RandomSearch {
    /// Runs the search; returns the best program and the report.
    pub async fn compile<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
    ) -> Result<(M, OptimizeReport)> {
        let started = std::time::Instant::now();
        let inputs = engine.inputs_fingerprint(self);
        let resumed = engine.resume(NAME, &inputs)?;
        let all_val: Vec<usize> = (0..engine.valset().len()).collect();
        let mut baseline: Option<ValScore> = None;
        let mut best: Option<(ProgramState, ValScore)> = None;
        // Step 0 scores the student as given; steps 1.. are candidate seeds
        // -3, -2, -1, 0, 1, ...
        let last = 3 + self.num_candidate_programs as u64;
        for step in 0..=last {
            if !engine.has_budget() {
                break;
            }
            if let (Some(target), Some((_, best))) = (self.stop_at_score, &best)
                && best.score >= target
            {
                break;
            }
            let before = engine.spend();
            let (candidate, note) = if step == 0 {
                (engine.initial_state(), "the program as given".to_owned())
            } else {
                self.candidate(engine, step as i64 - 4).await?
            };
            let scored = engine.evaluate(&candidate, Split::Val, &all_val).await;
            let index = engine.next_trial();
            if !scored.complete {
                // The budget ran out mid-evaluation: a partial score cannot
                // be compared with full ones.
                engine.log_trial(Trial {
                    note: Some(format!(
                        "{note}; stopped by the budget before the valset was scored"
                    )),
                    ..trial(
                        engine,
                        index,
                        "candidate",
                        &candidate,
                        Some(&scored),
                        &before,
                    )
                });
                break;
            }
            let score = val_score(&candidate, &scored, engine.config().seed);
            if step == 0 {
                baseline = Some(score.clone());
            }
            if best.as_ref().is_none_or(|(_, b)| score.score > b.score) {
                best = Some((candidate.clone(), score));
            }
            engine.log_trial(Trial {
                note: Some(note),
                ..trial(
                    engine,
                    index,
                    "candidate",
                    &candidate,
                    Some(&scored),
                    &before,
                )
            });
            if let Some((_, best)) = &best {
                engine.progress(&format!(
                    "random search: candidate {}/{}  best {:.3}",
                    step + 1,
                    last + 1,
                    best.score
                ));
            }
            engine.checkpoint(NAME, &inputs)?;
        }
        engine.finish();
        let (best_state, best) = match best {
            Some((candidate, score)) => (candidate, Some(score)),
            None => (engine.initial_state(), None),
        };
        let program = (*engine.program(&best_state)?).clone();
        let report = OptimizeReport::new(NAME, engine, baseline, best, resumed, started.elapsed());
        Ok((program, report))
    }

    /// The candidate of one seed, and a note saying what it is.
    async fn candidate<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        seed: i64,
    ) -> Result<(ProgramState, String)> {
        let student = engine.student();
        let trainset = engine.trainset();
        let bootstrap = |max_bootstrapped: usize| {
            let mut optimizer = BootstrapFewShot::new(engine.metric().clone())
                .max_bootstrapped_demos(max_bootstrapped)
                .max_labeled_demos(self.max_labeled_demos)
                .max_rounds(self.max_rounds)
                .with_concurrency(engine.config().concurrency)
                .with_gate(engine.gate());
            optimizer.max_errors = None;
            optimizer.context = engine.config().context.clone();
            optimizer
        };
        Ok(match seed {
            -3 => {
                let mut zero_shot = student.clone();
                for (_, predict) in zero_shot.predictors_mut() {
                    predict.set_demos(Vec::new());
                }
                (program_state(&zero_shot), "zero-shot".to_owned())
            }
            -2 => {
                let draw = rand::Rng::random::<u64>(&mut engine.rng("labeled", 0));
                let labeled = LabeledFewShot::new(self.max_labeled_demos)
                    .with_seed(draw)
                    .compile(student, trainset);
                (program_state(&labeled), "labelled demos only".to_owned())
            }
            -1 => {
                let (compiled, report) = bootstrap(self.max_bootstrapped_demos)
                    .compile(student, None, trainset)
                    .await?;
                (
                    program_state(&compiled),
                    format!(
                        "bootstrapped in trainset order ({} of {} runs passed)",
                        report.passed, report.tried
                    ),
                )
            }
            seed => {
                let step = u64::try_from(seed).unwrap_or_default();
                let mut rng = engine.rng("shuffle", step);
                let mut order: Vec<usize> = (0..trainset.len()).collect();
                rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
                let shuffled: Vec<_> = order
                    .iter()
                    .filter_map(|&i| trainset.get(i).cloned())
                    .collect();
                let size =
                    rand::Rng::random_range(&mut rng, 1..=self.max_bootstrapped_demos.max(1));
                let (compiled, report) = bootstrap(size).compile(student, None, &shuffled).await?;
                (
                    program_state(&compiled),
                    format!(
                        "bootstrapped over shuffle {step}, up to {size} demos ({} of {} runs passed)",
                        report.passed, report.tried
                    ),
                )
            }
        })
    }
}
