//! A scripted in-process LM for tests, like DSPy's `DummyLM`.
//!
//! Register it as a provider and every call goes through the same client code
//! path as a real provider (breaker, limits, pool, retries, timeout, events,
//! telemetry); only the transport is replaced, so no socket is opened.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dspex_client::ClientError> {
//! use dspex_client::{Client, ClientConfig, Message, RequestOptions, ScriptedLm};
//! let lm = ScriptedLm::replies(["Paris", "Rome"]);
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("dummy", lm.clone()).await?;
//! let reply = client.request("dummy", vec![Message::user("Capital of France?")], RequestOptions::new()).await?;
//! assert_eq!(reply.text(), "Paris");
//! assert_eq!(lm.calls(), 1);
//! # Ok(()) }
//! ```
//!
//! It can also answer with native tool calls, in OpenAI's shape, so an agent
//! can be driven step by step: [`ScriptedLm::turns`] cycles through
//! [`ScriptedTurn`]s, and [`ScriptedLm::from_turn_fn`] decides from the
//! request, such as from the tool results it carries.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dspex_client::ClientError> {
//! use dspex_client::{Client, ClientConfig, FinishReason, Message, RequestOptions, Role};
//! use dspex_client::{ScriptedLm, ScriptedTurn};
//! use serde_json::json;
//!
//! let lm = ScriptedLm::from_turn_fn(|request| {
//!     // Answer once the tool's result is back; call the tool before.
//!     Ok(match request.messages.last() {
//!         Some(last) if last.role == Role::Tool => format!("It is {}.", last.content).into(),
//!         _ => ScriptedTurn::tool_call("get_weather", json!({"city": "Paris"})),
//!     })
//! });
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client.add_scripted("agent", lm).await?;
//! let mut messages = vec![Message::user("Weather in Paris?")];
//! let first = client.request("agent", messages.clone(), RequestOptions::new()).await?;
//! assert_eq!(first.finish_reason(), Some(&FinishReason::ToolCalls));
//! let calls = first.choices[0].tool_calls.clone().unwrap_or_default();
//! assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
//! let mut call = Message::assistant("");
//! call.tool_calls = Some(std::sync::Arc::new(calls.clone()));
//! let mut result = Message::new(Role::Tool, "sunny");
//! result.tool_call_id = calls[0]["id"].as_str().map(str::to_owned);
//! messages.extend([call, result]);
//! let answer = client.request("agent", messages, RequestOptions::new()).await?;
//! assert_eq!(answer.text(), "It is sunny.");
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::{Value, json};

use crate::call::{Call, Payload, Reply, ReplyBody};
use crate::config::ProviderConfig;
use crate::error::{ClientError, ClientErrorKind};
use crate::events::Operation;
use crate::provider::{Capabilities, Chunk, ParsedChat, ProviderApi, Sent, Transport, UsageUpdate};
use crate::tokens;
use crate::types::{ChatDelta, ChatRequest, Choice, FinishReason, Role, Usage};

/// The scripted LM as a provider: in process, registered with
/// [`Client::add_scripted`](crate::Client::add_scripted) rather than built
/// from config.
pub(crate) struct Scripted;

impl ProviderApi for Scripted {
    fn system(&self) -> &'static str {
        "scripted"
    }

    fn default_base_url(&self) -> &'static str {
        "scripted://in-process"
    }

    fn default_model(&self) -> &'static str {
        "scripted"
    }

    fn capabilities(&self, _config: &ProviderConfig) -> Capabilities {
        Capabilities {
            // It answers tool calls when scripted to, and text otherwise,
            // tools or not: a script decides, as a model would.
            tool_calling: true,
            streaming: true,
            streaming_usage: true,
            multiple_choices: true,
            ..Capabilities::default()
        }
    }
}

