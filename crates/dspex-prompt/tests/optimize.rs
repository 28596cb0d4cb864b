//! LabeledFewShot and BootstrapFewShot end to end: with scripted replies where
//! some teacher runs pass the metric and some fail, and against the mock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::{Arc, Mutex};

use dspex_client::config::RawProvider;
use dspex_client::{ChatRequest, Client, ClientConfig, ProviderConfig, ScriptedLm};
use dspex_mock::{MockConfig, MockServer, Script};
use dspex_prompt::optimize::PredictorDemos;
use dspex_prompt::{
    BootstrapFewShot, ChainOfThought, Example, Inputs, LabeledFewShot, Lm, Metric, Predict,
    PromptError, Signature, load_program, save_program,
};
use serde_json::{Value, json};

const WORDS: [&str; 6] = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];

fn map(value: Value) -> Inputs {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn example(question: &str, answer: &str) -> Example {
    Example {
        inputs: map(json!({"question": question})),
        outputs: map(json!({"answer": answer})),
    }
}

/// Question `word?`, labelled answer `WORD`.
fn trainset() -> Vec<Example> {
    WORDS
        .iter()
        .map(|w| example(&format!("{w}?"), &w.to_uppercase()))
        .collect()
}

async fn scripted(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("dummy", lm).await.unwrap();
    client
}

fn asked(request: &ChatRequest) -> &'static str {
    let last = &request.messages.last().unwrap().content;
    WORDS
        .iter()
        .find(|w| last.contains(&format!("{w}?")))
        .copied()
        .unwrap_or("none")
}

/// The teacher: right (with a trailing "!", which exact match ignores, so a
/// bootstrapped demo can be told from a labelled one) for alpha, charlie,
/// echo and foxtrot; wrong for bravo; a provider error for delta. Records any
/// call whose demos contain the question being asked.
fn teacher_lm(leaks: Arc<Mutex<Vec<String>>>) -> ScriptedLm {
    ScriptedLm::from_fn(move |request| {
        let word = asked(request);
        let earlier = &request.messages[..request.messages.len() - 1];
        if earlier
            .iter()
            .any(|m| m.content.contains(&format!("{word}?")))
        {
            leaks.lock().unwrap().push(word.to_owned());
        }
        match word {
            "bravo" => Ok("[[ ## answer ## ]]\nwrong\n\n[[ ## completed ## ]]".into()),
            "delta" => Err("delta is down".into()),
            other => Ok(format!(
                "[[ ## answer ## ]]\n{}!\n\n[[ ## completed ## ]]",
                other.to_uppercase()
            )),
        }
    })
}

fn teacher_demo(word: &str) -> Example {
    example(&format!("{word}?"), &format!("{}!", word.to_uppercase()))
}

fn labelled_demo(word: &str) -> Example {
    example(&format!("{word}?"), &word.to_uppercase())
}

#[tokio::test]
async fn bootstrap_keeps_exactly_the_passing_demos_and_fills_up_with_labels() {
    let leaks = Arc::new(Mutex::new(Vec::new()));
    let lm = teacher_lm(Arc::clone(&leaks));
    let client = scripted(lm.clone()).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let optimizer = BootstrapFewShot {
        max_errors: None,
        ..BootstrapFewShot::new(Metric::exact_match())
            .max_bootstrapped_demos(4)
            .max_labeled_demos(16)
            .with_concurrency(3)
    };
    let (compiled, report) = optimizer
        .compile(&student, None, &trainset())
        .await
        .unwrap();
    // alpha, charlie, echo and foxtrot passed; bravo failed; delta errored.
    assert_eq!(
        (report.tried, report.passed, report.failed, report.errored),
        (6, 4, 1, 1)
    );
    assert_eq!(report.bootstrapped, [0, 2, 4, 5]);
    assert!(!report.stopped_early);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].index, 3);
    assert!(report.errors[0].error.contains("delta is down"));
    // The bootstrapped demos are the teacher's own outputs ("!"), then the
    // labelled examples that were not bootstrapped, up to 16 in all.
    let demos = compiled.demos().to_vec();
    assert_eq!(
        demos,
        [
            teacher_demo("alpha"),
            teacher_demo("charlie"),
            teacher_demo("echo"),
            teacher_demo("foxtrot"),
            labelled_demo("bravo"),
            labelled_demo("delta"),
        ]
    );
    assert_eq!(
        report.predictors["predict"],
        PredictorDemos {
            bootstrapped: vec![0, 2, 4, 5],
            labeled: vec![1, 3],
        }
    );
    // The default teacher had labelled demos, but never the example it was
    // answering; the student itself is untouched.
    assert!(leaks.lock().unwrap().is_empty(), "{leaks:?}");
    assert!(student.demos().is_empty());
    assert!(report.usage.input_tokens > 0);
    assert_eq!(report.calls, 5);
}

