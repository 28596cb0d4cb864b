//! GEPA: reflective prompt evolution (Agrawal et al., 2025), as DSPy's
//! `dspy.GEPA` runs it.
//!
//! A pool of candidates starts with the program as given, scored on every
//! valset example. Each iteration:
//!
//! 1. picks a parent from the per-example Pareto front (programs best on
//!    some example, dominated ones removed, sampled by how many examples
//!    they are best on);
//! 2. runs it on a minibatch of the trainset (epoch-shuffled batches of
//!    `reflection_minibatch_size`), keeping every predictor's inputs and
//!    outputs; a minibatch it already aces is skipped;
//! 3. chooses one predictor (round robin per candidate) and gives a
//!    reflection model its instructions with the minibatch's inputs,
//!    outputs and the metric's feedback (a [`Metric::judge`] gives it in
//!    words; built-in metrics name the expected value), asking for new
//!    instructions;
//! 4. accepts the child only if it scores more than its parent on the same
//!    minibatch, then scores it on the valset and adds it to the pool;
//! 5. after an accepted child, tries a merge: two Pareto programs with a
//!    common ancestor combine, predictor by predictor, the versions each
//!    changed from it; the merge joins the pool if it scores at least as
//!    well as both on the valset (at most `max_merge_invocations` times).
//!
//! The budget is in metric calls (rollouts scored, cached or not), as in
//! DSPy: `auto` (`light`, `medium`, `heavy`, DSPy's formula), or
//! `max_metric_calls`, or `max_full_evals` (that many valset passes); the
//! engine's own budgets stop it too. The result is the pool's best
//! program on the valset.
//!
//! Departures from DSPy and the `gepa` package: the reflection call goes
//! through DSPex's adapter (a signature whose instructions are GEPA's
//! template) rather than a raw prompt, and a fenced block in the answer is
//! unwrapped as GEPA does; a merge is scored on the whole valset rather
//! than a subsample where the parents differ (simpler, and never worse at
//! telling a good merge from a bad one, at more rollouts).
//!
//! [`Metric::judge`]: crate::evaluate::Metric::judge

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::engine::{Engine, Purpose, Rollout, Split};
use super::propose::{Proposer, effective_instructions, inputs, with_instructions};
use super::report::{OptimizeReport, Trial, ValScore, trial, val_score};
use crate::error::{PromptError, Result};
use crate::module::{Lm, Module, ProgramState};

/// GEPA's reflection prompt (the `gepa` package's default template).
const REFLECT: &str = "I provided an assistant with the instructions in `current_instruction` to perform a task for me.\n\nThe following are examples of different task inputs provided to the assistant along with the assistant's response for each of them, and some feedback on how the assistant's response could be better: see `examples_with_feedback`.\n\nYour task is to write a new instruction for the assistant.\n\nRead the inputs carefully and identify the input format and infer detailed task description about the task I wish to solve with the assistant.\n\nRead all the assistant responses and the corresponding feedback. Identify all niche and domain specific factual information about the task and include it in the instruction, as a lot of it may not be available to the assistant in the future. The assistant may have utilized a generalizable strategy to solve the task, if so, include that in the instruction as well.";

/// How much GEPA may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GepaBudget {
    /// DSPy's presets.
    Auto(AutoLevel),
    /// Rollouts scored, in all.
    MaxMetricCalls(u64),
    /// That many passes over the valset's size.
    MaxFullEvals(u64),
}

/// `auto` presets, as in DSPy (for GEPA and MIPROv2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoLevel {
    /// 6 candidates' worth.
    Light,
    /// 12 candidates' worth.
    Medium,
    /// 18 candidates' worth.
    Heavy,
}

impl AutoLevel {
    /// Parses `light`, `medium` or `heavy`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "light" => Some(Self::Light),
            "medium" => Some(Self::Medium),
            "heavy" => Some(Self::Heavy),
            _ => None,
        }
    }

    /// DSPy's `n` for the preset.
    pub fn candidates(self) -> u64 {
        match self {
            Self::Light => 6,
            Self::Medium => 12,
            Self::Heavy => 18,
        }
    }
}