/// One scripted reply: text, or tool calls with optional text alongside.
///
/// Tool calls come back in OpenAI's shape in
/// [`Choice::tool_calls`](crate::Choice::tool_calls) —
/// `[{"id": "call_1", "type": "function", "function": {"name": ..., "arguments": "<JSON text>"}}]`
/// — with [`FinishReason::ToolCalls`], streamed or not; the choice's content is
/// the text, or `None` without text.
#[derive(Clone, Debug, PartialEq)]
pub enum ScriptedTurn {
    /// A text reply.
    Text(String),
    /// Tool calls (several make parallel calls), with optional text.
    ToolCalls {
        /// Text alongside the calls; `None` (or empty) for none.
        text: Option<String>,
        /// The calls, in order.
        calls: Vec<ScriptedToolCall>,
    },
}

/// A tool call a [`ScriptedTurn`] makes.
#[derive(Clone, Debug, PartialEq)]
pub struct ScriptedToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments, sent as their JSON text; a JSON string is sent as it is
    /// (see [`ScriptedToolCall::raw`]).
    pub arguments: Value,
}

impl ScriptedToolCall {
    /// A call of `name` with these arguments (usually a JSON object).
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }

    /// A call whose arguments text is `arguments` verbatim, valid JSON or not:
    /// for testing how a caller handles a model's malformed arguments.
    pub fn raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self::new(name, Value::String(arguments.into()))
    }

    /// The arguments as the JSON text OpenAI sends.
    fn arguments_text(&self) -> String {
        match &self.arguments {
            Value::String(raw) => raw.clone(),
            other => other.to_string(),
        }
    }
}

impl ScriptedTurn {
    /// A text reply.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// One tool call, without text.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Self::tool_calls([ScriptedToolCall::new(name, arguments)])
    }

    /// Several tool calls in one turn (parallel calls), without text.
    pub fn tool_calls(calls: impl IntoIterator<Item = ScriptedToolCall>) -> Self {
        Self::ToolCalls {
            text: None,
            calls: calls.into_iter().collect(),
        }
    }

    /// Sets the text: alongside the tool calls, or instead of a text reply's.
    #[must_use]
    pub fn with_text(self, text: impl Into<String>) -> Self {
        match self {
            Self::Text(_) => Self::Text(text.into()),
            Self::ToolCalls { calls, .. } => Self::ToolCalls {
                text: Some(text.into()),
                calls,
            },
        }
    }
}

impl From<String> for ScriptedTurn {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for ScriptedTurn {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

type TurnFn = dyn Fn(&ChatRequest) -> Result<ScriptedTurn, String> + Send + Sync;

enum Source {
    /// Turns in order, starting over after the last.
    Turns(Vec<ScriptedTurn>),
    /// Replies by prompt: the last user message exactly, else the first key the
    /// whole prompt contains.
    Map(Vec<(String, String)>),
    /// Turns computed from the request.
    Function(Arc<TurnFn>),
}

struct Inner {
    source: Source,
    next: AtomicUsize,
    /// Numbers the tool calls' ids, so every call of this LM has its own.
    next_call_id: AtomicU64,
    calls: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

/// A scripted LM: replies from a list, a map from prompt to reply, or a
/// function. Cloning shares the script and the counters.
#[derive(Clone)]
pub struct ScriptedLm {
    inner: Arc<Inner>,
}

impl fmt::Debug for ScriptedLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedLm")
            .field("calls", &self.calls())
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl ScriptedLm {
    fn new(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                next: AtomicUsize::new(0),
                next_call_id: AtomicU64::new(1),
                calls: AtomicU64::new(0),
                input_tokens: AtomicU64::new(0),
                output_tokens: AtomicU64::new(0),
            }),
        }
    }

