//! Scripted replies: rules matched against the prompt, then a cycle of replies.
//! Either can answer with text, native tool calls, or both.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A script of replies, as read from `--script FILE` or built in code.
///
/// The file format is JSON:
///
/// ```json
/// {
///   "rules": [
///     {"contains": "temperature is 21", "last": true, "reply": "It is 21 degrees in Paris."},
///     {"contains": "Paris", "last": true, "tool_calls": [
///       {"name": "get_weather", "arguments": {"city": "Paris"}}
///     ]},
///     {"contains": "capital of France", "reply": "Paris"}
///   ],
///   "replies": ["first", {"reply": "Let me look.", "tool_calls": [{"name": "search", "arguments": {"q": "x"}}]}]
/// }
/// ```
///
/// For each chat or messages request, `rules` are tried first, in order; the
/// first rule whose `contains` is a substring of its text gives the answer.
/// Otherwise the `replies` are used in order, cycling, whatever the request.
/// Otherwise the server falls back to its built-in replies (a tool call for
/// "weather", JSON modes, DSPy-style fields, or an echo).
///
/// A rule's text is the whole prompt: the system prompt and every message,
/// joined with newlines, where a message's tool traffic is written out after
/// its text, one item per line: the assistant's tool calls as
/// `name(arguments-json)` (such as `get_weather({"city":"Paris"})`), and each
/// tool result's text (Anthropic `tool_result` blocks marked `is_error` as
/// `error: <text>`; OpenAI `tool` messages are plain messages). With
/// `"last": true` a rule looks only at the *last turn*: the messages after the
/// model's last message (the question on the first call, the tool results
/// after a tool call), system messages left out.
///
/// Rule fields: `contains` (required, non-empty, case-sensitive), `reply`
/// (the text), `tool_calls` (a list of `{"name": ..., "arguments": {...}}`,
/// arguments an object, `{}` when left out; several make parallel calls) —
/// at least one of `reply` and `tool_calls` — and `last` (default `false`).
/// A rule with `tool_calls` only answers requests that offer tools (a model
/// can only call tools it is given), so a final tool-less request (such as an
/// agent's extraction step) falls through to the next rules. Each entry of
/// `replies` is a string or an object with the same `reply` and `tool_calls`.
///
/// Scripting a multi-step agent: give each step a rule matching what is new
/// in that step — step 1 the question, step 2 the observation of step 1's
/// tool, and so on. With `"last": true` every rule sees only its step's new
/// turn, so their order does not matter. Without it, every rule sees the whole
/// conversation, in which the question stays for every step: put later
/// steps' rules first, since the first match wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Replies used in order (cycling) when no rule matches.
    #[serde(default)]
    pub replies: Vec<ScriptReply>,
    /// Rules tried in order before `replies`.
    #[serde(default)]
    pub rules: Vec<ScriptRule>,
}

/// One rule of a [`Script`]: if the prompt (or its last turn, with `last`)
/// contains `contains`, answer with `reply` and/or `tool_calls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    /// Substring looked for in the prompt text (case-sensitive).
    pub contains: String,
    /// The reply text; with `tool_calls`, the text alongside them (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Tool calls to answer with, in order (several make parallel calls).
    /// Such a rule is skipped for requests that offer no tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptToolCall>,
    /// Match against the last turn only (the messages after the model's last
    /// message) instead of the whole prompt.
    #[serde(default, skip_serializing_if = "is_false")]
    pub last: bool,
}

/// A tool call a script answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments: a JSON object (`{}` when left out of a script file).
    #[serde(default = "empty_object")]
    pub arguments: Value,
}

/// One entry of [`Script::replies`]: text, or tool calls with optional text.
///
/// In JSON, a string or `{"reply": "...", "tool_calls": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ScriptReply {
    /// A text reply.
    Text(String),
    /// Tool calls, with optional text alongside.
    ToolCalls {
        /// Text alongside the calls.
        #[serde(skip_serializing_if = "Option::is_none")]
        reply: Option<String>,
        /// The calls, in order.
        tool_calls: Vec<ScriptToolCall>,
    },
}

fn is_false(value: &bool) -> bool {
    !value
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl ScriptToolCall {
    /// A call of `name` with these arguments (a JSON object).
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }
}

