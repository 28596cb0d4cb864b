//! `POST /v1/chat/completions`: OpenAI's Chat Completions API, plain and streamed.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::content::{Ask, Message, Prompt, Reply, ResponseFormat, arguments_json};
use crate::server::{BodyMode, Plan, Shared, with_limits};
use crate::stats::Route;
use crate::tokens::{approx_tokens, cut_to_tokens};
use crate::wire::{
    ApiError, Flavor, json_response, sse_response, truncated_json_response, unix_now,
};

const FLAVOR: Flavor = Flavor::OpenAi;

/// The parts of a chat request the mock acts on.
#[derive(Debug)]
struct ChatRequest {
    model: String,
    prompt: Prompt,
    max_tokens: Option<u64>,
    stop: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
    format: ResponseFormat,
    tool: Option<String>,
}

/// The handler.
pub(crate) async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = shared.stats.begin(Route::ChatCompletions);
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
    let fast = if shared.records_requests() {
        None
    } else {
        parse_common(body)
    };
    let request = match fast {
        Some(request) => {
            shared
                .check_auth(FLAVOR, headers)
                .map_err(|e| e.into_response(FLAVOR))?;
            request
        }
        None => {
            let json = shared.read_body(Route::ChatCompletions, headers, body);
            shared
                .check_auth(FLAVOR, headers)
                .map_err(|e| e.into_response(FLAVOR))?;
            let json = json.ok_or_else(|| invalid_json().into_response(FLAVOR))?;
            parse(&json).map_err(|e| e.into_response(FLAVOR))?
        }
    };
    let ask = Ask {
        prompt: &request.prompt,
        tool: request.tool.as_deref(),
        format: &request.format,
    };
    let prompt_tokens = request.prompt.tokens();
    let plan = shared
        .plan(seq, FLAVOR, || {
            let completion = request.max_tokens.unwrap_or_else(|| {
                reply_tokens(&shared.responder.reply(ask, None, false)) * request.n as u64
            });
            prompt_tokens + completion
        })
        .await?;
    let reply = shared.responder.reply(ask, plan.forced.as_deref(), true);
    Ok(respond(shared, seq, &request, reply, prompt_tokens, &plan))
}

/// OpenAI's answer to a body that is not JSON.
pub(crate) fn invalid_json() -> ApiError {
    ApiError::bad_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON.)",
    )
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid_param(
        param,
        "invalid_type",
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
    )
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        "missing_required_parameter",
        format!("Missing required parameter: '{param}'."),
    )
}

/// Present and not null.
fn field<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|value| !value.is_null())
}

fn optional_u64(body: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid_type(name, "a non-negative integer", value)),
    }
}

fn optional_bool(body: &Value, name: &str) -> Result<bool, ApiError> {
    match field(body, name) {
        None => Ok(false),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| invalid_type(name, "a boolean", value)),
    }
}

/// The text of a message's `content`: a string, or the concatenated text parts.
pub(crate) fn content_text(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                if !part.is_object() {
                    return Err(invalid_type(&format!("{param}[{i}]"), "an object", part));
                }
                let is_text = part
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|ty| ty == "text");
                if let (true, Some(piece)) = (is_text, part.get("text").and_then(Value::as_str)) {
                    text.push_str(piece);
                }
            }
            Ok(text)
        }
        Some(other) => Err(invalid_type(
            param,
            "one of a string or array of objects",
            other,
        )),
    }
}

/// The request shape almost every call has: text messages, no stop
/// sequences, response format or tools.
#[derive(Deserialize)]
struct CommonRequest<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<CommonMessage<'a>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<CommonStreamOptions>,
    stop: Option<IgnoredAny>,
    response_format: Option<IgnoredAny>,
    tools: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct CommonMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    /// Only looked at to leave tool calls to [`parse`]; an empty or absent
    /// list allocates nothing.
    tool_calls: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct CommonStreamOptions {
    include_usage: Option<bool>,
}

