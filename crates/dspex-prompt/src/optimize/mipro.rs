//! MIPROv2 (Opsahl-Ong et al., 2024), as DSPy's `MIPROv2` runs it.
//!
//! 1. **Demo sets.** `num_candidates` few-shot demo sets per predictor,
//!    made as [`RandomSearch`](super::RandomSearch)'s candidates are: no
//!    demos, labelled demos only, a bootstrap in trainset order, then
//!    bootstraps over seeded shuffles (`max_bootstrapped_demos` 4 and
//!    `max_labeled_demos` 4 by default, as in DSPy).
//! 2. **Instructions.** `num_candidates` instructions per predictor: the
//!    current one and proposals from the prompt model, grounded in a
//!    summary of the dataset (the prompt model writes observations on
//!    sample examples, then a short summary), a description of the
//!    program (each predictor's signature and instructions), example
//!    traces (a bootstrapped demo set's demos) and a random tip from DSPy's
//!    list ("Keep the instruction clear and concise.", a persona, a high
//!    stakes scenario...).
//! 3. **Search.** A Tree-structured Parzen Estimator ([`super::tpe`],
//!    multivariate, as DSPy's `TPESampler(multivariate=True)`) over each
//!    predictor's (instruction, demo set) chooses the combination of each
//!    trial. Trials are scored on minibatches of `minibatch_size` valset
//!    examples when the valset holds more than 50 (a full pass otherwise);
//!    every `minibatch_full_eval_steps` trials, and at the end, the
//!    combination with the best mean minibatch score not yet scored on the
//!    whole valset is, and the full score joins the search's history. The
//!    program as given is scored on the valset first and seeds the history.
//!    The best full score wins.
//!
//! `auto` (`light`, `medium`, `heavy`) sets `num_candidates` to 6, 12 or
//! 18, the valset to at most 100, 300 or 1,000 examples (a seeded sample),
//! and the number of trials by DSPy's formula,
//! `max(2 · 2·predictors · log2(n), 1.5 · n)`.
//!
//! Departures from DSPy: the program description is written from the
//! program's structure (signatures and instructions) rather than by asking
//! the prompt model to describe its Python source; the dataset summary is
//! one round of observations over up to 10 sampled examples rather than
//! several batches; the TPE is DSPex's own (same formulas, another random
//! generator: a seed does not reproduce Optuna's choices).

use std::collections::{BTreeMap, HashMap};

use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::engine::{Engine, Purpose, Split};
use super::gepa::AutoLevel;
use super::propose::{Proposer, effective_instructions, inputs, with_instructions};
use super::report::{OptimizeReport, Trial, ValScore, trial, val_score};
use super::tpe::{Observation, Param, Tpe, TpeConfig};
use super::{BootstrapFewShot, LabeledFewShot};
use crate::adapter::Example;
use crate::error::{PromptError, Result};
use crate::module::{Lm, Module, ProgramState};

/// DSPy's tips, one drawn per proposal.
const TIPS: &[(&str, &str)] = &[
    ("none", ""),
    (
        "creative",
        "Don't be afraid to be creative when creating the new instruction!",
    ),
    ("simple", "Keep the instruction clear and concise."),
    (
        "description",
        "Make sure your instruction is very informative and descriptive.",
    ),
    (
        "high_stakes",
        "The instruction should include a high stakes scenario in which the LM must solve the task!",
    ),
    (
        "persona",
        "Include a persona that is relevant to the task in the instruction (ie. \"You are a ...\")",
    ),
];

const PROPOSE: &str = "Use the information below to learn about a task that we are trying to solve using calls to an LM, then generate a new instruction that will be used to prompt a Language Model to better solve the task.";

const OBSERVE: &str = "Given several examples from a dataset please write observations about trends that hold for most or all of the samples. Some areas you may consider in your observations: topics, content, syntax, conciseness, etc. It will be useful to make an educated guess as to the nature of the task this dataset will enable. Don't be afraid to be creative";

const SUMMARIZE: &str = "Given a series of observations I have made about my dataset, please summarize them into a brief 2-3 sentence summary which highlights only the most important details.";

