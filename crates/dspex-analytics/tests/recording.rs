#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use dspex_analytics::{
    AnalyticsError, CallRecord, CallSink, GroupBy, PriceTable, Recorder, RecorderOptions, Store,
    TimeRange,
};
use dspex_client::{
    Client, ClientConfig, EventBus, Message, ProviderConfig, RequestOptions, ScriptedLm,
};

use common::{Spec, usage};

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("analytics.sqlite").to_str().unwrap(), None)
        .await
        .unwrap()
}

fn prices() -> Arc<PriceTable> {
    Arc::new(PriceTable::bundled().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_calls_make_one_hundred_thousand_rows() {
    const CALLS: usize = 100_000;
    const TASKS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let lm = ScriptedLm::replies(["The answer is 42."]);
    client.add_scripted("openai", lm.clone()).await.unwrap();
    let recorder = Recorder::attach(
        client.events(),
        store.clone(),
        prices(),
        RecorderOptions::default(),
    );

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS / TASKS {
                client
                    .request(
                        "openai",
                        vec![Message::user(format!("question {t}-{i}"))],
                        RequestOptions::new()
                            .model("gpt-4o-mini")
                            .tag("workflow", "bulk"),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.events, CALLS as u64);
    assert_eq!(stats.rows_written, CALLS as u64);
    assert_eq!(stats.rows_lost, 0);
    assert!(
        stats.batches < CALLS as u64 / 10,
        "rows are batched: {stats:?}"
    );
    assert_eq!(store.count().await.unwrap(), CALLS as u64);

    // Tokens and cost add up exactly: gpt-4o-mini is $0.15/M in and $0.60/M
    // out, 150,000 and 600,000 pico-USD per token.
    let rows = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Workflow])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let used = lm.usage();
    assert_eq!(row.group, vec![Some("bulk".to_owned())]);
    assert_eq!(row.requests, CALLS as u64);
    assert_eq!(row.input_tokens, used.input_tokens);
    assert_eq!(row.output_tokens, used.output_tokens);
    let expected_pico =
        u128::from(used.input_tokens) * 150_000 + u128::from(used.output_tokens) * 600_000;
    assert_eq!(expected_pico % 1000, 0);
    assert_eq!(row.cost_nanos as u128, expected_pico / 1000);
    assert_eq!(row.unpriced_requests, 0);
}

/// A store that takes `delay` per batch (and counts batches).
#[derive(Clone)]
struct Slow {
    inner: Store,
    delay: Duration,
    writes: Arc<AtomicU32>,
}

impl CallSink for Slow {
    async fn write(&self, rows: Arc<Vec<CallRecord>>) -> Result<(), AnalyticsError> {
        tokio::time::sleep(self.delay).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.insert(rows).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_loses_nothing() {
    const EVENTS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let bus = EventBus::new();
    let slow = Slow {
        inner: store.clone(),
        delay: Duration::from_millis(25),
        writes: Arc::default(),
    };
    let recorder = Recorder::attach(&bus, slow.clone(), prices(), RecorderOptions::default());
    let publisher = bus.clone();
    let spec = Spec::new("openai", "gpt-4o-mini", usage(100, 10, 0, 0));
    tokio::task::spawn_blocking(move || {
        let at = SystemTime::now();
        for i in 0..EVENTS {
            publisher.publish(spec.event(at, &format!("run-{i}")));
        }
    })
    .await
    .unwrap();
    // The publisher ran far ahead of the 25 ms-per-batch store.
    assert!(recorder.stats().rows_written < EVENTS as u64);
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.rows_written, EVENTS as u64);
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(bus.dropped(), 0);
    assert_eq!(store.count().await.unwrap(), EVENTS as u64);
    // Full batches: at most batch_size rows per write, so at least 100 writes,
    // and not many more.
    let writes = slow.writes.load(Ordering::Relaxed);
    assert!((100..=110).contains(&writes), "{writes} writes");
    // 100 input × 150,000 + 10 output × 600,000 pico-USD = 21,000 nano-USD per
    // call: $2.10 for all of them.
    let rows = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(rows[0].cost_nanos, 21_000 * EVENTS as i64);
    assert_eq!(
        dspex_analytics::prices::format_usd(rows[0].cost_nanos),
        "$2.100000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_calls_wait_for_a_slow_store_and_nothing_is_lost() {
    const CALLS: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_scripted("openai", ScriptedLm::replies(["ok"]))
        .await
        .unwrap();
    let slow = Slow {
        inner: store.clone(),
        delay: Duration::from_millis(5),
        writes: Arc::default(),
    };
    let options = RecorderOptions {
        batch_size: 100,
        max_pending: 200,
        ..RecorderOptions::default()
    };
    let recorder = Recorder::attach(client.events(), slow, prices(), options);
    let mut most_pending = 0;
    for _ in 0..CALLS {
        client
            .request(
                "openai",
                vec![Message::user("hi")],
                RequestOptions::new().model("gpt-4o-mini"),
            )
            .await
            .unwrap();
        let queued = client
            .events()
            .subscriber_stats()
            .into_iter()
            .find(|s| s.name == "analytics-recorder")
            .unwrap()
            .pending;
        most_pending = most_pending.max(queued);
    }
    // Calls start only while at most `max_pending` events wait, so the queue
    // stays bounded (one call's event past the mark at most) while the store
    // takes 5 ms per batch of 100.
    assert!(most_pending <= 201, "{most_pending} pending");
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.rows_written, CALLS as u64);
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(store.count().await.unwrap(), CALLS as u64);
    assert!(!client.events().is_congested());
}

/// A store that fails its first `failures` writes.
#[derive(Clone)]
struct Flaky {
    inner: Store,
    failures: Arc<AtomicU32>,
}

impl CallSink for Flaky {
    async fn write(&self, rows: Arc<Vec<CallRecord>>) -> Result<(), AnalyticsError> {
        if self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(AnalyticsError::Store {
                backend: "test",
                message: "connection reset".to_owned(),
                retryable: true,
            });
        }
        self.inner.insert(rows).await
    }
}

#[tokio::test]
async fn failed_writes_are_retried_with_the_batch_kept() {
    let store = Store::open(":memory:", None).await.unwrap();
    let bus = EventBus::new();
    let sink = Flaky {
        inner: store.clone(),
        failures: Arc::new(AtomicU32::new(3)),
    };
    let options = RecorderOptions {
        retry_backoff: Duration::from_millis(1),
        ..RecorderOptions::default()
    };
    let recorder = Recorder::attach(&bus, sink, prices(), options);
    let spec = Spec::new("openai", "gpt-4o-mini", usage(100, 10, 0, 0));
    for i in 0..250 {
        bus.publish(spec.event(SystemTime::now(), &format!("r{i}")));
    }
    let stats = recorder.flush().await.unwrap();
    assert_eq!(stats.rows_written, 250);
    assert_eq!(stats.write_errors, 3);
    assert_eq!(stats.rows_lost, 0);
    assert_eq!(store.count().await.unwrap(), 250);
    // A store that never recovers: rows are counted lost, not silently gone.
    let broken = Flaky {
        inner: store.clone(),
        failures: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let options = RecorderOptions {
        retry_backoff: Duration::from_millis(1),
        max_write_attempts: 2,
        ..RecorderOptions::default()
    };
    let recorder = Recorder::attach(&bus, broken, prices(), options);
    bus.publish(spec.event(SystemTime::now(), "lost"));
    let stats = recorder.shutdown().await.unwrap();
    assert_eq!(stats.rows_lost, 1);
    assert_eq!(stats.write_errors, 2);
}

#[tokio::test]
async fn failed_calls_are_recorded_with_their_error_kind() {
    let store = Store::open(":memory:", None).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    // A scripted LM that refuses one prompt: an invalid-request failure.
    let lm = ScriptedLm::from_fn(|request| {
        let last = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        if last.contains("bad") {
            Err("refused".to_owned())
        } else {
            Ok("fine".to_owned())
        }
    });
    client.add_scripted("openai", lm).await.unwrap();
    // A real HTTP upstream that always answers 500, no retries.
    let upstream = dspex_mock::MockServer::start(dspex_mock::MockConfig {
        fail_500: 1.0,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config =
        ProviderConfig::openai_compatible("flaky", &upstream.base_url(), "mock-model").unwrap();
    config.retry.max_retries = 0;
    client.add_provider(config).await.unwrap();

    let recorder = Recorder::attach(
        client.events(),
        store.clone(),
        prices(),
        RecorderOptions::default(),
    );
    let options = || {
        RequestOptions::new()
            .model("gpt-4o-mini")
            .tag("team", "search")
    };
    client
        .request("openai", vec![Message::user("good")], options())
        .await
        .unwrap();
    let refused = client
        .request("openai", vec![Message::user("bad")], options())
        .await
        .unwrap_err();
    assert_eq!(refused.kind().as_str(), "invalid_request");
    let upstream_error = client
        .request("flaky", vec![Message::user("hello")], RequestOptions::new())
        .await
        .unwrap_err();
    recorder.shutdown().await.unwrap();

    let rows = store.rows(TimeRange::All).await.unwrap();
    assert_eq!(rows.len(), 3);
    let ok = &rows[0];
    assert_eq!(ok.status, "success");
    assert_eq!(ok.error_kind, None);
    assert_eq!(ok.tags, r#"{"team":"search"}"#);
    assert!(ok.cost_nanos.unwrap() > 0);
    let failed = rows
        .iter()
        .find(|r| r.error_kind.as_deref() == Some("invalid_request"))
        .unwrap();
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.provider, "openai");
    assert_eq!(failed.usage.input, 0);
    // A failure of a priced model costs exactly nothing (it is not unpriced).
    assert_eq!(failed.cost_nanos, Some(0));
    let http = rows.iter().find(|r| r.provider == "flaky").unwrap();
    assert_eq!(http.status, "failed");
    assert_eq!(
        http.error_kind.as_deref(),
        Some(upstream_error.kind().as_str())
    );
    assert_eq!(http.error_kind.as_deref(), Some("server_error"));
    assert_eq!(http.http_status, Some(500));
    assert_eq!(http.attempts, 1);
    // mock-model is not in the price table: unpriced, not zero.
    assert_eq!(http.cost_nanos, None);

    let by_status = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Status, GroupBy::ErrorKind])
        .await
        .unwrap();
    let summary: Vec<(Option<String>, Option<String>, u64)> = by_status
        .iter()
        .map(|r| (r.group[0].clone(), r.group[1].clone(), r.requests))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("failed".into()), Some("invalid_request".into()), 1),
            (Some("failed".into()), Some("server_error".into()), 1),
            (Some("success".into()), None, 1),
        ]
    );
    let total = store.get_cost_analysis(TimeRange::All, &[]).await.unwrap();
    assert_eq!(total[0].errors, 2);
    assert_eq!(total[0].unpriced_requests, 1);
}

