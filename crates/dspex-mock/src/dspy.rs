//! Replies to DSPy `ChatAdapter`-style prompts: `[[ ## field ## ]]` sections.
//!
//! DSPy's `ChatAdapter` puts the input fields in the last user message as
//! `[[ ## name ## ]]` sections and ends it with an instruction such as
//! "Respond with the corresponding output fields, starting with the field
//! `[[ ## answer ## ]]`, then ... `[[ ## completed ## ]]`." Its system message
//! lists the fields with their types: "Your output fields are: 1. `answer` (int)".
//! The mock answers with each requested output field, filled deterministically.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The sentence that introduces the requested output fields.
const RESPOND_PHRASE: &str = "Respond with the corresponding output fields";
const OPEN: &str = "[[ ## ";
const CLOSE: &str = " ## ]]";
const COMPLETED: &str = "completed";

// The markers are searched for in every request: finders built once (memchr's
// SIMD substring search) instead of a fresh two-way searcher per `str::find`.
static OPEN_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(OPEN));
static CLOSE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(CLOSE));
static RESPOND_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(RESPOND_PHRASE));

fn find_in(finder: &Finder<'_>, text: &str) -> Option<usize> {
    finder.find(text.as_bytes())
}

/// A `[[ ## name ## ]]` marker found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

/// Every well-formed marker of `text`, in order.
fn markers(text: &str) -> Vec<Marker<'_>> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text
        .get(from..)
        .and_then(|rest| find_in(&OPEN_FINDER, rest))
    {
        let start = from + offset;
        let name_start = start + OPEN.len();
        let Some(name_len) = text
            .get(name_start..)
            .and_then(|rest| find_in(&CLOSE_FINDER, rest))
        else {
            break;
        };
        let name = text
            .get(name_start..name_start + name_len)
            .unwrap_or("")
            .trim();
        let valid = !name.is_empty() && name.len() <= 100 && !name.contains(['\n', '[', ']', '`']);
        if valid {
            let end = name_start + name_len + CLOSE.len();
            found.push(Marker { start, end, name });
            from = end;
        } else {
            from = name_start;
        }
    }
    found
}

/// The reply to a DSPy-style prompt, or `None` if `last_user` does not ask for
/// output fields.
pub(crate) fn structured_reply(last_user: &str, system: &str) -> Option<String> {
    let phrase_at = find_in(&RESPOND_FINDER, last_user)?;
    let all = markers(last_user);
    let mut outputs: Vec<&str> = Vec::new();
    for marker in all.iter().filter(|m| m.start >= phrase_at) {
        if marker.name != COMPLETED && !outputs.contains(&marker.name) {
            outputs.push(marker.name);
        }
    }
    if outputs.is_empty() {
        return None;
    }
    let input = first_input_text(last_user, &all, phrase_at);
    // The first 40 characters.
    let input_preview = input
        .char_indices()
        .nth(40)
        .and_then(|(end, _)| input.get(..end))
        .unwrap_or(input);
    let mut reply = String::with_capacity(outputs.len() * (input_preview.len() + 48) + 24);
    for name in outputs {
        reply.push_str(OPEN);
        reply.push_str(name);
        reply.push_str(CLOSE);
        reply.push('\n');
        match field_type(system, name).and_then(typed_value) {
            Some(value) => reply.push_str(value),
            None => {
                reply.push_str("mock ");
                reply.push_str(name);
                reply.push_str(" for: ");
                reply.push_str(input_preview);
            }
        }
        reply.push_str("\n\n");
    }
    reply.push_str(OPEN);
    reply.push_str(COMPLETED);
    reply.push_str(CLOSE);
    Some(reply)
}

/// The text of the first input field (the first section before the instruction),
/// or the text before the instruction if there is no section.
fn first_input_text<'a>(text: &'a str, markers: &[Marker<'a>], phrase_at: usize) -> &'a str {
    let mut before = markers.iter().filter(|m| m.start < phrase_at);
    match before.next() {
        Some(first) => {
            let stop = before.next().map_or(phrase_at, |next| next.start);
            text.get(first.end..stop).unwrap_or("").trim()
        }
        None => text.get(..phrase_at).unwrap_or("").trim(),
    }
}

/// The declared type of a field: the `TYPE` of "`name` (TYPE)" in the system message.
fn field_type<'a>(system: &'a str, name: &str) -> Option<&'a str> {
    // At each backtick (few, and found by memchr), test for "`name` (".
    let start = memchr::memchr_iter(b'`', system.as_bytes()).find_map(|at| {
        let after = system
            .get(at + 1..)?
            .strip_prefix(name)?
            .strip_prefix("` (")?;
        Some(system.len() - after.len())
    })?;
    let rest = system.get(start..)?;
    let mut depth = 0usize;
    for (at, ch) in rest.char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            ')' if depth == 0 => return rest.get(..at).map(str::trim),
            ')' => depth -= 1,
            '\n' => return None,
            _ => {}
        }
    }
    None
}

