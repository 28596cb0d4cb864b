//! Native tool calls over real loopback HTTP: scripted calls (parallel, with
//! text, in cycled replies), their plain and streamed shapes for OpenAI and
//! Anthropic, tool turns in requests, a scripted multi-step agent, and the
//! 400s for tool turns that do not pair up.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;

use common::{chat, messages, server, sse_data, sse_events};
use dspex_mock::{
    MockConfig, MockServer, Script, ScriptError, ScriptReply, ScriptRule, ScriptToolCall,
    approx_tokens,
};
use serde_json::{Value, json};

fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "finish", "parameters": {"type": "object"}}},
    ])
}

fn anthropic_tools() -> Value {
    json!([
        {"name": "search", "input_schema": {"type": "object"}},
        {"name": "lookup", "input_schema": {"type": "object"}},
        {"name": "finish", "input_schema": {"type": "object"}},
    ])
}

/// A three-step agent: the question makes it search and look up in parallel;
/// the search's observation makes it call `finish`; `finish`'s observation
/// makes it answer. Every rule looks at the last turn only, so the order of
/// the rules does not matter.
fn agent_script() -> Script {
    Script::default()
        .with_rule(ScriptRule::reply("finished: ok", "The answer is 42.").last_turn())
        .with_rule(
            ScriptRule::tool_calls(
                "search says 42",
                [ScriptToolCall::new("finish", json!({"answer": "42"}))],
            )
            .with_reply("I have it.")
            .last_turn(),
        )
        .with_rule(
            ScriptRule::tool_calls(
                "meaning of life",
                [
                    ScriptToolCall::new("search", json!({"q": "meaning of life", "limit": 3})),
                    ScriptToolCall::new("lookup", json!({})),
                ],
            )
            .last_turn(),
        )
}

async fn chat_json(server: &MockServer, body: Value) -> Value {
    let response = chat(server, body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn openai_agent_loop_plain() {
    let server = server(MockConfig::default().with_script(agent_script())).await;
    let mut conversation = vec![
        json!({"role": "system", "content": "You are an agent."}),
        json!({"role": "user", "content": "What is the meaning of life?"}),
    ];
    let request = |conversation: &[Value]| json!({"model": "m", "messages": conversation, "tools": openai_tools()});

    // Step 1: two parallel calls, no text.
    let body = chat_json(&server, request(&conversation)).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["content"], Value::Null);
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "search");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"q": "meaning of life", "limit": 3}));
    assert_eq!(calls[1]["function"]["name"], "lookup");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
    let ids: BTreeSet<&str> = calls.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{calls:?}");
    assert!(ids.iter().all(|id| id.starts_with("call_")));
    let completion = approx_tokens("search")
        + approx_tokens(calls[0]["function"]["arguments"].as_str().unwrap())
        + approx_tokens("lookup")
        + approx_tokens("{}");
    assert_eq!(body["usage"]["completion_tokens"], completion);

    // Step 2: the results go back; the search's observation gives `finish`.
    conversation.push(message.clone());
    conversation
        .push(json!({"role": "tool", "tool_call_id": calls[0]["id"], "content": "search says 42"}));
    conversation.push(json!({"role": "tool", "tool_call_id": calls[1]["id"],
        "content": [{"type": "text", "text": "lookup found nothing"}]}));
    let body = chat_json(&server, request(&conversation)).await;
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "I have it.");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let finish = &message["tool_calls"][0];
    assert_eq!(finish["function"]["name"], "finish");
    assert_eq!(finish["function"]["arguments"], r#"{"answer":"42"}"#);
    assert!(!ids.contains(finish["id"].as_str().unwrap()));

    // Step 3: finish's observation gives the text answer.
    conversation.push(message.clone());
    conversation
        .push(json!({"role": "tool", "tool_call_id": finish["id"], "content": "finished: ok"}));
    let body = chat_json(&server, request(&conversation)).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The answer is 42."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());

    // Prompt tokens count the calls and results too.
    let shorter = chat_json(
        &server,
        json!({"model": "m", "messages": &conversation[..2], "tools": openai_tools()}),
    )
    .await;
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap()
            > shorter["usage"]["prompt_tokens"].as_u64().unwrap() + 20
    );
}