#[tokio::test]
async fn cache_hits_record_the_tier_and_what_they_saved() {
    let store = Store::open(":memory:", None).await.unwrap();
    let bus = EventBus::new();
    let recorder = Recorder::attach(&bus, store.clone(), prices(), RecorderOptions::default());
    let hit = Spec::new("openai", "gpt-4o-mini", usage(0, 0, 0, 0))
        .cached("l2", usage(10_000, 1_000, 0, 0));
    bus.publish(hit.event(SystemTime::now(), "c1"));
    bus.publish(
        Spec::new("openai", "gpt-4o-mini", usage(10_000, 1_000, 0, 0))
            .event(SystemTime::now(), "c2"),
    );
    recorder.shutdown().await.unwrap();
    let rows = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::CacheTier])
        .await
        .unwrap();
    // 10,000 × $0.15/M + 1,000 × $0.60/M = $0.0021
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].group, vec![None]);
    assert_eq!(rows[0].cost_nanos, 2_100_000);
    assert_eq!(rows[0].cache_hits, 0);
    assert_eq!(rows[1].group, vec![Some("l2".to_owned())]);
    assert_eq!(rows[1].cache_hits, 1);
    assert_eq!(rows[1].cost_nanos, 0);
    assert_eq!(rows[1].saved_cost_nanos, 2_100_000);
    let raw = store.rows(TimeRange::All).await.unwrap();
    let cached = raw.iter().find(|r| r.cache_tier.is_some()).unwrap();
    assert_eq!(cached.saved_usage.input, 10_000);
    assert_eq!(cached.saved_usage.output, 1_000);
}