    /// Replies with these, in order, starting over after the last.
    pub fn replies<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(Source::Turns(
            replies
                .into_iter()
                .map(|reply| ScriptedTurn::Text(reply.into()))
                .collect(),
        ))
    }

    /// Answers with these turns (text or tool calls), in order, starting over
    /// after the last.
    pub fn turns<I, T>(turns: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<ScriptedTurn>,
    {
        Self::new(Source::Turns(turns.into_iter().map(Into::into).collect()))
    }

    /// Replies by prompt: a key equal to the last user message wins; otherwise
    /// the first key (in the given order) that the whole prompt contains. A
    /// prompt no key matches fails the call with an invalid-request error that
    /// quotes the prompt's start.
    pub fn map<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::new(Source::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }

    /// Replies with whatever `reply` returns; an `Err` fails the call with an
    /// invalid-request error carrying the message.
    pub fn from_fn(
        reply: impl Fn(&ChatRequest) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self::from_turn_fn(move |request| reply(request).map(ScriptedTurn::Text))
    }

    /// Answers with whatever `turn` returns, text or tool calls; it sees the
    /// whole request (messages with earlier calls and their `Role::Tool`
    /// results, `params.tools`). An `Err` fails the call with an
    /// invalid-request error carrying the message.
    pub fn from_turn_fn(
        turn: impl Fn(&ChatRequest) -> Result<ScriptedTurn, String> + Send + Sync + 'static,
    ) -> Self {
        Self::new(Source::Function(Arc::new(turn)))
    }

    /// Calls answered so far.
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Tokens used so far (counted as the provider would report them).
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.inner.input_tokens.load(Ordering::Relaxed),
            output_tokens: self.inner.output_tokens.load(Ordering::Relaxed),
            ..Usage::default()
        }
    }

    fn reply(&self, request: &ChatRequest) -> Result<ScriptedTurn, String> {
        match &self.inner.source {
            Source::Turns(turns) => {
                if turns.is_empty() {
                    return Err("the scripted LM has no replies".into());
                }
                let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % turns.len();
                turns
                    .get(index)
                    .cloned()
                    .ok_or_else(|| "the scripted LM has no replies".to_owned())
            }
            Source::Map(pairs) => {
                let last_user = request
                    .messages
                    .iter()
                    .rev()
                    .find(|m| m.role == Role::User)
                    .map(|m| m.content.as_str())
                    .unwrap_or_default();
                if let Some((_, reply)) = pairs.iter().find(|(key, _)| key == last_user) {
                    return Ok(ScriptedTurn::Text(reply.clone()));
                }
                let found = pairs.iter().find(|(key, _)| {
                    request
                        .messages
                        .iter()
                        .any(|m| m.content.contains(key.as_str()))
                });
                found
                    .map(|(_, reply)| ScriptedTurn::Text(reply.clone()))
                    .ok_or_else(|| {
                        let start: String = last_user.chars().take(80).collect();
                        format!("the scripted LM has no reply for the prompt `{start}`")
                    })
            }
            Source::Function(turn) => turn(request),
        }
    }

    /// The next tool call id.
    fn call_id(&self) -> String {
        let n = self.inner.next_call_id.fetch_add(1, Ordering::Relaxed);
        format!("call_{n}")
    }
}

/// One choice's answer, ready to be sent whole or streamed.
struct Answer {
    text: String,
    /// Tool calls: id, name and arguments text. Empty for a text reply.
    calls: Vec<(String, String, String)>,
}

impl Answer {
    fn new(turn: ScriptedTurn, lm: &ScriptedLm) -> Self {
        match turn {
            ScriptedTurn::Text(text) => Self {
                text,
                calls: Vec::new(),
            },
            ScriptedTurn::ToolCalls { text, calls } => Self {
                text: text.unwrap_or_default(),
                calls: calls
                    .into_iter()
                    .map(|call| {
                        let arguments = call.arguments_text();
                        (lm.call_id(), call.name, arguments)
                    })
                    .collect(),
            },
        }
    }

    /// Output tokens by the heuristic: the text, and each call's name and
    /// arguments text (what a provider bills a tool call as).
    fn tokens(&self) -> u64 {
        let calls: u64 = self
            .calls
            .iter()
            .map(|(_, name, arguments)| {
                tokens::heuristic_tokens(name) + tokens::heuristic_tokens(arguments)
            })
            .sum();
        tokens::heuristic_tokens(&self.text) + calls
    }