/// DSPy's `GEPA.auto_budget`: the metric calls a MIPROv2-sized search would
/// make (an initial valset pass, 5 bootstrap tries per candidate, N
/// minibatches of 35, and the periodic full evaluations).
pub fn auto_budget(num_predictors: usize, num_candidates: u64, valset_size: usize) -> u64 {
    let n = num_candidates as f64;
    let trials = (2.0 * (num_predictors as f64 * 2.0) * n.log2()).max(1.5 * n) as u64;
    let (v, m, steps) = (valset_size as u64, 35u64, 5u64);
    let mut total = v + num_candidates * 5 + trials * m;
    if trials == 0 {
        return total;
    }
    let periodic = (trials + 1) / steps + 1;
    let extra = u64::from(trials < steps);
    total += (periodic + extra) * v;
    total
}

/// Which parent an iteration improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// From the per-example Pareto front (DSPy's default).
    Pareto,
    /// The best on the valset so far.
    CurrentBest,
}

/// The optimiser's settings (DSPy's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gepa {
    /// How much it may do.
    pub budget: GepaBudget,
    /// Trainset examples per reflection (default 3).
    pub reflection_minibatch_size: usize,
    /// How a parent is picked.
    pub selection: Selection,
    /// Skip a minibatch the parent already scores perfectly on (default on).
    pub skip_perfect_score: bool,
    /// The metric's best score (default 1.0).
    pub perfect_score: f64,
    /// Try merges after accepted children (default on).
    pub use_merge: bool,
    /// Most merge attempts (default 5).
    pub max_merge_invocations: usize,
}

impl Default for Gepa {
    fn default() -> Self {
        Self {
            budget: GepaBudget::Auto(AutoLevel::Light),
            reflection_minibatch_size: 3,
            selection: Selection::Pareto,
            skip_perfect_score: true,
            perfect_score: 1.0,
            use_merge: true,
            max_merge_invocations: 5,
        }
    }
}

const NAME: &str = "gepa";

/// A candidate in the pool.
#[derive(Clone, Debug)]
struct Candidate {
    state: ProgramState,
    /// Its parents (one for a reflection child, two for a merge).
    parents: Vec<usize>,
    /// Its score on every valset example.
    scores: Vec<f64>,
    /// The next predictor to reflect on (round robin).
    next_predictor: usize,
}

impl Candidate {
    fn aggregate(&self) -> f64 {
        if self.scores.is_empty() {
            return 0.0;
        }
        self.scores.iter().sum::<f64>() / self.scores.len() as f64
    }
}

/// The programs best on some valset example, dominated ones removed
/// (GEPA's `remove_dominated_programs`), each with how many examples it is
/// best on.
fn pareto_front(pool: &[Candidate]) -> Vec<(usize, usize)> {
    let examples = pool.first().map_or(0, |c| c.scores.len());
    let mut fronts: Vec<BTreeSet<usize>> = Vec::with_capacity(examples);
    for j in 0..examples {
        let best = pool
            .iter()
            .filter_map(|c| c.scores.get(j).copied())
            .fold(f64::NEG_INFINITY, f64::max);
        fronts.push(
            pool.iter()
                .enumerate()
                .filter(|(_, c)| c.scores.get(j).copied() == Some(best))
                .map(|(i, _)| i)
                .collect(),
        );
    }
    let mut programs: Vec<usize> = fronts
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Weakest first, as GEPA tries to remove them.
    programs.sort_by(|&a, &b| {
        let (x, y) = (
            pool.get(a).map_or(0.0, Candidate::aggregate),
            pool.get(b).map_or(0.0, Candidate::aggregate),
        );
        x.total_cmp(&y).then(a.cmp(&b))
    });
    let mut dominated: BTreeSet<usize> = BTreeSet::new();
    loop {
        let removable = programs.iter().copied().find(|&y| {
            !dominated.contains(&y)
                && fronts.iter().filter(|f| f.contains(&y)).all(|front| {
                    front
                        .iter()
                        .any(|&other| other != y && !dominated.contains(&other))
                })
        });
        match removable {
            Some(y) => {
                dominated.insert(y);
            }
            None => break,
        }
    }
    programs
        .into_iter()
        .filter(|p| !dominated.contains(p))
        .map(|p| (p, fronts.iter().filter(|f| f.contains(&p)).count()))
        .collect()
}

