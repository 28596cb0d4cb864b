//! What the mock says: script rules, scripted replies, tool calls, JSON modes,
//! DSPy-style fields, and the echo.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

use crate::dspy;
use crate::script::{self, Script, ScriptToolCall};
use crate::tokens::{approx_tokens, prompt_tokens};

/// One message of a prompt, reduced to its text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) role: String,
    /// The message's own text (its text parts or blocks).
    pub(crate) text: String,
    /// Its tool traffic as text rules can match, one item per line: the
    /// assistant's calls as `name(arguments-json)`, Anthropic `tool_result`
    /// blocks' text. Empty, so unallocated, for the usual plain message.
    pub(crate) tools: String,
    /// Whether it carries tool results (an OpenAI `tool` message, an
    /// Anthropic user message with `tool_result` blocks): then it is not the
    /// user's question, even when its role is `user`.
    pub(crate) tool_result: bool,
}

impl Message {
    /// A plain text message.
    pub(crate) fn new(role: String, text: String) -> Self {
        Self {
            role,
            text,
            ..Self::default()
        }
    }

    /// Adds one line of tool traffic.
    pub(crate) fn push_tool_line(&mut self, line: &str) {
        if !self.tools.is_empty() {
            self.tools.push('\n');
        }
        self.tools.push_str(line);
    }

    /// Adds a tool call as `name(arguments)`.
    pub(crate) fn push_tool_call(&mut self, name: &str, arguments: &str) {
        if !self.tools.is_empty() {
            self.tools.push('\n');
        }
        self.tools.push_str(name);
        self.tools.push('(');
        self.tools.push_str(arguments);
        self.tools.push(')');
    }

    /// Appends the text and the tool lines to `out`, newline-separated.
    fn write_to(&self, out: &mut String) {
        out.push_str(&self.text);
        if !self.tools.is_empty() {
            if !self.text.is_empty() {
                out.push('\n');
            }
            out.push_str(&self.tools);
        }
    }

    /// The user's own words, not a turn of tool results.
    fn is_question(&self) -> bool {
        self.role == "user" && !(self.tool_result && self.text.is_empty())
    }
}

/// A chat prompt, API-independent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prompt {
    /// Anthropic's top-level `system` field (OpenAI's system prompt is a message).
    pub(crate) system_field: Option<String>,
    pub(crate) messages: Vec<Message>,
}

impl Prompt {
    /// The text of the last user message ("" if there is none); a message of
    /// nothing but tool results does not count.
    pub(crate) fn last_user(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.is_question())
            .map_or("", |m| m.text.as_str())
    }

    /// Whether the last message brings tool results (the model's turn after a
    /// tool call).
    pub(crate) fn ends_with_tool_result(&self) -> bool {
        self.messages.last().is_some_and(|m| m.tool_result)
    }

    /// The system prompt: the `system` field, or the system/developer messages.
    pub(crate) fn system_text(&self) -> Cow<'_, str> {
        if let Some(system) = &self.system_field {
            return Cow::Borrowed(system);
        }
        let mut system = self
            .messages
            .iter()
            .filter(|m| m.role == "system" || m.role == "developer");
        match (system.next(), system.next()) {
            (None, _) => Cow::Borrowed(""),
            (Some(only), None) => Cow::Borrowed(&only.text),
            (Some(first), Some(second)) => {
                let mut text = format!("{}\n{}", first.text, second.text);
                for more in system {
                    text.push('\n');
                    text.push_str(&more.text);
                }
                Cow::Owned(text)
            }
        }
    }

    /// The whole prompt: the system field and every message's text and tool
    /// lines, joined with newlines.
    pub(crate) fn full_text(&self) -> String {
        let mut text = String::new();
        if let Some(system) = &self.system_field {
            text.push_str(system);
        }
        for (i, message) in self.messages.iter().enumerate() {
            if i > 0 || self.system_field.is_some() {
                text.push('\n');
            }
            message.write_to(&mut text);
        }
        text
    }

    /// The last turn, what `"last": true` rules look at: the messages after
    /// the model's last message, system messages left out (the question on a
    /// first call, the tool results after a tool call), or the last message if
    /// it is the model's own (a prefill).
    pub(crate) fn last_turn_text(&self) -> String {
        let start = match self.messages.iter().rposition(|m| m.role == "assistant") {
            Some(at) if at + 1 == self.messages.len() => at,
            Some(at) => at + 1,
            None => 0,
        };
        let mut text = String::new();
        let turn = self.messages.get(start..).unwrap_or_default();
        for message in turn
            .iter()
            .filter(|m| m.role != "system" && m.role != "developer")
        {
            if !text.is_empty() {
                text.push('\n');
            }
            message.write_to(&mut text);
        }
        text
    }

    /// Prompt tokens by the mock's rule (see [`crate::approx_tokens`]); tool
    /// lines count like text.
    pub(crate) fn tokens(&self) -> u64 {
        let tool_tokens: u64 = self.messages.iter().map(|m| approx_tokens(&m.tools)).sum();
        prompt_tokens(
            self.messages.iter().map(|m| m.text.as_str()),
            self.system_field.as_deref(),
        ) + tool_tokens
    }
}

