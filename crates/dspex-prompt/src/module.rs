//! Modules: [`Predict`], [`ChainOfThought`], the [`Module`] trait they share,
//! batch execution, and saving and loading program state.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_client::{Client, ClientConfig, ScriptedLm};
//! use dspex_prompt::{Lm, Module, Predict, Signature};
//! use serde_json::json;
//!
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", ScriptedLm::replies(["[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"])).await?;
//! let predict = Predict::new(Signature::parse("question -> answer: int")?, Lm::new(&client, "dummy"));
//! let inputs = json!({"question": "What is 2+2?"});
//! let prediction = predict.forward(inputs.as_object().unwrap()).await?;
//! assert_eq!(prediction.get::<i64>("answer")?, 4);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_client::{ChatParams, Client, Message, ProviderKind, RequestOptions, Usage};
use dspex_core::CorrelationId;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::adapter::{Adapter, Example};
use crate::error::{PromptError, Result};
use crate::signature::{Field, FieldType, Signature};
use crate::template::PromptTemplate;

/// Input values by field name.
pub type Inputs = Map<String, Value>;

/// Why an LM call was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallPurpose {
    /// The prediction itself.
    Predict,
    /// The re-ask for fields that failed to parse.
    Reask,
}

/// One LM call in a prediction's trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmCall {
    /// The run it belonged to.
    pub correlation_id: CorrelationId,
    /// The provider id.
    pub provider: Arc<str>,
    /// The model that answered.
    pub model: String,
    /// Tokens used.
    pub usage: Usage,
    /// Its latency.
    #[serde(rename = "latency_ms", with = "dspex_client::duration_ms")]
    pub latency: Duration,
    /// HTTP attempts.
    pub attempts: u32,
    /// Why it was made.
    pub purpose: CallPurpose,
    /// Answered by the response cache (then `usage` is zero).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// A module's result: typed outputs, usage, latency and the trace of LM calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Output values by field name (the first completion's when `n` > 1).
    pub outputs: Map<String, Value>,
    /// Every completion's outputs when `n` > 1 (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completions: Vec<Map<String, Value>>,
    /// Tokens used by every call.
    pub usage: Usage,
    /// Time from start to end.
    #[serde(rename = "latency_ms", with = "dspex_client::duration_ms")]
    pub latency: Duration,
    /// The LM calls made, in order.
    pub trace: Vec<LmCall>,
    /// Fields repaired locally while parsing.
    pub repairs: u32,
    /// Re-asks made for fields that failed to parse (at most one per call).
    pub reasks: u32,
    /// What each predictor saw and answered, in order; recorded only when the
    /// run asks for it ([`RunContext::record_traces`]), as optimisers do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<PredictorTrace>,
}

/// One predictor's inputs and outputs within a prediction: the raw material of
/// bootstrapped few-shot demos.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorTrace {
    /// The predictor's [`Predict::instance_id`].
    pub predictor: u64,
    /// What it was given and what it answered.
    pub example: Example,
}

impl Prediction {
    /// An output as `T`; the error names the field.
    pub fn get<T: DeserializeOwned>(&self, field: &str) -> Result<T> {
        let value = self.outputs.get(field).ok_or_else(|| PromptError::Parse {
            problems: vec![format!("no output field `{field}`")],
            reply: String::new(),
        })?;
        serde_json::from_value(value.clone()).map_err(|e| PromptError::Parse {
            problems: vec![format!("`{field}`: {e}")],
            reply: value.to_string(),
        })
    }

    /// A text output.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.outputs.get(field).and_then(Value::as_str)
    }

    /// Adds `other`'s calls, usage, counts and traces to this prediction (its
    /// outputs are left alone): how a composite module accounts for its parts.
    pub fn absorb(&mut self, other: Prediction) {
        for call in other.trace {
            self.add_call(call);
        }
        self.repairs = self.repairs.saturating_add(other.repairs);
        self.reasks = self.reasks.saturating_add(other.reasks);
        self.traces.extend(other.traces);
    }

    fn add_call(&mut self, call: LmCall) {
        self.usage.input_tokens = self
            .usage
            .input_tokens
            .saturating_add(call.usage.input_tokens);
        self.usage.output_tokens = self
            .usage
            .output_tokens
            .saturating_add(call.usage.output_tokens);
        self.usage.cached_input_tokens = self
            .usage
            .cached_input_tokens
            .saturating_add(call.usage.cached_input_tokens);
        self.trace.push(call);
    }
}

