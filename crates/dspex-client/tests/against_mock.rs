//! The client end to end, over real loopback HTTP, against the mock upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_client::config::RawProvider;
use dspex_client::events::{LimitSource, Outcome};
use dspex_client::{
    ApiErrorKind, ChatParams, Client, ClientConfig, ClientErrorKind, EmbeddingRequest, EventKind,
    FinishReason, Message, ProviderConfig, RequestOptions, ResponseFormat, StreamEvent,
    TimeoutPhase,
};
use dspex_core::CorrelationId;
use dspex_core::events::{Delivery, Subscription};
use dspex_core::protect::CircuitState;
use dspex_mock::{Fault, MockConfig, MockServer};
use futures::StreamExt;
use serde_json::json;

const KEY: &str = "sk-dspex-test-SECRET-0123456789abcdef";

fn provider(
    id: &str,
    kind: &str,
    base_url: &str,
    tweak: impl FnOnce(&mut RawProvider),
) -> ProviderConfig {
    let mut raw = RawProvider {
        kind: Some(kind.into()),
        base_url: Some(base_url.into()),
        model: Some(
            if kind == "openai" {
                "gpt-4o-mini"
            } else {
                "claude-3-5-haiku-latest"
            }
            .into(),
        ),
        retry_base_ms: Some(5),
        retry_max_ms: Some(50),
        ..RawProvider::default()
    };
    tweak(&mut raw);
    ProviderConfig::validate(id, &raw, None, &|name| {
        (name == "DSPEX_TEST_KEY").then(|| KEY.to_owned())
    })
    .unwrap()
}

async fn client_with(providers: Vec<ProviderConfig>) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    for p in providers {
        client.add_provider(p).await.unwrap();
    }
    client
}

/// A client with the mock as `oa` (OpenAI) and as `claude` (Anthropic).
async fn openai_and_anthropic(upstream: &MockServer) -> Client {
    client_with(vec![
        provider("oa", "openai", &upstream.base_url(), |_| {}),
        provider(
            "claude",
            "anthropic",
            &upstream.anthropic_base_url(),
            |_| {},
        ),
    ])
    .await
}

async fn mock(config: MockConfig) -> MockServer {
    MockServer::start(config).await.unwrap()
}

fn user(text: &str) -> Vec<Message> {
    vec![Message::user(text)]
}

fn drain(sub: &mut Subscription<dspex_client::Event>) -> Vec<Arc<dspex_client::Event>> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        out.push(e);
    }
    out
}

fn completions(events: &[Arc<dspex_client::Event>]) -> Vec<dspex_client::events::Completion> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RequestCompleted(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn chat_round_trip_reports_usage_and_exactly_one_completion() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let id = CorrelationId::from("run-42");
    let response = client
        .request(
            "oa",
            vec![Message::system("Be brief."), Message::user("hello there")],
            RequestOptions::new()
                .correlation_id(id.clone())
                .tag("step", "greet"),
        )
        .await
        .unwrap();
    assert_eq!(response.text(), "echo: hello there");
    assert_eq!(response.finish_reason(), Some(&FinishReason::Stop));
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);
    assert_eq!(response.attempts, 1);
    assert_eq!(response.correlation_id, id);
    assert!(
        response
            .request_id
            .as_deref()
            .is_some_and(|r| r.starts_with("req_"))
    );
    let stats = upstream.stats();
    assert_eq!(stats.input_tokens, response.usage.input_tokens);
    assert_eq!(stats.output_tokens, response.usage.output_tokens);

    let events = drain(&mut events);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.correlation_id.as_ref() == Some(&id))
    );
    let done = completions(&events);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].outcome, Outcome::Success);
    assert_eq!(done[0].usage, response.usage);
    assert_eq!(
        done[0].call.tags.get("step").map(String::as_str),
        Some("greet")
    );
    assert_eq!(&*done[0].call.provider, "oa");
    assert_eq!(done[0].call.system, "openai");
}

