//! The engine: nodes (steps, parallel groups, maps) run in order over a
//! shared context, each with its retry policy, timeout, span and record.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dspex_core::protect::Backoff;
use dspex_core::{Breadcrumb, CorrelationId};
use dspex_prompt::{ChainOfThought, Inputs, Module, Predict, Prediction, ReAct, RunContext};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{StepError, WorkflowError};
use crate::report::{RunReport, StepRecord, StepStatus};

/// The values a run accumulates: initial inputs, then every step's outputs.
pub type Context = Map<String, Value>;

/// What a step sees: the context so far (with the current map item, if any)
/// and the run it belongs to.
pub struct Scope<'a> {
    values: &'a Context,
    parent: Option<&'a Scope<'a>>,
    run: &'a RunState,
    step: &'a str,
}

impl<'a> Scope<'a> {
    /// The value under `key`, looking through enclosing map items.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        match self.values.get(key) {
            Some(value) => Some(value),
            None => self.parent.and_then(|parent| parent.get(key)),
        }
    }

    /// The value under `key`, or an error naming the step and the key.
    pub fn require(&self, key: &str) -> Result<&'a Value, StepError> {
        self.get(key)
            .ok_or_else(|| StepError::missing_input(self.step, key))
    }

    /// The step's path.
    pub fn step(&self) -> &str {
        self.step
    }

    /// The run's correlation id.
    pub fn correlation_id(&self) -> &CorrelationId {
        &self.run.correlation_id
    }

    /// The context for LM calls made by this step: the run's correlation id,
    /// and the tags `workflow` and `step` next to the run's own tags, so every
    /// call's events and analytics rows name where they came from.
    pub fn run_context(&self) -> RunContext {
        let mut tags = self.run.tags.clone();
        tags.insert("workflow".to_owned(), self.run.workflow.to_string());
        tags.insert("step".to_owned(), self.step.to_owned());
        RunContext {
            correlation_id: Some(self.run.correlation_id.clone()),
            tags,
            record_traces: self.run.record_traces,
            temperature: self.run.temperature,
            hint: self.run.hint.clone(),
        }
    }

    /// A flat copy of everything visible.
    pub fn to_context(&self) -> Context {
        let mut out = self.parent.map(Scope::to_context).unwrap_or_default();
        out.extend(self.values.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// What a step produced.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// New values, merged into the context.
    pub values: Context,
    /// The module's prediction, for the report's LM calls and tokens.
    pub prediction: Option<Prediction>,
}

impl From<Context> for StepOutput {
    fn from(values: Context) -> Self {
        Self {
            values,
            prediction: None,
        }
    }
}

/// An async function from the context to new values.
pub trait Step: Send + Sync {
    /// Runs the step once (the engine handles retries and timeouts).
    fn run<'a>(&'a self, scope: &'a Scope<'a>) -> BoxFuture<'a, Result<StepOutput, StepError>>;
}

struct FnStep<F>(F);

impl<F, Fut> Step for FnStep<F>
where
    F: Fn(&Scope<'_>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<Context, StepError>> + Send + 'static,
{
    fn run<'a>(&'a self, scope: &'a Scope<'a>) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        let future = (self.0)(scope);
        Box::pin(async move { future.await.map(StepOutput::from) })
    }
}

/// When a failed step is tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retry).
    pub attempts: u32,
    /// The waits between attempts (full jitter, honouring Retry-After).
    pub backoff: Backoff,
    /// Error kinds never retried, even when retryable (`parse`, `rate_limited`).
    pub never_retry: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::none()
    }
}

impl RetryPolicy {
    /// One attempt.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            backoff: Backoff::default(),
            never_retry: Vec::new(),
        }
    }

    /// Up to `attempts` attempts with `base` as the first backoff's ceiling.
    pub fn attempts(attempts: u32, base: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            backoff: Backoff {
                max_retries: attempts.saturating_sub(1),
                base,
                ..Backoff::default()
            },
            never_retry: Vec::new(),
        }
    }

    /// Never retries errors of `kind`.
    #[must_use]
    pub fn never_retry(mut self, kind: impl Into<String>) -> Self {
        self.never_retry.push(kind.into());
        self
    }

    fn delay(&self, error: &StepError, attempt: u32) -> Option<Duration> {
        if attempt >= self.attempts || !error.retryable || self.never_retry.contains(&error.kind) {
            return None;
        }
        self.backoff.delay(attempt, error.retry_after)
    }
}

