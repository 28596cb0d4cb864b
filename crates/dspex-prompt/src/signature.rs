//! Signatures: the typed inputs and outputs of a module, as in DSPy.
//!
//! The string form is DSPy's: `"context: list[str], question -> answer"`,
//! `"question -> answer: float"`. Types: `str` (the default), `int`, `float`,
//! `bool`, `list[T]`, a fixed set of choices written `Literal['a', 'b']` (or
//! `choice[a, b]`), JSON objects written `dict` or `json`, and the earlier
//! turns of a conversation written `History` (an input only; see
//! [`FieldType::History`]). Instructions and
//! per-field descriptions are added with the builder or with
//! [`Signature::with_instructions`] and [`Signature::describe`].
//!
//! ```
//! use dspex_prompt::signature::{FieldType, Signature};
//! let sig = Signature::parse("context: list[str], question -> answer: float").unwrap();
//! assert_eq!(sig.inputs()[0].ty, FieldType::List(Box::new(FieldType::Str)));
//! assert_eq!(sig.outputs()[0].ty, FieldType::Float);
//! let err = Signature::parse("question -> ").unwrap_err();
//! assert!(err.to_string().contains("no output fields"));
//! ```

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{PromptError, Result};

/// The type of a field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Text.
    Str,
    /// An integer.
    Int,
    /// A number.
    Float,
    /// True or false.
    Bool,
    /// A list of values of one type.
    List(Box<FieldType>),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A JSON object.
    Json,
    /// Earlier turns of a conversation with the same signature, as DSPy's
    /// `dspy.History`: `{"messages": [{"question": "...", "answer": "..."}]}`
    /// (or the list alone). Adapters send each turn as a real user message
    /// (its input fields) and assistant message (its output fields) before
    /// the current request. Only an input may have this type; a missing
    /// history is an empty one.
    History,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str => f.write_str("str"),
            Self::Int => f.write_str("int"),
            Self::Float => f.write_str("float"),
            Self::Bool => f.write_str("bool"),
            Self::List(inner) => write!(f, "list[{inner}]"),
            Self::Choice(options) => {
                // Python's choice of quote: single unless the option holds
                // one, so the printed form parses back to the same options
                // (a parsed option never holds both kinds).
                let quoted: Vec<String> = options
                    .iter()
                    .map(|o| {
                        if o.contains('\'') {
                            format!("\"{o}\"")
                        } else {
                            format!("'{o}'")
                        }
                    })
                    .collect();
                write!(f, "Literal[{}]", quoted.join(", "))
            }
            Self::Json => f.write_str("dict"),
            Self::History => f.write_str("History"),
        }
    }
}

impl FieldType {
    /// Parses a type as written in a signature.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "" | "str" | "string" | "text" => return Ok(Self::Str),
            "int" | "integer" => return Ok(Self::Int),
            "float" | "number" => return Ok(Self::Float),
            "bool" | "boolean" => return Ok(Self::Bool),
            "dict" | "json" | "object" | "dict[str, any]" => return Ok(Self::Json),
            "list" => return Ok(Self::List(Box::new(Self::Str))),
            "history" | "dspy.history" => return Ok(Self::History),
            _ => {}
        }
        if let Some(inner) = bracketed(text, &["list", "List"]) {
            return Ok(Self::List(Box::new(Self::parse(inner)?)));
        }
        if let Some(inner) = bracketed(text, &["Literal", "literal", "choice", "Choice"]) {
            let mut options = Vec::new();
            for option in split_top_level(inner) {
                let option = choice(option)?;
                if !option.is_empty() {
                    options.push(option.to_owned());
                }
            }
            if options.is_empty() {
                return Err(format!("`{text}` lists no choices"));
            }
            return Ok(Self::Choice(options));
        }
        Err(format!(
            "unknown type `{text}` (expected str, int, float, bool, list[T], Literal['a', 'b'], dict or History)"
        ))
    }

    /// Checks that an input value has this type.
    pub fn check(&self, value: &Value) -> std::result::Result<(), String> {
        let ok = match self {
            Self::Str => value.is_string(),
            Self::Int => value.is_i64() || value.is_u64(),
            Self::Float => value.is_number(),
            Self::Bool => value.is_boolean(),
            Self::Json => value.is_object(),
            Self::List(inner) => {
                let Some(items) = value.as_array() else {
                    return Err(format!("expected {self}, got {}", kind(value)));
                };
                for (i, item) in items.iter().enumerate() {
                    inner.check(item).map_err(|e| format!("item {i}: {e}"))?;
                }
                true
            }
            Self::Choice(options) => value
                .as_str()
                .is_some_and(|v| options.iter().any(|o| o == v)),
            Self::History => {
                let turns = history_turns(value).ok_or_else(|| {
                    format!(
                        "expected History ({{\"messages\": [{{field: value, ...}}, ...]}}), got {}",
                        value_summary(value)
                    )
                })?;
                if let Some((i, turn)) = turns.iter().enumerate().find(|(_, t)| !t.is_object()) {
                    return Err(format!(
                        "History turn {i} must be an object of field values, got {}",
                        kind(turn)
                    ));
                }
                true
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {self}, got {}", value_summary(value)))
        }
    }
}