#[tokio::test]
async fn anthropic_gets_its_own_wire_format() {
    let upstream = mock(MockConfig {
        record_requests: 10,
        ..MockConfig::default()
    })
    .await;
    let client = client_with(vec![provider(
        "claude",
        "anthropic",
        &upstream.anthropic_base_url(),
        |r| {
            r.api_key_env = Some("DSPEX_TEST_KEY".into());
            r.default_max_tokens = Some(321);
        },
    )])
    .await;
    let response = client
        .request(
            "claude",
            vec![Message::system("Be kind."), Message::user("hi")],
            RequestOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(response.text(), "echo: hi");
    assert!(
        response
            .id
            .as_deref()
            .is_some_and(|id| id.starts_with("msg_"))
    );
    let recorded = upstream.recorded();
    let request = recorded.last().unwrap();
    assert_eq!(request.route, "messages");
    assert_eq!(request.body["system"], "Be kind.");
    assert_eq!(request.body["max_tokens"], 321);
    assert_eq!(
        request.body["messages"],
        json!([{"role": "user", "content": "hi"}])
    );
    assert_eq!(
        request.headers.get("anthropic-version").map(String::as_str),
        Some("2023-06-01")
    );
    assert!(request.headers.contains_key("x-api-key"));
    assert!(!request.headers.contains_key("authorization"));
}

#[tokio::test]
async fn both_providers_stream_and_report_usage() {
    let upstream = mock(MockConfig {
        record_requests: 10,
        chunk_chars: 4,
        ..MockConfig::default()
    })
    .await;
    let client = openai_and_anthropic(&upstream).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    for id in ["oa", "claude"] {
        let prompt = "stream this reply please";
        let mut stream = client
            .request_stream(id, user(prompt), RequestOptions::new())
            .await
            .unwrap();
        let mut text = String::new();
        let mut deltas = 0;
        let mut done = None;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Delta(d) => {
                    deltas += 1;
                    text.push_str(&d.content);
                }
                StreamEvent::Done(response) => done = Some(response),
            }
        }
        let done = done.expect("a final response");
        assert_eq!(text, format!("echo: {prompt}"), "{id}");
        assert_eq!(done.text(), text);
        assert!(deltas >= 7, "{id}: {deltas} deltas");
        assert!(
            done.usage.input_tokens > 0 && done.usage.output_tokens > 0,
            "{id}: {:?}",
            done.usage
        );
        assert_eq!(done.finish_reason(), Some(&FinishReason::Stop));
    }
    let recorded = upstream.recorded();
    assert_eq!(
        recorded[0].body["stream_options"],
        json!({"include_usage": true})
    );
    assert_eq!(recorded[1].body["stream"], true);
    let done = completions(&drain(&mut events));
    assert_eq!(done.len(), 2);
    assert!(
        done.iter()
            .all(|c| c.outcome == Outcome::Success && c.usage.output_tokens > 0)
    );
}

#[tokio::test]
async fn retries_honour_retry_after() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    upstream.enqueue([Fault::rate_limited(1)]);
    let start = Instant::now();
    let response = client
        .request("oa", user("patience"), RequestOptions::new())
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(response.attempts, 2);
    let events = drain(&mut events);
    let retry = events.iter().find_map(|e| match &e.kind {
        EventKind::Retrying(r) => Some(r.clone()),
        _ => None,
    });
    assert!(retry.unwrap().delay >= Duration::from_secs(1));
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::RateLimited(r) if r.source == LimitSource::Upstream)
    ));
    assert_eq!(completions(&events)[0].attempts, 2);
}

#[tokio::test]
async fn server_errors_are_retried_then_fail_with_the_trail() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(2);
    })])
    .await;
    upstream.enqueue([
        Fault::server_error(),
        Fault::server_error(),
        Fault::server_error(),
    ]);
    let error = client
        .request(
            "oa",
            user("x"),
            RequestOptions::new().correlation_id("run-7".into()),
        )
        .await
        .unwrap_err();
    let ClientErrorKind::Api { kind, .. } = error.kind() else {
        panic!("{error:?}")
    };
    assert_eq!((*kind, error.status()), (ApiErrorKind::Server, Some(500)));
    assert!(error.is_retryable());
    assert_eq!(upstream.stats().requests, 3);
    let context = error.context().unwrap();
    assert_eq!(context.correlation_id.as_str(), "run-7");
    let attempts = context
        .breadcrumbs
        .iter()
        .filter(|b| b.category == "attempt")
        .count();
    assert_eq!(attempts, 3, "{context}");
    assert!(
        context.breadcrumbs[0]
            .message
            .contains("oa (openai) model gpt-4o-mini"),
        "{context}"
    );
}

