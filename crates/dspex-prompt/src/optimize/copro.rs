//! DSPy's COPRO: coordinate ascent over each predictor's instructions.
//!
//! For every predictor, a prompt model proposes `breadth - 1` instructions
//! from the current one (at `init_temperature`); each candidate is scored
//! on the valset and the predictor keeps the best. For `depth` rounds, the
//! prompt model then sees the best attempts so far with their scores, in
//! increasing order, and proposes `breadth` more. With several predictors,
//! each round revisits every candidate of every predictor against the
//! others' current best (DSPy's coordinate ascent).
//!
//! Departures from DSPy: DSPex's adapters have no output-field prefix, so
//! candidates are instructions alone (DSPy also proposes a prefix); the
//! `breadth - 1` proposals are separate calls, each with its own rollout
//! id, rather than one call with `n` completions, so every provider (and
//! the response cache) gives distinct samples; and candidates are scored
//! on the valset the engine holds (the CLI passes the trainset when no
//! valset is given, which is what DSPy's COPRO scores on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, Purpose, Split};
use super::propose::{Proposer, effective_instructions, inputs, with_instructions};
use super::report::{OptimizeReport, Trial, trial, val_score};
use crate::error::{PromptError, Result};
use crate::module::{Lm, Module, ProgramState};

/// What DSPy's `BasicGenerateInstruction` asks.
const BASIC: &str = "You are an instruction optimizer for large language models. I will give you a ``signature`` of fields (inputs and outputs) in English. Your task is to propose an instruction that will lead a good language model to perform the task well. Don't be afraid to be creative.";

/// What DSPy's `GenerateInstructionGivenAttempts` asks.
const GIVEN_ATTEMPTS: &str = "You are an instruction optimizer for large language models. I will give some task instructions I've tried, along with their corresponding validation scores. The instructions are arranged in increasing order based on their scores, where higher scores indicate better quality.\n\nYour task is to propose a new instruction that will lead a good language model to perform the task even better. Don't be afraid to be creative.";

/// The optimiser's settings (DSPy's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Copro {
    /// Instructions proposed per predictor per round (at least 2; default 10).
    pub breadth: usize,
    /// Rounds (default 3).
    pub depth: usize,
    /// The prompt model's temperature (default 1.4).
    pub init_temperature: f32,
}

impl Default for Copro {
    fn default() -> Self {
        Self {
            breadth: 10,
            depth: 3,
            init_temperature: 1.4,
        }
    }
}

const NAME: &str = "copro";

/// One predictor's evaluated instructions: score and the round it was
/// first scored in, in the order they were first scored.
#[derive(Default)]
struct Evaluated {
    order: Vec<String>,
    scores: BTreeMap<String, f64>,
}

impl Evaluated {
    fn record(&mut self, instruction: &str, score: f64) {
        match self.scores.get_mut(instruction) {
            Some(known) => *known = known.max(score),
            None => {
                self.order.push(instruction.to_owned());
                self.scores.insert(instruction.to_owned(), score);
            }
        }
    }

    /// The best instruction; ties keep the first scored (DSPy's `max`).
    fn best(&self) -> Option<(&str, f64)> {
        let mut best: Option<(&str, f64)> = None;
        for instruction in &self.order {
            let score = self.scores.get(instruction).copied().unwrap_or(0.0);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((instruction, score));
            }
        }
        best
    }

    /// The best `limit` attempts, worst first (how DSPy lists them).
    fn attempts(&self, limit: usize) -> Vec<(&str, f64)> {
        let mut ranked: Vec<(&str, f64)> = self
            .order
            .iter()
            .map(|i| (i.as_str(), self.scores.get(i).copied().unwrap_or(0.0)))
            .collect();
        // Stable: equal scores keep their first-scored order.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(limit);
        ranked.reverse();
        ranked
    }
}