/// What happens when parallel branches write the same key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergeRule {
    /// It is an error (the default): two branches disagreeing silently is a bug.
    #[default]
    Error,
    /// The later branch (in declaration order) wins.
    LastWins,
    /// The key gets a list of every branch's value, in declaration order.
    Collect,
}

/// A module a step runs.
#[derive(Clone)]
pub enum StepModule {
    /// A predictor.
    Predict(Predict),
    /// A chain of thought.
    ChainOfThought(ChainOfThought),
    /// A ReAct agent with its tools.
    ReAct(Box<ReAct>),
    /// Any other module, shared (its predictors cannot be optimised in place).
    Shared(Arc<dyn Module>),
}

impl StepModule {
    fn as_module(&self) -> &dyn Module {
        match self {
            Self::Predict(p) => p,
            Self::ChainOfThought(c) => c,
            Self::ReAct(r) => r,
            Self::Shared(m) => m.as_ref(),
        }
    }
}

/// A module with the mapping of its fields to context keys.
#[derive(Clone)]
pub struct ModuleStep {
    module: StepModule,
    /// `(input field, context key)`; fields not listed read the key of their own name.
    inputs: Vec<(String, String)>,
    /// `(output field, context key)`; fields not listed write the key of their own name.
    outputs: Vec<(String, String)>,
    input_fields: Vec<String>,
}

impl Step for ModuleStep {
    fn run<'a>(&'a self, scope: &'a Scope<'a>) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(async move {
            let mut inputs = Inputs::new();
            for field in &self.input_fields {
                let key = self
                    .inputs
                    .iter()
                    .find(|(f, _)| f == field)
                    .map_or(field.as_str(), |(_, k)| k.as_str());
                inputs.insert(field.clone(), scope.require(key)?.clone());
            }
            let prediction = self
                .module
                .as_module()
                .forward_with(&inputs, scope.run_context())
                .await?;
            let mut values = Context::new();
            for (field, value) in &prediction.outputs {
                let key = self
                    .outputs
                    .iter()
                    .find(|(f, _)| f == field)
                    .map_or(field.as_str(), |(_, k)| k.as_str());
                values.insert(key.to_owned(), value.clone());
            }
            Ok(StepOutput {
                values,
                prediction: Some(prediction),
            })
        })
    }
}

#[derive(Clone)]
enum NodeKind {
    Func(Arc<dyn Step>),
    /// Boxed: a module step holds a whole predictor, several times the size
    /// of the other kinds.
    Module(Box<ModuleStep>),
    Parallel {
        branches: Vec<Node>,
        merge: MergeRule,
    },
    Map {
        over: String,
        item_as: String,
        output: String,
        collect: Option<String>,
        concurrency: usize,
        inner: Box<Node>,
    },
}

/// One node of a workflow: a step, a parallel group or a map.
#[derive(Clone)]
pub struct Node {
    name: Arc<str>,
    /// The path in reports: the name, under its parallel group's.
    path: Arc<str>,
    kind: NodeKind,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    /// Duration histograms by status, labelled once (labels allocate).
    metrics: Arc<std::sync::OnceLock<[metrics::Histogram; 4]>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("path", &self.path)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Node {
    fn new(name: &str, kind: NodeKind) -> Self {
        Self {
            name: Arc::from(name),
            path: Arc::from(name),
            kind,
            retry: RetryPolicy::none(),
            timeout: None,
            metrics: Arc::default(),
        }
    }

    fn duration_histogram(&self, workflow: &str, status: StepStatus) -> &metrics::Histogram {
        let all = self.metrics.get_or_init(|| {
            let make = |status: &'static str| {
                metrics::histogram!(
                    "dspex_workflow_step_duration_seconds",
                    "workflow" => workflow.to_owned(),
                    "step" => self.path.to_string(),
                    "status" => status,
                )
            };
            [
                make("succeeded"),
                make("failed"),
                make("timed_out"),
                make("cancelled"),
            ]
        });
        let [succeeded, failed, timed_out, cancelled] = all;
        match status {
            StepStatus::Succeeded => succeeded,
            StepStatus::Failed => failed,
            StepStatus::TimedOut => timed_out,
            StepStatus::Cancelled => cancelled,
        }
    }

