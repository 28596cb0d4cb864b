//! The few-shot optimisers: [`LabeledFewShot`] and [`BootstrapFewShot`].

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use dspex_client::Usage;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::adapter::Example;
use crate::error::{PromptError, Result};
use crate::evaluate::Metric;
use crate::module::{Module, Predict, RunContext};
use crate::optimize::engine::{Gate, Purpose};

/// Attaches labelled examples as demos to every predictor.
///
/// By default the *first* `k` examples of the trainset are taken, in order;
/// with a seed, `k` examples drawn by a seeded shuffle (deterministic per
/// seed). Each demo keeps only the fields of the predictor's signature, and
/// an example lacking one of the predictor's inputs or all of its outputs is
/// skipped for that predictor (the next one is taken instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledFewShot {
    /// Demos per predictor.
    pub k: usize,
    /// Draw by a seeded shuffle instead of taking the first `k`.
    pub seed: Option<u64>,
}

impl LabeledFewShot {
    /// Up to `k` labelled demos per predictor, the first `k` in order.
    pub fn new(k: usize) -> Self {
        Self { k, seed: None }
    }

    /// Draws the demos by a shuffle seeded with `seed`.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A copy of `student` whose predictors have the labelled demos (in place
    /// of any they had).
    pub fn compile<M: Module + Clone>(&self, student: &M, trainset: &[Example]) -> M {
        let mut compiled = student.clone();
        let order = shuffled(trainset.len(), self.seed);
        for (_, predict) in compiled.predictors_mut() {
            let demos = labeled_demos(predict, trainset, &order, self.k)
                .into_iter()
                .map(|(_, demo)| demo)
                .collect();
            predict.set_demos(demos);
        }
        compiled
    }
}

/// DSPy's `BootstrapFewShot`: bootstrapped demos from a teacher's successful
/// runs, topped up with labelled ones. Build with [`BootstrapFewShot::new`].
///
/// [`compile`](Self::compile) works as DSPy's does:
///
/// 1. The teacher is the given one as it is, or by default a copy of the
///    student given up to `max_labeled_demos` labelled demos by
///    [`LabeledFewShot`] (first in order). While an example runs, it is left
///    out of the teacher's demos so the teacher cannot copy its answer.
/// 2. The teacher runs over the trainset in order, recording each
///    predictor's inputs and outputs. A run whose prediction
///    [passes](Metric::passes) the metric gives one demo per predictor (if a
///    predictor ran several times in that run, its last step). An example
///    that fails (or errors) is retried up to `max_rounds` times in all, the
///    later rounds at temperature 1.0 so they can differ.
/// 3. Running stops once `max_bootstrapped_demos` examples passed. After
///    `max_errors` failed runs, compilation fails with the last error.
/// 4. Each predictor of a copy of the student gets up to
///    `max_bootstrapped_demos` bootstrapped demos, then labelled demos from
///    the examples that were *not* bootstrapped (in trainset order, or a
///    seeded shuffle), up to `max_labeled_demos` demos in all.
///
/// With `concurrency` above 1, later examples start before earlier ones end;
/// results are still taken in trainset order, so the outcome is the same as
/// a sequential run (runs started past the stopping point are cancelled).
#[derive(Clone, Debug)]
pub struct BootstrapFewShot {
    /// What a run must pass to become a demo.
    pub metric: Metric,
    /// Bootstrapped demos per predictor (default 4).
    pub max_bootstrapped_demos: usize,
    /// Demos per predictor in all, labelled ones filling up (default 16).
    pub max_labeled_demos: usize,
    /// Tries per example (default 1).
    pub max_rounds: usize,
    /// Failed runs after which compilation fails (default 10, as DSPy's
    /// `max_errors`); `None` never fails.
    pub max_errors: Option<usize>,
    /// Teacher runs in flight at once (default 8).
    pub concurrency: usize,
    /// Shuffle the labelled fill-up with this seed (default: trainset order).
    pub seed: Option<u64>,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// The context of every teacher run (tags; traces are always recorded).
    pub context: RunContext,
    /// An optimisation engine's concurrency and budget, shared by the
    /// teacher's runs when an optimiser bootstraps inside one; a spent
    /// budget stops bootstrapping with the demos found so far.
    pub gate: Option<Gate>,
}

