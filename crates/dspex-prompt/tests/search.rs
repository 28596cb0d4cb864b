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

/// Reviews with a label; reviews 3 and 7 are the sarcastic examples.
fn reviews(n: usize, offset: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let index = i + offset;
            let positive = index.is_multiple_of(2);
            let review = if index == 3 || index == 7 {
                format!(
                    "Review {index}: oh great, another SARCASM-CUE blender that broke on day one."
                )
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
    let run = |lm: ScriptedLm, resume: bool, checkpoint: Option<std::path::PathBuf>| async move {
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
    let (uninterrupted, full_report, full_calls) =
        run(ScriptedLm::from_fn(needs_the_sarcasm_demo), false, None).await;
    // A run killed after its third trial leaves exactly the checkpoint it
    // had written by then (writes are atomic). The LM copies that file the
    // first time it is called after the third trial, so the "kill" happens
    // at the same point whatever the scheduling (racing a watcher against
    // the run's future was flaky: an LM that never waits can finish first).
    let written = dir.path().join("written.ckpt");
    {
        let (seen, snapshot) = (written.clone(), checkpoint.clone());
        let lm = ScriptedLm::from_fn(move |request| {
            if !snapshot.exists()
                && let Ok(text) = std::fs::read_to_string(&seen)
                && let Ok(file) = serde_json::from_str::<Value>(&text)
                && file["ledger"]["trials"]
                    .as_array()
                    .is_some_and(|t| t.len() >= 3)
            {
                std::fs::write(&snapshot, text).unwrap();
            }
            needs_the_sarcasm_demo(request)
        });
        run(lm, false, Some(written)).await;
    }
    assert!(
        checkpoint.exists(),
        "the run was never cut after its third trial"
    );
    let (resumed, report, resumed_calls) = run(
        ScriptedLm::from_fn(needs_the_sarcasm_demo),
        true,
        Some(checkpoint.clone()),
    )
    .await;
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
    if resumed != uninterrupted {
        for (a, b) in full_report.trials.iter().zip(&report.trials) {
            eprintln!(
                "{:?} {:?} {:?} | {:?} {:?} {:?}",
                a.candidate, a.score, a.note, b.candidate, b.score, b.note
            );
        }
    }
    assert_eq!(resumed, uninterrupted);
    assert_eq!(
        report.trials.len(),
        4 + 6,
        "the report holds the trials before the kill too"
    );
}

fn instruction_reply(text: &str) -> String {
    format!("[[ ## proposed_instruction ## ]]\n{text}\n\n[[ ## completed ## ]]")
}

/// Right only when the system prompt holds the magic phrase.
fn needs_the_phrase(request: &ChatRequest) -> Result<String, String> {
    let system = &request.messages[0].content;
    Ok(reply(if system.contains("MAGIC-PHRASE") {
        truth(request)
    } else {
        "positive"
    }))
}

/// A prompt model whose `n`th proposal (counting from 0) is the magic one.
fn proposer(magic_at: u64) -> ScriptedLm {
    let count = Arc::new(AtomicU64::new(0));
    ScriptedLm::from_fn(move |_| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        Ok(instruction_reply(&if n == magic_at {
            "Classify the review. MAGIC-PHRASE: sarcasm reverses praise.".to_owned()
        } else {
            format!("Classify the review's sentiment, attempt {n}.")
        }))
    })
}

#[tokio::test]
async fn copro_finds_the_instruction_that_matters() {
    let client = client_with(ScriptedLm::from_fn(needs_the_phrase)).await;
    // The 12th proposal: past round one's nine, so only the rounds that
    // learn from the scored attempts reach it.
    client.add_scripted("prompter", proposer(11)).await.unwrap();
    let engine = Engine::new(
        student(&client),
        Metric::exact_match(),
        reviews(10, 0),
        reviews(8, 10),
        config(2),
    )
    .unwrap();
    let copro = dspex_prompt::optimize::Copro::default();
    let (program, report) = copro
        .compile(&engine, &Lm::new(&client, "prompter"))
        .await
        .unwrap();
    let best = report.best.clone().unwrap();
    assert_eq!(best.score, 1.0, "{:#?}", report.trials);
    assert!(report.baseline.unwrap().score < 1.0);
    let state = program_state(&program);
    assert!(
        state
            .predictors
            .values()
            .next()
            .unwrap()
            .instructions
            .contains("MAGIC-PHRASE")
    );
    assert!(report.spend.proposal.calls >= 10 && report.spend.task.calls > 0);
}

/// A metric whose feedback names what the task needs.
fn feedback_metric() -> Metric {
    Metric::judge("sentiment_with_feedback", |example, prediction| {
        let right = Some(&example.outputs["sentiment"]) == prediction.outputs.get("sentiment");
        Ok(if right {
            Judgement::new(1.0, "Correct.")
        } else {
            Judgement::new(
                0.0,
                format!(
                    "Wrong: the sentiment is {}. The instructions must contain MAGIC-PHRASE.",
                    example.outputs["sentiment"]
                ),
            )
        })
    })
}

/// A prompt model that writes the magic instruction only when what it is
/// given mentions it (GEPA's feedback does; COPRO's attempts never do).
fn feedback_reader() -> ScriptedLm {
    let count = Arc::new(AtomicU64::new(0));
    ScriptedLm::from_fn(move |request| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        let last = &request.messages.last().unwrap().content;
        let text = if last.contains("must contain MAGIC-PHRASE") {
            "Classify the review. MAGIC-PHRASE: read it literally.".to_owned()
        } else {
            format!("Classify the review's sentiment (variant {n}).")
        };
        Ok(format!(
            "[[ ## new_instruction ## ]]\n```\n{text}\n```\n\n[[ ## proposed_instruction ## ]]\n{text}\n\n[[ ## completed ## ]]"
        ))
    })
}