impl Copro {
    /// Runs COPRO, proposing with `prompt_lm`; returns the best program and
    /// the report.
    pub async fn compile<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        prompt_lm: &Lm,
    ) -> Result<(M, OptimizeReport)> {
        if self.breadth < 2 {
            return Err(PromptError::Optimize {
                message: format!("COPRO's breadth must be at least 2, not {}", self.breadth),
            });
        }
        let started = std::time::Instant::now();
        let inputs_fp = engine.inputs_fingerprint(self);
        let resumed = engine.resume(NAME, &inputs_fp)?;
        let basic = Proposer::new(
            "basic_instruction -> proposed_instruction",
            BASIC,
            prompt_lm,
            Some(self.init_temperature),
        )?;
        let given = Proposer::new(
            "attempted_instructions -> proposed_instruction",
            GIVEN_ATTEMPTS,
            prompt_lm,
            Some(self.init_temperature),
        )?;
        let all_val: Vec<usize> = (0..engine.valset().len()).collect();
        let names: Vec<String> = engine
            .student()
            .predictors()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mut current = engine.initial_state();

        let before = engine.spend();
        let baseline_scored = engine.evaluate(&current, Split::Val, &all_val).await;
        let baseline = baseline_scored
            .complete
            .then(|| val_score(&current, &baseline_scored, engine.config().seed));
        engine.log_trial(Trial {
            note: Some("the program as given".into()),
            ..trial(
                engine,
                engine.next_trial(),
                "candidate",
                &current,
                Some(&baseline_scored),
                &before,
            )
        });
        engine.checkpoint(NAME, &inputs_fp)?;

        // Round 0's candidates: the current instructions and breadth - 1
        // proposals from them.
        let mut latest: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &names {
            let basic_instruction = effective_instructions(engine.student(), &current, name);
            let mut proposals = Vec::new();
            for i in 0..self.breadth - 1 {
                let key = format!("copro-init-{name}-{i}");
                if let Some(text) = basic
                    .ask(
                        engine,
                        Purpose::Proposal,
                        &inputs(&[("basic_instruction", basic_instruction.clone())]),
                        &key,
                    )
                    .await
                {
                    proposals.push(text);
                }
            }
            proposals.push(basic_instruction);
            latest.insert(name.clone(), proposals.clone());
            all.insert(name.clone(), proposals);
        }

        let mut evaluated: BTreeMap<String, Evaluated> = BTreeMap::new();
        'rounds: for depth in 0..self.depth {
            for name in &names {
                let candidates = if names.len() > 1 {
                    all.get(name).cloned().unwrap_or_default()
                } else {
                    latest.get(name).cloned().unwrap_or_default()
                };
                for (c, instruction) in candidates.iter().enumerate() {
                    if !engine.has_budget() {
                        break 'rounds;
                    }
                    let before = engine.spend();
                    let candidate = with_instructions(&current, name, instruction);
                    let scored = engine.evaluate(&candidate, Split::Val, &all_val).await;
                    engine.log_trial(Trial {
                        note: Some(format!(
                            "round {}/{}, predictor `{name}`, candidate {}/{}",
                            depth + 1,
                            self.depth,
                            c + 1,
                            candidates.len()
                        )),
                        ..trial(
                            engine,
                            engine.next_trial(),
                            "candidate",
                            &candidate,
                            Some(&scored),
                            &before,
                        )
                    });
                    engine.checkpoint(NAME, &inputs_fp)?;
                    if !scored.complete {
                        break 'rounds;
                    }
                    evaluated
                        .entry(name.clone())
                        .or_default()
                        .record(instruction, scored.mean());
                }
                if let Some((best, score)) = evaluated.get(name).and_then(Evaluated::best) {
                    current = with_instructions(&current, name, best);
                    engine.progress(&format!(
                        "COPRO: round {}/{}, `{name}` best {score:.3}",
                        depth + 1,
                        self.depth
                    ));
                }
            }
            if depth + 1 == self.depth {
                break;
            }
            for name in &names {
                let attempts = evaluated
                    .get(name)
                    .map(|e| e.attempts(self.breadth))
                    .unwrap_or_default();
                let listed: Vec<String> = attempts
                    .iter()
                    .enumerate()
                    .map(|(i, (instruction, score))| {
                        format!(
                            "Instruction #{n}: {instruction}\nResulting Score #{n}: {score}",
                            n = i + 1
                        )
                    })
                    .collect();
                let mut proposals = Vec::new();
                for i in 0..self.breadth {
                    let key = format!("copro-round{}-{name}-{i}", depth + 1);
                    if let Some(text) = given
                        .ask(
                            engine,
                            Purpose::Proposal,
                            &inputs(&[("attempted_instructions", listed.join("\n"))]),
                            &key,
                        )
                        .await
                    {
                        proposals.push(text);
                    }
                }
                latest.insert(name.clone(), proposals.clone());
                all.entry(name.clone()).or_default().extend(proposals);
            }
        }
        engine.finish();
        let best = self.score_best(engine, &current, &all_val).await;
        let program = (*engine.program(&current)?).clone();
        Ok((
            program,
            OptimizeReport::new(NAME, engine, baseline, best, resumed, started.elapsed()),
        ))
    }

    /// The chosen program's valset score (from the cache: every candidate
    /// it was built from was scored).
    async fn score_best<M: Module + Clone + 'static>(
        &self,
        engine: &Engine<M>,
        current: &ProgramState,
        all_val: &[usize],
    ) -> Option<super::report::ValScore> {
        let scored = engine.evaluate(current, Split::Val, all_val).await;
        scored
            .complete
            .then(|| val_score(current, &scored, engine.config().seed))
    }
}
