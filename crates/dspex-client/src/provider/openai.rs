//! OpenAI Chat Completions and Embeddings on the wire.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::json_text;
use super::{
    Capabilities, Chunk, Dialect, ParsedChat, ParsedEmbeddings, PassThrough, ProviderApi,
    StreamDecoder, UsageUpdate, WireError, WireFormat,
};
use crate::call::Payload;
use crate::config::ProviderConfig;
use crate::error::ClientError;
use crate::types::{
    ChatDelta, ChatRequest, Choice, EmbeddingRequest, FinishReason, Message, ResponseFormat, Usage,
};

/// OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama,
/// llama.cpp, LiteLLM, Together, Groq...).
pub(crate) struct OpenAi;

impl ProviderApi for OpenAi {
    fn system(&self) -> &'static str {
        "openai"
    }

    fn default_base_url(&self) -> &'static str {
        "https://api.openai.com/v1"
    }

    fn default_model(&self) -> &'static str {
        "gpt-4o-mini"
    }

    fn capabilities(&self, config: &ProviderConfig) -> Capabilities {
        Capabilities {
            tool_calling: true,
            json_schema: true,
            streaming: true,
            streaming_usage: config.stream_usage,
            embeddings: true,
            multiple_choices: true,
            seed: true,
            wire_format: Some(WireFormat::OpenAiChat),
        }
    }

    fn dialect(&self) -> Option<&'static dyn Dialect> {
        Some(&OpenAi)
    }
}

impl Dialect for OpenAi {
    fn headers(
        &self,
        config: &ProviderConfig,
        headers: &mut http::HeaderMap,
    ) -> Result<(), ClientError> {
        if let Some(key) = &config.api_key {
            let mut value = super::transport::header_value(
                &format!("providers.{}.api_key_env", config.id),
                &format!("Bearer {}", key.secret.expose()),
            )?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        Ok(())
    }

    fn chat_path(&self) -> &'static str {
        "/chat/completions"
    }

    fn embeddings_path(&self) -> &'static str {
        "/embeddings"
    }

    fn encode(
        &self,
        payload: &Payload,
        model: &str,
        stream: bool,
        config: &ProviderConfig,
    ) -> Result<Vec<u8>, WireError> {
        match payload {
            Payload::Chat(request) => chat_body(request, model, stream, config.stream_usage),
            Payload::Embeddings(request) => embeddings_body(request, model),
        }
    }

    fn parse_chat(&self, body: &[u8]) -> Result<ParsedChat, WireError> {
        parse_chat(body)
    }

    fn parse_embeddings(&self, body: &[u8], inputs: usize) -> Result<ParsedEmbeddings, WireError> {
        parse_embeddings(body, inputs)
    }

    fn parse_error(&self, body: &[u8]) -> Option<(String, Option<String>)> {
        parse_error(body)
    }

    fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        Box::new(Decoder::default())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
    #[serde(flatten)]
    extra: PassThrough<'a>,
}

/// Every body key `chat_body` writes.
const WRITTEN: &[&str] = &[
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "stream",
    "stream_options",
];

/// Reasoning models (o1, o3, o4, gpt-5) reject `max_tokens` and want
/// `max_completion_tokens`; every other server, including most compatible ones,
/// knows only `max_tokens`.
fn wants_max_completion_tokens(model: &str) -> bool {
    let bare = model.rsplit('/').next().unwrap_or(model);
    bare.starts_with("o1")
        || bare.starts_with("o3")
        || bare.starts_with("o4")
        || bare.starts_with("gpt-5")
}

fn response_format(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => json!({
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        }),
    }
}

