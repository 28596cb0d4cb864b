//! OpenAI Chat Completions on the wire: the request body a client sends,
//! decoded into the client's normalised types, and the response, stream
//! chunks and usage encoded the way the official SDKs parse them.

use std::collections::BTreeMap;

use dspex_client::{
    ChatDelta, ChatParams, ChatResponse, FinishReason, Message, ResponseFormat, Role, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::RequestError;

/// A `POST /v1/chat/completions` body. Fields DSPex has no name for are
/// kept in `extra` and passed through to OpenAI-format providers.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<InMessage>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    response_format: Option<InResponseFormat>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(flatten)]
    pub(crate) extra: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum InResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: InJsonSchema },
}

#[derive(Debug, Deserialize)]
struct InJsonSchema {
    name: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InMessage {
    role: InRole,
    #[serde(default)]
    content: Option<InContent>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum InRole {
    System,
    /// The newer name for `system` (o1 and later).
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InContent {
    Text(String),
    Parts(Vec<InPart>),
}

#[derive(Debug, Deserialize)]
struct InPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// Decodes a body; a failure names the field (`messages[2].role`).
pub(crate) fn decode(body: &[u8]) -> Result<ChatCompletionRequest, RequestError> {
    decode_json(body)
}

/// Decodes any JSON body; a failure names the field by its path, through
/// `serde_path_to_error`.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    // Tracking the path costs every field of every body; a good body does
    // not need it, so only a failed decode runs again with the tracker
    // (decoding is deterministic: the second pass fails the same way).
    if let Ok(decoded) = serde_json::from_slice(body) {
        return Ok(decoded);
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A missing field is reported at its parent; name the field itself.
        let missing = inner
            .to_string()
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned);
        let param = match (path.as_str(), missing) {
            (".", Some(field)) => Some(field),
            (".", None) => None,
            (_, Some(field)) => Some(format!("{path}.{field}")),
            (_, None) => Some(path.clone()),
        };
        let message = match &param {
            Some(path) => format!("invalid request body at `{path}`: {inner}"),
            None => format!("invalid request body: {inner}"),
        };
        RequestError::bad_request(param, message)
    })
}

/// A `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsRequest {
    pub(crate) model: String,
    input: EmbeddingInput,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
    /// `user` and the like: accepted, not forwarded (the client's embedding
    /// call has no place for them).
    #[serde(flatten)]
    _extra: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// How embedding vectors go on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmbeddingEncoding {
    /// JSON numbers.
    Float,
    /// Base64 of the little-endian `f32` bytes: what the `openai` Python
    /// SDK asks for by default (and decodes itself).
    Base64,
}

impl EmbeddingsRequest {
    /// The texts, output dimensions and encoding. Token-id inputs are
    /// refused naming the field.
    pub(crate) fn into_parts(
        self,
    ) -> Result<(Vec<String>, Option<u32>, EmbeddingEncoding), RequestError> {
        let encoding = match self.encoding_format.as_deref() {
            None | Some("float") => EmbeddingEncoding::Float,
            Some("base64") => EmbeddingEncoding::Base64,
            Some(other) => {
                return Err(RequestError::bad_request(
                    Some("encoding_format".into()),
                    format!("encoding_format `{other}` is not `float` or `base64`"),
                ));
            }
        };
        let input = match self.input {
            EmbeddingInput::One(text) => vec![text],
            EmbeddingInput::Many(texts) => texts,
        };
        if input.is_empty() {
            return Err(RequestError::bad_request(
                Some("input".into()),
                "`input` must hold at least one text",
            ));
        }
        Ok((input, self.dimensions, encoding))
    }
}

/// An embeddings `list` response.
pub(crate) fn embeddings_json(
    vectors: &[Vec<f32>],
    model: &str,
    usage: &Usage,
    encoding: EmbeddingEncoding,
) -> Value {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match encoding {
                EmbeddingEncoding::Float => json!(vector),
                EmbeddingEncoding::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
    })
}