#[tokio::test]
async fn client_errors_map_to_typed_kinds_and_are_not_retried() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    for (status, kind, retryable) in [
        (400, ApiErrorKind::BadRequest, false),
        (401, ApiErrorKind::Authentication, false),
        (403, ApiErrorKind::PermissionDenied, false),
        (404, ApiErrorKind::NotFound, false),
        (413, ApiErrorKind::PayloadTooLarge, false),
        (422, ApiErrorKind::UnprocessableEntity, false),
    ] {
        upstream.reset_stats();
        upstream.enqueue([Fault::Status {
            code: status,
            retry_after_secs: None,
            message: format!("custom message {status}"),
        }]);
        let error = client
            .request("oa", user("x"), RequestOptions::new())
            .await
            .unwrap_err();
        let ClientErrorKind::Api { kind: got, .. } = error.kind() else {
            panic!("{error:?}")
        };
        assert_eq!(*got, kind);
        assert_eq!(error.message(), format!("custom message {status}"));
        assert_eq!(error.is_retryable(), retryable);
        assert_eq!(upstream.stats().requests, 1, "{status} was not retried");
    }
    // 408 and 5xx are retried.
    upstream.reset_stats();
    upstream.enqueue([Fault::status(408), Fault::status(503)]);
    let ok = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(ok.attempts, 3);
}

#[tokio::test]
async fn breaker_opens_fails_fast_half_opens_and_closes() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(0);
        r.circuit_breaker = Some(dspex_client::config::RawBreaker {
            failure_threshold: Some(2),
            open_ms: Some(300),
            half_open_probes: Some(1),
        });
    })])
    .await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    // 429s and client errors are not failures.
    upstream.enqueue([
        Fault::rate_limited(0),
        Fault::status(400),
        Fault::status(404),
    ]);
    for _ in 0..3 {
        client
            .request("oa", user("x"), RequestOptions::new())
            .await
            .unwrap_err();
    }
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Closed
    );
    upstream.enqueue([Fault::server_error(), Fault::server_error()]);
    for _ in 0..2 {
        client
            .request("oa", user("x"), RequestOptions::new())
            .await
            .unwrap_err();
    }
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Open
    );
    let seen = upstream.stats().requests;
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    let (ClientErrorKind::CircuitOpen, Some(retry_in), Some(provider)) =
        (error.kind(), error.retry_after(), error.provider())
    else {
        panic!("{error:?}")
    };
    assert!(retry_in <= Duration::from_millis(300));
    assert_eq!(provider, "oa");
    assert_eq!(
        upstream.stats().requests,
        seen,
        "failed fast without reaching the upstream"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    client
        .request("oa", user("probe"), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Closed
    );
    let changes: Vec<(CircuitState, CircuitState)> = drain(&mut events)
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::CircuitChanged(c) => Some((c.from, c.to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed)
        ]
    );
}

#[tokio::test]
async fn malformed_and_truncated_replies_are_typed() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(0);
    })])
    .await;
    upstream.enqueue([Fault::Malformed]);
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ClientErrorKind::MalformedResponse { retryable: true }
        ),
        "{error:?}"
    );
    // Retryable, though this provider allows no retries.
    assert!(error.is_retryable());

    upstream.enqueue([Fault::Truncate]);
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ClientErrorKind::Truncated { streaming: false }
                | ClientErrorKind::MalformedResponse { .. }
        ),
        "{error:?}"
    );

    for fault in [Fault::Truncate, Fault::Malformed] {
        upstream.enqueue([fault.clone()]);
        let mut stream = client
            .request_stream(
                "oa",
                user("a long enough prompt to stream in pieces"),
                RequestOptions::new(),
            )
            .await
            .unwrap();
        let mut error = None;
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                error = Some(e);
            }
        }
        let error = error.unwrap_or_else(|| panic!("{fault:?} gave no error"));
        match fault {
            Fault::Truncate => assert!(
                matches!(error.kind(), ClientErrorKind::Truncated { streaming: true }),
                "{error:?}"
            ),
            _ => assert!(
                matches!(
                    error.kind(),
                    ClientErrorKind::MalformedResponse { retryable: false }
                ),
                "{error:?}"
            ),
        }
        assert!(
            !error.is_retryable(),
            "nothing is retried once a stream has started"
        );
    }
}