pub(crate) fn chat_body(
    request: &ChatRequest,
    model: &str,
    stream: bool,
    stream_usage: bool,
) -> Result<Vec<u8>, WireError> {
    let params = &request.params;
    let reasoning = wants_max_completion_tokens(model);
    let body = Body {
        temperature: params.temperature,
        top_p: params.top_p,
        max_tokens: params.max_tokens.filter(|_| !reasoning),
        max_completion_tokens: params.max_tokens.filter(|_| reasoning),
        stop: &params.stop,
        n: params.n,
        seed: params.seed,
        response_format: params.response_format.as_ref().map(response_format),
        tools: params.tools.as_deref(),
        tool_choice: params.tool_choice.as_ref(),
        stream,
        stream_options: (stream && stream_usage).then(|| json!({"include_usage": true})),
        extra: PassThrough {
            fields: &params.extra,
            written: WRITTEN,
        },
    };
    let encoding =
        |e: serde_json::Error| WireError::Invalid(format!("cannot encode the request: {e}"));
    // Sized up front: a few-shot prompt is kilobytes, and growing the buffer
    // by doubling copies it several times per call.
    let text: usize = request.messages.iter().map(|m| m.content.len()).sum();
    let mut buffer = Vec::with_capacity(text + text / 8 + 256);
    // The model and messages, the bulk of every body, are written with the
    // fast escaper; the other fields by serde, as an object whose opening
    // brace becomes the comma after the messages.
    buffer.extend_from_slice(b"{\"model\":");
    json_text::write_str(&mut buffer, model);
    buffer.extend_from_slice(b",\"messages\":[");
    for (i, message) in request.messages.iter().enumerate() {
        if i > 0 {
            buffer.push(b',');
        }
        write_message(&mut buffer, message).map_err(encoding)?;
    }
    buffer.push(b']');
    let rest = buffer.len();
    serde_json::to_writer(&mut buffer, &body).map_err(encoding)?;
    if buffer.len() - rest == 2 {
        // `{}`: no other field.
        buffer.truncate(rest);
        buffer.push(b'}');
    } else if let Some(brace) = buffer.get_mut(rest) {
        *brace = b',';
    }
    Ok(buffer)
}

