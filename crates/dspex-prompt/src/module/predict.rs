//! [`Predict`]: one LM call (plus at most one re-ask) that fills a signature.

use std::sync::Arc;
use std::time::Instant;

use dspex_client::{ChatParams, Message, RequestOptions, StreamEvent};
use dspex_core::CorrelationId;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::state::{PredictState, TemplateState};
use super::{
    EventSink, Inputs, Lm, LmCall, Module, ModuleEvent, Prediction, PredictorTrace, RunContext,
    event_stream,
};
use crate::adapter::{Adapter, Example, FieldDelta, FieldStream};
use crate::error::{PromptError, Result};
use crate::module::CallPurpose;
use crate::signature::{Field, Signature};
use crate::template::PromptTemplate;

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

/// The run tag that carries an optimiser's rollout id (bootstrap rounds,
/// proposals, reflections); it also keys the response cache.
pub const ROLLOUT_TAG: &str = "dspex.rollout";

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
        self.prefix = Arc::from(self.adapter.prefix(&self.signature, &self.demos));
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
        let history = self.adapter.history_messages(&self.signature, inputs);
        let mut messages = Vec::with_capacity(self.prefix.len() + history.len() + 1);
        messages.extend(self.prefix.iter().cloned());
        messages.extend(history);
        messages.push(self.adapter.user_message(&self.signature, inputs, true));
        messages
    }

    /// The messages of a call within `run`: with its hint, if any, as a
    /// `hint_` section before the request (where DSPy's `Refine` puts it).
    fn messages_for(&self, inputs: &Inputs, run: &RunContext) -> Vec<Message> {
        let mut messages = self.messages(inputs);
        if let Some(hint) = &run.hint
            && let Some(request) = messages.last_mut()
        {
            let mut content = String::with_capacity(hint.len() + request.content.len() + 24);
            let (fields, ask) = request
                .content
                .rsplit_once("\n\n")
                .unwrap_or(("", request.content.as_str()));
            if !fields.is_empty() {
                content.push_str(fields);
                content.push_str("\n\n");
            }
            content.push_str("[[ ## hint_ ## ]]\n");
            content.push_str(hint);
            content.push_str("\n\n");
            content.push_str(ask);
            request.content = content;
        }
        messages
    }

    pub(crate) fn options(&self, run: &RunContext, structured: bool) -> RequestOptions {
        RequestOptions {
            params: ChatParams {
                model: self
                    .settings
                    .model
                    .clone()
                    .or_else(|| self.lm.model().map(str::to_owned)),
                temperature: run.temperature.or(self.settings.temperature),
                max_tokens: self.settings.max_tokens,
                n: self.settings.n,
                response_format: self.adapter.response_format(&self.signature, structured),
                stop: self.adapter.stop_sequences(),
                ..ChatParams::default()
            },
            correlation_id: run.correlation_id.clone(),
            max_wait: None,
            tags: run.tags.clone(),
            // An optimiser's rollout id makes a sampled call cacheable and
            // distinct from the same request under another id.
            cache: dspex_client::CachePolicy {
                rollout: run.tags.get(ROLLOUT_TAG).cloned(),
                ..dspex_client::CachePolicy::default()
            },
        }
    }

    async fn call(
        &self,
        messages: Vec<Message>,
        run: &RunContext,
        purpose: CallPurpose,
        prediction: &mut Prediction,
    ) -> Result<dspex_client::ChatResponse> {
        // Asked only for the JSON adapter: the chat adapter never sends a schema.
        let structured = self.adapter == Adapter::Json && self.lm.capabilities().json_schema;
        self.request(messages, self.options(run, structured), purpose, prediction)
            .await
    }

    /// Sends `messages` with `options` to this predictor's LM and adds the
    /// call to `prediction`'s trace (agents send their own tool turns).
    pub(crate) async fn request(
        &self,
        messages: Vec<Message>,
        options: RequestOptions,
        purpose: CallPurpose,
        prediction: &mut Prediction,
    ) -> Result<dspex_client::ChatResponse> {
        let response = self
            .lm
            .client
            .request(&self.lm.provider, messages, options)
            .await?;
        prediction.add_call(self.lm_call(&response, purpose));
        Ok(response)
    }

    fn lm_call(&self, response: &dspex_client::ChatResponse, purpose: CallPurpose) -> LmCall {
        LmCall {
            correlation_id: response.correlation_id.clone(),
            provider: Arc::clone(&response.provider),
            model: response.model.clone(),
            usage: response.usage,
            latency: response.latency,
            attempts: response.attempts,
            purpose,
            cached: response.cache.is_some(),
        }
    }

    /// The run with its correlation id: one for the prediction and its
    /// re-ask.
    fn begin(&self, inputs: &Inputs, run: RunContext) -> Result<RunContext> {
        self.signature.validate_inputs(inputs)?;
        Ok(RunContext {
            correlation_id: Some(
                run.correlation_id
                    .clone()
                    .unwrap_or_else(CorrelationId::generate),
            ),
            ..run
        })
    }

    async fn run(&self, inputs: &Inputs, run: RunContext) -> Result<Prediction> {
        let started = Instant::now();
        let run = self.begin(inputs, run)?;
        let mut prediction = Prediction::default();
        let response = self
            .call(
                self.messages_for(inputs, &run),
                &run,
                CallPurpose::Predict,
                &mut prediction,
            )
            .await?;
        self.complete(inputs, &run, &response, prediction, started)
            .await
    }

    /// Like `run`, with the reply streamed: each output field's text goes to
    /// `sink` as it arrives. A re-ask, if one is needed, is not streamed.
    async fn run_streamed(
        &self,
        inputs: &Inputs,
        run: RunContext,
        sink: EventSink,
    ) -> Result<Prediction> {
        let started = Instant::now();
        let run = self.begin(inputs, run)?;
        let structured = self.adapter == Adapter::Json && self.lm.capabilities().json_schema;
        let mut stream = self
            .lm
            .client
            .request_stream(
                &self.lm.provider,
                self.messages_for(inputs, &run),
                self.options(&run, structured),
            )
            .await?;
        let mut fields = FieldStream::new(self.adapter, self.signature.outputs().to_vec());
        let mut deltas = Vec::new();
        let mut response = None;
        while let Some(event) = stream.next().await {
            match event? {
                StreamEvent::Delta(delta) if delta.index == 0 => {
                    fields.push(&delta.content, &mut deltas);
                    self.send_fields(&mut deltas, &sink);
                }
                StreamEvent::Delta(_) => {}
                StreamEvent::Done(done) => response = Some(done),
            }
        }
        fields.finish(&mut deltas);
        self.send_fields(&mut deltas, &sink);
        let response = response.ok_or_else(|| PromptError::Composite {
            message: "the reply's stream ended without its final response".into(),
            retryable: true,
        })?;
        let mut prediction = Prediction::default();
        prediction.add_call(self.lm_call(&response, CallPurpose::Predict));
        self.complete(inputs, &run, &response, prediction, started)
            .await
    }

    fn send_fields(&self, deltas: &mut Vec<FieldDelta>, sink: &EventSink) {
        for delta in deltas.drain(..) {
            if let Some(field) = self.signature.outputs().get(delta.field) {
                sink.send(ModuleEvent::Field {
                    field: field.name.clone(),
                    text: delta.text,
                });
            }
        }
    }

    /// Reads the reply into the outputs, re-asking once for fields that
    /// fail to parse.
    async fn complete(
        &self,
        inputs: &Inputs,
        run: &RunContext,
        response: &dspex_client::ChatResponse,
        mut prediction: Prediction,
        started: Instant,
    ) -> Result<Prediction> {
        let run = run.clone();
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
            let mut follow_up = self.messages_for(inputs, &run);
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

    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxStream<'a, Result<ModuleEvent>> {
        event_stream(move |sink| self.run_streamed(inputs, run, sink))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![("predict".to_owned(), self)]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![("predict".to_owned(), self)]
    }
}
