//! The JSON adapter's reply parser: any reply text, for any signature.
#![no_main]

mod common;

use dspex_prompt::Adapter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let (signature, reply) = common::signature_and_text(data);
    let parsed = Adapter::Json.parse(&signature, reply);
    // Every output field is either read or reported, never both, never lost.
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
});