impl ScriptRule {
    /// A rule answering prompts that contain `contains` with `reply`.
    pub fn reply(contains: impl Into<String>, reply: impl Into<String>) -> Self {
        Self {
            contains: contains.into(),
            reply: Some(reply.into()),
            tool_calls: Vec::new(),
            last: false,
        }
    }

    /// A rule answering prompts that contain `contains` with these tool calls.
    pub fn tool_calls(
        contains: impl Into<String>,
        calls: impl IntoIterator<Item = ScriptToolCall>,
    ) -> Self {
        Self {
            contains: contains.into(),
            reply: None,
            tool_calls: calls.into_iter().collect(),
            last: false,
        }
    }

    /// Sets the text given alongside the tool calls (or instead of them).
    #[must_use]
    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }

    /// Matches against the last turn only (`"last": true`).
    #[must_use]
    pub fn last_turn(mut self) -> Self {
        self.last = true;
        self
    }

    /// The rule's answer.
    pub(crate) fn answer(&self) -> Answer<'_> {
        Answer {
            text: self.reply.as_deref(),
            tool_calls: &self.tool_calls,
        }
    }
}

impl ScriptReply {
    /// Tool calls without text.
    pub fn tool_calls(calls: impl IntoIterator<Item = ScriptToolCall>) -> Self {
        Self::ToolCalls {
            reply: None,
            tool_calls: calls.into_iter().collect(),
        }
    }

    /// The reply's answer.
    pub(crate) fn answer(&self) -> Answer<'_> {
        match self {
            Self::Text(text) => Answer {
                text: Some(text),
                tool_calls: &[],
            },
            Self::ToolCalls { reply, tool_calls } => Answer {
                text: reply.as_deref(),
                tool_calls,
            },
        }
    }
}

impl From<String> for ScriptReply {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for ScriptReply {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

/// What a rule or a cycled reply answers, borrowed from the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer<'a> {
    pub(crate) text: Option<&'a str>,
    pub(crate) tool_calls: &'a [ScriptToolCall],
}

/// The object form of a [`ScriptReply`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyObject {
    #[serde(default)]
    reply: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ScriptToolCall>,
}