#[tokio::test]
async fn gepa_learns_from_feedback_where_copro_cannot() {
    let run = |gepa: bool| async move {
        let client = client_with(ScriptedLm::from_fn(needs_the_phrase)).await;
        client
            .add_scripted("prompter", feedback_reader())
            .await
            .unwrap();
        let engine = Engine::new(
            student(&client),
            feedback_metric(),
            reviews(10, 0),
            reviews(8, 10),
            config(4),
        )
        .unwrap();
        let lm = Lm::new(&client, "prompter");
        let (program, report) = if gepa {
            dspex_prompt::optimize::Gepa::default()
                .compile(&engine, &lm)
                .await
                .unwrap()
        } else {
            dspex_prompt::optimize::Copro::default()
                .compile(&engine, &lm)
                .await
                .unwrap()
        };
        (program_state(&program), report)
    };
    let (gepa_state, gepa) = run(true).await;
    let (_, copro) = run(false).await;
    let gepa_best = gepa.best.clone().unwrap().score;
    assert_eq!(gepa_best, 1.0, "{:#?}", gepa.trials);
    assert!(
        gepa_state
            .predictors
            .values()
            .next()
            .unwrap()
            .instructions
            .contains("MAGIC-PHRASE")
    );
    assert!(
        copro.best.unwrap().score < gepa_best,
        "GEPA beats COPRO here"
    );
    assert!(gepa.spend.reflection.calls > 0 && gepa.spend.proposal.calls == 0);
    assert!(gepa.trials.iter().any(|t| t.kind == "reflection"));
}

#[tokio::test]
async fn gepa_respects_its_metric_call_budget_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("gepa.ckpt");
    let run = |resume: bool, checkpoint: Option<std::path::PathBuf>| async move {
        let client = client_with(ScriptedLm::from_fn(needs_the_phrase)).await;
        client
            .add_scripted("prompter", feedback_reader())
            .await
            .unwrap();
        let engine = Engine::new(
            student(&client),
            feedback_metric(),
            reviews(10, 0),
            reviews(8, 10),
            EngineConfig {
                checkpoint,
                resume,
                ..config(8)
            },
        )
        .unwrap();
        let gepa = dspex_prompt::optimize::Gepa {
            budget: dspex_prompt::optimize::GepaBudget::MaxMetricCalls(60),
            ..dspex_prompt::optimize::Gepa::default()
        };
        let (program, report) = gepa
            .compile(&engine, &Lm::new(&client, "prompter"))
            .await
            .unwrap();
        (
            serde_json::to_string(&program_state(&program)).unwrap(),
            report,
        )
    };
    let (whole, report) = run(false, None).await;
    // The loop stops once 60 metric calls are made (rollouts, cached or
    // not); the last iteration may finish its own (a minibatch, a child, a
    // valset pass). Every task call is a rollout.
    assert!(
        report.spend.task.calls <= 60 + 3 + 3 + 8,
        "{:?}",
        report.spend
    );
    assert!(report.spend.task.calls >= 8, "{:?}", report.spend);
    {
        let path = checkpoint.clone();
        let killed = run(false, Some(checkpoint.clone()));
        tokio::select! {
            _ = killed => {}
            () = async move {
                loop {
                    if let Ok(text) = std::fs::read_to_string(&path)
                        && let Ok(file) = serde_json::from_str::<Value>(&text)
                        && file["ledger"]["trials"].as_array().is_some_and(|t| t.len() >= 2)
                    {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            } => {}
        }
    }
    let (resumed, _) = run(true, Some(checkpoint)).await;
    assert_eq!(resumed, whole);
}

/// Right only with both the magic instruction and the sarcastic demo.
fn needs_phrase_and_demo(request: &ChatRequest) -> Result<String, String> {
    let system = &request.messages[0].content;
    let prompt: String = request
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    Ok(reply(
        if system.contains("MAGIC-PHRASE") && prompt.contains("SARCASM-CUE") {
            truth(request)
        } else {
            "positive"
        },
    ))
}

/// A prompt model that answers every proposer field; every other
/// instruction it proposes is the magic one.
fn alternating_proposer() -> ScriptedLm {
    let count = Arc::new(AtomicU64::new(0));
    ScriptedLm::from_fn(move |_| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        let text = if n.is_multiple_of(2) {
            format!("Classify the review. MAGIC-PHRASE: mind the demos (variant {n}).")
        } else {
            format!("Classify the review's sentiment (variant {n}).")
        };
        Ok(format!(
            "[[ ## observations ## ]]\nShort product reviews.\n\n[[ ## summary ## ]]\nReviews with a sentiment label.\n\n[[ ## proposed_instruction ## ]]\n{text}\n\n[[ ## completed ## ]]"
        ))
    })
}

