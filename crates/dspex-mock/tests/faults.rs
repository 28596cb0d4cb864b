//! Fault injection, server-side limits and auth over real loopback HTTP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{chat, client, messages, server, sse_data, sse_events, user};
use dspex_mock::{Fault, MockConfig, MockServer};
use serde_json::{Value, json};

fn stream(text: &str) -> Value {
    let mut request = user(text);
    request["stream"] = json!(true);
    request
}

fn anthropic(text: &str, stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn enqueued_faults_in_order() {
    let server = server(MockConfig::default()).await;
    server.enqueue([
        Fault::rate_limited(3),
        Fault::server_error(),
        Fault::Malformed,
        Fault::Truncate,
        Fault::Reply("forced reply".into()),
        Fault::Delay(Duration::from_millis(150)),
    ]);

    let response = chat(&server, user("a")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].is_string());
    assert_eq!(body["error"]["param"], Value::Null);

    let response = chat(&server, user("b")).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");

    let response = chat(&server, user("c")).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "malformed body parsed: {text}"
    );

    let mut response = chat(&server, user("d")).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let ended_in_error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        ended_in_error,
        "a truncated body ends with a broken connection"
    );
    assert!(
        received.starts_with(b"{\"id\":\"chatcmpl-4\""),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(serde_json::from_slice::<Value>(&received).is_err());

    let body: Value = chat(&server, user("e")).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "forced reply");

    let started = Instant::now();
    let body: Value = chat(&server, user("f")).await.json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(body["choices"][0]["message"]["content"], "echo: f");

    // The queue is empty again.
    assert_eq!(chat(&server, user("g")).await.status(), 200);

    let stats = server.stats();
    assert_eq!(stats.requests, 7);
    for kind in ["429", "500", "malformed", "truncate", "reply", "delay"] {
        assert_eq!(
            stats.injected.get(kind),
            Some(&1),
            "{kind}: {:?}",
            stats.injected
        );
    }
    assert_eq!(stats.by_status.get(&200), Some(&5));
    // Only complete, well-formed replies count their tokens.
    assert!(stats.output_tokens > 0);
}

#[tokio::test]
async fn faulty_openai_streams() {
    let server = server(MockConfig {
        chunk_chars: 2,
        ..MockConfig::default()
    })
    .await;
    server.enqueue([Fault::Malformed, Fault::Truncate]);

    let text = chat(&server, stream("a longer reply to stream"))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let garbled = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter(|d| serde_json::from_str::<Value>(d).is_err())
        .count();
    assert_eq!(garbled, 1, "{text}");

    let text = chat(&server, stream("a longer reply to stream"))
        .await
        .text()
        .await
        .unwrap();
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    assert!(data.len() > 2);
    for d in &data {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(server.stats().streamed, 2);
}

#[tokio::test]
async fn faulty_anthropic_replies() {
    let server = server(MockConfig::default()).await;
    server.enqueue([
        Fault::Truncate,
        Fault::Malformed,
        Fault::Truncate,
        Fault::Malformed,
    ]);

    let text = messages(&server, anthropic("a reply to be cut short", true))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert!(
        !events.iter().any(|(name, _)| name == "message_stop"),
        "{text}"
    );
    assert_eq!(events[0].0, "message_start");

    let text = messages(&server, anthropic("x", true))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    let bad = text
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .filter(|data| serde_json::from_str::<Value>(data).is_err())
        .count();
    assert_eq!(bad, 1);

    let response = messages(&server, anthropic("plain", false)).await;
    assert_eq!(response.status(), 200);
    if let Ok(bytes) = response.bytes().await {
        assert!(serde_json::from_slice::<Value>(&bytes).is_err());
    }
    let response = messages(&server, anthropic("plain", false)).await;
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());
}

async fn outcome_sequence(seed: u64, count: usize) -> Vec<(u16, bool)> {
    let server = server(MockConfig {
        seed,
        fail_429: 0.25,
        fail_500: 0.15,
        malformed: 0.1,
        ..MockConfig::default()
    })
    .await;
    let mut outcomes = Vec::new();
    for i in 0..count {
        let response = chat(&server, user(&format!("q{i}"))).await;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        outcomes.push((status, serde_json::from_str::<Value>(&text).is_ok()));
    }
    let stats = server.stats();
    let injected: u64 = stats.injected.values().sum();
    let not_ok = outcomes
        .iter()
        .filter(|(status, valid)| *status != 200 || !valid)
        .count();
    assert_eq!(injected, not_ok as u64);
    outcomes
}

