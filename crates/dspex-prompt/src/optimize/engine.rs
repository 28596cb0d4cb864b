//! The optimisation engine every prompt optimiser runs on: rollouts with one
//! concurrency budget, a rollout cache, spend budgets, checkpoints that a
//! killed run resumes from, seeded randomness, progress and a report.
//!
//! - **Rollouts.** A rollout runs one candidate (a [`ProgramState`] applied to
//!   the student) on one example, scores it with the metric and keeps the
//!   trace. Rollouts, proposal calls and reflection calls all take a permit
//!   from one semaphore of `concurrency` permits, and go through the
//!   program's protected client, so rate limits and the breaker apply.
//! - **Rollout cache.** The same (candidate, example) is never run twice in
//!   one optimisation: candidates are identified by the SHA-256 of their
//!   state's canonical JSON.
//! - **Budgets.** Before each rollout or proposal the engine checks
//!   `max_calls`, `max_tokens`, `max_usd` and `max_duration`; once one is
//!   spent it refuses new work, the optimiser stops, and the result is the
//!   best program found so far. Spend is split into task, proposal and
//!   reflection calls, priced by a [`Pricer`] the caller supplies (the CLI
//!   prices with the analytics price table; this crate knows no prices).
//! - **Randomness.** Every random choice comes from
//!   [`Engine::rng`]`(purpose, step)`, a generator seeded from the run's seed,
//!   the purpose and the step. No generator state outlives a step, so a
//!   resumed run draws exactly what an uninterrupted one would.
//! - **Checkpoints.** After each trial the engine writes its ledger to the
//!   checkpoint file atomically (a temporary file, then a rename): the
//!   spend, every rollout's score, every proposal and reflection call's
//!   answer, and the trials so far. A run started with `resume` replays the
//!   optimiser from the start against that ledger: every rollout and call it
//!   already made is answered from the ledger at no cost (and the budget is
//!   not checked while it replays what the killed run already paid for),
//!   so the search takes the same path and continues where the killed run
//!   stopped; with a deterministic LM it reaches the same program as a run
//!   never killed. No optimiser needs a resumable state machine of its own.
//!   The file records a fingerprint of the inputs (student, data, metric,
//!   seed, optimiser settings); resuming with other inputs is an error.
//! - **Failures.** A rollout that fails (timeout, parse error, provider
//!   error, a metric that errs) scores 0, is counted, and never ends the
//!   optimisation.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::evaluate::{Metric, parse_dataset};
//! use dspex_prompt::optimize::engine::{Engine, EngineConfig, Split};
//! use dspex_prompt::{Lm, Predict, Signature, program_state};
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("lm", ScriptedLm::replies(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])).await?;
//! let signature = Signature::parse("question -> answer")?;
//! let student = Predict::new(signature.clone(), Lm::new(&client, "lm"));
//! let data = parse_dataset("{\"question\": \"2+2?\", \"answer\": \"4\"}\n", "inline", &signature)?;
//! let engine = Engine::new(student.clone(), Metric::exact_match(), data.clone(), data, EngineConfig::default())?;
//! let scored = engine.evaluate(&program_state(&student), Split::Val, &[0]).await;
//! assert_eq!(scored.mean(), 1.0);
//! // The same rollout again comes from the cache: no second call.
//! engine.evaluate(&program_state(&student), Split::Val, &[0]).await;
//! assert_eq!(engine.spend().task.calls, 1);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_client::Usage;
use futures::StreamExt;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::report::Trial;
use crate::adapter::Example;
use crate::error::{PromptError, Result};
use crate::evaluate::Metric;
use crate::module::{Inputs, Module, Prediction, ProgramState, RunContext, program_state};

/// Prices one LM call: nano-USD, or `None` when the model is unpriced.
pub type Pricer = Arc<dyn Fn(&str, &str, &Usage) -> Option<i64> + Send + Sync>;

/// Limits on what an optimisation may spend; the first one reached stops it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// LM calls of every kind.
    pub max_calls: Option<u64>,
    /// Tokens, input and output, of every kind.
    pub max_tokens: Option<u64>,
    /// Cost in nano-USD (priced calls only; unpriced calls are counted).
    pub max_cost_nanos: Option<i64>,
    /// Wall-clock time of this run (a resumed run's own time).
    #[serde(default, with = "optional_ms")]
    pub max_duration: Option<Duration>,
}

