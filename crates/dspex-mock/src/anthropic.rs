//! `POST /v1/messages`: Anthropic's Messages API, plain and streamed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::content::{Ask, Message, Prompt, Reply, ResponseFormat, arguments_json};
use crate::openai::pieces;
use crate::server::{BodyMode, Plan, Shared, with_limits};
use crate::stats::Route;
use crate::tokens::{approx_tokens, cut_to_tokens};
use crate::wire::{ApiError, Flavor, json_response, sse_response, truncated_json_response};

const FLAVOR: Flavor = Flavor::Anthropic;

/// The parts of a messages request the mock acts on.
#[derive(Debug)]
struct MessagesRequest {
    model: String,
    prompt: Prompt,
    max_tokens: u64,
    stop_sequences: Vec<String>,
    stream: bool,
    tool: Option<String>,
}

/// The handler.
pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = shared.stats.begin(Route::Messages);
    let seq = shared.next_seq();
    let response = match handle(&shared, seq, &headers, &body).await {
        Ok(response) | Err(response) => response,
    };
    shared.finish(response, seq, FLAVOR)
}

async fn handle(
    shared: &Shared,
    seq: u64,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let json = shared.read_body(Route::Messages, headers, body);
    shared
        .check_auth(FLAVOR, headers)
        .map_err(|e| e.into_response(FLAVOR))?;
    if !headers.contains_key("anthropic-version") {
        return Err(
            ApiError::bad_request("anthropic-version: header is required").into_response(FLAVOR),
        );
    }
    let json = json.ok_or_else(|| {
        ApiError::bad_request(
            "There was an error parsing the body of your request: it is not valid JSON.",
        )
        .into_response(FLAVOR)
    })?;
    let request = parse(&json).map_err(|e| e.into_response(FLAVOR))?;
    let format = ResponseFormat::Text;
    let ask = Ask {
        prompt: &request.prompt,
        tool: request.tool.as_deref(),
        format: &format,
    };
    let input_tokens = request.prompt.tokens();
    let plan = shared
        .plan(seq, FLAVOR, || input_tokens + request.max_tokens)
        .await?;
    let reply = shared.responder.reply(ask, plan.forced.as_deref(), true);
    Ok(respond(shared, seq, &request, reply, input_tokens, &plan))
}

fn field_required(name: &str) -> ApiError {
    ApiError::bad_request(format!("{name}: Field required"))
}

fn wrong_type(name: &str, expected: &str) -> ApiError {
    ApiError::bad_request(format!("{name}: Input should be {expected}"))
}

/// Present and not null.
fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|value| !value.is_null())
}

/// A string, or the concatenated `text` of an array of text blocks.
fn blocks_text(value: &Value, name: &str) -> Result<String, ApiError> {
    if let Value::Array(blocks) = value
        && blocks.iter().any(|block| {
            matches!(
                block.get("type").and_then(Value::as_str),
                Some("tool_use" | "tool_result")
            )
        })
    {
        return Err(ApiError::bad_request(format!(
            "{name}: tool blocks are only allowed in messages"
        )));
    }
    plain_blocks_text(value, name)
}

/// [`blocks_text`] without the check for tool blocks, which the caller
/// handles.
fn plain_blocks_text(value: &Value, name: &str) -> Result<String, ApiError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (i, block) in blocks.iter().enumerate() {
                let Some(kind) = block.get("type").and_then(Value::as_str) else {
                    return Err(field_required(&format!("{name}.{i}.type")));
                };
                if kind == "text" {
                    match block.get("text") {
                        Some(Value::String(piece)) => text.push_str(piece),
                        _ => return Err(field_required(&format!("{name}.{i}.text"))),
                    }
                }
            }
            Ok(text)
        }
        _ => Err(wrong_type(name, "a valid string or a valid list")),
    }
}

