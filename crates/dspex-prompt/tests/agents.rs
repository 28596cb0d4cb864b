//! Agents and richer modules end to end: ReAct in text mode, BestOfN,
//! Refine, MultiChainComparison, Parallel, multi-turn History and streamed
//! fields, with the scripted in-process LM and the mock upstream over
//! loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dspex_client::config::RawProvider;
use dspex_client::{
    ChatRequest, Client, ClientConfig, ProviderConfig, ResponseCache, Role, ScriptedLm,
    ScriptedToolCall, ScriptedTurn,
};
use dspex_mock::{Fault, MockConfig, MockServer, Script, ScriptRule, ScriptToolCall};
use dspex_prompt::adapter::Adapter;
use dspex_prompt::{
    AgentMode, BestOfN, BootstrapFewShot, ChainOfThought, Example, Inputs, Lm, Metric, Module,
    ModuleEvent, MultiChainComparison, Parallel, Predict, PromptError, ReAct, Refine, RunContext,
    Signature, Tool,
};
use futures::StreamExt;
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

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    /// The first term.
    a: i64,
    /// The second term.
    b: i64,
}

fn add_tool() -> Tool {
    Tool::typed("add", "Adds two integers.", |args: AddArgs| async move {
        Ok::<_, String>(args.a + args.b)
    })
    .unwrap()
}

/// The text of every message of a request, joined.
fn prompt_of(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn last_user(request: &ChatRequest) -> &str {
    request.messages.last().map_or("", |m| m.content.as_str())
}

const STEP_ADD: &str = "[[ ## next_thought ## ]]\nI should add them.\n[[ ## next_tool_name ## ]]\nadd\n[[ ## next_tool_args ## ]]\n{\"a\": 2, \"b\": 3}\n[[ ## completed ## ]]";
const STEP_FINISH: &str = "[[ ## next_thought ## ]]\nI have the sum.\n[[ ## next_tool_name ## ]]\nfinish\n[[ ## next_tool_args ## ]]\n{}\n[[ ## completed ## ]]";
const EXTRACT: &str =
    "[[ ## reasoning ## ]]\nThe tool said 5.\n[[ ## answer ## ]]\n5\n[[ ## completed ## ]]";

/// A text-mode agent's LM: add, then finish once an observation is in the
/// trajectory, then the extraction.
fn text_agent_lm(prompts: Arc<Mutex<Vec<String>>>) -> ScriptedLm {
    ScriptedLm::from_fn(move |request| {
        let last = last_user(request).to_owned();
        prompts.lock().unwrap().push(prompt_of(request));
        Ok(if last.contains("`[[ ## reasoning ## ]]`") {
            EXTRACT.to_owned()
        } else if last.contains("[[ ## observation_0 ## ]]") {
            STEP_FINISH.to_owned()
        } else {
            STEP_ADD.to_owned()
        })
    })
}

#[tokio::test]
async fn text_react_calls_a_tool_then_extracts_the_answer() {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let client = scripted(text_agent_lm(prompts.clone())).await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text);
    assert_eq!(agent.resolved_mode(), AgentMode::Text);
    let prediction = agent
        .forward(&inputs(json!({"question": "What is 2 + 3?"})))
        .await
        .unwrap();
    assert_eq!(prediction.get::<i64>("answer").unwrap(), 5);
    assert_eq!(prediction.text("reasoning"), Some("The tool said 5."));
    let trajectory = prediction.trajectory.as_ref().unwrap();
    assert!(trajectory.finished);
    assert_eq!(trajectory.steps.len(), 2);
    let first = &trajectory.steps[0];
    assert_eq!(first.thought, "I should add them.");
    assert_eq!(first.calls[0].tool, "add");
    assert_eq!(first.calls[0].arguments, json!({"a": 2, "b": 3}));
    assert_eq!(first.calls[0].observation, "5");
    assert!(first.calls[0].error.is_none());
    assert_eq!(trajectory.steps[1].calls[0].tool, "finish");
    assert_eq!(trajectory.steps[1].calls[0].observation, "Completed.");
    // Three LM calls: two steps and the extraction; each step names its call.
    assert_eq!(prediction.trace.len(), 3);
    assert_eq!(first.lm_call, Some(0));
    assert_eq!(trajectory.steps[1].lm_call, Some(1));
    let prompts = prompts.lock().unwrap();
    assert!(
        prompts[0].contains("(1) add, whose description is <desc>Adds two integers.</desc>"),
        "{}",
        prompts[0]
    );
    assert!(prompts[0].contains("(2) finish, whose description is"));
    assert!(prompts[1].contains("[[ ## tool_args_0 ## ]]\n{\"a\":2,\"b\":3}"));
    assert!(prompts[1].contains("[[ ## observation_0 ## ]]\n5"));
    assert!(prompts[2].contains("[[ ## trajectory ## ]]"));
    // The trajectory is part of the prediction's JSON.
    let saved = serde_json::to_value(&prediction).unwrap();
    assert_eq!(saved["trajectory"]["steps"][0]["calls"][0]["tool"], "add");
}

