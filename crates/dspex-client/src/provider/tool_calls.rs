//! Tool calls reassembled from a stream's fragments, into the same shape a
//! non-streamed response of the same provider has.
//!
//! - OpenAI sends `tool_calls` deltas as arrays of fragments keyed by `index`:
//!   the first fragment of a call carries its `id`, `type` and function `name`,
//!   later ones append pieces of the `arguments` string. Parallel calls may
//!   interleave. Some compatible servers omit `index` or repeat the name; both
//!   are tolerated.
//! - Anthropic streams one content block at a time: a `tool_use` block with an
//!   empty `input`, then `input_json_delta` pieces of that input's JSON text,
//!   which are parsed once the stream ends.

use serde_json::{Map, Value};

/// One tool call being assembled.
#[derive(Debug)]
struct PartialCall {
    /// OpenAI's fragment index; `None` for Anthropic blocks.
    index: Option<u64>,
    /// The call as the provider shapes it, arguments so far included (OpenAI).
    call: Map<String, Value>,
    /// Anthropic's input JSON text so far.
    input_json: String,
}

/// The tool calls of one choice, as their fragments arrive.
#[derive(Debug, Default)]
pub(crate) struct ToolCalls {
    calls: Vec<PartialCall>,
}

impl ToolCalls {
    /// Adds one OpenAI `tool_calls` delta (an array of fragments).
    pub(crate) fn merge_openai(&mut self, delta: &Value) {
        let fragments = match delta {
            Value::Array(fragments) => fragments.as_slice(),
            other => std::slice::from_ref(other),
        };
        for fragment in fragments {
            let Value::Object(fragment) = fragment else {
                continue;
            };
            let index = fragment.get("index").and_then(Value::as_u64);
            let id = fragment
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty());
            let known = match index {
                Some(index) => self.calls.iter().position(|c| c.index == Some(index)),
                // No index: a new id starts a new call, anything else continues
                // the last one.
                None => match id {
                    Some(id) => self
                        .calls
                        .iter()
                        .position(|c| c.call.get("id").and_then(Value::as_str) == Some(id)),
                    None => self.calls.len().checked_sub(1),
                },
            };
            match known.and_then(|at| self.calls.get_mut(at)) {
                Some(partial) => append_openai(&mut partial.call, fragment),
                None => {
                    let mut call = fragment.clone();
                    call.remove("index");
                    self.calls.push(PartialCall {
                        index,
                        call,
                        input_json: String::new(),
                    });
                }
            }
        }
    }

    /// Adds one Anthropic fragment: a `tool_use` block, or a piece of the
    /// current block's input (`{"partial_json": ...}`).
    pub(crate) fn merge_anthropic(&mut self, fragment: &Value) {
        let Value::Object(fragment) = fragment else {
            return;
        };
        if fragment.get("type").and_then(Value::as_str) == Some("tool_use") {
            self.calls.push(PartialCall {
                index: None,
                call: fragment.clone(),
                input_json: String::new(),
            });
        } else if let Some(piece) = fragment.get("partial_json").and_then(Value::as_str)
            && let Some(partial) = self.calls.last_mut()
        {
            partial.input_json.push_str(piece);
        }
    }

    /// The assembled calls, as a non-streamed response would hold them, or a
    /// message naming the call whose streamed input is not valid JSON.
    pub(crate) fn finish(self) -> Result<Option<Value>, String> {
        if self.calls.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.calls.len());
        for PartialCall {
            mut call,
            input_json,
            ..
        } in self.calls
        {
            if !input_json.trim().is_empty() {
                let input = serde_json::from_str(&input_json).map_err(|e| {
                    let name = call.get("name").and_then(Value::as_str).unwrap_or("?");
                    format!("the streamed input of tool call `{name}` is not valid JSON: {e}")
                })?;
                call.insert("input".to_owned(), input);
            }
            out.push(Value::Object(call));
        }
        Ok(Some(Value::Array(out)))
    }
}