// By hand rather than `untagged`: an untagged enum reports every bad entry as
// "did not match any variant", where this keeps serde's own message for the
// object form (an unknown field, a call without a name...).
impl<'de> Deserialize<'de> for ScriptReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReplyVisitor;

        impl<'de> Visitor<'de> for ReplyVisitor {
            type Value = ScriptReply;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an object with `reply` and/or `tool_calls`")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ScriptReply, E> {
                Ok(ScriptReply::Text(text.to_owned()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<ScriptReply, E> {
                Ok(ScriptReply::Text(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ScriptReply, A::Error> {
                let object = ReplyObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (object.reply, object.tool_calls.is_empty()) {
                    (Some(text), true) => Ok(ScriptReply::Text(text)),
                    (reply, _) => Ok(ScriptReply::ToolCalls {
                        reply,
                        tool_calls: object.tool_calls,
                    }),
                }
            }
        }

        deserializer.deserialize_any(ReplyVisitor)
    }
}

/// Why a script file could not be used. The message names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read script file {}: {source}", path.display())]
    Read {
        /// The script file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error(
        "script file {} is not a valid script ({source}); expected {{\"replies\": [\"...\" or {{\"reply\": \"...\", \"tool_calls\": [...]}}], \"rules\": [{{\"contains\": \"...\", \"reply\": \"...\", \"tool_calls\": [{{\"name\": \"...\", \"arguments\": {{...}}}}], \"last\": false}}]}} (a rule needs `reply` or `tool_calls` or both)",
        path.display()
    )]
    Parse {
        /// The script file.
        path: PathBuf,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The file parsed but its content cannot be used.
    #[error("script file {}: {message}", path.display())]
    Invalid {
        /// The script file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Script {
    /// A script that cycles through these replies (strings, or
    /// [`ScriptReply`]s for tool calls).
    pub fn replies<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<ScriptReply>,
    {
        Self {
            replies: replies.into_iter().map(Into::into).collect(),
            rules: Vec::new(),
        }
    }

    /// Adds a rule: prompts containing `contains` get `reply`.
    #[must_use]
    pub fn rule(self, contains: impl Into<String>, reply: impl Into<String>) -> Self {
        self.with_rule(ScriptRule::reply(contains, reply))
    }

    /// Adds a rule: prompts containing `contains` get these tool calls
    /// (when the request offers tools).
    #[must_use]
    pub fn tool_rule(
        self,
        contains: impl Into<String>,
        calls: impl IntoIterator<Item = ScriptToolCall>,
    ) -> Self {
        self.with_rule(ScriptRule::tool_calls(contains, calls))
    }

    /// Adds a rule built with [`ScriptRule`]'s constructors (for `last` or
    /// text alongside tool calls).
    #[must_use]
    pub fn with_rule(mut self, rule: ScriptRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Reads and checks a script file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ScriptError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.to_owned(),
            source,
        })?;
        let script: Self = serde_json::from_str(&text).map_err(|source| ScriptError::Parse {
            path: path.to_owned(),
            source,
        })?;
        script.check().map_err(|message| ScriptError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(script)
    }

    /// Checks that the script can be used: it has a reply or a rule, no rule
    /// has an empty `contains`, every rule answers something, and every tool
    /// call has a name and object arguments.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.replies.is_empty() && self.rules.is_empty() {
            return Err("the script has neither `replies` nor `rules`".to_owned());
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.contains.is_empty() {
                return Err(format!("rules[{index}].contains is empty"));
            }
            if rule.reply.is_none() && rule.tool_calls.is_empty() {
                return Err(format!(
                    "rules[{index}] has neither `reply` nor `tool_calls`"
                ));
            }
            check_calls(&rule.tool_calls, &format!("rules[{index}]"))?;
        }
        for (index, reply) in self.replies.iter().enumerate() {
            if let ScriptReply::ToolCalls { tool_calls, .. } = reply {
                if tool_calls.is_empty() {
                    return Err(format!(
                        "replies[{index}] has neither `reply` nor `tool_calls`"
                    ));
                }
                check_calls(tool_calls, &format!("replies[{index}]"))?;
            }
        }
        Ok(())
    }

    /// The answer of the first rule that matches. `full_text` and
    /// `last_turn` give the texts a rule looks in; each is built at most once,
    /// and only if a rule needs it. Rules with tool calls are skipped unless
    /// `tools_offered`.
    pub(crate) fn rule_answer(
        &self,
        tools_offered: bool,
        full_text: impl FnOnce() -> String,
        last_turn: impl FnOnce() -> String,
    ) -> Option<Answer<'_>> {
        let mut full_text = Lazy::new(full_text);
        let mut last_turn = Lazy::new(last_turn);
        self.rules
            .iter()
            .filter(|rule| tools_offered || rule.tool_calls.is_empty())
            .find(|rule| {
                let text = if rule.last {
                    last_turn.get()
                } else {
                    full_text.get()
                };
                text.contains(rule.contains.as_str())
            })
            .map(ScriptRule::answer)
    }

    /// The reply at this position of the cycle, if there are replies.
    pub(crate) fn cycled_reply(&self, position: usize) -> Option<Answer<'_>> {
        if self.replies.is_empty() {
            return None;
        }
        self.replies
            .get(position % self.replies.len())
            .map(ScriptReply::answer)
    }
}

fn check_calls(calls: &[ScriptToolCall], at: &str) -> Result<(), String> {
    for (index, call) in calls.iter().enumerate() {
        if call.name.is_empty() {
            return Err(format!("{at}.tool_calls[{index}].name is empty"));
        }
        if !call.arguments.is_object() {
            return Err(format!(
                "{at}.tool_calls[{index}].arguments must be a JSON object, got {}",
                call.arguments
            ));
        }
    }
    Ok(())
}

/// A string computed on first use.
struct Lazy<F> {
    make: Option<F>,
    value: String,
}

impl<F: FnOnce() -> String> Lazy<F> {
    fn new(make: F) -> Self {
        Self {
            make: Some(make),
            value: String::new(),
        }
    }