/// A garbled 200 body, and a stream garbled before its first event reached
/// the caller, are retried by default; `retry_malformed = false` turns that
/// off. (A stream garbled later is never retried: the test above.)
#[tokio::test]
async fn garbled_replies_are_retried_before_anything_reached_the_caller() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![
        provider("oa", "openai", &upstream.base_url(), |r| {
            r.max_retries = Some(2);
            r.retry_base_ms = Some(1);
        }),
        provider("strict", "openai", &upstream.base_url(), |r| {
            r.max_retries = Some(2);
            r.retry_base_ms = Some(1);
            r.retry_malformed = Some(false);
        }),
        provider("claude", "anthropic", &upstream.anthropic_base_url(), |r| {
            r.max_retries = Some(2);
            r.retry_base_ms = Some(1);
        }),
    ])
    .await;
    upstream.enqueue([Fault::Malformed]);
    let reply = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap();
    assert!(!reply.text().is_empty(), "{reply:?}");
    assert_eq!(upstream.stats().requests, 2, "one garbled, one good");

    for id in ["oa", "claude"] {
        upstream.reset_stats();
        upstream.enqueue([Fault::MalformedStart]);
        let mut stream = client
            .request_stream(id, user("a prompt to stream"), RequestOptions::new())
            .await
            .unwrap();
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            if let StreamEvent::Delta(delta) = event.unwrap() {
                text.push_str(&delta.content);
            }
        }
        assert!(
            !text.is_empty(),
            "{id}: the retried stream delivered its text"
        );
        assert_eq!(
            upstream.stats().requests,
            2,
            "{id}: one garbled start, one good"
        );
    }

    upstream.reset_stats();
    upstream.enqueue([Fault::Malformed]);
    let error = client
        .request("strict", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ClientErrorKind::MalformedResponse { retryable: false }
        ),
        "{error:?}"
    );
    assert_eq!(upstream.stats().requests, 1, "not retried when turned off");
}

#[tokio::test]
async fn first_byte_timeouts_are_typed_and_retried() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![
        provider("patient", "openai", &upstream.base_url(), |r| {
            r.first_byte_timeout_ms = Some(150);
        }),
        provider("once", "openai", &upstream.base_url(), |r| {
            r.first_byte_timeout_ms = Some(150);
            r.max_retries = Some(0);
        }),
    ])
    .await;
    upstream.enqueue([Fault::Hang(Duration::from_secs(5))]);
    let ok = client
        .request("patient", user("x"), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(ok.attempts, 2);
    upstream.enqueue([Fault::Hang(Duration::from_secs(5))]);
    let error = client
        .request("once", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::Timeout { phase: TimeoutPhase::FirstByte, after } if *after == Duration::from_millis(150)),
        "{error:?}"
    );
}

#[tokio::test]
async fn connection_failures_are_typed() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = client_with(vec![provider(
        "gone",
        "openai",
        &format!("http://127.0.0.1:{port}/v1"),
        |r| {
            r.max_retries = Some(1);
        },
    )])
    .await;
    let error = client
        .request("gone", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::Connect),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(
        !error.to_string().contains("/v1/chat"),
        "no URL path in messages: {error}"
    );
}

#[tokio::test]
async fn local_buckets_wait_then_refuse_with_the_bucket_name() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.limits = vec![dspex_client::config::RawLimit {
            kind: "requests".into(),
            limit: 2,
            window: "1s".into(),
        }];
        r.max_wait_ms = Some(50);
    })])
    .await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    for _ in 0..2 {
        client
            .request("oa", user("x"), RequestOptions::new())
            .await
            .unwrap();
    }
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    let (ClientErrorKind::RateLimited { bucket }, Some(retry_after)) =
        (error.kind(), error.retry_after())
    else {
        panic!("{error:?}")
    };
    assert_eq!(bucket, "requests/1s");
    assert!(retry_after <= Duration::from_secs(1));
    assert_eq!(upstream.stats().requests, 2);
    // With a longer allowed wait, the same call waits for room instead.
    let start = Instant::now();
    let options = RequestOptions {
        max_wait: Some(Duration::from_secs(3)),
        ..RequestOptions::new()
    };
    client.request("oa", user("x"), options).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert!(drain(&mut events).iter().any(
        |e| matches!(&e.kind, EventKind::RateLimited(r) if r.source == LimitSource::Local && r.bucket == "requests/1s")
    ));
}

#[tokio::test]
async fn token_buckets_refuse_what_can_never_fit() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.tpm = Some(100);
    })])
    .await;
    let error = client
        .request("oa", user("x"), RequestOptions::new().max_tokens(1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ClientErrorKind::OverCapacity { limit: 100, .. }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("tokens/1m"), "{error}");
    assert_eq!(upstream.stats().requests, 0);
}