/// Folds a later OpenAI fragment into its call: arguments append, and the id,
/// type and name are taken from the first fragment that has them.
fn append_openai(call: &mut Map<String, Value>, fragment: &Map<String, Value>) {
    for key in ["id", "type"] {
        if let Some(value) = fragment.get(key).filter(|v| is_set(v))
            && !call.get(key).is_some_and(is_set)
        {
            call.insert(key.to_owned(), value.clone());
        }
    }
    let Some(Value::Object(piece)) = fragment.get("function") else {
        return;
    };
    let function = call
        .entry("function")
        .or_insert_with(|| Value::Object(Map::new()));
    if !function.is_object() {
        *function = Value::Object(Map::new());
    }
    let Value::Object(function) = function else {
        return;
    };
    if let Some(name) = piece.get("name").filter(|v| is_set(v))
        && !function.get("name").is_some_and(is_set)
    {
        function.insert("name".to_owned(), name.clone());
    }
    if let Some(more) = piece.get("arguments").and_then(Value::as_str) {
        match function.get_mut("arguments") {
            Some(Value::String(arguments)) => arguments.push_str(more),
            _ => {
                function.insert("arguments".to_owned(), Value::String(more.to_owned()));
            }
        }
    }
}

fn is_set(value: &Value) -> bool {
    !(value.is_null() || value.as_str() == Some(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_fragments_merge_by_index_even_when_interleaved() {
        let mut calls = ToolCalls::default();
        calls.merge_openai(&json!([
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}},
        ]));
        calls.merge_openai(&json!([
            {"index": 1, "id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{\"tz\""}},
        ]));
        calls.merge_openai(&json!([{"index": 0, "function": {"arguments": "{\"city\": "}}]));
        calls.merge_openai(&json!([
            {"index": 1, "function": {"arguments": ": \"UTC\"}"}},
            {"index": 0, "function": {"arguments": "\"Paris\"}"}},
        ]));
        assert_eq!(
            calls.finish().unwrap().unwrap(),
            json!([
                {"id": "call_a", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_b", "type": "function",
                 "function": {"name": "get_time", "arguments": "{\"tz\": \"UTC\"}"}},
            ])
        );
    }

    #[test]
    fn openai_fragments_without_index_or_with_a_repeated_name() {
        let mut calls = ToolCalls::default();
        calls.merge_openai(&json!([{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\""}}]));
        // A server that repeats the name and sends an empty id on every piece.
        calls.merge_openai(&json!([{"id": "", "function": {"name": "f", "arguments": ": 1}"}}]));
        calls.merge_openai(&json!([{"id": "c2", "type": "function",
            "function": {"name": "g", "arguments": "{}"}}]));
        assert_eq!(
            calls.finish().unwrap().unwrap(),
            json!([
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
            ])
        );
    }

    #[test]
    fn anthropic_blocks_collect_their_input_json() {
        let mut calls = ToolCalls::default();
        calls.merge_anthropic(
            &json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        );
        calls.merge_anthropic(&json!({"index": 1, "partial_json": "{\"city\":"}));
        calls.merge_anthropic(&json!({"index": 1, "partial_json": " \"Paris\"}"}));
        calls.merge_anthropic(
            &json!({"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}),
        );
        assert_eq!(
            calls.finish().unwrap().unwrap(),
            json!([
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
            ])
        );
    }

    #[test]
    fn broken_input_json_names_the_tool() {
        let mut calls = ToolCalls::default();
        calls.merge_anthropic(
            &json!({"type": "tool_use", "id": "t", "name": "lookup", "input": {}}),
        );
        calls.merge_anthropic(&json!({"partial_json": "{\"q\": "}));
        let error = calls.finish().unwrap_err();
        assert!(error.contains("`lookup`"), "{error}");
    }

    #[test]
    fn no_fragments_no_tool_calls() {
        assert_eq!(ToolCalls::default().finish().unwrap(), None);
        let mut calls = ToolCalls::default();
        calls.merge_openai(&json!("not a fragment"));
        assert_eq!(calls.finish().unwrap(), None);
    }
}
