//! Stats over HTTP and in process, in-flight peaks, latency and recorded requests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{chat, client, messages, server, user};
use dspex_mock::{Fault, MockConfig, Stats};
use serde_json::json;

#[tokio::test]
async fn stats_endpoint_and_reset() {
    let server = server(MockConfig::default()).await;
    assert_eq!(server.stats(), Stats::default());
    chat(&server, user("one")).await;
    server.enqueue([Fault::server_error()]);
    chat(&server, user("two")).await;
    messages(
        &server,
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "three"}]}),
    )
    .await;

    let url = server.anthropic_base_url();
    let over_http: Stats = client()
        .get(format!("{url}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, server.stats());
    assert_eq!(over_http.requests, 3);
    assert_eq!(over_http.by_route.get("chat_completions"), Some(&2));
    assert_eq!(over_http.by_route.get("messages"), Some(&1));
    assert_eq!(over_http.by_status.get(&200), Some(&2));
    assert_eq!(over_http.by_status.get(&500), Some(&1));
    assert_eq!(over_http.injected.get("500"), Some(&1));
    assert!(over_http.input_tokens > 0 && over_http.output_tokens > 0);
    assert!(over_http.max_in_flight >= 1);

    let reset = client()
        .post(format!("{url}/stats/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(server.stats(), Stats::default());

    chat(&server, user("again")).await;
    assert_eq!(server.stats().requests, 1);
    server.reset_stats();
    assert_eq!(server.stats(), Stats::default());
}

#[tokio::test]
async fn latency_and_max_in_flight() {
    let server = server(MockConfig {
        latency_ms: 200,
        jitter_ms: 20,
        ..MockConfig::default()
    })
    .await;
    let started = Instant::now();
    let requests = (0..5).map(|i| chat(&server, user(&format!("q{i}"))));
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "requests were not concurrent: {elapsed:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.max_in_flight, 5);
}

#[tokio::test]
async fn recorded_requests_keep_the_last_n() {
    let server = server(MockConfig {
        record_requests: 2,
        ..MockConfig::default()
    })
    .await;
    assert!(server.recorded().is_empty());
    for i in 0..3 {
        client()
            .post(format!("{}/chat/completions", server.base_url()))
            .header("X-Trace", format!("trace-{i}"))
            .json(&user(&format!("message {i}")))
            .send()
            .await
            .unwrap();
    }
    let recorded = server.recorded();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].route, "chat_completions");
    assert_eq!(recorded[0].headers["x-trace"], "trace-1");
    assert_eq!(recorded[1].headers["x-trace"], "trace-2");
    assert_eq!(recorded[1].headers["content-type"], "application/json");
    assert_eq!(recorded[1].body["messages"][0]["content"], "message 2");
    server.clear_recorded();
    assert!(server.recorded().is_empty());

    // Off by default.
    let quiet = common::server(MockConfig::default()).await;
    chat(&quiet, user("x")).await;
    assert!(quiet.recorded().is_empty());
}

#[tokio::test]
async fn bind_to_a_given_address_and_drop_stops() {
    let server =
        dspex_mock::MockServer::bind("127.0.0.1:0".parse().unwrap(), MockConfig::default())
            .await
            .unwrap();
    let addr = server.addr();
    assert_eq!(server.base_url(), format!("http://{addr}/v1"));
    assert_eq!(server.anthropic_base_url(), format!("http://{addr}"));
    assert_eq!(chat(&server, user("x")).await.status(), 200);
    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh = reqwest::Client::new();
    assert!(
        fresh
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err()
    );
}
