//! OpenAI Chat Completions over real loopback HTTP: content, usage, streaming,
//! tools, JSON modes, DSPy-style fields, scripts and validation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{chat, server, sse_data, user};
use dspex_mock::{MockConfig, MockServer, Script, ScriptError, approx_tokens};
use serde_json::{Value, json};

#[tokio::test]
async fn echo_reply_and_usage() {
    let server = server(MockConfig::default()).await;
    let response = chat(
        &server,
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello there, mock!"}
        ]}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-request-id"], "req_1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-1");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["message"]["content"], "echo: Hello there, mock!");
    assert_eq!(choices[0]["finish_reason"], "stop");
    let prompt = approx_tokens("You are terse.") + 4 + approx_tokens("Hello there, mock!") + 4 + 3;
    let completion = approx_tokens("echo: Hello there, mock!");
    assert_eq!(prompt, 20);
    assert_eq!(completion, 6);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
               "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let stats = server.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.input_tokens, prompt);
    assert_eq!(stats.output_tokens, completion);
    assert_eq!(stats.by_route.get("chat_completions"), Some(&1));
    assert_eq!(stats.by_status.get(&200), Some(&1));
}

#[tokio::test]
async fn content_parts_are_concatenated() {
    let server = server(MockConfig::default()).await;
    let body: Value = chat(
        &server,
        json!({"model": "m", "messages": [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]}
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: part one, part two"
    );
}

#[tokio::test]
async fn n_choices() {
    let server = server(MockConfig::default()).await;
    let mut request = user("pick");
    request["n"] = json!(3);
    let body: Value = chat(&server, request).await.json().await.unwrap();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], "echo: pick");
    }
    assert_eq!(
        body["usage"]["completion_tokens"],
        3 * approx_tokens("echo: pick")
    );
}

#[tokio::test]
async fn max_tokens_cuts_with_finish_length() {
    let server = server(MockConfig::default()).await;
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut request = user("a rather long question that will not fit");
        request[field] = json!(2);
        let body: Value = chat(&server, request).await.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "echo: a ");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 2);
    }
    // Enough room: untouched.
    let mut request = user("hi");
    request["max_tokens"] = json!(100);
    let body: Value = chat(&server, request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stop_sequences_cut_the_reply() {
    let server = server(MockConfig::default()).await;
    let mut request = user("one. two. three.");
    request["stop"] = json!([" two", "three"]);
    let body: Value = chat(&server, request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

fn chunks(body: &str) -> (Vec<Value>, Vec<String>) {
    let data = sse_data(body);
    let json = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (json, data)
}

#[tokio::test]
async fn streaming_with_usage() {
    let server = server(MockConfig {
        chunk_chars: 5,
        ..MockConfig::default()
    })
    .await;
    let mut request = user("héllo wörld, stream me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = chat(&server, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let (chunks, data) = chunks(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let reply = "echo: héllo wörld, stream me";
    let pieces = reply.chars().count().div_ceil(5);
    // role chunk + content pieces + finish chunk + usage chunk
    assert_eq!(chunks.len(), 1 + pieces + 1 + 1);
    for chunk in &chunks {
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "mock-model");
        assert!(chunk["created"].is_u64());
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[0]["usage"], Value::Null);
    let mut content = String::new();
    for chunk in &chunks[1..=pieces] {
        let piece = chunk["choices"][0]["delta"]["content"].as_str().unwrap();
        assert!(piece.chars().count() <= 5);
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        content.push_str(piece);
    }
    assert_eq!(content, reply);
    let finish = &chunks[pieces + 1];
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[pieces + 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], approx_tokens(reply));
    assert_eq!(
        usage["usage"]["prompt_tokens"],
        approx_tokens("héllo wörld, stream me") + 7
    );
    assert_eq!(server.stats().streamed, 1);
}

#[tokio::test]
async fn streaming_without_usage() {
    let server = server(MockConfig::default()).await;
    let mut request = user("short");
    request["stream"] = json!(true);
    let text = chat(&server, request).await.text().await.unwrap();
    let (chunks, data) = chunks(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "echo: short");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn tools_and_weather_give_a_tool_call() {
    let server = server(MockConfig::default()).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut request = user("What's the weather in Paris?");
    request["tools"] = tools.clone();
    let body: Value = chat(&server, request).await.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));

    // Streamed.
    let mut request = user("weather?");
    request["tools"] = tools.clone();
    request["stream"] = json!(true);
    let text = chat(&server, request).await.text().await.unwrap();
    let (chunks, _) = chunks(&text);
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Without "weather", a normal reply.
    let mut request = user("hello");
    request["tools"] = tools;
    let body: Value = chat(&server, request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn json_modes() {
    let server = server(MockConfig::default()).await;
    let mut request = user("give json");
    request["response_format"] = json!({"type": "json_object"});
    let body: Value = chat(&server, request).await.json().await.unwrap();
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"reply": "echo: give json"}));

    let mut request = user("give schema");
    request["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "height": {"type": "number"},
                       "alive": {"type": "boolean"}, "pets": {"type": "array", "items": {"type": "string"}},
                       "address": {"type": "object"}},
        "required": ["name", "age"]
    }}});
    let body: Value = chat(&server, request).await.json().await.unwrap();
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"name": "mock name", "age": 1, "height": 1, "alive": true, "pets": [], "address": {}})
    );
}

