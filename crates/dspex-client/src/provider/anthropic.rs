//! Anthropic's Messages API on the wire.
//!
//! Differences from OpenAI that the mapping handles: system messages become the
//! top-level `system` field; `max_tokens` is required (the provider's
//! `default_max_tokens` fills it); stop sequences are `stop_sequences`; usage
//! counts cache reads and writes apart from `input_tokens`, so they are added
//! back to make `Usage::input_tokens` the whole prompt as with OpenAI. `seed` and
//! `response_format` have no Anthropic equivalent and are not sent (the JSON
//! adapter asks for JSON in the prompt instead); `n` > 1 is refused.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Capabilities, Chunk, Dialect, ParsedChat, PassThrough, ProviderApi, StreamDecoder, ToolCalls,
    UsageUpdate, WireError, WireFormat,
};
use crate::call::Payload;
use crate::config::ProviderConfig;
use crate::error::ClientError;
use crate::types::{ChatDelta, ChatRequest, Choice, FinishReason, Role, Usage};

/// Anthropic's Messages API.
pub(crate) struct Anthropic;

impl ProviderApi for Anthropic {
    fn system(&self) -> &'static str {
        "anthropic"
    }

    fn default_base_url(&self) -> &'static str {
        "https://api.anthropic.com"
    }

    fn default_model(&self) -> &'static str {
        // A model the bundled price table knows, so budgets can weigh the
        // default's calls (Claude 3.5 Haiku is retired and has no price).
        "claude-haiku-4-5"
    }

    fn capabilities(&self, _config: &ProviderConfig) -> Capabilities {
        Capabilities {
            tool_calling: true,
            json_schema: false,
            streaming: true,
            streaming_usage: true,
            embeddings: false,
            multiple_choices: false,
            seed: false,
            wire_format: Some(WireFormat::AnthropicMessages),
        }
    }

    fn validate(&self, request: &ChatRequest) -> Result<(), String> {
        if request.params.n.is_some_and(|n| n > 1) {
            return Err("Anthropic does not support n > 1".into());
        }
        if request.messages.iter().all(|m| m.role == Role::System) {
            return Err("Anthropic needs at least one user or assistant message".into());
        }
        Ok(())
    }

    fn merge_tool_calls(&self, calls: &mut ToolCalls, fragments: &Value) {
        calls.merge_anthropic(fragments);
    }

    fn dialect(&self) -> Option<&'static dyn Dialect> {
        Some(&Anthropic)
    }
}

impl Dialect for Anthropic {
    fn headers(
        &self,
        config: &ProviderConfig,
        headers: &mut http::HeaderMap,
    ) -> Result<(), ClientError> {
        if let Some(key) = &config.api_key {
            let mut value = super::transport::header_value(
                &format!("providers.{}.api_key_env", config.id),
                key.secret.expose(),
            )?;
            value.set_sensitive(true);
            headers.insert(http::HeaderName::from_static("x-api-key"), value);
        }
        headers.insert(
            http::HeaderName::from_static("anthropic-version"),
            super::transport::header_value(
                &format!("providers.{}.anthropic_version", config.id),
                &config.anthropic_version,
            )?,
        );
        Ok(())
    }

    fn chat_path(&self) -> &'static str {
        "/v1/messages"
    }

    fn embeddings_path(&self) -> &'static str {
        "/v1/embeddings"
    }

    fn encode(
        &self,
        payload: &Payload,
        model: &str,
        stream: bool,
        config: &ProviderConfig,
    ) -> Result<Vec<u8>, WireError> {
        match payload {
            Payload::Chat(request) => chat_body(request, model, stream, config.default_max_tokens),
            Payload::Embeddings(_) => Err(WireError::Invalid(
                "Anthropic has no embeddings endpoint".into(),
            )),
        }
    }

    fn parse_chat(&self, body: &[u8]) -> Result<ParsedChat, WireError> {
        parse_chat(body)
    }

    fn parse_error(&self, body: &[u8]) -> Option<(String, Option<String>)> {
        parse_error(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(Decoder)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(flatten)]
    extra: PassThrough<'a>,
}