/// [`parse`] for the common shape, straight from the bytes: typed and
/// borrowing, without the `Value` tree (one allocation per key and string)
/// that the load and evaluation runs would otherwise pay on every request.
/// `None` for anything else, including every invalid request, which
/// [`parse`] then answers with OpenAI's own error.
fn parse_common(body: &[u8]) -> Option<ChatRequest> {
    let common: CommonRequest<'_> = serde_json::from_slice(body).ok()?;
    let uncommon = common.stop.is_some()
        || common.response_format.is_some()
        || common.tools.is_some()
        || common.messages.is_empty();
    let n = common.n.unwrap_or(1);
    if uncommon || !(1..=128).contains(&n) {
        return None;
    }
    let mut prompt = Prompt::default();
    prompt.messages.reserve_exact(common.messages.len());
    for message in common.messages {
        // Tool turns go to `parse`, which checks that calls and results pair up.
        if !matches!(
            &*message.role,
            "system" | "developer" | "user" | "assistant" | "function"
        ) || message.tool_calls.is_some_and(|calls| !calls.is_empty())
        {
            return None;
        }
        prompt.messages.push(Message::new(
            message.role.into_owned(),
            message.content.map(Cow::into_owned).unwrap_or_default(),
        ));
    }
    Some(ChatRequest {
        model: common.model.into_owned(),
        prompt,
        max_tokens: common.max_completion_tokens.or(common.max_tokens),
        stop: Vec::new(),
        n: usize::try_from(n).unwrap_or(1),
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
        format: ResponseFormat::Text,
        tool: None,
    })
}

/// Reads an assistant message's `tool_calls` (absent, null, or an array of
/// function calls), writes them into the message's tool lines as
/// `name(arguments)`, and returns their ids.
fn tool_calls<'a>(
    message: &'a Value,
    param: &str,
    parsed: &mut Message,
) -> Result<Vec<&'a str>, ApiError> {
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(other) => {
            return Err(invalid_type(
                &format!("{param}.tool_calls"),
                "an array of objects",
                other,
            ));
        }
    };
    let mut ids = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let at = format!("{param}.tool_calls[{j}]");
        if !call.is_object() {
            return Err(invalid_type(&at, "an object", call));
        }
        let string = |value: Option<&'a Value>, name: &str| match value {
            None | Some(Value::Null) => Err(missing(&format!("{at}.{name}"))),
            Some(Value::String(text)) => Ok(text.as_str()),
            Some(other) => Err(invalid_type(&format!("{at}.{name}"), "a string", other)),
        };
        let id = string(call.get("id"), "id")?;
        let kind = string(call.get("type"), "type")?;
        if kind != "function" {
            return Err(ApiError::invalid_param(
                format!("{at}.type"),
                "invalid_value",
                format!("Invalid value: '{kind}'. Supported values are: 'function'."),
            ));
        }
        let function = match call.get("function") {
            None | Some(Value::Null) => return Err(missing(&format!("{at}.function"))),
            Some(function @ Value::Object(_)) => function,
            Some(other) => {
                return Err(invalid_type(&format!("{at}.function"), "an object", other));
            }
        };
        let name = string(function.get("name"), "function.name")?;
        let arguments = string(function.get("arguments"), "function.arguments")?;
        parsed.push_tool_call(name, arguments);
        ids.push(id);
    }
    Ok(ids)
}

