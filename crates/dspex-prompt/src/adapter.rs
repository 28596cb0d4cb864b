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
use serde_json::{Map, Value, json};

use crate::signature::{Field, FieldType, Signature};

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

fn type_hint(ty: &FieldType) -> Option<String> {
    match ty {
        FieldType::Str => None,
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

fn section(out: &mut String, name: &str) {
    out.push_str("[[ ## ");
    out.push_str(name);
    out.push_str(" ## ]]\n");
}

fn field_list(out: &mut String, fields: &[Field]) {
    for (i, field) in fields.iter().enumerate() {
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
        let mut out = String::with_capacity(512);
        out.push_str("Your input fields are:\n");
        field_list(&mut out, signature.inputs());
        out.push_str("Your output fields are:\n");
        field_list(&mut out, signature.outputs());
        match self {
            Self::Chat => {
                out.push_str("All interactions will be structured in the following way, with the appropriate values filled in.\n\n");
                for field in signature.inputs() {
                    section(&mut out, &field.name);
                    let _ = write!(out, "{{{}}}\n\n", field.name);
                }
                for field in signature.outputs() {
                    section(&mut out, &field.name);
                    let _ = write!(out, "{{{}}}", field.name);
                    if let Some(hint) = type_hint(&field.ty) {
                        let _ = write!(out, "        # note: the value you produce {hint}");
                    }
                    out.push_str("\n\n");
                }
                section(&mut out, "completed");
            }
            Self::Json => {
                out.push_str("All interactions will be structured in the following way, with the appropriate values filled in.\n\nInputs will have the following structure:\n\n");
                for field in signature.inputs() {
                    section(&mut out, &field.name);
                    let _ = write!(out, "{{{}}}\n\n", field.name);
                }
                out.push_str("Outputs will be a JSON object with the following fields.\n\n{\n");
                let count = signature.outputs().len();
                for (i, field) in signature.outputs().iter().enumerate() {
                    let _ = write!(out, "  \"{}\": \"{{{}}}\"", field.name, field.name);
                    if let Some(hint) = type_hint(&field.ty) {
                        let _ = write!(out, "        # note: the value you produce {hint}");
                    }
                    out.push_str(if i + 1 < count { ",\n" } else { "\n" });
                }
                out.push_str("}\n");
            }
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
        for field in signature.inputs() {
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
            Self::Chat => {
                out.push_str(
                    "Respond with the corresponding output fields, starting with the field ",
                );
                for (i, field) in fields.enumerate() {
                    if i > 0 {
                        out.push_str(", then ");
                    }
                    let _ = write!(out, "`[[ ## {} ## ]]`", field.name);
                    if let Some(hint) = type_hint(&field.ty) {
                        let _ = write!(out, " ({hint})");
                    }
                }
                out.push_str(", and then ending with the marker for `[[ ## completed ## ]]`.");
            }
            Self::Json => {
                out.push_str("Respond with a JSON object in the following order of fields: ");
                for (i, field) in fields.enumerate() {
                    if i > 0 {
                        out.push_str(", then ");
                    }
                    let _ = write!(out, "`{}`", field.name);
                    if let Some(hint) = type_hint(&field.ty) {
                        let _ = write!(out, " ({hint})");
                    }
                }
                out.push('.');
            }
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
            Self::Chat => {
                for field in signature.outputs() {
                    section(&mut out, &field.name);
                    if let Some(value) = outputs.get(&field.name) {
                        format_value(value, &mut out);
                    }
                    out.push_str("\n\n");
                }
                out.push_str("[[ ## completed ## ]]");
            }
            Self::Json => {
                let object: Map<String, Value> = signature
                    .outputs()
                    .iter()
                    .filter_map(|f| outputs.get(&f.name).map(|v| (f.name.clone(), v.clone())))
                    .collect();
                out.push_str(&Value::Object(object).to_string());
            }
        }
        Message::assistant(out)
    }

    /// Every message of a call: system, demos as user/assistant pairs, the
    /// request.
    pub fn format(
        &self,
        signature: &Signature,
        demos: &[Example],
        inputs: &Map<String, Value>,
    ) -> Vec<Message> {
        let mut messages = Vec::with_capacity(2 + demos.len() * 2);
        messages.push(self.system_message(signature));
        for demo in demos {
            messages.push(self.user_message(signature, &demo.inputs, false));
            messages.push(self.assistant_message(signature, &demo.outputs));
        }
        messages.push(self.user_message(signature, inputs, true));
        messages
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
        let properties: Map<String, Value> = signature
            .outputs()
            .iter()
            .map(|f| (f.name.clone(), schema_of(&f.ty)))
            .collect();
        let required: Vec<&str> = signature
            .outputs()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        Some(ResponseFormat::JsonSchema {
            name: "outputs".into(),
            schema: json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false}),
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
            Self::Chat => parse_chat(fields, reply),
            Self::Json => parse_json(fields, reply),
        }
    }
}

fn schema_of(ty: &FieldType) -> Value {
    match ty {
        FieldType::Str => json!({"type": "string"}),
        FieldType::Int => json!({"type": "integer"}),
        FieldType::Float => json!({"type": "number"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::List(inner) => json!({"type": "array", "items": schema_of(inner)}),
        FieldType::Choice(options) => json!({"type": "string", "enum": options}),
        FieldType::Json => json!({"type": "object"}),
    }
}

/// Finds every `[[ ## name ## ]]` marker, tolerating missing spaces and `#`s:
/// `(name, start of marker, end of marker)`. Names keep their case: callers
/// compare them ignoring ASCII case, which needs no lowercased copy.
fn markers(reply: &str) -> Vec<(&str, usize, usize)> {
    // memchr to each bracket, then a look at the next byte: `str::find`
    // builds a two-way searcher per call, which costs more than the scan.
    let find = |from: usize, pair: u8| {
        let bytes = reply.as_bytes();
        let mut at = from;
        while let Some(offset) = bytes.get(at..).and_then(|rest| memchr::memchr(pair, rest)) {
            let found = at + offset;
            if bytes.get(found + 1) == Some(&pair) {
                return Some(found);
            }
            at = found + 1;
        }
        None
    };
    let mut found = Vec::with_capacity(8);
    let mut from = 0;
    while let Some(start) = find(from, b'[') {
        let Some(close) = find(start + 2, b']').map(|end| end - (start + 2)) else {
            break;
        };
        let end = start + 2 + close + 2;
        let inner = reply.get(start + 2..start + 2 + close).unwrap_or_default();
        let name = inner.trim().trim_matches('#').trim();
        if !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            found.push((name, start, end));
            from = end;
        } else {
            from = start + 2;
        }
    }
    found
}

fn strip_fences(text: &str) -> &str {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    // Drop the language tag line, then the closing fence.
    let body = rest.split_once('\n').map_or(rest, |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

fn parse_chat(fields: &[Field], reply: &str) -> Parsed {
    let found = markers(reply);
    let mut parsed = Parsed::default();
    let mut sections: Vec<(&str, &str)> = Vec::with_capacity(found.len());
    for (i, (name, _, end)) in found.iter().enumerate() {
        let stop = found.get(i + 1).map_or(reply.len(), |next| next.1);
        sections.push((name, reply.get(*end..stop).unwrap_or_default()));
    }
    // A single output answered without any marker: take the whole reply.
    let lone = fields.len() == 1
        && !found
            .iter()
            .any(|(name, _, _)| fields.iter().any(|f| f.name.eq_ignore_ascii_case(name)));
    if lone && let Some(field) = fields.first() {
        let text = found
            .first()
            .map_or(reply, |(_, start, _)| reply.get(..*start).unwrap_or(reply));
        if !text.trim().is_empty() {
            parsed.repairs += 1;
            match coerce_text(&field.ty, strip_fences(text)) {
                Ok((value, _)) => {
                    parsed.outputs.insert(field.name.clone(), value);
                }
                Err(reason) => parsed.failures.push((field.name.clone(), reason)),
            }
            return parsed;
        }
    }
    // A reply in JSON instead of sections: read it as the JSON adapter would.
    if found.is_empty() && reply.trim_start().starts_with(['{', '`']) {
        let mut from_json = parse_json(fields, reply);
        if from_json.failures.len() < fields.len() {
            from_json.repairs += 1;
            return from_json;
        }
    }
    for field in fields {
        let Some((_, text)) = sections
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&field.name))
        else {
            parsed.failures.push((
                field.name.clone(),
                "no `[[ ## ".to_owned() + &field.name + " ## ]]` section in the reply",
            ));
            continue;
        };
        let raw = text.trim();
        let cleaned = strip_fences(raw);
        match coerce_text(&field.ty, cleaned) {
            Ok((value, repaired)) => {
                if repaired || cleaned.len() != raw.len() {
                    parsed.repairs += 1;
                }
                parsed.outputs.insert(field.name.clone(), value);
            }
            Err(reason) => parsed.failures.push((field.name.clone(), reason)),
        }
    }
    parsed
}

/// The first balanced `{...}` object in `text`, outside strings.
fn json_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    for (offset, c) in text.get(start..)?.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return text.get(start..start + offset + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Python-literal and sloppy-JSON repairs: single quotes, `True`/`False`/`None`,
/// trailing commas.
fn repair_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                    out.push(c);
                } else if c == '\\' {
                    escaped = true;
                    out.push(c);
                } else if c == q {
                    quote = None;
                    out.push('"');
                } else if c == '"' {
                    out.push_str("\\\"");
                } else {
                    out.push(c);
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    out.push('"');
                }
                ',' => {
                    let next = chars
                        .get(i + 1..)
                        .and_then(|rest| rest.iter().find(|c| !c.is_whitespace()));
                    if !matches!(next, Some('}' | ']')) {
                        out.push(',');
                    }
                }
                _ => {
                    let rest: String = chars
                        .get(i..(i + 5).min(chars.len()))
                        .map(|s| s.iter().collect())
                        .unwrap_or_default();
                    if rest.starts_with("True") {
                        out.push_str("true");
                        i += 4;
                        continue;
                    } else if rest.starts_with("False") {
                        out.push_str("false");
                        i += 5;
                        continue;
                    } else if rest.starts_with("None") {
                        out.push_str("null");
                        i += 4;
                        continue;
                    }
                    out.push(c);
                }
            },
        }
        i += 1;
    }
    out
}