/// A deterministic value of a Python-style type, or `None` for strings and unknown types.
fn typed_value(ty: &str) -> Option<&str> {
    let ty = ty.trim();
    if let Some(inner) = strip_generic(ty, "Optional") {
        return typed_value(inner);
    }
    if let Some(inner) = strip_generic(ty, "Literal") {
        return first_literal(inner);
    }
    let base = ty.split(['[', ' ']).next().unwrap_or("");
    let is = |names: &[&str]| names.iter().any(|name| base.eq_ignore_ascii_case(name));
    if is(&["int", "integer"]) {
        Some("42")
    } else if is(&["float", "number"]) {
        Some("0.5")
    } else if is(&["bool", "boolean"]) {
        Some("True")
    } else if is(&["list", "tuple", "set", "sequence"]) {
        Some("[\"mock\"]")
    } else if is(&["dict", "json", "mapping"]) {
        Some("{\"mock\": true}")
    } else {
        None
    }
}

/// `X` of `Name[X]`.
fn strip_generic<'a>(ty: &'a str, name: &str) -> Option<&'a str> {
    ty.strip_prefix(name)?
        .trim_start()
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// The first value of a `Literal[...]` list, unquoted.
fn first_literal(inner: &str) -> Option<&str> {
    let inner = inner.trim_start();
    let mut chars = inner.chars();
    match chars.next()? {
        quote @ ('\'' | '"') => {
            let body = chars.as_str();
            let end = body.find(quote)?;
            body.get(..end)
        }
        _ => inner
            .split(',')
            .next()
            .map(str::trim)
            .filter(|first| !first.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "Your input fields are:\n1. `question` (str): the question\n\
        Your output fields are:\n1. `reasoning` (str)\n2. `answer` (int)\n3. `tags` (list[str])\n\
        4. `meta` (dict[str, Any])\n5. `label` (Literal['positive', 'negative'])\n6. `ok` (bool)\n7. `p` (float)\n\
        All interactions will be structured in the following way...";

    fn user(outputs: &[&str]) -> String {
        let mut text = String::from(
            "[[ ## question ## ]]\nWhat is the capital of France, the country in Europe?\n\n",
        );
        text.push_str("Respond with the corresponding output fields, starting with the field ");
        for name in outputs {
            text.push_str(&format!("`[[ ## {name} ## ]]`, then "));
        }
        text.push_str("and then ending with the marker for `[[ ## completed ## ]]`.");
        text
    }

    #[test]
    fn fills_fields_by_type() {
        let reply = structured_reply(
            &user(&["reasoning", "answer", "tags", "meta", "label", "ok", "p"]),
            SYSTEM,
        )
        .unwrap();
        assert_eq!(
            reply,
            "[[ ## reasoning ## ]]\nmock reasoning for: What is the capital of France, the count\n\n\
             [[ ## answer ## ]]\n42\n\n\
             [[ ## tags ## ]]\n[\"mock\"]\n\n\
             [[ ## meta ## ]]\n{\"mock\": true}\n\n\
             [[ ## label ## ]]\npositive\n\n\
             [[ ## ok ## ]]\nTrue\n\n\
             [[ ## p ## ]]\n0.5\n\n\
             [[ ## completed ## ]]"
        );
    }

    #[test]
    fn without_phrase_or_fields_none() {
        assert_eq!(structured_reply("[[ ## question ## ]]\nhi", SYSTEM), None);
        assert_eq!(
            structured_reply(
                "Respond with the corresponding output fields, `[[ ## completed ## ]]`",
                ""
            ),
            None
        );
    }

    #[test]
    fn untyped_fields_are_text() {
        let reply = structured_reply(&user(&["answer"]), "").unwrap();
        assert!(reply.starts_with("[[ ## answer ## ]]\nmock answer for: What is"));
    }

    #[test]
    fn types() {
        assert_eq!(typed_value("Optional[int]"), Some("42"));
        assert_eq!(typed_value("Literal[\"a\", \"b\"]"), Some("a"));
        assert_eq!(typed_value("Literal[3, 4]"), Some("3"));
        assert_eq!(typed_value("str"), None);
        assert_eq!(
            field_type("`x` (dict[str, list[int]]): y", "x"),
            Some("dict[str, list[int]]")
        );
    }
}
