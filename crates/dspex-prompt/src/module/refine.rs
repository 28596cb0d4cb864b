//! [`BestOfN`] and [`Refine`]: run a module several times and keep the
//! attempt a reward function likes best, as DSPy's modules of those names do.
//!
//! Each attempt runs under its own rollout id at temperature 1.0 (DSPy's
//! choice), so attempts differ and the response cache keeps them apart
//! while a re-run of the same program gets the same attempts back.
//! `BestOfN`'s attempts are independent and run concurrently; `Refine`'s
//! are sequential, because each one gets advice written from the last.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{Inputs, Module, Predict, Prediction, RunContext};
use crate::error::{PromptError, Result};
use crate::signature::{Field, FieldType, Signature};

/// Scores a prediction for its inputs; higher is better.
pub type RewardFn = Arc<dyn Fn(&Inputs, &Prediction) -> f64 + Send + Sync>;

/// The temperature attempts sample at (DSPy's).
const ATTEMPT_TEMPERATURE: f32 = 1.0;

/// Runs a module up to `n` times and returns the first attempt whose reward
/// reaches the threshold, or else the best one.
///
/// Attempts run concurrently (up to [`concurrency`](Self::concurrency) at
/// once, all `n` by default) but are judged in order, so the result is the
/// one a sequential run would return; attempts after the first good one
/// are cancelled. Running them at once trades cost for time: with the
/// default concurrency all `n` requests are sent (and billed) even when the
/// first attempt is good, where DSPy's sequential loop would stop; set
/// `.concurrency(1)` to pay only for the attempts judged. The prediction
/// carries the LM calls and usage of every attempt judged (successful
/// ones; a failed attempt's calls go with its error).
#[derive(Clone)]
pub struct BestOfN<M> {
    module: M,
    n: usize,
    reward: RewardFn,
    threshold: f64,
    fail_count: usize,
    concurrency: usize,
}

impl<M> std::fmt::Debug for BestOfN<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BestOfN")
            .field("n", &self.n)
            .field("threshold", &self.threshold)
            .field("fail_count", &self.fail_count)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<M: Module> BestOfN<M> {
    /// Up to `n` attempts of `module`, judged by `reward` against `threshold`.
    pub fn new(
        module: M,
        n: usize,
        reward: impl Fn(&Inputs, &Prediction) -> f64 + Send + Sync + 'static,
        threshold: f64,
    ) -> Self {
        let n = n.max(1);
        Self {
            module,
            n,
            reward: Arc::new(reward),
            threshold,
            fail_count: n,
            concurrency: n,
        }
    }

    /// Gives up (returning the error) after this many failed attempts;
    /// all `n` by default, as DSPy.
    #[must_use]
    pub fn fail_count(mut self, failures: usize) -> Self {
        self.fail_count = failures.max(1);
        self
    }

    /// At most this many attempts in flight at once (all `n` by default).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The module attempted.
    pub fn module(&self) -> &M {
        &self.module
    }

    async fn run(&self, inputs: &Inputs, run: RunContext) -> Result<Prediction> {
        let started = Instant::now();
        let mut attempts = futures::stream::iter(0..self.n)
            .map(|i| {
                let mut attempt = run.clone().with_rollout(&format!("best_of_n/{i}"));
                attempt.temperature = Some(ATTEMPT_TEMPERATURE);
                self.module.forward_with(inputs, attempt)
            })
            .buffered(self.concurrency);
        let mut judge = Judge::new(self.reward.as_ref(), self.threshold, self.fail_count);
        while let Some(result) = attempts.next().await {
            if judge.judge(inputs, result)? {
                break;
            }
        }
        judge.finish(started)
    }
}

impl<M: Module> Module for BestOfN<M> {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(self.run(inputs, run))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        self.module.predictors()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        self.module.predictors_mut()
    }
}

/// Keeps the best attempt so far and every attempt's cost.
struct Judge<'r> {
    reward: &'r (dyn Fn(&Inputs, &Prediction) -> f64 + Send + Sync),
    threshold: f64,
    fail_count: usize,
    best: Option<(f64, Prediction)>,
    /// The LM calls of attempts that were not kept.
    spent: Prediction,
    failures: usize,
    last_error: Option<PromptError>,
    /// The score of the attempt judged last (none if it failed).
    last_score: Option<f64>,
}

impl<'r> Judge<'r> {
    fn new(
        reward: &'r (dyn Fn(&Inputs, &Prediction) -> f64 + Send + Sync),
        threshold: f64,
        fail_count: usize,
    ) -> Self {
        Self {
            reward,
            threshold,
            fail_count,
            best: None,
            spent: Prediction::default(),
            failures: 0,
            last_error: None,
            last_score: None,
        }
    }

    /// Takes one attempt; `Ok(true)` when it reached the threshold, an error
    /// when too many attempts failed.
    fn judge(&mut self, inputs: &Inputs, result: Result<Prediction>) -> Result<bool> {
        let prediction = match result {
            Ok(prediction) => prediction,
            Err(error) => {
                self.last_score = None;
                self.failures += 1;
                if self.failures >= self.fail_count {
                    return Err(error);
                }
                self.last_error = Some(error);
                return Ok(false);
            }
        };
        let score = (self.reward)(inputs, &prediction);
        self.last_score = Some(score);
        let better = self.best.as_ref().is_none_or(|(best, _)| score > *best);
        let reached = score >= self.threshold;
        if better {
            if let Some((_, previous)) = self.best.replace((score, prediction)) {
                self.spend(previous);
            }
        } else {
            self.spend(prediction);
        }
        Ok(reached)
    }