mod optional_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Settings every optimiser shares.
#[derive(Clone)]
pub struct EngineConfig {
    /// Fixes every random choice: sampling, minibatches, shuffles, search.
    pub seed: u64,
    /// LM work in flight at once: rollouts, proposals and reflections.
    pub concurrency: usize,
    /// Spend limits.
    pub budget: Budget,
    /// Where to write checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint file when it exists.
    pub resume: bool,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
    /// Tags for every LM call of the optimisation (analytics).
    pub context: RunContext,
    /// Prices calls for `max_cost_nanos` and the report.
    pub pricer: Option<Pricer>,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("seed", &self.seed)
            .field("concurrency", &self.concurrency)
            .field("budget", &self.budget)
            .field("checkpoint", &self.checkpoint)
            .field("resume", &self.resume)
            .field("priced", &self.pricer.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            concurrency: 8,
            budget: Budget::default(),
            checkpoint: None,
            resume: false,
            progress: false,
            context: RunContext::default(),
            pricer: None,
        }
    }
}

/// What LM work was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Running the program being optimised (rollouts, bootstrapping).
    Task,
    /// Proposing instructions (COPRO, MIPROv2) or summarising data.
    Proposal,
    /// Reflecting on traces and feedback (GEPA).
    Reflection,
}

/// Calls, tokens and cost of one kind of LM work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// LM calls made (failed calls included).
    pub calls: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cost of the priced calls, nano-USD.
    pub cost_nanos: i64,
    /// Calls the pricer could not price.
    pub unpriced_calls: u64,
    /// Runs (of the program, or of a proposal or reflection) recorded,
    /// failed ones included.
    #[serde(default)]
    pub runs: u64,
    /// Runs that failed with an error rather than giving a prediction.
    /// `runs == failed_runs > 0` means nothing succeeded: an optimisation
    /// that learnt nothing (every call refused, say) rather than one whose
    /// programs scored zero.
    #[serde(default)]
    pub failed_runs: u64,
}

impl Spent {
    fn add(&mut self, other: &Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.unpriced_calls = self.unpriced_calls.saturating_add(other.unpriced_calls);
        self.runs = self.runs.saturating_add(other.runs);
        self.failed_runs = self.failed_runs.saturating_add(other.failed_runs);
    }

    /// Input and output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Spend split by purpose, and its total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendReport {
    /// Running the program.
    pub task: Spent,
    /// Proposing instructions.
    pub proposal: Spent,
    /// Reflecting.
    pub reflection: Spent,
}

impl SpendReport {
    /// Every kind together.
    pub fn total(&self) -> Spent {
        let mut total = self.task;
        total.add(&self.proposal);
        total.add(&self.reflection);
        total
    }

    fn of_mut(&mut self, purpose: Purpose) -> &mut Spent {
        match purpose {
            Purpose::Task => &mut self.task,
            Purpose::Proposal => &mut self.proposal,
            Purpose::Reflection => &mut self.reflection,
        }
    }
}

/// Why an optimisation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
pub enum StopReason {
    /// It ran every step it planned.
    Finished,
    /// A budget was spent (which one).
    Budget(String),
}

/// Which dataset an example index refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The trainset (bootstrapping, minibatches of GEPA).
    Train,
    /// The valset (scoring candidates).
    Val,
}

/// One rollout's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The example's index in its split.
    pub example: usize,
    /// The metric's score; 0 when the run or the metric failed.
    pub score: f64,
    /// The metric's textual feedback, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// Why the run or the metric failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The prediction, with every predictor's inputs and outputs (GEPA
    /// reflects on them; checkpoints keep them, so a resumed run reflects
    /// on the same traces). Its traces name each predictor by its position
    /// in the program's `predictors()`, not by instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Arc<Prediction>>,
}

/// Rollouts of one candidate on some examples, in the order asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    /// One per example that ran (fewer than asked when a budget stopped it).
    pub rollouts: Vec<Rollout>,
    /// Whether every asked-for example ran.
    pub complete: bool,
}

