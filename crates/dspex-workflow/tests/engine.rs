#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use dspex_client::{Client, ClientConfig, EventKind, ScriptedLm};
use dspex_core::CorrelationId;
use dspex_core::events::Delivery;
use dspex_prompt::{Lm, Predict, Signature};
use dspex_workflow::{
    Context, MergeRule, Node, RetryPolicy, RunOptions, StepError, StepModule, StepStatus, Workflow,
    WorkflowError,
};
use serde_json::{Value, json};

fn ctx(pairs: &[(&str, Value)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A step that writes `key = value` after reading `needs` (if any).
fn write(name: &str, key: &'static str, value: Value) -> Node {
    Node::step(name, move |_scope| {
        let value = value.clone();
        async move { Ok(ctx(&[(key, value)])) }
    })
}

#[tokio::test]
async fn outputs_merge_in_order_and_later_steps_see_earlier_ones() {
    let workflow = Workflow::new("order")
        .then(write("first", "a", json!(1)))
        .then(Node::step("second", |scope| {
            let a = scope.require("a").cloned();
            async move {
                let a = a?.as_i64().unwrap();
                Ok(ctx(&[("b", json!(a + 1)), ("a", json!(10))]))
            }
        }))
        .then(Node::step("third", |scope| {
            let (a, b) = (scope.get("a").cloned(), scope.get("b").cloned());
            async move {
                Ok(ctx(&[(
                    "sum",
                    json!(a.unwrap().as_i64().unwrap() + b.unwrap().as_i64().unwrap()),
                )]))
            }
        }));
    let run = workflow
        .run(ctx(&[("input", json!("x"))]), RunOptions::default())
        .await
        .unwrap();
    // `a` was overwritten by the later step; `sum` saw both.
    assert_eq!(run.context["a"], json!(10));
    assert_eq!(run.context["b"], json!(2));
    assert_eq!(run.context["sum"], json!(12));
    assert_eq!(run.context["input"], json!("x"));
    let steps: Vec<&str> = run.report.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["first", "second", "third"]);
    assert!(
        run.report
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded && s.attempts == 1)
    );
    assert_eq!(run.report.status, "succeeded");
}