#[tokio::test]
async fn mipro_finds_instruction_and_demos_together_where_random_search_cannot() {
    let engine_for = |client: &Client| {
        Engine::new(
            student(client),
            Metric::exact_match(),
            reviews(10, 0),
            reviews(8, 10),
            config(21),
        )
        .unwrap()
    };
    let client = client_with(ScriptedLm::from_fn(needs_phrase_and_demo)).await;
    client
        .add_scripted("prompter", alternating_proposer())
        .await
        .unwrap();
    let engine = engine_for(&client);
    let (program, mipro) = dspex_prompt::optimize::MiproV2::default()
        .compile(&engine, &Lm::new(&client, "prompter"))
        .await
        .unwrap();
    assert_eq!(
        mipro.best.clone().unwrap().score,
        1.0,
        "{:#?}",
        mipro.trials
    );
    let state = program_state(&program);
    let predictor = state.predictors.values().next().unwrap();
    assert!(predictor.instructions.contains("MAGIC-PHRASE"));
    assert!(
        predictor
            .demos
            .iter()
            .any(|d| d.inputs["review"].as_str().unwrap().contains("SARCASM-CUE"))
    );
    assert!(mipro.spend.proposal.calls >= 5 && mipro.spend.task.calls > 0);

    let client = client_with(ScriptedLm::from_fn(needs_phrase_and_demo)).await;
    let (_, random) = search().compile(&engine_for(&client)).await.unwrap();
    assert!(
        random.best.unwrap().score < 1.0,
        "random search cannot change instructions"
    );
}

#[tokio::test]
async fn knn_few_shot_picks_the_nearest_examples_as_demos() {
    let client = client_with(ScriptedLm::from_fn(needs_the_sarcasm_demo)).await;
    let embedder: Arc<dyn dspex_cache::Embedder> = Arc::new(dspex_cache::LexicalEmbedder::new());
    let knn = dspex_prompt::optimize::KnnFewShot::compile(
        &student(&client),
        &reviews(10, 0),
        2,
        Arc::clone(&embedder),
    )
    .await
    .unwrap();
    let sarcastic =
        map(json!({"review": "Wow, a SARCASM-CUE toaster, oh great, broke on day one."}));
    let mut neighbours = knn.neighbours(&sarcastic).await.unwrap();
    neighbours.sort_unstable();
    assert_eq!(neighbours, [3, 7]);
    let prediction = knn.forward(&sarcastic).await.unwrap();
    assert_eq!(prediction.outputs["sentiment"], "negative");
    // Saved and loaded back, it picks the same.
    let state = knn.state();
    let text = serde_json::to_string(&state).unwrap();
    let loaded = dspex_prompt::optimize::KnnFewShot::from_state(
        student(&client),
        serde_json::from_str(&text).unwrap(),
        embedder,
    )
    .await
    .unwrap();
    let mut again = loaded.neighbours(&sarcastic).await.unwrap();
    again.sort_unstable();
    assert_eq!(again, [3, 7]);
}

/// A program of two predictors: a draft, then a check of the draft.
#[derive(Clone)]
struct TwoStep {
    draft: Predict,
    check: Predict,
}