/// A message given as content blocks: its text blocks' text, and its tool
/// blocks (checked, and written into its tool lines): `tool_use` in assistant
/// messages as `name(input-json)`, `tool_result` in user messages as their
/// text (`error: <text>` when `is_error`).
fn message_blocks<'a>(
    i: usize,
    role: &str,
    blocks: &'a [Value],
    pairing: &mut Pairing<'a>,
) -> Result<Message, ApiError> {
    let mut message = Message::new(role.to_owned(), String::new());
    let mut results: Vec<(usize, &'a str)> = Vec::new();
    let mut uses: Vec<&'a str> = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        let Some(kind) = block.get("type").and_then(Value::as_str) else {
            return Err(field_required(&format!("{at}.type")));
        };
        let string = |key: &str| match block.get(key) {
            None | Some(Value::Null) => Err(field_required(&format!("{at}.{kind}.{key}"))),
            Some(Value::String(text)) => Ok(text.as_str()),
            Some(_) => Err(wrong_type(&format!("{at}.{kind}.{key}"), "a valid string")),
        };
        match (kind, role) {
            ("text", _) => match block.get("text") {
                Some(Value::String(piece)) => message.text.push_str(piece),
                _ => return Err(field_required(&format!("{at}.text"))),
            },
            ("tool_use", "assistant") => {
                let id = string("id")?;
                let name = string("name")?;
                let input = match block.get("input") {
                    None | Some(Value::Null) => {
                        return Err(field_required(&format!("{at}.tool_use.input")));
                    }
                    Some(input @ Value::Object(_)) => input,
                    Some(_) => {
                        return Err(wrong_type(
                            &format!("{at}.tool_use.input"),
                            "a valid dictionary",
                        ));
                    }
                };
                message.push_tool_call(name, &input.to_string());
                uses.push(id);
            }
            ("tool_result", "user") => {
                let id = string("tool_use_id")?;
                let is_error = match block.get("is_error") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(is_error)) => *is_error,
                    Some(_) => {
                        return Err(wrong_type(
                            &format!("{at}.tool_result.is_error"),
                            "a valid boolean",
                        ));
                    }
                };
                let text = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(content) => {
                        plain_blocks_text(content, &format!("{at}.tool_result.content"))?
                    }
                };
                if is_error {
                    message.push_tool_line(&format!("error: {text}"));
                } else {
                    message.push_tool_line(&text);
                }
                message.tool_result = true;
                results.push((j, id));
            }
            ("tool_use" | "tool_result", _) => {
                return Err(ApiError::bad_request(format!(
                    "{at}: `{kind}` blocks are not allowed in `{role}` messages"
                )));
            }
            // Images, documents, thinking...: no text the mock reads.
            _ => {}
        }
    }
    pairing.turn(i, role, &results)?;
    pairing.uses(i, uses);
    Ok(message)
}

/// Anthropic's rule that tool use and results pair up: the `tool_use` blocks
/// of an assistant turn are each answered by a `tool_result` block in the
/// next user turn, and a `tool_result` answers a `tool_use` of the turn
/// before. Consecutive messages of one role form one turn, as the API
/// combines them.
#[derive(Default)]
struct Pairing<'a> {
    /// Whether the previous message was the assistant's (`None` before the
    /// first).
    last_assistant: Option<bool>,
    /// The assistant message whose tool uses await results, and their ids.
    open: Option<(usize, Vec<&'a str>)>,
    /// Whether the current user turn follows an assistant turn with tool use.
    answering: bool,
}