#[tokio::test]
async fn bootstrap_stops_early_and_follows_dspys_fill_up_rule() {
    let lm = teacher_lm(Arc::new(Mutex::new(Vec::new())));
    let client = scripted(lm.clone()).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    // Two bootstrapped demos are enough: alpha passes, bravo fails, charlie
    // passes, and nothing after charlie is run. max_labeled_demos 3 leaves
    // room for one labelled demo: the first example not bootstrapped.
    let optimizer = BootstrapFewShot::new(Metric::exact_match())
        .max_bootstrapped_demos(2)
        .max_labeled_demos(3)
        .with_concurrency(1);
    let (compiled, report) = optimizer
        .compile(&student, None, &trainset())
        .await
        .unwrap();
    assert_eq!((report.tried, report.passed, report.failed), (3, 2, 1));
    assert!(report.stopped_early);
    assert_eq!(lm.calls(), 3, "no example after the second pass was run");
    assert_eq!(
        compiled.demos(),
        [
            teacher_demo("alpha"),
            teacher_demo("charlie"),
            labelled_demo("bravo")
        ]
    );
    // max_labeled_demos below the bootstrapped count leaves no labelled room.
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match())
        .max_bootstrapped_demos(2)
        .max_labeled_demos(1)
        .compile(&student, Some(&student), &trainset())
        .await
        .unwrap();
    assert_eq!(
        compiled.demos(),
        [teacher_demo("alpha"), teacher_demo("charlie")]
    );
    assert!(report.predictors["predict"].labeled.is_empty());
    // No bootstrapping at all: only labelled demos, and the teacher never ran.
    let before = lm.calls();
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match())
        .max_bootstrapped_demos(0)
        .max_labeled_demos(2)
        .compile(&student, None, &trainset())
        .await
        .unwrap();
    assert_eq!(lm.calls(), before);
    assert_eq!(report.tried, 0);
    assert_eq!(
        compiled.demos(),
        [labelled_demo("alpha"), labelled_demo("bravo")]
    );
}

#[tokio::test]
async fn bootstrap_is_deterministic_whatever_the_concurrency() {
    let client = scripted(teacher_lm(Arc::new(Mutex::new(Vec::new())))).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let mut seen = Vec::new();
    for concurrency in [1, 2, 6] {
        let (compiled, report) = BootstrapFewShot::new(Metric::exact_match())
            .max_bootstrapped_demos(3)
            .max_labeled_demos(5)
            .with_concurrency(concurrency)
            .compile(&student, None, &trainset())
            .await
            .unwrap();
        seen.push((compiled.demos().to_vec(), report.predictors));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[0].1["predict"].bootstrapped, [0, 2, 4]);
    assert_eq!(seen[0].1["predict"].labeled, [1, 3]);
}

#[tokio::test]
async fn too_many_errors_fail_compilation_and_an_empty_trainset_is_refused() {
    let client = scripted(ScriptedLm::from_fn(|_| Err("upstream is down".into()))).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let optimizer = BootstrapFewShot {
        max_errors: Some(2),
        ..BootstrapFewShot::new(Metric::exact_match()).with_concurrency(1)
    };
    let error = optimizer
        .compile(&student, None, &trainset())
        .await
        .unwrap_err();
    assert!(matches!(error, PromptError::Client(_)), "{error:?}");
    assert!(error.to_string().contains("upstream is down"), "{error}");
    let error = optimizer.compile(&student, None, &[]).await.unwrap_err();
    assert!(
        matches!(&error, PromptError::Optimize { message } if message.contains("empty")),
        "{error:?}"
    );
}

#[tokio::test]
async fn later_rounds_run_hotter_and_can_pass() {
    // Round 0 (default temperature) is wrong; round 1 runs at temperature
    // 1.0 and is right.
    let lm = ScriptedLm::from_fn(|request| {
        let answer = if request.params.temperature == Some(1.0) {
            asked(request).to_uppercase()
        } else {
            "cold".to_owned()
        };
        Ok(format!(
            "[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"
        ))
    });
    let client = scripted(lm.clone()).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let trainset = &trainset()[..2];
    let one_round = BootstrapFewShot::new(Metric::exact_match())
        .compile(&student, None, trainset)
        .await
        .unwrap()
        .1;
    assert_eq!((one_round.passed, one_round.failed), (0, 2));
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match())
        .max_rounds(2)
        .compile(&student, None, trainset)
        .await
        .unwrap();
    assert_eq!((report.passed, report.attempts), (2, 4));
    assert_eq!(report.bootstrapped, [0, 1]);
    assert_eq!(
        compiled.demos(),
        [labelled_demo("alpha"), labelled_demo("bravo")]
    );
    assert!(report.predictors["predict"].labeled.is_empty());
    // The compiled student keeps its own settings (temperature unset).
    assert_eq!(compiled.state().settings.temperature, None);
}

