//! The normalised request and response every provider maps to and from.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dspex_core::CorrelationId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result (OpenAI-style tool calling).
    Tool,
}

impl Role {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls the assistant made (passed through as the provider wrote
    /// them). Shared, because an agent resends every earlier call with each
    /// step: copying the history then copies no JSON trees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Arc<Value>>,
    /// For a tool result: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The shape the reply must take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The JSON Schema.
        schema: Value,
        /// Whether the provider must follow the schema exactly.
        #[serde(default)]
        strict: bool,
    },
}

/// Sampling and output parameters of a chat call. Everything is optional; the
/// provider's configured defaults fill the gaps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatParams {
    /// The model; the provider's default model when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// How many choices to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// A seed for providers that support reproducible sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// The reply's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Tool definitions, passed through in the provider's format. Shared,
    /// because an agent sends the same definitions with every step: its
    /// requests then share them instead of copying every schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Arc<Value>>,
    /// Tool choice, passed through in the provider's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Request fields DSPex has no name for (`logit_bias`, `user`,
    /// `metadata`...), sent as they are by providers whose
    /// [`Capabilities::wire_format`](crate::Capabilities::wire_format) is
    /// the format they were written in. A key DSPex writes itself (`model`,
    /// `messages`, `stream`...) is never taken from here. Part of the cache
    /// key.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

impl ChatParams {
    /// The widest temperature range a provider accepts (OpenAI's; a
    /// provider with a narrower one says so itself).
    pub const TEMPERATURE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=2.0;

    /// Checks the values no provider can take, naming the field: a
    /// temperature that is not a number or outside `0..=2`, a `top_p` that
    /// is not a number or outside `0..=1`, `max_tokens = 0`, `n` outside
    /// `1..=128`. The client refuses such a call before it takes any
    /// rate-limit room (and records it as failed).
    ///
    /// ```
    /// use dspex_client::ChatParams;
    /// let params = ChatParams { temperature: Some(f32::NAN), ..ChatParams::default() };
    /// assert!(params.check().unwrap_err().contains("temperature"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        // `contains` is false for NaN, so NaN is refused with the rest.
        if let Some(t) = self.temperature
            && !Self::TEMPERATURE_RANGE.contains(&t)
        {
            return Err(format!("temperature {t} must be a number in 0..=2"));
        }
        if let Some(p) = self.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return Err(format!("top_p {p} must be a number in 0..=1"));
        }
        if self.max_tokens == Some(0) {
            return Err("max_tokens 0: a reply needs at least one token".into());
        }
        if let Some(n) = self.n
            && !(1..=128).contains(&n)
        {
            return Err(format!("n {n} must be between 1 and 128"));
        }
        Ok(())
    }
}

/// A chat call: messages plus parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// The parameters.
    #[serde(flatten)]
    pub params: ChatParams,
}

/// Per-call options beyond the chat parameters: which run the call belongs to,
/// how long it may wait for rate-limit room, and tags for analytics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestOptions {
    /// Chat parameters.
    pub params: ChatParams,
    /// The run's correlation id; a new one is generated when `None`.
    pub correlation_id: Option<CorrelationId>,
    /// The longest wait for rate-limit room (and a pool slot), per attempt; the
    /// provider's `max_wait_ms` when `None`.
    pub max_wait: Option<Duration>,
    /// Free-form tags carried on the call's events (workflow, step, user...).
    pub tags: BTreeMap<String, String>,
    /// How this call uses the response cache, when the client has one.
    pub cache: crate::cache::CachePolicy,
}

impl RequestOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the model.
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.params.model = Some(model.into());
        self
    }

    /// Sets the temperature.
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.params.temperature = Some(temperature);
        self
    }

    /// Sets the most output tokens.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.params.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlation_id(mut self, id: CorrelationId) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Sets the chat parameters.
    #[must_use]
    pub fn params(mut self, params: ChatParams) -> Self {
        self.params = params;
        self
    }
}

/// Why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The model called tools.
    ToolCalls,
    /// A content filter.
    ContentFilter,
    /// Something else, as the provider named it.
    Other(String),
}