impl<'a> Pairing<'a> {
    /// A message with its `tool_result` blocks (position and id).
    fn turn(&mut self, i: usize, role: &str, results: &[(usize, &str)]) -> Result<(), ApiError> {
        let assistant = role == "assistant";
        if self.last_assistant != Some(assistant) {
            if assistant {
                // A user turn ended: it must have answered every tool use.
                self.check_answered()?;
            } else {
                self.answering = self.open.is_some();
            }
        }
        self.last_assistant = Some(assistant);
        for (j, id) in results {
            let known = self.answering
                && self
                    .open
                    .as_mut()
                    .and_then(|(_, ids)| {
                        ids.iter()
                            .position(|open| open == id)
                            .map(|at| ids.remove(at))
                    })
                    .is_some();
            if !known {
                return Err(ApiError::bad_request(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` \
                     blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` \
                     block in the previous message."
                )));
            }
        }
        Ok(())
    }

    /// The `tool_use` ids of assistant message `i`.
    fn uses(&mut self, i: usize, ids: Vec<&'a str>) {
        if ids.is_empty() {
            return;
        }
        match &mut self.open {
            Some((_, open)) => open.extend(ids),
            None => self.open = Some((i, ids)),
        }
    }

    fn check_answered(&mut self) -> Result<(), ApiError> {
        let Some((index, ids)) = self.open.take() else {
            return Ok(());
        };
        self.answering = false;
        if ids.is_empty() {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "messages.{index}: `tool_use` ids were found without `tool_result` blocks immediately \
             after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the \
             next message.",
            ids.join(", ")
        )))
    }

    /// The end of the messages: tool uses must have been answered.
    fn end(&mut self) -> Result<(), ApiError> {
        self.check_answered()
    }
}

fn parse(body: &Value) -> Result<MessagesRequest, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "body: Input should be a valid dictionary",
        ));
    }
    let model = match field(body, "model") {
        None => return Err(field_required("model")),
        Some(Value::String(model)) => model.clone(),
        Some(_) => return Err(wrong_type("model", "a valid string")),
    };
    let max_tokens = match field(body, "max_tokens") {
        None => return Err(field_required("max_tokens")),
        Some(value) => match value.as_u64() {
            Some(max) if max >= 1 => max,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "max_tokens: Input should be greater than or equal to 1",
                ));
            }
            None => return Err(wrong_type("max_tokens", "a valid integer")),
        },
    };
    let messages = match field(body, "messages") {
        None => return Err(field_required("messages")),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(wrong_type("messages", "a valid list")),
    };
    let mut prompt = Prompt::default();
    if let Some(system) = field(body, "system") {
        prompt.system_field = Some(blocks_text(system, "system")?);
    }
    let mut pairing = Pairing::default();
    for (i, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role.to_owned(),
            Some(_) => {
                return Err(wrong_type(
                    &format!("messages.{i}.role"),
                    "'user' or 'assistant'",
                ));
            }
            None => return Err(field_required(&format!("messages.{i}.role"))),
        };
        let name = format!("messages.{i}.content");
        let parsed = match message.get("content") {
            None => return Err(field_required(&name)),
            Some(Value::Array(blocks)) => message_blocks(i, &role, blocks, &mut pairing)?,
            Some(content) => {
                pairing.turn(i, &role, &[])?;
                Message::new(role, plain_blocks_text(content, &name)?)
            }
        };
        prompt.messages.push(parsed);
    }
    pairing.end()?;
    let stop_sequences = match field(body, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|stop| {
                stop.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type("stop_sequences", "a valid list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("stop_sequences", "a valid list")),
    };
    let stream = match field(body, "stream") {
        None => false,
        Some(value) => value
            .as_bool()
            .ok_or_else(|| wrong_type("stream", "a valid boolean"))?,
    };
    let tool = match field(body, "tools") {
        None => None,
        Some(Value::Array(tools)) => match tools.first() {
            None => None,
            Some(first) => match first.get("name").and_then(Value::as_str) {
                Some(name) => Some(name.to_owned()),
                None => return Err(field_required("tools.0.name")),
            },
        },
        Some(_) => return Err(wrong_type("tools", "a valid list")),
    };
    Ok(MessagesRequest {
        model,
        prompt,
        max_tokens,
        stop_sequences,
        stream,
        tool,
    })
}

/// The final content and stop reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Text {
        text: String,
        stop_reason: &'static str,
        stop_sequence: Option<String>,
    },
    ToolUse {
        text: Option<String>,
        calls: Vec<UseOut>,
    },
}

/// A `tool_use` block as sent: the name, the input, and the input's JSON text
/// (for usage and the streamed `input_json_delta` pieces).
#[derive(Debug, Clone, PartialEq, Eq)]
struct UseOut {
    name: String,
    input: Value,
    json: String,
}