#[tokio::test]
async fn the_first_error_halts_the_run_with_the_full_history() {
    let ran_after = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran_after);
    let workflow = Workflow::new("halts")
        .then(write("ok", "a", json!(1)))
        .then(Node::step("broken", |scope| {
            let missing = scope.require("nope").map(|_| ());
            async move {
                missing?;
                Ok(Context::new())
            }
        }))
        .then(Node::step("never", move |_| {
            flag.store(true, Ordering::SeqCst);
            async { Ok(Context::new()) }
        }));
    let error = workflow
        .run(
            Context::new(),
            RunOptions {
                correlation_id: Some(CorrelationId::from("run-1")),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        !ran_after.load(Ordering::SeqCst),
        "no step runs after a failure"
    );
    let WorkflowError::StepFailed {
        step,
        error: cause,
        correlation_id,
        breadcrumbs,
        report,
        ..
    } = &error
    else {
        panic!("{error}")
    };
    let history = error.history();
    assert_eq!(step, "broken");
    assert_eq!(cause.kind, "missing_input");
    assert!(cause.message.contains("`nope`"), "{cause}");
    assert_eq!(correlation_id.as_str(), "run-1");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].status, StepStatus::Succeeded);
    assert_eq!(history[1].status, StepStatus::Failed);
    assert_eq!(history[1].attempts, 1);
    assert!(history[1].error.as_deref().unwrap().contains("nope"));
    assert!(
        breadcrumbs[0].message.contains("attempt 1 failed"),
        "{breadcrumbs:?}"
    );
    assert_eq!(report.status, "failed");
    assert!(
        error.to_string().contains("failed at step `broken`"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_policy_and_never_retry_kinds() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let flaky = Node::step("flaky", move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err(StepError::of_kind("upstream", format!("try {n}")).retryable())
            } else {
                Ok(ctx(&[("done", json!(true))]))
            }
        }
    })
    .retry(RetryPolicy::attempts(3, Duration::from_millis(10)));
    let run = Workflow::new("retry")
        .then(flaky)
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(run.report.step("flaky").unwrap().attempts, 3);

    // Attempts run out: the error carries every attempt as a breadcrumb.
    let always = Node::step("always", |_| async {
        Err::<Context, _>(StepError::of_kind("upstream", "down").retryable())
    })
    .retry(RetryPolicy::attempts(2, Duration::from_millis(10)));
    let error = Workflow::new("retry")
        .then(always)
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap_err();
    let WorkflowError::StepFailed { breadcrumbs, .. } = &error else {
        panic!()
    };
    let history = error.history();
    assert_eq!(history[0].attempts, 2);
    assert!(
        breadcrumbs[0].message.contains("retrying in"),
        "{breadcrumbs:?}"
    );
    assert!(
        breadcrumbs[1].message.starts_with("attempt 2 failed"),
        "{breadcrumbs:?}"
    );

    // A kind listed in never_retry, and a non-retryable error, run once.
    for (error, policy) in [
        (
            StepError::of_kind("parse", "bad").retryable(),
            RetryPolicy::attempts(5, Duration::from_millis(1)).never_retry("parse"),
        ),
        (
            StepError::of_kind("invalid", "bad"),
            RetryPolicy::attempts(5, Duration::from_millis(1)),
        ),
    ] {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let node = Node::step("once", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            let error = error.clone();
            async move { Err::<Context, _>(error) }
        })
        .retry(policy);
        Workflow::new("w")
            .then(node)
            .run(Context::new(), RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_runs_past_its_timeout_fails_as_timed_out_and_may_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let slow_then_fast = Node::step("slow", move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok(ctx(&[("ok", json!(n))]))
        }
    })
    .timeout(Duration::from_millis(500))
    .retry(RetryPolicy::attempts(2, Duration::from_millis(1)));
    let run = Workflow::new("t")
        .then(slow_then_fast)
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(run.context["ok"], json!(1));
    assert_eq!(run.report.steps[0].attempts, 2);

    let stuck = Node::step("stuck", |_| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Context::new())
    })
    .timeout(Duration::from_millis(200));
    let error = Workflow::new("t")
        .then(stuck)
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap_err();
    let WorkflowError::StepFailed { error: cause, .. } = &error else {
        panic!()
    };
    let history = error.history();
    assert_eq!(cause.kind, "timeout");
    assert!(cause.message.contains("200ms"), "{cause}");
    assert_eq!(history[0].status, StepStatus::TimedOut);
}

#[tokio::test]
async fn parallel_branches_merge_and_conflicts_need_a_rule() {
    let both = || {
        vec![
            write("left", "l", json!("L")),
            write("right", "r", json!("R")),
        ]
    };
    let run = Workflow::new("p")
        .then(Node::parallel("fan", both()))
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(run.context["l"], json!("L"));
    assert_eq!(run.context["r"], json!("R"));
    let paths: Vec<&str> = run.report.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(paths, ["fan", "fan/left", "fan/right"]);

    let same = || vec![write("one", "k", json!(1)), write("two", "k", json!(2))];
    let error = Workflow::new("p")
        .then(Node::parallel("fan", same()))
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap_err();
    let WorkflowError::StepFailed {
        error: cause, step, ..
    } = &error
    else {
        panic!()
    };
    assert_eq!(cause.kind, "merge_conflict");
    assert_eq!(step, "fan");
    assert!(
        cause.message.contains("`one` and `two`") && cause.message.contains("`k`"),
        "{cause}"
    );

    let last = Workflow::new("p")
        .then(Node::parallel("fan", same()).merge(MergeRule::LastWins))
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(last.context["k"], json!(2));
    let collected = Workflow::new("p")
        .then(Node::parallel("fan", same()).merge(MergeRule::Collect))
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(collected.context["k"], json!([1, 2]));
}

