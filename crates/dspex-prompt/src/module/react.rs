//! [`ReAct`]: an agent that thinks, calls tools and reads their results
//! until it can answer, as DSPy's `dspy.ReAct` does.
//!
//! Two modes share one program (and so one saved state):
//!
//! - **native** ([`AgentMode::Native`]): the provider's tool-calling API.
//!   The conversation grows by real assistant tool-call turns and tool
//!   results, so the prompt's start never changes within an episode
//!   (provider prompt caching applies); the model may make several calls in
//!   one turn, which run concurrently; it answers by calling `finish` with
//!   the output fields as arguments.
//! - **text** ([`AgentMode::Text`]): DSPy's own fields (`next_thought`,
//!   `next_tool_name`, `next_tool_args`) through the adapter, for models
//!   without tool calling; after `finish`, a chain-of-thought step reads the
//!   outputs from the trajectory.
//!
//! [`AgentMode::Auto`] picks native when the provider can call tools.
//!
//! Two predictors, `react` (one step) and `extract` (the outputs from a
//! trajectory), take demos and instructions like any other, so the
//! optimisers compile a ReAct program. Every step is recorded in
//! [`Prediction::trajectory`] and its LM calls in [`Prediction::trace`].
//! When a prompt outgrows the context window, the oldest observations are
//! dropped (at most [`ReAct::max_truncations`] times per call) and
//! [`Trajectory::truncated`] says how many.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_client::{Message, Role, WireFormat};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    AgentStep, CallPurpose, ChainOfThought, EventSink, Inputs, Lm, Module, ModuleEvent, Predict,
    Prediction, PredictorTrace, RunContext, ToolCallRecord, Trajectory, event_stream,
};
use crate::adapter::{self, Adapter, Example, coerce_value};
use crate::error::{PromptError, Result};
use crate::signature::{Field, FieldType, Signature};
use crate::tool::{FINISH_TOOL, Tool, observation_text};

/// How an agent talks to its model about tools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// Native when the provider supports tool calling, text otherwise.
    #[default]
    Auto,
    /// The provider's tool-calling API.
    Native,
    /// DSPy's text fields, for models without tool calling.
    Text,
}

/// The observation DSPy gives for `finish`.
const COMPLETED: &str = "Completed.";

/// A ReAct agent over a signature and tools.
#[derive(Clone, Debug)]
pub struct ReAct {
    signature: Signature,
    tools: Arc<[Tool]>,
    react: Predict,
    extract: ChainOfThought,
    max_iters: usize,
    max_truncations: u32,
    mode: AgentMode,
}