/// OpenAI's rule that tool calls and results pair up: an assistant message
/// with `tool_calls` is followed by one `tool` message per call, and a `tool`
/// message answers a call of the assistant message just before.
#[derive(Default)]
struct Pairing<'a> {
    /// The assistant message whose calls are being answered, its calls'
    /// ids, and whether each is answered yet.
    open: Option<(usize, Vec<(&'a str, bool)>)>,
}

impl<'a> Pairing<'a> {
    fn assistant(&mut self, index: usize, ids: Vec<&'a str>) -> Result<(), ApiError> {
        self.other()?;
        if !ids.is_empty() {
            self.open = Some((index, ids.into_iter().map(|id| (id, false)).collect()));
        }
        Ok(())
    }

    fn tool(&mut self, index: usize, id: &str) -> Result<(), ApiError> {
        let Some((_, calls)) = &mut self.open else {
            return Err(sequence_error(
                format!("messages[{index}].role"),
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding \
                 message with 'tool_calls'.",
            ));
        };
        match calls.iter_mut().find(|(call, _)| *call == id) {
            Some((_, answered)) => *answered = true,
            None => {
                return Err(sequence_error(
                    format!("messages[{index}].tool_call_id"),
                    format!(
                        "Invalid parameter: 'tool_call_id' of '{id}' not found in 'tool_calls' of \
                         previous message."
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A message that is not a tool result (or the end): every open call
    /// must have been answered.
    fn other(&mut self) -> Result<(), ApiError> {
        let Some((index, calls)) = self.open.take() else {
            return Ok(());
        };
        let unanswered: Vec<&str> = calls
            .iter()
            .filter(|(_, answered)| !answered)
            .map(|(id, _)| *id)
            .collect();
        if unanswered.is_empty() {
            return Ok(());
        }
        Err(sequence_error(
            format!("messages[{index}].tool_calls"),
            format!(
                "An assistant message with 'tool_calls' must be followed by tool messages \
                 responding to each 'tool_call_id'. The following tool_call_ids did not have \
                 response messages: {}",
                unanswered.join(", ")
            ),
        ))
    }
}

/// OpenAI's 400 for a conversation whose tool turns do not pair up: a
/// `param`, but no `code`.
fn sequence_error(param: String, message: impl Into<String>) -> ApiError {
    ApiError {
        param: Some(param),
        ..ApiError::bad_request(message)
    }
}

fn parse(body: &Value) -> Result<ChatRequest, ApiError> {
    if !body.is_object() {
        return Err(invalid_type("body", "an object", body));
    }
    let model = match field(body, "model") {
        None => return Err(ApiError::bad_request("you must provide a model parameter")),
        Some(Value::String(model)) => model.clone(),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let messages = match field(body, "messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(invalid_type("messages", "an array of objects", other)),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    let mut prompt = Prompt::default();
    let mut pairing = Pairing::default();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        if !message.is_object() {
            return Err(invalid_type(&param, "an object", message));
        }
        let role = match message.get("role") {
            None | Some(Value::Null) => return Err(missing(&format!("{param}.role"))),
            Some(Value::String(role)) => role.clone(),
            Some(other) => return Err(invalid_type(&format!("{param}.role"), "a string", other)),
        };
        if !matches!(
            role.as_str(),
            "system" | "developer" | "user" | "assistant" | "tool" | "function"
        ) {
            return Err(ApiError::invalid_param(
                format!("{param}.role"),
                "invalid_value",
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', \
                     'function', 'tool', and 'developer'."
                ),
            ));
        }
        let text = content_text(message.get("content"), &format!("{param}.content"))?;
        let mut parsed = Message::new(role, text);
        match parsed.role.as_str() {
            "assistant" => {
                let ids = tool_calls(message, &param, &mut parsed)?;
                pairing.assistant(i, ids)?;
            }
            "tool" => {
                let id = match message.get("tool_call_id") {
                    None | Some(Value::Null) => {
                        return Err(ApiError::invalid_param(
                            format!("{param}.tool_call_id"),
                            "missing_required_parameter",
                            "Missing parameter 'tool_call_id': messages with role 'tool' must \
                             have a 'tool_call_id'.",
                        ));
                    }
                    Some(Value::String(id)) => id,
                    Some(other) => {
                        return Err(invalid_type(
                            &format!("{param}.tool_call_id"),
                            "a string",
                            other,
                        ));
                    }
                };
                pairing.tool(i, id)?;
                parsed.tool_result = true;
            }
            _ => pairing.other()?,
        }
        prompt.messages.push(parsed);
    }
    pairing.other()?;
    let max_tokens = match optional_u64(body, "max_completion_tokens")? {
        Some(max) => Some(max),
        None => optional_u64(body, "max_tokens")?,
    };
    let n = optional_u64(body, "n")?.unwrap_or(1);
    if !(1..=128).contains(&n) {
        return Err(ApiError::invalid_param(
            "n",
            "invalid_value",
            format!("Invalid 'n': expected a value between 1 and 128, but got {n} instead."),
        ));
    }
    let stop = match field(body, "stop") {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|stop| {
                stop.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid_type("stop", "a string or array of strings", stop))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(invalid_type("stop", "a string or array of strings", other)),
    };
    let stream = optional_bool(body, "stream")?;
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(options) => optional_bool(options, "include_usage")?,
    };
    let format = match field(body, "response_format") {
        None => ResponseFormat::Text,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text") => ResponseFormat::Text,
            Some("json_object") => ResponseFormat::JsonObject,
            Some("json_schema") => ResponseFormat::JsonSchema(
                format
                    .get("json_schema")
                    .and_then(|spec| spec.get("schema"))
                    .cloned()
                    .unwrap_or(Value::Null),
            ),
            _ => {
                return Err(ApiError::invalid_param(
                    "response_format.type",
                    "invalid_value",
                    "Invalid value for 'response_format.type': expected one of 'text', 'json_object' or 'json_schema'.",
                ));
            }
        },
    };
    let tool = match field(body, "tools") {
        None => None,
        Some(Value::Array(tools)) => match tools.first() {
            None => None,
            Some(first) => match first
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Some(name.to_owned()),
                None => return Err(missing("tools[0].function.name")),
            },
        },
        Some(other) => return Err(invalid_type("tools", "an array of objects", other)),
    };
    Ok(ChatRequest {
        model,
        prompt,
        max_tokens,
        stop,
        n: usize::try_from(n).unwrap_or(1),
        stream,
        include_usage,
        format,
        tool,
    })
}

/// A choice's final content and finish reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Text {
        content: String,
        finish: &'static str,
    },
    ToolCalls {
        text: Option<String>,
        calls: Vec<CallOut>,
    },
}

/// A tool call as sent: the name, and the arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CallOut {
    name: String,
    arguments: String,
}

fn reply_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text(text) => approx_tokens(text),
        Reply::ToolCalls { text, calls } => {
            let calls: u64 = calls
                .iter()
                .map(|call| approx_tokens(&call.name) + approx_tokens(&arguments_json(call)))
                .sum();
            approx_tokens(text.as_deref().unwrap_or_default()) + calls
        }
    }
}

