//! What a module returns: [`Prediction`], with its trace of LM calls.

use std::sync::Arc;
use std::time::Duration;

use dspex_client::Usage;
use dspex_core::CorrelationId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::adapter::Example;
use crate::error::{PromptError, Result};

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
    /// An agent's steps ([`ReAct`](crate::ReAct)): every tool call with its
    /// arguments, observation, duration and error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectory: Option<Trajectory>,
}

/// What an agent did, step by step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The steps, in order.
    pub steps: Vec<AgentStep>,
    /// Whether the agent called `finish` (otherwise it ran out of steps, or
    /// a step failed, and the outputs were extracted from what it had).
    pub finished: bool,
    /// Observations left out of the prompt because it outgrew the model's
    /// context window (the oldest first, as DSPy does).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One step of an agent: its thought and the tool calls it made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStep {
    /// What the model thought before acting (may be empty in native mode).
    pub thought: String,
    /// The tool calls of the step: one in text mode, one or more (run
    /// concurrently) in native mode.
    pub calls: Vec<ToolCallRecord>,
    /// The index in [`Prediction::trace`] of the LM call that chose them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lm_call: Option<usize>,
    /// Why the step failed, when the model's reply could not be used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step's time: the LM call and its tools.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
}

/// One tool call within an [`AgentStep`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    /// The provider's call id (native mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The tool called.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
    /// What the model was shown: the result, or the error.
    pub observation: String,
    /// The error, when the call failed (bad arguments, an unknown tool, the
    /// tool's own error, a panic or a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the tool ran.
    #[serde(rename = "duration_ms", with = "dspex_client::duration_ms")]
    pub duration: Duration,
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

    pub(crate) fn add_call(&mut self, call: LmCall) {
        self.usage += call.usage;
        self.trace.push(call);
    }
}
