//! The optimisation engine and the prompt optimisers on scripted LMs whose
//! best prompt is known to the test but not given to the optimiser: each
//! must find it, reproducibly, within its budget, surviving failures, and a
//! killed run must resume to the same result.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dspex_client::{ChatRequest, Client, ClientConfig, ScriptedLm};
use dspex_prompt::evaluate::Judgement;
use dspex_prompt::optimize::RandomSearch;
use dspex_prompt::optimize::engine::{Budget, Engine, EngineConfig, Split, StopReason};
use dspex_prompt::{Example, Inputs, Lm, Metric, Module, Predict, Signature, program_state};
use serde_json::{Value, json};

fn map(value: Value) -> Inputs {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Reviews with a label; review 7 is the one sarcastic example.
fn reviews(n: usize, offset: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let index = i + offset;
            let positive = index.is_multiple_of(2);
            let review = if index == 7 {
                "Oh great, another SARCASM-CUE blender that broke on day one.".to_owned()
            } else if positive {
                format!("Review {index}: I liked it.")
            } else {
                format!("Review {index}: I did not like it.")
            };
            Example {
                inputs: map(json!({"review": review})),
                outputs: map(json!({"sentiment": if positive { "positive" } else { "negative" }})),
            }
        })
        .collect()
}

fn reply(sentiment: &str) -> String {
    format!("[[ ## sentiment ## ]]\n{sentiment}\n\n[[ ## completed ## ]]")
}

/// The right sentiment of the review in the last user message.
fn truth(request: &ChatRequest) -> &'static str {
    let last = &request.messages.last().unwrap().content;
    if last.contains("did not like") || last.contains("SARCASM-CUE") {
        "negative"
    } else {
        "positive"
    }
}

/// Right only when the prompt (demos included) holds the sarcastic example:
/// the demo set that contains it is the known-best one.
fn needs_the_sarcasm_demo(request: &ChatRequest) -> Result<String, String> {
    let prompt: String = request
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    Ok(reply(if prompt.contains("SARCASM-CUE") {
        truth(request)
    } else {
        "positive"
    }))
}

async fn client_with(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("lm", lm).await.unwrap();
    client
}

fn student(client: &Client) -> Predict {
    Predict::new(
        Signature::parse("review -> sentiment").unwrap(),
        Lm::new(client, "lm"),
    )
}

fn config(seed: u64) -> EngineConfig {
    EngineConfig {
        seed,
        concurrency: 4,
        ..EngineConfig::default()
    }
}

fn search() -> RandomSearch {
    RandomSearch {
        max_labeled_demos: 2,
        num_candidate_programs: 6,
        ..RandomSearch::default()
    }
}

#[tokio::test]
async fn the_engine_never_runs_a_rollout_twice() {
    let lm = ScriptedLm::from_fn(needs_the_sarcasm_demo);
    let client = client_with(lm.clone()).await;
    let engine = Engine::new(
        student(&client),
        Metric::exact_match(),
        reviews(10, 0),
        reviews(6, 10),
        config(1),
    )
    .unwrap();
    let state = engine.initial_state();
    let first = engine.evaluate(&state, Split::Val, &[0, 1, 2]).await;
    let again = engine.evaluate(&state, Split::Val, &[2, 1, 0, 3]).await;
    assert!(first.complete && again.complete);
    assert_eq!(lm.calls(), 4, "three cached, one new");
    assert_eq!(engine.spend().task.calls, 4);
    assert_eq!(
        again.rollouts[0].example, 2,
        "results come in the order asked for"
    );
    assert_eq!(again.rollouts[0].score, first.rollouts[2].score);
}

#[tokio::test]
async fn random_search_finds_the_demo_set_that_matters() {
    let client = client_with(ScriptedLm::from_fn(needs_the_sarcasm_demo)).await;
    let engine = Engine::new(
        student(&client),
        Metric::exact_match(),
        reviews(10, 0),
        reviews(8, 10),
        config(7),
    )
    .unwrap();
    let (program, report) = search().compile(&engine).await.unwrap();
    let best = report.best.clone().unwrap();
    let baseline = report.baseline.clone().unwrap();
    assert_eq!(best.score, 1.0, "{report:#?}");
    assert!(baseline.score < best.score);
    assert!(best.ci95[0] <= best.score && best.score <= best.ci95[1]);
    let demos = program.predictors()[0].1.demos().to_vec();
    assert!(
        demos
            .iter()
            .any(|d| d.inputs["review"].as_str().unwrap().contains("SARCASM-CUE")),
        "{demos:?}"
    );
    assert_eq!(report.stopped, StopReason::Finished);
    assert_eq!(report.trials.len(), 4 + 6);
    assert!(report.spend.task.calls > 0 && report.spend.proposal.calls == 0);
}

#[tokio::test]
async fn the_same_seed_gives_byte_identical_programs() {
    let mut saved = Vec::new();
    for _ in 0..2 {
        let client = client_with(ScriptedLm::from_fn(needs_the_sarcasm_demo)).await;
        let engine = Engine::new(
            student(&client),
            Metric::exact_match(),
            reviews(10, 0),
            reviews(8, 10),
            config(11),
        )
        .unwrap();
        let (program, _) = search().compile(&engine).await.unwrap();
        saved.push(serde_json::to_string(&program_state(&program)).unwrap());
    }
    assert_eq!(saved[0], saved[1]);
}