    fn finish_reason(&self) -> FinishReason {
        if self.calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        }
    }

    /// `Choice::tool_calls` in OpenAI's non-streamed shape.
    fn tool_calls(&self) -> Option<Value> {
        if self.calls.is_empty() {
            return None;
        }
        let calls = self
            .calls
            .iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function",
                       "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        Some(Value::Array(calls))
    }

    fn into_choice(self, index: usize) -> Choice {
        let tool_calls = self.tool_calls();
        let finish_reason = Some(self.finish_reason());
        // As OpenAI: a pure tool call has no text (`null`), a text reply
        // always has its text, even empty.
        let content = (tool_calls.is_none() || !self.text.is_empty()).then_some(self.text);
        Choice {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            content,
            tool_calls,
            finish_reason,
        }
    }
}

/// Serves calls from a [`ScriptedLm`].
pub(crate) struct ScriptedTransport {
    pub(crate) lm: ScriptedLm,
    pub(crate) provider: Arc<str>,
}

impl Transport for ScriptedTransport {
    fn send(&self, call: Call) -> Sent {
        Sent::Ready(Some(self.answer(&call)))
    }
}

impl ScriptedTransport {
    fn answer(&self, call: &Call) -> Result<Reply, ClientError> {
        let inner = call.inner();
        let Payload::Chat(request) = &inner.payload else {
            return Err(ClientError::unsupported("embeddings").attach(&self.provider, &inner.trail));
        };
        let n = request.params.n.unwrap_or(1).max(1);
        let mut choices = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let turn = self.lm.reply(request).map_err(|message| {
                ClientError::new(ClientErrorKind::InvalidRequest, message)
                    .attach(&self.provider, &inner.trail)
            })?;
            choices.push(Answer::new(turn, &self.lm));
        }
        let model = &*inner.model;
        // The documented heuristic, whatever the model name: a scripted LM has
        // no real tokenizer, and tiktoken would cost more than the call. The
        // heuristic reads message texts only, so earlier tool calls are added
        // as their JSON text, as a provider would bill them.
        let earlier_calls: u64 = request
            .messages
            .iter()
            .filter_map(|m| m.tool_calls.as_deref())
            .map(json_heuristic_tokens)
            .sum();
        let usage = Usage {
            input_tokens: tokens::estimate_chat_tokens_heuristic(&request.messages) + earlier_calls,
            output_tokens: choices.iter().map(Answer::tokens).sum(),
            ..Usage::default()
        };
        let counters = &self.lm.inner;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters
            .input_tokens
            .fetch_add(usage.input_tokens, Ordering::Relaxed);
        counters
            .output_tokens
            .fetch_add(usage.output_tokens, Ordering::Relaxed);
        let body = if inner.operation == Operation::ChatStream {
            ReplyBody::Stream(Box::pin(futures::stream::iter(
                stream_chunks(model, &choices, usage).into_iter().map(Ok),
            )))
        } else {
            ReplyBody::Chat(ParsedChat {
                id: None,
                model: Some(model.to_owned()),
                choices: choices
                    .into_iter()
                    .enumerate()
                    .map(|(i, answer)| answer.into_choice(i))
                    .collect(),
                usage: Some(usage),
            })
        };
        Ok(Reply::new(body, None))
    }
}