impl FinishReason {
    /// Maps OpenAI's and Anthropic's names.
    pub fn parse(raw: &str) -> Self {
        match raw {
            "stop" | "end_turn" | "stop_sequence" => Self::Stop,
            "length" | "max_tokens" => Self::Length,
            "tool_calls" | "tool_use" | "function_call" => Self::ToolCalls,
            "content_filter" | "refusal" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tokens a call used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (a subset of
    /// `input_tokens`, billed at the cached-read price).
    pub cached_input_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (Anthropic).
    pub cache_write_tokens: u64,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Field by field, saturating: a total never wraps, whatever it adds up.
impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_input_tokens = self
            .cached_input_tokens
            .saturating_add(other.cached_input_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
    }
}

impl std::ops::Add for Usage {
    type Output = Self;

    fn add(mut self, other: Self) -> Self {
        self += other;
        self
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Self>>(usages: I) -> Self {
        usages.fold(Self::default(), |total, usage| total + usage)
    }
}

impl<'a> std::iter::Sum<&'a Usage> for Usage {
    fn sum<I: Iterator<Item = &'a Usage>>(usages: I) -> Self {
        usages.copied().sum()
    }
}

/// One generated alternative.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Its index (0 unless `n` > 1).
    pub index: u32,
    /// The text, if any (a pure tool call has none).
    pub content: Option<String>,
    /// Tool calls, in the provider's format: OpenAI's
    /// `[{id, type, function: {name, arguments}}]` or Anthropic's `tool_use`
    /// blocks. A streamed response reassembles its fragments into this same
    /// shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
}

/// A completed chat call, the same for every provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The provider id it came from (the registry name, such as `openai`).
    pub provider: Arc<str>,
    /// The model that answered, as the provider named it.
    pub model: String,
    /// The provider's id for the response (`chatcmpl-...`, `msg_...`).
    pub id: Option<String>,
    /// The provider's request id header (`x-request-id`, `request-id`), for support tickets.
    pub request_id: Option<String>,
    /// The alternatives.
    pub choices: Vec<Choice>,
    /// Tokens used.
    pub usage: Usage,
    /// Time from the call to the full response, waits and retries included
    /// (`latency_ms` in JSON).
    #[serde(rename = "latency_ms", with = "duration_ms")]
    pub latency: Duration,
    /// HTTP attempts made.
    pub attempts: u32,
    /// The run it belongs to.
    pub correlation_id: CorrelationId,
    /// Set when the response cache answered: then `usage` is zero (nothing was
    /// billed) and this holds the tier and the usage the hit saved.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::events::CacheServed>,
}

impl ChatResponse {
    /// The first choice's text, or `""`.
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.content.as_deref())
            .unwrap_or_default()
    }

    /// The first choice's finish reason.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.choices.first().and_then(|c| c.finish_reason.as_ref())
    }
}

/// A piece of a streamed reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// The choice it belongs to.
    pub index: u32,
    /// New text (may be empty).
    pub content: String,
    /// Tool-call fragments, in the provider's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    /// Set on the last delta of a choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
}

/// What a [`ChatStream`](crate::ChatStream) yields: deltas, then the assembled
/// response with usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// New content.
    Delta(ChatDelta),
    /// The stream ended normally; the whole response, assembled.
    Done(ChatResponse),
}

/// An embeddings call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// Texts to embed.
    pub input: Vec<String>,
    /// The model; the provider's `embedding_model` when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Output dimensions, for models that support shortening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
}

/// Embedding vectors, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EmbeddingResponse {
    /// The provider id.
    pub provider: Arc<str>,
    /// The model.
    pub model: String,
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens used.
    pub usage: Usage,
    /// Time taken (`latency_ms` in JSON).
    #[serde(rename = "latency_ms", with = "duration_ms")]
    pub latency: Duration,
    /// HTTP attempts made.
    pub attempts: u32,
    /// The run it belongs to.
    pub correlation_id: CorrelationId,
}

/// Serde helpers writing a `Duration` as fractional milliseconds.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes milliseconds as a float (microsecond precision).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_micros() as f64) / 1_000.0)
    }

    /// Reads milliseconds; negative or non-finite values are rejected.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1_000.0).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages_total_every_field_and_saturate() {
        let usage = |n: u64| Usage {
            input_tokens: n,
            output_tokens: 2 * n,
            cached_input_tokens: 3 * n,
            cache_write_tokens: 4 * n,
        };
        let total: Usage = [usage(1), usage(10), usage(100)].iter().sum();
        assert_eq!(total, usage(111));
        let mut running = usage(1);
        running += usage(2);
        assert_eq!(running, usage(3));
        assert_eq!(usage(1) + usage(1), usage(2));
        let full = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cached_input_tokens: u64::MAX,
            cache_write_tokens: u64::MAX,
        };
        assert_eq!([full, usage(5)].into_iter().sum::<Usage>(), full);
    }
}
