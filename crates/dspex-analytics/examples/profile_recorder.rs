//! The recorder's writer on its own, for profilers: `N` completion events
//! published up front, then recorded into a fresh SQLite file; prints rows
//! per second. `N=100000 valgrind --tool=callgrind target/release/examples/profile_recorder`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_analytics::{PriceTable, Recorder, RecorderOptions, Store};
use dspex_client::events::{CallInfo, Completion, Operation, Outcome};
use dspex_client::{Event, EventBus, EventKind, Usage};
use dspex_core::CorrelationId;

fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(async {
        let info = CallInfo {
            provider: Arc::from("openai"),
            system: "openai",
            model: Arc::from("gpt-4o-mini"),
            operation: Operation::Chat,
            estimated_input_tokens: Some(1_200),
            tags: Arc::new(BTreeMap::from([
                ("workflow".to_owned(), "qa".to_owned()),
                ("team".to_owned(), "search".to_owned()),
            ])),
        };
        let id = CorrelationId::generate();
        let bus = EventBus::new();
        let store = Store::open(dir.path().join("calls.sqlite").to_str().unwrap(), None)
            .await
            .unwrap();
        let options = RecorderOptions {
            max_pending: usize::MAX,
            flush_interval: Duration::from_secs(3600),
            ..RecorderOptions::default()
        };
        // Subscribed but not yet running: the events wait in its queue.
        let subscription = Recorder::subscribe(&bus, &options);
        for i in 0..n {
            bus.publish(Event::now(
                Some(id.clone()),
                EventKind::RequestCompleted(Completion {
                    call_id: uuid::Uuid::now_v7(),
                    call: info.clone(),
                    response_model: Some("gpt-4o-mini-2024-07-18".to_owned()),
                    outcome: Outcome::Success,
                    usage: Usage {
                        input_tokens: 1_200,
                        output_tokens: 150 + (i % 7) as u64,
                        cached_input_tokens: 200,
                        cache_write_tokens: 0,
                    },
                    latency: Duration::from_micros(420_000 + (i % 1000) as u64),
                    attempts: 1,
                    finish_reason: None,
                    request_id: Some("req_123".to_owned()),
                    cache: None,
                }),
            ));
        }
        let started = Instant::now();
        let recorder = Recorder::spawn(
            store.clone(),
            subscription,
            Arc::new(PriceTable::bundled().unwrap()),
            options,
        );
        let stats = recorder.shutdown().await.unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(stats.rows_written, n as u64);
        println!(
            "{n} rows in {elapsed:.3} s: {:.0} rows/s, {:.2} µs per row, {} batches",
            n as f64 / elapsed,
            elapsed * 1e6 / n as f64,
            stats.batches
        );
    });
}