/// `tokens::heuristic_tokens` of `value`'s compact JSON text, counted while
/// serialising instead of building the text: an agent's every call resends
/// all earlier tool calls, and allocating their text again each time made
/// this test double the largest cost of a scripted ReAct step.
fn json_heuristic_tokens(value: &Value) -> u64 {
    /// Counts the characters written (UTF-8 bytes that start a character).
    struct CharCount(u64);
    impl std::io::Write for CharCount {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = CharCount(0);
    // Writing a `Value` to an infallible writer cannot fail (its map keys
    // are strings); a count of 0 would only under-bill a scripted call.
    let _ = serde_json::to_writer(&mut count, value);
    count.0.div_ceil(4)
}

/// Characters per streamed piece of a tool call's arguments.
const ARGUMENT_PIECE_CHARS: usize = 8;

/// The replies as stream chunks, one delta per word, as a provider streams
/// them: each item is what one upstream event would decode to. Tool calls
/// follow the text as OpenAI streams them — per call a fragment with its
/// `index`, id and name, then its arguments in pieces under the same index —
/// which the stream's reassembly turns back into the non-streamed shape.
fn stream_chunks(model: &str, choices: &[Answer], usage: Usage) -> Vec<Vec<Chunk>> {
    let mut events = vec![vec![Chunk::Start {
        id: None,
        model: Some(model.to_owned()),
    }]];
    let delta = |index: usize,
                 content: &str,
                 tool_calls: Option<Value>,
                 finish_reason: Option<FinishReason>| {
        Chunk::Delta(ChatDelta {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            content: content.to_owned(),
            tool_calls,
            finish_reason,
        })
    };
    for (index, answer) in choices.iter().enumerate() {
        for piece in answer.text.split_inclusive(' ') {
            events.push(vec![delta(index, piece, None, None)]);
        }
        for (at, (id, name, arguments)) in answer.calls.iter().enumerate() {
            let start = json!([{"index": at, "id": id, "type": "function",
                                "function": {"name": name, "arguments": ""}}]);
            events.push(vec![delta(index, "", Some(start), None)]);
            for piece in pieces(arguments, ARGUMENT_PIECE_CHARS) {
                let more = json!([{"index": at, "function": {"arguments": piece}}]);
                events.push(vec![delta(index, "", Some(more), None)]);
            }
        }
        events.push(vec![delta(index, "", None, Some(answer.finish_reason()))]);
    }
    events.push(vec![Chunk::Usage(UsageUpdate {
        input_tokens: Some(usage.input_tokens),
        output_tokens: Some(usage.output_tokens),
        cached_input_tokens: Some(0),
        cache_write_tokens: None,
    })]);
    events.push(vec![Chunk::End]);
    events
}

/// `text` in pieces of at most `chars` characters, cut on char boundaries.
fn pieces(text: &str, chars: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest
            .char_indices()
            .nth(chars)
            .map_or(rest.len(), |(at, _)| at);
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_tokens_match_the_heuristic_on_the_text() {
        let value =
            serde_json::json!([{"id": "call_1", "arguments": r#"{"city": "Zürich"}"#}, "ü€😀"]);
        assert_eq!(
            json_heuristic_tokens(&value),
            tokens::heuristic_tokens(&value.to_string())
        );
    }

    #[test]
    fn pieces_cut_on_char_boundaries() {
        assert_eq!(
            pieces("abcdefghij", 4).collect::<Vec<_>>(),
            ["abcd", "efgh", "ij"]
        );
        assert_eq!(pieces("ééé", 2).collect::<Vec<_>>(), ["éé", "é"]);
        assert_eq!(pieces("", 2).count(), 0);
    }

    #[test]
    fn turns_convert_and_set_their_text() {
        assert_eq!(ScriptedTurn::from("hi"), ScriptedTurn::Text("hi".into()));
        let call = ScriptedTurn::tool_call("f", json!({"a": 1})).with_text("calling");
        assert_eq!(
            call,
            ScriptedTurn::ToolCalls {
                text: Some("calling".into()),
                calls: vec![ScriptedToolCall::new("f", json!({"a": 1}))],
            }
        );
        assert_eq!(
            ScriptedTurn::text("a").with_text("b"),
            ScriptedTurn::text("b")
        );
        assert_eq!(
            ScriptedToolCall::raw("f", "{oops").arguments_text(),
            "{oops"
        );
        assert_eq!(
            ScriptedToolCall::new("f", json!({"a": [1]})).arguments_text(),
            r#"{"a":[1]}"#
        );
    }
}
