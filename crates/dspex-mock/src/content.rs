//! What the mock says: script rules, scripted replies, tool calls, JSON modes,
//! DSPy-style fields, and the echo.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

use crate::dspy;
use crate::script::Script;
use crate::tokens::prompt_tokens;

/// One message of a prompt, reduced to its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) role: String,
    pub(crate) text: String,
}

/// A chat prompt, API-independent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prompt {
    /// Anthropic's top-level `system` field (OpenAI's system prompt is a message).
    pub(crate) system_field: Option<String>,
    pub(crate) messages: Vec<Message>,
}

impl Prompt {
    /// The text of the last user message ("" if there is none).
    pub(crate) fn last_user(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.text.as_str())
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

    /// The whole prompt: the system field and every message's text, joined with newlines.
    pub(crate) fn full_text(&self) -> String {
        let parts = self
            .system_field
            .iter()
            .chain(self.messages.iter().map(|m| &m.text));
        let mut text = String::new();
        for (i, part) in parts.enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(part);
        }
        text
    }

    /// Prompt tokens by the mock's rule (see [`crate::approx_tokens`]).
    pub(crate) fn tokens(&self) -> u64 {
        prompt_tokens(
            self.messages.iter().map(|m| m.text.as_str()),
            self.system_field.as_deref(),
        )
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
    /// A call of the named tool with arguments `{}`.
    ToolCall(String),
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
                && let Some(reply) = script.rule_reply(&ask.prompt.full_text())
            {
                return Reply::Text(reply.to_owned());
            }
            if !script.replies.is_empty() {
                let position = if advance {
                    self.cycle.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.cycle.load(Ordering::Relaxed)
                };
                if let Some(reply) = script.cycled_reply(position) {
                    return Reply::Text(reply.to_owned());
                }
            }
        }
        let last_user = ask.prompt.last_user();
        if let Some(tool) = ask.tool
            && last_user.to_lowercase().contains("weather")
        {
            return Reply::ToolCall(tool.to_owned());
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
    use serde_json::json;

    fn prompt(messages: &[(&str, &str)]) -> Prompt {
        Prompt {
            system_field: None,
            messages: messages
                .iter()
                .map(|(role, text)| Message {
                    role: (*role).to_owned(),
                    text: (*text).to_owned(),
                })
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
            Reply::ToolCall("get_weather".into())
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