fn parse_json_lenient(text: &str) -> Option<(Value, bool)> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Some((value, false));
    }
    serde_json::from_str::<Value>(&repair_json(text))
        .ok()
        .map(|v| (v, true))
}

fn parse_json(fields: &[Field], reply: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let cleaned = strip_fences(reply);
    let Some(object_text) = json_object(cleaned) else {
        for field in fields {
            parsed
                .failures
                .push((field.name.clone(), "the reply holds no JSON object".into()));
        }
        return parsed;
    };
    let repaired_outside =
        cleaned.len() != reply.trim().len() || object_text.len() != cleaned.len();
    let Some((Value::Object(object), repaired)) = parse_json_lenient(object_text) else {
        for field in fields {
            parsed.failures.push((
                field.name.clone(),
                "the reply's JSON object does not parse".into(),
            ));
        }
        return parsed;
    };
    if repaired || repaired_outside {
        parsed.repairs += 1;
    }
    for field in fields {
        let value = object.get(&field.name).or_else(|| {
            object
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&field.name))
                .map(|(_, v)| v)
        });
        match value {
            None => parsed.failures.push((
                field.name.clone(),
                format!("the JSON object has no key `{}`", field.name),
            )),
            Some(value) => match coerce_value(&field.ty, value) {
                Ok((value, repaired)) => {
                    if repaired {
                        parsed.repairs += 1;
                    }
                    parsed.outputs.insert(field.name.clone(), value);
                }
                Err(reason) => parsed.failures.push((field.name.clone(), reason)),
            },
        }
    }
    parsed
}

