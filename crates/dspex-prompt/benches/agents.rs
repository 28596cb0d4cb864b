//! Framework overhead of a ReAct step, with the scripted in-process LM and a
//! no-op tool: an episode of `STEPS` tool-call steps and a `finish`, in
//! native and text mode, per step; next to one `Predict` call on the same
//! client (the floor a step cannot go under: one LM call through the whole
//! client stack).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dspex_client::{Client, ClientConfig, Role, ScriptedLm, ScriptedTurn};
use dspex_prompt::{AgentMode, Lm, Module, Predict, ReAct, Signature, Tool};
use serde_json::{Value, json};

/// Tool-call steps per episode (then one `finish` step).
const STEPS: usize = 8;

const TEXT_STEP: &str = "[[ ## next_thought ## ]]\nCall it.\n[[ ## next_tool_name ## ]]\nnoop\n[[ ## next_tool_args ## ]]\n{}\n[[ ## completed ## ]]";
const TEXT_FINISH: &str = "[[ ## next_thought ## ]]\nDone.\n[[ ## next_tool_name ## ]]\nfinish\n[[ ## next_tool_args ## ]]\n{}\n[[ ## completed ## ]]";
const TEXT_EXTRACT: &str =
    "[[ ## reasoning ## ]]\nDone.\n[[ ## answer ## ]]\nok\n[[ ## completed ## ]]";

fn agents(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let noop = Tool::new("noop", "Does nothing.", json!({}), |_args: Value| async {
        Ok::<_, String>(Value::Null)
    })
    .unwrap();
    let signature = Signature::parse("question -> answer").unwrap();
    let inputs = json!({"question": "Go."}).as_object().unwrap().clone();
    let client = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        let native = ScriptedLm::from_turn_fn(|request| {
            let done = request
                .messages
                .iter()
                .filter(|m| m.role == Role::Tool)
                .count();
            Ok(if done < STEPS {
                ScriptedTurn::tool_call("noop", json!({}))
            } else {
                ScriptedTurn::tool_call("finish", json!({"answer": "ok"}))
            })
        });
        client.add_scripted("native", native).await.unwrap();
        let text = ScriptedLm::from_fn(|request| {
            let last = request.messages.last().map_or("", |m| m.content.as_str());
            Ok(if last.contains("`[[ ## reasoning ## ]]`") {
                TEXT_EXTRACT
            } else if last.matches("[[ ## observation_").count() < STEPS {
                TEXT_STEP
            } else {
                TEXT_FINISH
            }
            .to_owned())
        });
        client.add_scripted("text", text).await.unwrap();
        client
            .add_scripted(
                "predict",
                ScriptedLm::replies(["[[ ## answer ## ]]\nok\n\n[[ ## completed ## ]]"]),
            )
            .await
            .unwrap();
        client
    });

    let mut group = c.benchmark_group("react");
    // Steps per episode: the tool-call steps and the finish step.
    group.throughput(Throughput::Elements(STEPS as u64 + 1));
    for (name, mode) in [("native", AgentMode::Native), ("text", AgentMode::Text)] {
        let agent = ReAct::new(
            signature.clone(),
            vec![noop.clone()],
            Lm::new(&client, name),
        )
        .unwrap()
        .mode(mode)
        .max_iters(STEPS + 1);
        let check = runtime.block_on(agent.forward(&inputs)).unwrap();
        assert_eq!(check.trajectory.as_ref().unwrap().steps.len(), STEPS + 1);
        group.bench_function(format!("{name}_episode_per_step"), |b| {
            b.to_async(&runtime)
                .iter(|| async { agent.forward(&inputs).await.unwrap() });
        });
    }
    group.finish();

    let predict = Predict::new(signature, Lm::new(&client, "predict"));
    c.bench_function("react/floor_one_predict_call", |b| {
        b.to_async(&runtime)
            .iter(|| async { predict.forward(&inputs).await.unwrap() });
    });
}

criterion_group!(benches, agents);
criterion_main!(benches);