/// The requested output format (OpenAI's `response_format`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum ResponseFormat {
    #[default]
    Text,
    JsonObject,
    /// The JSON schema (`response_format.json_schema.schema`).
    JsonSchema(Value),
}

/// What a request asks for, beyond the prompt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) prompt: &'a Prompt,
    /// The first tool's name, if tools were given.
    pub(crate) tool: Option<&'a str>,
    pub(crate) format: &'a ResponseFormat,
}

/// The reply the mock decided on, before API-specific shaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Text(String),
    /// Tool calls (at least one), with text alongside if any.
    ToolCalls {
        text: Option<String>,
        calls: Vec<ScriptToolCall>,
    },
}

impl From<script::Answer<'_>> for Reply {
    fn from(answer: script::Answer<'_>) -> Self {
        if answer.tool_calls.is_empty() {
            return Self::Text(answer.text.unwrap_or_default().to_owned());
        }
        Self::ToolCalls {
            // No text and empty text are the same answer on the wire.
            text: answer.text.filter(|t| !t.is_empty()).map(str::to_owned),
            calls: answer.tool_calls.to_vec(),
        }
    }
}

/// A tool call's arguments as the JSON text OpenAI sends and Anthropic streams.
pub(crate) fn arguments_json(call: &ScriptToolCall) -> String {
    serde_json::to_string(&call.arguments).unwrap_or_else(|_| "{}".to_owned())
}

/// Chooses replies; holds the script and the position in its reply cycle.
#[derive(Debug, Default)]
pub(crate) struct Responder {
    script: Option<Script>,
    cycle: AtomicUsize,
}

impl Responder {
    pub(crate) fn new(script: Option<Script>) -> Self {
        Self {
            script,
            cycle: AtomicUsize::new(0),
        }
    }

    /// The reply to `ask`. `forced` (from [`crate::Fault::Reply`]) wins over everything.
    /// With `advance == false` the script's reply cycle is only peeked at (used to
    /// estimate a request's token cost before it is admitted).
    pub(crate) fn reply(&self, ask: Ask<'_>, forced: Option<&str>, advance: bool) -> Reply {
        if let Some(forced) = forced {
            return Reply::Text(forced.to_owned());
        }
        if let Some(script) = &self.script {
            if !script.rules.is_empty()
                && let Some(answer) = script.rule_answer(
                    ask.tool.is_some(),
                    || ask.prompt.full_text(),
                    || ask.prompt.last_turn_text(),
                )
            {
                return answer.into();
            }
            if !script.replies.is_empty() {
                let position = if advance {
                    self.cycle.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.cycle.load(Ordering::Relaxed)
                };
                if let Some(answer) = script.cycled_reply(position) {
                    return answer.into();
                }
            }
        }
        let last_user = ask.prompt.last_user();
        // Once the tool's result is back, answer instead of calling it again,
        // as a model would: an agent loop against the mock ends.
        if let Some(tool) = ask.tool
            && !ask.prompt.ends_with_tool_result()
            && last_user.to_lowercase().contains("weather")
        {
            return Reply::ToolCalls {
                text: None,
                calls: vec![ScriptToolCall::new(tool, Value::Object(Map::new()))],
            };
        }
        match ask.format {
            ResponseFormat::JsonSchema(schema) => {
                return Reply::Text(schema_instance(schema).to_string());
            }
            ResponseFormat::JsonObject => {
                let object = serde_json::json!({ "reply": echo(last_user) });
                return Reply::Text(object.to_string());
            }
            ResponseFormat::Text => {}
        }
        if let Some(structured) = dspy::structured_reply(last_user, &ask.prompt.system_text()) {
            return Reply::Text(structured);
        }
        Reply::Text(echo(last_user))
    }
}