#[tokio::test]
async fn an_upstream_429_pauses_the_provider() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(0);
    })])
    .await;
    upstream.enqueue([Fault::rate_limited(1)]);
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    let start = Instant::now();
    client
        .request("oa", user("y"), RequestOptions::new())
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_pool_bounds_requests_in_flight() {
    let upstream = mock(MockConfig {
        latency_ms: 20,
        ..MockConfig::default()
    })
    .await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.pool_size = Some(4);
    })])
    .await;
    let calls = (0..32).map(|i| {
        let client = client.clone();
        async move {
            client
                .request("oa", user(&format!("call {i}")), RequestOptions::new())
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    let stats = upstream.stats();
    assert_eq!(stats.requests, 32);
    assert!(
        stats.max_in_flight <= 4,
        "{} in flight",
        stats.max_in_flight
    );
    assert_eq!(client.provider("oa").unwrap().available_slots(), 4);
}

#[tokio::test]
async fn n_choices_tools_and_json_mode_pass_through() {
    let upstream = mock(MockConfig {
        record_requests: 10,
        ..MockConfig::default()
    })
    .await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let two = client
        .request(
            "oa",
            user("pick"),
            RequestOptions::new().params(ChatParams {
                n: Some(2),
                ..ChatParams::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(two.choices.len(), 2);
    assert_eq!(two.choices[1].index, 1);

    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let called = client
        .request(
            "oa",
            user("what is the weather in Paris?"),
            RequestOptions::new().params(ChatParams {
                tools: Some(Arc::new(tools.clone())),
                tool_choice: Some(json!("auto")),
                ..ChatParams::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(called.finish_reason(), Some(&FinishReason::ToolCalls));
    let calls = called.choices[0].tool_calls.as_ref().unwrap();
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(upstream.recorded()[1].body["tools"], tools);

    let json_reply = client
        .request(
            "oa",
            user("answer in json"),
            RequestOptions::new().params(ChatParams {
                response_format: Some(ResponseFormat::JsonSchema {
                    name: "answer".into(),
                    schema: json!({"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "number"}}}),
                    strict: true,
                }),
                ..ChatParams::default()
            }),
        )
        .await
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(json_reply.text()).unwrap();
    assert!(
        parsed["answer"].is_string() && parsed["score"].is_number(),
        "{parsed}"
    );
}

#[tokio::test]
async fn embeddings_round_trip() {
    let upstream = mock(MockConfig::default()).await;
    let client = openai_and_anthropic(&upstream).await;
    let request = EmbeddingRequest {
        input: vec!["first text".into(), "second text".into(), "third".into()],
        dimensions: Some(64),
        ..EmbeddingRequest::default()
    };
    let response = client
        .embed("oa", request.clone(), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(response.vectors.len(), 3);
    assert!(response.vectors.iter().all(|v| v.len() == 64));
    let norm: f32 = response.vectors[0].iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);
    let error = client
        .embed("claude", request, RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::Unsupported { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn dropped_calls_and_streams_record_one_cancellation_each() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    upstream.enqueue([Fault::Hang(Duration::from_secs(10))]);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        client.request("oa", user("slow"), RequestOptions::new()),
    )
    .await;
    assert!(abandoned.is_err());
    let mut stream = client
        .request_stream(
            "oa",
            user("a reply long enough to come in many pieces"),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    let _first = stream.next().await.unwrap().unwrap();
    drop(stream);
    let done = completions(&drain(&mut events));
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().all(|c| c.outcome == Outcome::Cancelled),
        "{done:?}"
    );
    assert_eq!(
        client.provider("oa").unwrap().available_slots(),
        16,
        "slots released"
    );
}

#[tokio::test]
async fn unknown_providers_list_the_known_ones_and_are_recorded() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let error = client
        .request("nope", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "no provider named `nope` (configured: oa)"
    );
    let done = completions(&drain(&mut events));
    assert_eq!(done.len(), 1);
    assert!(matches!(
        done[0].outcome,
        Outcome::Failed {
            error_kind: "unknown_provider",
            ..
        }
    ));
    let error = client
        .request("oa", vec![], RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::InvalidRequest),
        "{error:?}"
    );
}

#[tokio::test]
async fn impossible_sampling_parameters_are_refused_before_any_request() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |_| {})]).await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    let cases: [(&str, ChatParams); 7] = [
        (
            "temperature NaN",
            ChatParams {
                temperature: Some(f32::NAN),
                ..ChatParams::default()
            },
        ),
        (
            "temperature 2.5",
            ChatParams {
                temperature: Some(2.5),
                ..ChatParams::default()
            },
        ),
        (
            "temperature -1",
            ChatParams {
                temperature: Some(-1.0),
                ..ChatParams::default()
            },
        ),
        (
            "top_p NaN",
            ChatParams {
                top_p: Some(f32::NAN),
                ..ChatParams::default()
            },
        ),
        (
            "top_p 1.5",
            ChatParams {
                top_p: Some(1.5),
                ..ChatParams::default()
            },
        ),
        (
            "max_tokens 0",
            ChatParams {
                max_tokens: Some(0),
                ..ChatParams::default()
            },
        ),
        (
            "n 0",
            ChatParams {
                n: Some(0),
                ..ChatParams::default()
            },
        ),
    ];
    for (field, params) in &cases {
        let error = client
            .request(
                "oa",
                user("x"),
                RequestOptions::new().params(params.clone()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind(), ClientErrorKind::InvalidRequest),
            "{field}: {error:?}"
        );
        assert!(error.to_string().contains(field), "{field}: {error}");
    }
    assert_eq!(upstream.stats().requests, 0, "nothing reached the provider");
    // Every refusal is recorded, as a failed call.
    let done = completions(&drain(&mut events));
    assert_eq!(done.len(), cases.len());
    assert!(done.iter().all(|c| matches!(
        c.outcome,
        Outcome::Failed {
            error_kind: "invalid_request",
            ..
        }
    )));
    // The edges are fine.
    let edge = ChatParams {
        temperature: Some(2.0),
        top_p: Some(1.0),
        max_tokens: Some(1),
        n: Some(1),
        ..ChatParams::default()
    };
    client
        .request("oa", user("x"), RequestOptions::new().params(edge))
        .await
        .unwrap();
}

/// Collects everything every tracing event writes, at every level, from every crate.
#[derive(Clone, Default)]
struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_api_key_appears_in_no_log_error_or_debug_output() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The mock wants another key and quotes the one it got, like a careless provider.
    let upstream = mock(MockConfig {
        require_api_key: Some("a-different-key".into()),
        record_requests: 10,
        ..MockConfig::default()
    })
    .await;
    let client = client_with(vec![
        provider("oa", "openai", &upstream.base_url(), |r| {
            r.api_key_env = Some("DSPEX_TEST_KEY".into());
        }),
        provider("claude", "anthropic", &upstream.anthropic_base_url(), |r| {
            r.api_key_env = Some("DSPEX_TEST_KEY".into());
        }),
    ])
    .await;
    let mut texts = Vec::new();
    for id in ["oa", "claude"] {
        let error = client
            .request(id, user("x"), RequestOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind(), ClientErrorKind::Api { .. }) && error.status() == Some(401),
            "{error:?}"
        );
        assert!(
            error.to_string().contains("[redacted]"),
            "the key was quoted, then scrubbed: {error}"
        );
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
        texts.push(format!("{}", error.context().unwrap()));
        let mut stream_error = None;
        match client
            .request_stream(id, user("x"), RequestOptions::new())
            .await
        {
            Err(e) => stream_error = Some(e),
            Ok(mut s) => {
                while let Some(item) = s.next().await {
                    if let Err(e) = item {
                        stream_error = Some(e);
                    }
                }
            }
        }
        texts.push(format!("{:?}", stream_error.unwrap()));
    }
    // The key did reach the upstream, in the right header.
    let recorded = upstream.recorded();
    assert!(
        recorded
            .iter()
            .any(|r| r.headers.values().any(|v| v.contains(KEY)))
    );
    // Credentials in headers, URLs and the Redis backend stay out of Debug too.
    let mut raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some("https://user-token-xyz:pass-abc@proxy.example/v1".into()),
        rate_limit_backend: Some("redis://:redis-secret-pw@127.0.0.1:6379".into()),
        ..RawProvider::default()
    };
    raw.headers
        .insert("x-proxy-key".into(), "proxy-secret-value".into());
    texts.push(format!("{raw:?}"));
    let validated = ProviderConfig::validate("p", &raw, None, &|_| None).unwrap();
    texts.push(format!("{validated:?}"));
    texts.push(serde_json::to_string(&validated).unwrap());
    for text in &texts[texts.len() - 3..] {
        for secret in [
            "user-token-xyz",
            "pass-abc",
            "redis-secret-pw",
            "proxy-secret-value",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
    texts.push(format!("{client:?}"));
    texts.push(format!("{:?}", client.provider("oa").unwrap()));
    texts.push(serde_json::to_string(client.provider("oa").unwrap().config()).unwrap());
    texts.push(String::from_utf8_lossy(&capture.0.lock()).into_owned());
    assert!(
        texts.last().unwrap().len() > 1_000,
        "the capture saw the HTTP traffic logs"
    );
    for text in &texts {
        assert!(!text.contains(KEY), "the key leaked into: {text}");
        assert!(
            !text.contains("0123456789abcdef"),
            "part of the key leaked into: {text}"
        );
    }
}

#[tokio::test]
async fn absurd_retry_after_values_are_bounded_not_panics() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(0);
        r.max_retry_after_ms = Some(100);
    })])
    .await;
    upstream.enqueue([Fault::rate_limited(u64::MAX)]);
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(429));
    let start = Instant::now();
    client
        .request("oa", user("y"), RequestOptions::new())
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the pause was capped: {:?}",
        start.elapsed()
    );
    let forever = RequestOptions {
        max_wait: Some(Duration::MAX),
        ..RequestOptions::new()
    };
    client.request("oa", user("z"), forever).await.unwrap();
}