impl Scored {
    /// The mean score over the rollouts (0 for none).
    pub fn mean(&self) -> f64 {
        if self.rollouts.is_empty() {
            return 0.0;
        }
        self.rollouts.iter().map(|r| r.score).sum::<f64>() / self.rollouts.len() as f64
    }

    /// The scores, in order.
    pub fn scores(&self) -> Vec<f64> {
        self.rollouts.iter().map(|r| r.score).collect()
    }
}

/// A candidate's id: the SHA-256 of its state's JSON, hex (the first 16
/// digits in reports).
pub fn candidate_id(state: &ProgramState) -> String {
    let json = serde_json::to_vec(state).unwrap_or_default();
    hex(&Sha256::digest(&json))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type CacheKey = (Arc<str>, Split, usize);

/// What the engine keeps across a checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ledger {
    spend: SpendReport,
    rollouts: Vec<(String, Split, Rollout)>,
    /// Proposal and reflection calls by key: their predictions.
    calls: Vec<(String, Prediction)>,
    trials: Vec<Trial>,
}

/// A checkpoint file.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    optimizer: String,
    inputs: String,
    ledger: Ledger,
}

struct Shared {
    config: EngineConfig,
    permits: Arc<Semaphore>,
    started: Instant,
    spend: Mutex<SpendReport>,
    cache: Mutex<HashMap<CacheKey, Rollout>>,
    /// Proposal and reflection answers by call key.
    calls: Mutex<HashMap<String, Prediction>>,
    /// The trials so far; a resumed run's first ones come from the ledger.
    trials: Mutex<Vec<Trial>>,
    /// Trials restored from a checkpoint, not yet replayed.
    restored_trials: Mutex<Vec<Trial>>,
    /// Replaying a resumed run: set until the first rollout or call the
    /// ledger cannot answer, and while set no budget is checked (the
    /// killed run passed those checks already).
    replaying: std::sync::atomic::AtomicBool,
    stopped: Mutex<Option<StopReason>>,
    bar: indicatif::ProgressBar,
}