/// Every body key `chat_body` writes.
const WRITTEN: &[&str] = &[
    "model",
    "max_tokens",
    "system",
    "messages",
    "temperature",
    "top_p",
    "stop_sequences",
    "tools",
    "tool_choice",
    "stream",
];

/// One message as Anthropic takes it, borrowing the request's texts (no copy
/// of a message into a `Value` tree before it is written out).
#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: WireContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    Blocks(Vec<WireBlock<'a>>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireBlock<'a> {
    Typed(TypedBlock<'a>),
    /// A block the caller gave in Anthropic's own format (a `tool_use`).
    Given(&'a Value),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TypedBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
    },
}

pub(crate) fn chat_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Vec<u8>, WireError> {
    let params = &request.params;
    if params.n.is_some_and(|n| n > 1) {
        return Err(WireError::Invalid(
            "Anthropic does not support n > 1".into(),
        ));
    }
    let mut system: Vec<&str> = Vec::new();
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        match message.role {
            Role::System => system.push(&message.content),
            Role::User => messages.push(WireMessage {
                role: "user",
                content: WireContent::Text(&message.content),
            }),
            Role::Assistant => match message.tool_calls.as_deref() {
                // Tool calls are passed in Anthropic's own block format.
                Some(Value::Array(blocks)) => {
                    let mut content = Vec::with_capacity(blocks.len() + 1);
                    if !message.content.is_empty() {
                        content.push(WireBlock::Typed(TypedBlock::Text {
                            text: &message.content,
                        }));
                    }
                    content.extend(blocks.iter().map(WireBlock::Given));
                    messages.push(WireMessage {
                        role: "assistant",
                        content: WireContent::Blocks(content),
                    });
                }
                _ => messages.push(WireMessage {
                    role: "assistant",
                    content: WireContent::Text(&message.content),
                }),
            },
            Role::Tool => messages.push(WireMessage {
                role: "user",
                content: WireContent::Blocks(vec![WireBlock::Typed(TypedBlock::ToolResult {
                    tool_use_id: message.tool_call_id.as_deref().unwrap_or_default(),
                    content: &message.content,
                })]),
            }),
        }
    }
    if messages.is_empty() {
        return Err(WireError::Invalid(
            "Anthropic needs at least one user or assistant message".into(),
        ));
    }
    let body = Body {
        model,
        max_tokens: params.max_tokens.unwrap_or(default_max_tokens),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        temperature: params.temperature,
        top_p: params.top_p,
        stop_sequences: &params.stop,
        tools: params.tools.as_deref(),
        tool_choice: params.tool_choice.as_ref(),
        stream,
        extra: PassThrough {
            fields: &params.extra,
            written: WRITTEN,
        },
    };
    serde_json::to_vec(&body)
        .map_err(|e| WireError::Invalid(format!("cannot encode the request: {e}")))
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn update(&self) -> UsageUpdate {
        let reads = self.cache_read_input_tokens.unwrap_or(0);
        let writes = self.cache_creation_input_tokens.unwrap_or(0);
        UsageUpdate {
            input_tokens: self
                .input_tokens
                .map(|i| i.saturating_add(reads).saturating_add(writes)),
            output_tokens: self.output_tokens,
            cached_input_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

pub(crate) fn parse_chat(body: &[u8]) -> Result<ParsedChat, WireError> {
    let response: WireResponse =
        serde_json::from_slice(body).map_err(|e| WireError::malformed(&e, body))?;
    let mut text = String::new();
    let mut tools = Vec::new();
    for block in response.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            Some("tool_use") => tools.push(block),
            _ => {}
        }
    }
    let mut usage = Usage::default();
    response.usage.update().apply(&mut usage);
    Ok(ParsedChat {
        id: response.id,
        model: response.model,
        choices: vec![Choice {
            index: 0,
            content: (!text.is_empty() || tools.is_empty()).then_some(text),
            tool_calls: (!tools.is_empty()).then_some(Value::Array(tools)),
            finish_reason: response.stop_reason.as_deref().map(FinishReason::parse),
        }],
        usage: Some(usage),
    })
}