#[tokio::test]
async fn a_failing_tool_is_an_observation_and_the_agent_goes_on() {
    let failing = Tool::new(
        "add",
        "Adds two integers.",
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
        |_args: Value| async move { Err::<Value, _>("the adder is broken") },
    )
    .unwrap();
    let client = scripted(text_agent_lm(Arc::default())).await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![failing],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text);
    let prediction = agent
        .forward(&inputs(json!({"question": "What is 2 + 3?"})))
        .await
        .unwrap();
    let call = &prediction.trajectory.as_ref().unwrap().steps[0].calls[0];
    assert_eq!(call.error.as_deref(), Some("the adder is broken"));
    assert_eq!(
        call.observation,
        "Execution error in add: the adder is broken"
    );
    assert_eq!(prediction.get::<i64>("answer").unwrap(), 5);
}

#[tokio::test]
async fn an_agent_that_never_finishes_stops_at_max_iters_and_still_answers() {
    let client = scripted(ScriptedLm::from_fn(|request| {
        Ok(if last_user(request).contains("`[[ ## reasoning ## ]]`") {
            EXTRACT.to_owned()
        } else {
            STEP_ADD.to_owned()
        })
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text)
    .max_iters(3);
    let prediction = agent
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap();
    let trajectory = prediction.trajectory.unwrap();
    assert!(!trajectory.finished);
    assert_eq!(trajectory.steps.len(), 3);
    assert_eq!(prediction.trace.len(), 4);
    assert_eq!(prediction.outputs["answer"], 5);
}

#[tokio::test]
async fn the_oldest_steps_are_dropped_when_the_context_window_is_exceeded() {
    let step_prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = step_prompts.clone();
    // A model whose context holds at most two earlier steps.
    let client = scripted(ScriptedLm::from_fn(move |request| {
        let last = last_user(request).to_owned();
        let steps = last.matches("[[ ## observation_").count();
        if steps > 2 {
            return Err("This model's maximum context length is 100 tokens.".to_owned());
        }
        if last.contains("`[[ ## reasoning ## ]]`") {
            return Ok(EXTRACT.to_owned());
        }
        seen.lock().unwrap().push(last);
        Ok(STEP_ADD.to_owned())
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text)
    .max_iters(5);
    let prediction = agent
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap();
    let trajectory = prediction.trajectory.as_ref().unwrap();
    assert_eq!(trajectory.steps.len(), 5);
    assert_eq!(
        trajectory.truncated, 3,
        "steps 3 and 4 each dropped one, and the extraction (after step 5) one more"
    );
    {
        let prompts = step_prompts.lock().unwrap();
        let last = prompts.last().unwrap();
        assert!(!last.contains("[[ ## thought_0 ## ]]") && !last.contains("[[ ## thought_1 ## ]]"));
        assert!(last.contains("[[ ## thought_2 ## ]]") && last.contains("[[ ## thought_3 ## ]]"));
    }

    // With no truncation allowed, the error reaches the caller.
    let strict = agent.clone().max_truncations(0);
    let error = strict
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap_err();
    let PromptError::Client(error) = error else {
        panic!("{error}")
    };
    assert!(error.is_context_window_exceeded());
}

#[tokio::test]
async fn react_streams_its_steps_then_the_answer() {
    let client = scripted(text_agent_lm(Arc::default())).await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text);
    let question = inputs(json!({"question": "What is 2 + 3?"}));
    let events: Vec<ModuleEvent> = agent.stream(&question).map(Result::unwrap).collect().await;
    let steps: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            ModuleEvent::Step(step) => Some(step.calls[0].tool.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(steps, ["add", "finish"]);
    let answer: String = events
        .iter()
        .filter_map(|e| match e {
            ModuleEvent::Field { field, text } if field == "answer" => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(answer, "5");
    let Some(ModuleEvent::Done(prediction)) = events.last() else {
        panic!("the prediction comes last: {events:?}")
    };
    assert_eq!(prediction.outputs["answer"], 5);
}

#[tokio::test]
async fn bootstrap_few_shot_compiles_a_react_program() {
    let client = scripted(text_agent_lm(Arc::default())).await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap()
    .mode(AgentMode::Text);
    let trainset = vec![Example {
        inputs: inputs(json!({"question": "What is 2 + 3?"})),
        outputs: inputs(json!({"answer": 5})),
    }];
    let (compiled, report) = BootstrapFewShot::new(Metric::exact_match().field("answer"))
        .max_labeled_demos(0)
        .compile(&agent, None, &trainset)
        .await
        .unwrap();
    assert_eq!(report.bootstrapped, [0], "{report:?}");
    let predictors = compiled.predictors();
    let (name, react) = &predictors[0];
    assert_eq!(name, "react");
    // One of the successful run's steps is a demo of the step predictor
    // (DSPy keeps one per predictor and example).
    assert_eq!(react.demos().len(), 1);
    let demo = &react.demos()[0];
    assert!(demo.inputs.contains_key("trajectory"));
    let tool = demo.outputs["next_tool_name"].as_str().unwrap();
    assert!(tool == "add" || tool == "finish", "{demo:?}");
    assert_eq!(predictors[1].1.demos().len(), 1, "the extraction step too");
}

#[tokio::test]
async fn best_of_n_returns_the_first_attempt_that_reaches_the_threshold() {
    let counter = Arc::new(AtomicUsize::new(0));
    let temperatures = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (counter.clone(), temperatures.clone());
    let client = scripted(ScriptedLm::from_fn(move |request| {
        seen.lock().unwrap().push(request.params.temperature);
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("[[ ## answer ## ]]\n{n}\n[[ ## completed ## ]]"))
    }))
    .await;
    client
        .set_cache(
            ResponseCache::builder()
                .l1(1_000, 1 << 24)
                .build()
                .await
                .unwrap(),
        )
        .unwrap();
    let predict = Predict::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let reward = |_: &Inputs, p: &dspex_prompt::Prediction| {
        if p.outputs["answer"] == 3 { 1.0 } else { 0.0 }
    };
    let best = BestOfN::new(predict, 5, reward, 1.0).concurrency(1);
    let question = inputs(json!({"question": "q"}));
    let prediction = best.forward(&question).await.unwrap();
    assert_eq!(prediction.outputs["answer"], 3);
    assert_eq!(
        counter.load(Ordering::SeqCst),
        3,
        "stops at the first good one"
    );
    assert_eq!(
        prediction.trace.len(),
        3,
        "every attempt's call is accounted for"
    );
    assert!(temperatures.lock().unwrap().iter().all(|t| *t == Some(1.0)));
    // Each attempt has its own rollout id, so the cache keeps them apart and
    // the same program run again gets the same attempts from it.
    let again = best.forward(&question).await.unwrap();
    assert_eq!(again.outputs["answer"], 3);
    assert_eq!(counter.load(Ordering::SeqCst), 3, "served by the cache");
    assert!(again.trace.iter().all(|call| call.cached));

    // With none good enough, the best is returned; all attempts ran
    // concurrently.
    counter.store(0, Ordering::SeqCst);
    let reward = |_: &Inputs, p: &dspex_prompt::Prediction| {
        -(p.outputs["answer"].as_i64().unwrap() - 2).abs() as f64
    };
    let best = BestOfN::new(best.module().clone(), 3, reward, 1.0);
    let prediction = best
        .forward(&inputs(json!({"question": "other"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 2);
    assert_eq!(prediction.trace.len(), 3);
}

#[tokio::test]
async fn best_of_n_fails_only_when_every_attempt_fails() {
    let client = scripted(ScriptedLm::map([("never", "x")])).await;
    let predict = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let best = BestOfN::new(
        predict,
        3,
        |_: &Inputs, _: &dspex_prompt::Prediction| 1.0,
        1.0,
    );
    let error = best
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap_err();
    assert!(matches!(error, PromptError::Client(_)), "{error}");
}

#[tokio::test]
async fn refine_feeds_advice_from_a_failed_attempt_into_the_next() {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = prompts.clone();
    let client = scripted(ScriptedLm::from_fn(move |request| {
        let last = last_user(request).to_owned();
        seen.lock().unwrap().push(last.clone());
        Ok(if last.contains("[[ ## reward_value ## ]]") {
            "[[ ## discussion ## ]]\nThe answer was wrong.\n[[ ## advice ## ]]\nAnswer 42.\n[[ ## completed ## ]]".to_owned()
        } else if last.contains("[[ ## hint_ ## ]]\nAnswer 42.") {
            "[[ ## answer ## ]]\n42\n[[ ## completed ## ]]".to_owned()
        } else {
            "[[ ## answer ## ]]\n1\n[[ ## completed ## ]]".to_owned()
        })
    }))
    .await;
    let predict = Predict::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let reward = |_: &Inputs, p: &dspex_prompt::Prediction| {
        if p.outputs["answer"] == 42 { 1.0 } else { 0.0 }
    };
    let refine = Refine::new(predict, 3, reward, 1.0);
    let prediction = refine
        .forward(&inputs(json!({"question": "What is the answer?"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 42);
    // Attempt, advice, attempt with the hint.
    assert_eq!(prediction.trace.len(), 3);
    let prompts = prompts.lock().unwrap();
    assert_eq!(prompts.len(), 3);
    assert!(
        prompts[1].contains("[[ ## program_outputs ## ]]\n{\"answer\":1}"),
        "{}",
        prompts[1]
    );
    assert!(prompts[2].contains("[[ ## question ## ]]\nWhat is the answer?\n\n[[ ## hint_ ## ]]\nAnswer 42.\n\nRespond with"), "{}", prompts[2]);
}

#[tokio::test]
async fn refine_advice_is_about_the_attempt_just_made() {
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let seen = prompts.clone();
    let client = scripted(ScriptedLm::from_fn(move |request| {
        let last = last_user(request).to_owned();
        seen.lock().unwrap().push(last.clone());
        let advice = |text: &str| {
            format!(
                "[[ ## discussion ## ]]\nNo.\n[[ ## advice ## ]]\n{text}\n[[ ## completed ## ]]"
            )
        };
        let answer = |n: i64| format!("[[ ## answer ## ]]\n{n}\n[[ ## completed ## ]]");
        Ok(if last.contains("[[ ## reward_value ## ]]") {
            if last.contains("{\"answer\":1}") {
                advice("Try 2.")
            } else {
                advice("Answer 42.")
            }
        } else if last.contains("[[ ## hint_ ## ]]\nTry 2.") {
            answer(2)
        } else if last.contains("[[ ## hint_ ## ]]\nAnswer 42.") {
            answer(42)
        } else {
            answer(1)
        })
    }))
    .await;
    let predict = Predict::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    // The first attempt stays the best of the two failed ones.
    let reward = |_: &Inputs, p: &dspex_prompt::Prediction| match p.outputs["answer"].as_i64() {
        Some(42) => 1.0,
        Some(1) => 0.5,
        _ => 0.25,
    };
    let prediction = Refine::new(predict, 3, reward, 1.0)
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 42);
    let prompts = prompts.lock().unwrap();
    let advice_prompts: Vec<&String> = prompts
        .iter()
        .filter(|p| p.contains("[[ ## reward_value ## ]]"))
        .collect();
    assert_eq!(advice_prompts.len(), 2);
    assert!(advice_prompts[0].contains("[[ ## reward_value ## ]]\n0.5"));
    // The second advice reads the second attempt and its own reward, not
    // the best score so far.
    assert!(
        advice_prompts[1].contains("{\"answer\":2}")
            && advice_prompts[1].contains("[[ ## reward_value ## ]]\n0.25"),
        "{}",
        advice_prompts[1]
    );
}

#[tokio::test]
async fn multi_chain_comparison_compares_concurrent_attempts() {
    let compare_prompt = Arc::new(Mutex::new(String::new()));
    let seen = compare_prompt.clone();
    let attempt = Arc::new(AtomicUsize::new(0));
    let client = scripted(ScriptedLm::from_fn(move |request| {
        let last = last_user(request).to_owned();
        if last.contains("[[ ## reasoning_attempt_1 ## ]]") {
            *seen.lock().unwrap() = last;
            return Ok("[[ ## rationale ## ]]\nMost said 4.\n[[ ## answer ## ]]\n4\n[[ ## completed ## ]]".to_owned());
        }
        let n = attempt.fetch_add(1, Ordering::SeqCst);
        Ok(format!(
            "[[ ## reasoning ## ]]\nadd two and two (try {n})\nmore\n[[ ## answer ## ]]\n{}\n[[ ## completed ## ]]",
            if n == 0 { 5 } else { 4 }
        ))
    }))
    .await;
    let mcc = MultiChainComparison::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    )
    .unwrap();
    let prediction = mcc
        .forward(&inputs(json!({"question": "2 + 2?"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 4);
    assert_eq!(prediction.text("rationale"), Some("Most said 4."));
    assert_eq!(prediction.trace.len(), 4);
    let prompt = compare_prompt.lock().unwrap();
    assert!(
        prompt.contains("«I'm trying to add two and two (try"),
        "{prompt}"
    );
    assert!(prompt.contains("I'm not sure but my prediction is 4»"));
    assert!(prompt.contains("[[ ## reasoning_attempt_3 ## ]]"));
    assert_eq!(
        mcc.predictors()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["attempts", "compare"]
    );
}

#[tokio::test]
async fn parallel_runs_pairs_with_per_item_results_and_an_error_budget() {
    let client = scripted(ScriptedLm::map([
        ("[[ ## question ## ]]\nok", "[[ ## answer ## ]]\nfine\n[[ ## completed ## ]]"),
        (
            "[[ ## text ## ]]\nok",
            "[[ ## reasoning ## ]]\nIt is short.\n[[ ## summary ## ]]\nshort\n[[ ## completed ## ]]",
        ),
    ]))
    .await;
    let lm = Lm::new(&client, "dummy");
    let answer = Predict::new(Signature::parse("question -> answer").unwrap(), lm.clone());
    let summarise = ChainOfThought::new(Signature::parse("text -> summary").unwrap(), lm);
    let jobs: Vec<(&dyn Module, Inputs)> = vec![
        (&answer, inputs(json!({"question": "ok"}))),
        (&summarise, inputs(json!({"text": "ok"}))),
        (&answer, inputs(json!({"question": "unknown"}))),
    ];
    let results = Parallel::new(2).run(&jobs).await;
    assert_eq!(results.errors, 1);
    assert!(!results.stopped);
    assert_eq!(
        results.results[0]
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .outputs["answer"],
        "fine"
    );
    assert_eq!(
        results.results[1]
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .outputs["summary"],
        "short"
    );
    assert!(results.results[2].as_ref().unwrap().is_err());

    // One error allowed, one at a time: the first failure stops the run.
    let jobs: Vec<(&dyn Module, Inputs)> = vec![
        (&answer, inputs(json!({"question": "unknown"}))),
        (&answer, inputs(json!({"question": "ok"}))),
    ];
    let results = Parallel::new(1).max_errors(1).run(&jobs).await;
    assert!(results.stopped);
    assert!(results.results[1].is_none(), "never started");
    assert!(results.into_predictions().is_err());
}

#[tokio::test]
async fn history_turns_are_real_messages_and_scope_the_semantic_cache() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let client = scripted(ScriptedLm::from_fn(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok("[[ ## answer ## ]]\nParis\n[[ ## completed ## ]]".to_owned())
    }))
    .await;
    client
        .set_cache(
            ResponseCache::builder()
                .l1(1_000, 1 << 24)
                .l3(Arc::new(dspex_cache::LexicalEmbedder::new()))
                .build()
                .await
                .unwrap(),
        )
        .unwrap();
    let signature = Signature::parse("question, history: History -> answer").unwrap();
    let predict = Predict::new(signature.clone(), Lm::new(&client, "dummy"));
    let history = json!({"messages": [
        {"question": "What is the capital of Italy?", "answer": "Rome"},
        {"question": "And of Spain?", "answer": "Madrid"},
    ]});
    let ask =
        |question: &str, history: &Value| inputs(json!({"question": question, "history": history}));
    let messages = predict.messages(&ask("And of France?", &history));
    let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(
        roles,
        ["system", "user", "assistant", "user", "assistant", "user"]
    );
    assert_eq!(
        messages[1].content,
        "[[ ## question ## ]]\nWhat is the capital of Italy?"
    );
    assert_eq!(
        messages[2].content,
        "[[ ## answer ## ]]\nRome\n\n[[ ## completed ## ]]"
    );
    // The history is earlier messages, not a field of the prompt.
    assert!(
        messages[0]
            .content
            .starts_with("Your input fields are:\n1. `question` (str)\nYour output fields are:")
    );
    assert!(!messages[5].content.contains("[[ ## history ## ]]"));

    predict
        .forward(&ask("And what about France?", &history))
        .await
        .unwrap();
    // A paraphrase after the same turns is a semantic hit...
    let hit = predict
        .forward(&ask("and what about france", &history))
        .await
        .unwrap();
    assert!(hit.trace[0].cached);
    // ...but not after other turns, nor with none.
    let other =
        json!({"messages": [{"question": "What is the capital of Peru?", "answer": "Lima"}]});
    let miss = predict
        .forward(&ask("and what about france", &other))
        .await
        .unwrap();
    assert!(!miss.trace[0].cached);
    let first_turn = predict
        .forward(&inputs(json!({"question": "and what about france"})))
        .await
        .unwrap();
    assert!(!first_turn.trace[0].cached);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A history that is not a list of turns is refused before any call.
    let error = predict
        .forward(&inputs(json!({"question": "q", "history": "Rome"})))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("`history`: expected History"),
        "{error}"
    );
    let error = Signature::parse("question -> history: History").unwrap_err();
    assert!(error.to_string().contains("only an input can"), "{error}");
}

/// Every field event's text per field, and the final prediction.
async fn collect_stream(
    module: &dyn Module,
    inputs: &Inputs,
) -> (
    Vec<(String, String)>,
    Result<dspex_prompt::Prediction, PromptError>,
) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut stream = module.stream(inputs);
    while let Some(event) = stream.next().await {
        match event {
            Ok(ModuleEvent::Field { field, text }) => match fields.last_mut() {
                Some((last, so_far)) if *last == field => so_far.push_str(&text),
                _ => fields.push((field, text)),
            },
            Ok(ModuleEvent::Done(prediction)) => {
                assert!(
                    stream.next().await.is_none(),
                    "the prediction is the last event"
                );
                return (fields, Ok(prediction));
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(error) => {
                assert!(stream.next().await.is_none(), "an error ends the stream");
                return (fields, Err(error));
            }
        }
    }
    panic!("the stream ended without a prediction or an error")
}

#[tokio::test]
async fn predict_streams_each_output_field_as_it_arrives() {
    let reply = "[[ ## reasoning ## ]]\nTwo and two make four.\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]";
    let client = scripted(ScriptedLm::replies([reply])).await;
    let cot = ChainOfThought::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let (fields, prediction) = collect_stream(&cot, &inputs(json!({"question": "2+2?"}))).await;
    assert_eq!(
        fields,
        [
            ("reasoning".to_owned(), "Two and two make four.".to_owned()),
            ("answer".to_owned(), "4".to_owned())
        ]
    );
    let prediction = prediction.unwrap();
    assert_eq!(prediction.outputs["answer"], 4);
    assert_eq!(prediction.trace.len(), 1);

    // The JSON adapter streams string values decoded, fields in any order.
    let reply = "```json\n{\"answer\": 4, \"reasoning\": \"Two \\\"and\\\" two.\"}\n```";
    let client = scripted(ScriptedLm::replies([reply])).await;
    let mut cot = ChainOfThought::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "dummy"),
    );
    let predict = cot.predict_mut().clone().with_adapter(Adapter::Json);
    *cot.predict_mut() = predict;
    let (fields, prediction) = collect_stream(&cot, &inputs(json!({"question": "2+2?"}))).await;
    assert_eq!(
        fields,
        [
            ("answer".to_owned(), "4".to_owned()),
            ("reasoning".to_owned(), "Two \"and\" two.".to_owned())
        ]
    );
    assert_eq!(prediction.unwrap().outputs["reasoning"], "Two \"and\" two.");
}

async fn mock_client(upstream: &MockServer) -> Client {
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        max_retries: Some(0),
        ..RawProvider::default()
    };
    let config = ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_provider(config).await.unwrap();
    client
}

#[tokio::test]
async fn a_stream_that_breaks_mid_field_ends_with_an_error_after_the_text_so_far() {
    let long_reasoning = "word ".repeat(40);
    let reply = format!(
        "[[ ## reasoning ## ]]\n{}\n\n[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]",
        long_reasoning.trim()
    );
    let upstream = MockServer::start(MockConfig::default().with_script(Script::replies([reply])))
        .await
        .unwrap();
    let client = mock_client(&upstream).await;
    let cot = ChainOfThought::new(
        Signature::parse("question -> answer: int").unwrap(),
        Lm::new(&client, "mock"),
    );
    // A whole stream first: every field arrives.
    let question = inputs(json!({"question": "2+2?"}));
    let (fields, prediction) = collect_stream(&cot, &question).await;
    assert_eq!(fields[0].1, long_reasoning.trim());
    assert_eq!(prediction.unwrap().outputs["answer"], 4);
    // Then one cut halfway: part of the reasoning, then the error.
    upstream.enqueue([Fault::Truncate]);
    let (fields, prediction) = collect_stream(&cot, &question).await;
    let error = prediction.unwrap_err();
    assert!(error.to_string().contains("ended early"), "{error}");
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert_eq!(fields[0].0, "reasoning");
    assert!(!fields[0].1.is_empty() && long_reasoning.starts_with(&fields[0].1));
    upstream.shutdown().await;
}

fn tool_results(request: &ChatRequest) -> Vec<&str> {
    request
        .messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| m.content.as_str())
        .collect()
}

/// A tool both of whose calls must be in flight at once: each waits for the
/// other at a barrier, so calls run one after the other would time out.
fn rendezvous_tool() -> Tool {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    Tool::typed("add", "Adds two integers.", move |args: AddArgs| {
        let barrier = Arc::clone(&barrier);
        async move {
            barrier.wait().await;
            Ok::<_, String>(args.a + args.b)
        }
    })
    .unwrap()
    .with_timeout(std::time::Duration::from_secs(10))
}

#[tokio::test]
async fn native_react_runs_a_turns_calls_concurrently_and_answers_with_finish() {
    let requests = Arc::new(Mutex::new(Vec::<ChatRequest>::new()));
    let seen = requests.clone();
    let client = scripted(ScriptedLm::from_turn_fn(move |request| {
        seen.lock().unwrap().push(request.clone());
        let results = tool_results(request);
        Ok(if results.is_empty() {
            ScriptedTurn::tool_calls([
                ScriptedToolCall::new("add", json!({"a": 2, "b": 3})),
                ScriptedToolCall::new("add", json!({"a": 10, "b": 20})),
            ])
            .with_text("Both sums at once.")
        } else {
            ScriptedTurn::tool_call("finish", json!({"answer": 35}))
        })
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![rendezvous_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap();
    assert_eq!(agent.resolved_mode(), AgentMode::Native);
    let prediction = agent
        .forward(&inputs(json!({"question": "(2 + 3) + (10 + 20)?"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 35);
    assert_eq!(
        prediction.trace.len(),
        2,
        "finish carried the outputs: no extraction call"
    );
    let trajectory = prediction.trajectory.as_ref().unwrap();
    assert!(trajectory.finished);
    let first = &trajectory.steps[0];
    assert_eq!(first.thought, "Both sums at once.");
    let observations: Vec<&str> = first.calls.iter().map(|c| c.observation.as_str()).collect();
    assert_eq!(observations, ["5", "30"], "{first:?}");
    assert!(
        first
            .calls
            .iter()
            .all(|c| c.error.is_none() && c.id.is_some())
    );
    let requests = requests.lock().unwrap();
    // The tools in OpenAI's format, `finish` last with the outputs' schema.
    let tools = requests[0].params.tools.as_ref().unwrap();
    assert_eq!(tools[0]["function"]["name"], "add");
    assert_eq!(tools[1]["function"]["name"], "finish");
    assert_eq!(
        tools[1]["function"]["parameters"]["properties"]["answer"]["type"],
        "integer"
    );
    assert_eq!(requests[0].params.tool_choice, Some(json!("required")));
    // The second call extends the first: same prefix, then the assistant's
    // calls and one result per call, in order.
    let (first_call, second_call) = (&requests[0].messages, &requests[1].messages);
    assert_eq!(first_call.len(), 2);
    assert_eq!(&second_call[..2], &first_call[..]);
    assert_eq!(second_call[2].role, Role::Assistant);
    assert_eq!(
        second_call[2]
            .tool_calls
            .as_ref()
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(tool_results(&requests[1]), ["5", "30"]);
    let ids: Vec<Option<&str>> = second_call[3..]
        .iter()
        .map(|m| m.tool_call_id.as_deref())
        .collect();
    assert_eq!(
        ids,
        [first.calls[0].id.as_deref(), first.calls[1].id.as_deref()]
    );
}

#[tokio::test]
async fn native_react_reports_bad_calls_as_observations() {
    let client = scripted(ScriptedLm::from_turn_fn(|request| {
        Ok(match tool_results(request).len() {
            0 => ScriptedTurn::tool_calls([
                ScriptedToolCall::raw("add", "{\"a\": 1,"),
                ScriptedToolCall::new("subtract", json!({"a": 1})),
                ScriptedToolCall::new("add", json!({"a": 1})),
            ]),
            // `finish` with an answer of the wrong type: extracted instead.
            _ => ScriptedTurn::tool_call("finish", json!({"answer": "many"})),
        })
    }))
    .await;
    let signature = Signature::parse("question -> answer: int").unwrap();
    let agent = ReAct::new(signature, vec![add_tool()], Lm::new(&client, "dummy")).unwrap();
    let error = agent
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap_err();
    // The extraction step's reply (a tool call, not fields) cannot be read.
    assert!(matches!(error, PromptError::Parse { .. }), "{error}");

    let client = scripted(ScriptedLm::from_turn_fn(|request| {
        if request.params.tools.is_none() {
            return Ok(ScriptedTurn::text(EXTRACT));
        }
        Ok(match tool_results(request).len() {
            0 => ScriptedTurn::tool_calls([
                ScriptedToolCall::raw("add", "{\"a\": 1,"),
                ScriptedToolCall::new("subtract", json!({"a": 1})),
                ScriptedToolCall::new("add", json!({"a": 1})),
            ]),
            3 => ScriptedTurn::tool_call("finish", json!({"answer": "many"})),
            // Told what was wrong with `finish`, it tries again.
            _ => ScriptedTurn::tool_call("finish", json!({"answer": 5})),
        })
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap();
    let prediction = agent
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap();
    let trajectory = prediction.trajectory.as_ref().unwrap();
    let calls = &trajectory.steps[0].calls;
    assert!(
        calls[0]
            .observation
            .starts_with("Execution error in add: the arguments are not valid JSON"),
        "{calls:?}"
    );
    assert!(
        calls[1]
            .observation
            .starts_with("Execution error in subtract: no such tool; the tools are: add, finish")
    );
    assert_eq!(
        calls[2].observation,
        "Execution error in add: invalid arguments: missing field `b`"
    );
    let finish = &trajectory.steps[1].calls[0];
    assert!(
        finish.error.as_deref().unwrap().contains("`answer`"),
        "{finish:?}"
    );
    assert!(
        finish
            .observation
            .starts_with("Execution error in finish: `finish` arguments unusable"),
        "{finish:?}"
    );
    // The second `finish` answers; no extraction step was needed.
    assert_eq!(prediction.outputs["answer"], 5);
    assert_eq!(trajectory.steps.len(), 3);
    assert!(trajectory.finished);
    assert_eq!(prediction.trace.len(), 3);
}

#[tokio::test]
async fn native_react_asks_again_after_a_turn_without_a_tool_call() {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let client = scripted(ScriptedLm::from_turn_fn(move |request| {
        seen.lock().unwrap().push(request.clone());
        Ok(match request.messages.len() {
            // The first turn: a thought in plain text, no tool call (a lone
            // answer without markers must not be taken as the answer).
            2 => ScriptedTurn::text("Let me think about it."),
            _ => ScriptedTurn::tool_call("finish", json!({"answer": 7})),
        })
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap();
    let run = RunContext {
        hint: Some("Use the adder.".into()),
        ..RunContext::default()
    };
    let prediction = agent
        .forward_with(&inputs(json!({"question": "q"})), run)
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], "7");
    let trajectory = prediction.trajectory.unwrap();
    assert_eq!(trajectory.steps.len(), 2);
    assert!(trajectory.steps[0].error.is_some());
    let requests = requests.lock().unwrap();
    let second = &requests[1].messages;
    assert_eq!(second[2].content, "Let me think about it.");
    assert!(
        second[3].content.contains("Call one of the tools"),
        "{second:?}"
    );
    // Refine's hint reaches the native request too.
    assert!(
        second[1]
            .content
            .contains("[[ ## hint_ ## ]]\nUse the adder."),
        "{:?}",
        second[1].content
    );
}

#[tokio::test]
async fn native_react_drops_the_oldest_observation_when_the_context_is_full() {
    let last = Arc::new(Mutex::new(None::<ChatRequest>));
    let seen = last.clone();
    let client = scripted(ScriptedLm::from_turn_fn(move |request| {
        let results = tool_results(request);
        let shown = results
            .iter()
            .filter(|r| !r.starts_with("(observation removed"))
            .count();
        if shown > 1 {
            return Err("prompt is too long: 300 tokens > 200 maximum".to_owned());
        }
        *seen.lock().unwrap() = Some(request.clone());
        Ok(match results.len() {
            0 | 1 => ScriptedTurn::tool_call("add", json!({"a": 1, "b": results.len()})),
            _ => ScriptedTurn::tool_call("finish", json!({"answer": 2})),
        })
    }))
    .await;
    let agent = ReAct::new(
        Signature::parse("question -> answer: int").unwrap(),
        vec![add_tool()],
        Lm::new(&client, "dummy"),
    )
    .unwrap();
    let prediction = agent
        .forward(&inputs(json!({"question": "q"})))
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], 2);
    let trajectory = prediction.trajectory.unwrap();
    assert_eq!(trajectory.truncated, 1);
    let last = last.lock().unwrap().clone().unwrap();
    let results = tool_results(&last);
    assert!(
        results[0].starts_with("(observation removed"),
        "{results:?}"
    );
    assert_eq!(results[1], "2");
}

#[tokio::test]
async fn native_react_against_the_mock_in_both_wire_formats() {
    // Step 1 on the question, step 2 on step 1's observation, then finish:
    // each rule looks only at its step's new turn.
    let script = Script::default()
        .with_rule(
            ScriptRule::tool_calls(
                "What is 2 + 3",
                [ScriptToolCall::new("add", json!({"a": 2, "b": 3}))],
            )
            .last_turn(),
        )
        .with_rule(
            ScriptRule::tool_calls("5", [ScriptToolCall::new("finish", json!({"answer": 5}))])
                .with_reply("The sum is 5.")
                .last_turn(),
        );
    let upstream = MockServer::start(MockConfig::default().with_script(script))
        .await
        .unwrap();
    for (kind, base_url) in [
        ("openai", upstream.base_url()),
        ("anthropic", upstream.anthropic_base_url()),
    ] {
        let raw = RawProvider {
            kind: Some(kind.into()),
            base_url: Some(base_url),
            api_key_env: Some("DSPEX_AGENTS_TEST_KEY".into()),
            max_retries: Some(0),
            ..RawProvider::default()
        };
        let config =
            ProviderConfig::validate("mock", &raw, None, &|_| Some("sk-test".to_owned())).unwrap();
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client.add_provider(config).await.unwrap();
        let agent = ReAct::new(
            Signature::parse("question -> answer: int").unwrap(),
            vec![add_tool()],
            Lm::new(&client, "mock"),
        )
        .unwrap();
        assert_eq!(agent.resolved_mode(), AgentMode::Native, "{kind}");
        let prediction = agent
            .forward(&inputs(json!({"question": "What is 2 + 3?"})))
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(prediction.outputs["answer"], 5, "{kind}");
        let trajectory = prediction.trajectory.unwrap();
        assert_eq!(trajectory.steps.len(), 2, "{kind}");
        assert_eq!(trajectory.steps[0].calls[0].observation, "5", "{kind}");
        assert_eq!(trajectory.steps[1].thought, "The sum is 5.", "{kind}");
        assert_eq!(prediction.trace.len(), 2, "{kind}");
    }
    upstream.shutdown().await;
}
