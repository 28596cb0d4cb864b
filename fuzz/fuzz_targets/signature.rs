//! Signatures in their string form, and field types.
#![no_main]

use dspex_prompt::{FieldType, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(signature) = Signature::parse(data) {
        // The string form a signature prints parses back to the same fields.
        let printed = signature.to_string();
        let again = Signature::parse(&printed)
            .unwrap_or_else(|e| panic!("`{printed}` (from `{data}`) does not parse: {e}"));
        assert_eq!(signature.inputs(), again.inputs(), "{printed}");
        assert_eq!(signature.outputs(), again.outputs(), "{printed}");
    } else if let Err(error) = Signature::parse(data) {
        assert!(!error.to_string().is_empty());
    }
    if let Ok(ty) = FieldType::parse(data) {
        let printed = ty.to_string();
        assert_eq!(
            FieldType::parse(&printed).as_ref(),
            Ok(&ty),
            "`{printed}` from `{data}`"
        );
    }
});
