//! What an optimisation reports: every trial (its candidate's instructions
//! and demo sets, the examples it was scored on, its score, what it cost),
//! the best program's score on the valset with a 95% confidence interval
//! beside the starting program's, the spend by purpose, and why it stopped.
//! `dspex optimize --json` prints it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, Scored, SpendReport, StopReason, candidate_id, confidence_interval};
use crate::module::{Module, ProgramState};

/// One step of a search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Its number, from 1.
    pub index: u64,
    /// What it was: `candidate` (scored on the valset), `minibatch`,
    /// `full` (a full valset evaluation of the best so far), `proposal`,
    /// `reflection`, `merge`.
    pub kind: String,
    /// The candidate's id (the first 16 hex digits of its state's SHA-256).
    pub candidate: String,
    /// Each predictor's instructions in the candidate.
    pub instructions: BTreeMap<String, String>,
    /// Each predictor's demo set: which one, and how many demos.
    pub demo_sets: BTreeMap<String, String>,
    /// Examples it was scored on.
    pub examples: usize,
    /// Its mean score on them (`None` when nothing ran).
    pub score: Option<f64>,
    /// LM calls this trial made (cached rollouts cost none).
    pub calls: u64,
    /// Tokens this trial used.
    pub tokens: u64,
    /// What this trial cost, nano-USD.
    pub cost_nanos: i64,
    /// Anything else worth knowing (which predictor changed, why a child
    /// was rejected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A program's score on the valset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValScore {
    /// The candidate's id.
    pub candidate: String,
    /// The mean score.
    pub score: f64,
    /// The 95% confidence interval of the mean (Wilson for pass/fail
    /// scores, a bootstrap otherwise).
    pub ci95: [f64; 2],
    /// Examples scored.
    pub examples: usize,
}

impl OptimizeReport {
    /// The report of an optimisation on `engine` that found `best`.
    pub fn new<M: Module + Clone + 'static>(
        optimizer: &str,
        engine: &Engine<M>,
        baseline: Option<ValScore>,
        best: Option<ValScore>,
        resumed_trials: Option<usize>,
        duration: Duration,
    ) -> Self {
        Self {
            optimizer: optimizer.to_owned(),
            seed: engine.config().seed,
            trials: engine.trials(),
            baseline,
            best,
            spend: engine.spend(),
            stopped: engine.stopped().unwrap_or(StopReason::Finished),
            resumed_trials,
            duration,
        }
    }
}

/// The whole optimisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizeReport {
    /// The optimiser (`random-search`, `copro`, `mipro`, `gepa`, ...).
    pub optimizer: String,
    /// The seed.
    pub seed: u64,
    /// Every trial, in order.
    pub trials: Vec<Trial>,
    /// The program it started from, on the valset.
    pub baseline: Option<ValScore>,
    /// The best program found, on the valset.
    pub best: Option<ValScore>,
    /// What was spent, by purpose.
    pub spend: SpendReport,
    /// Why it ended.
    pub stopped: StopReason,
    /// For a resumed run: how many trials the killed run had logged (its
    /// trials are in `trials`, with what they cost then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_trials: Option<usize>,
    /// Wall-clock time of this run.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
}

/// A short id for reports.
pub fn short_id(state: &ProgramState) -> String {
    candidate_id(state).chars().take(16).collect()
}

/// Each predictor's instructions.
pub fn instructions_of(state: &ProgramState) -> BTreeMap<String, String> {
    state
        .predictors
        .iter()
        .map(|(name, p)| (name.clone(), p.instructions.clone()))
        .collect()
}

/// The trial a scored candidate makes, with the spend since `before`; its
/// demo sets are described by their sizes and it has no note (set both
/// after, where there is more to say).
pub fn trial<M: Module + Clone + 'static>(
    engine: &Engine<M>,
    index: u64,
    kind: &str,
    state: &ProgramState,
    scored: Option<&Scored>,
    before: &SpendReport,
) -> Trial {
    let now = engine.spend().total();
    let then = before.total();
    Trial {
        index,
        kind: kind.to_owned(),
        candidate: short_id(state),
        instructions: instructions_of(state),
        demo_sets: demo_counts(state),
        examples: scored.map_or(0, |s| s.rollouts.len()),
        score: scored.filter(|s| !s.rollouts.is_empty()).map(Scored::mean),
        calls: now.calls.saturating_sub(then.calls),
        tokens: now.tokens().saturating_sub(then.tokens()),
        cost_nanos: now.cost_nanos.saturating_sub(then.cost_nanos),
        note: None,
    }
}

/// The valset score of a fully scored candidate.
pub fn val_score(state: &ProgramState, scored: &Scored, seed: u64) -> ValScore {
    ValScore {
        candidate: short_id(state),
        score: scored.mean(),
        ci95: confidence_interval(&scored.scores(), seed),
        examples: scored.rollouts.len(),
    }
}

/// Demo sets described by their size, for trials that do not name them.
pub fn demo_counts(state: &ProgramState) -> BTreeMap<String, String> {
    state
        .predictors
        .iter()
        .map(|(name, p)| (name.clone(), format!("{} demos", p.demos.len())))
        .collect()
}