    fn get(&mut self) -> &str {
        if let Some(make) = self.make.take() {
            self.value = make();
        }
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(answer: Option<Answer<'_>>) -> Option<&str> {
        answer.and_then(|a| a.text)
    }

    #[test]
    fn rules_then_cycle() {
        let script = Script::replies(["a", "b"]).rule("France", "Paris");
        let rule =
            |prompt: &str| text(script.rule_answer(false, || prompt.to_owned(), String::new));
        assert_eq!(rule("capital of France?"), Some("Paris"));
        assert_eq!(rule("capital of Spain?"), None);
        assert_eq!(text(script.cycled_reply(0)), Some("a"));
        assert_eq!(text(script.cycled_reply(3)), Some("b"));
        assert_eq!(Script::default().cycled_reply(0), None);
    }

    #[test]
    fn last_rules_see_the_last_turn_and_tool_rules_need_tools() {
        let search = ScriptToolCall::new("search", json!({"q": "x"}));
        let script = Script::default()
            .with_rule(ScriptRule::reply("observation", "done").last_turn())
            .with_rule(ScriptRule::tool_calls("question", [search.clone()]).last_turn())
            .rule("question", "no tools, so a text answer");
        let answer = |tools: bool, full: &str, last: &str| {
            script.rule_answer(tools, || full.to_owned(), || last.to_owned())
        };
        let first = answer(true, "question", "question").unwrap();
        assert_eq!(first.tool_calls, std::slice::from_ref(&search));
        assert_eq!(first.text, None);
        // Step two: the question is still in the prompt, but the last turn is
        // the observation.
        let second = answer(true, "question\nsearch({})\nobservation", "observation");
        assert_eq!(text(second), Some("done"));
        let without_tools = answer(false, "question", "question");
        assert_eq!(text(without_tools), Some("no tools, so a text answer"));
    }

    #[test]
    fn texts_are_built_only_when_a_rule_needs_them() {
        let script = Script::default().with_rule(ScriptRule::reply("x", "y").last_turn());
        let answer = script.rule_answer(
            false,
            || panic!("no rule looks at the whole prompt"),
            || "x".to_owned(),
        );
        assert_eq!(text(answer), Some("y"));
    }

    #[test]
    fn check_rejects_empty_and_unanswering_rules() {
        assert!(Script::default().check().is_err());
        assert!(Script::default().rule("", "x").check().is_err());
        let silent = Script::default().tool_rule("x", []);
        assert!(silent.check().unwrap_err().contains("rules[0]"));
        let unnamed = Script::default().tool_rule("x", [ScriptToolCall::new("", json!({}))]);
        assert!(unnamed.check().unwrap_err().contains("name is empty"));
        let array = Script::default().tool_rule("x", [ScriptToolCall::new("f", json!([1]))]);
        assert!(array.check().unwrap_err().contains("JSON object"));
        let empty_reply = Script::replies([ScriptReply::tool_calls([])]);
        assert!(empty_reply.check().unwrap_err().contains("replies[0]"));
    }

    #[test]
    fn json_form() {
        let script: Script = serde_json::from_str(
            r#"{"replies": ["plain", {"reply": "only text"},
                           {"tool_calls": [{"name": "f"}]}],
                "rules": [{"contains": "c", "tool_calls": [{"name": "g", "arguments": {"a": 1}}],
                           "reply": "alongside", "last": true}]}"#,
        )
        .unwrap();
        assert_eq!(
            script.replies,
            vec![
                ScriptReply::Text("plain".into()),
                ScriptReply::Text("only text".into()),
                ScriptReply::tool_calls([ScriptToolCall::new("f", json!({}))]),
            ]
        );
        assert_eq!(
            script.rules,
            vec![
                ScriptRule::tool_calls("c", [ScriptToolCall::new("g", json!({"a": 1}))])
                    .with_reply("alongside")
                    .last_turn()
            ]
        );
        script.check().unwrap();
        // It writes back the same way.
        let again: Script = serde_json::from_value(serde_json::to_value(&script).unwrap()).unwrap();
        assert_eq!(again, script);
        let error =
            serde_json::from_str::<Script>(r#"{"replies": [{"tool_calls": [{"nam": "f"}]}]}"#)
                .unwrap_err();
        assert!(error.to_string().contains("nam"), "{error}");
        let error = serde_json::from_str::<Script>(r#"{"replies": [3]}"#).unwrap_err();
        assert!(
            error.to_string().contains("a string or an object"),
            "{error}"
        );
    }
}
