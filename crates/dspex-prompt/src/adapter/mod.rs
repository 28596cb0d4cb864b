//! Adapters turn a signature, demos and inputs into chat messages, and the
//! model's reply back into typed output fields.
//!
//! - [`Adapter::Chat`] speaks DSPy's ChatAdapter format, so programs port over:
//!   a system message listing the fields and the objective, inputs in
//!   `[[ ## field ## ]]` sections, outputs read from the same sections up to
//!   `[[ ## completed ## ]]`.
//! - [`Adapter::Json`] asks for one JSON object (with a `json_schema`
//!   `response_format` where the provider supports it) and reads its keys.
//!
//! The layout of each format and its parser live in `chat` and `json`;
//! `coerce` turns reply text into each field's type.
//!
//! Parsing is tolerant: markers inline or without newlines, stray whitespace,
//! code fences around values, a lone output given without markers, numbers with
//! trailing text, Python literals. Every field is coerced to its type with a
//! per-field error. What still fails is re-asked for once, for the failed
//! fields only (see [`Predict`](crate::Predict)), instead of paying for a whole
//! second call as DSPy does.
//!
//! ```
//! use dspex_prompt::adapter::Adapter;
//! use dspex_prompt::signature::Signature;
//! let sig = Signature::parse("question -> answer: int").unwrap();
//! let parsed = Adapter::Chat.parse(&sig, "[[ ## answer ## ]] 42 [[ ## completed ## ]]");
//! assert_eq!(parsed.outputs["answer"], 42);
//! assert!(parsed.failures.is_empty());
//! ```

use std::fmt::Write as _;

use dspex_client::{Message, ResponseFormat};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::signature::{Field, FieldType, Signature};

mod chat;
mod coerce;
mod json;
mod stream;

pub use coerce::{coerce_text, coerce_value};
pub use stream::{FieldDelta, FieldStream};

/// How prompts are laid out and replies read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// DSPy's `[[ ## field ## ]]` format.
    #[default]
    Chat,
    /// One JSON object.
    Json,
}

/// An example: input values and the output values that answer them (a demo).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Input values by field name.
    pub inputs: Map<String, Value>,
    /// Output values by field name.
    pub outputs: Map<String, Value>,
}

/// What [`Adapter::parse`] read from a reply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// The fields that parsed, coerced to their types.
    pub outputs: Map<String, Value>,
    /// The fields that did not, with the reason.
    pub failures: Vec<(String, String)>,
    /// How many fields needed a local repair (a fallback beyond the format).
    pub repairs: u32,
}

/// The text a value is shown as in a prompt: strings as they are, everything
/// else as JSON.
pub fn format_value(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => out.push_str(text),
        other => out.push_str(&other.to_string()),
    }
}

pub(crate) fn type_hint(ty: &FieldType) -> Option<String> {
    match ty {
        FieldType::Str | FieldType::History => None,
        FieldType::Int => Some("must be formatted as a valid Python int".into()),
        FieldType::Float => Some("must be formatted as a valid Python float".into()),
        FieldType::Bool => Some("must be formatted as a valid Python bool".into()),
        FieldType::Choice(options) => Some(format!(
            "must exactly match (no extra characters) one of: {}",
            options.join("; ")
        )),
        FieldType::List(_) | FieldType::Json => {
            Some(format!("must be formatted as valid JSON: {ty}"))
        }
    }
}

pub(crate) fn section(out: &mut String, name: &str) {
    out.push_str("[[ ## ");
    out.push_str(name);
    out.push_str(" ## ]]\n");
}

fn field_list<'a>(out: &mut String, fields: impl Iterator<Item = &'a Field>) {
    for (i, field) in fields.enumerate() {
        let _ = write!(out, "{}. `{}` ({})", i + 1, field.name, field.ty);
        if let Some(description) = &field.description {
            out.push_str(": ");
            out.push_str(description);
        }
        out.push('\n');
    }
}

impl Adapter {
    /// The system message: the fields, the structure and the objective.
    pub fn system_message(&self, signature: &Signature) -> Message {
        let mut out = describe_fields(signature);
        out.reserve(512);
        match self {
            Self::Chat => chat::structure(&mut out, signature),
            Self::Json => json::structure(&mut out, signature),
        }
        out.push_str("In adhering to this structure, your objective is: \n        ");
        out.push_str(&signature.instructions());
        Message::system(out)
    }

