//! Reply text and JSON values coerced to a field's type, with a per-field
//! error and a note of whether a repair was needed.

use serde_json::{Value, json};

use super::json::parse_json_lenient;
use crate::signature::FieldType;

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
        FieldType::List(_) | FieldType::Json | FieldType::History => {
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