/// Numeric tokens in `text` (digits with an optional sign, decimal point and
/// exponent; thousands separators removed).
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
        let next = chars.get(i + 1).copied();
        let part_of_number = c.is_ascii_digit()
            || (c == '.' && next.is_some_and(|n| n.is_ascii_digit()))
            || (c == '-'
                && current.is_empty()
                && next.is_some_and(|n| n.is_ascii_digit())
                && !prev.is_some_and(|p| p.is_ascii_alphanumeric()))
            || (c == ','
                && !current.is_empty()
                && next.is_some_and(|n| n.is_ascii_digit())
                && chars
                    .get(i + 1..i + 4)
                    .is_some_and(|d| d.iter().all(char::is_ascii_digit)))
            || ((c == 'e' || c == 'E')
                && !current.is_empty()
                && next.is_some_and(|n| n.is_ascii_digit() || n == '-' || n == '+'));
        if part_of_number {
            if c != ',' {
                current.push(c);
            }
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Coerces reply text to `ty`: `(value, whether a repair was needed)`.
pub fn coerce_text(ty: &FieldType, text: &str) -> Result<(Value, bool), String> {
    let text = text.trim();
    let plain = text
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '`' || c == '*')
        .trim();
    match ty {
        FieldType::Str => Ok((Value::String(text.to_owned()), false)),
        FieldType::Int => {
            if let Ok(n) = plain.parse::<i64>() {
                return Ok((json!(n), false));
            }
            let tokens = numbers(plain);
            match tokens.as_slice() {
                [one] => {
                    if let Ok(n) = one.parse::<i64>() {
                        return Ok((json!(n), true));
                    }
                    match one.parse::<f64>() {
                        Ok(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                            Ok((json!(f as i64), true))
                        }
                        _ => Err(format!("`{}` is not an integer", excerpt(text))),
                    }
                }
                [] => Err(format!("`{}` is not an integer", excerpt(text))),
                _ => Err(format!(
                    "`{}` holds several numbers, expected one integer",
                    excerpt(text)
                )),
            }
        }
        FieldType::Float => {
            if let Ok(f) = plain.parse::<f64>()
                && f.is_finite()
            {
                return Ok((json!(f), false));
            }
            let tokens = numbers(plain);
            match tokens.as_slice() {
                [one] => one
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| (json!(f), true))
                    .ok_or_else(|| format!("`{}` is not a number", excerpt(text))),
                [] => Err(format!("`{}` is not a number", excerpt(text))),
                _ => Err(format!(
                    "`{}` holds several numbers, expected one",
                    excerpt(text)
                )),
            }
        }
        FieldType::Bool => {
            let word = plain.trim_end_matches(['.', '!']).to_ascii_lowercase();
            match word.as_str() {
                "true" => Ok((json!(true), false)),
                "false" => Ok((json!(false), false)),
                "yes" | "y" | "1" => Ok((json!(true), true)),
                "no" | "n" | "0" => Ok((json!(false), true)),
                _ => Err(format!("`{}` is not true or false", excerpt(text))),
            }
        }
        FieldType::Choice(options) => {
            if let Some(option) = options.iter().find(|o| o.as_str() == plain) {
                return Ok((json!(option), false));
            }
            let normal = plain.trim_end_matches(['.', '!']).to_lowercase();
            if let Some(option) = options.iter().find(|o| o.to_lowercase() == normal) {
                return Ok((json!(option), true));
            }
            let lower = text.to_lowercase();
            let mentioned: Vec<&String> = options
                .iter()
                .filter(|o| contains_word(&lower, &o.to_lowercase()))
                .collect();
            match mentioned.as_slice() {
                [one] => Ok((json!(one), true)),
                _ => Err(format!(
                    "`{}` is not one of: {}",
                    excerpt(text),
                    options.join(", ")
                )),
            }
        }
        FieldType::List(_) | FieldType::Json => {
            if let Some((value, repaired)) = parse_json_lenient(text) {
                let (value, more) = coerce_value(ty, &value)?;
                return Ok((value, repaired || more));
            }
            if let FieldType::List(inner) = ty {
                // Bullet or numbered lines.
                let items: Vec<&str> = text
                    .lines()
                    .map(|l| l.trim())
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        l.trim_start_matches(['-', '*', '•'])
                            .trim_start_matches(|c: char| c.is_ascii_digit())
                            .trim_start_matches(['.', ')'])
                            .trim()
                    })
                    .collect();
                if !items.is_empty() {
                    let mut values = Vec::with_capacity(items.len());
                    for item in items {
                        values.push(coerce_text(inner, item)?.0);
                    }
                    return Ok((Value::Array(values), true));
                }
            }
            Err(format!("`{}` is not valid JSON for {ty}", excerpt(text)))
        }
    }
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack.get(..i).and_then(|s| s.chars().next_back());
        let after = haystack
            .get(i + word.len()..)
            .and_then(|s| s.chars().next());
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// Coerces a JSON value to `ty`: `(value, whether a repair was needed)`.
pub fn coerce_value(ty: &FieldType, value: &Value) -> Result<(Value, bool), String> {
    match (ty, value) {
        (FieldType::Str, Value::String(_)) => Ok((value.clone(), false)),
        (FieldType::Str, Value::Null) => Err("null where text was expected".into()),
        (FieldType::Str, other) => Ok((Value::String(other.to_string()), true)),
        (FieldType::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => {
            Ok((value.clone(), false))
        }
        (FieldType::Float, Value::Number(_)) => Ok((value.clone(), false)),
        (FieldType::Bool, Value::Bool(_)) => Ok((value.clone(), false)),
        (FieldType::Json, Value::Object(_)) => Ok((value.clone(), false)),
        (FieldType::List(inner), Value::Array(items)) => {
            let mut repaired = false;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let (v, r) = coerce_value(inner, item).map_err(|e| format!("item {i}: {e}"))?;
                repaired |= r;
                out.push(v);
            }
            Ok((Value::Array(out), repaired))
        }
        (FieldType::Choice(_), Value::String(text)) => coerce_text(ty, text),
        (
            FieldType::Int | FieldType::Float | FieldType::Bool,
            Value::Number(_) | Value::Bool(_),
        ) => coerce_text(ty, &value.to_string()).map(|(v, _)| (v, true)),
        (_, Value::String(text)) => coerce_text(ty, text).map(|(v, _)| (v, true)),
        (ty, other) => Err(format!(
            "expected {ty}, got {}",
            excerpt(&other.to_string())
        )),
    }
}

fn excerpt(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        short + "…"
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