/// Ancestors of `candidate`, itself included.
fn ancestors(pool: &[Candidate], candidate: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![candidate];
    while let Some(next) = stack.pop() {
        if seen.insert(next)
            && let Some(c) = pool.get(next)
        {
            stack.extend(c.parents.iter().copied());
        }
    }
    seen
}

impl Gepa {
    fn metric_budget(&self, predictors: usize, valset: usize) -> u64 {
        match self.budget {
            GepaBudget::Auto(level) => auto_budget(predictors, level.candidates(), valset),
            GepaBudget::MaxMetricCalls(calls) => calls,
            GepaBudget::MaxFullEvals(evals) => evals.saturating_mul(valset as u64),
        }
    }

    /// Runs GEPA, reflecting with `reflection_lm`; returns the best program
    /// and the report.
    pub async fn compile<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        reflection_lm: &Lm,
    ) -> Result<(M, OptimizeReport)> {
        if self.reflection_minibatch_size == 0 {
            return Err(PromptError::Optimize {
                message: "GEPA's reflection_minibatch_size must be at least 1".into(),
            });
        }
        let started = std::time::Instant::now();
        let inputs_fp = engine.inputs_fingerprint(self);
        let resumed = engine.resume(NAME, &inputs_fp)?;
        let reflect = Proposer::new(
            "current_instruction, examples_with_feedback -> new_instruction",
            REFLECT,
            reflection_lm,
            None,
        )?;
        let names: Vec<String> = engine
            .student()
            .predictors()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let all_val: Vec<usize> = (0..engine.valset().len()).collect();
        let budget = self.metric_budget(names.len(), all_val.len());
        let mut metric_calls: u64 = 0;

        // The seed candidate on the whole valset.
        let seed_state = engine.initial_state();
        let before = engine.spend();
        let scored = engine.evaluate(&seed_state, Split::Val, &all_val).await;
        metric_calls += scored.rollouts.len() as u64;
        engine.log_trial(Trial {
            note: Some("the program as given".into()),
            ..trial(
                engine,
                engine.next_trial(),
                "full",
                &seed_state,
                Some(&scored),
                &before,
            )
        });
        engine.checkpoint(NAME, &inputs_fp)?;
        let baseline = scored
            .complete
            .then(|| val_score(&seed_state, &scored, engine.config().seed));
        let mut pool = vec![Candidate {
            state: seed_state,
            parents: Vec::new(),
            scores: scored.scores(),
            next_predictor: 0,
        }];
        if !scored.complete {
            return self.finish(engine, &pool, baseline, resumed, started);
        }

        let train = engine.trainset().len();
        let mut batches: Vec<usize> = Vec::new();
        let mut epoch = 0u64;
        let mut merges_due = 0usize;
        let mut merges_done = 0usize;
        let mut iteration = 0u64;
        while metric_calls < budget && engine.has_budget() {
            iteration += 1;
            if self.use_merge && merges_due > 0 && merges_done < self.max_merge_invocations {
                merges_due -= 1;
                merges_done += 1;
                if let Some(merged) = self
                    .merge(engine, &mut pool, iteration, &all_val, &mut metric_calls)
                    .await
                {
                    pool.push(merged);
                }
                engine.checkpoint(NAME, &inputs_fp)?;
                continue;
            }
            // The next minibatch: epoch-shuffled, consecutive.
            let size = self.reflection_minibatch_size.min(train);
            if batches.len() < size {
                epoch += 1;
                let mut order: Vec<usize> = (0..train).collect();
                order.shuffle(&mut engine.rng("gepa-epoch", epoch));
                batches.extend(order);
            }
            let minibatch: Vec<usize> = batches.drain(..size).collect();
            let parent = self.select(engine, &pool, iteration);
            let Some(parent_state) = pool.get(parent).map(|c| c.state.clone()) else {
                break;
            };
            let before = engine.spend();
            let parent_run = engine
                .evaluate(&parent_state, Split::Train, &minibatch)
                .await;
            metric_calls += parent_run.rollouts.len() as u64;
            if !parent_run.complete {
                break;
            }
            if self.skip_perfect_score
                && parent_run
                    .rollouts
                    .iter()
                    .all(|r| r.score >= self.perfect_score)
            {
                engine.log_trial(Trial {
                    note: Some(format!(
                        "parent {parent} already perfect on this minibatch: skipped"
                    )),
                    ..trial(
                        engine,
                        engine.next_trial(),
                        "minibatch",
                        &parent_state,
                        Some(&parent_run),
                        &before,
                    )
                });
                engine.checkpoint(NAME, &inputs_fp)?;
                continue;
            }
            let Some(candidate) = pool.get_mut(parent) else {
                break;
            };
            let predictor_index = candidate.next_predictor % names.len().max(1);
            candidate.next_predictor += 1;
            let Some(predictor) = names.get(predictor_index) else {
                break;
            };
            let dataset =
                self.reflective_dataset(engine, &parent_state, predictor, &parent_run.rollouts)?;
            let current = effective_instructions(engine.student(), &parent_state, predictor);
            let proposal = reflect
                .ask(
                    engine,
                    Purpose::Reflection,
                    &inputs(&[
                        ("current_instruction", current.clone()),
                        ("examples_with_feedback", dataset),
                    ]),
                    &format!("gepa-reflect-{iteration}"),
                )
                .await;
            let Some(new_instruction) = proposal.map(|text| unfence(&text)) else {
                engine.log_trial(Trial {
                    note: Some("the reflection gave no instruction".into()),
                    ..trial(
                        engine,
                        engine.next_trial(),
                        "reflection",
                        &parent_state,
                        Some(&parent_run),
                        &before,
                    )
                });
                engine.checkpoint(NAME, &inputs_fp)?;
                continue;
            };
            let child = with_instructions(&parent_state, predictor, &new_instruction);
            let child_run = engine.evaluate(&child, Split::Train, &minibatch).await;
            metric_calls += child_run.rollouts.len() as u64;
            let (old, new) = (
                parent_run.rollouts.iter().map(|r| r.score).sum::<f64>(),
                child_run.rollouts.iter().map(|r| r.score).sum::<f64>(),
            );
            let accepted = child_run.complete && new > old;
            engine.log_trial(Trial {
                note: Some(format!(
                    "reflected on `{predictor}` of candidate {parent}: minibatch {new:.2} against {old:.2}, {}",
                    if accepted { "accepted" } else { "rejected" }
                )),
                ..trial(engine, engine.next_trial(), "reflection", &child, Some(&child_run), &before)
            });
            if accepted {
                let before = engine.spend();
                let full = engine.evaluate(&child, Split::Val, &all_val).await;
                metric_calls += full.rollouts.len() as u64;
                engine.log_trial(Trial {
                    note: Some(format!("candidate {} joins the pool", pool.len())),
                    ..trial(
                        engine,
                        engine.next_trial(),
                        "full",
                        &child,
                        Some(&full),
                        &before,
                    )
                });
                if full.complete {
                    pool.push(Candidate {
                        state: child,
                        parents: vec![parent],
                        scores: full.scores(),
                        next_predictor: predictor_index + 1,
                    });
                    merges_due += 1;
                    let best = pool.iter().map(Candidate::aggregate).fold(0.0, f64::max);
                    engine.progress(&format!(
                        "GEPA: {} candidates, best {best:.3}, {metric_calls}/{budget} metric calls",
                        pool.len()
                    ));
                }
            }
            engine.checkpoint(NAME, &inputs_fp)?;
        }
        self.finish(engine, &pool, baseline, resumed, started)
    }

    fn finish<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        pool: &[Candidate],
        baseline: Option<ValScore>,
        resumed: Option<usize>,
        started: std::time::Instant,
    ) -> Result<(M, OptimizeReport)> {
        engine.finish();
        let mut best: Option<&Candidate> = None;
        for candidate in pool {
            if best.is_none_or(|b| candidate.aggregate() > b.aggregate()) {
                best = Some(candidate);
            }
        }
        let best_state = best.map_or_else(|| engine.initial_state(), |c| c.state.clone());
        let best_score = best.map(|c| ValScore {
            candidate: super::report::short_id(&c.state),
            score: c.aggregate(),
            ci95: super::engine::confidence_interval(&c.scores, engine.config().seed),
            examples: c.scores.len(),
        });
        let program = (*engine.program(&best_state)?).clone();
        Ok((
            program,
            OptimizeReport::new(
                NAME,
                engine,
                baseline,
                best_score,
                resumed,
                started.elapsed(),
            ),
        ))
    }

    /// The parent of an iteration.
    fn select<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        pool: &[Candidate],
        iteration: u64,
    ) -> usize {
        if self.selection == Selection::CurrentBest {
            return pool
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bs), (i, c)| {
                    if c.aggregate() > bs {
                        (i, c.aggregate())
                    } else {
                        (bi, bs)
                    }
                })
                .0;
        }
        let front = pareto_front(pool);
        let total: usize = front.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return 0;
        }
        let mut pick = engine.rng("gepa-select", iteration).random_range(0..total);
        for (program, count) in front {
            if pick < count {
                return program;
            }
            pick -= count;
        }
        0
    }

    /// The minibatch's inputs, outputs and feedback for one predictor, as
    /// the text the reflection model reads.
    fn reflective_dataset<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        state: &ProgramState,
        predictor: &str,
        rollouts: &[Rollout],
    ) -> Result<String> {
        // Rollout traces name predictors by position in `predictors()`.
        let program = engine.program(state)?;
        let ids: BTreeMap<u64, String> = program
            .predictors()
            .into_iter()
            .enumerate()
            .map(|(position, (name, _))| (position as u64, name))
            .collect();
        let mut records = Vec::new();
        for (n, rollout) in rollouts.iter().enumerate() {
            let example = engine.trainset().get(rollout.example);
            let step = rollout.prediction.as_ref().and_then(|prediction| {
                prediction
                    .traces
                    .iter()
                    .rev()
                    .find(|t| ids.get(&t.predictor).is_some_and(|name| name == predictor))
            });
            let (inputs, outputs) = match (step, example) {
                (Some(step), _) => (
                    serde_json::Value::Object(step.example.inputs.clone()).to_string(),
                    serde_json::Value::Object(step.example.outputs.clone()).to_string(),
                ),
                (None, Some(example)) => (
                    serde_json::Value::Object(example.inputs.clone()).to_string(),
                    rollout
                        .error
                        .clone()
                        .unwrap_or_else(|| "(the predictor did not run)".into()),
                ),
                (None, None) => continue,
            };
            let feedback = rollout
                .feedback
                .clone()
                .unwrap_or_else(|| match &rollout.error {
                    Some(error) => format!("The run failed: {error}"),
                    None => format!("Scored {:.2}.", rollout.score),
                });
            records.push(format!(
                "# Example {}\n## Inputs\n{inputs}\n## Generated Outputs\n{outputs}\n## Feedback\n{feedback}",
                n + 1
            ));
        }
        Ok(records.join("\n\n"))
    }

    /// A merge of two Pareto programs with a common ancestor, when one
    /// differs from both and scores at least as well as both on the valset.
    async fn merge<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        pool: &mut [Candidate],
        iteration: u64,
        all_val: &[usize],
        metric_calls: &mut u64,
    ) -> Option<Candidate> {
        let front: Vec<usize> = pareto_front(pool).into_iter().map(|(p, _)| p).collect();
        let mut pairs = Vec::new();
        for (x, &i) in front.iter().enumerate() {
            for &j in front.iter().skip(x + 1) {
                let (ai, aj) = (ancestors(pool, i), ancestors(pool, j));
                if ai.contains(&j) || aj.contains(&i) {
                    continue;
                }
                if let Some(&common) = ai.intersection(&aj).max() {
                    pairs.push((i, j, common));
                }
            }
        }
        if pairs.is_empty() {
            return None;
        }
        let (i, j, ancestor) = *pairs.get(
            engine
                .rng("gepa-merge", iteration)
                .random_range(0..pairs.len()),
        )?;
        let (ci, cj, ca) = (pool.get(i)?, pool.get(j)?, pool.get(ancestor)?);
        let mut merged = ca.state.clone();
        for (name, base) in &ca.state.predictors {
            let (vi, vj) = (
                ci.state.predictors.get(name)?,
                cj.state.predictors.get(name)?,
            );
            let pick = match (vi == base, vj == base) {
                (true, _) => vj,
                (_, true) => vi,
                _ if ci.aggregate() >= cj.aggregate() => vi,
                _ => vj,
            };
            merged.predictors.insert(name.clone(), pick.clone());
        }
        if merged == ci.state || merged == cj.state {
            return None;
        }
        let bar = ci.aggregate().max(cj.aggregate());
        let before = engine.spend();
        let scored = engine.evaluate(&merged, Split::Val, all_val).await;
        *metric_calls += scored.rollouts.len() as u64;
        let accepted = scored.complete && scored.mean() >= bar;
        engine.log_trial(Trial {
            note: Some(format!(
                "merge of candidates {i} and {j} (common ancestor {ancestor}): {:.3} against {bar:.3}, {}",
                scored.mean(),
                if accepted { "joins the pool" } else { "rejected" }
            )),
            ..trial(engine, engine.next_trial(), "merge", &merged, Some(&scored), &before)
        });
        accepted.then(|| Candidate {
            state: merged,
            parents: vec![i, j],
            scores: scored.scores(),
            next_predictor: 0,
        })
    }
}

