//! What recording adds to a call on the call path, and what the writer
//! behind it sustains.
//!
//! - `completion_event/*`: what the client does when a call ends — build the
//!   completion event only if someone subscribes, and publish it — with no
//!   subscriber, and with the analytics recorder attached (writing to a
//!   SQLite file on its background task).
//! - `scripted_call/*`: a whole call through the client's protected stack
//!   with a scripted in-process provider, without and with the recorder.
//!
//! With the recorder attached, calls are timed in chunks of [`CHUNK`] — half a
//! batch, so the writer is not woken inside a chunk — and between chunks,
//! untimed, the recorder is flushed. That is the call path on its own: the
//! event, the publish and the congestion check, with a writer that keeps up
//! (the case it is built for, since a real LM call takes milliseconds). A
//! tight loop of 2 µs calls outruns any SQLite writer on two cores; then
//! back-pressure holds the calls to the writer's pace, which `sustained/*`
//! reports as throughput (calls per second with the recorder, never flushed).
//!
//! - `durability/*`: the same scripted call on a client recording with
//!   `durability = "batched"` and with `"wal"` (the journal's `fdatasync`
//!   on the call path), one call at a time (each call waits for a sync of
//!   its own) and 64 at a time (one grouped sync covers many calls). The
//!   journal lives in the bench's temporary folder, on the disk the tests
//!   use.
//!
//! `cargo bench -p dspex-analytics --bench recording`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dspex_analytics::{PriceTable, Recorder, RecorderHandle, RecorderOptions, Store};
use dspex_client::events::{CallInfo, Completion, Operation, Outcome};
use dspex_client::{
    Client, ClientConfig, Event, EventBus, EventKind, Message, RequestOptions, ScriptedLm, Usage,
};
use dspex_core::CorrelationId;

/// Calls timed between two flushes of the recorder: half the default batch
/// (1,000), done well within the flush interval (50 ms).
const CHUNK: u64 = 500;

/// Times `iters` runs of `work`, in chunks of [`CHUNK`], flushing `recorder`
/// (untimed) after each chunk.
fn timed_in_chunks(
    runtime: &tokio::runtime::Runtime,
    recorder: &RecorderHandle,
    iters: u64,
    mut work: impl AsyncFnMut(),
) -> Duration {
    runtime.block_on(async {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            let started = Instant::now();
            for _ in 0..n {
                work().await;
            }
            total += started.elapsed();
            left -= n;
            recorder.flush().await.unwrap();
        }
        total
    })
}

fn completion(info: &CallInfo) -> Completion {
    Completion {
        call_id: uuid::Uuid::now_v7(),
        call: info.clone(),
        response_model: Some("gpt-4o-mini-2024-07-18".to_owned()),
        outcome: Outcome::Success,
        usage: Usage {
            input_tokens: 1_200,
            output_tokens: 150,
            cached_input_tokens: 200,
            cache_write_tokens: 0,
        },
        latency: Duration::from_millis(420),
        attempts: 1,
        finish_reason: None,
        request_id: Some("req_123".to_owned()),
        cache: None,
    }
}

/// The client's completion step: build and publish only when someone listens.
fn finish_call(bus: &EventBus, info: &CallInfo, id: &CorrelationId) {
    if bus.has_subscribers() {
        bus.publish(Event::now(
            Some(id.clone()),
            EventKind::RequestCompleted(completion(info)),
        ));
    }
}