impl Shared {
    /// A memoised LM run: answered from the ledger when the same program
    /// state, inputs and `key` ran before; else one permit, the run, its
    /// spend recorded under `purpose`, its answer kept. `None` once a
    /// budget is spent.
    #[allow(clippy::too_many_arguments)] // each is one part of the memo key or the run
    async fn call<'a>(
        &self,
        purpose: Purpose,
        state: &ProgramState,
        ids: &[u64],
        inputs: &Inputs,
        mut context: RunContext,
        key: &str,
        run: impl FnOnce(RunContext) -> futures::future::BoxFuture<'a, Result<Prediction>>,
    ) -> Option<Result<Prediction>> {
        let memo = {
            let mut hasher = Sha256::new();
            hasher.update(serde_json::to_vec(state).unwrap_or_default());
            hasher.update(serde_json::to_vec(inputs).unwrap_or_default());
            hasher.update(key.as_bytes());
            hex(&hasher.finalize())
        };
        if let Some(known) = self.calls.lock().get(&memo) {
            return Some(Ok(with_instance_ids(known.clone(), ids)));
        }
        let _permit = self.permit().await?;
        context
            .tags
            .insert(crate::module::ROLLOUT_TAG.to_owned(), key.to_owned());
        let result = run(context).await;
        self.record(purpose, result.as_ref().ok());
        if let Ok(prediction) = &result {
            self.calls
                .lock()
                .insert(memo, with_positions(prediction.clone(), ids));
        }
        Some(result)
    }

    /// Checks the budgets; once one is spent, records why and refuses.
    fn has_budget(&self) -> bool {
        if self.replaying.load(std::sync::atomic::Ordering::Relaxed) {
            return true;
        }
        if self.stopped.lock().is_some() {
            return false;
        }
        // No limit set: nothing to add up (every rollout asks).
        if self.config.budget == Budget::default() {
            return true;
        }
        let budget = &self.config.budget;
        let total = self.spend.lock().total();
        let over = if budget.max_calls.is_some_and(|max| total.calls >= max) {
            Some(format!(
                "max_calls: {} calls made (limit {})",
                total.calls,
                budget.max_calls.unwrap_or_default()
            ))
        } else if budget.max_tokens.is_some_and(|max| total.tokens() >= max) {
            Some(format!(
                "max_tokens: {} tokens used (limit {})",
                total.tokens(),
                budget.max_tokens.unwrap_or_default()
            ))
        } else if budget
            .max_cost_nanos
            .is_some_and(|max| total.cost_nanos >= max)
        {
            Some(format!(
                "max_usd: {:.6} spent (limit {:.6})",
                total.cost_nanos as f64 / 1e9,
                budget.max_cost_nanos.unwrap_or_default() as f64 / 1e9
            ))
        } else if budget
            .max_duration
            .is_some_and(|max| self.started.elapsed() >= max)
        {
            Some(format!(
                "max_duration: {:.1} s run",
                self.started.elapsed().as_secs_f64()
            ))
        } else {
            None
        };
        match over {
            Some(reason) => {
                tracing::info!(reason = %reason, "optimisation budget spent; stopping with the best program so far");
                *self.stopped.lock() = Some(StopReason::Budget(reason));
                false
            }
            None => true,
        }
    }

    /// A permit for one unit of LM work, or `None` once a budget is spent.
    /// Asking for one ends a replay: this work is not in the ledger.
    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        if self.replaying.load(std::sync::atomic::Ordering::Relaxed) {
            self.replaying
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.has_budget() {
            return None;
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        // The budget may have been spent while this waited.
        self.has_budget().then_some(permit)
    }

    /// Adds a prediction's calls to the spend of `purpose`.
    fn record(&self, purpose: Purpose, prediction: Option<&Prediction>) {
        let mut spent = Spent {
            runs: 1,
            ..Spent::default()
        };
        match prediction {
            Some(prediction) => {
                for call in &prediction.trace {
                    spent.calls += 1;
                    spent.input_tokens = spent.input_tokens.saturating_add(call.usage.input_tokens);
                    spent.output_tokens =
                        spent.output_tokens.saturating_add(call.usage.output_tokens);
                    if call.cached {
                        continue;
                    }
                    match self
                        .config
                        .pricer
                        .as_ref()
                        .and_then(|price| price(&call.provider, &call.model, &call.usage))
                    {
                        Some(nanos) => spent.cost_nanos = spent.cost_nanos.saturating_add(nanos),
                        None => spent.unpriced_calls += 1,
                    }
                }
            }
            // A failed run made at least one call; its usage is unknown.
            None => {
                spent.calls = 1;
                spent.unpriced_calls = u64::from(self.config.pricer.is_some());
                spent.failed_runs = 1;
            }
        }
        self.spend.lock().of_mut(purpose).add(&spent);
    }
}

/// The instance ids of `module`'s predictors, in `predictors()` order.
pub(crate) fn predictor_ids<P: Module + ?Sized>(module: &P) -> Vec<u64> {
    module
        .predictors()
        .into_iter()
        .map(|(_, p)| p.instance_id())
        .collect()
}

/// A prediction whose traces name predictors by their position in the
/// program's `predictors()` rather than by instance id: ids belong to one
/// program object, while the ledger must outlive it (a resumed run builds
/// new ones). Unknown ids become `u64::MAX`.
pub(crate) fn with_positions(mut prediction: Prediction, ids: &[u64]) -> Prediction {
    for trace in &mut prediction.traces {
        trace.predictor = ids
            .iter()
            .position(|&id| id == trace.predictor)
            .map_or(u64::MAX, |p| p as u64);
    }
    prediction
}

/// The reverse of [`with_positions`] for the program running now.
pub(crate) fn with_instance_ids(mut prediction: Prediction, ids: &[u64]) -> Prediction {
    for trace in &mut prediction.traces {
        trace.predictor = usize::try_from(trace.predictor)
            .ok()
            .and_then(|p| ids.get(p).copied())
            .unwrap_or(u64::MAX);
    }
    prediction
}