    /// The user message carrying `inputs`; `request` adds the instruction to
    /// answer (demos leave it out, as DSPy's do).
    pub fn user_message(
        &self,
        signature: &Signature,
        inputs: &Map<String, Value>,
        request: bool,
    ) -> Message {
        let mut out = String::with_capacity(256);
        for field in signature.prompt_inputs() {
            section(&mut out, &field.name);
            if let Some(value) = inputs.get(&field.name) {
                format_value(value, &mut out);
            }
            out.push_str("\n\n");
        }
        if request {
            self.respond_with(&mut out, signature.outputs().iter());
        } else {
            while out.ends_with('\n') {
                out.pop();
            }
        }
        Message::user(out)
    }

    fn respond_with<'a>(&self, out: &mut String, fields: impl Iterator<Item = &'a Field>) {
        match self {
            Self::Chat => chat::respond_with(out, fields),
            Self::Json => json::respond_with(out, fields),
        }
    }

    /// The assistant message of a demo: its outputs in the reply format.
    pub fn assistant_message(
        &self,
        signature: &Signature,
        outputs: &Map<String, Value>,
    ) -> Message {
        let mut out = String::with_capacity(128);
        match self {
            Self::Chat => chat::outputs(&mut out, signature, outputs),
            Self::Json => json::outputs(&mut out, signature, outputs),
        }
        Message::assistant(out)
    }

    /// The messages every call of a predictor starts with: the system
    /// message, then each demo as a user/assistant pair. They depend only on
    /// the signature and the demos, so a predictor builds them once.
    pub fn prefix(&self, signature: &Signature, demos: &[Example]) -> Vec<Message> {
        // One more slot for the request that follows.
        let mut messages = Vec::with_capacity(2 + demos.len() * 2);
        messages.push(self.system_message(signature));
        for demo in demos {
            messages.push(self.user_message(signature, &demo.inputs, false));
            messages.push(self.assistant_message(signature, &demo.outputs));
        }
        messages
    }

    /// The earlier turns of a conversation, from the signature's
    /// [`History`](FieldType::History) input in `inputs`: each turn as a user
    /// message with the input fields it has and an assistant message with
    /// the output fields it has (DSPy's layout), so the model sees a real
    /// conversation and a provider's prompt cache can reuse it. Empty when
    /// there is no history.
    pub fn history_messages(
        &self,
        signature: &Signature,
        inputs: &Map<String, Value>,
    ) -> Vec<Message> {
        let Some(turns) = signature
            .history_input()
            .and_then(|field| inputs.get(&field.name))
            .and_then(crate::signature::history_turns)
        else {
            return Vec::new();
        };
        let mut messages = Vec::with_capacity(turns.len() * 2);
        for turn in turns.iter().filter_map(Value::as_object) {
            let has_inputs = signature
                .prompt_inputs()
                .any(|f| turn.contains_key(&f.name));
            let has_outputs = signature
                .outputs()
                .iter()
                .any(|f| turn.contains_key(&f.name));
            if has_inputs {
                messages.push(self.user_message(signature, turn, false));
            }
            if has_outputs {
                messages.push(self.assistant_message(signature, turn));
            }
        }
        messages
    }

    /// Every message of a call: the [`prefix`](Self::prefix), the earlier
    /// turns of a [`History`](FieldType::History) input, then the request
    /// with `inputs`.
    pub fn format(
        &self,
        signature: &Signature,
        demos: &[Example],
        inputs: &Map<String, Value>,
    ) -> Vec<Message> {
        let mut messages = self.prefix(signature, demos);
        messages.extend(self.history_messages(signature, inputs));
        messages.push(self.user_message(signature, inputs, true));
        messages
    }

    /// Where a reply ends: the chat format's `[[ ## completed ## ]]` marker.
    /// Sent as a stop sequence, so a model that keeps writing after its
    /// answer (small ones often do) is not paid for the rest; the parser
    /// never needs the marker itself.
    pub fn stop_sequences(&self) -> Vec<String> {
        match self {
            Self::Chat => vec![chat::COMPLETED.to_owned()],
            Self::Json => Vec::new(),
        }
    }

    /// The follow-up that re-asks for the fields that failed to parse, and
    /// only those.
    pub fn reask_message(&self, signature: &Signature, failures: &[(String, String)]) -> Message {
        let mut out = String::from("Your previous reply could not be read for these fields: ");
        for (i, (name, reason)) in failures.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let _ = write!(out, "`{name}` ({reason})");
        }
        out.push_str(".\n\n");
        let failed = signature
            .outputs()
            .iter()
            .filter(|f| failures.iter().any(|(name, _)| *name == f.name));
        self.respond_with(&mut out, failed);
        Message::user(out)
    }

    /// The `response_format` to send, when the provider supports structured
    /// output (OpenAI-compatible providers, for the JSON adapter).
    pub fn response_format(
        &self,
        signature: &Signature,
        structured_output: bool,
    ) -> Option<ResponseFormat> {
        if *self != Self::Json || !structured_output {
            return None;
        }
        Some(ResponseFormat::JsonSchema {
            name: "outputs".into(),
            schema: json::schema(signature),
            strict: false,
        })
    }

    /// Reads the output fields of `signature` from `reply`.
    pub fn parse(&self, signature: &Signature, reply: &str) -> Parsed {
        self.parse_fields(signature.outputs(), reply)
    }

    /// Reads `fields` from `reply` (a re-ask reads only the failed ones).
    pub fn parse_fields(&self, fields: &[Field], reply: &str) -> Parsed {
        match self {
            Self::Chat => chat::parse(fields, reply),
            Self::Json => json::parse(fields, reply),
        }
    }
}

