//! DSPy's ChatAdapter format: `[[ ## field ## ]]` sections, read back
//! tolerantly.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::coerce::coerce_text;
use super::{Parsed, format_value, section, strip_fences, type_hint};
use crate::signature::{Field, Signature};

/// The marker that ends a reply.
pub(super) const COMPLETED: &str = "[[ ## completed ## ]]";

/// The system message's description of the structure.
pub(super) fn structure(out: &mut String, signature: &Signature) {
    out.push_str("All interactions will be structured in the following way, with the appropriate values filled in.\n\n");
    for field in signature.prompt_inputs() {
        section(out, &field.name);
        let _ = write!(out, "{{{}}}\n\n", field.name);
    }
    for field in signature.outputs() {
        section(out, &field.name);
        let _ = write!(out, "{{{}}}", field.name);
        if let Some(hint) = type_hint(&field.ty) {
            let _ = write!(out, "        # note: the value you produce {hint}");
        }
        out.push_str("\n\n");
    }
    section(out, "completed");
}

/// The instruction that asks for `fields`.
pub(super) fn respond_with<'a>(out: &mut String, fields: impl Iterator<Item = &'a Field>) {
    out.push_str("Respond with the corresponding output fields, starting with the field ");
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

/// A demo's outputs as the model should answer them.
pub(super) fn outputs(out: &mut String, signature: &Signature, outputs: &Map<String, Value>) {
    for field in signature.outputs() {
        section(out, &field.name);
        if let Some(value) = outputs.get(&field.name) {
            format_value(value, out);
        }
        out.push_str("\n\n");
    }
    out.push_str(COMPLETED);
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

pub(super) fn parse(fields: &[Field], reply: &str) -> Parsed {
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
        let mut from_json = super::json::parse(fields, reply);
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
