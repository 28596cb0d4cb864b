//! `Evaluate` over 1,000 examples against the mock on loopback at
//! concurrency 32, next to what `dspex load` does at the same concurrency
//! (32 spawned workers making plain protected calls through the same client
//! to the same mock). Criterion times both; a final side-by-side of fifteen
//! alternating rounds prints the medians in calls per second and the median
//! of the per-round ratios (target: Evaluate at least 80% of load).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dspex_client::Client;
use dspex_prompt::{Evaluate, Example, Lm, Metric, Predict, Signature};

#[path = "support/evaluate_workload.rs"]
mod workload;
use workload::{CONCURRENCY, examples, mock_and_client};

const EXAMPLES: u64 = 1_000;

/// `dspex load --requests 1000 --concurrency 32` against `client`, in calls
/// per second.
async fn load(client: &Client) -> f64 {
    let started = Instant::now();
    workload::load(client, EXAMPLES).await;
    EXAMPLES as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn evaluate(c: &mut Criterion) {
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
    let examples: Vec<Example> = examples(EXAMPLES);
    let evaluator = Evaluate::new(Metric::exact_match()).with_concurrency(CONCURRENCY);
    let check = runtime.block_on(evaluator.run(&predict, &examples));
    assert_eq!((check.passed, check.errors), (1_000, 0), "{check}");

    let mut group = c.benchmark_group("evaluate_vs_load");
    group.throughput(Throughput::Elements(EXAMPLES));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("evaluate_1000_examples_c32", |b| {
        b.to_async(&runtime)
            .iter(|| async { evaluator.run(&predict, &examples).await });
    });
    let shared_predict = Arc::new(predict.clone());
    let shared_examples: Arc<[Example]> = Arc::from(examples.clone());
    group.bench_function("evaluate_shared_1000_examples_c32", |b| {
        b.to_async(&runtime).iter(|| {
            evaluator.run_shared(Arc::clone(&shared_predict), Arc::clone(&shared_examples))
        });
    });
    group.bench_function("load_1000_calls_c32", |b| {
        b.to_async(&runtime).iter(|| load(&client));
    });
    group.finish();

    // Side by side, alternating so drift on a shared machine hits both; the
    // ratio is taken per round (each evaluation against the load run next to
    // it), and the median of those ratios reported: on two shared cores the
    // machine's pace drifts by tens of percent between rounds.
    const ROUNDS: usize = 15;
    let (mut evals, mut shareds, mut loads) = (Vec::new(), Vec::new(), Vec::new());
    let (mut eval_ratios, mut shared_ratios) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let eval = runtime
            .block_on(evaluator.run(&predict, &examples))
            .calls_per_second;
        let load = runtime.block_on(load(&client));
        let shared = runtime
            .block_on(
                evaluator.run_shared(Arc::clone(&shared_predict), Arc::clone(&shared_examples)),
            )
            .calls_per_second;
        eval_ratios.push(eval / load);
        shared_ratios.push(shared / load);
        evals.push(eval);
        shareds.push(shared);
        loads.push(load);
    }
    let (eval, shared, load) = (median(evals), median(shareds), median(loads));
    eprintln!(
        "{ROUNDS} rounds, medians: evaluate (run) {eval:.0} calls/s, evaluate (run_shared) {shared:.0} calls/s, load {load:.0} calls/s; \
         median per-round ratio to load: run {:.1}%, run_shared {:.1}% (target >= 80%)",
        100.0 * median(eval_ratios),
        100.0 * median(shared_ratios)
    );
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