    /// A step running `f`: a function from the scope to new values. The
    /// returned future must own what it needs (copy values out of the scope).
    pub fn step<F, Fut>(name: &str, f: F) -> Self
    where
        F: Fn(&Scope<'_>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Context, StepError>> + Send + 'static,
    {
        Self::new(name, NodeKind::Func(Arc::new(FnStep(f))))
    }

    /// A step running `step`.
    pub fn custom(name: &str, step: Arc<dyn Step>) -> Self {
        Self::new(name, NodeKind::Func(step))
    }

    /// A step running a module. Its input fields read the context keys of the
    /// same names, and its outputs write them, unless mapped otherwise.
    pub fn module(name: &str, module: StepModule) -> Self {
        let input_fields = match &module {
            StepModule::Predict(p) => p
                .signature()
                .inputs()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            StepModule::ChainOfThought(c) => c
                .predict()
                .signature()
                .inputs()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            StepModule::ReAct(r) => r
                .signature()
                .inputs()
                .iter()
                .map(|f| f.name.clone())
                .collect(),
            StepModule::Shared(_) => Vec::new(),
        };
        Self::new(
            name,
            NodeKind::Module(Box::new(ModuleStep {
                module,
                inputs: Vec::new(),
                outputs: Vec::new(),
                input_fields,
            })),
        )
    }

    /// Reads input `field` from context key `key` (module steps).
    #[must_use]
    pub fn input(mut self, field: &str, key: &str) -> Self {
        if let NodeKind::Module(step) = &mut self.kind {
            step.inputs.retain(|(f, _)| f != field);
            step.inputs.push((field.to_owned(), key.to_owned()));
            if !step.input_fields.iter().any(|f| f == field) {
                step.input_fields.push(field.to_owned());
            }
        }
        self
    }

    /// Writes output `field` to context key `key` (module steps).
    #[must_use]
    pub fn output(mut self, field: &str, key: &str) -> Self {
        if let NodeKind::Module(step) = &mut self.kind {
            step.outputs.retain(|(f, _)| f != field);
            step.outputs.push((field.to_owned(), key.to_owned()));
        }
        self
    }

    /// Runs `branches` concurrently on the same context and merges their outputs.
    pub fn parallel(name: &str, branches: Vec<Node>) -> Self {
        Self::new(
            name,
            NodeKind::Parallel {
                branches,
                merge: MergeRule::Error,
            },
        )
    }

    /// How a parallel group merges branches that write the same key.
    #[must_use]
    pub fn merge(mut self, rule: MergeRule) -> Self {
        if let NodeKind::Parallel { merge, .. } = &mut self.kind {
            *merge = rule;
        }
        self
    }

    /// Runs `inner` once per element of the list under `over` (each run sees
    /// the element as `item` and its position as `index`), at most
    /// `concurrency` at once, and writes the list of their outputs (objects)
    /// to `output`, in input order.
    pub fn map(name: &str, over: &str, output: &str, inner: Node) -> Self {
        Self::new(
            name,
            NodeKind::Map {
                over: over.to_owned(),
                item_as: "item".to_owned(),
                output: output.to_owned(),
                collect: None,
                concurrency: 4,
                inner: Box::new(inner),
            },
        )
    }

    /// The key each map run sees its element under (default `item`).
    #[must_use]
    pub fn item_as(mut self, key: &str) -> Self {
        if let NodeKind::Map { item_as, .. } = &mut self.kind {
            key.clone_into(item_as);
        }
        self
    }

    /// Collects only `key` of each map run's outputs (a list of values rather
    /// than of objects).
    #[must_use]
    pub fn collect(mut self, key: &str) -> Self {
        if let NodeKind::Map { collect, .. } = &mut self.kind {
            *collect = Some(key.to_owned());
        }
        self
    }

    /// At most `n` map runs at once.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        if let NodeKind::Map { concurrency, .. } = &mut self.kind {
            *concurrency = n.max(1);
        }
        self
    }

    /// The retry policy (steps and modules).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// A bound on each attempt.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_paths(&mut self, prefix: Option<&str>) {
        self.path = match prefix {
            Some(prefix) => Arc::from(format!("{prefix}/{}", self.name)),
            None => Arc::clone(&self.name),
        };
        let path = Arc::clone(&self.path);
        match &mut self.kind {
            NodeKind::Parallel { branches, .. } => {
                for branch in branches {
                    branch.set_paths(Some(&path));
                }
            }
            NodeKind::Map { inner, .. } => inner.set_paths(Some(&path)),
            NodeKind::Func(_) | NodeKind::Module(_) => {}
        }
    }

    fn visit<'a>(&'a self, out: &mut Vec<&'a Node>) {
        out.push(self);
        match &self.kind {
            NodeKind::Parallel { branches, .. } => branches.iter().for_each(|b| b.visit(out)),
            NodeKind::Map { inner, .. } => inner.visit(out),
            NodeKind::Func(_) | NodeKind::Module(_) => {}
        }
    }

    fn predictors_into<'a>(&'a self, out: &mut Vec<(String, &'a Predict)>) {
        match &self.kind {
            NodeKind::Module(step) => {
                let inner = step.module.as_module().predictors();
                let single = inner.len() == 1;
                for (name, predict) in inner {
                    let full = if single {
                        self.path.to_string()
                    } else {
                        format!("{}.{name}", self.path)
                    };
                    out.push((full, predict));
                }
            }
            NodeKind::Parallel { branches, .. } => {
                branches.iter().for_each(|b| b.predictors_into(out));
            }
            NodeKind::Map { inner, .. } => inner.predictors_into(out),
            NodeKind::Func(_) => {}
        }
    }

    fn predictors_mut_into<'a>(&'a mut self, out: &mut Vec<(String, &'a mut Predict)>) {
        let path = Arc::clone(&self.path);
        match &mut self.kind {
            NodeKind::Module(step) => {
                let inner: Vec<(String, &mut Predict)> = match &mut step.module {
                    StepModule::Predict(p) => p.predictors_mut(),
                    StepModule::ChainOfThought(c) => c.predictors_mut(),
                    StepModule::ReAct(r) => r.predictors_mut(),
                    StepModule::Shared(_) => Vec::new(),
                };
                let single = inner.len() == 1;
                for (name, predict) in inner {
                    let full = if single {
                        path.to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    out.push((full, predict));
                }
            }
            NodeKind::Parallel { branches, .. } => {
                branches.iter_mut().for_each(|b| b.predictors_mut_into(out));
            }
            NodeKind::Map { inner, .. } => inner.predictors_mut_into(out),
            NodeKind::Func(_) => {}
        }
    }
}

