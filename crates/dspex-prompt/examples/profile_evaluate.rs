//! The `evaluate` bench's two workloads, one per run, for profilers: `Evaluate`
//! over `N` examples against the in-process mock at concurrency 32 (`MODE=eval`,
//! the default), or the load tool's bare calls through the same client
//! (`MODE=load`). Compare instructions per call:
//! `MODE=load N=2000 valgrind --tool=callgrind target/release/examples/profile_evaluate`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, Message, ProviderConfig, RequestOptions};
use dspex_mock::{MockConfig, MockServer};
use dspex_prompt::{Evaluate, Example, Lm, Metric, Predict, Signature};
use serde_json::json;

const CONCURRENCY: usize = 32;

fn main() {
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let mode = std::env::var("MODE").unwrap_or_else(|_| "eval".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = MockServer::start(MockConfig::default()).await.unwrap();
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        let raw = RawProvider {
            kind: Some("openai".into()),
            base_url: Some(upstream.base_url()),
            pool_size: Some(64),
            ..RawProvider::default()
        };
        client
            .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
            .await
            .unwrap();
        let started = Instant::now();
        if mode == "load" {
            let issued = Arc::new(AtomicU64::new(0));
            let workers: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    let client = client.clone();
                    let issued = Arc::clone(&issued);
                    tokio::spawn(async move {
                        while issued.fetch_add(1, Ordering::Relaxed) < n {
                            client
                                .request(
                                    "mock",
                                    vec![Message::user("Say something short.")],
                                    RequestOptions::new().max_tokens(64),
                                )
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.unwrap();
            }
        } else {
            let predict = Arc::new(Predict::new(
                Signature::parse("question -> answer").unwrap(),
                Lm::new(&client, "mock"),
            ));
            let examples: Arc<[Example]> = (0..n)
                .map(|i| {
                    let question = format!("What is item {i}?");
                    Example {
                        inputs: json!({"question": question}).as_object().unwrap().clone(),
                        outputs: json!({"answer": format!("mock answer for: {question}")})
                            .as_object()
                            .unwrap()
                            .clone(),
                    }
                })
                .collect();
            let report = Evaluate::new(Metric::exact_match())
                .with_concurrency(CONCURRENCY)
                .run_shared(predict, examples)
                .await;
            assert_eq!(report.passed as u64, n, "{report}");
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{mode}: {n} calls in {elapsed:.3} s, {:.0} calls/s",
            n as f64 / elapsed
        );
    });
}