/// Per-call context: the run's correlation id and tags for analytics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunContext {
    /// The run's correlation id; each call gets a new one when `None`.
    pub correlation_id: Option<CorrelationId>,
    /// Tags carried on every LM call's events.
    pub tags: BTreeMap<String, String>,
    /// Record each predictor's inputs and outputs in
    /// [`Prediction::traces`] (off by default: it copies them).
    pub record_traces: bool,
}

/// A number that tells predictor instances apart. A clone is a new instance,
/// so a copied program's predictors never share ids.
#[derive(Debug)]
struct InstanceId(u64);

impl InstanceId {
    fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clone for InstanceId {
    fn clone(&self) -> Self {
        Self::next()
    }
}

/// Something that turns inputs into a prediction; modules compose by calling
/// each other's `forward`.
pub trait Module: Send + Sync {
    /// Runs the module.
    fn forward<'a>(&'a self, inputs: &'a Inputs) -> BoxFuture<'a, Result<Prediction>> {
        self.forward_with(inputs, RunContext::default())
    }

    /// Runs the module within a run (correlation id and tags).
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>>;

    /// The predictors inside, by name, for saving state and optimisers.
    fn predictors(&self) -> Vec<(String, &Predict)>;

    /// The same, mutably, for loading state and optimisers.
    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)>;
}

/// Which LM a module calls: a client and a provider id (and optionally a model).
#[derive(Clone, Debug)]
pub struct Lm {
    client: Client,
    provider: Arc<str>,
}

impl Lm {
    /// Calls `provider` through `client`.
    pub fn new(client: &Client, provider: &str) -> Self {
        Self {
            client: client.clone(),
            provider: Arc::from(provider),
        }
    }

    /// The provider id.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Call options of a predictor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallSettings {
    /// The model; the provider's default when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// The most output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Completions to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// A predictor: one LM call (plus at most one re-ask) that fills a signature's
/// outputs from its inputs, through an adapter, with optional few-shot demos.
#[derive(Clone, Debug)]
pub struct Predict {
    signature: Signature,
    /// The template the instructions were rendered from, and its variables.
    instructions_template: Option<(PromptTemplate, Map<String, Value>)>,
    adapter: Adapter,
    demos: Vec<Example>,
    lm: Lm,
    settings: CallSettings,
    /// The system message and the demo messages depend only on the signature,
    /// adapter and demos: built once, reused by every call.
    prefix: Arc<[Message]>,
    id: InstanceId,
}

impl Predict {
    /// A predictor for `signature` calling `lm`, with the chat adapter.
    pub fn new(signature: Signature, lm: Lm) -> Self {
        let mut predict = Self {
            signature,
            instructions_template: None,
            adapter: Adapter::Chat,
            demos: Vec::new(),
            lm,
            settings: CallSettings::default(),
            prefix: Arc::from(Vec::new()),
            id: InstanceId::next(),
        };
        predict.rebuild();
        predict
    }

    fn rebuild(&mut self) {
        let mut prefix = Vec::with_capacity(1 + 2 * self.demos.len());
        prefix.push(self.adapter.system_message(&self.signature));
        for demo in &self.demos {
            prefix.push(
                self.adapter
                    .user_message(&self.signature, &demo.inputs, false),
            );
            prefix.push(
                self.adapter
                    .assistant_message(&self.signature, &demo.outputs),
            );
        }
        self.prefix = Arc::from(prefix);
    }

    /// This instance's id, as found in [`PredictorTrace::predictor`]. Unique
    /// per instance: a clone gets a new one.
    pub fn instance_id(&self) -> u64 {
        self.id.0
    }

    /// Uses `adapter`.
    #[must_use]
    pub fn with_adapter(mut self, adapter: Adapter) -> Self {
        self.adapter = adapter;
        self.rebuild();
        self
    }

    /// Uses these demos.
    #[must_use]
    pub fn with_demos(mut self, demos: Vec<Example>) -> Self {
        self.set_demos(demos);
        self
    }