impl Answer {
    fn new(reply: Reply, stop_sequences: &[String], max_tokens: u64) -> Self {
        let mut text = match reply {
            Reply::ToolCalls { text, calls } => {
                let calls = calls
                    .into_iter()
                    .map(|call| UseOut {
                        json: arguments_json(&call),
                        name: call.name,
                        input: call.arguments,
                    })
                    .collect();
                return Self::ToolUse { text, calls };
            }
            Reply::Text(text) => text,
        };
        let first_stop = stop_sequences
            .iter()
            .filter(|stop| !stop.is_empty())
            .filter_map(|stop| text.find(stop.as_str()).map(|at| (at, stop)))
            .min_by_key(|(at, _)| *at);
        let mut stop_sequence = None;
        if let Some((at, stop)) = first_stop {
            text.truncate(at);
            stop_sequence = Some(stop.clone());
        }
        if let Some(cut) = cut_to_tokens(&text, max_tokens) {
            let cut = cut.len();
            text.truncate(cut);
            return Self::Text {
                text,
                stop_reason: "max_tokens",
                stop_sequence: None,
            };
        }
        let stop_reason = if stop_sequence.is_some() {
            "stop_sequence"
        } else {
            "end_turn"
        };
        Self::Text {
            text,
            stop_reason,
            stop_sequence,
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Self::Text { text, .. } => approx_tokens(text),
            Self::ToolUse { text, calls } => {
                let calls: u64 = calls
                    .iter()
                    .map(|call| approx_tokens(&call.name) + approx_tokens(&call.json))
                    .sum();
                approx_tokens(text.as_deref().unwrap_or_default()) + calls
            }
        }
    }

    fn stop_reason(&self) -> &'static str {
        match self {
            Self::Text { stop_reason, .. } => stop_reason,
            Self::ToolUse { .. } => "tool_use",
        }
    }

    fn stop_sequence(&self) -> Option<&str> {
        match self {
            Self::Text { stop_sequence, .. } => stop_sequence.as_deref(),
            Self::ToolUse { .. } => None,
        }
    }
}

#[derive(Serialize, Clone, Copy)]
struct Usage {
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

#[derive(Serialize)]
struct MessageBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageBody<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: MessageDelta<'a>,
        usage: OutputUsage,
    },
    MessageStop,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct MessageDelta<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u64,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::Ping => "ping",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
        }
    }

    fn sse(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("event: {}\ndata: {json}\n\n", self.name())
    }
}

fn respond(
    shared: &Shared,
    seq: u64,
    request: &MessagesRequest,
    reply: Reply,
    input_tokens: u64,
    plan: &Plan,
) -> Response {
    let answer = Answer::new(reply, &request.stop_sequences, request.max_tokens);
    let output_tokens = answer.tokens();
    let id = format!("msg_{seq}");
    let usage = Usage {
        input_tokens,
        output_tokens,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
    };
    // One id per tool use, unique across the server's requests.
    let tool_ids: Vec<String> = match &answer {
        Answer::Text { .. } => Vec::new(),
        Answer::ToolUse { calls, .. } => (0..calls.len())
            .map(|k| format!("toolu_{seq}_{k}"))
            .collect(),
    };
    let response = if request.stream {
        shared.stats.streamed();
        let events = stream_events(
            &id,
            &tool_ids,
            request,
            &answer,
            usage,
            shared.config.chunk_chars,
        );
        match plan.mode {
            BodyMode::Normal => sse_response(events.concat()),
            BodyMode::Truncate => {
                let keep = (events.len() / 2).max(1);
                sse_response(events.get(..keep).unwrap_or_default().concat())
            }
            BodyMode::MalformedStart => sse_response(format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"{id}\",\n\n"
            )),
            BodyMode::Malformed => {
                // message_start, content_block_start, ping, then a garbled delta, then the normal end.
                let mut body: String = events.iter().take(3).map(String::as_str).collect();
                body.push_str(
                    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\n\n",
                );
                for event in events.iter().skip(events.len().saturating_sub(3)) {
                    body.push_str(event);
                }
                sse_response(body)
            }
        }
    } else {
        let message = MessageBody {
            id: &id,
            kind: "message",
            role: "assistant",
            model: &request.model,
            content: blocks(&answer, &tool_ids),
            stop_reason: Some(answer.stop_reason()),
            stop_sequence: answer.stop_sequence(),
            usage,
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        match plan.mode {
            BodyMode::Normal => json_response(StatusCode::OK, body),
            BodyMode::Truncate => truncated_json_response(&body),
            BodyMode::Malformed | BodyMode::MalformedStart => json_response(
                StatusCode::OK,
                format!(
                    "{{\"id\":\"{id}\",\"type\":\"message\",\"role\":\"assistant\",\"content\": [ {{\"type\": \"text\", \"text\": "
                ),
            ),
        }
    };
    if plan.mode == BodyMode::Normal {
        shared.stats.tokens(input_tokens, output_tokens);
    }
    with_limits(response, plan, FLAVOR)
}