/// `message` as its derived `Serialize` writes it (same fields, order and
/// omissions), with the texts through the fast escaper.
fn write_message(out: &mut Vec<u8>, message: &Message) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"role\":\"");
    out.extend_from_slice(message.role.as_str().as_bytes());
    out.extend_from_slice(b"\",\"content\":");
    json_text::write_str(out, &message.content);
    if let Some(name) = &message.name {
        out.extend_from_slice(b",\"name\":");
        json_text::write_str(out, name);
    }
    if let Some(tool_calls) = &message.tool_calls {
        out.extend_from_slice(b",\"tool_calls\":");
        serde_json::to_writer(&mut *out, tool_calls)?;
    }
    if let Some(id) = &message.tool_call_id {
        out.extend_from_slice(b",\"tool_call_id\":");
        json_text::write_str(out, id);
    }
    out.push(b'}');
    Ok(())
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl WireUsage {
    fn normalise(&self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_input_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

pub(crate) fn parse_chat(body: &[u8]) -> Result<ParsedChat, WireError> {
    let response: WireResponse =
        serde_json::from_slice(body).map_err(|e| WireError::malformed(&e, body))?;
    if response.choices.is_empty() {
        return Err(WireError::Malformed("the response has no choices".into()));
    }
    Ok(ParsedChat {
        id: response.id,
        model: response.model,
        choices: response
            .choices
            .into_iter()
            .map(|c| Choice {
                index: c.index,
                content: c.message.content,
                tool_calls: c.message.tool_calls.filter(|t| !t.is_null()),
                finish_reason: c.finish_reason.as_deref().map(FinishReason::parse),
            })
            .collect(),
        usage: response.usage.map(|u| u.normalise()),
    })
}

#[derive(Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

/// Decodes `data:` events of a Chat Completions stream.
#[derive(Default)]
pub(crate) struct Decoder {
    started: bool,
}

impl StreamDecoder for Decoder {
    fn decode(&mut self, _event: &str, data: &str, out: &mut Vec<Chunk>) -> Result<(), WireError> {
        self.decode_data(data, out)
    }
}

impl Decoder {
    fn decode_data(&mut self, data: &str, out: &mut Vec<Chunk>) -> Result<(), WireError> {
        let data = data.trim();
        if data == "[DONE]" {
            out.push(Chunk::End);
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: WireChunk =
            serde_json::from_str(data).map_err(|e| WireError::malformed(&e, data.as_bytes()))?;
        if let Some(error) = chunk.error {
            let (message, code) = error_fields(&error);
            return Err(WireError::Upstream {
                status: if code.as_deref() == Some("rate_limit_exceeded") {
                    429
                } else {
                    500
                },
                message,
                code,
            });
        }
        if !self.started {
            self.started = true;
            out.push(Chunk::Start {
                id: chunk.id,
                model: chunk.model,
            });
        }
        for choice in chunk.choices {
            let (content, tool_calls) = match choice.delta {
                Some(delta) => (
                    delta.content.unwrap_or_default(),
                    delta.tool_calls.filter(|t| !t.is_null()),
                ),
                None => (String::new(), None),
            };
            out.push(Chunk::Delta(ChatDelta {
                index: choice.index,
                content,
                tool_calls,
                finish_reason: choice.finish_reason.as_deref().map(FinishReason::parse),
            }));
        }
        if let Some(usage) = chunk.usage {
            let usage = usage.normalise();
            out.push(Chunk::Usage(UsageUpdate {
                input_tokens: Some(usage.input_tokens),
                output_tokens: Some(usage.output_tokens),
                cached_input_tokens: Some(usage.cached_input_tokens),
                cache_write_tokens: None,
            }));
        }
        Ok(())
    }
}

fn error_fields(error: &Value) -> (String, Option<String>) {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| error.to_string(), str::to_owned);
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .or_else(|| error.get("type").and_then(Value::as_str))
        .map(str::to_owned);
    (message, code)
}

/// The message and code of an error body: `{"error": {"message", "type", "code"}}`.
pub(crate) fn parse_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("error")? {
        Value::String(message) => Some((message.clone(), None)),
        error => Some(error_fields(error)),
    }
}

pub(crate) fn embeddings_body(
    request: &EmbeddingRequest,
    model: &str,
) -> Result<Vec<u8>, WireError> {
    let mut body = json!({"model": model, "input": request.input, "encoding_format": "float"});
    if let (Some(dimensions), Some(map)) = (request.dimensions, body.as_object_mut()) {
        map.insert("dimensions".into(), json!(dimensions));
    }
    serde_json::to_vec(&body)
        .map_err(|e| WireError::Invalid(format!("cannot encode the request: {e}")))
}

#[derive(Deserialize)]
struct WireEmbedding {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct WireEmbeddings {
    data: Vec<WireEmbedding>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

pub(crate) fn parse_embeddings(body: &[u8], inputs: usize) -> Result<ParsedEmbeddings, WireError> {
    let response: WireEmbeddings =
        serde_json::from_slice(body).map_err(|e| WireError::malformed(&e, body))?;
    let mut data = response.data;
    data.sort_by_key(|d| d.index);
    if data.len() != inputs {
        return Err(WireError::Malformed(format!(
            "{} vectors for {inputs} inputs",
            data.len()
        )));
    }
    Ok(ParsedEmbeddings {
        model: response.model,
        vectors: data.into_iter().map(|d| d.embedding).collect(),
        usage: response.usage.map(|u| u.normalise()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ChatParams;

    #[test]
    fn unknown_fields_pass_through_but_never_shadow_a_written_one() {
        let mut params = ChatParams {
            temperature: Some(0.5),
            ..ChatParams::default()
        };
        params.extra.insert("user".into(), json!("u-1"));
        params
            .extra
            .insert("logit_bias".into(), json!({"50256": -100}));
        params.extra.insert("temperature".into(), json!(2.0));
        params.extra.insert("model".into(), json!("other"));
        let request = ChatRequest {
            messages: vec![Message::user("u")],
            params,
        };
        let bytes = chat_body(&request, "gpt-4o", false, false).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(text.matches("\"temperature\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"model\"").count(), 1, "{text}");
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["user"], "u-1");
        assert_eq!(body["logit_bias"]["50256"], -100);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["model"], "gpt-4o");
    }

    #[test]
    fn body_maps_every_parameter() {
        let request = ChatRequest {
            messages: vec![Message::system("s"), Message::user("u")],
            params: ChatParams {
                temperature: Some(0.5),
                top_p: Some(0.9),
                max_tokens: Some(64),
                stop: vec!["END".into()],
                n: Some(2),
                seed: Some(7),
                response_format: Some(ResponseFormat::JsonSchema {
                    name: "out".into(),
                    schema: json!({"type": "object"}),
                    strict: true,
                }),
                tools: Some(std::sync::Arc::new(
                    json!([{"type": "function", "function": {"name": "f"}}]),
                )),
                tool_choice: Some(json!("auto")),
                ..ChatParams::default()
            },
        };
        let body: Value =
            serde_json::from_slice(&chat_body(&request, "gpt-4o", true, true).unwrap()).unwrap();
        assert_eq!(body["model"], "gpt-4o");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "s"})
        );
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["n"], 2);
        assert_eq!(body["seed"], 7);
        assert_eq!(body["response_format"]["json_schema"]["name"], "out");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        let body: Value =
            serde_json::from_slice(&chat_body(&request, "o3-mini", false, true).unwrap()).unwrap();
        assert_eq!(body["max_completion_tokens"], 64);
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("stream").is_none());
    }

    /// The hand-written messages equal serde's encoding of the same body,
    /// byte for byte, with and without the other fields.
    #[test]
    fn hand_written_messages_encode_as_serde_does() {
        #[derive(Serialize)]
        struct Whole<'a> {
            model: &'a str,
            messages: &'a [Message],
            #[serde(skip_serializing_if = "Option::is_none")]
            max_tokens: Option<u32>,
        }
        let mut assistant = Message::assistant("calling \"f\"\n");
        assistant.tool_calls = Some(std::sync::Arc::new(json!([{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"x\": 1}"}}])));
        let mut tool = Message::new(crate::types::Role::Tool, "{\"ok\": true}");
        tool.tool_call_id = Some("c1".into());
        let mut named = Message::user("tab\there \u{1} ✓ 😀");
        named.name = Some("ada \"the\" user".into());
        let messages = vec![
            Message::system("Your input fields are:\n1. `question` (str)\n"),
            named,
            assistant,
            tool,
            Message::user(""),
        ];
        for max_tokens in [None, Some(64)] {
            let request = ChatRequest {
                messages: messages.clone(),
                params: ChatParams {
                    max_tokens,
                    ..ChatParams::default()
                },
            };
            let expected = serde_json::to_vec(&Whole {
                model: "gpt-\"4o\"",
                messages: &messages,
                max_tokens,
            })
            .unwrap();
            let ours = chat_body(&request, "gpt-\"4o\"", false, false).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn stream_chunks_decode() {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        decoder
            .decode_data(r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#, &mut out)
            .unwrap();
        decoder
            .decode_data(r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}}"#, &mut out)
            .unwrap();
        decoder.decode_data("[DONE]", &mut out).unwrap();
        assert!(matches!(&out[0], Chunk::Start { id: Some(id), .. } if id == "c1"));
        assert!(matches!(&out[1], Chunk::Delta(d) if d.content == "Hi"));
        assert!(matches!(&out[2], Chunk::Usage(u) if u.cached_input_tokens == Some(2)));
        assert!(matches!(out[3], Chunk::End));
        assert!(decoder.decode_data("{\"choices\": [", &mut out).is_err());
    }
}