    /// Uses these call settings.
    #[must_use]
    pub fn with_settings(mut self, settings: CallSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Replaces the demos.
    pub fn set_demos(&mut self, demos: Vec<Example>) {
        self.demos = demos;
        self.rebuild();
    }

    /// Replaces the instructions (and forgets any instructions template).
    pub fn set_instructions(&mut self, instructions: impl Into<String>) {
        self.instructions_template = None;
        self.signature = self.signature.clone().with_instructions(instructions);
        self.rebuild();
    }

    /// Renders the instructions from `template` with `vars` (strictly: every
    /// missing variable is an error). The template, its version and the
    /// variables are part of the saved state.
    pub fn set_instructions_template(
        &mut self,
        template: PromptTemplate,
        vars: Map<String, Value>,
    ) -> Result<()> {
        let instructions = template.render(&vars)?;
        self.signature = self.signature.clone().with_instructions(instructions);
        self.instructions_template = Some((template, vars));
        self.rebuild();
        Ok(())
    }

    /// The instructions template and its variables, when one is used.
    pub fn instructions_template(&self) -> Option<&PromptTemplate> {
        self.instructions_template
            .as_ref()
            .map(|(template, _)| template)
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The demos.
    pub fn demos(&self) -> &[Example] {
        &self.demos
    }

    /// The adapter.
    pub fn adapter(&self) -> Adapter {
        self.adapter
    }

    /// The LM.
    pub fn lm(&self) -> &Lm {
        &self.lm
    }

    /// The messages a call with `inputs` sends (for inspection and tests).
    pub fn messages(&self, inputs: &Inputs) -> Vec<Message> {
        let mut messages = Vec::with_capacity(self.prefix.len() + 1);
        messages.extend(self.prefix.iter().cloned());
        messages.push(self.adapter.user_message(&self.signature, inputs, true));
        messages
    }

    fn options(&self, run: &RunContext, structured: bool) -> RequestOptions {
        RequestOptions {
            params: ChatParams {
                model: self.settings.model.clone(),
                temperature: self.settings.temperature,
                max_tokens: self.settings.max_tokens,
                n: self.settings.n,
                response_format: self.adapter.response_format(&self.signature, structured),
                ..ChatParams::default()
            },
            correlation_id: run.correlation_id.clone(),
            max_wait: None,
            tags: run.tags.clone(),
            cache: dspex_client::CachePolicy::default(),
        }
    }

    async fn call(
        &self,
        messages: Vec<Message>,
        run: &RunContext,
        purpose: CallPurpose,
        prediction: &mut Prediction,
    ) -> Result<dspex_client::ChatResponse> {
        let structured = self.adapter == Adapter::Json
            && self
                .lm
                .client
                .provider(&self.lm.provider)
                .is_ok_and(|p| p.config().kind == ProviderKind::OpenAi);
        let response = self
            .lm
            .client
            .request(&self.lm.provider, messages, self.options(run, structured))
            .await?;
        prediction.add_call(LmCall {
            correlation_id: response.correlation_id.clone(),
            provider: Arc::clone(&response.provider),
            model: response.model.clone(),
            usage: response.usage,
            latency: response.latency,
            attempts: response.attempts,
            purpose,
            cached: response.cache.is_some(),
        });
        Ok(response)
    }

    async fn run(&self, inputs: &Inputs, run: RunContext) -> Result<Prediction> {
        let started = Instant::now();
        self.signature.validate_inputs(inputs)?;
        // One correlation id for the prediction and its re-ask.
        let run = RunContext {
            correlation_id: Some(
                run.correlation_id
                    .clone()
                    .unwrap_or_else(CorrelationId::generate),
            ),
            ..run
        };
        let mut prediction = Prediction::default();
        let response = self
            .call(
                self.messages(inputs),
                &run,
                CallPurpose::Predict,
                &mut prediction,
            )
            .await?;
        let reply = response.text();
        let mut parsed = self.adapter.parse(&self.signature, reply);
        prediction.repairs += parsed.repairs;
        if !parsed.failures.is_empty() {
            // Re-ask once, for the failed fields only.
            prediction.reasks += 1;
            metrics::counter!("dspex_adapter_reasks_total").increment(1);
            let failed: Vec<Field> = self
                .signature
                .outputs()
                .iter()
                .filter(|f| parsed.failures.iter().any(|(name, _)| *name == f.name))
                .cloned()
                .collect();
            // Rebuilt rather than kept: re-asks are rare, copies on every call
            // are not.
            let mut follow_up = self.messages(inputs);
            follow_up.push(Message::assistant(reply));
            follow_up.push(
                self.adapter
                    .reask_message(&self.signature, &parsed.failures),
            );
            let second = self
                .call(follow_up, &run, CallPurpose::Reask, &mut prediction)
                .await?;
            let again = self.adapter.parse_fields(&failed, second.text());
            prediction.repairs += again.repairs;
            parsed.outputs.extend(again.outputs);
            parsed.failures = again.failures;
            if !parsed.failures.is_empty() {
                return Err(PromptError::Parse {
                    problems: parsed
                        .failures
                        .iter()
                        .map(|(field, reason)| format!("`{field}`: {reason}"))
                        .collect(),
                    reply: second.text().to_owned(),
                });
            }
        }
        if prediction.repairs > 0 {
            metrics::counter!("dspex_adapter_repairs_total")
                .increment(u64::from(prediction.repairs));
        }
        if response.choices.len() > 1 {
            for choice in &response.choices {
                let text = choice.content.as_deref().unwrap_or_default();
                let extra = self.adapter.parse(&self.signature, text);
                if extra.failures.is_empty() {
                    prediction.completions.push(extra.outputs);
                }
            }
        }
        if run.record_traces {
            prediction.traces.push(PredictorTrace {
                predictor: self.id.0,
                example: Example {
                    inputs: inputs.clone(),
                    outputs: parsed.outputs.clone(),
                },
            });
        }
        prediction.outputs = parsed.outputs;
        prediction.latency = started.elapsed();
        Ok(prediction)
    }

    /// This predictor's saved state.
    pub fn state(&self) -> PredictState {
        PredictState {
            signature: self.signature.to_string(),
            instructions: self.signature.raw_instructions().to_owned(),
            template: self
                .instructions_template
                .as_ref()
                .map(|(template, vars)| TemplateState {
                    template: template.clone(),
                    vars: vars.clone(),
                }),
            adapter: self.adapter,
            demos: self.demos.clone(),
            settings: self.settings.clone(),
        }
    }

    /// Restores saved state. The saved signature must have the same fields as
    /// this predictor's: state tunes a program, it does not change its shape.
    pub fn load_state(&mut self, state: PredictState) -> Result<()> {
        let saved = Signature::parse(&state.signature)?;
        let shape = |s: &Signature| {
            s.inputs()
                .iter()
                .chain(s.outputs())
                .map(|f| (f.name.clone(), f.ty.clone()))
                .collect::<Vec<_>>()
        };
        if shape(&saved) != shape(&self.signature) {
            return Err(PromptError::State {
                message: format!(
                    "saved signature `{}` does not match this program's `{}`",
                    state.signature, self.signature
                ),
            });
        }
        self.signature = self.signature.clone().with_instructions(state.instructions);
        self.instructions_template = match state.template {
            Some(saved) => {
                // Re-rendered, so the saved template and the saved text agree.
                let rendered = saved.template.render(&saved.vars)?;
                self.signature = self.signature.clone().with_instructions(rendered);
                Some((saved.template, saved.vars))
            }
            None => None,
        };
        self.adapter = state.adapter;
        self.demos = state.demos;
        self.settings = state.settings;
        self.rebuild();
        Ok(())
    }
}

impl Module for Predict {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(self.run(inputs, run))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![("predict".to_owned(), self)]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![("predict".to_owned(), self)]
    }
}

/// Predict with a `reasoning` output placed before the others, so the model
/// thinks before it answers.
#[derive(Clone, Debug)]
pub struct ChainOfThought {
    predict: Predict,
}

impl ChainOfThought {
    /// The field ChainOfThought adds.
    pub fn reasoning_field() -> Field {
        Field {
            name: "reasoning".into(),
            ty: FieldType::Str,
            description: Some("Think step by step in order to produce the other outputs.".into()),
        }
    }