#[tokio::test]
async fn a_failing_branch_fails_the_group_and_stops_its_siblings() {
    let sibling_finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&sibling_finished);
    let slow = Node::step("slow", move |_| {
        let flag = Arc::clone(&flag);
        async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(Context::new())
        }
    });
    let failing = Node::step("failing", |_| async {
        Err::<Context, _>(StepError::new("branch broke"))
    });
    let started = std::time::Instant::now();
    let error = Workflow::new("p")
        .then(Node::parallel("fan", vec![slow, failing]))
        .run(Context::new(), RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sibling was not waited for"
    );
    assert!(!sibling_finished.load(Ordering::SeqCst));
    let WorkflowError::StepFailed { step, .. } = &error else {
        panic!()
    };
    let history = error.history();
    assert_eq!(step, "fan/failing");
    let status = |path: &str| history.iter().find(|r| r.step == path).unwrap().status;
    assert_eq!(status("fan/failing"), StepStatus::Failed);
    assert_eq!(status("fan/slow"), StepStatus::Cancelled);
    assert_eq!(status("fan"), StepStatus::Failed);
}

#[tokio::test]
async fn map_runs_over_a_list_in_order_with_bounded_concurrency() {
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (now, max) = (Arc::clone(&in_flight), Arc::clone(&peak));
    let square = Node::step("square", move |scope| {
        let item = scope.require("n").cloned();
        let index = scope.get("index").cloned();
        let (now, max) = (Arc::clone(&now), Arc::clone(&max));
        async move {
            let current = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(current, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            let n = item?.as_i64().unwrap();
            Ok(ctx(&[("square", json!(n * n)), ("index", index.unwrap())]))
        }
    });
    let workflow = Workflow::new("m").then(
        Node::map("squares", "numbers", "results", square)
            .item_as("n")
            .collect("square")
            .concurrency(2),
    );
    let run = workflow
        .run(
            ctx(&[("numbers", json!([1, 2, 3, 4, 5]))]),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(run.context["results"], json!([1, 4, 9, 16, 25]));
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(run.report.step("squares[4]").is_some());

    // A failing element fails the map, naming the element.
    let picky = Node::step("picky", |scope| {
        let item = scope.require("item").cloned();
        async move {
            let item = item?;
            if item == json!(3) {
                Err(StepError::new("three is not allowed"))
            } else {
                Ok(ctx(&[("ok", item)]))
            }
        }
    });
    let error = Workflow::new("m")
        .then(Node::map("each", "xs", "out", picky))
        .run(ctx(&[("xs", json!([1, 2, 3, 4]))]), RunOptions::default())
        .await
        .unwrap_err();
    let WorkflowError::StepFailed { step, .. } = &error else {
        panic!()
    };
    assert_eq!(step, "each[2]");

    // Mapping over something that is not a list is a clear error.
    let error = Workflow::new("m")
        .then(Node::map("each", "xs", "out", write("w", "k", json!(1))))
        .run(ctx(&[("xs", json!("text"))]), RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("must be a list; found a string"),
        "{error}"
    );
}

#[tokio::test]
async fn cancelling_a_run_stops_its_in_flight_steps() {
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let token = tokio_util::sync::CancellationToken::new();
    let workflow = Workflow::new("c")
        .then(write("quick", "a", json!(1)))
        .then(Node::step("long", move |_| {
            let flag = Arc::clone(&flag);
            async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                flag.store(true, Ordering::SeqCst);
                Ok(Context::new())
            }
        }));
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        canceller.cancel();
    });
    let error = workflow
        .run(
            Context::new(),
            RunOptions {
                cancel: Some(token),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(!finished.load(Ordering::SeqCst));
    let WorkflowError::Cancelled { history, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(history[0].status, StepStatus::Succeeded);
    assert_eq!(history[1].step, "long");
    assert_eq!(history[1].status, StepStatus::Cancelled);
}

#[tokio::test]
async fn the_correlation_id_and_step_tags_reach_every_lm_call_and_event() {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_scripted(
            "lm",
            ScriptedLm::from_fn(|_| {
                Ok("[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]".to_owned())
            }),
        )
        .await
        .unwrap();
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let predict = || {
        Predict::new(
            Signature::parse("question -> answer").unwrap(),
            Lm::new(&client, "lm"),
        )
    };
    let workflow = Workflow::new("traced")
        .then(Node::module("first", StepModule::Predict(predict())))
        .then(Node::parallel(
            "both",
            vec![
                Node::module("a", StepModule::Predict(predict()))
                    .input("question", "answer")
                    .output("answer", "a"),
                Node::module("b", StepModule::Predict(predict()))
                    .input("question", "answer")
                    .output("answer", "b"),
            ],
        ));
    let run = workflow
        .run(
            ctx(&[("question", json!("q"))]),
            RunOptions {
                correlation_id: Some(CorrelationId::from("corr-42")),
                ..RunOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(run.context["a"], json!("42"));
    assert_eq!(run.report.lm_calls, 3);
    assert!(run.report.input_tokens > 0);
    let mut seen = 0;
    let mut steps = Vec::new();
    while let Some(event) = events.try_recv() {
        assert_eq!(
            event.correlation_id.as_ref().map(CorrelationId::as_str),
            Some("corr-42"),
            "{event:?}"
        );
        if let EventKind::RequestCompleted(completion) = &event.kind {
            assert_eq!(
                completion.call.tags.get("workflow").map(String::as_str),
                Some("traced")
            );
            steps.push(completion.call.tags.get("step").cloned().unwrap());
        }
        seen += 1;
    }
    assert_eq!(seen, 6, "a started and a completed event per call");
    steps.sort();
    assert_eq!(steps, ["both/a", "both/b", "first"]);
    assert_eq!(run.report.correlation_id.as_str(), "corr-42");
    let json = serde_json::to_value(&run.report).unwrap();
    assert_eq!(json["steps"][0]["lm_calls"], json!(1));
}

#[tokio::test]
async fn an_attempts_temperature_hint_and_rollout_reach_every_step() {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = seen.clone();
    client
        .add_scripted(
            "lm",
            ScriptedLm::from_fn(move |request| {
                let prompt: String = request
                    .messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect();
                record.lock().push((request.params.temperature, prompt));
                Ok("[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]".to_owned())
            }),
        )
        .await
        .unwrap();
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let workflow = Workflow::new("attempted").then(Node::module(
        "answer",
        StepModule::Predict(Predict::new(
            Signature::parse("question -> answer").unwrap(),
            Lm::new(&client, "lm"),
        )),
    ));
    // What BestOfN and Refine hand each attempt of a module.
    let mut attempt = dspex_prompt::RunContext {
        temperature: Some(1.0),
        hint: Some("Think twice.".into()),
        ..dspex_prompt::RunContext::default()
    }
    .with_rollout("refine/1");
    attempt.tags.insert("team".into(), "a".into());
    let inputs = json!({"question": "q"}).as_object().unwrap().clone();
    let prediction = dspex_prompt::Module::forward_with(&workflow, &inputs, attempt)
        .await
        .unwrap();
    assert_eq!(prediction.outputs["answer"], json!("42"));
    let seen = seen.lock();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Some(1.0));
    assert!(
        seen[0].1.contains("[[ ## hint_ ## ]]\nThink twice."),
        "{}",
        seen[0].1
    );
    let mut rollouts = Vec::new();
    while let Some(event) = events.try_recv() {
        if let EventKind::RequestCompleted(completion) = &event.kind {
            rollouts.push(
                completion
                    .call
                    .tags
                    .get(dspex_prompt::module::ROLLOUT_TAG)
                    .cloned(),
            );
        }
    }
    assert_eq!(rollouts, [Some("refine/1".to_owned())]);
}

#[test]
fn invalid_definitions_are_refused_with_every_problem() {
    let error = Workflow::new("bad")
        .then(write("same", "a", json!(1)))
        .then(write("same", "b", json!(2)))
        .then(Node::parallel("empty", vec![]))
        .validate()
        .unwrap_err();
    let WorkflowError::Invalid { problems, .. } = &error else {
        panic!()
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("`same`"));
    assert!(problems[1].contains("no branches"));
}
