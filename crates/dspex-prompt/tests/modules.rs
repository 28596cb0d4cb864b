//! Predict and ChainOfThought end to end: with the scripted in-process LM, and
//! against the mock upstream over loopback (the field-only re-ask path).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig, ScriptedLm};
use dspex_mock::{MockConfig, MockServer, Script};
use dspex_prompt::adapter::Adapter;
use dspex_prompt::module::CallPurpose;
use dspex_prompt::{
    CallSettings, ChainOfThought, Example, Inputs, Lm, Module, Predict, PromptError, Signature,
    batch, load_program, save_program,
};
use serde_json::{Value, json};

fn inputs(value: Value) -> Inputs {
    match value {
        Value::Object(map) => map,
        other => panic!("inputs must be an object, not {other}"),
    }
}

async fn scripted(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("dummy", lm).await.unwrap();
    client
}

#[tokio::test]
async fn predict_round_trips_every_field_type() {
    let signature = Signature::parse(
        "question -> text, count: int, score: float, ok: bool, tags: list[str], label: Literal['pos', 'neg'], meta: dict",
    )
    .unwrap();
    let outputs = json!({
        "text": "hello", "count": 3, "score": 0.25, "ok": true, "tags": ["a", "b"], "label": "neg", "meta": {"k": 1}
    });
    for adapter in [Adapter::Chat, Adapter::Json] {
        // The model replies exactly as the adapter formats a demo's outputs.
        let reply = adapter
            .assistant_message(&signature, outputs.as_object().unwrap())
            .content;
        let client = scripted(ScriptedLm::replies([reply])).await;
        let predict =
            Predict::new(signature.clone(), Lm::new(&client, "dummy")).with_adapter(adapter);
        let prediction = predict
            .forward(&inputs(json!({"question": "q"})))
            .await
            .unwrap();
        assert_eq!(
            Value::Object(prediction.outputs.clone()),
            outputs,
            "{adapter:?}"
        );
        assert_eq!(prediction.get::<Vec<String>>("tags").unwrap(), ["a", "b"]);
        assert_eq!(prediction.reasks, 0);
        assert_eq!(prediction.trace.len(), 1);
        assert!(prediction.usage.input_tokens > 0);
    }
}

#[tokio::test]
async fn inputs_are_checked_before_any_call() {
    let lm = ScriptedLm::replies(["unused"]);
    let client = scripted(lm.clone()).await;
    let predict = Predict::new(
        Signature::parse("question, k: int -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let error = predict
        .forward(&inputs(json!({"k": "three"})))
        .await
        .unwrap_err();
    let PromptError::InvalidInputs { problems } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(lm.calls(), 0);
}

#[tokio::test]
async fn chain_of_thought_puts_reasoning_first() {
    let client = scripted(ScriptedLm::replies([
        "[[ ## reasoning ## ]]\n2 and 2 make 4.\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",
    ]))
    .await;
    let cot = ChainOfThought::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let names: Vec<&str> = cot
        .predict()
        .signature()
        .outputs()
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["reasoning", "answer"]);
    let messages = cot.predict().messages(&inputs(json!({"question": "2+2?"})));
    let user = &messages.last().unwrap().content;
    let reasoning_at = user.find("[[ ## reasoning ## ]]").unwrap();
    assert!(
        reasoning_at < user.find("[[ ## answer ## ]]").unwrap(),
        "{user}"
    );
    let prediction = cot
        .forward(&inputs(json!({"question": "2+2?"})))
        .await
        .unwrap();
    assert_eq!(prediction.get::<i64>("answer").unwrap(), 4);
    assert_eq!(prediction.text("reasoning"), Some("2 and 2 make 4."));
}

#[tokio::test]
async fn a_failed_field_is_re_asked_alone_against_the_mock() {
    // The first reply lacks `answer`; the re-ask (which names only `answer`)
    // gets it. Scripted on the mock, over loopback.
    let script = Script::default()
        .rule("Your previous reply could not be read", "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]")
        .rule("What is six times seven", "[[ ## reasoning ## ]]\nSix sevens.\n\n[[ ## answer ## ]]\nforty-two-ish\n\n[[ ## completed ## ]]");
    let upstream = MockServer::start(
        MockConfig {
            record_requests: 10,
            ..MockConfig::default()
        }
        .with_script(script),
    )
    .await
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(
            ProviderConfig::validate(
                "mock",
                &RawProvider {
                    kind: Some("openai".into()),
                    base_url: Some(upstream.base_url()),
                    ..RawProvider::default()
                },
                None,
                &|_| None,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let cot = ChainOfThought::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "mock"),
    );
    let prediction = cot
        .forward(&inputs(json!({"question": "What is six times seven?"})))
        .await
        .unwrap();
    assert_eq!(prediction.get::<i64>("answer").unwrap(), 42);
    assert_eq!(
        prediction.text("reasoning"),
        Some("Six sevens."),
        "the good field is kept, not re-asked"
    );
    assert_eq!(prediction.reasks, 1);
    let purposes: Vec<CallPurpose> = prediction.trace.iter().map(|c| c.purpose).collect();
    assert_eq!(purposes, [CallPurpose::Predict, CallPurpose::Reask]);
    assert_eq!(
        prediction.trace[0].correlation_id, prediction.trace[1].correlation_id,
        "one run"
    );
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 2);
    let reask = recorded[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reask.contains("`[[ ## answer ## ]]`"), "{reask}");
    assert!(
        !reask.contains("reasoning"),
        "only the failed field is asked for: {reask}"
    );
}