/// A named list of nodes run in order over a shared context.
#[derive(Clone, Debug)]
pub struct Workflow {
    name: Arc<str>,
    nodes: Vec<Node>,
    inputs: Vec<String>,
    outputs: Option<Vec<String>>,
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The run's correlation id; generated when `None`.
    pub correlation_id: Option<CorrelationId>,
    /// Tags on every LM call of the run (next to `workflow` and `step`).
    pub tags: BTreeMap<String, String>,
    /// Cancels the run: its in-flight steps are dropped.
    pub cancel: Option<CancellationToken>,
    /// Records each predictor's inputs and outputs (for optimisers).
    pub record_traces: bool,
    /// A temperature every module step uses instead of its own (set when
    /// the workflow is an attempt of `BestOfN` or `Refine`).
    pub temperature: Option<f32>,
    /// Advice every module step shows the model (`Refine`'s hint).
    pub hint: Option<String>,
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutput {
    /// The final context.
    pub context: Context,
    /// Per-step records and totals.
    pub report: RunReport,
    /// Every module step's calls, usage and traces, merged.
    pub prediction: Prediction,
}

impl Workflow {
    /// An empty workflow.
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: None,
        }
    }

    /// Declares the context keys a run must be given (files do, with
    /// `inputs = [...]`); evaluation reads them from datasets.
    #[must_use]
    pub fn inputs(mut self, keys: &[&str]) -> Self {
        self.inputs = keys.iter().map(|k| (*k).to_owned()).collect();
        self
    }

    /// The declared input keys.
    pub fn input_keys(&self) -> &[String] {
        &self.inputs
    }

    /// The declared inputs `given` lacks, in declaration order: a run
    /// without them is refused before any step starts (see [`Workflow::run`]).
    pub fn missing_inputs<'a>(&'a self, given: &Context) -> Vec<&'a str> {
        self.inputs
            .iter()
            .filter(|key| !given.contains_key(key.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// The declared output keys, when declared.
    pub fn output_keys(&self) -> Option<&[String]> {
        self.outputs.as_deref()
    }

    /// Appends `node`.
    #[must_use]
    pub fn then(mut self, mut node: Node) -> Self {
        node.set_paths(None);
        self.nodes.push(node);
        self
    }

    /// The context keys that make up the workflow's outputs when it runs as a
    /// [`Module`] (all keys when not set).
    #[must_use]
    pub fn outputs(mut self, keys: &[&str]) -> Self {
        self.outputs = Some(keys.iter().map(|k| (*k).to_owned()).collect());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the definition: unique step paths, non-empty groups.
    pub fn validate(&self) -> Result<(), WorkflowError> {
        let mut all = Vec::new();
        for node in &self.nodes {
            node.visit(&mut all);
        }
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for node in &all {
            if node.name.is_empty() {
                problems.push("a step has an empty name".to_owned());
            }
            if !seen.insert(&*node.path) {
                problems.push(format!("two steps are named `{}`", node.path));
            }
            if let NodeKind::Parallel { branches, .. } = &node.kind
                && branches.is_empty()
            {
                problems.push(format!("parallel step `{}` has no branches", node.path));
            }
        }
        if self.nodes.is_empty() {
            problems.push("the workflow has no steps".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WorkflowError::Invalid {
                workflow: self.name.to_string(),
                problems,
            })
        }
    }

    /// Runs the workflow from `initial`: each node's outputs are merged into
    /// the context in order. Stops at the first failing step (after its
    /// retries) and returns its error with the history of the run.
    ///
    /// A run missing a declared input is refused with
    /// [`WorkflowError::Invalid`] before any step starts, so no LM call is
    /// made (and paid for) by steps ahead of the one that needs it.
    pub async fn run(
        &self,
        initial: Context,
        options: RunOptions,
    ) -> Result<RunOutput, WorkflowError> {
        let missing = self.missing_inputs(&initial);
        if !missing.is_empty() {
            return Err(WorkflowError::Invalid {
                workflow: self.name.to_string(),
                problems: missing
                    .iter()
                    .map(|key| format!("the input `{key}` was not given"))
                    .collect(),
            });
        }
        let correlation_id = options
            .correlation_id
            .unwrap_or_else(CorrelationId::generate);
        let state = RunState {
            workflow: Arc::clone(&self.name),
            correlation_id: correlation_id.clone(),
            tags: options.tags,
            record_traces: options.record_traces,
            temperature: options.temperature,
            hint: options.hint,
            start: Instant::now(),
            seq: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            prediction: Mutex::new(Prediction::default()),
        };
        let span = tracing::info_span!(
            "workflow.run",
            workflow = %self.name,
            correlation_id = %correlation_id,
        );
        let body = self.run_nodes(initial, &state).instrument(span);
        let result = match &options.cancel {
            Some(token) => {
                tokio::select! {
                    biased;
                    () = token.cancelled() => None,
                    result = body => Some(result),
                }
            }
            None => Some(body.await),
        };
        // Every step future is dropped by now, so cancelled steps have
        // recorded themselves.
        let duration = state.start.elapsed();
        let history = state.history();
        match result {
            None => Err(WorkflowError::Cancelled {
                workflow: self.name.to_string(),
                correlation_id,
                history,
            }),
            Some(Ok(context)) => Ok(RunOutput {
                context,
                report: RunReport::new(&self.name, correlation_id, "succeeded", duration, history),
                prediction: state.prediction.into_inner(),
            }),
            Some(Err(failure)) => {
                let report = RunReport::new(
                    &self.name,
                    correlation_id.clone(),
                    "failed",
                    duration,
                    history,
                );
                Err(WorkflowError::StepFailed {
                    workflow: self.name.to_string(),
                    step: failure.step.to_string(),
                    error: Box::new(failure.error),
                    correlation_id,
                    breadcrumbs: failure.breadcrumbs,
                    report: Box::new(report),
                })
            }
        }
    }

    async fn run_nodes(&self, mut context: Context, state: &RunState) -> Result<Context, Failure> {
        for node in &self.nodes {
            let scope = Scope {
                values: &context,
                parent: None,
                run: state,
                step: &node.path,
            };
            let outputs = exec(node, &scope, &node.path).await?;
            context.extend(outputs);
        }
        Ok(context)
    }
}

impl Module for Workflow {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, dspex_prompt::Result<Prediction>> {
        Box::pin(async move {
            let started = Instant::now();
            let options = RunOptions {
                correlation_id: run.correlation_id,
                tags: run.tags,
                cancel: None,
                record_traces: run.record_traces,
                temperature: run.temperature,
                hint: run.hint,
            };
            let output = self.run(inputs.clone(), options).await?;
            let mut prediction = output.prediction;
            prediction.outputs = match &self.outputs {
                Some(keys) => keys
                    .iter()
                    .filter_map(|k| output.context.get(k).map(|v| (k.clone(), v.clone())))
                    .collect(),
                None => output.context,
            };
            prediction.latency = started.elapsed();
            Ok(prediction)
        })
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        let mut out = Vec::new();
        for node in &self.nodes {
            node.predictors_into(&mut out);
        }
        out
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            node.predictors_mut_into(&mut out);
        }
        out
    }
}

/// What every node of a run shares.
pub(crate) struct RunState {
    workflow: Arc<str>,
    correlation_id: CorrelationId,
    tags: BTreeMap<String, String>,
    record_traces: bool,
    temperature: Option<f32>,
    hint: Option<String>,
    start: Instant,
    seq: AtomicU64,
    records: Mutex<Vec<(u64, StepRecord)>>,
    prediction: Mutex<Prediction>,
}

impl RunState {
    fn history(&self) -> Vec<StepRecord> {
        let mut records = std::mem::take(&mut *self.records.lock());
        records.sort_by_key(|(seq, _)| *seq);
        records.into_iter().map(|(_, r)| r).collect()
    }
}

/// A step failed: where, why, and its breadcrumbs.
struct Failure {
    step: Arc<str>,
    error: StepError,
    breadcrumbs: Vec<Breadcrumb>,
}

/// Records a step when it ends, and as cancelled when its future is dropped
/// before that (the run was cancelled, or a sibling branch failed).
struct Recording<'a> {
    state: &'a RunState,
    node: &'a Node,
    seq: u64,
    record: Option<StepRecord>,
    clock: Instant,
}