/// Applies stop sequences, then `max_tokens` (to text answers: tool calls
/// are sent whole).
fn answer(reply: Reply, stop: &[String], max_tokens: Option<u64>) -> Answer {
    let mut content = match reply {
        Reply::ToolCalls { text, calls } => {
            let calls = calls
                .iter()
                .map(|call| CallOut {
                    arguments: arguments_json(call),
                    name: call.name.clone(),
                })
                .collect();
            return Answer::ToolCalls { text, calls };
        }
        Reply::Text(text) => text,
    };
    let cut_at = stop
        .iter()
        .filter(|stop| !stop.is_empty())
        .filter_map(|stop| content.find(stop.as_str()))
        .min();
    if let Some(at) = cut_at {
        content.truncate(at);
    }
    if let Some(max) = max_tokens
        && let Some(cut) = cut_to_tokens(&content, max)
    {
        let cut = cut.len();
        content.truncate(cut);
        return Answer::Text {
            content,
            finish: "length",
        };
    }
    Answer::Text {
        content,
        finish: "stop",
    }
}

impl Answer {
    fn tokens(&self) -> u64 {
        match self {
            Self::Text { content, .. } => approx_tokens(content),
            Self::ToolCalls { text, calls } => {
                let calls: u64 = calls
                    .iter()
                    .map(|call| approx_tokens(&call.name) + approx_tokens(&call.arguments))
                    .sum();
                approx_tokens(text.as_deref().unwrap_or_default()) + calls
            }
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Self::Text { finish, .. } => finish,
            Self::ToolCalls { .. } => "tool_calls",
        }
    }

    /// The message text: `None` (JSON `null`) for tool calls without text.
    fn content(&self) -> Option<&str> {
        match self {
            Self::Text { content, .. } => Some(content),
            Self::ToolCalls { text, .. } => text.as_deref(),
        }
    }