#[tokio::test]
async fn a_field_that_fails_twice_is_a_parse_error_naming_it() {
    let client = scripted(ScriptedLm::replies(["[[ ## answer ## ]]\nmany"])).await;
    let predict = Predict::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let error = predict
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap_err();
    let PromptError::Parse { problems, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(problems[0].contains("`answer`"), "{problems:?}");
}

#[tokio::test]
async fn demos_are_sent_as_user_assistant_pairs() {
    let lm = ScriptedLm::from_fn(|request| {
        // system + 2 demos x 2 + the request
        assert_eq!(request.messages.len(), 6);
        Ok(format!(
            "[[ ## answer ## ]]\n{}",
            request.messages[2].content.contains("Paris")
        ))
    });
    let client = scripted(lm).await;
    let demo = |q: &str, a: &str| Example {
        inputs: inputs(json!({"question": q})),
        outputs: inputs(json!({"answer": a})),
    };
    let predict = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    )
    .with_demos(vec![
        demo("Capital of France?", "Paris"),
        demo("Capital of Italy?", "Rome"),
    ]);
    let prediction = predict
        .forward(&inputs(json!({"question": "Capital of Spain?"})))
        .await
        .unwrap();
    assert_eq!(prediction.text("answer"), Some("true"));
}

#[tokio::test]
async fn batches_report_errors_per_item() {
    let lm = ScriptedLm::from_fn(|request| {
        let last = &request.messages.last().unwrap().content;
        if last.contains("bad") {
            Err("scripted failure".into())
        } else {
            Ok("[[ ## answer ## ]]\nok".into())
        }
    });
    let client = scripted(lm).await;
    let predict = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let items: Vec<Inputs> = ["a", "bad", "c", "d"]
        .iter()
        .map(|q| inputs(json!({"question": q})))
        .collect();
    let results = batch(&predict, &items, 2, false).await;
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok());
    assert!(matches!(results[1], Err(PromptError::Client(_))));
}

