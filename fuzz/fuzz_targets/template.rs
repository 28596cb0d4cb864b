//! Templates: compile any source, then render it with variables.
#![no_main]

use dspex_prompt::template::PromptTemplate;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &str| {
    // The source, then optionally a NUL and the variables as JSON.
    let (source, vars) = data.split_once('\0').unwrap_or((data, ""));
    // minijinja repeats a sequence lazily and without a bound, so rendering
    // `() * 2705689816` loops 2.7 billion times (found here as a timeout).
    // That is the template asking for it, like a loop that never ends, not
    // a parser fault: README, "Fuzzing", says render time is not bounded.
    // Multiplication is left out so the fuzzer looks elsewhere.
    if source.contains('*') {
        return;
    }
    let Ok(template) = PromptTemplate::create("fuzz", source) else {
        return;
    };
    let vars = match serde_json::from_str::<Value>(vars) {
        Ok(Value::Object(vars)) => Value::Object(vars),
        _ => {
            // Every variable the template reads, as a short string.
            let vars: serde_json::Map<String, Value> = template
                .variables()
                .into_iter()
                .map(|v| (v.name, json!("x")))
                .collect();
            Value::Object(vars)
        }
    };
    match template.render(&vars) {
        Ok(_) => {}
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