/// A share of an engine's concurrency and budget, for LM work that runs
/// outside [`Engine::evaluate`] (a bootstrapping teacher's runs).
#[derive(Clone)]
pub struct Gate(Arc<Shared>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A permit for one unit of LM work; `None` once a budget is spent.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.permit().await
    }

    /// Runs `module` on `inputs` as [`Engine::call`] does: memoised by the
    /// module's state, the inputs and `key`, within the budget.
    pub async fn run<P: Module + ?Sized>(
        &self,
        purpose: Purpose,
        module: &P,
        inputs: &Inputs,
        context: RunContext,
        key: &str,
    ) -> Option<Result<Prediction>> {
        let ids = predictor_ids(module);
        self.0
            .call(
                purpose,
                &program_state(module),
                &ids,
                inputs,
                context,
                key,
                |context| module.forward_with(inputs, context),
            )
            .await
    }
}

/// The engine: a student program, a metric, the data and the run's
/// settings. Cheap to share by reference; every optimiser takes one.
pub struct Engine<M> {
    student: M,
    metric: Metric,
    trainset: Arc<[Example]>,
    valset: Arc<[Example]>,
    shared: Arc<Shared>,
    programs: Mutex<HashMap<String, Arc<M>>>,
}

impl<M> std::fmt::Debug for Engine<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("trainset", &self.trainset.len())
            .field("valset", &self.valset.len())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<M: Module + Clone + 'static> Engine<M> {
    /// An engine over `student`, scoring with `metric`. The valset scores
    /// candidates; the trainset feeds bootstrapping and minibatches.
    pub fn new(
        student: M,
        metric: Metric,
        trainset: Vec<Example>,
        valset: Vec<Example>,
        config: EngineConfig,
    ) -> Result<Self> {
        if trainset.is_empty() {
            return Err(PromptError::Optimize {
                message: "the trainset is empty".into(),
            });
        }
        if valset.is_empty() {
            return Err(PromptError::Optimize {
                message: "the valset is empty".into(),
            });
        }
        if student.predictors().is_empty() {
            return Err(PromptError::Optimize {
                message: "the program has no predictor to optimise".into(),
            });
        }
        let bar = if config.progress && std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Ok(Self {
            student,
            metric,
            trainset: trainset.into(),
            valset: valset.into(),
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
                config,
                started: Instant::now(),
                spend: Mutex::new(SpendReport::default()),
                cache: Mutex::new(HashMap::new()),
                calls: Mutex::new(HashMap::new()),
                trials: Mutex::new(Vec::new()),
                restored_trials: Mutex::new(Vec::new()),
                replaying: std::sync::atomic::AtomicBool::new(false),
                stopped: Mutex::new(None),
                bar,
            }),
            programs: Mutex::new(HashMap::new()),
        })
    }

    /// The student program.
    pub fn student(&self) -> &M {
        &self.student
    }

    /// The metric.
    pub fn metric(&self) -> &Metric {
        &self.metric
    }

    /// The trainset.
    pub fn trainset(&self) -> &[Example] {
        &self.trainset
    }

    /// The valset.
    pub fn valset(&self) -> &[Example] {
        &self.valset
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// What was spent so far (restored spend included after a resume).
    pub fn spend(&self) -> SpendReport {
        *self.shared.spend.lock()
    }

    /// Why new work is refused, once a budget is spent.
    pub fn stopped(&self) -> Option<StopReason> {
        self.shared.stopped.lock().clone()
    }

    /// A generator for one `purpose` at one `step`, seeded from the run's
    /// seed: the same three always give the same draws.
    pub fn rng(&self, purpose: &str, step: u64) -> StdRng {
        let mut hasher = Sha256::new();
        hasher.update(self.shared.config.seed.to_le_bytes());
        hasher.update(purpose.as_bytes());
        hasher.update(step.to_le_bytes());
        let digest = hasher.finalize();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&digest);
        StdRng::from_seed(seed)
    }

    /// The program a candidate state describes: the student with that state
    /// loaded (built once per candidate).
    pub fn program(&self, state: &ProgramState) -> Result<Arc<M>> {
        let id = candidate_id(state);
        if let Some(program) = self.programs.lock().get(&id) {
            return Ok(Arc::clone(program));
        }
        let mut program = self.student.clone();
        apply_state(&mut program, state)?;
        let program = Arc::new(program);
        self.programs.lock().insert(id, Arc::clone(&program));
        Ok(program)
    }

    /// The state of the student as given.
    pub fn initial_state(&self) -> ProgramState {
        program_state(&self.student)
    }

    /// Checks the budgets; once one is spent, records why and refuses.
    pub fn has_budget(&self) -> bool {
        self.shared.has_budget()
    }

    /// A handle that lets other code (a bootstrapping teacher's runs) share
    /// this engine's concurrency and budget.
    pub fn gate(&self) -> Gate {
        Gate(Arc::clone(&self.shared))
    }

    async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.permit().await
    }

    fn record(&self, purpose: Purpose, prediction: Option<&Prediction>) {
        self.shared.record(purpose, prediction);
    }

    /// Runs `module` on `inputs` for `purpose` (a proposal or reflection
    /// call): one permit, the spend recorded, the answer kept in the ledger
    /// under `key` (what makes the call distinct: a round, a rollout id),
    /// so a resumed run gets the same answer without paying again. `None`
    /// once a budget is spent.
    pub async fn call<P: Module + ?Sized>(
        &self,
        purpose: Purpose,
        module: &P,
        inputs: &Inputs,
        key: &str,
    ) -> Option<Result<Prediction>> {
        let context = self.shared.config.context.clone();
        let ids = predictor_ids(module);
        self.shared
            .call(
                purpose,
                &program_state(module),
                &ids,
                inputs,
                context,
                key,
                |context| module.forward_with(inputs, context),
            )
            .await
    }

    /// Adds a trial to the log. While a resumed run replays, the trial the
    /// killed run logged at that place is kept instead (with what it cost
    /// then; replayed work costs nothing now).
    pub fn log_trial(&self, trial: Trial) -> Trial {
        let mut trials = self.shared.trials.lock();
        let logged = {
            let mut restored = self.shared.restored_trials.lock();
            if restored.is_empty() {
                trial
            } else {
                let kept = restored.remove(0);
                if kept.candidate == trial.candidate && kept.kind == trial.kind {
                    kept
                } else {
                    // The replay took another path (a non-deterministic LM
                    // or metric): log what happens now, not what happened.
                    tracing::warn!(
                        trial = trial.index,
                        "the resumed run left the checkpoint's path here; its later trials are run anew"
                    );
                    restored.clear();
                    trial
                }
            }
        };
        trials.push(logged.clone());
        logged
    }

    /// The trials logged so far.
    pub fn trials(&self) -> Vec<Trial> {
        self.shared.trials.lock().clone()
    }

    /// The number the next trial gets (from 1).
    pub fn next_trial(&self) -> u64 {
        self.shared.trials.lock().len() as u64 + 1
    }

    /// Rollouts of `state` on the examples `indices` of `split`, from the
    /// cache where they ran before, the rest concurrently. Results are in
    /// the order of `indices` whatever order they finish in; a budget that
    /// runs out leaves the rest unrun (`complete` is then false).
    pub async fn evaluate(&self, state: &ProgramState, split: Split, indices: &[usize]) -> Scored {
        let id: Arc<str> = Arc::from(candidate_id(state));
        let program = match self.program(state) {
            Ok(program) => program,
            Err(error) => {
                // A state that does not fit the program scores 0 everywhere.
                let message = error.to_string();
                return Scored {
                    rollouts: indices
                        .iter()
                        .map(|&example| Rollout {
                            example,
                            score: 0.0,
                            feedback: None,
                            error: Some(message.clone()),
                            prediction: None,
                        })
                        .collect(),
                    complete: true,
                };
            }
        };
        let examples = match split {
            Split::Train => Arc::clone(&self.trainset),
            Split::Val => Arc::clone(&self.valset),
        };
        let ids = predictor_ids(&*program);
        let results: Vec<Option<Rollout>> = futures::stream::iter(indices.iter().map(|&index| {
            let (program, examples, id, ids) =
                (Arc::clone(&program), Arc::clone(&examples), &id, &ids);
            async move {
                let key = (Arc::clone(id), split, index);
                if let Some(hit) = self.shared.cache.lock().get(&key) {
                    return Some(hit.clone());
                }
                let example = examples.get(index)?;
                let _permit = self.permit().await?;
                let mut context = self.shared.config.context.clone();
                context.record_traces = true;
                let outcome = program.forward_with(&example.inputs, context).await;
                self.record(Purpose::Task, outcome.as_ref().ok());
                let rollout = self.score(index, example, outcome.map(|p| with_positions(p, ids)));
                self.shared.cache.lock().insert(key, rollout.clone());
                Some(rollout)
            }
        }))
        .buffered(self.shared.config.concurrency.max(1))
        .collect()
        .await;
        let complete = results.iter().all(Option::is_some);
        let rollouts: Vec<Rollout> = results.into_iter().flatten().collect();
        self.tick();
        Scored { rollouts, complete }
    }

    fn score(&self, index: usize, example: &Example, outcome: Result<Prediction>) -> Rollout {
        match outcome {
            Ok(prediction) => {
                let judged = self.metric.verdict(example, &prediction);
                Rollout {
                    example: index,
                    score: judged.as_ref().map_or(0.0, |j| j.score),
                    feedback: judged.as_ref().ok().and_then(|j| j.feedback.clone()),
                    error: judged.err().map(|e| format!("the metric failed: {e}")),
                    prediction: Some(Arc::new(prediction)),
                }
            }
            Err(error) => Rollout {
                example: index,
                score: 0.0,
                feedback: None,
                error: Some(error.to_string()),
                prediction: None,
            },
        }
    }

    /// Shows `message` (trial, best score so far) with the spend on the
    /// progress bar.
    pub fn progress(&self, message: &str) {
        if self.shared.bar.is_hidden() {
            return;
        }
        let total = self.spend().total();
        self.shared.bar.set_message(format!(
            "{message}  |  {} calls, {} tokens, ${:.4}",
            total.calls,
            total.tokens(),
            total.cost_nanos as f64 / 1e9
        ));
    }

    fn tick(&self) {
        self.shared.bar.tick();
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        self.shared.bar.finish_and_clear();
    }

    /// The fingerprint of everything a checkpoint must match to be resumed:
    /// the student's state, both datasets, the metric, the seed and
    /// `settings` (the optimiser's own).
    pub fn inputs_fingerprint(&self, settings: &impl Serialize) -> String {
        let mut hasher = Sha256::new();
        hasher.update(serde_json::to_vec(&self.initial_state()).unwrap_or_default());
        hasher.update(serde_json::to_vec(&*self.trainset).unwrap_or_default());
        hasher.update(serde_json::to_vec(&*self.valset).unwrap_or_default());
        hasher.update(self.metric.name().as_bytes());
        hasher.update(self.shared.config.seed.to_le_bytes());
        hasher.update(serde_json::to_vec(settings).unwrap_or_default());
        hex(&hasher.finalize())
    }

    /// Writes the ledger to the checkpoint file, atomically; without a
    /// checkpoint path, does nothing. `inputs` is
    /// [`Engine::inputs_fingerprint`] of the optimiser's settings.
    pub fn checkpoint(&self, optimizer: &str, inputs: &str) -> Result<()> {
        let Some(path) = &self.shared.config.checkpoint else {
            return Ok(());
        };
        let ledger = Ledger {
            spend: self.spend(),
            rollouts: {
                let cache = self.shared.cache.lock();
                let mut rollouts: Vec<(String, Split, Rollout)> = cache
                    .iter()
                    .map(|((id, split, _), rollout)| (id.to_string(), *split, rollout.clone()))
                    .collect();
                // A stable order: the same run writes the same file.
                rollouts.sort_by(|a, b| {
                    (&a.0, a.1 as u8, a.2.example).cmp(&(&b.0, b.1 as u8, b.2.example))
                });
                rollouts
            },
            calls: {
                let calls = self.shared.calls.lock();
                let mut calls: Vec<(String, Prediction)> =
                    calls.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                calls.sort_by(|a, b| a.0.cmp(&b.0));
                calls
            },
            trials: {
                // Trials not yet replayed stay in the file.
                let mut trials = self.trials();
                trials.extend(self.shared.restored_trials.lock().iter().cloned());
                trials
            },
        };
        let file = CheckpointFile {
            version: 1,
            optimizer: optimizer.to_owned(),
            inputs: inputs.to_owned(),
            ledger,
        };
        let io = |e: std::io::Error| PromptError::State {
            message: format!("cannot write the checkpoint {}: {e}", path.display()),
        };
        let text = serde_json::to_vec(&file).map_err(|e| PromptError::State {
            message: format!("cannot encode the checkpoint: {e}"),
        })?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, text).map_err(io)?;
        std::fs::rename(&temporary, path).map_err(io)
    }

    /// When resuming and the checkpoint file exists: restores its ledger
    /// (spend, rollouts, calls, trials) and starts a replay; returns how
    /// many trials the killed run had logged. An unreadable file, another
    /// optimiser's, or one written for other inputs is an error saying so.
    pub fn resume(&self, optimizer: &str, inputs: &str) -> Result<Option<usize>> {
        let config = &self.shared.config;
        let Some(path) = config.checkpoint.as_ref().filter(|_| config.resume) else {
            return Ok(None);
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(PromptError::State {
                    message: format!("cannot read the checkpoint {}: {error}", path.display()),
                });
            }
        };
        let file: CheckpointFile =
            serde_json::from_slice(&text).map_err(|e| PromptError::State {
                message: format!(
                    "{} is not a checkpoint of this version: {e}",
                    path.display()
                ),
            })?;
        if file.optimizer != optimizer {
            return Err(PromptError::State {
                message: format!(
                    "{} is a checkpoint of `{}`, not `{optimizer}`",
                    path.display(),
                    file.optimizer
                ),
            });
        }
        if file.inputs != inputs {
            return Err(PromptError::State {
                message: format!(
                    "{} was written for other inputs (program, data, metric, seed or settings differ); remove it or run without --resume",
                    path.display()
                ),
            });
        }
        let ledger = file.ledger;
        *self.shared.spend.lock() = ledger.spend;
        {
            let mut cache = self.shared.cache.lock();
            for (id, split, rollout) in ledger.rollouts {
                cache.insert((Arc::from(id), split, rollout.example), rollout);
            }
        }
        self.shared.calls.lock().extend(ledger.calls);
        let count = ledger.trials.len();
        *self.shared.restored_trials.lock() = ledger.trials;
        self.shared
            .replaying
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(count))
    }
}