/// The turns of a [`FieldType::History`] value: `{"messages": [...]}` or the
/// list itself; `None` for anything else.
pub fn history_turns(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(turns) => Some(turns),
        Value::Object(object) => object.get("messages")?.as_array().map(Vec::as_slice),
        Value::Null => Some(&[]),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn value_summary(value: &Value) -> String {
    let text = value.to_string();
    let short: String = text.chars().take(40).collect();
    format!(
        "{} {short}{}",
        kind(value),
        if text.chars().count() > 40 { "…" } else { "" }
    )
}

/// `text` as `prefix[inner]` for one of the prefixes.
fn bracketed<'a>(text: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    prefixes.iter().find_map(|prefix| {
        text.strip_prefix(prefix)?
            .trim_start()
            .strip_prefix('[')?
            .strip_suffix(']')
    })
}

/// One option of a `Literal[...]`: a bare word, or text in matching quotes
/// that holds no quote of its kind. Anything else (`'a'b'`, `it's`) is
/// refused rather than guessed at: the guess could not be printed back.
fn choice(option: &str) -> std::result::Result<&str, String> {
    let option = option.trim();
    let quoted = ['\'', '"'].into_iter().find_map(|quote| {
        let inner = option.strip_prefix(quote)?.strip_suffix(quote)?;
        Some((quote, inner))
    });
    match quoted {
        Some((quote, inner)) if !inner.contains(quote) => Ok(inner),
        None if !option.contains(['\'', '"']) => Ok(option),
        _ => Err(format!(
            "choice `{option}` is not a word or a quoted string (quote it with ' or \" and do not use that quote inside)"
        )),
    }
}

/// Splits on commas outside brackets and quotes.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '(' | '{') => depth += 1,
            (None, ']' | ')' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// One input or output field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// Its name, an identifier.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// What it means, shown to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Field {
    /// A field of `ty`.
    pub fn new(name: impl Into<String>, ty: FieldType) -> Self {
        Self {
            name: name.into(),
            ty,
            description: None,
        }
    }
}