#[tokio::test]
async fn local_refusals_neither_open_nor_close_the_circuit() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(0);
        r.tpm = Some(10);
        r.circuit_breaker = Some(dspex_client::config::RawBreaker {
            failure_threshold: Some(1),
            open_ms: Some(100),
            half_open_probes: Some(1),
        });
    })])
    .await;
    upstream.enqueue([Fault::server_error()]);
    client
        .request("oa", user("x"), RequestOptions::new().max_tokens(1))
        .await
        .unwrap_err();
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Open
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A probe refused locally (it can never fit the token bucket) says nothing
    // about the upstream: the circuit must not close on it.
    let error = client
        .request("oa", user("x"), RequestOptions::new().max_tokens(1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::OverCapacity { .. }),
        "{error:?}"
    );
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::HalfOpen
    );
    client
        .request("oa", user("x"), RequestOptions::new().max_tokens(1))
        .await
        .unwrap();
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Closed
    );
}

#[tokio::test]
async fn waiting_for_a_pool_slot_is_bounded() {
    let upstream = mock(MockConfig {
        latency_ms: 300,
        ..MockConfig::default()
    })
    .await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.pool_size = Some(1);
        r.max_wait_ms = Some(50);
    })])
    .await;
    let (first, second) = tokio::join!(
        client.request("oa", user("a"), RequestOptions::new()),
        client.request("oa", user("b"), RequestOptions::new()),
    );
    let results = [first, second];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    let error = results.into_iter().find_map(Result::err).unwrap();
    assert!(
        matches!(error.kind(), ClientErrorKind::RateLimited { bucket } if bucket == "pool/1"),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_error_as_the_first_stream_event_is_retried() {
    use axum::response::IntoResponse;
    // A server that answers 200 and then an overloaded error event the first
    // time, and a normal stream the second time.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move || {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let body = if n == 0 {
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_owned()
                } else {
                    [
                        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":3,"output_tokens":1}}}"#,
                        r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}"#,
                        r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}"#,
                        r#"event: message_stop
data: {"type":"message_stop"}"#,
                    ]
                    .join("\n\n")
                        + "\n\n"
                };
                ([("content-type", "text/event-stream")], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = client_with(vec![provider(
        "claude",
        "anthropic",
        &format!("http://{addr}"),
        |_| {},
    )])
    .await;
    let stream = client
        .request_stream("claude", user("x"), RequestOptions::new())
        .await
        .unwrap();
    let response = stream.collect_response().await.unwrap();
    assert_eq!(response.text(), "ok");
    assert_eq!(response.attempts, 2);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

// Retries sit outside the breaker, the rate limiter and the pool: each attempt
// is a request the provider counts, so each takes its own room.

#[tokio::test]
async fn every_attempt_takes_rate_limit_room() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.limits = vec![dspex_client::config::RawLimit {
            kind: "requests".into(),
            limit: 3,
            window: "1m".into(),
        }];
        r.max_wait_ms = Some(20);
        r.max_retries = Some(2);
    })])
    .await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    upstream.enqueue([Fault::server_error(), Fault::server_error()]);
    let response = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(response.attempts, 3);
    assert_eq!(upstream.stats().requests, 3);
    // Three requests reached the provider, so the bucket of three is full.
    let error = client
        .request("oa", user("y"), RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::RateLimited { bucket } if bucket == "requests/1m"),
        "{error:?}"
    );
    assert_eq!(upstream.stats().requests, 3);
    // Attempts count HTTP requests: the refused call made none.
    let attempts: Vec<u32> = completions(&drain(&mut events))
        .iter()
        .map(|c| c.attempts)
        .collect();
    assert_eq!(attempts, vec![3, 0]);
}