    /// Chain of thought over `signature`.
    pub fn new(signature: Signature, lm: Lm) -> Self {
        Self {
            predict: Predict::new(signature.prepend_output(Self::reasoning_field()), lm),
        }
    }

    /// The inner predictor.
    pub fn predict(&self) -> &Predict {
        &self.predict
    }

    /// The inner predictor, mutably (adapter, demos, settings).
    pub fn predict_mut(&mut self) -> &mut Predict {
        &mut self.predict
    }
}

impl Module for ChainOfThought {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        self.predict.forward_with(inputs, run)
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![("predict".to_owned(), &self.predict)]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![("predict".to_owned(), &mut self.predict)]
    }
}

/// Runs `module` over every input with at most `concurrency` in flight, in
/// input order. One input's error is its own result; the batch goes on. A
/// progress bar is drawn on a terminal when `progress` is set.
pub async fn batch<M: Module + ?Sized>(
    module: &M,
    inputs: &[Inputs],
    concurrency: usize,
    progress: bool,
) -> Vec<Result<Prediction>> {
    let bar = if progress && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(inputs.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let results = futures::stream::iter(inputs.iter().map(|input| {
        let bar = bar.clone();
        async move {
            let result = module.forward(input).await;
            bar.inc(1);
            result
        }
    }))
    .buffered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    bar.finish_and_clear();
    results
}

/// The saved state of one predictor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictState {
    /// The signature, in string form (its shape must match on load).
    pub signature: String,
    /// The instructions (empty for the default objective).
    pub instructions: String,
    /// The template the instructions come from (its definition, with its
    /// version), when one is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateState>,
    /// The adapter.
    pub adapter: Adapter,
    /// The demos.
    pub demos: Vec<Example>,
    /// The call settings.
    pub settings: CallSettings,
}

/// An instructions template in saved state: the definition (name, version,
/// source, metadata) and the variables it was rendered with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TemplateState {
    /// The template's definition.
    pub template: PromptTemplate,
    /// The variables.
    pub vars: Map<String, Value>,
}