    fn spend(&mut self, attempt: Prediction) {
        for call in attempt.trace {
            self.spent.add_call(call);
        }
    }

    /// The score of the attempt judged last, which the advice is about.
    fn last_score(&self) -> Option<f64> {
        self.last_score
    }

    fn finish(self, started: Instant) -> Result<Prediction> {
        let Some((_, mut best)) = self.best else {
            return Err(self.last_error.unwrap_or_else(|| PromptError::Composite {
                message: "no attempt was made".into(),
                retryable: false,
            }));
        };
        for call in self.spent.trace {
            best.add_call(call);
        }
        best.latency = started.elapsed();
        Ok(best)
    }
}

/// Runs a module up to `n` times, each attempt after a failed one getting
/// advice on how to do better, and returns the first attempt whose reward
/// reaches the threshold, or else the best one.
///
/// After an attempt falls short, an advice predictor (on the LM of the
/// module's first predictor) reads the inputs, the outputs and the reward,
/// and writes advice that every predictor of the next attempt shows the
/// model in a `hint_` section, as DSPy's `Refine` does. (DSPy writes advice
/// per predictor; here one advice text goes to all of them.) A module
/// without predictors is simply retried.
#[derive(Clone)]
pub struct Refine<M> {
    module: M,
    n: usize,
    reward: RewardFn,
    threshold: f64,
    fail_count: usize,
    advice: Option<Predict>,
}

impl<M> std::fmt::Debug for Refine<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refine")
            .field("n", &self.n)
            .field("threshold", &self.threshold)
            .field("fail_count", &self.fail_count)
            .finish_non_exhaustive()
    }
}

impl<M: Module> Refine<M> {
    /// Up to `n` attempts of `module`, judged by `reward` against
    /// `threshold`, with advice between them.
    pub fn new(
        module: M,
        n: usize,
        reward: impl Fn(&Inputs, &Prediction) -> f64 + Send + Sync + 'static,
        threshold: f64,
    ) -> Self {
        let n = n.max(1);
        let advice = module
            .predictors()
            .first()
            .map(|(_, predict)| Predict::new(advice_signature(), predict.lm().clone()));
        Self {
            module,
            n,
            reward: Arc::new(reward),
            threshold,
            fail_count: n,
            advice,
        }
    }

    /// Gives up (returning the error) after this many failed attempts.
    #[must_use]
    pub fn fail_count(mut self, failures: usize) -> Self {
        self.fail_count = failures.max(1);
        self
    }

    /// The module refined.
    pub fn module(&self) -> &M {
        &self.module
    }

    async fn run(&self, inputs: &Inputs, run: RunContext) -> Result<Prediction> {
        let started = Instant::now();
        let mut judge = Judge::new(self.reward.as_ref(), self.threshold, self.fail_count);
        let mut hint: Option<String> = None;
        let mut advice_calls = Prediction::default();
        for i in 0..self.n {
            let mut attempt = run.clone().with_rollout(&format!("refine/{i}"));
            attempt.temperature = Some(ATTEMPT_TEMPERATURE);
            attempt.hint = hint.clone().or(run.hint.clone());
            let result = self.module.forward_with(inputs, attempt).await;
            let outputs = result.as_ref().ok().map(|p| p.outputs.clone());
            if judge.judge(inputs, result)? {
                break;
            }
            if i + 1 == self.n {
                break;
            }
            let (Some(advice), Some(outputs), Some(score)) =
                (&self.advice, outputs, judge.last_score())
            else {
                continue;
            };
            let mut ask = Map::new();
            ask.insert("program_inputs".into(), Value::Object(inputs.clone()));
            ask.insert("program_outputs".into(), Value::Object(outputs));
            ask.insert("reward_value".into(), Value::from(score));
            ask.insert("target_threshold".into(), Value::from(self.threshold));
            // Advice that fails to come is not worth failing the run for:
            // the next attempt simply goes without.
            match advice
                .forward_with(
                    &ask,
                    run.clone().with_rollout(&format!("refine/{i}/advice")),
                )
                .await
            {
                Ok(written) => {
                    hint = written.text("advice").map(str::to_owned);
                    advice_calls.absorb(written);
                }
                Err(error) => tracing::warn!(%error, "Refine: no advice for the next attempt"),
            }
        }
        let mut best = judge.finish(started)?;
        for call in advice_calls.trace {
            best.add_call(call);
        }
        Ok(best)
    }
}

/// What the advice predictor is asked.
fn advice_signature() -> Signature {
    let inputs = vec![
        Field::new("program_inputs", FieldType::Json),
        Field::new("program_outputs", FieldType::Json),
        Field::new("reward_value", FieldType::Float),
        Field::new("target_threshold", FieldType::Float),
    ];
    let outputs = vec![
        Field::new("discussion", FieldType::Str),
        Field::new("advice", FieldType::Str),
    ];
    // Built from fixed, valid names.
    #[allow(clippy::expect_used)]
    Signature::new(
        inputs,
        outputs,
        "A program was run on the inputs below and produced the outputs below, which a reward \
         function scored below the target threshold. Discuss what probably went wrong, then \
         write concise, concrete advice the program should follow next time on these inputs \
         to reach the threshold.",
    )
    .expect("the advice signature is valid")
}

impl<M: Module> Module for Refine<M> {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(self.run(inputs, run))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        self.module.predictors()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        self.module.predictors_mut()
    }
}
