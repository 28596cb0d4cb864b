//! Anthropic Messages on the wire: a `POST /v1/messages` body decoded into
//! the client's normalised types, and the response and stream events encoded
//! the way the official SDK parses them.
//!
//! Text, system prompts, stop sequences and sampling parameters translate to
//! any provider. Tool definitions, `tool_use`/`tool_result` blocks and
//! fields DSPex has no name for (`top_k`, `metadata`...) are in Anthropic's
//! own format: they reach only providers that speak it, and are refused
//! with a 400 naming the field otherwise (`chat::check_translates`).

use std::collections::BTreeMap;

use dspex_client::{ChatDelta, ChatParams, ChatResponse, FinishReason, Message, Role, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::RequestError;

/// A `POST /v1/messages` body. Unknown fields are kept in `extra`.
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    pub(crate) model: String,
    messages: Vec<InMessage>,
    /// Anthropic requires it; so does the gateway, with Anthropic's message.
    max_tokens: Option<u32>,
    #[serde(default)]
    system: Option<SystemPrompt>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SystemPrompt {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: InRole,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InRole {
    User,
    Assistant,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block: its `type`, and the whole block for the kinds that pass
/// through as written.
#[derive(Debug, Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl Block {
    fn text(&self) -> Option<&str> {
        self.rest.get("text").and_then(Value::as_str)
    }

    /// The block as the client's Anthropic encoder takes it back.
    fn into_value(self) -> Value {
        let mut object = self.rest;
        object.insert("type".into(), Value::String(self.kind));
        Value::Object(object)
    }
}

/// Decodes a body; a failure names the field (`messages[1].content`).
pub(crate) fn decode(body: &[u8]) -> Result<MessagesRequest, RequestError> {
    crate::openai::decode_json(body)
}

/// The text of a `tool_result`'s content: a string or text blocks.
fn result_text(content: Option<&Value>) -> String {
    match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        Some(other) => other.to_string(),
    }
}

fn unsupported_block(at: String, kind: &str) -> RequestError {
    RequestError::bad_request(
        Some(at),
        format!(
            "content blocks of type `{kind}` are not supported by this gateway (text, tool_use and tool_result are)"
        ),
    )
}

impl MessagesRequest {
    /// Whether the reply streams.
    pub(crate) fn streams(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the request holds anything in Anthropic's own format (tools,
    /// tool blocks, unknown fields), named for the 400 when it would go to
    /// a provider of another format.
    pub(crate) fn native_only_field(params: &ChatParams, messages: &[Message]) -> Option<String> {
        if let Some(field) = params.extra.keys().next() {
            return Some(field.clone());
        }
        if params.tools.is_some() {
            return Some("tools".into());
        }
        if params.tool_choice.is_some() {
            return Some("tool_choice".into());
        }
        messages.iter().enumerate().find_map(|(i, m)| {
            (m.tool_calls.is_some() || m.role == Role::Tool)
                .then(|| format!("messages[{i}].content"))
        })
    }

    /// The conversation and parameters in the client's types.
    pub(crate) fn into_parts(self) -> Result<(Vec<Message>, ChatParams), RequestError> {
        let Some(max_tokens) = self.max_tokens else {
            return Err(RequestError::bad_request(
                Some("max_tokens".into()),
                "max_tokens: Field required",
            ));
        };
        if self.messages.is_empty() {
            return Err(RequestError::bad_request(
                Some("messages".into()),
                "`messages` must hold at least one message",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
        match self.system {
            None => {}
            Some(SystemPrompt::Text(text)) => messages.push(Message::system(text)),
            Some(SystemPrompt::Blocks(blocks)) => {
                let mut text = String::new();
                for (b, block) in blocks.iter().enumerate() {
                    match (block.kind.as_str(), block.text()) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => return Err(unsupported_block(format!("system[{b}]"), kind)),
                    }
                }
                messages.push(Message::system(text));
            }
        }
        for (i, message) in self.messages.into_iter().enumerate() {
            let role = match message.role {
                InRole::User => Role::User,
                InRole::Assistant => Role::Assistant,
            };
            let blocks = match message.content {
                Content::Text(text) => {
                    messages.push(Message::new(role, text));
                    continue;
                }
                Content::Blocks(blocks) => blocks,
            };
            let mut text = String::new();
            let mut tool_uses = Vec::new();
            for (b, block) in blocks.into_iter().enumerate() {
                match (role, block.kind.as_str()) {
                    (_, "text") => text.push_str(block.text().unwrap_or_default()),
                    (Role::Assistant, "tool_use") => tool_uses.push(block.into_value()),
                    (Role::User, "tool_result") => {
                        let id = block
                            .rest
                            .get("tool_use_id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                RequestError::bad_request(
                                    Some(format!("messages[{i}].content[{b}].tool_use_id")),
                                    "a tool_result needs its tool_use_id",
                                )
                            })?
                            .to_owned();
                        let mut result =
                            Message::new(Role::Tool, result_text(block.rest.get("content")));
                        result.tool_call_id = Some(id);
                        messages.push(result);
                    }
                    (_, kind) => {
                        return Err(unsupported_block(
                            format!("messages[{i}].content[{b}].type"),
                            kind,
                        ));
                    }
                }
            }
            if !tool_uses.is_empty() {
                let mut assistant = Message::new(Role::Assistant, text);
                assistant.tool_calls = Some(std::sync::Arc::new(Value::Array(tool_uses)));
                messages.push(assistant);
            } else if !text.is_empty() || role == Role::Assistant {
                messages.push(Message::new(role, text));
            }
        }
        let mut extra = self.extra;
        extra.remove("stream");
        let params = ChatParams {
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: Some(max_tokens),
            stop: self.stop_sequences.unwrap_or_default(),
            tools: self.tools.map(std::sync::Arc::new),
            tool_choice: self.tool_choice,
            extra,
            ..ChatParams::default()
        };
        Ok((messages, params))
    }
}

/// Anthropic's name for a finish reason.
fn stop_reason(reason: Option<&FinishReason>) -> Value {
    match reason {
        None => Value::Null,
        Some(FinishReason::Stop) => json!("end_turn"),
        Some(FinishReason::Length) => json!("max_tokens"),
        Some(FinishReason::ToolCalls) => json!("tool_use"),
        Some(FinishReason::ContentFilter) => json!("refusal"),
        Some(FinishReason::Other(other)) => json!(other),
    }
}

/// Anthropic's usage object.
fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens
            .saturating_sub(usage.cached_input_tokens)
            .saturating_sub(usage.cache_write_tokens),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    })
}