/// The optimiser's settings (DSPy's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MiproV2 {
    /// A preset (default `light`); `None` uses `num_candidates` and
    /// `num_trials`.
    pub auto: Option<AutoLevel>,
    /// Instructions and demo sets per predictor (without `auto`).
    pub num_candidates: Option<usize>,
    /// Search trials (without `auto`).
    pub num_trials: Option<usize>,
    /// Bootstrapped demos per demo set (default 4).
    pub max_bootstrapped_demos: usize,
    /// Demos per demo set in all (default 4).
    pub max_labeled_demos: usize,
    /// Score trials on minibatches (when the valset is over 50 examples).
    pub minibatch: bool,
    /// Examples per minibatch (default 35).
    pub minibatch_size: usize,
    /// A full valset pass every this many trials (default 5).
    pub minibatch_full_eval_steps: usize,
    /// The prompt model's temperature (default 1.0).
    pub init_temperature: f32,
}

impl Default for MiproV2 {
    fn default() -> Self {
        Self {
            auto: Some(AutoLevel::Light),
            num_candidates: None,
            num_trials: None,
            max_bootstrapped_demos: 4,
            max_labeled_demos: 4,
            minibatch: true,
            minibatch_size: 35,
            minibatch_full_eval_steps: 5,
            init_temperature: 1.0,
        }
    }
}

const NAME: &str = "mipro";

/// DSPy's `_set_num_trials_from_num_candidates`.
fn trials_for(predictors: usize, candidates: usize) -> usize {
    let n = candidates.max(2) as f64;
    (2.0 * (2.0 * predictors as f64) * n.log2()).max(1.5 * n) as usize
}

impl MiproV2 {
    fn plan(&self, predictors: usize) -> Result<(usize, usize, Option<usize>)> {
        match (self.auto, self.num_candidates, self.num_trials) {
            (Some(level), None, None) => {
                let n = level.candidates() as usize;
                let val = match level {
                    AutoLevel::Light => 100,
                    AutoLevel::Medium => 300,
                    AutoLevel::Heavy => 1_000,
                };
                Ok((n, trials_for(predictors, n), Some(val)))
            }
            (None, Some(n), Some(trials)) if n >= 1 => Ok((n, trials, None)),
            (Some(_), _, _) => Err(PromptError::Optimize {
                message: "MIPROv2: with `auto`, leave num_candidates and num_trials unset".into(),
            }),
            (None, Some(n), None) => Err(PromptError::Optimize {
                message: format!(
                    "MIPROv2: without `auto`, set num_trials too (about {} for {n} candidates)",
                    trials_for(predictors, n)
                ),
            }),
            _ => Err(PromptError::Optimize {
                message: "MIPROv2: set `auto`, or both num_candidates and num_trials".into(),
            }),
        }
    }