    fn calls(&self) -> &[CallOut] {
        match self {
            Self::Text { .. } => &[],
            Self::ToolCalls { calls, .. } => calls,
        }
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    usage: &'a Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: usize,
    message: AssistantMessage<'a>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    /// Absent without `include_usage`; `null` on content chunks with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<&'a Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: usize,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCall<'a>; 1]>,
}

fn respond(
    shared: &Shared,
    seq: u64,
    request: &ChatRequest,
    reply: Reply,
    prompt_tokens: u64,
    plan: &Plan,
) -> Response {
    let answer = answer(reply, &request.stop, request.max_tokens);
    let completion_tokens = answer.tokens() * request.n as u64;
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: CachedTokens { cached_tokens: 0 },
    };
    let id = format!("chatcmpl-{seq}");
    // One id per call and choice, unique across the server's requests.
    let call_ids: Vec<String> = (0..answer.calls().len() * request.n)
        .map(|k| format!("call_{seq}_{k}"))
        .collect();
    let created = unix_now();
    let response = if request.stream {
        shared.stats.streamed();
        let events = stream_events(&Stream {
            id: &id,
            call_ids: &call_ids,
            created,
            request,
            answer: &answer,
            usage: &usage,
            chunk_chars: shared.config.chunk_chars,
        });
        match plan.mode {
            BodyMode::Normal => sse_response(events.concat()),
            BodyMode::Truncate => {
                let keep = (events.len() / 2).max(1);
                sse_response(events.get(..keep).unwrap_or_default().concat())
            }
            BodyMode::MalformedStart => sse_response(format!(
                "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"choices\":[\n\n"
            )),
            BodyMode::Malformed => {
                let mut body = events.first().cloned().unwrap_or_default();
                body.push_str(&format!(
                    "data: {{\"id\":\"{id}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\n\n"
                ));
                // The normal end: the last choice's finish chunk (and usage), then [DONE].
                let tail = if request.include_usage { 3 } else { 2 };
                for event in events.iter().skip(events.len().saturating_sub(tail)) {
                    body.push_str(event);
                }
                sse_response(body)
            }
        }
    } else {
        let choices = (0..request.n)
            .map(|index| Choice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: answer.content(),
                    tool_calls: tool_calls_of(&answer, &call_ids, index),
                },
                finish_reason: answer.finish_reason(),
            })
            .collect();
        let completion = Completion {
            id: &id,
            object: "chat.completion",
            created,
            model: &request.model,
            choices,
            usage: &usage,
        };
        let body = serde_json::to_vec(&completion).unwrap_or_default();
        match plan.mode {
            BodyMode::Normal => json_response(StatusCode::OK, body),
            BodyMode::Truncate => truncated_json_response(&body),
            BodyMode::Malformed | BodyMode::MalformedStart => json_response(
                StatusCode::OK,
                format!(
                    "{{\"id\":\"{id}\",\"object\":\"chat.completion\",\"choices\": [ {{\"message\": {{\"role\": \"assistant\", \"content\": "
                ),
            ),
        }
    };
    if plan.mode == BodyMode::Normal {
        shared
            .stats
            .tokens(usage.prompt_tokens, usage.completion_tokens);
    }
    with_limits(response, plan, FLAVOR)
}

/// The `tool_calls` of choice `choice`'s message, if the answer has any.
fn tool_calls_of<'a>(
    answer: &'a Answer,
    call_ids: &'a [String],
    choice: usize,
) -> Option<Vec<ToolCall<'a>>> {
    let calls = answer.calls();
    if calls.is_empty() {
        return None;
    }
    let ids = call_ids.iter().skip(choice * calls.len());
    Some(
        calls
            .iter()
            .zip(ids)
            .map(|(call, id)| ToolCall {
                index: None,
                id: Some(id),
                kind: Some("function"),
                function: FunctionCall {
                    name: Some(&call.name),
                    arguments: &call.arguments,
                },
            })
            .collect(),
    )
}