/// The JSON Schema of a signature's outputs: an object with one property per
/// output field (what the JSON adapter asks providers for, and the arguments
/// of an agent's `finish` tool).
pub fn outputs_schema(signature: &Signature) -> Value {
    json::schema(signature)
}

/// The system message's list of input and output fields, with types and
/// descriptions, as every adapter starts it.
pub(crate) fn describe_fields(signature: &Signature) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("Your input fields are:\n");
    field_list(&mut out, signature.prompt_inputs());
    out.push_str("Your output fields are:\n");
    field_list(&mut out, signature.outputs().iter());
    out
}

/// A reply's text without the code fence around it, if any.
pub(crate) fn strip_fences(text: &str) -> &str {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    // Drop the language tag line, then the closing fence.
    let body = rest.split_once('\n').map_or(rest, |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(text: &str) -> Signature {
        Signature::parse(text).unwrap()
    }

    #[test]
    fn chat_format_matches_dspy() {
        let sig = sig("question -> answer: float");
        let inputs = json!({"question": "What is 1/2?"});
        let messages = Adapter::Chat.format(&sig, &[], inputs.as_object().unwrap());
        assert_eq!(messages.len(), 2);
        let system = &messages[0].content;
        assert!(system.starts_with("Your input fields are:\n1. `question` (str)\nYour output fields are:\n1. `answer` (float)\n"), "{system}");
        assert!(system.contains("[[ ## answer ## ]]\n{answer}        # note: the value you produce must be formatted as a valid Python float"), "{system}");
        assert!(system.ends_with("your objective is: \n        Given the fields `question`, produce the fields `answer`."), "{system}");
        assert_eq!(
            messages[1].content,
            "[[ ## question ## ]]\nWhat is 1/2?\n\nRespond with the corresponding output fields, starting with the field `[[ ## answer ## ]]` (must be formatted as a valid Python float), and then ending with the marker for `[[ ## completed ## ]]`."
        );
    }

    #[test]
    fn tolerant_chat_parsing() {
        let sig = sig("q -> reasoning, answer: int");
        for reply in [
            "[[ ## reasoning ## ]]\nbecause\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]",
            "[[ ## reasoning ## ]] because [[ ## answer ## ]] 42 [[ ## completed ## ]]",
            "[[## reasoning ##]]because[[##answer##]]42",
            "  [[ ## Reasoning ## ]]\n  because  \n[[ ## ANSWER ## ]]\n```\n42\n```\n",
            "[[ ## reasoning ## ]]\nbecause\n[[ ## answer ## ]]\nThe answer is 42.\n[[ ## completed ## ]]",
        ] {
            let parsed = Adapter::Chat.parse(&sig, reply);
            assert!(parsed.failures.is_empty(), "{reply}: {:?}", parsed.failures);
            assert_eq!(parsed.outputs["answer"], 42, "{reply}");
            assert_eq!(parsed.outputs["reasoning"], "because", "{reply}");
        }
        let parsed =
            Adapter::Chat.parse(&sig, "[[ ## reasoning ## ]]\nhmm\n[[ ## answer ## ]]\nmany");
        assert_eq!(parsed.failures.len(), 1);
        assert_eq!(parsed.failures[0].0, "answer");
        assert!(
            parsed.failures[0].1.contains("not an integer"),
            "{:?}",
            parsed.failures
        );
    }

    #[test]
    fn a_lone_output_without_markers_is_repaired() {
        let parsed = Adapter::Chat.parse(&sig("q -> answer"), "Paris");
        assert_eq!(parsed.outputs["answer"], "Paris");
        assert_eq!(parsed.repairs, 1);
    }

    #[test]
    fn coercion_of_every_type() {
        let cases: Vec<(&str, &str, Value)> = vec![
            ("str", "  hello ", json!("hello")),
            ("int", "1,234", json!(1234)),
            ("int", "-7.", json!(-7)),
            ("float", "0.5 (fairly sure)", json!(0.5)),
            ("float", "1e-3", json!(0.001)),
            ("bool", "True", json!(true)),
            ("bool", "no.", json!(false)),
            (
                "Literal['positive', 'negative']",
                "Positive",
                json!("positive"),
            ),
            (
                "Literal['positive', 'negative']",
                "It is clearly negative.",
                json!("negative"),
            ),
            ("list[str]", "['a', 'b']", json!(["a", "b"])),
            ("list[int]", "- 1\n- 2\n- 3", json!([1, 2, 3])),
            ("list[str]", "[\"x\",]", json!(["x"])),
            (
                "dict",
                "{'a': True, 'b': None}",
                json!({"a": true, "b": null}),
            ),
        ];
        for (ty, text, want) in cases {
            let ty = FieldType::parse(ty).unwrap();
            let (got, _) = coerce_text(&ty, text).unwrap_or_else(|e| panic!("{ty} {text}: {e}"));
            assert_eq!(got, want, "{ty} from {text:?}");
        }
        for (ty, text) in [
            ("int", "two"),
            ("float", "1 or 2"),
            ("bool", "maybe"),
            ("Literal['a', 'b']", "c"),
            ("dict", "[1]"),
        ] {
            assert!(
                coerce_text(&FieldType::parse(ty).unwrap(), text).is_err(),
                "{ty} {text}"
            );
        }
    }

    #[test]
    fn json_adapter_round_trip_and_repairs() {
        let sig = sig("q -> answer: int, tags: list[str], verdict: Literal['yes', 'no']");
        let outputs = json!({"answer": 3, "tags": ["a"], "verdict": "yes"});
        let reply = Adapter::Json
            .assistant_message(&sig, outputs.as_object().unwrap())
            .content;
        let parsed = Adapter::Json.parse(&sig, &reply);
        assert_eq!(Value::Object(parsed.outputs), outputs);
        let sloppy =
            "Here you go:\n```json\n{'answer': '3', 'tags': ['a',], 'verdict': 'Yes'}\n```";
        let parsed = Adapter::Json.parse(&sig, sloppy);
        assert!(parsed.failures.is_empty(), "{:?}", parsed.failures);
        assert_eq!(Value::Object(parsed.outputs), outputs);
        assert!(parsed.repairs >= 1);
        let format = Adapter::Json.response_format(&sig, true).unwrap();
        let ResponseFormat::JsonSchema { schema, .. } = format else {
            panic!()
        };
        assert_eq!(
            schema["properties"]["verdict"]["enum"],
            json!(["yes", "no"])
        );
        assert!(Adapter::Json.response_format(&sig, false).is_none());
    }

    #[test]
    fn reask_names_only_the_failed_fields() {
        let sig = sig("q -> reasoning, answer: int");
        let message =
            Adapter::Chat.reask_message(&sig, &[("answer".into(), "`x` is not an integer".into())]);
        assert!(message.content.contains("`answer` (`x` is not an integer)"));
        assert!(
            message
                .content
                .contains("starting with the field `[[ ## answer ## ]]`")
        );
        assert!(!message.content.contains("reasoning"));
    }
}