impl<'a> Recording<'a> {
    fn start(state: &'a RunState, node: &'a Node, path: &str) -> Self {
        let clock = Instant::now();
        Self {
            state,
            node,
            seq: state.seq.fetch_add(1, Ordering::Relaxed),
            record: Some(StepRecord {
                step: path.to_owned(),
                status: StepStatus::Cancelled,
                started: clock.saturating_duration_since(state.start),
                duration: Duration::ZERO,
                attempts: 0,
                lm_calls: 0,
                input_tokens: 0,
                output_tokens: 0,
                cache_hits: 0,
                error: None,
            }),
            clock,
        }
    }

    fn record(&mut self) -> Option<&mut StepRecord> {
        self.record.as_mut()
    }

    fn finish(mut self, status: StepStatus) {
        if let Some(record) = &mut self.record {
            record.status = status;
        }
        // Drop does the rest.
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration = self.clock.elapsed();
            self.node
                .duration_histogram(&self.state.workflow, record.status)
                .record(record.duration.as_secs_f64());
            self.state.records.lock().push((self.seq, record));
        }
    }
}

/// Runs one node; returns the values it adds to the context.
fn exec<'a>(
    node: &'a Node,
    scope: &'a Scope<'a>,
    path: &'a str,
) -> BoxFuture<'a, Result<Context, Failure>> {
    let span = tracing::info_span!("workflow.step", step = %path);
    match &node.kind {
        NodeKind::Func(step) => leaf(node, step.as_ref(), scope, path)
            .instrument(span)
            .boxed(),
        NodeKind::Module(step) => leaf(node, &**step, scope, path).instrument(span).boxed(),
        NodeKind::Parallel { branches, merge } => parallel(node, branches, *merge, scope, path)
            .instrument(span)
            .boxed(),
        NodeKind::Map {
            over,
            item_as,
            output,
            collect,
            concurrency,
            inner,
        } => {
            let spec = MapSpec {
                over,
                item_as,
                output,
                collect: collect.as_deref(),
                concurrency: *concurrency,
            };
            map(node, spec, inner, scope, path).instrument(span).boxed()
        }
    }
}