#[tokio::test]
async fn chain_of_thought_demos_keep_the_reasoning_and_save_to_json() {
    let lm = ScriptedLm::from_fn(|request| {
        let word = asked(request);
        let answer = if word == "bravo" {
            "nope".to_owned()
        } else {
            word.to_uppercase()
        };
        Ok(format!(
            "[[ ## reasoning ## ]]\nThe answer to {word} is obvious.\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"
        ))
    });
    let client = scripted(lm).await;
    let signature = Signature::parse("question -> answer").unwrap();
    let student = ChainOfThought::new(signature.clone(), Lm::new(&client, "dummy"));
    let trainset = &trainset()[..3];
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match().field("answer"))
        .max_labeled_demos(3)
        .compile(&student, None, trainset)
        .await
        .unwrap();
    assert_eq!(report.bootstrapped, [0, 2]);
    let demos = compiled.predict().demos();
    assert_eq!(demos.len(), 3);
    assert_eq!(
        demos[0].outputs,
        map(json!({"reasoning": "The answer to alpha is obvious.", "answer": "ALPHA"}))
    );
    assert_eq!(demos[1].inputs, map(json!({"question": "charlie?"})));
    // The labelled fill-up has no reasoning: the example has none.
    assert_eq!(demos[2], labelled_demo("bravo"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("compiled.json");
    save_program(&compiled, &path).unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        saved["predictors"]["predict"]["demos"][0]["outputs"]["reasoning"],
        "The answer to alpha is obvious."
    );
    let mut fresh = ChainOfThought::new(signature, Lm::new(&client, "dummy"));
    load_program(&mut fresh, &path).unwrap();
    assert_eq!(fresh.predict().state(), compiled.predict().state());
    // system + 3 demo pairs + the question
    let messages = fresh.predict().messages(&map(json!({"question": "golf?"})));
    assert_eq!(messages.len(), 8);
}

#[tokio::test]
async fn labeled_few_shot_takes_the_first_k_or_a_seeded_sample() {
    let client = scripted(ScriptedLm::replies(["unused"])).await;
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let trainset = trainset();
    let first = LabeledFewShot::new(2).compile(&student, &trainset);
    assert_eq!(
        first.demos(),
        [labelled_demo("alpha"), labelled_demo("bravo")]
    );
    assert!(student.demos().is_empty());
    let all = LabeledFewShot::new(100).compile(&student, &trainset);
    assert_eq!(all.demos(), trainset.as_slice());

    let sampled = LabeledFewShot::new(3)
        .with_seed(7)
        .compile(&student, &trainset);
    let again = LabeledFewShot::new(3)
        .with_seed(7)
        .compile(&student, &trainset);
    assert_eq!(
        sampled.demos(),
        again.demos(),
        "the same seed, the same demos"
    );
    assert_eq!(sampled.demos().len(), 3);
    assert!(sampled.demos().iter().all(|d| trainset.contains(d)));
    let firsts: Vec<Vec<Example>> = (0..8)
        .map(|seed| {
            LabeledFewShot::new(3)
                .with_seed(seed)
                .compile(&student, &trainset)
                .demos()
                .to_vec()
        })
        .collect();
    assert!(
        firsts.iter().any(|d| d != first.demos() && d.len() == 3),
        "a seeded sample is not always the first k"
    );

    // Demos keep only the predictor's fields; an example without the input
    // is skipped.
    let extra = vec![
        Example {
            inputs: map(json!({"other": "x"})),
            outputs: map(json!({"answer": "A"})),
        },
        Example {
            inputs: map(json!({"question": "q?"})),
            outputs: map(json!({"answer": "A", "note": "not a field"})),
        },
    ];
    let fitted = LabeledFewShot::new(2).compile(&student, &extra);
    assert_eq!(fitted.demos(), [example("q?", "A")]);
}

#[tokio::test]
async fn bootstrap_against_the_mock_with_scripted_replies() {
    // Rules keyed on the question: the teacher (the student itself, no demos)
    // is right on alpha and charlie and wrong on bravo, over loopback.
    let script = Script::default()
        .rule(
            "alpha?",
            "[[ ## answer ## ]]\nALPHA\n\n[[ ## completed ## ]]",
        )
        .rule(
            "bravo?",
            "[[ ## answer ## ]]\nwrong\n\n[[ ## completed ## ]]",
        )
        .rule(
            "charlie?",
            "[[ ## answer ## ]]\nCharlie.\n\n[[ ## completed ## ]]",
        );
    let upstream = MockServer::start(MockConfig::default().with_script(script))
        .await
        .unwrap();
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
    let student = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "mock"),
    );
    let trainset = &trainset()[..3];
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match())
        .compile(&student, Some(&student), trainset)
        .await
        .unwrap();
    assert_eq!((report.passed, report.failed, report.errored), (2, 1, 0));
    assert_eq!(
        compiled.demos(),
        [
            example("alpha?", "ALPHA"),
            example("charlie?", "Charlie."),
            labelled_demo("bravo")
        ]
    );
    assert_eq!(upstream.stats().requests, 3);
}
