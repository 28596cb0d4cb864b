//! Anthropic Messages over real loopback HTTP: replies, streaming and validation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{messages, server, sse_events};
use dspex_mock::{Fault, MockConfig, approx_tokens};
use serde_json::{Value, json};

fn request(text: &str) -> Value {
    json!({"model": "claude-3-5-haiku-latest", "max_tokens": 100,
           "system": "Be brief.",
           "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn plain_reply() {
    let server = server(MockConfig::default()).await;
    let response = messages(&server, request("Hello, Claude")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["request-id"], "req_1");
    let body: Value = response.json().await.unwrap();
    let input = approx_tokens("Hello, Claude") + 4 + 3 + approx_tokens("Be brief.");
    let output = approx_tokens("echo: Hello, Claude");
    assert_eq!(
        body,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-latest",
            "content": [{"type": "text", "text": "echo: Hello, Claude"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": input, "output_tokens": output,
                      "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        })
    );
    let stats = server.stats();
    assert_eq!(stats.by_route.get("messages"), Some(&1));
    assert_eq!(stats.input_tokens, input);
    assert_eq!(stats.output_tokens, output);
}

#[tokio::test]
async fn block_content_system_blocks_and_max_tokens() {
    let server = server(MockConfig::default()).await;
    let body: Value = messages(
        &server,
        json!({"model": "m", "max_tokens": 3,
               "system": [{"type": "text", "text": "sys one"}],
               "messages": [
                   {"role": "user", "content": [{"type": "text", "text": "tell me "}, {"type": "text", "text": "a long story please"}]}
               ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["content"][0]["text"], "echo: tell m");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 3);

    let mut stop = request("alpha beta gamma");
    stop["stop_sequences"] = json!(["gamma"]);
    let body: Value = messages(&server, stop).await.json().await.unwrap();
    assert_eq!(body["content"][0]["text"], "echo: alpha beta ");
    assert_eq!(body["stop_reason"], "stop_sequence");
    assert_eq!(body["stop_sequence"], "gamma");
}

#[tokio::test]
async fn streaming_event_sequence() {
    let server = server(MockConfig {
        chunk_chars: 4,
        ..MockConfig::default()
    })
    .await;
    let mut body = request("stream this text");
    body["stream"] = json!(true);
    let response = messages(&server, body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_events(&response.text().await.unwrap());
    let reply = "echo: stream this text";
    let pieces = reply.chars().count().div_ceil(4);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", pieces));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert_eq!(start["id"], "msg_1");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        start["usage"]["input_tokens"],
        approx_tokens("stream this text") + 7 + approx_tokens("Be brief.")
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    let text: String = events[3..3 + pieces]
        .iter()
        .map(|(_, data)| {
            assert_eq!(data["index"], 0);
            assert_eq!(data["delta"]["type"], "text_delta");
            data["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, reply);
    let delta = &events[events.len() - 2].1;
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "end_turn", "stop_sequence": null})
    );
    assert_eq!(
        delta["usage"],
        json!({"output_tokens": approx_tokens(reply)})
    );
    assert_eq!(server.stats().streamed, 1);
}

#[tokio::test]
async fn tool_use_on_weather() {
    let server = server(MockConfig::default()).await;
    let mut body = request("How is the weather today?");
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let reply: Value = messages(&server, body.clone()).await.json().await.unwrap();
    assert_eq!(reply["stop_reason"], "tool_use");
    assert_eq!(reply["content"][0]["type"], "tool_use");
    assert_eq!(reply["content"][0]["name"], "get_weather");
    assert_eq!(reply["content"][0]["input"], json!({}));

    body["stream"] = json!(true);
    let events = sse_events(&messages(&server, body).await.text().await.unwrap());
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{}"})
    );
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );
}

#[tokio::test]
async fn missing_max_tokens_or_version_is_400() {
    let server = server(MockConfig::default()).await;
    let response = messages(
        &server,
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}})
    );

    let response = common::client()
        .post(format!("{}/v1/messages", server.anthropic_base_url()))
        .json(&request("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );

    let response = messages(
        &server,
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "hi"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn error_shapes_for_injected_statuses() {
    let server = server(MockConfig::default()).await;
    server.enqueue([
        Fault::rate_limited(7),
        Fault::server_error(),
        Fault::status(529),
        Fault::Status {
            code: 503,
            retry_after_secs: None,
            message: "custom words".into(),
        },
    ]);
    let expected = [
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (503, "api_error"),
    ];
    for (status, kind) in expected {
        let response = messages(&server, request("hi")).await;
        assert_eq!(response.status(), status);
        if status == 429 {
            assert_eq!(response.headers()["retry-after"], "7");
        }
        assert!(response.headers().contains_key("request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind);
        if status == 503 {
            assert_eq!(body["error"]["message"], "custom words");
        }
    }
    let stats = server.stats();
    assert_eq!(stats.injected.get("529"), Some(&1));
    assert_eq!(stats.by_status.get(&529), Some(&1));
}