/// Runs a step (a function or a module) with its node's retry policy and
/// timeout, and records it.
async fn leaf<'a>(
    node: &'a Node,
    step: &'a dyn Step,
    scope: &'a Scope<'a>,
    path: &'a str,
) -> Result<Context, Failure> {
    let state = scope.run;
    let mut recording = Recording::start(state, node, path);
    let mut crumbs: Vec<Breadcrumb> = Vec::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let future = step.run(scope);
        let result = match node.timeout {
            Some(limit) => match tokio::time::timeout(limit, future).await {
                Ok(result) => result,
                Err(_) => Err(StepError::of_kind(
                    "timeout",
                    format!(
                        "step `{path}` ran past its timeout of {}",
                        dspex_core::context::format_duration(limit)
                    ),
                )
                .retryable()),
            },
            None => future.await,
        };
        if let Some(record) = recording.record() {
            record.attempts = attempt;
        }
        match result {
            Ok(output) => {
                if let Some(prediction) = output.prediction {
                    if let Some(record) = recording.record() {
                        record.lm_calls = u32::try_from(prediction.trace.len()).unwrap_or(u32::MAX);
                        record.input_tokens = prediction.usage.input_tokens;
                        record.output_tokens = prediction.usage.output_tokens;
                        record.cache_hits = u32::try_from(
                            prediction.trace.iter().filter(|call| call.cached).count(),
                        )
                        .unwrap_or(u32::MAX);
                    }
                    state.prediction.lock().absorb(prediction);
                }
                recording.finish(StepStatus::Succeeded);
                return Ok(output.values);
            }
            Err(error) => {
                let delay = node.retry.delay(&error, attempt);
                let message = match delay {
                    Some(delay) => format!(
                        "attempt {attempt} failed: {error}; retrying in {}",
                        dspex_core::context::format_duration(delay)
                    ),
                    None => format!("attempt {attempt} failed: {error}"),
                };
                crumbs.push(Breadcrumb::new("step", message));
                match delay {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => {
                        let status = if error.kind == "timeout" {
                            StepStatus::TimedOut
                        } else {
                            StepStatus::Failed
                        };
                        if let Some(record) = recording.record() {
                            record.error = Some(error.to_string());
                        }
                        recording.finish(status);
                        if let Some(context) = &error.context {
                            crumbs.extend(context.breadcrumbs.iter().cloned());
                        }
                        return Err(Failure {
                            step: Arc::from(path),
                            error,
                            breadcrumbs: crumbs,
                        });
                    }
                }
            }
        }
    }
}