#[tokio::test]
async fn fraction_faults_are_deterministic_per_seed() {
    let first = outcome_sequence(42, 60).await;
    let second = outcome_sequence(42, 60).await;
    assert_eq!(first, second);
    let other = outcome_sequence(43, 60).await;
    assert_ne!(first, other);
    let statuses: Vec<u16> = first.iter().map(|(status, _)| *status).collect();
    assert!(statuses.contains(&429) && statuses.contains(&500) && statuses.contains(&200));
    assert!(first.iter().any(|(status, valid)| *status == 200 && !valid));
}

#[tokio::test]
async fn fraction_429_sends_configured_retry_after() {
    let server = server(MockConfig {
        fail_429: 1.0,
        retry_after_secs: 9,
        ..MockConfig::default()
    })
    .await;
    let response = chat(&server, user("x")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "9");
    assert_eq!(server.stats().injected.get("429"), Some(&1));
}

#[tokio::test]
async fn hang_outlasts_client_timeout_and_shutdown_is_prompt() {
    let server = server(MockConfig {
        hang: 1.0,
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&user("hang"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.stats().injected.get("hang"), Some(&1));

    // A request still hanging does not hold up shutdown.
    let url = format!("{}/chat/completions", server.base_url());
    let pending =
        tokio::spawn(async move { common::client().post(url).json(&user("hang")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let outcome = pending.await.unwrap();
    if let Ok(response) = outcome {
        assert_eq!(response.status(), 503);
    }
}

#[tokio::test]
async fn rpm_limit_gives_429_with_headers() {
    let server = server(MockConfig {
        rpm: Some(2),
        ..MockConfig::default()
    })
    .await;
    for remaining in ["1", "0"] {
        let response = chat(&server, user("x")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(
            response.headers()["x-ratelimit-remaining-requests"],
            remaining
        );
    }
    let response = chat(&server, user("x")).await;
    assert_eq!(response.status(), 429);
    let headers = response.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let reset = headers["x-ratelimit-reset-requests"].to_str().unwrap();
    assert!(reset.ends_with('s'), "{reset}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requests")
    );

    // The messages route is limited too, with Anthropic's headers as well.
    let response = messages(&server, anthropic("x", false)).await;
    assert_eq!(response.status(), 429);
    let headers = response.headers();
    assert!(headers.contains_key("retry-after"));
    assert_eq!(headers["anthropic-ratelimit-requests-limit"], "2");
    assert_eq!(headers["anthropic-ratelimit-requests-remaining"], "0");
    assert!(
        headers["anthropic-ratelimit-requests-reset"]
            .to_str()
            .unwrap()
            .ends_with('Z')
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(server.stats().injected.get("limit_429"), Some(&2));
}

#[tokio::test]
async fn tpm_limit_counts_prompt_and_max_tokens() {
    let server = server(MockConfig {
        tpm: Some(100),
        ..MockConfig::default()
    })
    .await;
    let mut request = user("hi");
    request["max_tokens"] = json!(60);
    // prompt: 1 + 4 + 3 = 8; cost 68.
    let response = chat(&server, request.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-ratelimit-limit-tokens"], "100");
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "32");
    let response = chat(&server, request).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "32");
    assert!(response.headers().contains_key("retry-after"));
    // A cheap request still fits.
    assert_eq!(chat(&server, user("hi")).await.status(), 200);
}

#[tokio::test]
async fn required_api_key_quotes_the_sent_key() {
    let server = server(MockConfig {
        require_api_key: Some("sk-right".into()),
        ..MockConfig::default()
    })
    .await;
    let url = format!("{}/chat/completions", server.base_url());
    let client = client();

    let response = client.post(&url).json(&user("x")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let response = client
        .post(&url)
        .bearer_auth("sk-wrong-secret-123")
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sk-wrong-secret-123")
    );

    let response = client
        .post(&url)
        .bearer_auth("sk-right")
        .json(&user("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = client
        .post(format!("{}/v1/messages", server.anthropic_base_url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-ant-leaked")
        .json(&anthropic("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sk-ant-leaked")
    );

    let response = client
        .post(format!("{}/v1/messages", server.anthropic_base_url()))
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-right")
        .json(&anthropic("x", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Auth comes before queued faults: a refused request leaves the queue alone.
    server.enqueue([Fault::server_error()]);
    assert_eq!(
        client
            .post(&url)
            .json(&user("x"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .post(&url)
            .bearer_auth("sk-right")
            .json(&user("x"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    assert_eq!(server.stats().injected.get("401"), Some(&4));
}

#[tokio::test]
async fn embeddings_take_faults_too() {
    let server: MockServer = server(MockConfig::default()).await;
    server.enqueue([Fault::status(503)]);
    let response = client()
        .post(format!("{}/embeddings", server.base_url()))
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
}