#[tokio::test]
async fn the_pool_slot_is_free_while_a_retry_waits() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.pool_size = Some(1);
        r.max_wait_ms = Some(20);
    })])
    .await;
    let mut events = client.events().subscribe("test", Delivery::Lossless);
    // A 503 that asks for a one-second wait (a 503 does not pause the limiter).
    upstream.enqueue([Fault::Status {
        code: 503,
        retry_after_secs: Some(1),
        message: "busy".into(),
    }]);
    let first = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request("oa", user("first"), RequestOptions::new())
                .await
        }
    });
    loop {
        let event = events.recv().await.unwrap();
        if matches!(event.kind, EventKind::Retrying(_)) {
            break;
        }
    }
    // The first call waits for its retry without its slot: the second call
    // gets the only slot at once instead of being refused after 20 ms.
    assert_eq!(client.provider("oa").unwrap().available_slots(), 1);
    client
        .request("oa", user("second"), RequestOptions::new())
        .await
        .unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.attempts, 2);
    assert_eq!(upstream.stats().requests, 3);
    assert_eq!(client.provider("oa").unwrap().available_slots(), 1);
}

#[tokio::test]
async fn a_circuit_that_opens_between_attempts_stops_the_retries() {
    let upstream = mock(MockConfig::default()).await;
    let client = client_with(vec![provider("oa", "openai", &upstream.base_url(), |r| {
        r.max_retries = Some(4);
        r.circuit_breaker = Some(dspex_client::config::RawBreaker {
            failure_threshold: Some(2),
            open_ms: Some(60_000),
            half_open_probes: Some(1),
        });
    })])
    .await;
    upstream.enqueue([
        Fault::server_error(),
        Fault::server_error(),
        Fault::server_error(),
    ]);
    let error = client
        .request("oa", user("x"), RequestOptions::new())
        .await
        .unwrap_err();
    // Each failed attempt counted: the second opened the circuit, and the
    // third attempt failed fast instead of reaching the upstream.
    assert!(
        matches!(error.kind(), ClientErrorKind::CircuitOpen),
        "{error:?}"
    );
    assert_eq!(upstream.stats().requests, 2);
    assert_eq!(
        client.provider("oa").unwrap().circuit_state(),
        CircuitState::Open
    );
    // The trail keeps the upstream failures that led there.
    let context = error.context().unwrap();
    let attempts: Vec<String> = context
        .breadcrumbs
        .iter()
        .filter(|b| b.category == "attempt")
        .map(|b| b.message.to_string())
        .collect();
    assert_eq!(attempts.len(), 3, "{context}");
    assert!(attempts[0].contains("500"), "{context}");
    assert!(
        attempts[2].starts_with("attempt 3 failed: circuit open"),
        "{context}"
    );
}