async fn parallel<'a>(
    node: &'a Node,
    branches: &'a [Node],
    merge: MergeRule,
    scope: &'a Scope<'a>,
    path: &'a str,
) -> Result<Context, Failure> {
    let recording = Recording::start(scope.run, node, path);
    // All branches run inside this future: dropping it (a cancelled run)
    // drops them too. The first failure drops the others.
    let mut running: futures::stream::FuturesUnordered<_> = branches
        .iter()
        .enumerate()
        .map(|(i, branch)| {
            let branch_scope = Scope {
                values: scope.values,
                parent: scope.parent,
                run: scope.run,
                step: &branch.path,
            };
            async move {
                let result = exec(branch, &branch_scope, &branch.path).await;
                (i, result)
            }
        })
        .collect();
    let mut outputs: Vec<Option<Context>> = vec![None; branches.len()];
    while let Some((i, result)) = running.next().await {
        match result {
            Ok(values) => {
                if let Some(slot) = outputs.get_mut(i) {
                    *slot = Some(values);
                }
            }
            Err(failure) => {
                drop(running);
                let mut recording = recording;
                if let Some(record) = recording.record() {
                    record.error = Some(format!("branch `{}` failed", failure.step));
                }
                recording.finish(StepStatus::Failed);
                return Err(failure);
            }
        }
    }
    let mut merged = Context::new();
    // Per key: the first branch that wrote it, and how many did.
    let mut writers: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, values) in outputs.into_iter().enumerate() {
        for (key, value) in values.unwrap_or_default() {
            let writer = writers.entry(key.clone()).or_insert((i, 0));
            writer.1 += 1;
            let (first, count) = *writer;
            match merged.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(mut slot) => match merge {
                    MergeRule::Error => {
                        let name = |b: usize| branches.get(b).map_or("", Node::name);
                        let error = StepError::of_kind(
                            "merge_conflict",
                            format!(
                                "branches `{}` and `{}` of parallel step `{}` both write `{}`; give the step a merge rule (last_wins or collect)",
                                name(first),
                                name(i),
                                node.name,
                                slot.key()
                            ),
                        );
                        let mut recording = recording;
                        if let Some(record) = recording.record() {
                            record.error = Some(error.to_string());
                        }
                        recording.finish(StepStatus::Failed);
                        return Err(Failure {
                            step: Arc::from(path),
                            error,
                            breadcrumbs: Vec::new(),
                        });
                    }
                    MergeRule::LastWins => {
                        slot.insert(value);
                    }
                    MergeRule::Collect => {
                        let existing = slot.get_mut();
                        if count == 2 {
                            *existing = Value::Array(vec![existing.take(), value]);
                        } else if let Value::Array(list) = existing {
                            list.push(value);
                        }
                    }
                },
            }
        }
    }
    recording.finish(StepStatus::Succeeded);
    Ok(merged)
}