/// A tool call as a `tool_use` block: Anthropic providers return them so
/// already; an OpenAI-shaped call (`function.name`, `function.arguments`)
/// is rewritten.
fn tool_use_block(call: &Value) -> Value {
    if call.get("type").and_then(Value::as_str) == Some("tool_use") {
        return call.clone();
    }
    let function = call.get("function");
    let arguments = function
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .unwrap_or_else(|| json!({}));
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or(Value::Null),
        "name": function.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
        "input": arguments,
    })
}

/// The message id: the provider's when it is Anthropic's kind, else one
/// made from the call's correlation id.
pub(crate) fn message_id(response: &ChatResponse) -> String {
    match &response.id {
        Some(id) if id.starts_with("msg_") => id.clone(),
        _ => format!("msg_{}", response.correlation_id),
    }
}

/// A `message` object (the first choice: Anthropic has no `n`).
pub(crate) fn message_json(response: &ChatResponse, model: &str) -> Value {
    let choice = response.choices.first();
    let mut content = Vec::new();
    if let Some(text) = choice.and_then(|c| c.content.as_deref())
        && !text.is_empty()
    {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(Value::Array(calls)) = choice.and_then(|c| c.tool_calls.as_ref()) {
        content.extend(calls.iter().map(tool_use_block));
    }
    json!({
        "id": message_id(response),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.and_then(|c| c.finish_reason.as_ref())),
        "stop_sequence": null,
        "usage": usage_json(&response.usage),
    })
}

/// The open content block of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenBlock {
    None,
    Text,
    ToolUse,
}

/// Turns a chat stream's events into Anthropic's event sequence:
/// `message_start`, then per content block `content_block_start`,
/// `content_block_delta`s and `content_block_stop`, then `message_delta`
/// (stop reason, usage) and `message_stop`.
#[derive(Debug)]
pub(crate) struct EventEncoder {
    id: String,
    model: String,
    started: bool,
    open: OpenBlock,
    index: usize,
    finish: Option<FinishReason>,
}

