//! Helpers shared by the fuzz targets.
#![allow(dead_code)]

pub mod upstream;

use dspex_prompt::{Adapter, Signature};

/// A signature with an output of every type, for replies whose input does
/// not bring its own.
pub const DEFAULT_SIGNATURE: &str = "question -> reasoning, answer: int, score: float, ok: bool, \
     tags: list[str], label: Literal['yes', 'no'], data: dict";

/// Splits `data` at the first newline: the first line as a signature when it
/// parses (so the fuzzer can explore field names and types), the rest as the
/// text to parse. Falls back to [`DEFAULT_SIGNATURE`] and the whole input.
pub fn signature_and_text(data: &str) -> (Signature, &str) {
    if let Some((first, rest)) = data.split_once('\n')
        && first.contains("->")
        && let Ok(signature) = Signature::parse(first)
    {
        return (signature, rest);
    }
    let signature = Signature::parse(DEFAULT_SIGNATURE).expect("the default signature parses");
    (signature, data)
}

/// Parses `data` (see [`signature_and_text`]) with `adapter` and checks what
/// every adapter promises: each output field is either read or reported as a
/// failure, never both, never lost, and every failure gives its reason.
pub fn check_adapter_parse(adapter: Adapter, data: &str) {
    let (signature, reply) = signature_and_text(data);
    let parsed = adapter.parse(&signature, reply);
    for field in signature.outputs() {
        let read = parsed.outputs.contains_key(&field.name);
        let failed = parsed
            .failures
            .iter()
            .filter(|(name, _)| *name == field.name)
            .count();
        assert_eq!(
            usize::from(read) + failed,
            1,
            "field `{}` in {parsed:?}",
            field.name
        );
    }
    for (name, reason) in &parsed.failures {
        assert!(!reason.is_empty(), "failure of `{name}` has no reason");
    }
}