const DSPY_SYSTEM: &str = "Your input fields are:\n1. `question` (str): The question.\n\
Your output fields are:\n1. `reasoning` (str): \n2. `answer` (int): The answer.\n\
All interactions will be structured in the following way, with the appropriate values filled in.\n\n\
[[ ## question ## ]]\n{question}\n\n[[ ## reasoning ## ]]\n{reasoning}\n\n[[ ## answer ## ]]\n{answer}        # note: the value you produce must be a single int value\n\n\
[[ ## completed ## ]]\nIn adhering to this structure, your objective is: \n        Answer the question.";

const DSPY_USER: &str = "[[ ## question ## ]]\nHow many legs does a spider have?\n\n\
Respond with the corresponding output fields, starting with the field `[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be formatted as a valid Python int), and then ending with the marker for `[[ ## completed ## ]]`.";

#[tokio::test]
async fn dspy_style_fields() {
    let server = server(MockConfig::default()).await;
    let body: Value = chat(
        &server,
        json!({"model": "m", "messages": [
            {"role": "system", "content": DSPY_SYSTEM},
            {"role": "user", "content": DSPY_USER}
        ]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "[[ ## reasoning ## ]]\nmock reasoning for: How many legs does a spider have?\n\n\
         [[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"
    );
}

#[tokio::test]
async fn scripted_rules_then_cycling_replies() {
    let script = Script::replies(["first", "second"]).rule("France", "Paris");
    let server = server(MockConfig::default().with_script(script)).await;
    let content = |body: Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let france = json!({"model": "m", "messages": [
        {"role": "system", "content": "Geography quiz about France."},
        {"role": "user", "content": "What is the capital?"}
    ]});
    assert_eq!(
        content(chat(&server, france.clone()).await.json().await.unwrap()),
        "Paris"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(content(
            chat(&server, user("anything")).await.json().await.unwrap(),
        ));
    }
    assert_eq!(seen, ["first", "second", "first"]);
    assert_eq!(
        content(chat(&server, france).await.json().await.unwrap()),
        "Paris"
    );
}

#[tokio::test]
async fn script_file_and_bad_script_errors() {
    let dir = std::env::temp_dir().join(format!("dspex-mock-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"replies": ["scripted"], "rules": [{"contains": "ping", "reply": "pong"}]}"#,
    )
    .unwrap();
    let server = server(MockConfig {
        script: Some(good.clone()),
        ..MockConfig::default()
    })
    .await;
    let body: Value = chat(&server, user("ping?")).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "pong");
    let body: Value = chat(&server, user("other")).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "scripted");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"replies": "not a list"}"#).unwrap();
    let err = Script::from_file(&bad).unwrap_err();
    assert!(matches!(err, ScriptError::Parse { .. }));
    assert!(err.to_string().contains("bad.json"), "{err}");
    let err = MockServer::start(MockConfig {
        script: Some(bad.clone()),
        ..MockConfig::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("bad.json"), "{err}");

    let missing = dir.join("missing.json");
    let err = Script::from_file(&missing).unwrap_err();
    assert!(matches!(err, ScriptError::Read { .. }));
    assert!(err.to_string().contains("missing.json"));

    let empty = dir.join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let err = Script::from_file(&empty).unwrap_err();
    assert!(matches!(err, ScriptError::Invalid { .. }));
    assert!(err.to_string().contains("empty.json"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn invalid_requests_get_400() {
    let server = server(MockConfig::default()).await;
    let cases = [
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": "hello"}), "messages"),
        (json!({"model": "m", "messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "m", "messages": [{"content": "x"}]}),
            "role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            "'n'",
        ),
    ];
    for (request, needle) in cases {
        let response = chat(&server, request.clone()).await;
        assert_eq!(response.status(), 400, "{request}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"].get("param").is_some());
        assert!(body["error"].get("code").is_some());
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} should name {needle}");
    }
    let response = common::client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("parse the JSON body")
    );
    assert_eq!(server.stats().by_status.get(&400), Some(&7));
}

#[tokio::test]
async fn models_health_and_unknown_routes() {
    let server = server(MockConfig::default()).await;
    let client = common::client();
    let body: Value = client
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["mock-model", "gpt-4o-mini", "claude-3-5-haiku-latest"]
    );
    assert_eq!(
        body["data"][0],
        json!({"id": "mock-model", "object": "model", "created": 0, "owned_by": "dspex-mock"})
    );

    let health = client
        .get(format!("{}/health", server.anthropic_base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let missing = client
        .post(format!("{}/nope", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["message"], "Invalid URL (POST /v1/nope)");

    let stats = server.stats();
    assert_eq!(stats.requests, 0);
    assert_eq!(stats.by_route.get("models"), Some(&1));
}