fn recording(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prices = Arc::new(PriceTable::bundled().unwrap());
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

    let mut group = c.benchmark_group("completion_event");
    let bus = EventBus::new();
    group.bench_function("no_subscriber", |b| {
        b.iter(|| finish_call(black_box(&bus), &info, &id));
    });
    let store = runtime.block_on(async {
        Store::open(dir.path().join("events.sqlite").to_str().unwrap(), None)
            .await
            .unwrap()
    });
    let recorder = {
        let _guard = runtime.enter();
        Recorder::attach(&bus, store, Arc::clone(&prices), RecorderOptions::default())
    };
    group.bench_function("recorder_attached", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&runtime, &recorder, iters, async || {
                finish_call(black_box(&bus), &info, &id);
            })
        });
    });
    let stats = runtime.block_on(recorder.shutdown()).unwrap();
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(stats.rows_written, stats.events);
    group.finish();

    let mut group = c.benchmark_group("scripted_call");
    let client = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted("openai", ScriptedLm::replies(["The answer is 42."]))
            .await
            .unwrap();
        client
    });
    let call = || async {
        client
            .request(
                "openai",
                vec![Message::user("What is the answer?")],
                RequestOptions::new()
                    .model("gpt-4o-mini")
                    .tag("workflow", "qa"),
            )
            .await
            .unwrap()
    };
    group.bench_function("without_recorder", |b| b.to_async(&runtime).iter(call));
    let store = runtime.block_on(async {
        Store::open(dir.path().join("calls.sqlite").to_str().unwrap(), None)
            .await
            .unwrap()
    });
    let recorder = {
        let _guard = runtime.enter();
        Recorder::attach(client.events(), store, prices, RecorderOptions::default())
    };
    group.bench_function("with_recorder", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(&runtime, &recorder, iters, async || {
                black_box(call().await);
            })
        });
    });
    group.finish();

    // Never flushed: the writer's pace, with back-pressure holding the calls.
    let mut group = c.benchmark_group("sustained");
    group.throughput(Throughput::Elements(1));
    group.bench_function("scripted_calls_with_recorder", |b| {
        b.to_async(&runtime).iter(call);
    });
    group.finish();
    let stats = runtime.block_on(recorder.shutdown()).unwrap();
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(stats.rows_written, stats.events);
}

/// A client with a scripted provider, recording into a new SQLite store in
/// `dir` with `durability`.
fn recording_client(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    wal: bool,
) -> (Client, RecorderHandle) {
    runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted("openai", ScriptedLm::replies(["The answer is 42."]))
            .await
            .unwrap();
        let store = Store::open(dir.join("calls.sqlite").to_str().unwrap(), None)
            .await
            .unwrap();
        let prices = Arc::new(PriceTable::bundled().unwrap());
        let recorder = if wal {
            Recorder::attach_journaled(
                &client,
                store,
                prices,
                RecorderOptions::default(),
                &dir.join("journal"),
            )
            .await
            .unwrap()
        } else {
            Recorder::attach(client.events(), store, prices, RecorderOptions::default())
        };
        (client, recorder)
    })
}

fn durability(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("durability");
    for (mode, wal) in [("batched", false), ("wal", true)] {
        let dir = tempfile::tempdir().unwrap();
        let (client, recorder) = recording_client(&runtime, dir.path(), wal);
        let call = |client: Client| async move {
            client
                .request(
                    "openai",
                    vec![Message::user("What is the answer?")],
                    RequestOptions::new().model("gpt-4o-mini"),
                )
                .await
                .unwrap()
        };
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{mode}/one_at_a_time"), |b| {
            b.to_async(&runtime).iter(|| call(client.clone()));
        });
        const IN_FLIGHT: u64 = 64;
        group.throughput(Throughput::Elements(IN_FLIGHT));
        group.bench_function(format!("{mode}/64_in_flight"), |b| {
            b.to_async(&runtime).iter(|| {
                let calls = (0..IN_FLIGHT).map(|_| tokio::spawn(call(client.clone())));
                async move {
                    for handle in calls.collect::<Vec<_>>() {
                        black_box(handle.await.unwrap());
                    }
                }
            });
        });
        let stats = runtime.block_on(recorder.shutdown()).unwrap();
        assert_eq!(stats.rows_lost, 0);
        assert_eq!(stats.rows_written, stats.events);
    }
    group.finish();
}

criterion_group!(benches, recording, durability);
criterion_main!(benches);
