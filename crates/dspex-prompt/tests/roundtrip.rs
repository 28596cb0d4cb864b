//! Property round-trips of the formats dspex-prompt both writes and reads:
//! saved program state (save, then load into a fresh program) and the string
//! form of signatures (print, then parse).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use dspex_client::{Client, ClientConfig};
use dspex_prompt::adapter::Adapter;
use dspex_prompt::module::{PredictState, TemplateState};
use dspex_prompt::template::PromptTemplate;
use dspex_prompt::{
    CallSettings, Example, Field, FieldType, Lm, Predict, Signature, load_program, program_state,
    save_program,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// One client for every case: modules only hold it, nothing is called.
fn client() -> &'static Client {
    static CLIENT: OnceLock<(tokio::runtime::Runtime, Client)> = OnceLock::new();
    &CLIENT
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = runtime
                .block_on(Client::from_config(&ClientConfig::default()))
                .unwrap();
            (runtime, client)
        })
        .1
}

fn field_type() -> impl Strategy<Value = FieldType> {
    let leaf = prop_oneof![
        Just(FieldType::Str),
        Just(FieldType::Int),
        Just(FieldType::Float),
        Just(FieldType::Bool),
        Just(FieldType::Json),
        vec("[a-z][a-z0-9_-]{0,6}", 1..4).prop_map(FieldType::Choice),
    ];
    leaf.prop_recursive(3, 8, 1, |inner| {
        inner.prop_map(|ty| FieldType::List(Box::new(ty)))
    })
}

/// A signature with unique field names and at least one output.
fn signature() -> impl Strategy<Value = Signature> {
    (
        vec(("[a-z_][a-z0-9_]{0,8}", field_type()), 0..4),
        vec(("[a-z_][a-z0-9_]{0,8}", field_type()), 1..4),
    )
        .prop_filter_map("field names must be unique", |(inputs, outputs)| {
            let names: BTreeSet<&String> = inputs.iter().chain(&outputs).map(|(n, _)| n).collect();
            if names.len() != inputs.len() + outputs.len() {
                return None;
            }
            let fields = |list: Vec<(String, FieldType)>| {
                list.into_iter()
                    .map(|(name, ty)| Field::new(name, ty))
                    .collect::<Vec<_>>()
            };
            Signature::new(fields(inputs), fields(outputs), "").ok()
        })
}

/// JSON values that survive a text round-trip exactly (floats with an exact
/// binary form: serde_json's default float parser is not exact for every
/// printed float, which is a property of the library, not of this format).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1_000_000i32..1_000_000).prop_map(|q| Value::from(f64::from(q) / 4.0)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    btree_map("[a-z_]{1,6}", json_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn example() -> impl Strategy<Value = Example> {
    (object(), object()).prop_map(|(inputs, outputs)| Example { inputs, outputs })
}

fn settings() -> impl Strategy<Value = CallSettings> {
    (
        proptest::option::of("[a-z0-9./-]{1,20}"),
        proptest::option::of(0.0f32..2.0),
        proptest::option::of(1u32..100_000),
        proptest::option::of(1u32..8),
    )
        .prop_map(|(model, temperature, max_tokens, n)| CallSettings {
            model,
            temperature,
            max_tokens,
            n,
        })
}

fn template_state() -> impl Strategy<Value = Option<TemplateState>> {
    // A `{% raw %}` body cannot contain its own end tag.
    let prefix = "\\PC{0,20}".prop_filter("no endraw", |p: &String| !p.contains("endraw"));
    proptest::option::of((prefix, "\\PC{0,20}").prop_map(|(prefix, topic)| {
        let template = PromptTemplate::create(
            "instructions",
            &format!("{{% raw %}}{prefix}{{% endraw %}} about {{{{ topic }}}}"),
        )
        .unwrap();
        let mut vars = Map::new();
        vars.insert("topic".to_owned(), Value::String(topic));
        TemplateState { template, vars }
    }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A program saved to disk and loaded into a fresh program of the same
    /// shape has exactly the state that was saved: instructions, template,
    /// adapter, demos and settings.
    #[test]
    fn saved_program_state_loads_back_unchanged(
        signature in signature(),
        instructions in "\\PC{0,40}",
        template in template_state(),
        json in any::<bool>(),
        demos in vec(example(), 0..4),
        settings in settings(),
    ) {
        let lm = Lm::new(client(), "lm");
        let adapter = if json { Adapter::Json } else { Adapter::Chat };
        let mut saved = Predict::new(signature.clone(), lm.clone());
        saved
            .load_state(PredictState {
                signature: signature.to_string(),
                instructions,
                template: template.clone(),
                adapter,
                demos: demos.clone(),
                settings: settings.clone(),
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("program.json");
        save_program(&saved, &path).unwrap();

        let mut loaded = Predict::new(signature, lm);
        load_program(&mut loaded, &path).unwrap();
        prop_assert_eq!(program_state(&loaded), program_state(&saved));
        let state = loaded.state();
        prop_assert_eq!(state.demos, demos);
        prop_assert_eq!(state.settings, settings);
        prop_assert_eq!(state.adapter, adapter);
        prop_assert_eq!(state.template, template);
        // The instructions a call sends are the same.
        prop_assert_eq!(loaded.signature().instructions(), saved.signature().instructions());
    }

    /// A signature's string form parses back to the same fields.
    #[test]
    fn signature_string_form_round_trips(signature in signature()) {
        let printed = signature.to_string();
        let parsed = Signature::parse(&printed).unwrap();
        prop_assert_eq!(parsed.inputs(), signature.inputs(), "{}", printed);
        prop_assert_eq!(parsed.outputs(), signature.outputs(), "{}", printed);
    }
}