/// Loads `state` into `program`: every predictor's instructions, demos and
/// settings. A predictor the state does not name keeps its own.
pub fn apply_state<M: Module + ?Sized>(program: &mut M, state: &ProgramState) -> Result<()> {
    let mut predictors: BTreeMap<String, _> = program.predictors_mut().into_iter().collect();
    for (name, saved) in &state.predictors {
        let predict = predictors.get_mut(name).ok_or_else(|| PromptError::State {
            message: format!("the candidate names a predictor `{name}` the program does not have"),
        })?;
        predict.load_state(saved.clone())?;
    }
    Ok(())
}

/// A 95% confidence interval of the mean of `scores`: Wilson's for scores
/// that are all 0 or 1 (a pass rate), else a percentile bootstrap of 2,000
/// resamples drawn with `seed`.
pub fn confidence_interval(scores: &[f64], seed: u64) -> [f64; 2] {
    if scores.is_empty() {
        return [0.0, 0.0];
    }
    if scores.iter().all(|&s| s == 0.0 || s == 1.0) {
        let passed = scores.iter().filter(|&&s| s == 1.0).count();
        return crate::evaluate::wilson_interval(passed, scores.len());
    }
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(seed);
    let n = scores.len();
    let mut means: Vec<f64> = (0..2_000)
        .map(|_| {
            (0..n)
                .map(|_| scores.get(rng.random_range(0..n)).copied().unwrap_or(0.0))
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((means.len() - 1) as f64 * q).round() as usize;
        means.get(index).copied().unwrap_or(0.0)
    };
    [at(0.025), at(0.975)]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn intervals() {
        let [lo, hi] = confidence_interval(&[1.0, 1.0, 0.0, 1.0], 1);
        assert!(lo < 0.75 && hi > 0.75 && lo >= 0.0 && hi <= 1.0);
        let [lo, hi] = confidence_interval(&[0.5, 0.7, 0.6, 0.4, 0.9], 1);
        assert!(lo <= 0.62 && hi >= 0.62, "{lo} {hi}");
        assert_eq!(
            confidence_interval(&[0.5, 0.7, 0.6], 3),
            confidence_interval(&[0.5, 0.7, 0.6], 3)
        );
        assert_eq!(confidence_interval(&[], 1), [0.0, 0.0]);
    }
}