/// The text inside the first fenced block, if the answer has one (GEPA asks
/// for the instruction "within ``` blocks").
fn unfence(text: &str) -> String {
    let Some(start) = text.find("```") else {
        return text.trim().to_owned();
    };
    let rest = text.get(start + 3..).unwrap_or_default();
    // Skip a language tag on the opening line.
    let body = rest.split_once('\n').map_or(rest, |(first, after)| {
        if first.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
            after
        } else {
            rest
        }
    });
    let inner = body.split("```").next().unwrap_or(body).trim();
    if inner.is_empty() {
        text.trim().to_owned()
    } else {
        inner.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn candidate(scores: &[f64], parents: &[usize]) -> Candidate {
        Candidate {
            state: ProgramState::default(),
            parents: parents.to_vec(),
            scores: scores.to_vec(),
            next_predictor: 0,
        }
    }

    #[test]
    fn the_front_keeps_programs_best_somewhere_and_drops_dominated_ones() {
        let pool = vec![
            candidate(&[0.0, 0.0, 1.0], &[]),
            candidate(&[1.0, 0.0, 1.0], &[0]),
            candidate(&[0.0, 1.0, 0.0], &[0]),
        ];
        // Program 0 is best only where 1 is too: dominated.
        assert_eq!(pareto_front(&pool), vec![(2, 1), (1, 2)]);
        assert_eq!(ancestors(&pool, 2), BTreeSet::from([0, 2]));
    }

    #[test]
    fn fences_are_unwrapped() {
        assert_eq!(unfence("Here:\n```\nDo X.\n```"), "Do X.");
        assert_eq!(unfence("```text\nDo Y.\n```"), "Do Y.");
        assert_eq!(unfence("Do Z."), "Do Z.");
    }

    #[test]
    fn auto_budgets_follow_dspy() {
        // DSPy's formula for one predictor, light (n = 6), 100 examples:
        // trials = max(2*2*log2(6), 9) = 10; 100 + 30 + 350 + (11//5+1)*100.
        assert_eq!(auto_budget(1, 6, 100), 100 + 30 + 350 + 300);
    }
}