impl BootstrapFewShot {
    /// Bootstraps with `metric` and DSPy's defaults.
    pub fn new(metric: Metric) -> Self {
        Self {
            metric,
            max_bootstrapped_demos: 4,
            max_labeled_demos: 16,
            max_rounds: 1,
            max_errors: Some(10),
            concurrency: 8,
            seed: None,
            progress: false,
            context: RunContext::default(),
            gate: None,
        }
    }

    /// Shares `gate`'s concurrency and budget (see [`BootstrapFewShot::gate`]).
    #[must_use]
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Shuffles the labelled fill-up with `seed`.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets `max_bootstrapped_demos`.
    #[must_use]
    pub fn max_bootstrapped_demos(mut self, n: usize) -> Self {
        self.max_bootstrapped_demos = n;
        self
    }

    /// Sets `max_labeled_demos`.
    #[must_use]
    pub fn max_labeled_demos(mut self, n: usize) -> Self {
        self.max_labeled_demos = n;
        self
    }

    /// Sets `max_rounds`.
    #[must_use]
    pub fn max_rounds(mut self, n: usize) -> Self {
        self.max_rounds = n;
        self
    }

    /// Sets `concurrency`.
    #[must_use]
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Compiles `student`: see the type's docs. Returns the compiled copy and
    /// what happened. Fails on an empty trainset or after `max_errors` failed
    /// runs.
    pub async fn compile<M: Module + Clone>(
        &self,
        student: &M,
        teacher: Option<&M>,
        trainset: &[Example],
    ) -> Result<(M, CompileReport)> {
        if trainset.is_empty() {
            return Err(PromptError::Optimize {
                message: "the trainset is empty".to_owned(),
            });
        }
        let started = Instant::now();
        let teacher = match teacher {
            Some(teacher) => teacher.clone(),
            None => LabeledFewShot::new(self.max_labeled_demos).compile(student, trainset),
        };
        let mut report = CompileReport::default();
        // Per predictor name: (trainset index, demo), in trainset order.
        let mut traces: BTreeMap<String, Vec<(usize, Example)>> = BTreeMap::new();
        if self.max_bootstrapped_demos > 0 {
            self.bootstrap(&teacher, trainset, &mut report, &mut traces)
                .await?;
        }

        let mut compiled = student.clone();
        let unbootstrapped: Vec<usize> = shuffled(trainset.len(), self.seed)
            .into_iter()
            .filter(|index| !report.bootstrapped.contains(index))
            .collect();
        for (name, predict) in compiled.predictors_mut() {
            let mut placed = PredictorDemos::default();
            let mut demos = Vec::new();
            for (index, demo) in traces
                .remove(&name)
                .unwrap_or_default()
                .into_iter()
                .take(self.max_bootstrapped_demos)
            {
                placed.bootstrapped.push(index);
                demos.push(demo);
            }
            let room = self.max_labeled_demos.saturating_sub(demos.len());
            for (index, demo) in labeled_demos(predict, trainset, &unbootstrapped, room) {
                placed.labeled.push(index);
                demos.push(demo);
            }
            predict.set_demos(demos);
            report.predictors.insert(name, placed);
        }
        report.duration = started.elapsed();
        Ok((compiled, report))
    }