#[tokio::test]
async fn streamed_tool_calls_assemble_like_complete_responses() {
    let upstream = mock(MockConfig::default()).await;
    let client = openai_and_anthropic(&upstream).await;
    let openai_tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let anthropic_tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    // The ids differ per request; everything else must match.
    let without_ids = |calls: &serde_json::Value| {
        let mut calls = calls.clone();
        for call in calls.as_array_mut().unwrap() {
            call.as_object_mut().unwrap().remove("id");
        }
        calls
    };
    for (id, tools) in [("oa", openai_tools), ("claude", anthropic_tools)] {
        let options = || {
            RequestOptions::new().params(ChatParams {
                tools: Some(Arc::new(tools.clone())),
                ..ChatParams::default()
            })
        };
        let prompt = user("what is the weather in Paris?");
        let complete = client.request(id, prompt.clone(), options()).await.unwrap();
        let mut stream = client.request_stream(id, prompt, options()).await.unwrap();
        let mut fragments = 0;
        let mut streamed = None;
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                StreamEvent::Delta(d) => fragments += usize::from(d.tool_calls.is_some()),
                StreamEvent::Done(response) => streamed = Some(response),
            }
        }
        let streamed = streamed.unwrap();
        assert!(fragments >= 2, "{id}: {fragments} tool-call deltas");
        let (a, b) = (&complete.choices[0], &streamed.choices[0]);
        assert_eq!(b.finish_reason, Some(FinishReason::ToolCalls), "{id}");
        assert_eq!(b.content, a.content, "{id}");
        let streamed_calls = b.tool_calls.as_ref().unwrap();
        assert_eq!(
            streamed_calls.as_array().unwrap().len(),
            1,
            "{id}: {streamed_calls}"
        );
        assert_eq!(
            without_ids(streamed_calls),
            without_ids(a.tool_calls.as_ref().unwrap()),
            "{id}"
        );
        assert!(
            streamed_calls[0]["id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{id}: {streamed_calls}"
        );
    }
}