#[tokio::test]
async fn a_spent_budget_ends_the_run_with_the_best_so_far() {
    let lm = ScriptedLm::from_fn(needs_the_sarcasm_demo);
    let client = client_with(lm.clone()).await;
    let engine = Engine::new(
        student(&client),
        Metric::exact_match(),
        reviews(10, 0),
        reviews(8, 10),
        EngineConfig {
            budget: Budget {
                max_calls: Some(20),
                ..Budget::default()
            },
            ..config(3)
        },
    )
    .unwrap();
    let (program, report) = search().compile(&engine).await.unwrap();
    assert!(
        matches!(&report.stopped, StopReason::Budget(why) if why.contains("max_calls")),
        "{:?}",
        report.stopped
    );
    // Rollouts already in flight may finish; nothing new starts after the
    // limit (concurrency 4).
    assert!(lm.calls() <= 20 + 4, "{}", lm.calls());
    assert!(report.best.is_some(), "the baseline at least was scored");
    assert!(!program.predictors().is_empty());
}

#[tokio::test]
async fn failing_calls_and_a_failing_metric_score_zero_and_the_run_goes_on() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    // Three calls in ten fail.
    let lm = ScriptedLm::from_fn(move |request| {
        if counter.fetch_add(1, Ordering::Relaxed) % 10 < 3 {
            return Err("the provider failed".into());
        }
        needs_the_sarcasm_demo(request)
    });
    let client = client_with(lm).await;
    // The metric errs on one label.
    let metric = Metric::judge("picky", |example, prediction| {
        if example.inputs["review"]
            .as_str()
            .unwrap()
            .contains("Review 12")
        {
            return Err("cannot judge review 12".into());
        }
        let right = example.outputs["sentiment"] == prediction.outputs["sentiment"];
        Ok(Judgement::new(f64::from(u8::from(right)), "compared"))
    });
    let engine = Engine::new(
        student(&client),
        metric,
        reviews(10, 0),
        reviews(8, 10),
        config(5),
    )
    .unwrap();
    let (_, report) = search().compile(&engine).await.unwrap();
    assert_eq!(report.stopped, StopReason::Finished);
    assert_eq!(report.trials.len(), 4 + 6);
    // Review 12's rollouts fail, by the provider or by the metric: each
    // scores 0 with its reason. New candidates (new instructions) until one
    // call gets through to the metric.
    let mut reasons = Vec::new();
    for attempt in 0..6 {
        let mut state = engine.initial_state();
        for predictor in state.predictors.values_mut() {
            predictor.instructions = format!("Attempt {attempt}.");
        }
        let scored = engine.evaluate(&state, Split::Val, &[2]).await;
        assert_eq!(scored.rollouts[0].score, 0.0);
        reasons.push(scored.rollouts[0].error.clone().unwrap());
    }
    assert!(
        reasons.iter().any(|r| r.contains("cannot judge review 12")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("the provider failed")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_killed_run_resumes_to_the_same_program() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("search.ckpt");
    let run = |resume: bool, checkpoint: Option<std::path::PathBuf>| async move {
        let lm = ScriptedLm::from_fn(needs_the_sarcasm_demo);
        let client = client_with(lm.clone()).await;
        let engine = Engine::new(
            student(&client),
            Metric::exact_match(),
            reviews(10, 0),
            reviews(8, 10),
            EngineConfig {
                checkpoint,
                resume,
                ..config(13)
            },
        )
        .unwrap();
        let (program, report) = search().compile(&engine).await.unwrap();
        (
            serde_json::to_string(&program_state(&program)).unwrap(),
            report,
            lm.calls(),
        )
    };
    let (uninterrupted, full_report, full_calls) = run(false, None).await;
    // Kill a run after its third step by dropping its future.
    {
        let path = checkpoint.clone();
        let killed = run(false, Some(checkpoint.clone()));
        tokio::select! {
            _ = killed => panic!("the run finished before it was killed"),
            () = async move {
                loop {
                    if let Ok(text) = std::fs::read_to_string(&path)
                        && let Ok(file) = serde_json::from_str::<Value>(&text)
                        && file["ledger"]["trials"].as_array().is_some_and(|t| t.len() >= 3)
                    {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            } => {}
        }
    }
    let (resumed, report, resumed_calls) = run(true, Some(checkpoint.clone())).await;
    // What the killed run paid for is not paid again.
    assert!(
        resumed_calls < full_calls,
        "{resumed_calls} of {full_calls}"
    );
    // The report's spend counts the killed run's paid work too (not
    // exactly the uninterrupted run's: speculative bootstrap runs started
    // ahead of the stopping point differ with timing).
    assert!(report.spend.task.calls >= resumed_calls);
    assert!(full_report.spend.task.calls > 0);
    assert!(
        report.resumed_trials.is_some_and(|n| n >= 3),
        "{:?}",
        report.resumed_trials
    );
    assert_eq!(resumed, uninterrupted);
    assert_eq!(
        report.trials.len(),
        4 + 6,
        "the report holds the trials before the kill too"
    );
}
