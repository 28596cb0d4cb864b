//! Metrics by hand, dataset loading errors, and `Evaluate` end to end with the
//! scripted LM and against the mock upstream over loopback.
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
use dspex_prompt::evaluate::{contains, exact_match, normalize_tokens, parse_dataset, token_f1};
use dspex_prompt::{
    ChainOfThought, EvalReport, Evaluate, Example, Inputs, Lm, Metric, Predict, Prediction,
    PromptError, Signature, load_dataset,
};
use serde_json::{Value, json};

fn map(value: Value) -> Inputs {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn example(inputs: Value, outputs: Value) -> Example {
    Example {
        inputs: map(inputs),
        outputs: map(outputs),
    }
}

fn prediction(outputs: Value) -> Prediction {
    Prediction {
        outputs: map(outputs),
        ..Prediction::default()
    }
}

#[test]
fn text_metrics_match_squad_by_hand() {
    // Case, punctuation and articles do not count.
    assert_eq!(exact_match("The Eiffel Tower!", "eiffel tower"), 1.0);
    assert_eq!(exact_match("Paris, France", "Paris"), 0.0);
    assert_eq!(exact_match("", ""), 1.0);
    // Whole tokens only: "4" is not in "42".
    assert_eq!(contains("It is Paris, France.", "paris"), 1.0);
    assert_eq!(contains("It is Paris, France.", "paris france"), 1.0);
    assert_eq!(contains("It is Paris, France.", "france paris"), 0.0);
    assert_eq!(contains("42", "4"), 0.0);
    // 4 predicted tokens (cat sat on mat), 3 label tokens, 3 in common:
    // P = 3/4, R = 1, F1 = 2PR / (P + R) = 6/7.
    let f1 = token_f1("The cat sat on the mat", "cat on mat");
    assert!((f1 - 6.0 / 7.0).abs() < 1e-12, "{f1}");
    // Multiset overlap: x x y against x y y shares one x and one y.
    let f1 = token_f1("x x y", "x y y");
    assert!((f1 - 2.0 / 3.0).abs() < 1e-12, "{f1}");
    assert_eq!(token_f1("", ""), 1.0);
    assert_eq!(token_f1("something", ""), 0.0);
    assert_eq!(token_f1("cat", "dog"), 0.0);
}

/// SQuAD's normalisation as its reference code spells it: clean the whole
/// text, then split.
fn squad_reference(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    cleaned
        .split_whitespace()
        .filter(|token| !matches!(*token, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

proptest::proptest! {
    #[test]
    fn normalisation_matches_the_squad_reference(
        text in "([A-Za-z0-9]{0,6}|[ .,!?'-]{1,3}|The|a|An|\\PC{1,3}|\\s{1,2}){0,12}",
        other in "([A-Za-z0-9]{0,4}|[ .,!?'-]{1,3}|The|a|\\s{1,2}){0,6}",
    ) {
        let reference = squad_reference(&text);
        proptest::prop_assert_eq!(&normalize_tokens(&text), &reference);
        // Exact match (with its ASCII fast path) agrees with the reference, on
        // unrelated texts and on texts that differ only in case, articles,
        // punctuation and spacing.
        let pairs = [
            other,
            text.to_uppercase(),
            format!(" the {text} .\u{b}"),
        ];
        for label in pairs {
            let expected = reference == squad_reference(&label);
            proptest::prop_assert_eq!(exact_match(&text, &label) == 1.0, expected, "{:?} vs {:?}", text, label);
        }
    }
}

#[test]
fn metrics_score_one_field_or_the_mean_of_labelled_fields() {
    let labelled = example(
        json!({"question": "q"}),
        json!({"answer": "Paris", "city": "Rome"}),
    );
    let predicted = prediction(json!({"answer": "paris.", "city": "Milan", "extra": "x"}));
    assert_eq!(Metric::exact_match().score(&labelled, &predicted), 0.5);
    assert_eq!(
        Metric::exact_match()
            .field("answer")
            .score(&labelled, &predicted),
        1.0
    );
    assert_eq!(
        Metric::exact_match()
            .field("city")
            .score(&labelled, &predicted),
        0.0
    );
    assert_eq!(
        Metric::exact_match()
            .field("nowhere")
            .score(&labelled, &predicted),
        0.0
    );
    // A field the prediction lacks scores 0; no labels at all scores 0.
    assert_eq!(
        Metric::contains().score(&labelled, &prediction(json!({"answer": "Paris"}))),
        0.5
    );
    assert_eq!(
        Metric::token_f1().score(&example(json!({"q": 1}), json!({})), &predicted),
        0.0
    );
    // A list label holds alternatives; non-text values compare as JSON.
    let alternatives = example(json!({}), json!({"answer": ["Paris", "City of Light"]}));
    assert_eq!(
        Metric::exact_match().score(
            &alternatives,
            &prediction(json!({"answer": "city of light"}))
        ),
        1.0
    );
    assert_eq!(
        Metric::exact_match().score(
            &example(json!({}), json!({"n": 4})),
            &prediction(json!({"n": 4}))
        ),
        1.0
    );
    let f1 = Metric::token_f1().score(
        &example(json!({}), json!({"answer": "cat on mat"})),
        &prediction(json!({"answer": "the cat sat on the mat"})),
    );
    assert!((f1 - 6.0 / 7.0).abs() < 1e-12);
}

#[test]
fn thresholds_names_and_custom_metrics() {
    assert!(Metric::exact_match().passes(1.0));
    assert!(!Metric::token_f1().passes(0.99));
    assert!(Metric::token_f1().with_threshold(0.5).passes(0.5));
    assert_eq!(
        Metric::exact_match().field("answer").name(),
        "exact_match:answer"
    );
    assert_eq!(Metric::from_name("f1").unwrap().name(), "token_f1");
    assert_eq!(Metric::from_name("exact").unwrap().name(), "exact_match");
    let error = Metric::from_name("bleu").unwrap_err();
    assert!(error.to_string().contains("`bleu`"), "{error}");

    let length = Metric::custom("short", |_, p: &Prediction| {
        if p.text("answer").is_some_and(|a| a.len() < 5) {
            1.0
        } else {
            0.25
        }
    });
    let any = example(json!({}), json!({}));
    assert_eq!(
        length.score(&any, &prediction(json!({"answer": "ok"}))),
        1.0
    );
    assert_eq!(
        length.score(&any, &prediction(json!({"answer": "too long"}))),
        0.25
    );
    assert_eq!(length.name(), "short");
    let broken = Metric::custom("nan", |_, _| f64::NAN);
    assert_eq!(broken.score(&any, &prediction(json!({}))), 0.0);
}

#[test]
fn datasets_split_keys_and_name_bad_lines() {
    let signature = Signature::parse("question, k: int -> answer").unwrap();
    let good = "{\"question\": \"q1\", \"k\": 1, \"answer\": \"a1\", \"note\": \"x\"}\n\n  \n{\"question\": \"q2\", \"k\": 2, \"answer\": \"a2\"}\n";
    let examples = parse_dataset(good, "good.jsonl", &signature).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(
        examples[0],
        example(
            json!({"question": "q1", "k": 1}),
            json!({"answer": "a1", "note": "x"})
        )
    );

    let line_of = |text: &str| match parse_dataset(text, "data.jsonl", &signature).unwrap_err() {
        PromptError::Dataset {
            path,
            line,
            message,
        } => {
            assert_eq!(path, "data.jsonl");
            (line, message)
        }
        other => panic!("{other:?}"),
    };
    // Blank lines still count for numbering.
    let (line, message) = line_of("{\"question\": \"q\", \"k\": 1}\n\n{not json\n");
    assert_eq!(line, Some(3));
    assert!(message.contains("not valid JSON"), "{message}");
    let (line, message) = line_of("{\"question\": \"q\", \"k\": 1}\n[1, 2]\n");
    assert_eq!(line, Some(2));
    assert!(
        message.contains("expected a JSON object, found an array"),
        "{message}"
    );
    let (line, message) = line_of("{\"k\": \"three\", \"answer\": \"a\"}\n");
    assert_eq!(line, Some(1));
    assert!(message.contains("`question` is missing"), "{message}");
    assert!(message.contains("`k`"), "{message}");
    let rendered = parse_dataset("{}\n", "data.jsonl", &signature)
        .unwrap_err()
        .to_string();
    assert!(rendered.starts_with("data.jsonl line 1: "), "{rendered}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(&path, good).unwrap();
    assert_eq!(load_dataset(&path, &signature).unwrap(), examples);
    let missing = load_dataset(&dir.path().join("absent.jsonl"), &signature).unwrap_err();
    assert!(
        matches!(&missing, PromptError::Dataset { line: None, path, .. } if path.ends_with("absent.jsonl")),
        "{missing:?}"
    );
}

async fn scripted(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("dummy", lm).await.unwrap();
    client
}

fn last_user(request: &dspex_client::ChatRequest) -> String {
    request.messages.last().unwrap().content.clone()
}

#[tokio::test]
async fn evaluate_scores_counts_errors_and_keeps_order_with_the_scripted_lm() {
    let lm = ScriptedLm::from_fn(|request| {
        let last = last_user(request);
        if last.contains("explode") {
            Err("scripted failure".into())
        } else if last.contains("France") {
            Ok("[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]".into())
        } else if last.contains("Italy") {
            Ok("[[ ## answer ## ]]\nMilan\n\n[[ ## completed ## ]]".into())
        } else {
            Ok("[[ ## answer ## ]]\nthe Madrid\n\n[[ ## completed ## ]]".into())
        }
    });
    let client = scripted(lm.clone()).await;
    let signature = Signature::parse("question -> answer").unwrap();
    let predict = Predict::new(signature.clone(), Lm::new(&client, "dummy"));
    let data = [
        r#"{"question": "Capital of France?", "answer": "Paris"}"#,
        r#"{"question": "Capital of Italy?", "answer": "Rome"}"#,
        r#"{"question": "Please explode", "answer": "boom"}"#,
        r#"{"question": "Capital of Spain?", "answer": "Madrid"}"#,
    ]
    .join("\n");
    let examples = parse_dataset(&data, "inline", &signature).unwrap();
    let report = Evaluate::new(Metric::exact_match())
        .with_concurrency(3)
        .run(&predict, &examples)
        .await;
    assert_eq!(report.total, 4);
    assert_eq!(report.passed, 2);
    assert_eq!(report.errors, 1);
    assert_eq!(report.score, 0.5, "the error counts as 0");
    let indices: Vec<usize> = report.results.iter().map(|r| r.index).collect();
    assert_eq!(indices, [0, 1, 2, 3]);
    let scores: Vec<f64> = report.results.iter().map(|r| r.score).collect();
    assert_eq!(scores, [1.0, 0.0, 0.0, 1.0]);
    assert_eq!(report.results[1].outputs["answer"], "Milan");
    let error = report.results[2].error.as_deref().unwrap();
    assert!(error.contains("scripted failure"), "{error}");
    assert!(report.results[2].outputs.is_empty());
    assert!(
        report
            .results
            .iter()
            .all(|r| r.error.is_none() || r.index == 2)
    );
    // Usage adds up, and matches what the LM counted.
    let sum: u64 = report.results.iter().map(|r| r.usage.input_tokens).sum();
    assert_eq!(report.usage.input_tokens, sum);
    assert!(report.usage.input_tokens > 0);
    // Four calls made; the scripted LM counts only the three it answered.
    assert_eq!(report.calls, 4);
    assert_eq!(lm.calls(), 3);
    assert!(report.calls_per_second > 0.0);
    assert!(
        report.to_string().contains("50.0% (2/4 passed, 1 errors)"),
        "{report}"
    );

    // The report is plain JSON and reads back.
    let text = serde_json::to_string(&report).unwrap();
    let back: EvalReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back.results.len(), 4);
    assert_eq!(back.score, report.score);
    assert_eq!(back.results[2].error, report.results[2].error);

    // Spread over spawned tasks: the same results.
    let shared = Evaluate::new(Metric::exact_match())
        .with_concurrency(3)
        .run_shared(
            std::sync::Arc::new(predict.clone()),
            std::sync::Arc::from(examples.clone()),
        )
        .await;
    let strip = |r: &EvalReport| {
        r.results
            .iter()
            .map(|x| {
                (
                    x.index,
                    x.score,
                    x.passed,
                    x.outputs.clone(),
                    x.error.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&shared), strip(&report));
    assert_eq!((shared.passed, shared.errors, shared.calls), (2, 1, 4));

    // Token F1 gives partial credit, and an empty dataset scores 0.
    let f1 = Evaluate::new(Metric::token_f1().field("answer"))
        .run(&predict, &examples)
        .await;
    assert_eq!(f1.score, 0.5);
    let empty = Evaluate::new(Metric::exact_match())
        .run(&predict, &[])
        .await;
    assert_eq!((empty.total, empty.score), (0, 0.0));
}

async fn mock_client(upstream: &MockServer) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        ..RawProvider::default()
    };
    client
        .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn evaluate_against_the_mock_over_loopback() {
    // The mock answers DSPy-style prompts with "mock <field> for: <input>",
    // except where a rule says otherwise: one question gets a reply with no
    // fields at all, which fails to parse even after the re-ask.
    let upstream = MockServer::start(
        MockConfig::default()
            .with_script(Script::default().rule("unanswerable", "I would rather not say.")),
    )
    .await
    .unwrap();
    let client = mock_client(&upstream).await;
    let signature = Signature::parse("question -> answer").unwrap();
    let cot = ChainOfThought::new(signature.clone(), Lm::new(&client, "mock"));
    let mut lines = Vec::new();
    for i in 0..20 {
        let question = format!("What is item {i}?");
        // Every fifth label is wrong on purpose.
        let answer = if i % 5 == 4 {
            "something else".to_owned()
        } else {
            format!("mock answer for: {question}")
        };
        lines.push(json!({"question": question, "answer": answer}).to_string());
    }
    lines.push(json!({"question": "An unanswerable one", "answer": "x"}).to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let examples = load_dataset(&path, &signature).unwrap();
    assert_eq!(examples.len(), 21);

    let report = Evaluate::new(Metric::exact_match().field("answer"))
        .with_concurrency(8)
        .run(&cot, &examples)
        .await;
    assert_eq!(report.total, 21);
    assert_eq!(report.passed, 16);
    assert_eq!(report.errors, 1);
    assert!(
        (report.score - 16.0 / 21.0).abs() < 1e-12,
        "{}",
        report.score
    );
    let failed = &report.results[20];
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("could not parse the reply"),
        "{failed:?}"
    );
    assert_eq!(failed.calls, 2, "the call and its re-ask");
    assert_eq!(report.calls, 20 + 2);
    assert_eq!(
        report.results[3].outputs["reasoning"],
        "mock reasoning for: What is item 3?"
    );
    assert!(!report.results[4].passed);
    assert!(report.usage.total_tokens() > 0);
}

#[tokio::test]
async fn a_second_evaluation_is_served_from_the_cache() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = mock_client(&upstream).await;
    let cache = dspex_client::ResponseCache::builder()
        .l1(10_000, 64 << 20)
        .build()
        .await
        .unwrap();
    client.set_cache(cache).unwrap();
    let signature = Signature::parse("question -> answer").unwrap();
    let program = Predict::new(signature, Lm::new(&client, "mock"));
    let examples: Vec<Example> = (0..20)
        .map(|i| {
            example(
                json!({"question": format!("q{i}")}),
                json!({"answer": format!("mock answer for: q{i}")}),
            )
        })
        .collect();
    let evaluate = Evaluate::new(Metric::exact_match());
    let first = evaluate.run(&program, &examples).await;
    assert_eq!(first.errors, 0);
    assert_eq!(upstream.stats().requests, 20);
    let second = evaluate.run(&program, &examples).await;
    assert_eq!(
        upstream.stats().requests,
        20,
        "the second run reached the upstream"
    );
    assert!((second.score - first.score).abs() < 1e-9);
    assert_eq!(second.usage.total_tokens(), 0, "cache hits bill nothing");
    assert!(first.usage.total_tokens() > 0);
}

/// A module that answers with its input after a pause, counting how many
/// calls are in flight at once.
struct Counting {
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl dspex_prompt::Module for Counting {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        _run: dspex_prompt::RunContext,
    ) -> futures::future::BoxFuture<'a, dspex_prompt::Result<Prediction>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            Ok(prediction(json!({"answer": inputs["question"].clone()})))
        })
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        Vec::new()
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        Vec::new()
    }
}

/// Spread over tasks on several worker threads (two tasks for four
/// workers), `run_shared` still keeps exactly `concurrency` examples in
/// flight, never more, and reports every example in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_shared_holds_the_concurrency_bound_across_threads() {
    let examples: std::sync::Arc<[Example]> = (0..40)
        .map(|i| {
            example(
                json!({"question": format!("q{i}")}),
                json!({"answer": format!("q{i}")}),
            )
        })
        .collect();
    for concurrency in [1, 5, 64] {
        let module = std::sync::Arc::new(Counting {
            in_flight: 0.into(),
            most: 0.into(),
        });
        let report = Evaluate::new(Metric::exact_match())
            .with_concurrency(concurrency)
            .run_shared(
                std::sync::Arc::clone(&module),
                std::sync::Arc::clone(&examples),
            )
            .await;
        assert_eq!((report.total, report.passed), (40, 40), "{report}");
        for (i, result) in report.results.iter().enumerate() {
            assert_eq!(result.index, i);
            assert_eq!(result.outputs["answer"], format!("q{i}"));
        }
        let most = module.most.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(most, concurrency.min(40), "concurrency {concurrency}");
    }
}

#[test]
fn pass_rates_carry_a_wilson_interval() {
    use dspex_prompt::evaluate::wilson_interval;
    // Reference values of the 95% Wilson score interval (z = 1.96).
    for (passed, total, low, high) in [
        (2, 4, 0.1500, 0.8500),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 100, 0.7222, 0.8749),
    ] {
        let [l, h] = wilson_interval(passed, total);
        assert!(
            (l - low).abs() < 5e-4 && (h - high).abs() < 5e-4,
            "{passed}/{total}: [{l}, {h}]"
        );
    }
    assert_eq!(wilson_interval(0, 0), [0.0, 1.0]);
}