/// The inputs and outputs of a module, and its instructions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    inputs: Vec<Field>,
    outputs: Vec<Field>,
    instructions: String,
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Signature {
    /// Parses the string form, such as `"context: list[str], question -> answer"`.
    pub fn parse(text: &str) -> Result<Self> {
        let error = |message: String| PromptError::Signature {
            signature: text.to_owned(),
            message,
        };
        let mut halves = text.split("->");
        let (Some(inputs), Some(outputs), None) = (halves.next(), halves.next(), halves.next())
        else {
            return Err(error(
                "expected exactly one `->` between inputs and outputs".into(),
            ));
        };
        let fields = |side: &str, which: &str| -> Result<Vec<Field>> {
            if side.trim().is_empty() {
                return Ok(Vec::new());
            }
            split_top_level(side)
                .into_iter()
                .enumerate()
                .map(|(i, part)| {
                    let (name, ty) = match part.split_once(':') {
                        Some((name, ty)) => (name.trim(), ty),
                        None => (part.trim(), "str"),
                    };
                    if !is_identifier(name) {
                        return Err(error(format!(
                            "{which} field {} `{name}` is not a valid name (letters, digits and _, not starting with a digit)",
                            i + 1
                        )));
                    }
                    let ty = FieldType::parse(ty).map_err(|e| error(format!("field `{name}`: {e}")))?;
                    Ok(Field::new(name, ty))
                })
                .collect()
        };
        Self::new(fields(inputs, "input")?, fields(outputs, "output")?, "").map_err(|e| match e {
            PromptError::Signature { message, .. } => error(message),
            other => other,
        })
    }

    /// A signature from fields; names must be unique and there must be at
    /// least one output.
    pub fn new(inputs: Vec<Field>, outputs: Vec<Field>, instructions: &str) -> Result<Self> {
        let signature = Self {
            inputs,
            outputs,
            instructions: instructions.to_owned(),
        };
        let error = |message: String| PromptError::Signature {
            signature: signature.to_string(),
            message,
        };
        if signature.outputs.is_empty() {
            return Err(error("no output fields".into()));
        }
        let mut seen = BTreeSet::new();
        for field in signature.inputs.iter().chain(&signature.outputs) {
            if !is_identifier(&field.name) {
                return Err(error(format!("`{}` is not a valid field name", field.name)));
            }
            if field.name == "completed" {
                return Err(error("`completed` is reserved by the chat adapter".into()));
            }
            if !seen.insert(field.name.as_str()) {
                return Err(error(format!("field `{}` appears twice", field.name)));
            }
        }
        if let Some(field) = signature
            .outputs
            .iter()
            .find(|f| f.ty == FieldType::History)
        {
            return Err(error(format!(
                "output `{}` cannot be a History (only an input can)",
                field.name
            )));
        }
        if signature
            .inputs
            .iter()
            .filter(|f| f.ty == FieldType::History)
            .count()
            > 1
        {
            return Err(error("at most one input can be a History".into()));
        }
        Ok(signature)
    }

    /// A builder.
    pub fn builder() -> SignatureBuilder {
        SignatureBuilder::default()
    }

    /// The input fields, in order.
    pub fn inputs(&self) -> &[Field] {
        &self.inputs
    }

    /// The input fields a request shows as sections: every input but the
    /// [`History`](FieldType::History), which becomes earlier messages.
    pub fn prompt_inputs(&self) -> impl Iterator<Item = &Field> {
        self.inputs.iter().filter(|f| f.ty != FieldType::History)
    }

    /// The [`History`](FieldType::History) input, if there is one.
    pub fn history_input(&self) -> Option<&Field> {
        self.inputs.iter().find(|f| f.ty == FieldType::History)
    }

    /// The output fields, in order.
    pub fn outputs(&self) -> &[Field] {
        &self.outputs
    }

    /// The instructions; DSPy's default objective when none were given.
    pub fn instructions(&self) -> String {
        if !self.instructions.is_empty() {
            return self.instructions.clone();
        }
        let names = |fields: &[Field]| {
            fields
                .iter()
                .map(|f| format!("`{}`", f.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "Given the fields {}, produce the fields {}.",
            names(&self.inputs),
            names(&self.outputs)
        )
    }

    /// The instructions as set (empty when the default objective applies).
    pub fn raw_instructions(&self) -> &str {
        &self.instructions
    }

    /// The same signature with these instructions.
    #[must_use]
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = instructions.into();
        self
    }

    /// Sets a field's description; unknown names are an error naming them.
    pub fn describe(mut self, field: &str, description: impl Into<String>) -> Result<Self> {
        let text = self.to_string();
        let found = self
            .inputs
            .iter_mut()
            .chain(self.outputs.iter_mut())
            .find(|f| f.name == field)
            .ok_or_else(|| PromptError::Signature {
                signature: text,
                message: format!("no field named `{field}`"),
            })?;
        found.description = Some(description.into());
        Ok(self)
    }

    /// The same signature with `field` as the first output (ChainOfThought's
    /// `reasoning`). Replaces an output of the same name.
    #[must_use]
    pub fn prepend_output(mut self, field: Field) -> Self {
        self.outputs.retain(|f| f.name != field.name);
        self.outputs.insert(0, field);
        self
    }

    /// Checks inputs before any call: every input field present with its type.
    /// Extra keys are allowed (a program may pass its whole context).
    pub fn validate_inputs(&self, inputs: &Map<String, Value>) -> Result<()> {
        let mut problems = Vec::new();
        for field in &self.inputs {
            match inputs.get(&field.name) {
                // No history yet is a first turn.
                None | Some(Value::Null) if field.ty == FieldType::History => {}
                None | Some(Value::Null) => problems.push(format!("`{}` is missing", field.name)),
                Some(value) => {
                    if let Err(e) = field.ty.check(value) {
                        problems.push(format!("`{}`: {e}", field.name));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PromptError::InvalidInputs { problems })
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |fields: &[Field]| {
            fields
                .iter()
                .map(|field| match field.ty {
                    FieldType::Str => field.name.clone(),
                    ref ty => format!("{}: {ty}", field.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(f, "{} -> {}", side(&self.inputs), side(&self.outputs))
    }
}

/// Builds a [`Signature`] field by field.
#[derive(Debug, Default)]
pub struct SignatureBuilder {
    inputs: Vec<Field>,
    outputs: Vec<Field>,
    instructions: String,
}

impl SignatureBuilder {
    /// Adds an input field.
    #[must_use]
    pub fn input(mut self, name: &str, ty: FieldType, description: &str) -> Self {
        self.inputs.push(Field {
            name: name.to_owned(),
            ty,
            description: (!description.is_empty()).then(|| description.to_owned()),
        });
        self
    }

    /// Adds an output field.
    #[must_use]
    pub fn output(mut self, name: &str, ty: FieldType, description: &str) -> Self {
        self.outputs.push(Field {
            name: name.to_owned(),
            ty,
            description: (!description.is_empty()).then(|| description.to_owned()),
        });
        self
    }

    /// Sets the instructions.
    #[must_use]
    pub fn instructions(mut self, instructions: &str) -> Self {
        self.instructions = instructions.to_owned();
        self
    }

    /// Checks and builds.
    pub fn build(self) -> Result<Signature> {
        Signature::new(self.inputs, self.outputs, &self.instructions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_type() {
        let sig = Signature::parse(
            "a, b: int, c: float, d: bool, e: list[str], f: Literal['x', 'y z'], g: dict, h: list[list[int]] -> out",
        )
        .unwrap();
        let types: Vec<&FieldType> = sig.inputs().iter().map(|f| &f.ty).collect();
        assert_eq!(
            types,
            [
                &FieldType::Str,
                &FieldType::Int,
                &FieldType::Float,
                &FieldType::Bool,
                &FieldType::List(Box::new(FieldType::Str)),
                &FieldType::Choice(vec!["x".into(), "y z".into()]),
                &FieldType::Json,
                &FieldType::List(Box::new(FieldType::List(Box::new(FieldType::Int)))),
            ]
        );
        // Display round-trips through parse.
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
    }

    #[test]
    fn invalid_strings_say_what_is_wrong() {
        for (text, words) in [
            ("question answer", "exactly one `->`"),
            ("a -> b -> c", "exactly one `->`"),
            ("question ->", "no output fields"),
            ("1st -> answer", "input field 1 `1st` is not a valid name"),
            ("q -> answer: tensor", "unknown type `tensor`"),
            ("q -> answer: Literal[]", "lists no choices"),
            ("q, q -> a", "appears twice"),
            ("q -> q", "appears twice"),
            ("q -> completed", "reserved"),
        ] {
            let err = Signature::parse(text).unwrap_err().to_string();
            assert!(err.contains(words), "{text}: {err}");
            assert!(
                err.contains(text.trim_end_matches(" ")),
                "{err} names the signature"
            );
        }
    }

    #[test]
    fn builder_descriptions_and_instructions() {
        let sig = Signature::builder()
            .input("question", FieldType::Str, "the user's question")
            .output("answer", FieldType::Float, "")
            .instructions("Answer with a number.")
            .build()
            .unwrap();
        assert_eq!(sig.instructions(), "Answer with a number.");
        assert_eq!(
            sig.inputs()[0].description.as_deref(),
            Some("the user's question")
        );
        let sig = Signature::parse("q -> a")
            .unwrap()
            .describe("a", "the answer")
            .unwrap();
        assert_eq!(sig.outputs()[0].description.as_deref(), Some("the answer"));
        assert_eq!(
            sig.instructions(),
            "Given the fields `q`, produce the fields `a`."
        );
        assert!(
            Signature::parse("q -> a")
                .unwrap()
                .describe("z", "x")
                .is_err()
        );
    }

    #[test]
    fn inputs_are_validated_before_any_call() {
        let sig = Signature::parse(
            "context: list[str], k: int, mode: Literal['a', 'b'], question -> answer",
        )
        .unwrap();
        let ok = json!({"context": ["x"], "k": 3, "mode": "a", "question": "q", "extra": 1});
        sig.validate_inputs(ok.as_object().unwrap()).unwrap();
        let bad = json!({"context": ["x", 2], "k": "three", "mode": "c"});
        let err = sig
            .validate_inputs(bad.as_object().unwrap())
            .unwrap_err()
            .to_string();
        for words in [
            "`context`: item 1: expected str",
            "`k`: expected int",
            "`mode`: expected Literal['a', 'b']",
            "`question` is missing",
        ] {
            assert!(err.contains(words), "{err}");
        }
    }
}