/// Streamed chunks of one choice: the text, and per call index its id, name
/// and concatenated arguments; plus the finish reason.
fn reassemble(chunks: &[Value]) -> (String, Vec<(String, String, String)>, String) {
    let mut text = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if i == 0 {
            assert_eq!(delta["role"], "assistant", "the role comes first");
        } else {
            assert!(delta.get("role").is_none(), "the role comes once");
        }
        text.push_str(delta["content"].as_str().unwrap_or_default());
        for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = fragment["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                // A call's first fragment: id, type and name, empty arguments.
                assert_eq!(fragment["type"], "function");
                assert_eq!(fragment["function"]["arguments"], "");
                calls.push((
                    fragment["id"].as_str().unwrap().to_owned(),
                    fragment["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
            } else {
                assert!(fragment.get("id").is_none() && fragment["function"].get("name").is_none());
                calls[index]
                    .2
                    .push_str(fragment["function"]["arguments"].as_str().unwrap());
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
    }
    (text, calls, finish)
}

#[tokio::test]
async fn openai_streamed_tool_calls_match_the_plain_ones() {
    let script = Script::default().with_rule(
        ScriptRule::tool_calls(
            "go",
            [
                ScriptToolCall::new("search", json!({"q": "a fairly long query text", "n": 10})),
                ScriptToolCall::new("lookup", json!({"key": "k"})),
            ],
        )
        .with_reply("Calling two tools."),
    );
    let server = server(
        MockConfig {
            chunk_chars: 5,
            ..MockConfig::default()
        }
        .with_script(script),
    )
    .await;
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "go"}],
        "tools": openai_tools()});
    let plain = chat_json(&server, request.clone()).await;

    let mut streamed = request;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let text = chat(&server, streamed).await.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let (content, calls, finish) = reassemble(&chunks);
    assert_eq!(content, "Calling two tools.");
    assert_eq!(finish, "tool_calls");
    let message = &plain["choices"][0]["message"];
    assert_eq!(message["content"], "Calling two tools.");
    let plain_calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    for ((id, name, arguments), plain) in calls.iter().zip(plain_calls) {
        assert!(id.starts_with("call_"));
        assert_eq!(name, plain["function"]["name"].as_str().unwrap());
        assert_eq!(arguments, plain["function"]["arguments"].as_str().unwrap());
    }
    // The arguments came in several pieces of at most five characters.
    let pieces = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]["function"]
                .get("name")
                .is_none()
                && c["choices"][0]["delta"].get("tool_calls").is_some()
        })
        .count();
    assert!(pieces > 6, "{pieces} argument pieces");
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn several_choices_get_their_own_call_ids() {
    let script = Script::replies([ScriptReply::tool_calls([
        ScriptToolCall::new("search", json!({"q": 1})),
        ScriptToolCall::new("lookup", json!({})),
    ])]);
    let server = server(MockConfig::default().with_script(script)).await;
    let body = chat_json(
        &server,
        json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}],
               "tools": openai_tools()}),
    )
    .await;
    let mut ids = BTreeSet::new();
    for choice in body["choices"].as_array().unwrap() {
        assert_eq!(choice["finish_reason"], "tool_calls");
        for call in choice["message"]["tool_calls"].as_array().unwrap() {
            ids.insert(call["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 4, "{ids:?}");
    // And again on the next request: ids are unique across requests.
    let again = chat_json(
        &server,
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": openai_tools()}),
    )
    .await;
    let id = again["choices"][0]["message"]["tool_calls"][0]["id"]
        .as_str()
        .unwrap();
    assert!(!ids.contains(id));
}

async fn messages_json(server: &MockServer, body: Value) -> Value {
    let response = messages(server, body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn anthropic_agent_loop_plain_and_streamed() {
    let server = server(
        MockConfig {
            chunk_chars: 4,
            ..MockConfig::default()
        }
        .with_script(agent_script()),
    )
    .await;
    let mut conversation = vec![json!({"role": "user", "content": "What is the meaning of life?"})];
    let request = |conversation: &[Value], stream: bool| {
        json!({"model": "claude", "max_tokens": 100, "system": "You are an agent.",
               "messages": conversation, "tools": anthropic_tools(), "stream": stream})
    };

    // Step 1, plain: two tool_use blocks with object inputs.
    let body = messages_json(&server, request(&conversation, false)).await;
    assert_eq!(body["stop_reason"], "tool_use");
    let content = body["content"].as_array().unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0]["type"], "tool_use");
    assert_eq!(content[0]["name"], "search");
    assert_eq!(
        content[0]["input"],
        json!({"q": "meaning of life", "limit": 3})
    );
    assert_eq!(content[1]["name"], "lookup");
    assert_eq!(content[1]["input"], json!({}));
    assert_ne!(content[0]["id"], content[1]["id"]);
    assert!(content[0]["id"].as_str().unwrap().starts_with("toolu_"));

    // Step 1, streamed: the same blocks, one at a time.
    let text = messages(&server, request(&conversation, true))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial = Vec::<String>::new();
    for (name, data) in &events {
        match name.as_str() {
            "content_block_start" => {
                assert_eq!(data["index"], blocks.len());
                assert_eq!(data["content_block"]["input"], json!({}));
                blocks.push(data["content_block"].clone());
                partial.push(String::new());
            }
            "content_block_delta" => {
                assert_eq!(data["index"], blocks.len() - 1);
                assert_eq!(data["delta"]["type"], "input_json_delta");
                partial
                    .last_mut()
                    .unwrap()
                    .push_str(data["delta"]["partial_json"].as_str().unwrap());
            }
            "content_block_stop" => assert_eq!(data["index"], blocks.len() - 1),
            "message_delta" => {
                assert_eq!(data["delta"]["stop_reason"], "tool_use");
                assert_eq!(
                    data["usage"]["output_tokens"],
                    body["usage"]["output_tokens"]
                );
            }
            _ => {}
        }
    }
    assert_eq!(blocks.len(), 2);
    for ((block, json_text), plain) in blocks.iter().zip(&partial).zip(content) {
        assert_eq!(block["name"], plain["name"]);
        let input: Value = serde_json::from_str(json_text).unwrap();
        assert_eq!(input, plain["input"]);
    }

    // Step 2: results in one user message, the first marked as an error.
    conversation.push(json!({"role": "assistant", "content": content}));
    conversation.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": content[0]["id"], "content": "search says 42"},
        {"type": "tool_result", "tool_use_id": content[1]["id"], "is_error": true,
         "content": [{"type": "text", "text": "no such key"}]},
    ]}));
    let body = messages_json(&server, request(&conversation, false)).await;
    let content = body["content"].as_array().unwrap();
    assert_eq!(content[0], json!({"type": "text", "text": "I have it."}));
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(content[1]["name"], "finish");
    assert_eq!(content[1]["input"], json!({"answer": "42"}));
    assert_eq!(body["stop_reason"], "tool_use");

    // Streamed: a text block, then the tool_use block.
    let text = messages(&server, request(&conversation, true))
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "content_block_start")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(
        starts[0]["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(starts[1]["index"], 1);
    assert_eq!(starts[1]["content_block"]["name"], "finish");
    let streamed_text: String = events
        .iter()
        .filter(|(_, data)| data["delta"]["type"] == "text_delta")
        .map(|(_, data)| data["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(streamed_text, "I have it.");

    // Step 3: the answer, as text.
    conversation.push(json!({"role": "assistant", "content": content}));
    conversation.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": content[1]["id"], "content": "finished: ok"},
    ]}));
    let body = messages_json(&server, request(&conversation, false)).await;
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "The answer is 42."}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
}