    async fn bootstrap<M: Module + Clone>(
        &self,
        teacher: &M,
        trainset: &[Example],
        report: &mut CompileReport,
        traces: &mut BTreeMap<String, Vec<(usize, Example)>>,
    ) -> Result<()> {
        let bar = if self.progress && std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(trainset.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut runs = futures::stream::iter(
            trainset
                .iter()
                .enumerate()
                .map(|(index, example)| self.run_example(teacher, index, example)),
        )
        .buffered(self.concurrency.max(1));
        let mut errors = 0usize;
        while let Some(outcome) = runs.next().await {
            bar.inc(1);
            report.tried += 1;
            report.attempts += outcome.attempts;
            report.calls = report.calls.saturating_add(outcome.calls);
            report.usage += outcome.usage;
            errors += outcome.errors.len();
            let last_error = outcome.errors.last().map(ToString::to_string);
            for error in &outcome.errors {
                report.errors.push(ExampleError {
                    index: outcome.index,
                    error: error.to_string(),
                });
            }
            if outcome.budget_spent {
                report.stopped_early = true;
                break;
            }
            match outcome.steps {
                Some(steps) => {
                    report.passed += 1;
                    report.bootstrapped.push(outcome.index);
                    for (name, demo) in steps {
                        traces.entry(name).or_default().push((outcome.index, demo));
                    }
                }
                None if last_error.is_some() => report.errored += 1,
                None => report.failed += 1,
            }
            if let Some(max) = self.max_errors
                && errors >= max
                && let Some(error) = outcome.errors.into_iter().last()
            {
                bar.finish_and_clear();
                tracing::warn!(errors, "bootstrapping stopped: too many failed runs");
                return Err(error);
            }
            if report.passed >= self.max_bootstrapped_demos {
                report.stopped_early = report.tried < trainset.len();
                break;
            }
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Runs the teacher on one example, up to `max_rounds` times, until a run
    /// passes the metric.
    async fn run_example<M: Module + Clone>(
        &self,
        teacher: &M,
        index: usize,
        example: &Example,
    ) -> Outcome {
        let mut outcome = Outcome {
            index,
            steps: None,
            attempts: 0,
            calls: 0,
            usage: Usage::default(),
            errors: Vec::new(),
            budget_spent: false,
        };
        // Left out of the teacher's own demos while it answers this example.
        let leaks = teacher
            .predictors()
            .iter()
            .any(|(_, predict)| demo_position(predict, example).is_some());
        for round in 0..self.max_rounds.max(1) {
            let owned;
            let program: &M = if leaks || round > 0 {
                owned = variant(teacher, example, round);
                &owned
            } else {
                teacher
            };
            let mut context = self.context.clone();
            context.record_traces = true;
            if round > 0 {
                // A distinct rollout, so a cache cannot replay round 0.
                context
                    .tags
                    .insert(crate::module::ROLLOUT_TAG.to_owned(), round.to_string());
            }
            outcome.attempts += 1;
            let result = match &self.gate {
                Some(gate) => {
                    let key = format!("bootstrap-{index}-{round}");
                    match gate
                        .run(Purpose::Task, program, &example.inputs, context, &key)
                        .await
                    {
                        Some(result) => result,
                        None => {
                            outcome.budget_spent = true;
                            return outcome;
                        }
                    }
                }
                None => program.forward_with(&example.inputs, context).await,
            };
            match result {
                Ok(prediction) => {
                    outcome.calls = outcome.calls.saturating_add(prediction.trace.len() as u64);
                    outcome.usage += prediction.usage;
                    if !self.metric.passes(self.metric.score(example, &prediction)) {
                        continue;
                    }
                    let names: HashMap<u64, String> = program
                        .predictors()
                        .into_iter()
                        .map(|(name, predict)| (predict.instance_id(), name))
                        .collect();
                    // The last step of each predictor, in first-run order.
                    let mut steps: Vec<(String, Example)> = Vec::new();
                    for trace in prediction.traces {
                        let Some(name) = names.get(&trace.predictor) else {
                            // A predictor outside the program's named ones
                            // (DSPy skips these too).
                            continue;
                        };
                        match steps.iter_mut().find(|(known, _)| known == name) {
                            Some(step) => step.1 = trace.example,
                            None => steps.push((name.clone(), trace.example)),
                        }
                    }
                    outcome.errors.clear();
                    outcome.steps = Some(steps);
                    return outcome;
                }
                Err(error) => outcome.errors.push(error),
            }
        }
        outcome
    }
}

/// A teacher for one run: without `example` among its demos, and from round 1
/// on at temperature 1.0.
fn variant<M: Module + Clone>(teacher: &M, example: &Example, round: usize) -> M {
    let mut program = teacher.clone();
    for (_, predict) in program.predictors_mut() {
        if let Some(position) = demo_position(predict, example) {
            let mut demos = predict.demos().to_vec();
            demos.remove(position);
            predict.set_demos(demos);
        }
        if round > 0 {
            let mut settings = predict.state().settings;
            settings.temperature = Some(1.0);
            let hotter = predict.clone().with_settings(settings);
            *predict = hotter;
        }
    }
    program
}

/// Where `example` sits among `predict`'s demos, as given or as fitted to its
/// signature.
fn demo_position(predict: &Predict, example: &Example) -> Option<usize> {
    let fitted = fit(predict, example);
    predict
        .demos()
        .iter()
        .position(|demo| demo == example || fitted.as_ref() == Some(demo))
}

struct Outcome {
    index: usize,
    /// The demos by predictor name when a run passed.
    steps: Option<Vec<(String, Example)>>,
    attempts: usize,
    calls: u64,
    usage: Usage,
    /// The errors of failed runs (cleared when a later round passes).
    errors: Vec<PromptError>,
    /// The engine's budget refused the run.
    budget_spent: bool,
}

/// `example` as a demo of `predict`: only its signature's fields (looked up
/// among inputs and outputs alike), or `None` when an input is missing or no
/// output is labelled.
/// `example` cut to `predict`'s fields, or `None` when it lacks an input or
/// every output.
pub(crate) fn fit(predict: &Predict, example: &Example) -> Option<Example> {
    let lookup = |name: &str| {
        example
            .inputs
            .get(name)
            .or_else(|| example.outputs.get(name))
            .filter(|value| !value.is_null())
            .cloned()
    };
    let signature = predict.signature();
    let mut inputs = Map::new();
    for field in signature.inputs() {
        inputs.insert(field.name.clone(), lookup(&field.name)?);
    }
    let outputs: Map<_, _> = signature
        .outputs()
        .iter()
        .filter_map(|field| lookup(&field.name).map(|value| (field.name.clone(), value)))
        .collect();
    if outputs.is_empty() {
        return None;
    }
    Some(Example { inputs, outputs })
}

/// Up to `k` demos for `predict` from the examples at `order`'s indices.
fn labeled_demos(
    predict: &Predict,
    trainset: &[Example],
    order: &[usize],
    k: usize,
) -> Vec<(usize, Example)> {
    order
        .iter()
        .filter_map(|&index| {
            trainset
                .get(index)
                .and_then(|example| fit(predict, example))
                .map(|demo| (index, demo))
        })
        .take(k)
        .collect()
}

/// `0..n`, shuffled by a seeded Fisher-Yates (SplitMix64) when a seed is
/// given: deterministic without a random-number crate.
fn shuffled(n: usize, seed: Option<u64>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(mut state) = seed {
        for i in (1..n).rev() {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let j = usize::try_from(z % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
    }
    order
}

/// Which trainset examples became a predictor's demos.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictorDemos {
    /// Indices of examples whose teacher runs became demos, in demo order.
    pub bootstrapped: Vec<usize>,
    /// Indices of labelled examples after them, in demo order.
    pub labeled: Vec<usize>,
}

/// A teacher run that failed with an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExampleError {
    /// The trainset index.
    pub index: usize,
    /// The error.
    pub error: String,
}

/// What [`BootstrapFewShot::compile`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompileReport {
    /// Examples the teacher ran on.
    pub tried: usize,
    /// Examples whose run passed the metric.
    pub passed: usize,
    /// Examples whose every run completed but failed the metric.
    pub failed: usize,
    /// Examples whose last run failed with an error.
    pub errored: usize,
    /// Teacher runs in all (rounds included).
    pub attempts: usize,
    /// LM calls of the completed runs.
    pub calls: u64,
    /// Tokens used by the completed runs.
    pub usage: Usage,
    /// Whether running stopped before the end of the trainset because
    /// enough examples passed.
    pub stopped_early: bool,
    /// Indices of the examples that passed, in trainset order.
    pub bootstrapped: Vec<usize>,
    /// The demos each predictor got, by predictor name.
    pub predictors: BTreeMap<String, PredictorDemos>,
    /// Every failed run's error.
    pub errors: Vec<ExampleError>,
    /// Time taken.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::shuffled;

    #[test]
    fn seeded_shuffles_are_permutations_and_repeatable() {
        let a = shuffled(20, Some(7));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(a, shuffled(20, Some(7)));
        assert_ne!(a, shuffled(20, Some(8)));
        assert_eq!(shuffled(5, None), [0, 1, 2, 3, 4]);
    }
}