impl ReAct {
    /// An agent that fills `signature`'s outputs using `tools`, calling
    /// `lm`. Tool names must be unique and not `finish` (the agent's own).
    pub fn new(signature: Signature, tools: Vec<Tool>, lm: Lm) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for tool in &tools {
            if tool.name() == FINISH_TOOL {
                return Err(PromptError::InvalidTool {
                    tool: FINISH_TOOL.to_owned(),
                    message: "`finish` is the agent's own tool; name yours differently".into(),
                });
            }
            if !seen.insert(tool.name()) {
                return Err(PromptError::InvalidTool {
                    tool: tool.name().to_owned(),
                    message: "two tools have this name".into(),
                });
            }
        }
        let react = Predict::new(step_signature(&signature, &tools)?, lm.clone());
        let extract = ChainOfThought::new(
            with_trajectory(&signature)?.with_instructions(signature.raw_instructions()),
            lm,
        );
        Ok(Self {
            signature,
            tools: tools.into(),
            react,
            extract,
            max_iters: 20,
            max_truncations: 3,
            mode: AgentMode::Auto,
        })
    }

    /// At most `n` steps (DSPy's default is 20); then the outputs are
    /// extracted from what the agent found.
    #[must_use]
    pub fn max_iters(mut self, n: usize) -> Self {
        self.max_iters = n.max(1);
        self
    }

    /// Uses `mode` (native, text, or auto).
    #[must_use]
    pub fn mode(mut self, mode: AgentMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many times one call may drop the oldest observation and retry
    /// when the prompt does not fit the context window (3, as DSPy).
    #[must_use]
    pub fn max_truncations(mut self, n: u32) -> Self {
        self.max_truncations = n;
        self
    }

    /// The signature the agent fills.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The tools (without `finish`).
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The step predictor.
    pub fn react(&self) -> &Predict {
        &self.react
    }

    /// The step predictor, mutably (adapter, demos, settings, instructions).
    pub fn react_mut(&mut self) -> &mut Predict {
        &mut self.react
    }

    /// The extraction step.
    pub fn extract(&self) -> &ChainOfThought {
        &self.extract
    }

    /// The mode a call runs in now: `Auto` resolved against the provider.
    pub fn resolved_mode(&self) -> AgentMode {
        match self.mode {
            AgentMode::Auto if self.react.lm().capabilities().tool_calling => AgentMode::Native,
            AgentMode::Auto => AgentMode::Text,
            mode => mode,
        }
    }

    fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|tool| tool.name() == name)
    }

    async fn run(&self, inputs: &Inputs, run: RunContext, sink: EventSink) -> Result<Prediction> {
        let started = Instant::now();
        self.signature.validate_inputs(inputs)?;
        let run = RunContext {
            correlation_id: Some(
                run.correlation_id
                    .clone()
                    .unwrap_or_else(dspex_core::CorrelationId::generate),
            ),
            ..run
        };
        let mut prediction = Prediction::default();
        let mut trajectory = Trajectory::default();
        // Steps the text loop left out of its prompt for the context window:
        // the extraction starts without them too.
        let mut skipped = 0;
        let outputs = match self.resolved_mode() {
            AgentMode::Native => {
                self.native_steps(inputs, &run, &sink, &mut prediction, &mut trajectory)
                    .await?
            }
            _ => {
                skipped = self
                    .text_steps(inputs, &run, &sink, &mut prediction, &mut trajectory)
                    .await?;
                None
            }
        };
        let outputs = match outputs {
            Some(outputs) => outputs,
            None => {
                let extracted = self
                    .extract_outputs(inputs, &run, &sink, &mut trajectory, skipped)
                    .await?;
                let outputs = extracted.outputs.clone();
                prediction.absorb(extracted);
                outputs
            }
        };
        prediction.outputs = outputs;
        prediction.trajectory = Some(trajectory);
        prediction.latency = started.elapsed();
        Ok(prediction)
    }

    /// The extraction step over the trajectory from step `skipped` on,
    /// dropping further oldest steps while the context window is exceeded
    /// (within the same `max_truncations` bound as a step).
    async fn extract_outputs(
        &self,
        inputs: &Inputs,
        run: &RunContext,
        sink: &EventSink,
        trajectory: &mut Trajectory,
        mut skipped: usize,
    ) -> Result<Prediction> {
        let mut extract_inputs = inputs.clone();
        let mut truncations = 0;
        loop {
            extract_inputs.insert(
                "trajectory".to_owned(),
                Value::String(format_trajectory(&trajectory.steps, skipped)),
            );
            let extracted = if sink.is_listening() {
                self.extract_streamed(&extract_inputs, run.clone(), sink)
                    .await
            } else {
                self.extract
                    .forward_with(&extract_inputs, run.clone())
                    .await
            };
            match extracted {
                Err(PromptError::Client(error))
                    if self.drop_oldest_step(
                        &error,
                        &mut truncations,
                        &mut skipped,
                        trajectory,
                    ) => {}
                other => return other,
            }
        }
    }

    /// After `error`, whether to retry with one more of the oldest steps
    /// left out of the prompt (a context-window error, within
    /// `max_truncations` for this call, with a step left to drop); counts
    /// the drop when so.
    fn drop_oldest_step(
        &self,
        error: &dspex_client::ClientError,
        truncations: &mut u32,
        skipped: &mut usize,
        trajectory: &mut Trajectory,
    ) -> bool {
        if !error.is_context_window_exceeded()
            || *truncations >= self.max_truncations
            || *skipped >= trajectory.steps.len()
        {
            return false;
        }
        *truncations += 1;
        *skipped += 1;
        trajectory.truncated += 1;
        tracing::warn!(
            dropped = *skipped,
            "ReAct prompt exceeds the context window: dropping the oldest step"
        );
        true
    }

    /// The extraction step with its fields streamed to `sink`.
    async fn extract_streamed(
        &self,
        inputs: &Inputs,
        run: RunContext,
        sink: &EventSink,
    ) -> Result<Prediction> {
        use futures::StreamExt;
        let mut events = self.extract.stream_with(inputs, run);
        while let Some(event) = events.next().await {
            match event? {
                ModuleEvent::Done(prediction) => return Ok(prediction),
                other => sink.send(other),
            }
        }
        Err(PromptError::Composite {
            message: "the extraction step's stream ended without a prediction".into(),
            retryable: false,
        })
    }

    /// DSPy's loop: one `react` prediction per step, one tool call each,
    /// until `finish`. Returns how many of the oldest steps were left out
    /// of the prompt for the context window.
    async fn text_steps(
        &self,
        inputs: &Inputs,
        run: &RunContext,
        sink: &EventSink,
        prediction: &mut Prediction,
        trajectory: &mut Trajectory,
    ) -> Result<usize> {
        let mut step_inputs = inputs.clone();
        // Steps left out of the prompt after a context-window error.
        let mut skipped = 0usize;
        for _ in 0..self.max_iters {
            let step_started = Instant::now();
            let mut truncations = 0;
            let chosen = loop {
                step_inputs.insert(
                    "trajectory".to_owned(),
                    Value::String(format_trajectory(&trajectory.steps, skipped)),
                );
                match self.react.forward_with(&step_inputs, run.clone()).await {
                    Err(PromptError::Client(error))
                        if self.drop_oldest_step(
                            &error,
                            &mut truncations,
                            &mut skipped,
                            trajectory,
                        ) => {}
                    other => break other,
                }
            };
            let step = match chosen {
                Ok(step) => step,
                // A reply that cannot be read ends the loop, as in DSPy;
                // the outputs are extracted from what was found so far.
                Err(error @ PromptError::Parse { .. }) => {
                    trajectory.steps.push(AgentStep {
                        error: Some(error.to_string()),
                        duration: step_started.elapsed(),
                        ..AgentStep::default()
                    });
                    break;
                }
                Err(error) => return Err(error),
            };
            let lm_call = prediction.trace.len() + step.trace.len().saturating_sub(1);
            let thought = step.text("next_thought").unwrap_or_default().to_owned();
            let name = step.text("next_tool_name").unwrap_or_default().to_owned();
            let arguments = step
                .outputs
                .get("next_tool_args")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            prediction.absorb(step);
            let record = if name == FINISH_TOOL {
                finish_record(None, arguments)
            } else {
                self.call_tool(None, &name, arguments).await
            };
            let finished = name == FINISH_TOOL;
            let step = AgentStep {
                thought,
                calls: vec![record],
                lm_call: Some(lm_call),
                error: None,
                duration: step_started.elapsed(),
            };
            sink.send(ModuleEvent::Step(step.clone()));
            trajectory.steps.push(step);
            if finished {
                trajectory.finished = true;
                break;
            }
        }
        Ok(skipped)
    }

    /// Runs one tool call and records it; failures become the observation.
    async fn call_tool(&self, id: Option<String>, name: &str, arguments: Value) -> ToolCallRecord {
        let started = Instant::now();
        let result = match self.tool(name) {
            Some(tool) => tool.call(arguments.clone()).await,
            None => Err(PromptError::Tool {
                tool: name.to_owned(),
                message: format!(
                    "no such tool; the tools are: {}",
                    self.tools
                        .iter()
                        .map(Tool::name)
                        .chain([FINISH_TOOL])
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        };
        let (observation, error) = match result {
            Ok(value) => (observation_text(&value), None),
            Err(error) => {
                let message = match &error {
                    PromptError::Tool { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                (
                    format!("Execution error in {name}: {message}"),
                    Some(message),
                )
            }
        };
        ToolCallRecord {
            id,
            tool: name.to_owned(),
            arguments,
            observation,
            error,
            duration: started.elapsed(),
        }
    }

    /// The native loop: tool-call turns until `finish`. Returns the outputs
    /// when `finish` gave usable ones.
    async fn native_steps(
        &self,
        inputs: &Inputs,
        run: &RunContext,
        sink: &EventSink,
        prediction: &mut Prediction,
        trajectory: &mut Trajectory,
    ) -> Result<Option<Map<String, Value>>> {
        let wire = self.react.lm().capabilities().wire_format;
        let mut options = self.react.options(run, false);
        options.params.stop.clear();
        options.params.tools = Some(Arc::new(self.tool_definitions(wire)));
        options.params.tool_choice = Some(match wire {
            Some(WireFormat::AnthropicMessages) => json!({"type": "any"}),
            _ => json!("required"),
        });
        let mut messages = self.native_prefix(inputs, run.hint.as_deref());
        // Tool-result messages whose content was dropped for the context
        // window, oldest first.
        let mut dropped = 0usize;
        for _ in 0..self.max_iters {
            let step_started = Instant::now();
            let mut truncations = 0;
            let response = loop {
                match self
                    .react
                    .request(
                        messages.clone(),
                        options.clone(),
                        CallPurpose::Predict,
                        prediction,
                    )
                    .await
                {
                    Err(PromptError::Client(error))
                        if error.is_context_window_exceeded()
                            && truncations < self.max_truncations =>
                    {
                        if !drop_oldest_observation(&mut messages, &mut dropped) {
                            return Err(PromptError::Client(error));
                        }
                        truncations += 1;
                        trajectory.truncated += 1;
                        tracing::warn!(
                            dropped,
                            "ReAct prompt exceeds the context window: dropping the oldest observation"
                        );
                    }
                    other => break other?,
                }
            };
            let lm_call = prediction.trace.len().checked_sub(1);
            let mut choice = response.choices.into_iter().next();
            let thought = choice
                .as_ref()
                .and_then(|c| c.content.as_deref())
                .unwrap_or_default()
                .trim()
                .to_owned();
            let raw_calls = choice
                .as_mut()
                .and_then(|c| c.tool_calls.take())
                .map(Arc::new);
            let calls = parse_tool_calls(raw_calls.as_deref());
            if calls.is_empty() {
                // An answer in plain text (the provider ignored
                // `tool_choice`): taken only if it marks every output field,
                // since a lone answer without markers is indistinguishable
                // from a thought. Otherwise the model is asked again.
                let parsed = Adapter::Chat.parse(&self.signature, &thought);
                let marked = self
                    .signature
                    .outputs()
                    .iter()
                    .all(|field| thought.contains(&format!("[[ ## {} ## ]]", field.name)));
                let answered = marked && parsed.failures.is_empty();
                let step = AgentStep {
                    thought: thought.clone(),
                    calls: Vec::new(),
                    lm_call,
                    error: (!answered)
                        .then(|| "the model answered without calling a tool".to_owned()),
                    duration: step_started.elapsed(),
                };
                sink.send(ModuleEvent::Step(step.clone()));
                trajectory.steps.push(step);
                if answered {
                    trajectory.finished = true;
                    return Ok(Some(parsed.outputs));
                }
                messages.push(Message::assistant(thought));
                messages.push(Message::user(NO_TOOL_CALLED));
                continue;
            }
            let mut assistant = Message::assistant(thought.clone());
            assistant.tool_calls = raw_calls;
            messages.push(assistant);
            // Independent calls of one turn run concurrently.
            let records = futures::future::join_all(calls.into_iter().map(|call| async move {
                match call {
                    NativeCall::Call {
                        id,
                        name,
                        arguments,
                    } if name == FINISH_TOOL => match self.finish_outputs(&arguments) {
                        Ok(_) => finish_record(Some(id), arguments),
                        // Unusable outputs go back to the model like any
                        // tool's error, so it can call `finish` again.
                        Err(problem) => ToolCallRecord {
                            observation: format!("Execution error in {FINISH_TOOL}: {problem}"),
                            id: Some(id),
                            tool: name,
                            arguments,
                            error: Some(problem),
                            duration: Duration::ZERO,
                        },
                    },
                    NativeCall::Call {
                        id,
                        name,
                        arguments,
                    } => self.call_tool(Some(id), &name, arguments).await,
                    NativeCall::Malformed { id, name, error } => ToolCallRecord {
                        observation: format!("Execution error in {name}: {error}"),
                        id: Some(id),
                        tool: name,
                        arguments: Value::Null,
                        error: Some(error),
                        duration: Duration::ZERO,
                    },
                }
            }))
            .await;
            for record in &records {
                let mut result = Message::new(Role::Tool, record.observation.clone());
                result.tool_call_id = record.id.clone();
                messages.push(result);
            }
            let finish = records
                .iter()
                .find(|record| record.tool == FINISH_TOOL && record.error.is_none())
                .map(|record| record.arguments.clone());
            if run.record_traces {
                let trajectory_text = format_trajectory(&trajectory.steps, 0);
                for record in &records {
                    prediction.traces.push(self.native_trace(
                        inputs,
                        &trajectory_text,
                        &thought,
                        record,
                    ));
                }
            }
            let step = AgentStep {
                thought,
                calls: records,
                lm_call,
                error: None,
                duration: step_started.elapsed(),
            };
            sink.send(ModuleEvent::Step(step.clone()));
            trajectory.steps.push(step);
            if let Some(arguments) = finish {
                trajectory.finished = true;
                match self.finish_outputs(&arguments) {
                    Ok(outputs) => return Ok(Some(outputs)),
                    Err(problem) => {
                        if let Some(step) = trajectory.steps.last_mut() {
                            step.error = Some(problem);
                        }
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    }

    /// A native step as the text-mode `react` predictor would have seen and
    /// answered it, so demos bootstrapped in either mode fit both.
    fn native_trace(
        &self,
        inputs: &Inputs,
        trajectory: &str,
        thought: &str,
        record: &ToolCallRecord,
    ) -> PredictorTrace {
        let mut step_inputs = inputs.clone();
        step_inputs.insert("trajectory".into(), Value::String(trajectory.to_owned()));
        let mut outputs = Map::new();
        outputs.insert("next_thought".into(), Value::String(thought.to_owned()));
        outputs.insert("next_tool_name".into(), Value::String(record.tool.clone()));
        outputs.insert("next_tool_args".into(), record.arguments.clone());
        PredictorTrace {
            predictor: self.react.instance_id(),
            example: Example {
                inputs: step_inputs,
                outputs,
            },
        }
    }

    /// `finish`'s arguments as typed outputs, or what is wrong with them.
    fn finish_outputs(&self, arguments: &Value) -> std::result::Result<Map<String, Value>, String> {
        let mut outputs = Map::new();
        let mut problems = Vec::new();
        for field in self.signature.outputs() {
            match arguments.get(&field.name) {
                Some(value) => match coerce_value(&field.ty, value) {
                    Ok((value, _)) => {
                        outputs.insert(field.name.clone(), value);
                    }
                    Err(reason) => problems.push(format!("`{}`: {reason}", field.name)),
                },
                None => problems.push(format!("`{}` is missing", field.name)),
            }
        }
        if problems.is_empty() {
            Ok(outputs)
        } else {
            Err(format!(
                "`finish` arguments unusable: {}",
                problems.join("; ")
            ))
        }
    }

    /// The tools in the provider's format, `finish` last.
    fn tool_definitions(&self, wire: Option<WireFormat>) -> Value {
        let anthropic = wire == Some(WireFormat::AnthropicMessages);
        let finish_description = format!(
            "Marks the task as complete: call it with the final values of {} once you have what they need.",
            field_names(self.signature.outputs())
        );
        let finish_schema = adapter::outputs_schema(&self.signature);
        let mut definitions: Vec<Value> = self
            .tools
            .iter()
            .map(|tool| {
                if anthropic {
                    tool.anthropic_definition()
                } else {
                    tool.openai_definition()
                }
            })
            .collect();
        definitions.push(if anthropic {
            json!({"name": FINISH_TOOL, "description": finish_description, "input_schema": finish_schema})
        } else {
            json!({"type": "function", "function": {
                "name": FINISH_TOOL, "description": finish_description, "parameters": finish_schema}})
        });
        Value::Array(definitions)
    }

    /// The native conversation's start: the system message (fields,
    /// instructions, demos), earlier turns of a history, and the request
    /// (with `Refine`'s hint, if any, as a `hint_` section). It depends only
    /// on the program, the inputs and the hint, so every step of an episode
    /// sends the same prefix.
    fn native_prefix(&self, inputs: &Inputs, hint: Option<&str>) -> Vec<Message> {
        let mut system = adapter::describe_fields(&self.signature);
        system.push_str("In adhering to this structure, your objective is: \n        ");
        system.push_str(&native_instructions(self.react.signature()));
        system.push_str(
            "\n\nCall the tools you need; independent calls may be made together in one turn. \
             When you have what the output fields need, call `finish` with their values.",
        );
        let demos = self.react.demos();
        if !demos.is_empty() {
            system.push_str("\n\nExamples of good steps (the inputs and trajectory so far, then the step taken):\n");
            for (i, demo) in demos.iter().enumerate() {
                let _ = write!(system, "\n--- example {} ---\n", i + 1);
                system.push_str(
                    &Adapter::Chat
                        .user_message(self.react.signature(), &demo.inputs, false)
                        .content,
                );
                system.push('\n');
                system.push_str(
                    &Adapter::Chat
                        .assistant_message(self.react.signature(), &demo.outputs)
                        .content,
                );
                system.push('\n');
            }
        }
        let mut messages = vec![Message::system(system)];
        messages.extend(Adapter::Chat.history_messages(&self.signature, inputs));
        let mut request = Adapter::Chat.user_message(&self.signature, inputs, false);
        if let Some(hint) = hint {
            request.content.push_str("\n\n[[ ## hint_ ## ]]\n");
            request.content.push_str(hint);
        }
        messages.push(request);
        messages
    }
}

/// The instructions without the text-mode tool catalogue: what the native
/// mode shows, since the tools travel in the provider's `tools` field.
fn native_instructions(step: &Signature) -> String {
    let instructions = step.instructions();
    match instructions.find(TOOL_LIST_MARKER) {
        Some(at) => instructions
            .get(..at)
            .unwrap_or_default()
            .trim_end()
            .to_owned(),
        None => instructions,
    }
}

/// Where the text-mode instructions start listing the tools.
const TOOL_LIST_MARKER: &str = "When selecting the next_tool_name and its next_tool_args";

/// What the model is told after a turn without a tool call.
const NO_TOOL_CALLED: &str =
    "Call one of the tools, or `finish` with the values of the output fields.";

fn finish_record(id: Option<String>, arguments: Value) -> ToolCallRecord {
    ToolCallRecord {
        id,
        tool: FINISH_TOOL.to_owned(),
        arguments,
        observation: COMPLETED.to_owned(),
        error: None,
        duration: Duration::ZERO,
    }
}

fn field_names(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| format!("`{}`", f.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The step predictor's signature: the inputs and the trajectory so far ->
/// the next thought, tool and arguments, with DSPy's instructions.
fn step_signature(signature: &Signature, tools: &[Tool]) -> Result<Signature> {
    let inputs = field_names(
        signature
            .prompt_inputs()
            .cloned()
            .collect::<Vec<_>>()
            .as_slice(),
    );
    let outputs = field_names(signature.outputs());
    let mut instructions = String::new();
    if !signature.raw_instructions().is_empty() {
        instructions.push_str(signature.raw_instructions());
        instructions.push_str("\n\n");
    }
    let _ = write!(
        instructions,
        "You are an Agent. In each episode, you will be given the fields {inputs} as input. And you can see your past trajectory so far.\n\
         Your goal is to use one or more of the supplied tools to collect any necessary information for producing {outputs}.\n\n\
         To do this, you will interleave next_thought, next_tool_name, and next_tool_args in each turn, and also when finishing the task.\n\
         After each tool call, you receive a resulting observation, which gets appended to your trajectory.\n\n\
         When writing next_thought, you may reason about the current situation and plan for future steps.\n\
         {TOOL_LIST_MARKER}, the tool must be one of:\n"
    );
    for (i, tool) in tools.iter().enumerate() {
        let _ = writeln!(
            instructions,
            "({}) {}, whose description is <desc>{}</desc>. It takes arguments {}.",
            i + 1,
            tool.name(),
            tool.description(),
            tool.arguments_summary()
        );
    }
    let _ = writeln!(
        instructions,
        "({}) {FINISH_TOOL}, whose description is <desc>Marks the task as complete. That is, signals that all information for producing the outputs, i.e. {outputs}, are now available to be extracted.</desc>. It takes arguments {{}}.",
        tools.len() + 1
    );
    instructions.push_str(
        "When providing `next_tool_args`, the value inside the field must be in JSON format",
    );
    let names: Vec<String> = tools
        .iter()
        .map(|tool| tool.name().to_owned())
        .chain([FINISH_TOOL.to_owned()])
        .collect();
    let mut inputs: Vec<Field> = signature.inputs().to_vec();
    inputs.push(Field::new("trajectory", FieldType::Str));
    Signature::new(
        inputs,
        vec![
            Field::new("next_thought", FieldType::Str),
            Field::new("next_tool_name", FieldType::Choice(names)),
            Field::new("next_tool_args", FieldType::Json),
        ],
        &instructions,
    )
}

/// The signature with a `trajectory` input: the extraction step's.
fn with_trajectory(signature: &Signature) -> Result<Signature> {
    let mut inputs: Vec<Field> = signature.inputs().to_vec();
    inputs.push(Field::new("trajectory", FieldType::Str));
    Signature::new(inputs, signature.outputs().to_vec(), "")
}

/// The trajectory as DSPy shows it: `thought_i`, `tool_name_i`,
/// `tool_args_i` and `observation_i` sections, from step `from` on.
fn format_trajectory(steps: &[AgentStep], from: usize) -> String {
    let mut out = String::new();
    for (i, step) in steps.iter().enumerate().skip(from) {
        let mut section = |name: &str, text: &str| {
            let _ = write!(out, "[[ ## {name}_{i} ## ]]\n{text}\n\n");
        };
        section("thought", &step.thought);
        match step.calls.as_slice() {
            [] => section("observation", step.error.as_deref().unwrap_or_default()),
            [call] => {
                section("tool_name", &call.tool);
                section("tool_args", &call.arguments.to_string());
                section("observation", &call.observation);
            }
            calls => {
                let names: Vec<&str> = calls.iter().map(|c| c.tool.as_str()).collect();
                section("tool_name", &names.join(", "));
                let args: Vec<&Value> = calls.iter().map(|c| &c.arguments).collect();
                section("tool_args", &json!(args).to_string());
                let observations: Vec<&str> =
                    calls.iter().map(|c| c.observation.as_str()).collect();
                section("observation", &observations.join("\n"));
            }
        }
    }
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

/// Replaces the oldest tool result still shown with a note, keeping the
/// call/result pairing every provider requires. False when none is left.
fn drop_oldest_observation(messages: &mut [Message], dropped: &mut usize) -> bool {
    let Some(message) = messages
        .iter_mut()
        .filter(|m| m.role == Role::Tool)
        .nth(*dropped)
    else {
        return false;
    };
    message.content = "(observation removed: the conversation outgrew the context window)".into();
    *dropped += 1;
    true
}

/// A tool call read from a provider reply.
#[derive(Debug)]
enum NativeCall {
    Call {
        id: String,
        name: String,
        arguments: Value,
    },
    /// A call whose arguments are not a JSON object.
    Malformed {
        id: String,
        name: String,
        error: String,
    },
}

/// The calls in a choice's `tool_calls`: OpenAI's
/// `[{id, function: {name, arguments: "<json>"}}]` or Anthropic's
/// `[{type: "tool_use", id, name, input}]`.
fn parse_tool_calls(raw: Option<&Value>) -> Vec<NativeCall> {
    let Some(Value::Array(calls)) = raw else {
        return Vec::new();
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{i}"), str::to_owned);
            if let Some(function) = call.get("function") {
                let name = function
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let arguments = match function.get("arguments") {
                    Some(Value::String(text)) if text.trim().is_empty() => Ok(json!({})),
                    Some(Value::String(text)) => serde_json::from_str::<Value>(text)
                        .map_err(|e| format!("the arguments are not valid JSON ({e}): {text}")),
                    Some(Value::Object(object)) => Ok(Value::Object(object.clone())),
                    None | Some(Value::Null) => Ok(json!({})),
                    Some(other) => Err(format!("the arguments are not a JSON object: {other}")),
                };
                return match arguments {
                    Ok(arguments) => NativeCall::Call {
                        id,
                        name,
                        arguments,
                    },
                    Err(error) => NativeCall::Malformed { id, name, error },
                };
            }
            let name = call
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let arguments = call.get("input").cloned().unwrap_or_else(|| json!({}));
            NativeCall::Call {
                id,
                name,
                arguments,
            }
        })
        .collect()
}

impl Module for ReAct {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxFuture<'a, Result<Prediction>> {
        Box::pin(self.run(inputs, run, EventSink::default()))
    }

    fn stream_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: RunContext,
    ) -> BoxStream<'a, Result<ModuleEvent>> {
        event_stream(move |sink| self.run(inputs, run, sink))
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![
            ("react".to_owned(), &self.react),
            ("extract".to_owned(), self.extract.predict()),
        ]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![
            ("react".to_owned(), &mut self.react),
            ("extract".to_owned(), self.extract.predict_mut()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_of_both_formats_are_read() {
        let openai = json!([
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1}"}},
            {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": "{oops"}},
        ]);
        let calls = parse_tool_calls(Some(&openai));
        assert!(matches!(&calls[0], NativeCall::Call { id, name, arguments }
            if id == "call_1" && name == "add" && arguments == &json!({"a": 1})));
        assert!(
            matches!(&calls[1], NativeCall::Malformed { error, .. } if error.contains("not valid JSON"))
        );
        let anthropic =
            json!([{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2}}]);
        let calls = parse_tool_calls(Some(&anthropic));
        assert!(matches!(&calls[0], NativeCall::Call { id, arguments, .. }
            if id == "toolu_1" && arguments == &json!({"a": 2})));
        assert!(parse_tool_calls(None).is_empty());
    }

    #[test]
    fn the_oldest_observation_is_dropped_first() {
        let mut messages = vec![Message::system("s"), Message::user("u")];
        for text in ["first", "second"] {
            let mut result = Message::new(Role::Tool, text);
            result.tool_call_id = Some(text.into());
            messages.push(result);
        }
        let mut dropped = 0;
        assert!(drop_oldest_observation(&mut messages, &mut dropped));
        assert!(messages[2].content.starts_with("(observation removed"));
        assert_eq!(messages[3].content, "second");
        assert!(drop_oldest_observation(&mut messages, &mut dropped));
        assert!(!drop_oldest_observation(&mut messages, &mut dropped));
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("second"));
    }
}
