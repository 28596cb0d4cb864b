//! The Anthropic Messages and embeddings endpoints, and the server's
//! protection against slow and oversized requests, over real HTTP and TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Options, header, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(rest) = line.strip_prefix("event:") {
                    name = rest.trim().to_owned();
                } else if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.trim_start());
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

#[tokio::test]
async fn messages_answer_in_anthropic_format_from_either_provider() {
    let gw = serve(Options::default()).await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    for model in ["claude/claude-3-5-haiku-latest", "fast"] {
        let response = gw
            .post(
                "/v1/messages",
                Some(&key),
                &json!({"model": model, "max_tokens": 64, "system": "be brief",
                        "messages": [{"role": "user", "content": "hi there"}]}),
            )
            .await;
        assert_eq!(response.status(), 200, "{model}");
        assert!(!header(&response, "x-dspex-correlation-id").is_empty());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "message", "{body}");
        assert_eq!(body["role"], "assistant");
        assert!(body["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(body["content"][0]["type"], "text");
        assert_eq!(body["content"][0]["text"], "echo: hi there");
        assert_eq!(body["stop_reason"], "end_turn");
        assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
        assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }
    // Anthropic-only fields do not go to an OpenAI provider.
    let refused = gw
        .post(
            "/v1/messages",
            Some(&key),
            &json!({"model": "fast", "max_tokens": 8, "top_k": 3,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("top_k")
    );
    // Errors come in Anthropic's shape, with its status.
    let unauthenticated = gw
        .post(
            "/v1/messages",
            Some("sk-dspex-nope"),
            &json!({"model": "fast", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(unauthenticated.status(), 401);
    let error: Value = unauthenticated.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    let missing = gw
        .post(
            "/v1/messages",
            Some(&key),
            &json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
}

#[tokio::test]
async fn messages_stream_anthropic_events() {
    let gw = serve(Options::default()).await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    for model in ["claude/claude-3-5-haiku-latest", "fast"] {
        let response = gw
            .post(
                "/v1/messages",
                Some(&key),
                &json!({"model": model, "max_tokens": 64, "stream": true,
                        "messages": [{"role": "user", "content": "stream this"}]}),
            )
            .await;
        assert_eq!(response.status(), 200);
        assert!(header(&response, "content-type").starts_with("text/event-stream"));
        let events = sse_events(&response.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
        assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
        assert!(names.contains(&"content_block_start") && names.contains(&"content_block_stop"));
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, "echo: stream this", "{model}");
        let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn embeddings_answer_in_openai_format() {
    let gw = serve(Options::default()).await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    let response = gw
        .post(
            "/v1/embeddings",
            Some(&key),
            &json!({"model": "text-embedding-3-small", "input": ["one", "two"]}),
        )
        .await;
    assert_eq!(header(&response, "x-dspex-provider"), "oa");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list", "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert!(!body["data"][0]["embedding"].as_array().unwrap().is_empty());
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let bad = gw
        .post(
            "/v1/embeddings",
            Some(&key),
            &json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"}),
        )
        .await;
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    assert_eq!(error["error"]["param"], "encoding_format");
    // Base64 (the Python SDK's default): the little-endian f32 bytes.
    let encoded: Value = gw
        .post(
            "/v1/embeddings",
            Some(&key),
            &json!({"model": "text-embedding-3-small", "input": ["one", "two"], "encoding_format": "base64"}),
        )
        .await
        .json()
        .await
        .unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][1]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    #[allow(clippy::cast_possible_truncation)] // the JSON numbers are f32 values
    let plain: Vec<f32> = body["data"][1]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, plain);
}

/// Reads until the server closes the connection (or `limit` passes) and
/// returns what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn slow_and_oversized_requests_are_cut_off() {
    let gw = serve(Options {
        gateway_toml:
            "header_read_timeout_ms = 300\nbody_read_timeout_ms = 300\nmax_header_bytes = 8192"
                .into(),
        ..Options::default()
    })
    .await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    // Slow loris: a request head that never ends is closed, not waited on.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the slow connection was left open");
    // A head over the limit: 431.
    let mut big = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let filler = "a".repeat(16 * 1024);
    big.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut big, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A body that trickles: 408 once the body timeout passes.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut trickle, Duration::from_secs(10))
        .await
        .unwrap();
    // Without a key the request is refused first (401) before the body
    // is read; either way the gateway answers instead of waiting.
    assert!(
        answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // The gateway still serves.
    let health = gw
        .http
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_trickled_body_from_a_valid_key_gets_408() {
    let gw = serve(Options {
        gateway_toml: "body_read_timeout_ms = 300".into(),
        ..Options::default()
    })
    .await;
    let key = gw.create_key(json!({"name": "team-a"})).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut trickle, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout_ms"), "{answer}");
}