struct MapSpec<'a> {
    over: &'a str,
    item_as: &'a str,
    output: &'a str,
    collect: Option<&'a str>,
    concurrency: usize,
}

async fn map<'a>(
    node: &'a Node,
    spec: MapSpec<'a>,
    inner: &'a Node,
    scope: &'a Scope<'a>,
    path: &'a str,
) -> Result<Context, Failure> {
    let mut recording = Recording::start(scope.run, node, path);
    let items = match scope.get(spec.over) {
        Some(Value::Array(items)) => items,
        other => {
            let found = match other {
                None => "nothing".to_owned(),
                Some(value) => format!("a {}", json_type(value)),
            };
            let error = StepError::of_kind(
                "invalid_inputs",
                format!(
                    "map step `{}` runs over `{}`, which must be a list; found {found}",
                    node.name, spec.over
                ),
            );
            if let Some(record) = recording.record() {
                record.error = Some(error.to_string());
            }
            recording.finish(StepStatus::Failed);
            return Err(Failure {
                step: Arc::from(path),
                error,
                breadcrumbs: Vec::new(),
            });
        }
    };
    // Each run's item and index, and its path, live here so runs can borrow them.
    let locals: Vec<(Context, String)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut values = Context::new();
            values.insert(spec.item_as.to_owned(), item.clone());
            values.insert("index".to_owned(), Value::from(i));
            (values, format!("{path}[{i}]"))
        })
        .collect();
    // Collected first: a stream holding the mapping closure trips the
    // compiler's `Send` check on higher-ranked lifetimes.
    let pending: Vec<BoxFuture<'_, Result<Context, Failure>>> = locals
        .iter()
        .map(|(values, item_path)| run_item(inner, scope, values, item_path))
        .collect();
    let mut runs = futures::stream::iter(pending).buffered(spec.concurrency);
    let mut collected = Vec::with_capacity(locals.len());
    while let Some(result) = runs.next().await {
        match result {
            Ok(mut values) => collected.push(match spec.collect {
                Some(key) => values.remove(key).unwrap_or(Value::Null),
                None => Value::Object(values),
            }),
            Err(failure) => {
                // The first failure stops the map: the runs in flight are dropped.
                drop(runs);
                if let Some(record) = recording.record() {
                    record.error = Some(format!("`{}` failed", failure.step));
                }
                recording.finish(StepStatus::Failed);
                return Err(failure);
            }
        }
    }
    recording.finish(StepStatus::Succeeded);
    let mut out = Context::new();
    out.insert(spec.output.to_owned(), Value::Array(collected));
    Ok(out)
}

/// One run of a map step's inner node, seeing its item over the outer scope.
fn run_item<'a>(
    inner: &'a Node,
    outer: &'a Scope<'a>,
    values: &'a Context,
    path: &'a str,
) -> BoxFuture<'a, Result<Context, Failure>> {
    Box::pin(async move {
        let scope = Scope {
            values,
            parent: Some(outer),
            run: outer.run,
            step: path,
        };
        exec(inner, &scope, path).await
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}
