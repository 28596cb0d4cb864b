//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use dspex_mock::{MockConfig, MockServer};
use serde_json::Value;

pub async fn server(config: MockConfig) -> MockServer {
    MockServer::start(config).await.expect("mock server starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn chat(server: &MockServer, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

pub async fn messages(server: &MockServer, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", server.anthropic_base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

pub fn user(text: &str) -> Value {
    serde_json::json!({"model": "mock-model", "messages": [{"role": "user", "content": text}]})
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("event has data")
                .to_owned()
        })
        .collect()
}

/// The `(event, data)` pairs of an Anthropic-style SSE body.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let name = event
                .lines()
                .find_map(|line| line.strip_prefix("event: "))
                .expect("event has a name")
                .to_owned();
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .expect("event has data");
            (name, serde_json::from_str(data).expect("data is JSON"))
        })
        .collect()
}
