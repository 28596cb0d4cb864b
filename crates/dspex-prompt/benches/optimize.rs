//! The optimisation engine's cost.
//!
//! 1. `engine_overhead`: 1,000 rollouts of a fresh candidate through
//!    `Engine::evaluate` on a scripted LM (in process, no HTTP), beside
//!    `Evaluate::run` of the same program on the same 1,000 examples: the
//!    difference per example is what the engine adds to a rollout (building
//!    the candidate, the permit, the spend, the rollout cache, the trace).
//!    Target: at most 5 µs.
//! 2. `rollouts_vs_eval`: 1,000 rollouts against the mock on loopback at
//!    concurrency 32, beside `dspex eval`'s `Evaluate::run_shared` of the
//!    same program at the same concurrency; a final side-by-side of
//!    alternating rounds prints the median per-round ratio. Target: at
//!    least 80%.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dspex_client::{Client, ClientConfig, ScriptedLm};
use dspex_prompt::optimize::engine::{Engine, EngineConfig, Split};
use dspex_prompt::{Evaluate, Example, Lm, Metric, Predict, ProgramState, Signature};

#[path = "support/evaluate_workload.rs"]
#[allow(
    dead_code,
    reason = "the shared workload's load loop is the evaluate bench's"
)]
mod workload;
use workload::{CONCURRENCY, examples, mock_and_client};

const EXAMPLES: u64 = 1_000;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The student's state with instructions that make a new candidate.
fn candidate(engine: &Engine<Predict>, n: u64) -> ProgramState {
    let mut state = engine.initial_state();
    for predictor in state.predictors.values_mut() {
        predictor.instructions = format!("Answer the question. Candidate {n}.");
    }
    state
}

fn engine_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted(
                "lm",
                ScriptedLm::from_fn(|request| {
                    let last = &request.messages.last().unwrap().content;
                    let question = last
                        .split("[[ ## question ## ]]\n")
                        .nth(1)
                        .and_then(|rest| rest.split('\n').next())
                        .unwrap_or("");
                    Ok(format!(
                        "[[ ## answer ## ]]\nmock answer for: {question}\n\n[[ ## completed ## ]]"
                    ))
                }),
            )
            .await
            .unwrap();
        client
    });
    let predict = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "lm"),
    );
    let data: Vec<Example> = examples(EXAMPLES);
    let all: Vec<usize> = (0..data.len()).collect();
    let engine = Engine::new(
        predict.clone(),
        Metric::exact_match(),
        data.clone(),
        data.clone(),
        EngineConfig {
            concurrency: CONCURRENCY,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let check = runtime.block_on(engine.evaluate(&candidate(&engine, 0), Split::Val, &all));
    assert!(
        check.complete && check.mean() == 1.0,
        "{:?}",
        check.rollouts.first()
    );
    let evaluator = Evaluate::new(Metric::exact_match()).with_concurrency(CONCURRENCY);
    let next = AtomicU64::new(1);

    let mut group = c.benchmark_group("engine_overhead");
    group.throughput(Throughput::Elements(EXAMPLES));
    group.sample_size(20);
    group.bench_function("evaluate_run_1000_scripted", |b| {
        b.to_async(&runtime)
            .iter(|| async { evaluator.run(&predict, &data).await });
    });
    // A fresh engine per iteration (built outside the timing), so the
    // rollout cache holds one run's rollouts, as in an optimisation, rather
    // than every iteration's.
    let fresh = || {
        Engine::new(
            predict.clone(),
            Metric::exact_match(),
            data.clone(),
            data.clone(),
            EngineConfig {
                concurrency: CONCURRENCY,
                ..EngineConfig::default()
            },
        )
        .unwrap()
    };
    group.bench_function("engine_evaluate_1000_scripted_new_candidate", |b| {
        b.to_async(&runtime).iter_batched(
            fresh,
            |engine| async move {
                let state = candidate(&engine, 1);
                engine
                    .evaluate(
                        &state,
                        Split::Val,
                        &(0..EXAMPLES as usize).collect::<Vec<_>>(),
                    )
                    .await
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();

    // Side by side, alternating: the per-example difference.
    const ROUNDS: usize = 15;
    let mut differences = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        runtime.block_on(evaluator.run(&predict, &data));
        let evaluate = started.elapsed();
        let engine = fresh();
        let state = candidate(&engine, next.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        runtime.block_on(engine.evaluate(&state, Split::Val, &all));
        let rollouts = started.elapsed();
        differences.push((rollouts.as_secs_f64() - evaluate.as_secs_f64()) / EXAMPLES as f64 * 1e6);
    }
    eprintln!(
        "{ROUNDS} rounds: the engine adds a median {:.2} us per rollout to the program's own cost (target <= 5 us)",
        median(differences)
    );
}

fn rollouts_vs_eval(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_upstream, client) = runtime.block_on(mock_and_client());
    let predict = Predict::new(
        Signature::parse("question -> answer").unwrap(),
        Lm::new(&client, "mock"),
    );
    let data: Vec<Example> = examples(EXAMPLES);
    let all: Vec<usize> = (0..data.len()).collect();
    let evaluator = Evaluate::new(Metric::exact_match()).with_concurrency(CONCURRENCY);
    let shared_predict = Arc::new(predict.clone());
    let shared_data: Arc<[Example]> = Arc::from(data.clone());
    let next = AtomicU64::new(1);

    let mut group = c.benchmark_group("rollouts_vs_eval");
    group.throughput(Throughput::Elements(EXAMPLES));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("eval_run_shared_1000_c32", |b| {
        b.to_async(&runtime)
            .iter(|| evaluator.run_shared(Arc::clone(&shared_predict), Arc::clone(&shared_data)));
    });
    let fresh = || {
        Engine::new(
            predict.clone(),
            Metric::exact_match(),
            data.clone(),
            data.clone(),
            EngineConfig {
                concurrency: CONCURRENCY,
                ..EngineConfig::default()
            },
        )
        .unwrap()
    };
    group.bench_function("engine_1000_rollouts_c32", |b| {
        b.to_async(&runtime).iter_batched(
            fresh,
            |engine| async move {
                let state = candidate(&engine, 1);
                engine
                    .evaluate(
                        &state,
                        Split::Val,
                        &(0..EXAMPLES as usize).collect::<Vec<_>>(),
                    )
                    .await
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();

    const ROUNDS: usize = 15;
    let mut ratios = Vec::new();
    let (mut evals, mut rollouts) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let eval = runtime
            .block_on(evaluator.run_shared(Arc::clone(&shared_predict), Arc::clone(&shared_data)))
            .calls_per_second;
        let engine = fresh();
        let state = candidate(&engine, next.fetch_add(1, Ordering::Relaxed));
        let started = Instant::now();
        let scored = runtime.block_on(engine.evaluate(&state, Split::Val, &all));
        assert!(scored.complete);
        let rollout = EXAMPLES as f64 / started.elapsed().as_secs_f64();
        ratios.push(rollout / eval);
        evals.push(eval);
        rollouts.push(rollout);
    }
    eprintln!(
        "{ROUNDS} rounds, medians: eval (run_shared) {:.0} calls/s, engine rollouts {:.0} calls/s; median per-round ratio {:.1}% (target >= 80%)",
        median(evals),
        median(rollouts),
        100.0 * median(ratios)
    );
}

criterion_group!(benches, engine_overhead, rollouts_vs_eval);
criterion_main!(benches);