impl Module for TwoStep {
    fn forward_with<'a>(
        &'a self,
        inputs: &'a Inputs,
        run: dspex_prompt::RunContext,
    ) -> futures::future::BoxFuture<'a, dspex_prompt::Result<dspex_prompt::Prediction>> {
        Box::pin(async move {
            let mut draft = self.draft.forward_with(inputs, run.clone()).await?;
            let mut next = inputs.clone();
            next.insert("draft".into(), draft.outputs["draft"].clone());
            let checked = self.check.forward_with(&next, run).await?;
            let outputs = checked.outputs.clone();
            draft.absorb(checked);
            draft.outputs = outputs;
            Ok(draft)
        })
    }

    fn predictors(&self) -> Vec<(String, &Predict)> {
        vec![("draft".into(), &self.draft), ("check".into(), &self.check)]
    }

    fn predictors_mut(&mut self) -> Vec<(String, &mut Predict)> {
        vec![
            ("draft".into(), &mut self.draft),
            ("check".into(), &mut self.check),
        ]
    }
}

/// Drafts always say "positive"; the check is right only with the phrase.
fn two_step_lm(request: &ChatRequest) -> Result<String, String> {
    let system = &request.messages[0].content;
    let last = &request.messages.last().unwrap().content;
    if system.contains("`draft`") && !system.contains("`sentiment`") {
        return Ok("[[ ## draft ## ]]\npositive\n\n[[ ## completed ## ]]".into());
    }
    let right = if last.contains("did not like") || last.contains("SARCASM-CUE") {
        "negative"
    } else {
        "positive"
    };
    Ok(reply(if system.contains("MAGIC-PHRASE") {
        right
    } else {
        "positive"
    }))
}

#[tokio::test]
async fn the_optimizers_compile_multi_predictor_programs_and_chain_of_thought() {
    let build = |client: &Client| TwoStep {
        draft: Predict::new(
            Signature::parse("review -> draft").unwrap(),
            Lm::new(client, "lm"),
        ),
        check: Predict::new(
            Signature::parse("review, draft -> sentiment").unwrap(),
            Lm::new(client, "lm"),
        ),
    };
    for optimizer in ["copro", "mipro", "gepa"] {
        let client = client_with(ScriptedLm::from_fn(two_step_lm)).await;
        client
            .add_scripted(
                "prompter",
                if optimizer == "gepa" {
                    feedback_reader()
                } else {
                    alternating_proposer()
                },
            )
            .await
            .unwrap();
        let engine = Engine::new(
            build(&client),
            if optimizer == "gepa" {
                feedback_metric()
            } else {
                Metric::exact_match()
            },
            reviews(10, 0),
            reviews(8, 10),
            config(9),
        )
        .unwrap();
        let lm = Lm::new(&client, "prompter");
        let (program, report) = match optimizer {
            "copro" => dspex_prompt::optimize::Copro {
                breadth: 3,
                depth: 2,
                ..Default::default()
            }
            .compile(&engine, &lm)
            .await
            .unwrap(),
            "mipro" => dspex_prompt::optimize::MiproV2::default()
                .compile(&engine, &lm)
                .await
                .unwrap(),
            _ => dspex_prompt::optimize::Gepa::default()
                .compile(&engine, &lm)
                .await
                .unwrap(),
        };
        let state = program_state(&program);
        assert_eq!(state.predictors.len(), 2, "{optimizer}");
        let best = report.best.unwrap().score;
        assert!(best >= report.baseline.unwrap().score, "{optimizer}");
        // The saved state loads back into a fresh program.
        let mut fresh = build(&client);
        dspex_prompt::optimize::engine::apply_state(&mut fresh, &state).unwrap();
        assert_eq!(program_state(&fresh), state, "{optimizer}");
    }
    // ChainOfThought: one predictor whose signature gains `reasoning`.
    let client = client_with(ScriptedLm::from_fn(|request| {
        let last = &request.messages.last().unwrap().content;
        let right = if last.contains("did not like") { "negative" } else { "positive" };
        Ok(format!(
            "[[ ## reasoning ## ]]\nLet me think.\n\n[[ ## sentiment ## ]]\n{right}\n\n[[ ## completed ## ]]"
        ))
    }))
    .await;
    let cot = dspex_prompt::ChainOfThought::new(
        Signature::parse("review -> sentiment").unwrap(),
        Lm::new(&client, "lm"),
    );
    let engine = Engine::new(
        cot,
        Metric::exact_match(),
        reviews(10, 0),
        reviews(8, 10),
        config(1),
    )
    .unwrap();
    let (program, report) = search().compile(&engine).await.unwrap();
    assert!(report.best.unwrap().score >= 0.75);
    assert!(
        program_state(&program)
            .predictors
            .values()
            .next()
            .unwrap()
            .signature
            .contains("reasoning")
    );
}