impl ChatCompletionRequest {
    /// Whether the reply streams.
    pub(crate) fn streams(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed reply ends with a usage chunk.
    pub(crate) fn stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The conversation and parameters in the client's types. `model` is
    /// left for the router to fill in.
    pub(crate) fn into_parts(self) -> Result<(Vec<Message>, ChatParams), RequestError> {
        if self.messages.is_empty() {
            return Err(RequestError::bad_request(
                Some("messages".into()),
                "`messages` must hold at least one message",
            ));
        }
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.into_message(i))
            .collect::<Result<Vec<_>, _>>()?;
        let response_format = match self.response_format {
            None => None,
            Some(InResponseFormat::Text) => Some(ResponseFormat::Text),
            Some(InResponseFormat::JsonObject) => Some(ResponseFormat::JsonObject),
            Some(InResponseFormat::JsonSchema { json_schema }) => {
                Some(ResponseFormat::JsonSchema {
                    name: json_schema.name,
                    schema: json_schema.schema.unwrap_or_else(|| json!({})),
                    strict: json_schema.strict.unwrap_or(false),
                })
            }
        };
        let params = ChatParams {
            temperature: self.temperature,
            top_p: self.top_p,
            // The newer name wins: SDKs send one or the other.
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(v)) => v,
            },
            n: self.n,
            seed: self.seed,
            response_format,
            tools: self.tools.map(std::sync::Arc::new),
            tool_choice: self.tool_choice,
            extra: self.extra,
            model: None,
        };
        Ok((messages, params))
    }
}