struct Stream<'a> {
    id: &'a str,
    /// The tool calls' ids, choice after choice.
    call_ids: &'a [String],
    created: u64,
    request: &'a ChatRequest,
    answer: &'a Answer,
    usage: &'a Usage,
    chunk_chars: usize,
}

/// Splits text into pieces of `chunk_chars` characters (on char boundaries).
pub(crate) fn pieces(text: &str, chunk_chars: usize) -> Vec<&str> {
    let chunk_chars = chunk_chars.max(1);
    let mut pieces = Vec::new();
    let mut start = 0;
    for (count, (at, _)) in text.char_indices().enumerate() {
        if count > 0 && count % chunk_chars == 0 {
            pieces.push(text.get(start..at).unwrap_or_default());
            start = at;
        }
    }
    if start < text.len() {
        pieces.push(text.get(start..).unwrap_or_default());
    }
    pieces
}

/// Every SSE event of a streamed completion, `[DONE]` last.
fn stream_events(stream: &Stream<'_>) -> Vec<String> {
    let usage_field = stream.request.include_usage.then_some(None);
    let event = |choices: &[ChunkChoice<'_>], usage: Option<Option<&Usage>>| {
        let chunk = Chunk {
            id: stream.id,
            object: "chat.completion.chunk",
            created: stream.created,
            model: &stream.request.model,
            choices,
            usage,
        };
        let json = serde_json::to_string(&chunk).unwrap_or_default();
        format!("data: {json}\n\n")
    };
    let mut events = Vec::new();
    for index in 0..stream.request.n {
        match stream.answer {
            Answer::Text { content, .. } => {
                let role = ChunkChoice {
                    index,
                    delta: Delta {
                        role: Some("assistant"),
                        content: Some(""),
                        tool_calls: None,
                    },
                    finish_reason: None,
                };
                events.push(event(&[role], usage_field));
                for piece in pieces(content, stream.chunk_chars) {
                    let choice = ChunkChoice {
                        index,
                        delta: Delta {
                            content: Some(piece),
                            ..Delta::default()
                        },
                        finish_reason: None,
                    };
                    events.push(event(&[choice], usage_field));
                }
            }
            Answer::ToolCalls { text, calls } => {
                // As OpenAI streams them: any text first, then per call a
                // fragment with its index, id and name, then pieces of its
                // arguments under the same index.
                let mut role = Some("assistant");
                if let Some(text) = text {
                    let start = ChunkChoice {
                        index,
                        delta: Delta {
                            role: role.take(),
                            content: Some(""),
                            tool_calls: None,
                        },
                        finish_reason: None,
                    };
                    events.push(event(&[start], usage_field));
                    for piece in pieces(text, stream.chunk_chars) {
                        let choice = ChunkChoice {
                            index,
                            delta: Delta {
                                content: Some(piece),
                                ..Delta::default()
                            },
                            finish_reason: None,
                        };
                        events.push(event(&[choice], usage_field));
                    }
                }
                let ids = stream.call_ids.iter().skip(index * calls.len());
                for (at, (call, id)) in calls.iter().zip(ids).enumerate() {
                    let start = ChunkChoice {
                        index,
                        delta: Delta {
                            role: role.take(),
                            content: None,
                            tool_calls: Some([ToolCall {
                                index: Some(at),
                                id: Some(id),
                                kind: Some("function"),
                                function: FunctionCall {
                                    name: Some(&call.name),
                                    arguments: "",
                                },
                            }]),
                        },
                        finish_reason: None,
                    };
                    events.push(event(&[start], usage_field));
                    for piece in pieces(&call.arguments, stream.chunk_chars) {
                        let arguments = ChunkChoice {
                            index,
                            delta: Delta {
                                tool_calls: Some([ToolCall {
                                    index: Some(at),
                                    id: None,
                                    kind: None,
                                    function: FunctionCall {
                                        name: None,
                                        arguments: piece,
                                    },
                                }]),
                                ..Delta::default()
                            },
                            finish_reason: None,
                        };
                        events.push(event(&[arguments], usage_field));
                    }
                }
            }
        }
        let finish = ChunkChoice {
            index,
            delta: Delta::default(),
            finish_reason: Some(stream.answer.finish_reason()),
        };
        events.push(event(&[finish], usage_field));
    }
    if stream.request.include_usage {
        events.push(event(&[], Some(Some(stream.usage))));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pieces_respect_chars() {
        assert_eq!(pieces("abcdefg", 3), vec!["abc", "def", "g"]);
        assert_eq!(pieces("ééé", 2), vec!["éé", "é"]);
        assert!(pieces("", 4).is_empty());
    }

    #[test]
    fn answer_cuts() {
        let long = Reply::Text("0123456789".into());
        assert_eq!(
            answer(long.clone(), &[], Some(2)),
            Answer::Text {
                content: "01234567".into(),
                finish: "length"
            }
        );
        assert_eq!(
            answer(long, &["45".into()], None),
            Answer::Text {
                content: "0123".into(),
                finish: "stop"
            }
        );
    }

    #[test]
    fn parse_errors() {
        let err = parse(&json!({"model": "m"})).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("messages"));
        let err = parse(&json!({"model": "m", "messages": "hi"})).unwrap_err();
        assert!(err.message.contains("messages"));
        let ok = parse(&json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}
        ]}]}))
        .unwrap();
        assert_eq!(ok.prompt.last_user(), "ab");
    }

    #[test]
    fn tool_turns_parse_and_pair_up() {
        let call = |id: &str, name: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": "{\"q\":1}"}});
        let ok = parse(&json!({"model": "m", "messages": [
            {"role": "user", "content": "question"},
            {"role": "assistant", "content": null, "tool_calls": [call("c1", "f"), call("c2", "g")]},
            {"role": "tool", "tool_call_id": "c2", "content": "result two"},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "result one"}]},
        ]}))
        .unwrap();
        assert_eq!(
            ok.prompt.full_text(),
            "question\nf({\"q\":1})\ng({\"q\":1})\nresult two\nresult one"
        );
        assert_eq!(ok.prompt.last_turn_text(), "result two\nresult one");
        assert!(ok.prompt.ends_with_tool_result());
        assert!(
            parse_common(
                &serde_json::to_vec(&json!({"model": "m", "messages": [
            {"role": "user", "content": "question"},
            {"role": "assistant", "content": null, "tool_calls": [call("c1", "f")]},
            {"role": "tool", "tool_call_id": "c1", "content": "r"}]}))
                .unwrap()
            )
            .is_none()
        );

        let user = json!({"role": "user", "content": "q"});
        let cases = [
            (
                json!([user, {"role": "tool", "tool_call_id": "c1", "content": "r"}]),
                "messages[1].role",
                "must be a response to a preceeding message",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [call("c1", "f")]},
                    {"role": "tool", "tool_call_id": "c9", "content": "r"}]),
                "messages[2].tool_call_id",
                "'c9' not found",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [call("c1", "f"), call("c2", "f")]},
                    {"role": "tool", "tool_call_id": "c1", "content": "r"}, user]),
                "messages[1].tool_calls",
                "did not have response messages: c2",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [call("c1", "f")]}]),
                "messages[1].tool_calls",
                "did not have response messages: c1",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [call("c1", "f")]},
                    {"role": "tool", "content": "r"}]),
                "messages[2].tool_call_id",
                "must have a 'tool_call_id'",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": {"id": "c1"}}]),
                "messages[1].tool_calls",
                "expected an array of objects, but got an object",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"q": 1}}}]}]),
                "messages[1].tool_calls[0].function.arguments",
                "expected a string, but got an object",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [
                {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
                "messages[1].tool_calls[0].id",
                "Missing required parameter",
            ),
            (
                json!([user, {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "code", "function": {"name": "f", "arguments": "{}"}}]}]),
                "messages[1].tool_calls[0].type",
                "Supported values are: 'function'",
            ),
        ];
        for (messages, param, needle) in cases {
            let err = parse(&json!({"model": "m", "messages": messages})).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{messages}");
            assert_eq!(
                err.param.as_deref(),
                Some(param),
                "{messages}: {}",
                err.message
            );
            assert!(err.message.contains(needle), "{messages}: {}", err.message);
        }
    }

    #[test]
    fn tool_call_answers() {
        let reply = Reply::ToolCalls {
            text: None,
            calls: vec![
                crate::ScriptToolCall::new("f", json!({"b": [1, 2], "a": "x"})),
                crate::ScriptToolCall::new("g", json!({})),
            ],
        };
        let tokens = reply_tokens(&reply);
        let answer = answer(reply, &["x".into()], Some(1));
        let Answer::ToolCalls { text: None, calls } = &answer else {
            panic!("tool calls expected: {answer:?}")
        };
        // Whole, whatever the stop sequences and token limit.
        assert_eq!(calls[0].arguments, r#"{"a":"x","b":[1,2]}"#);
        assert_eq!(calls[1].arguments, "{}");
        assert_eq!(answer.tokens(), tokens);
        assert_eq!(
            tokens,
            approx_tokens("f") + approx_tokens(r#"{"a":"x","b":[1,2]}"#) + approx_tokens("g") + 1
        );
        assert_eq!(answer.finish_reason(), "tool_calls");
        assert_eq!(answer.content(), None);
    }

    /// The typed fast path reads exactly what `parse` reads, and leaves every
    /// request it cannot read, valid or not, to `parse`.
    #[test]
    fn the_fast_path_agrees_with_parse() {
        let user = json!({"role": "user", "content": "Say \"hi\"\nplease"});
        let bodies = [
            json!({"model": "m", "messages": [user]}),
            json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, user,
                {"role": "assistant", "content": null, "tool_calls": []}],
                "max_tokens": 7, "n": 3, "temperature": 0.2, "seed": 1}),
            json!({"model": "m", "messages": [user], "max_tokens": 7, "max_completion_tokens": 9}),
            json!({"model": "m", "messages": [user], "stream": true, "stream_options": {"include_usage": true}}),
            json!({"model": "m", "messages": [user], "stream": true, "stream_options": {"include_usage": null}}),
            json!({"model": "m", "messages": [user], "stream": null, "n": null, "stop": null}),
            // Read by `parse` only.
            json!({"model": "m", "messages": [user], "stop": ["\n"]}),
            json!({"model": "m", "messages": [user], "response_format": {"type": "json_object"}}),
            json!({"model": "m", "messages": [user], "tools": [{"type": "function", "function": {"name": "f"}}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}),
            json!({"model": "m", "messages": [user,
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]}),
            // Invalid: `parse` names the problem.
            json!({"model": "m", "messages": [user, {"role": "tool", "content": "r"}]}),
            json!({"model": "m", "messages": []}),
            json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}),
            json!({"model": "m", "messages": [{"content": "x"}]}),
            json!({"model": 3, "messages": [user]}),
            json!({"messages": [user]}),
            json!({"model": "m", "messages": [user], "n": 0}),
            json!({"model": "m", "messages": [user], "n": 129}),
            json!({"model": "m", "messages": [user], "max_tokens": -1}),
            json!({"model": "m", "messages": [user], "max_tokens": 1.5}),
            json!({"model": "m", "messages": [user], "stream": "yes"}),
            json!([1, 2]),
        ];
        let mut fast_count = 0;
        for body in bodies {
            let bytes = serde_json::to_vec(&body).unwrap();
            let slow = parse(&body);
            match parse_common(&bytes) {
                Some(fast) => {
                    fast_count += 1;
                    let slow = slow.unwrap_or_else(|e| panic!("{body}: {}", e.message));
                    assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{body}");
                }
                None => {
                    let uncommon = ["stop", "response_format", "tools"]
                        .iter()
                        .any(|key| body.get(key).is_some_and(|v| !v.is_null()))
                        || body["messages"][0]["content"].is_array()
                        || body["messages"][1]["tool_calls"].is_array();
                    assert!(
                        uncommon || slow.is_err(),
                        "{body}: the fast path refused a common request"
                    );
                }
            }
        }
        assert_eq!(fast_count, 6);
        assert!(parse_common(b"{not json").is_none());
    }
}
