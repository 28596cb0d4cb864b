//! The JSON adapter's format: one JSON object, read back with repairs for
//! Python literals and sloppy JSON.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::coerce::coerce_value;
use super::{Parsed, section, strip_fences, type_hint};
use crate::signature::{Field, FieldType, Signature};

/// The system message's description of the structure.
pub(super) fn structure(out: &mut String, signature: &Signature) {
    out.push_str("All interactions will be structured in the following way, with the appropriate values filled in.\n\nInputs will have the following structure:\n\n");
    for field in signature.prompt_inputs() {
        section(out, &field.name);
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

/// The instruction that asks for `fields`.
pub(super) fn respond_with<'a>(out: &mut String, fields: impl Iterator<Item = &'a Field>) {
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

/// A demo's outputs as the model should answer them.
pub(super) fn outputs(out: &mut String, signature: &Signature, outputs: &Map<String, Value>) {
    let object: Map<String, Value> = signature
        .outputs()
        .iter()
        .filter_map(|f| outputs.get(&f.name).map(|v| (f.name.clone(), v.clone())))
        .collect();
    out.push_str(&Value::Object(object).to_string());
}

/// The JSON Schema of the signature's outputs, for `response_format`.
pub(super) fn schema(signature: &Signature) -> Value {
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
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// The JSON Schema of one field's type.
pub(crate) fn schema_of(ty: &FieldType) -> Value {
    match ty {
        FieldType::Str => json!({"type": "string"}),
        FieldType::Int => json!({"type": "integer"}),
        FieldType::Float => json!({"type": "number"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::List(inner) => json!({"type": "array", "items": schema_of(inner)}),
        FieldType::Choice(options) => json!({"type": "string", "enum": options}),
        FieldType::Json | FieldType::History => json!({"type": "object"}),
    }
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

pub(super) fn parse_json_lenient(text: &str) -> Option<(Value, bool)> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Some((value, false));
    }
    serde_json::from_str::<Value>(&repair_json(text))
        .ok()
        .map(|v| (v, true))
}

pub(super) fn parse(fields: &[Field], reply: &str) -> Parsed {
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