#[tokio::test]
async fn program_state_saves_and_loads() {
    let client = scripted(ScriptedLm::replies(["x"])).await;
    let signature = Signature::parse("question -> answer").unwrap();
    let mut tuned = ChainOfThought::new(signature.clone(), Lm::new(&client, "dummy"));
    tuned.predict_mut().set_instructions("Answer in one word.");
    tuned.predict_mut().set_demos(vec![Example {
        inputs: inputs(json!({"question": "q1"})),
        outputs: inputs(json!({"reasoning": "r1", "answer": "a1"})),
    }]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("program.json");
    save_program(&tuned, &path).unwrap();

    let mut fresh = ChainOfThought::new(signature, Lm::new(&client, "dummy"));
    load_program(&mut fresh, &path).unwrap();
    assert_eq!(fresh.predict().state(), tuned.predict().state());
    assert_eq!(
        fresh.predict().signature().instructions(),
        "Answer in one word."
    );

    // Instructions from a template: the template's version and variables are
    // saved and restored with the program.
    let template = dspex_prompt::template::PromptTemplate::create(
        "instructions",
        "Answer in {{ n }} word(s), in {{ lang }}.",
    )
    .unwrap();
    let template = dspex_prompt::template::optimize(&template, &[]).unwrap();
    assert_eq!(template.version(), 2);
    tuned
        .predict_mut()
        .set_instructions_template(template, inputs(json!({"n": 1, "lang": "French"})))
        .unwrap();
    assert_eq!(
        tuned.predict().signature().instructions(),
        "Answer in 1 word(s), in French."
    );
    save_program(&tuned, &path).unwrap();
    let mut restored = ChainOfThought::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    load_program(&mut restored, &path).unwrap();
    assert_eq!(
        restored
            .predict()
            .instructions_template()
            .unwrap()
            .version(),
        2
    );
    assert_eq!(
        restored.predict().signature().instructions(),
        "Answer in 1 word(s), in French."
    );
    assert_eq!(restored.predict().state(), tuned.predict().state());
    let missing = tuned.predict_mut().set_instructions_template(
        dspex_prompt::template::PromptTemplate::create("i", "{{ a }} {{ b }}").unwrap(),
        inputs(json!({})),
    );
    assert!(missing.unwrap_err().to_string().contains("a, b"));

    let mut other = Predict::new(
        Signature::parse("text -> label").unwrap(),
        Lm::new(&client, "dummy"),
    )
    .with_settings(CallSettings::default());
    let error = load_program(&mut other, &path).unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
    std::fs::write(
        &path,
        "{\"version\": 1, \"predictors\": {\"predict\": {\"signature\": 5}}}",
    )
    .unwrap();
    assert!(
        load_program(&mut fresh, &path)
            .unwrap_err()
            .to_string()
            .contains("is not a saved program")
    );
}

#[tokio::test]
async fn the_json_adapter_sends_a_schema_only_where_the_provider_takes_one() {
    // The prompt layer asks the provider's capabilities, not its kind: OpenAI
    // takes a `json_schema` response format, Anthropic does not.
    let upstream = MockServer::start(MockConfig {
        record_requests: 10,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    for (id, kind, base_url) in [
        ("oa", "openai", upstream.base_url()),
        ("an", "anthropic", upstream.anthropic_base_url()),
    ] {
        client
            .add_provider(
                ProviderConfig::validate(
                    id,
                    &RawProvider {
                        kind: Some(kind.into()),
                        base_url: Some(base_url),
                        ..RawProvider::default()
                    },
                    None,
                    &|_| None,
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let signature = Signature::parse("question -> answer").unwrap();
    for id in ["oa", "an"] {
        let predict =
            Predict::new(signature.clone(), Lm::new(&client, id)).with_adapter(Adapter::Json);
        // The mock echoes, so the reply may not parse; only the request matters.
        let _ = predict.forward(&inputs(json!({"question": "q"}))).await;
    }
    let recorded = upstream.recorded();
    let openai = recorded
        .iter()
        .find(|r| r.route == "chat_completions")
        .unwrap();
    assert_eq!(openai.body["response_format"]["type"], "json_schema");
    assert_eq!(
        openai.body["response_format"]["json_schema"]["schema"]["required"],
        json!(["answer"])
    );
    let anthropic = recorded.iter().find(|r| r.route == "messages").unwrap();
    assert!(
        anthropic.body.get("response_format").is_none(),
        "{}",
        anthropic.body
    );
    assert!(client.provider("oa").unwrap().capabilities().json_schema);
    assert!(!client.provider("an").unwrap().capabilities().json_schema);
}

#[tokio::test]
async fn predict_sends_what_the_adapter_formats() {
    // One message builder: a predictor's messages are the adapter's
    // `format` of its signature, demos and inputs, for both adapters.
    let client = scripted(ScriptedLm::replies(["unused"])).await;
    let demo = Example {
        inputs: inputs(json!({"question": "Capital of France?"})),
        outputs: inputs(json!({"answer": "Paris"})),
    };
    let signature = Signature::parse("question -> answer").unwrap();
    let request = inputs(json!({"question": "Capital of Spain?"}));
    for adapter in [Adapter::Chat, Adapter::Json] {
        let predict = Predict::new(signature.clone(), Lm::new(&client, "dummy"))
            .with_adapter(adapter)
            .with_demos(vec![demo.clone()]);
        assert_eq!(
            predict.messages(&request),
            adapter.format(&signature, std::slice::from_ref(&demo), &request),
            "{adapter:?}"
        );
    }
}

#[test]
fn a_prediction_totals_every_usage_field() {
    // The total once left out `cache_write_tokens`.
    use dspex_client::Usage;
    use dspex_prompt::{LmCall, Prediction};
    let call = |n: u64| LmCall {
        correlation_id: dspex_core::CorrelationId::from("c"),
        provider: std::sync::Arc::from("p"),
        model: "m".into(),
        usage: Usage {
            input_tokens: n,
            output_tokens: 2 * n,
            cached_input_tokens: 3 * n,
            cache_write_tokens: 4 * n,
        },
        latency: std::time::Duration::ZERO,
        attempts: 1,
        purpose: CallPurpose::Predict,
        cached: false,
    };
    let mut total = Prediction::default();
    for n in [1, 10] {
        total.absorb(Prediction {
            trace: vec![call(n)],
            ..Prediction::default()
        });
    }
    assert_eq!(
        total.usage,
        Usage {
            input_tokens: 11,
            output_tokens: 22,
            cached_input_tokens: 33,
            cache_write_tokens: 44,
        }
    );
}

#[tokio::test]
async fn the_chat_adapter_stops_the_reply_at_its_completed_marker() {
    let upstream = MockServer::start(MockConfig {
        record_requests: 10,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(
            ProviderConfig::openai_compatible("oa", &upstream.base_url(), "gpt-4o-mini").unwrap(),
        )
        .await
        .unwrap();
    let signature = Signature::parse("question -> answer").unwrap();
    for adapter in [Adapter::Chat, Adapter::Json] {
        let predict = Predict::new(signature.clone(), Lm::new(&client, "oa")).with_adapter(adapter);
        let _ = predict.forward(&inputs(json!({"question": "q"}))).await;
    }
    let recorded = upstream.recorded();
    assert_eq!(recorded[0].body["stop"], json!(["[[ ## completed ## ]]"]));
    assert!(
        recorded.last().unwrap().body.get("stop").is_none(),
        "the JSON adapter has no marker"
    );
}