impl PartialEq for TemplateState {
    fn eq(&self, other: &Self) -> bool {
        self.template.name() == other.template.name()
            && self.template.version() == other.template.version()
            && self.template.source() == other.template.source()
            && self.vars == other.vars
    }
}

/// A program's saved state: every predictor's, by name. Plain JSON: loading
/// it never executes code.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgramState {
    /// The format version.
    pub version: u32,
    /// Predictor states by name.
    pub predictors: BTreeMap<String, PredictState>,
}

/// The state of every predictor of `module`.
pub fn program_state<M: Module + ?Sized>(module: &M) -> ProgramState {
    ProgramState {
        version: 1,
        predictors: module
            .predictors()
            .into_iter()
            .map(|(name, predict)| (name, predict.state()))
            .collect(),
    }
}

/// Saves `module`'s state as JSON at `path` (atomically: a temporary file,
/// then a rename).
pub fn save_program<M: Module + ?Sized>(module: &M, path: &Path) -> Result<()> {
    let io = |e: std::io::Error| PromptError::State {
        message: format!("cannot write {}: {e}", path.display()),
    };
    let text =
        serde_json::to_string_pretty(&program_state(module)).map_err(|e| PromptError::State {
            message: e.to_string(),
        })?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// Loads state saved by [`save_program`] into `module`. Every saved predictor
/// must exist in the module, with a matching signature.
pub fn load_program<M: Module + ?Sized>(module: &mut M, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| PromptError::State {
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let state: ProgramState = serde_json::from_str(&text).map_err(|e| PromptError::State {
        message: format!("{} is not a saved program: {e}", path.display()),
    })?;
    if state.version != 1 {
        return Err(PromptError::State {
            message: format!(
                "{}: unsupported state version {}",
                path.display(),
                state.version
            ),
        });
    }
    let mut predictors: BTreeMap<String, &mut Predict> =
        module.predictors_mut().into_iter().collect();
    for (name, saved) in state.predictors {
        let predict = predictors
            .get_mut(&name)
            .ok_or_else(|| PromptError::State {
                message: format!("{}: the program has no predictor `{name}`", path.display()),
            })?;
        predict.load_state(saved)?;
    }
    Ok(())
}