#[tokio::test]
async fn without_last_the_later_steps_come_first() {
    // Every rule sees the whole conversation, in which the question stays:
    // the step-two rule must come before the step-one rule.
    let script = Script::default()
        .rule("search says 42", "The answer is 42.")
        .tool_rule(
            "meaning of life",
            [ScriptToolCall::new("search", json!({}))],
        );
    let server = server(MockConfig::default().with_script(script)).await;
    let mut conversation = vec![json!({"role": "user", "content": "the meaning of life?"})];
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": conversation, "tools": openai_tools()}),
    )
    .await;
    let message = body["choices"][0]["message"].clone();
    let id = message["tool_calls"][0]["id"].clone();
    conversation.push(message);
    conversation.push(json!({"role": "tool", "tool_call_id": id, "content": "search says 42"}));
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": conversation, "tools": openai_tools()}),
    )
    .await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The answer is 42."
    );
    // A request offering no tools skips tool-call rules.
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": [{"role": "user", "content": "the meaning of life?"}]}),
    )
    .await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: the meaning of life?"
    );
}

#[tokio::test]
async fn the_weather_default_answers_once_the_result_is_back() {
    let server = server(MockConfig::default()).await;
    let question = json!({"role": "user", "content": "weather in Paris?"});
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": [question], "tools": openai_tools()}),
    )
    .await;
    let message = body["choices"][0]["message"].clone();
    assert_eq!(message["tool_calls"][0]["function"]["name"], "search");
    let id = message["tool_calls"][0]["id"].clone();
    let body = chat_json(
        &server,
        json!({"model": "m", "tools": openai_tools(), "messages": [question, message,
            {"role": "tool", "tool_call_id": id, "content": "sunny"}]}),
    )
    .await;
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: weather in Paris?"
    );
}