/// Decodes the named events of a Messages stream.
#[derive(Default)]
pub(crate) struct Decoder;

fn field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, event: &str, data: &str, out: &mut Vec<Chunk>) -> Result<(), WireError> {
        if matches!(event, "ping" | "content_block_stop") || data.trim().is_empty() {
            return Ok(());
        }
        let value: Value =
            serde_json::from_str(data).map_err(|e| WireError::malformed(&e, data.as_bytes()))?;
        // The event name is also in the payload's `type`; trust whichever is set.
        let kind = if event.is_empty() || event == "message" {
            value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
        } else {
            event
        };
        match kind {
            "message_start" => {
                out.push(Chunk::Start {
                    id: field(&value, &["message", "id"])
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    model: field(&value, &["message", "model"])
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
                if let Some(usage) = field(&value, &["message", "usage"]) {
                    let usage: WireUsage =
                        serde_json::from_value(usage.clone()).unwrap_or_default();
                    out.push(Chunk::Usage(usage.update()));
                }
            }
            "content_block_start" => {
                if let Some(block) = value.get("content_block")
                    && block.get("type").and_then(Value::as_str) == Some("tool_use")
                {
                    out.push(Chunk::Delta(ChatDelta {
                        index: 0,
                        content: String::new(),
                        tool_calls: Some(block.clone()),
                        finish_reason: None,
                    }));
                }
            }
            "content_block_delta" => {
                let delta = value.get("delta").cloned().unwrap_or(Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.push(Chunk::Delta(ChatDelta {
                        index: 0,
                        content: delta.get("text").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        tool_calls: None,
                        finish_reason: None,
                    })),
                    Some("input_json_delta") => out.push(Chunk::Delta(ChatDelta {
                        index: 0,
                        content: String::new(),
                        tool_calls: Some(json!({"index": value.get("index"), "partial_json": delta.get("partial_json")})),
                        finish_reason: None,
                    })),
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) =
                    field(&value, &["delta", "stop_reason"]).and_then(Value::as_str)
                {
                    out.push(Chunk::Delta(ChatDelta {
                        index: 0,
                        content: String::new(),
                        tool_calls: None,
                        finish_reason: Some(FinishReason::parse(reason)),
                    }));
                }
                if let Some(usage) = value.get("usage") {
                    let usage: WireUsage =
                        serde_json::from_value(usage.clone()).unwrap_or_default();
                    out.push(Chunk::Usage(usage.update()));
                }
            }
            "message_stop" => out.push(Chunk::End),
            "error" => {
                let (message, code) = error_fields(value.get("error").unwrap_or(&value));
                return Err(WireError::Upstream {
                    status: status_of(code.as_deref()),
                    message,
                    code,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

fn status_of(error_type: Option<&str>) -> u16 {
    match error_type {
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("rate_limit_error") => 429,
        Some("overloaded_error") => 529,
        _ => 500,
    }
}

fn error_fields(error: &Value) -> (String, Option<String>) {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned);
    (
        message,
        error.get("type").and_then(Value::as_str).map(str::to_owned),
    )
}

/// The message and type of an error body: `{"type":"error","error":{"type","message"}}`.
pub(crate) fn parse_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(error_fields(value.get("error")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChatParams, Message};
    use std::sync::Arc;

    #[test]
    fn system_goes_top_level_and_max_tokens_is_filled() {
        let request = ChatRequest {
            messages: vec![
                Message::system("be brief"),
                Message::user("hi"),
                Message::assistant("hello"),
                Message::user("bye"),
            ],
            params: ChatParams {
                stop: vec!["STOP".into()],
                seed: Some(3),
                ..ChatParams::default()
            },
        };
        let body: Value =
            serde_json::from_slice(&chat_body(&request, "claude", true, 512).unwrap()).unwrap();
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 512);
        assert_eq!(body["messages"].as_array().unwrap().len(), 3);
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": "hello"})
        );
        assert_eq!(body["stop_sequences"], json!(["STOP"]));
        assert_eq!(body["stream"], true);
        assert!(body.get("seed").is_none());
        let refused = chat_body(
            &ChatRequest {
                messages: vec![Message::user("x")],
                params: ChatParams {
                    n: Some(2),
                    ..ChatParams::default()
                },
            },
            "claude",
            false,
            10,
        );
        assert!(matches!(refused, Err(WireError::Invalid(m)) if m.contains("n > 1")));
    }

    #[test]
    fn every_role_and_tool_turn_encodes_in_anthropic_blocks() {
        let tool_use = json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                              "input": {"city": "Paris"}});
        let mut calls_with_text = Message::assistant("Let me look.");
        calls_with_text.tool_calls = Some(Arc::new(json!([tool_use])));
        let mut calls_only = Message::assistant("");
        calls_only.tool_calls = Some(Arc::new(json!([tool_use, tool_use])));
        let mut result = Message::new(Role::Tool, "{\"temp\": 21}");
        result.tool_call_id = Some("toolu_1".into());
        let request = ChatRequest {
            messages: vec![
                Message::system("one"),
                Message::system("two"),
                Message::user("weather \"in\" Paris?\n"),
                calls_with_text,
                result,
                calls_only,
                Message::assistant("It is 21°C."),
            ],
            params: ChatParams::default(),
        };
        let body: Value =
            serde_json::from_slice(&chat_body(&request, "claude", false, 64).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude",
                "max_tokens": 64,
                "system": "one\n\ntwo",
                "messages": [
                    {"role": "user", "content": "weather \"in\" Paris?\n"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look."},
                        tool_use,
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"temp\": 21}"},
                    ]},
                    {"role": "assistant", "content": [tool_use, tool_use]},
                    {"role": "assistant", "content": "It is 21°C."},
                ],
            })
        );
    }

    #[test]
    fn usage_adds_cache_reads_and_writes_to_input() {
        let parsed = parse_chat(
            br#"{"id":"msg_1","model":"claude","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":10,"output_tokens":3,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#,
        )
        .unwrap();
        let usage = parsed.usage.unwrap();
        assert_eq!(usage.input_tokens, 130);
        assert_eq!(usage.cached_input_tokens, 100);
        assert_eq!(usage.cache_write_tokens, 20);
        assert_eq!(parsed.choices[0].finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn stream_events_decode() {
        let mut decoder = Decoder;
        let mut out = Vec::new();
        decoder
            .decode("message_start", r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":12,"output_tokens":1}}}"#, &mut out)
            .unwrap();
        decoder
            .decode("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#, &mut out)
            .unwrap();
        decoder
            .decode("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}"#, &mut out)
            .unwrap();
        decoder
            .decode("message_stop", r#"{"type":"message_stop"}"#, &mut out)
            .unwrap();
        assert!(matches!(&out[1], Chunk::Usage(u) if u.input_tokens == Some(12)));
        assert!(matches!(&out[2], Chunk::Delta(d) if d.content == "Hel"));
        assert!(
            matches!(&out[3], Chunk::Delta(d) if d.finish_reason == Some(FinishReason::Length))
        );
        assert!(
            matches!(&out[4], Chunk::Usage(u) if u.output_tokens == Some(7) && u.input_tokens.is_none())
        );
        assert!(matches!(out[5], Chunk::End));
        let err = decoder
            .decode(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &mut out,
            )
            .unwrap_err();
        assert!(matches!(err, WireError::Upstream { status: 529, .. }));
    }
}