/// The default reply.
pub(crate) fn echo(last_user: &str) -> String {
    format!("echo: {last_user}")
}

/// An object with each of the schema's `properties` filled with a value of its type.
pub(crate) fn schema_instance(schema: &Value) -> Value {
    let mut object = Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, property) in properties {
            object.insert(key.clone(), property_value(key, property));
        }
    }
    Value::Object(object)
}

fn property_value(key: &str, property: &Value) -> Value {
    if let Some(first) = property
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|values| values.first())
    {
        return first.clone();
    }
    if let Some(constant) = property.get("const") {
        return constant.clone();
    }
    let ty = match property.get("type") {
        Some(Value::String(ty)) => Some(ty.as_str()),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|ty| *ty != "null")
            .or(Some("null")),
        _ => None,
    };
    match ty {
        Some("number" | "integer") => Value::from(1),
        Some("boolean") => Value::Bool(true),
        Some("array") => Value::Array(Vec::new()),
        Some("object") => Value::Object(Map::new()),
        Some("null") => Value::Null,
        _ => Value::String(format!("mock {key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{ScriptReply, ScriptRule};
    use serde_json::json;

    fn prompt(messages: &[(&str, &str)]) -> Prompt {
        Prompt {
            system_field: None,
            messages: messages
                .iter()
                .map(|(role, text)| Message::new((*role).to_owned(), (*text).to_owned()))
                .collect(),
        }
    }

    fn ask<'a>(prompt: &'a Prompt, format: &'a ResponseFormat) -> Ask<'a> {
        Ask {
            prompt,
            tool: None,
            format,
        }
    }

    #[test]
    fn echo_last_user() {
        let p = prompt(&[
            ("system", "be nice"),
            ("user", "first"),
            ("assistant", "a"),
            ("user", "second"),
        ]);
        let r = Responder::default();
        assert_eq!(
            r.reply(ask(&p, &ResponseFormat::Text), None, true),
            Reply::Text("echo: second".into())
        );
        assert_eq!(p.full_text(), "be nice\nfirst\na\nsecond");
        assert_eq!(p.system_text(), "be nice");
    }

    #[test]
    fn script_order() {
        let script = Script::replies(["one", "two"]).rule("be nice", "rule hit");
        let r = Responder::new(Some(script));
        let hit = prompt(&[("system", "be nice"), ("user", "x")]);
        let miss = prompt(&[("user", "x")]);
        let text = ResponseFormat::Text;
        assert_eq!(
            r.reply(ask(&hit, &text), None, true),
            Reply::Text("rule hit".into())
        );
        assert_eq!(
            r.reply(ask(&miss, &text), None, false),
            Reply::Text("one".into())
        );
        assert_eq!(
            r.reply(ask(&miss, &text), None, true),
            Reply::Text("one".into())
        );
        assert_eq!(
            r.reply(ask(&miss, &text), None, true),
            Reply::Text("two".into())
        );
        assert_eq!(
            r.reply(ask(&miss, &text), None, true),
            Reply::Text("one".into())
        );
        assert_eq!(
            r.reply(ask(&miss, &text), Some("forced"), true),
            Reply::Text("forced".into())
        );
    }

    /// A conversation with tool turns: the question, a call and its result.
    fn with_tool_turn() -> Prompt {
        let mut call = Message::new("assistant".into(), String::new());
        call.push_tool_call("search", r#"{"q":"x"}"#);
        call.push_tool_call("lookup", "{}");
        let mut result = Message::new("tool".into(), "found x".into());
        result.tool_result = true;
        let mut second = Message::new("tool".into(), "looked up".into());
        second.tool_result = true;
        Prompt {
            system_field: None,
            messages: vec![
                Message::new("system".into(), "be nice".into()),
                Message::new("user".into(), "weather question".into()),
                call,
                result,
                second,
            ],
        }
    }

    #[test]
    fn tool_turns_in_the_prompt_text() {
        let p = with_tool_turn();
        assert_eq!(
            p.full_text(),
            "be nice\nweather question\nsearch({\"q\":\"x\"})\nlookup({})\nfound x\nlooked up"
        );
        // Both results of the parallel calls make the last turn.
        assert_eq!(p.last_turn_text(), "found x\nlooked up");
        assert_eq!(p.last_user(), "weather question");
        assert!(p.ends_with_tool_result());
        // Tool lines count like text.
        let plain = prompt(&[("system", "be nice"), ("user", "weather question")]);
        let calls_tokens = approx_tokens("search({\"q\":\"x\"})\nlookup({})");
        assert_eq!(
            p.tokens(),
            plain.tokens()
                + calls_tokens
                + 4
                + approx_tokens("found x")
                + 4
                + approx_tokens("looked up")
                + 4
        );
        // The first call's last turn is the question, system messages left out.
        assert_eq!(plain.last_turn_text(), "weather question");
        // An assistant prefill is its own last turn.
        let prefill = prompt(&[("user", "q"), ("assistant", "Sure:")]);
        assert_eq!(prefill.last_turn_text(), "Sure:");
        // An Anthropic-style user message of tool results is not the question.
        let mut results = Message::new("user".into(), String::new());
        results.push_tool_line("error: no station");
        results.tool_result = true;
        let mut anthropic = prompt(&[("user", "weather in Atlantis?"), ("assistant", "")]);
        anthropic.messages.push(results);
        assert_eq!(anthropic.last_user(), "weather in Atlantis?");
        assert_eq!(anthropic.last_turn_text(), "error: no station");
    }

    #[test]
    fn the_weather_call_stops_once_its_result_is_back() {
        let p = with_tool_turn();
        let text = ResponseFormat::Text;
        let ask = Ask {
            prompt: &p,
            tool: Some("get_weather"),
            format: &text,
        };
        assert_eq!(
            Responder::default().reply(ask, None, true),
            Reply::Text("echo: weather question".into())
        );
    }

    #[test]
    fn scripted_tool_calls() {
        let script = Script::replies([
            ScriptReply::tool_calls([ScriptToolCall::new("a", json!({"x": 1}))]),
            ScriptReply::ToolCalls {
                reply: Some(String::new()),
                tool_calls: vec![ScriptToolCall::new("b", json!({}))],
            },
        ])
        .with_rule(
            ScriptRule::tool_calls("found x", [ScriptToolCall::new("finish", json!({}))])
                .with_reply("Done.")
                .last_turn(),
        );
        let r = Responder::new(Some(script));
        let text = ResponseFormat::Text;
        let p = with_tool_turn();
        let tools = Ask {
            prompt: &p,
            tool: Some("search"),
            format: &text,
        };
        assert_eq!(
            r.reply(tools, None, true),
            Reply::ToolCalls {
                text: Some("Done.".into()),
                calls: vec![ScriptToolCall::new("finish", json!({}))]
            }
        );
        // Without tools the rule is skipped: the cycle answers.
        assert_eq!(
            r.reply(ask(&p, &text), None, true),
            Reply::ToolCalls {
                text: None,
                calls: vec![ScriptToolCall::new("a", json!({"x": 1}))]
            }
        );
        // Empty text alongside calls is no text.
        assert_eq!(
            r.reply(ask(&p, &text), None, true),
            Reply::ToolCalls {
                text: None,
                calls: vec![ScriptToolCall::new("b", json!({}))]
            }
        );
    }

    #[test]
    fn tool_and_json() {
        let p = prompt(&[("user", "What's the Weather in Paris?")]);
        let r = Responder::default();
        let text = ResponseFormat::Text;
        let with_tool = Ask {
            prompt: &p,
            tool: Some("get_weather"),
            format: &text,
        };
        assert_eq!(
            r.reply(with_tool, None, true),
            Reply::ToolCalls {
                text: None,
                calls: vec![ScriptToolCall::new("get_weather", json!({}))]
            }
        );
        let object = ResponseFormat::JsonObject;
        let Reply::Text(body) = r.reply(ask(&p, &object), None, true) else {
            panic!("text expected")
        };
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            json!({"reply": "echo: What's the Weather in Paris?"})
        );
        let schema = ResponseFormat::JsonSchema(json!({"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"},
            "ok": {"type": "boolean"}, "tags": {"type": "array"}, "meta": {"type": "object"},
            "maybe": {"type": ["string", "null"]}, "kind": {"enum": ["x", "y"]}
        }}));
        let Reply::Text(body) = r.reply(ask(&p, &schema), None, true) else {
            panic!("text expected")
        };
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            json!({"name": "mock name", "age": 1, "score": 1, "ok": true, "tags": [], "meta": {},
                   "maybe": "mock maybe", "kind": "x"})
        );
    }
}