#[tokio::test]
async fn unpaired_tool_turns_get_400() {
    let server = server(MockConfig::default()).await;
    let call =
        json!({"id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let response = chat(
        &server,
        json!({"model": "m", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "user", "content": "and?"}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "messages[1].tool_calls");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("did not have response messages: call_x"),
        "{body}"
    );

    let response = messages(
        &server,
        json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}]}),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unexpected `tool_use_id` found in `tool_result` blocks: toolu_x"),
        "{body}"
    );
}

#[tokio::test]
async fn script_files_with_tool_calls() {
    let dir = std::env::temp_dir().join(format!("dspex-mock-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("agent.json");
    std::fs::write(
        &good,
        r#"{"rules": [
              {"contains": "observed", "last": true, "reply": "done"},
              {"contains": "start", "last": true, "reply": "Searching.",
               "tool_calls": [{"name": "search", "arguments": {"q": "x"}}, {"name": "lookup"}]}
           ],
           "replies": [{"tool_calls": [{"name": "finish"}]}]}"#,
    )
    .unwrap();
    let script = Script::from_file(&good).unwrap();
    assert_eq!(
        script.rules[1],
        ScriptRule::tool_calls(
            "start",
            [
                ScriptToolCall::new("search", json!({"q": "x"})),
                ScriptToolCall::new("lookup", json!({})),
            ]
        )
        .with_reply("Searching.")
        .last_turn()
    );
    let server = server(MockConfig {
        script: Some(good),
        ..MockConfig::default()
    })
    .await;
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": [{"role": "user", "content": "start"}], "tools": openai_tools()}),
    )
    .await;
    let names: Vec<&str> = body["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["search", "lookup"]);
    let body = chat_json(
        &server,
        json!({"model": "m", "messages": [{"role": "user", "content": "other"}], "tools": openai_tools()}),
    )
    .await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "finish"
    );

    let silent = dir.join("silent.json");
    std::fs::write(&silent, r#"{"rules": [{"contains": "x"}]}"#).unwrap();
    let err = Script::from_file(&silent).unwrap_err();
    assert!(matches!(err, ScriptError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rules[0] has neither `reply` nor `tool_calls`"),
        "{err}"
    );
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"rules": [{"contains": "x", "tool_calls": [{"name": "f", "args": {}}]}]}"#,
    )
    .unwrap();
    let err = Script::from_file(&bad).unwrap_err();
    assert!(matches!(err, ScriptError::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains("args") && err.to_string().contains("tool_calls"),
        "{err}"
    );
    let err = MockServer::start(MockConfig {
        script: Some(bad),
        ..MockConfig::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    std::fs::remove_dir_all(&dir).unwrap();
}
