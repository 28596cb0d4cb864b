//! The `evaluate` bench's workloads, one per run, for profilers and quick
//! comparisons: `Evaluate::run_shared` over `N` examples against the
//! in-process mock at concurrency 32 (`MODE=eval`, the default),
//! `Evaluate::run` (`MODE=run`), or the load tool's bare calls through the
//! same client (`MODE=load`), `ROUNDS` times (default 1), printing each
//! round's calls per second. Compare instructions per call:
//! `MODE=load N=3000 valgrind --tool=callgrind target/release/examples/profile_evaluate`
//! (the examples are built inside the run, about 2k instructions each).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]
use std::sync::Arc;
use std::time::Instant;

use dspex_prompt::{Evaluate, Example, Lm, Metric, Predict, Signature};

#[path = "../benches/support/evaluate_workload.rs"]
mod workload;
use workload::{CONCURRENCY, examples, load, mock_and_client};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_number("N", 2_000);
    let rounds = env_number("ROUNDS", 1);
    let mode = std::env::var("MODE").unwrap_or_else(|_| "eval".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_upstream, client) = mock_and_client().await;
        let predict = Arc::new(Predict::new(
            Signature::parse("question -> answer").unwrap(),
            Lm::new(&client, "mock"),
        ));
        let examples: Arc<[Example]> = Arc::from(examples(if mode == "load" { 0 } else { n }));
        let evaluate = Evaluate::new(Metric::exact_match()).with_concurrency(CONCURRENCY);
        for _ in 0..rounds {
            let started = Instant::now();
            match mode.as_str() {
                "load" => load(&client, n).await,
                "run" => {
                    let report = evaluate.run(&*predict, &examples).await;
                    assert_eq!(report.passed as u64, n, "{report}");
                }
                _ => {
                    let report = evaluate
                        .run_shared(Arc::clone(&predict), Arc::clone(&examples))
                        .await;
                    assert_eq!(report.passed as u64, n, "{report}");
                }
            }
            println!(
                "{mode}: {n} calls in {:.3} s, {:.0} calls/s",
                started.elapsed().as_secs_f64(),
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    });
}