/// One SSE event: its name and JSON data.
pub(crate) type SseEvent = (&'static str, Value);

impl EventEncoder {
    pub(crate) fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            started: false,
            open: OpenBlock::None,
            index: 0,
            finish: None,
        }
    }

    /// `message_start` (and a ping, as Anthropic sends), once.
    pub(crate) fn start(&mut self, out: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push((
            "message_start",
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
        out.push(("ping", json!({"type": "ping"})));
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if self.open != OpenBlock::None {
            out.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.index}),
            ));
            self.open = OpenBlock::None;
            self.index += 1;
        }
    }

    /// The events for one delta of the first choice (other choices are
    /// ignored: Anthropic has no `n`).
    pub(crate) fn delta(&mut self, delta: &ChatDelta, out: &mut Vec<SseEvent>) {
        self.start(out);
        if delta.index != 0 {
            return;
        }
        if !delta.content.is_empty() {
            if self.open != OpenBlock::Text {
                self.close(out);
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.index,
                           "content_block": {"type": "text", "text": ""}}),
                ));
                self.open = OpenBlock::Text;
            }
            out.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": self.index,
                       "delta": {"type": "text_delta", "text": delta.content}}),
            ));
        }
        if let Some(fragment) = &delta.tool_calls {
            self.tool_fragment(fragment, out);
        }
        if let Some(reason) = &delta.finish_reason {
            self.finish = Some(reason.clone());
        }
    }

    /// Anthropic providers stream a `tool_use` block's start, then its input
    /// as `partial_json` pieces; both pass through as Anthropic's events.
    fn tool_fragment(&mut self, fragment: &Value, out: &mut Vec<SseEvent>) {
        for piece in fragment
            .as_array()
            .map_or(std::slice::from_ref(fragment), Vec::as_slice)
        {
            if piece.get("type").and_then(Value::as_str) == Some("tool_use") {
                self.close(out);
                let mut block = piece.clone();
                if let Some(object) = block.as_object_mut() {
                    object.insert("input".into(), json!({}));
                }
                out.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": self.index, "content_block": block}),
                ));
                self.open = OpenBlock::ToolUse;
            } else if let Some(partial) = piece.get("partial_json").and_then(Value::as_str)
                && self.open == OpenBlock::ToolUse
            {
                out.push((
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "input_json_delta", "partial_json": partial}}),
                ));
            }
        }
    }

    /// The closing events, with the whole call's usage.
    pub(crate) fn finish(&mut self, response: &ChatResponse, out: &mut Vec<SseEvent>) {
        self.start(out);
        self.close(out);
        let reason = self
            .finish
            .clone()
            .or_else(|| response.finish_reason().cloned());
        out.push((
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(reason.as_ref()), "stop_sequence": null},
                   "usage": usage_json(&response.usage)}),
        ));
        out.push(("message_stop", json!({"type": "message_stop"})));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;

    #[test]
    fn a_full_body_decodes() {
        let body = br#"{"model":"claude","max_tokens":64,"system":[{"type":"text","text":"be brief"}],
            "stop_sequences":["END"],"temperature":0,"top_k":5,"metadata":{"user_id":"u"},"stream":true,
            "messages":[{"role":"user","content":"hi"},
              {"role":"assistant","content":[{"type":"text","text":"calling"},{"type":"tool_use","id":"t1","name":"f","input":{"a":1}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"42"}]},{"type":"text","text":"thanks"}]}]}"#;
        let request = decode(body).unwrap();
        assert!(request.streams());
        let (messages, params) = request.into_parts().unwrap();
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::User
            ]
        );
        assert_eq!(messages[0].content, "be brief");
        assert_eq!(messages[2].tool_calls.as_ref().unwrap()[0]["name"], "f");
        assert_eq!(messages[3].tool_call_id.as_deref(), Some("t1"));
        assert_eq!(messages[3].content, "42");
        assert_eq!(params.max_tokens, Some(64));
        assert_eq!(params.stop, ["END"]);
        assert_eq!(params.extra["top_k"], 5);
        assert!(!params.extra.contains_key("stream"));
        assert_eq!(
            MessagesRequest::native_only_field(&params, &messages).as_deref(),
            Some("metadata")
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (body, param) in [
            (
                &br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#[..],
                "max_tokens",
            ),
            (
                br#"{"model":"m","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
                "messages[0].content[0].type",
            ),
            (br#"{"model":"m","max_tokens":1,"messages":[]}"#, "messages"),
        ] {
            let Err(error) = decode(body).and_then(|r| r.into_parts().map(|_| ())) else {
                panic!("accepted {}", String::from_utf8_lossy(body));
            };
            assert_eq!(error.status, 400);
            assert_eq!(error.param.as_deref(), Some(param), "{}", error.message);
        }
    }

    #[test]
    fn openai_tool_calls_become_tool_use_blocks() {
        let block = tool_use_block(&json!({"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}));
        assert_eq!(
            block,
            json!({"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}})
        );
    }

    #[test]
    fn stream_events_come_in_anthropic_order() {
        let mut encoder = EventEncoder::new("msg_1".into(), "m".into());
        let mut out = Vec::new();
        for text in ["Hel", "lo"] {
            encoder.delta(
                &ChatDelta {
                    index: 0,
                    content: text.into(),
                    tool_calls: None,
                    finish_reason: None,
                },
                &mut out,
            );
        }
        encoder.delta(
            &ChatDelta {
                index: 0,
                content: String::new(),
                tool_calls: Some(json!({"type": "tool_use", "id": "t", "name": "f", "input": {}})),
                finish_reason: None,
            },
            &mut out,
        );
        encoder.delta(
            &ChatDelta {
                index: 0,
                content: String::new(),
                tool_calls: Some(json!({"index": 1, "partial_json": "{\"a\":1}"})),
                finish_reason: Some(FinishReason::ToolCalls),
            },
            &mut out,
        );
        let names: Vec<&str> = out.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
            ]
        );
        assert_eq!(out[6].1["index"], 1);
        assert_eq!(out[7].1["delta"]["partial_json"], "{\"a\":1}");
    }
}
