//! `POST /v1/messages`: Anthropic's Messages API, plain and streamed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::content::{Ask, Message, Prompt, Reply, ResponseFormat};
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
        let text = match message.get("content") {
            None => return Err(field_required(&format!("messages.{i}.content"))),
            Some(content) => blocks_text(content, &format!("messages.{i}.content"))?,
        };
        prompt.messages.push(Message { role, text });
    }
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
        name: String,
    },
}

impl Answer {
    fn new(reply: Reply, stop_sequences: &[String], max_tokens: u64) -> Self {
        let mut text = match reply {
            Reply::ToolCall(name) => return Self::ToolUse { name },
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
            Self::ToolUse { name } => approx_tokens(name) + 1,
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
        input: Map<String, Value>,
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
    let tool_id = format!("toolu_{seq}");
    let usage = Usage {
        input_tokens,
        output_tokens,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
    };
    let block = match &answer {
        Answer::Text { text, .. } => Block::Text { text },
        Answer::ToolUse { name } => Block::ToolUse {
            id: &tool_id,
            name,
            input: Map::new(),
        },
    };
    let response = if request.stream {
        shared.stats.streamed();
        let events = stream_events(
            &id,
            &tool_id,
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
            content: vec![block],
            stop_reason: Some(answer.stop_reason()),
            stop_sequence: answer.stop_sequence(),
            usage,
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        match plan.mode {
            BodyMode::Normal => json_response(StatusCode::OK, body),
            BodyMode::Truncate => truncated_json_response(&body),
            BodyMode::Malformed => json_response(
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

/// Every SSE event of a streamed message, `message_stop` last.
fn stream_events(
    id: &str,
    tool_id: &str,
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
    match answer {
        Answer::Text { text, .. } => {
            events.push(
                Event::ContentBlockStart {
                    index: 0,
                    content_block: Block::Text { text: "" },
                }
                .sse(),
            );
            events.push(Event::Ping.sse());
            for piece in pieces(text, chunk_chars) {
                events.push(
                    Event::ContentBlockDelta {
                        index: 0,
                        delta: BlockDelta::TextDelta { text: piece },
                    }
                    .sse(),
                );
            }
        }
        Answer::ToolUse { name } => {
            events.push(
                Event::ContentBlockStart {
                    index: 0,
                    content_block: Block::ToolUse {
                        id: tool_id,
                        name,
                        input: Map::new(),
                    },
                }
                .sse(),
            );
            events.push(Event::Ping.sse());
            events.push(
                Event::ContentBlockDelta {
                    index: 0,
                    delta: BlockDelta::InputJsonDelta { partial_json: "{}" },
                }
                .sse(),
            );
        }
    }
    events.push(Event::ContentBlockStop { index: 0 }.sse());
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
    fn answer_reasons() {
        let a = Answer::new(Reply::Text("hello world".into()), &["wor".into()], 100);
        assert_eq!(a.stop_reason(), "stop_sequence");
        assert_eq!(a.stop_sequence(), Some("wor"));
        let a = Answer::new(Reply::Text("hello world".into()), &[], 1);
        assert_eq!(a.stop_reason(), "max_tokens");
        assert_eq!(a.tokens(), 1);
    }
}