/// The content blocks of a complete message: any text, then the tool uses.
fn blocks<'a>(answer: &'a Answer, tool_ids: &'a [String]) -> Vec<Block<'a>> {
    match answer {
        Answer::Text { text, .. } => vec![Block::Text { text }],
        Answer::ToolUse { text, calls } => text
            .as_deref()
            .map(|text| Block::Text { text })
            .into_iter()
            .chain(calls.iter().zip(tool_ids).map(|(call, id)| Block::ToolUse {
                id,
                name: &call.name,
                input: &call.input,
            }))
            .collect(),
    }
}

/// Every SSE event of a streamed message, `message_stop` last.
fn stream_events(
    id: &str,
    tool_ids: &[String],
    request: &MessagesRequest,
    answer: &Answer,
    usage: Usage,
    chunk_chars: usize,
) -> Vec<String> {
    let start = Event::MessageStart {
        message: MessageBody {
            id,
            kind: "message",
            role: "assistant",
            model: &request.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: Usage {
                output_tokens: 1,
                ..usage
            },
        },
    };
    let mut events = vec![start.sse()];
    // As Anthropic streams blocks: one at a time, each opened, filled and
    // closed; a `ping` after the first opens; a tool use opens with an empty
    // input, whose JSON text then arrives in `input_json_delta` pieces.
    let (text, calls) = match answer {
        Answer::Text { text, .. } => (Some(text.as_str()), &[][..]),
        Answer::ToolUse { text, calls } => (text.as_deref(), calls.as_slice()),
    };
    let empty = Value::Object(Map::new());
    let mut index = 0;
    if let Some(text) = text {
        events.push(
            Event::ContentBlockStart {
                index,
                content_block: Block::Text { text: "" },
            }
            .sse(),
        );
        events.push(Event::Ping.sse());
        for piece in pieces(text, chunk_chars) {
            events.push(
                Event::ContentBlockDelta {
                    index,
                    delta: BlockDelta::TextDelta { text: piece },
                }
                .sse(),
            );
        }
        events.push(Event::ContentBlockStop { index }.sse());
        index += 1;
    }
    for (call, tool_id) in calls.iter().zip(tool_ids) {
        events.push(
            Event::ContentBlockStart {
                index,
                content_block: Block::ToolUse {
                    id: tool_id,
                    name: &call.name,
                    input: &empty,
                },
            }
            .sse(),
        );
        if index == 0 {
            events.push(Event::Ping.sse());
        }
        for piece in pieces(&call.json, chunk_chars) {
            events.push(
                Event::ContentBlockDelta {
                    index,
                    delta: BlockDelta::InputJsonDelta {
                        partial_json: piece,
                    },
                }
                .sse(),
            );
        }
        events.push(Event::ContentBlockStop { index }.sse());
        index += 1;
    }
    events.push(
        Event::MessageDelta {
            delta: MessageDelta {
                stop_reason: answer.stop_reason(),
                stop_sequence: answer.stop_sequence(),
            },
            usage: OutputUsage {
                output_tokens: usage.output_tokens,
            },
        }
        .sse(),
    );
    events.push(Event::MessageStop.sse());
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_requires_fields() {
        let err = parse(&json!({"model": "m", "messages": []})).unwrap_err();
        assert_eq!(err.message, "max_tokens: Field required");
        let err = parse(&json!({"model": "m", "max_tokens": 5})).unwrap_err();
        assert_eq!(err.message, "messages: Field required");
        let ok = parse(
            &json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "sys"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        )
        .unwrap();
        assert_eq!(ok.prompt.system_field.as_deref(), Some("sys"));
        assert_eq!(ok.prompt.last_user(), "hi");
    }

    #[test]
    fn tool_turns_parse_and_pair_up() {
        let body = |messages: Value| json!({"model": "m", "max_tokens": 5, "messages": messages});
        let tool_use =
            |id: &str| json!({"type": "tool_use", "id": id, "name": "f", "input": {"q": 1}});
        let result = |id: &str, content: Value| json!({"type": "tool_result", "tool_use_id": id, "content": content});
        let question = json!({"role": "user", "content": "question"});
        let ok = parse(&body(json!([
            question,
            {"role": "assistant", "content": [{"type": "text", "text": "Looking."}, tool_use("t1"), tool_use("t2")]},
            // Consecutive user messages are one turn, as the client sends
            // one message per tool result.
            {"role": "user", "content": [result("t1", json!("one"))]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                 "content": [{"type": "text", "text": "two"}]},
                {"type": "text", "text": "and?"}]},
        ])))
        .unwrap();
        assert_eq!(
            ok.prompt.full_text(),
            "question\nLooking.\nf({\"q\":1})\nf({\"q\":1})\none\nand?\nerror: two"
        );
        assert_eq!(ok.prompt.last_turn_text(), "one\nand?\nerror: two");
        assert_eq!(ok.prompt.last_user(), "and?");
        let only_results = parse(&body(json!([
            question,
            {"role": "assistant", "content": [tool_use("t1")]},
            {"role": "user", "content": [result("t1", json!(null))]},
        ])))
        .unwrap();
        assert_eq!(only_results.prompt.last_user(), "question");

        let cases = [
            (
                json!([question, {"role": "user", "content": [result("t9", json!("r"))]}]),
                "messages.1.content.0: unexpected `tool_use_id` found in `tool_result` blocks: t9",
            ),
            (
                json!([question, {"role": "assistant", "content": [tool_use("t1"), tool_use("t2")]},
                    {"role": "user", "content": [result("t1", json!("r"))]},
                    {"role": "assistant", "content": "?"}]),
                "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: t2",
            ),
            (
                json!([question, {"role": "assistant", "content": [tool_use("t1")]}]),
                "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: t1",
            ),
            (
                json!([question, {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]),
                "messages.1.content.0.tool_use.id: Field required",
            ),
            (
                json!([question, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]),
                "messages.1.content.0.tool_use.input: Input should be a valid dictionary",
            ),
            (
                json!([{"role": "user", "content": [tool_use("t1")]}]),
                "messages.0.content.0: `tool_use` blocks are not allowed in `user` messages",
            ),
            (
                json!([question, {"role": "assistant", "content": [tool_use("t1")]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": "yes"}]}]),
                "messages.2.content.0.tool_result.is_error: Input should be a valid boolean",
            ),
        ];
        for (messages, expected) in cases {
            let err = parse(&body(messages.clone())).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{messages}");
            assert!(
                err.message.starts_with(expected),
                "{messages}: {}",
                err.message
            );
        }
    }

    #[test]
    fn answer_reasons() {
        let a = Answer::new(Reply::Text("hello world".into()), &["wor".into()], 100);
        assert_eq!(a.stop_reason(), "stop_sequence");
        assert_eq!(a.stop_sequence(), Some("wor"));
        let a = Answer::new(Reply::Text("hello world".into()), &[], 1);
        assert_eq!(a.stop_reason(), "max_tokens");
        assert_eq!(a.tokens(), 1);
    }
}