    /// Runs MIPROv2, proposing with `prompt_lm`; returns the best program
    /// and the report.
    pub async fn compile<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        prompt_lm: &Lm,
    ) -> Result<(M, OptimizeReport)> {
        let started = std::time::Instant::now();
        let inputs_fp = engine.inputs_fingerprint(self);
        let resumed = engine.resume(NAME, &inputs_fp)?;
        let names: Vec<String> = engine
            .student()
            .predictors()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let (n, num_trials, val_cap) = self.plan(names.len())?;

        // The valset the search scores on: a seeded sample under `auto`.
        let mut val: Vec<usize> = (0..engine.valset().len()).collect();
        if let Some(cap) = val_cap
            && val.len() > cap
        {
            rand::seq::SliceRandom::shuffle(val.as_mut_slice(), &mut engine.rng("mipro-valset", 0));
            val.truncate(cap);
            val.sort_unstable();
        }
        let use_minibatch = self.minibatch && val.len() > 50;

        // The program as given, on the valset.
        let initial = engine.initial_state();
        let before = engine.spend();
        let scored = engine.evaluate(&initial, Split::Val, &val).await;
        engine.log_trial(Trial {
            note: Some("the program as given".into()),
            ..trial(
                engine,
                engine.next_trial(),
                "full",
                &initial,
                Some(&scored),
                &before,
            )
        });
        engine.checkpoint(NAME, &inputs_fp)?;
        let baseline = scored
            .complete
            .then(|| val_score(&initial, &scored, engine.config().seed));
        let mut best: Option<(ProgramState, ValScore)> =
            baseline.clone().map(|b| (initial.clone(), b));

        // 1. Demo sets, 2. instructions.
        let demo_sets = self.demo_sets(engine, n).await?;
        let instructions = self
            .instructions(engine, prompt_lm, &names, &demo_sets, n)
            .await?;
        engine.checkpoint(NAME, &inputs_fp)?;

        // 3. The search.
        let mut params = Vec::new();
        for name in &names {
            params.push(Param::new(
                format!("{name}:instruction"),
                instructions.get(name).map_or(1, Vec::len),
            ));
            params.push(Param::new(format!("{name}:demos"), demo_sets.len().max(1)));
        }
        let tpe = Tpe::new(params, TpeConfig::default())?;
        let combination = |values: &[usize]| -> ProgramState {
            let mut state = initial.clone();
            for (p, name) in names.iter().enumerate() {
                let (i, d) = (
                    values.get(2 * p).copied().unwrap_or(0),
                    values.get(2 * p + 1).copied().unwrap_or(0),
                );
                if let Some(text) = instructions.get(name).and_then(|list| list.get(i)) {
                    state = with_instructions(&state, name, text);
                }
                if let (Some(set), Some(predictor)) = (
                    demo_sets.get(d).and_then(|set| set.get(name)),
                    state.predictors.get_mut(name),
                ) {
                    predictor.demos.clone_from(set);
                }
            }
            state
        };
        let describe = |values: &[usize]| -> BTreeMap<String, String> {
            names
                .iter()
                .enumerate()
                .map(|(p, name)| {
                    let d = values.get(2 * p + 1).copied().unwrap_or(0);
                    let size = demo_sets
                        .get(d)
                        .and_then(|s| s.get(name))
                        .map_or(0, Vec::len);
                    (name.clone(), format!("set {d} ({size} demos)"))
                })
                .collect()
        };
        // The history starts with the program as given (index 0 of every
        // choice is the current instruction and its own demos... seeded as
        // DSPy does, with the default combination's full score).
        let mut history: Vec<Observation> = Vec::new();
        if let Some(b) = &baseline {
            history.push(Observation {
                values: vec![0; names.len() * 2],
                score: b.score,
            });
        }
        let mut minibatch_scores: HashMap<Vec<usize>, Vec<f64>> = HashMap::new();
        let mut fully_scored: HashMap<Vec<usize>, f64> = HashMap::new();
        for t in 1..=num_trials as u64 {
            if !engine.has_budget() {
                break;
            }
            let mut rng = engine.rng("mipro-tpe", t);
            let values = tpe.suggest(&history, &mut || rng.next_u64());
            let candidate = combination(&values);
            let batch: Vec<usize> = if use_minibatch {
                let mut rng = engine.rng("mipro-minibatch", t);
                let mut pool = val.clone();
                rand::seq::SliceRandom::shuffle(pool.as_mut_slice(), &mut rng);
                pool.truncate(self.minibatch_size.min(val.len()));
                pool
            } else {
                val.clone()
            };
            let before = engine.spend();
            let scored = engine.evaluate(&candidate, Split::Val, &batch).await;
            engine.log_trial(Trial {
                demo_sets: describe(&values),
                note: Some(format!("trial {t}/{num_trials}, choices {values:?}")),
                ..trial(
                    engine,
                    engine.next_trial(),
                    if use_minibatch { "minibatch" } else { "full" },
                    &candidate,
                    Some(&scored),
                    &before,
                )
            });
            if !scored.complete {
                break;
            }
            let score = scored.mean();
            history.push(Observation {
                values: values.clone(),
                score,
            });
            if use_minibatch {
                minibatch_scores
                    .entry(values.clone())
                    .or_default()
                    .push(score);
            } else if best.as_ref().is_none_or(|(_, b)| score > b.score) {
                best = Some((
                    candidate.clone(),
                    val_score(&candidate, &scored, engine.config().seed),
                ));
            }
            let steps = self.minibatch_full_eval_steps.max(1) as u64;
            if use_minibatch && (t % steps == 0 || t == num_trials as u64) {
                // The best mean minibatch score not yet fully scored.
                let mut ranked: Vec<(&Vec<usize>, f64)> = minibatch_scores
                    .iter()
                    .filter(|(v, _)| !fully_scored.contains_key(*v))
                    .map(|(v, s)| (v, s.iter().sum::<f64>() / s.len().max(1) as f64))
                    .collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
                if let Some((values, _)) = ranked.first() {
                    let values = (*values).clone();
                    let candidate = combination(&values);
                    let before = engine.spend();
                    let full = engine.evaluate(&candidate, Split::Val, &val).await;
                    engine.log_trial(Trial {
                        demo_sets: describe(&values),
                        note: Some(format!(
                            "full pass of the best minibatch combination {values:?}"
                        )),
                        ..trial(
                            engine,
                            engine.next_trial(),
                            "full",
                            &candidate,
                            Some(&full),
                            &before,
                        )
                    });
                    if full.complete {
                        let score = full.mean();
                        fully_scored.insert(values.clone(), score);
                        history.push(Observation { values, score });
                        if best.as_ref().is_none_or(|(_, b)| score > b.score) {
                            best = Some((
                                candidate.clone(),
                                val_score(&candidate, &full, engine.config().seed),
                            ));
                        }
                    }
                }
            }
            if let Some((_, b)) = &best {
                engine.progress(&format!(
                    "MIPROv2: trial {t}/{num_trials}, best {:.3}",
                    b.score
                ));
            }
            engine.checkpoint(NAME, &inputs_fp)?;
        }
        engine.finish();
        let (best_state, best_score) = match best {
            Some((state, score)) => (state, Some(score)),
            None => (initial, None),
        };
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

    /// `n` demo sets, each a demo list per predictor.
    async fn demo_sets<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        n: usize,
    ) -> Result<Vec<BTreeMap<String, Vec<Example>>>> {
        let student = engine.student();
        let trainset = engine.trainset();
        let mut sets = Vec::new();
        let per_predictor = |program: &M| -> BTreeMap<String, Vec<Example>> {
            program
                .predictors()
                .into_iter()
                .map(|(name, p)| (name, p.demos().to_vec()))
                .collect()
        };
        for seed in -3i64..(n as i64 - 3) {
            if !engine.has_budget() {
                break;
            }
            let set = match seed {
                -3 => student
                    .predictors()
                    .into_iter()
                    .map(|(name, _)| (name, Vec::new()))
                    .collect(),
                -2 => {
                    let draw = engine.rng("mipro-labeled", 0).random::<u64>();
                    per_predictor(
                        &LabeledFewShot::new(self.max_labeled_demos)
                            .with_seed(draw)
                            .compile(student, trainset),
                    )
                }
                seed => {
                    let (order, size) = if seed == -1 {
                        (
                            (0..trainset.len()).collect::<Vec<_>>(),
                            self.max_bootstrapped_demos,
                        )
                    } else {
                        let mut rng = engine.rng("mipro-shuffle", seed as u64);
                        let mut order: Vec<usize> = (0..trainset.len()).collect();
                        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
                        (
                            order,
                            rng.random_range(1..=self.max_bootstrapped_demos.max(1)),
                        )
                    };
                    let shuffled: Vec<Example> = order
                        .iter()
                        .filter_map(|&i| trainset.get(i).cloned())
                        .collect();
                    let mut bootstrap = BootstrapFewShot::new(engine.metric().clone())
                        .max_bootstrapped_demos(size)
                        .max_labeled_demos(self.max_labeled_demos)
                        .with_concurrency(engine.config().concurrency)
                        .with_gate(engine.gate());
                    bootstrap.max_errors = None;
                    bootstrap.context = engine.config().context.clone();
                    let (compiled, _) = bootstrap.compile(student, None, &shuffled).await?;
                    per_predictor(&compiled)
                }
            };
            sets.push(set);
        }
        Ok(sets)
    }

    /// `n` instructions per predictor: the current one, then proposals.
    async fn instructions<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        prompt_lm: &Lm,
        names: &[String],
        demo_sets: &[BTreeMap<String, Vec<Example>>],
        n: usize,
    ) -> Result<BTreeMap<String, Vec<String>>> {
        let summary = self.dataset_summary(engine, prompt_lm).await?;
        let state = engine.initial_state();
        let program_description = names
            .iter()
            .filter_map(|name| {
                let p = state.predictors.get(name)?;
                Some(format!(
                    "Predictor `{name}`: signature `{}`; instructions: {}",
                    p.signature,
                    effective_instructions(engine.student(), &state, name)
                ))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let proposer = Proposer::new(
            "dataset_description, program_description, module, task_demos, basic_instruction, tip -> proposed_instruction",
            PROPOSE,
            prompt_lm,
            Some(self.init_temperature),
        )?;
        let mut out = BTreeMap::new();
        for name in names {
            let basic = effective_instructions(engine.student(), &state, name);
            let mut list = vec![basic.clone()];
            for i in 1..n {
                if !engine.has_budget() {
                    break;
                }
                let mut rng = engine.rng(&format!("mipro-tip-{name}"), i as u64);
                let tip = TIPS
                    .get(rng.random_range(0..TIPS.len()))
                    .map_or("", |(_, t)| *t);
                // Demos from a bootstrapped set (sets 2.. are bootstraps).
                let demos = demo_sets
                    .get(2 + (i % demo_sets.len().saturating_sub(2).max(1)))
                    .or_else(|| demo_sets.last())
                    .and_then(|set| set.get(name))
                    .map(|demos| {
                        demos
                            .iter()
                            .take(3)
                            .map(|d| {
                                format!(
                                    "Inputs: {}\nOutputs: {}",
                                    serde_json::Value::Object(d.inputs.clone()),
                                    serde_json::Value::Object(d.outputs.clone())
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n")
                    })
                    .unwrap_or_default();
                if let Some(text) = proposer
                    .ask(
                        engine,
                        Purpose::Proposal,
                        &inputs(&[
                            ("dataset_description", summary.clone()),
                            ("program_description", program_description.clone()),
                            ("module", name.clone()),
                            ("task_demos", demos),
                            ("basic_instruction", basic.clone()),
                            ("tip", tip.to_owned()),
                        ]),
                        &format!("mipro-propose-{name}-{i}"),
                    )
                    .await
                    && !list.contains(&text)
                {
                    list.push(text);
                }
            }
            out.insert(name.clone(), list);
        }
        Ok(out)
    }

    /// Observations on up to 10 sampled trainset examples, summarised.
    async fn dataset_summary<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        prompt_lm: &Lm,
    ) -> Result<String> {
        let trainset = engine.trainset();
        let mut order: Vec<usize> = (0..trainset.len()).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut engine.rng("mipro-summary", 0));
        let examples = order
            .iter()
            .take(10)
            .filter_map(|&i| trainset.get(i))
            .map(|e| {
                format!(
                    "{} -> {}",
                    serde_json::Value::Object(e.inputs.clone()),
                    serde_json::Value::Object(e.outputs.clone())
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let observe = Proposer::new(
            "examples -> observations",
            OBSERVE,
            prompt_lm,
            Some(self.init_temperature),
        )?;
        let Some(observations) = observe
            .ask(
                engine,
                Purpose::Proposal,
                &inputs(&[("examples", examples)]),
                "mipro-observe",
            )
            .await
        else {
            return Ok(String::new());
        };
        let summarize = Proposer::new(
            "observations -> summary",
            SUMMARIZE,
            prompt_lm,
            Some(self.init_temperature),
        )?;
        Ok(summarize
            .ask(
                engine,
                Purpose::Proposal,
                &inputs(&[("observations", observations.clone())]),
                "mipro-summarize",
            )
            .await
            .unwrap_or(observations))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trial_counts_follow_dspy() {
        // One predictor, light: max(2*2*log2(6), 9) = 10.
        assert_eq!(trials_for(1, 6), 10);
        // Two predictors, medium: max(2*4*log2(12), 18) = 28.
        assert_eq!(trials_for(2, 12), 28);
    }
}