impl InMessage {
    fn into_message(self, index: usize) -> Result<Message, RequestError> {
        let role = match self.role {
            InRole::System | InRole::Developer => Role::System,
            InRole::User => Role::User,
            InRole::Assistant => Role::Assistant,
            InRole::Tool => Role::Tool,
        };
        let content = match self.content {
            None => String::new(),
            Some(InContent::Text(text)) => text,
            Some(InContent::Parts(parts)) => {
                let mut text = String::new();
                for (p, part) in parts.into_iter().enumerate() {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(RequestError::bad_request(
                                Some(format!("messages[{index}].content[{p}].type")),
                                format!(
                                    "content parts of type `{kind}` are not supported by this gateway (only `text`)"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        let mut message = Message::new(role, content);
        message.name = self.name;
        message.tool_calls = self.tool_calls.map(std::sync::Arc::new);
        message.tool_call_id = self.tool_call_id;
        Ok(message)
    }
}

/// Seconds since the Unix epoch, for `created`.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// OpenAI's usage object.
#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(usage: &Usage) -> Self {
        Self {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.total_tokens(),
            prompt_tokens_details: CachedTokens {
                cached_tokens: usage.cached_input_tokens,
            },
        }
    }
}

/// The response id: the provider's when it is OpenAI's kind, else one made
/// from the call's correlation id.
pub(crate) fn response_id(response: &ChatResponse) -> String {
    match &response.id {
        Some(id) if id.starts_with("chatcmpl") => id.clone(),
        _ => format!("chatcmpl-{}", response.correlation_id),
    }
}

// The answers are encoded from borrowed, typed structs rather than built as
// `serde_json::Value` trees: on the gateway's hot path that is one buffer
// instead of a map and a string per field.

#[derive(Serialize)]
struct CompletionOut<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut<'a>>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut<'a> {
    index: u32,
    message: MessageOut<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
}

/// A `chat.completion` object, as JSON bytes.
pub(crate) fn completion_json(response: &ChatResponse, model: &str) -> Vec<u8> {
    let body = CompletionOut {
        id: response_id(response),
        object: "chat.completion",
        created: now_unix(),
        model,
        choices: response
            .choices
            .iter()
            .map(|c| ChoiceOut {
                index: c.index,
                message: MessageOut {
                    role: "assistant",
                    content: c.content.as_deref(),
                    tool_calls: c.tool_calls.as_ref(),
                },
                finish_reason: c.finish_reason.as_ref().map(FinishReason::as_str),
                logprobs: None,
            })
            .collect(),
        usage: (&response.usage).into(),
    };
    to_json(&body)
}

/// Serialises a value that cannot fail to serialise (no maps with
/// non-string keys, no failing `Serialize` impls); `{}` if it ever did.
fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[derive(Serialize)]
struct ChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [ChunkChoiceOut<'a>; 1],
}

#[derive(Serialize)]
struct ChunkChoiceOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
}

/// One `chat.completion.chunk` carrying `delta`. The first chunk of a
/// choice also carries the role, as OpenAI's do.
pub(crate) fn chunk_json(
    id: &str,
    created: u64,
    model: &str,
    delta: &ChatDelta,
    first: bool,
) -> Vec<u8> {
    let content =
        (!delta.content.is_empty() || delta.tool_calls.is_none()).then_some(delta.content.as_str());
    to_json(&ChunkOut {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [ChunkChoiceOut {
            index: delta.index,
            delta: DeltaOut {
                role: first.then_some("assistant"),
                content,
                tool_calls: delta.tool_calls.as_ref(),
            },
            finish_reason: delta.finish_reason.as_ref().map(FinishReason::as_str),
            logprobs: None,
        }],
    })
}

#[derive(Serialize)]
struct UsageChunkOut<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [(); 0],
    usage: UsageOut,
}

/// The final usage chunk (`stream_options.include_usage`): no choices.
pub(crate) fn usage_chunk_json(id: &str, created: u64, model: &str, usage: &Usage) -> Vec<u8> {
    to_json(&UsageChunkOut {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: [],
        usage: usage.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_body_decodes_with_unknown_fields_kept() {
        let body = br#"{"model":"fast","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
            "stop":"END","max_completion_tokens":9,"max_tokens":3,"seed":4,"n":1,
            "response_format":{"type":"json_schema","json_schema":{"name":"o","schema":{"type":"object"},"strict":true}},
            "user":"u-7","logit_bias":{"1":2},"stream":true,"stream_options":{"include_usage":true}}"#;
        let request = decode(body).unwrap();
        assert!(request.streams() && request.stream_usage());
        let (messages, params) = request.into_parts().unwrap();
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].content, "hi there");
        assert_eq!(params.stop, vec!["END"]);
        assert_eq!(params.max_tokens, Some(9));
        assert_eq!(params.extra["user"], "u-7");
        assert_eq!(params.extra["logit_bias"]["1"], 2);
        assert!(!params.extra.contains_key("stream"));
        assert!(matches!(
            params.response_format,
            Some(ResponseFormat::JsonSchema { strict: true, .. })
        ));
    }

    #[test]
    fn errors_name_the_field() {
        for (body, param) in [
            (
                &br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#[..],
                "messages[0].role",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (br#"{"messages":[]}"#, ""),
            (
                br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0].type",
            ),
            (br#"{"model":"m","messages":[]}"#, "messages"),
        ] {
            let Err(error) = decode(body).and_then(|r| r.into_parts().map(|_| ())) else {
                panic!("accepted {}", String::from_utf8_lossy(body));
            };
            assert_eq!(error.status, 400);
            if param.is_empty() {
                assert!(error.message.contains("model"), "{}", error.message);
            } else {
                assert_eq!(error.param.as_deref(), Some(param), "{}", error.message);
            }
        }
    }

    #[test]
    fn answers_are_encoded_as_the_sdks_parse_them() {
        let response: ChatResponse = serde_json::from_value(json!({
            "provider": "oa", "model": "gpt-4o-mini", "id": "chatcmpl-abc", "request_id": null,
            "choices": [{"index": 0, "content": null, "finish_reason": "tool_calls",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
            "usage": {"input_tokens": 10, "output_tokens": 3, "cached_input_tokens": 4, "cache_write_tokens": 0},
            "latency_ms": 0, "attempts": 1, "correlation_id": "c",
        }))
        .unwrap();
        let body: Value =
            serde_json::from_slice(&completion_json(&response, "gpt-4o-mini")).unwrap();
        let created = body["created"].clone();
        assert_eq!(
            body,
            json!({"id": "chatcmpl-abc", "object": "chat.completion", "created": created,
                   "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                       "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                       "finish_reason": "tool_calls", "logprobs": null}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                             "prompt_tokens_details": {"cached_tokens": 4}}})
        );
        let delta = ChatDelta {
            index: 0,
            content: "Hi".into(),
            tool_calls: None,
            finish_reason: None,
        };
        let chunk: Value = serde_json::from_slice(&chunk_json("id", 7, "m", &delta, true)).unwrap();
        assert_eq!(
            chunk,
            json!({"id": "id", "object": "chat.completion.chunk", "created": 7, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                "finish_reason": null, "logprobs": null}]})
        );
        let usage: Value =
            serde_json::from_slice(&usage_chunk_json("id", 7, "m", &response.usage)).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 13);
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe",
            b"{\"model\":1}",
            br#"{"model":"m","messages":null}"#,
        ] {
            assert!(decode(body).is_err());
        }
    }
}
