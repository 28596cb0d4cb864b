//! Native tool calls from the two test LMs an agent is tested against: the
//! in-process `ScriptedLm`, and the mock upstream `dspex-mock` over real
//! loopback HTTP (OpenAI and Anthropic wire formats). Both plain and
//! streamed replies must reach the caller as the same `Choice::tool_calls`,
//! and the tool turns sent back must be accepted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::collections::BTreeSet;

use dspex_client::config::RawProvider;
use dspex_client::{
    ChatParams, ChatResponse, Client, ClientConfig, ClientErrorKind, FinishReason, Message,
    ProviderConfig, RequestOptions, Role, ScriptedLm, ScriptedToolCall, ScriptedTurn, StreamEvent,
    tokens,
};
use dspex_mock::{MockConfig, MockServer, Script, ScriptRule, ScriptToolCall};
use futures::StreamExt;
use serde_json::{Value, json};

async fn scripted(lm: ScriptedLm) -> Client {
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_scripted("dummy", lm).await.unwrap();
    client
}

fn with_tools(tools: Value) -> RequestOptions {
    RequestOptions::new().params(ChatParams {
        tools: Some(std::sync::Arc::new(tools)),
        ..ChatParams::default()
    })
}

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

/// Streams a request and returns the assembled response and how many deltas
/// carried tool-call fragments.
async fn stream(
    client: &Client,
    id: &str,
    messages: Vec<Message>,
    options: RequestOptions,
) -> (ChatResponse, usize) {
    let mut stream = client.request_stream(id, messages, options).await.unwrap();
    let mut fragments = 0;
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Delta(delta) => fragments += usize::from(delta.tool_calls.is_some()),
            StreamEvent::Done(response) => done = Some(response),
        }
    }
    (done.unwrap(), fragments)
}

/// The calls without their ids (which differ per call), and the ids.
fn split_ids(calls: &Value) -> (Value, Vec<String>) {
    let mut calls = calls.clone();
    let mut ids = Vec::new();
    for call in calls.as_array_mut().unwrap() {
        let id = call.as_object_mut().unwrap().remove("id").unwrap();
        ids.push(id.as_str().unwrap().to_owned());
    }
    (calls, ids)
}

// ---------------------------------------------------------------- ScriptedLm

#[tokio::test]
async fn turns_answer_with_parallel_tool_calls_in_openai_shape() {
    let lm = ScriptedLm::turns([
        ScriptedTurn::tool_calls([
            ScriptedToolCall::new("search", json!({"q": "rust agents"})),
            ScriptedToolCall::new("lookup", json!({})),
        ]),
        ScriptedTurn::tool_call("finish", json!({"answer": "42"})).with_text("Done."),
        ScriptedTurn::text("plain text"),
    ]);
    let client = scripted(lm.clone()).await;
    assert!(
        client
            .provider("dummy")
            .unwrap()
            .capabilities()
            .tool_calling
    );
    let ask = || {
        client.request(
            "dummy",
            vec![Message::user("go")],
            with_tools(openai_tools()),
        )
    };

    let first = ask().await.unwrap();
    let choice = &first.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(choice.content, None);
    let calls = choice.tool_calls.as_ref().unwrap();
    let (shape, ids) = split_ids(calls);
    assert_eq!(
        shape,
        json!([
            {"type": "function", "function": {"name": "search", "arguments": r#"{"q":"rust agents"}"#}},
            {"type": "function", "function": {"name": "lookup", "arguments": "{}"}},
        ])
    );
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 2, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("call_")));
    assert_eq!(
        first.usage.output_tokens,
        tokens::heuristic_tokens("search")
            + tokens::heuristic_tokens(r#"{"q":"rust agents"}"#)
            + tokens::heuristic_tokens("lookup")
            + tokens::heuristic_tokens("{}")
    );

    let second = ask().await.unwrap();
    assert_eq!(second.text(), "Done.");
    assert_eq!(second.finish_reason(), Some(&FinishReason::ToolCalls));
    let finish = &second.choices[0].tool_calls.as_ref().unwrap()[0];
    assert_eq!(finish["function"]["name"], "finish");
    assert!(!ids.contains(&finish["id"].as_str().unwrap().to_owned()));

    // A text turn is text, tools or not.
    let third = ask().await.unwrap();
    assert_eq!(third.text(), "plain text");
    assert_eq!(third.finish_reason(), Some(&FinishReason::Stop));
    assert_eq!(third.choices[0].tool_calls, None);
    // And the cycle starts over.
    assert_eq!(
        ask().await.unwrap().finish_reason(),
        Some(&FinishReason::ToolCalls)
    );
    assert_eq!(lm.calls(), 4);
}

#[tokio::test]
async fn streamed_tool_calls_reassemble_into_the_plain_shape() {
    let turns = [
        ScriptedTurn::tool_calls([
            ScriptedToolCall::new(
                "search",
                json!({"q": "a long query that streams in several pieces"}),
            ),
            ScriptedToolCall::new("lookup", json!({"key": "k"})),
        ]),
        ScriptedTurn::tool_call("finish", json!({"answer": "42"})).with_text("All done here."),
        ScriptedTurn::text("just text"),
    ];
    let plain_client = scripted(ScriptedLm::turns(turns.clone())).await;
    let stream_client = scripted(ScriptedLm::turns(turns)).await;
    for step in 0..3 {
        let messages = vec![Message::user("go")];
        let plain = plain_client
            .request("dummy", messages.clone(), with_tools(openai_tools()))
            .await
            .unwrap();
        let (streamed, fragments) = stream(
            &stream_client,
            "dummy",
            messages,
            with_tools(openai_tools()),
        )
        .await;
        let (a, b) = (&plain.choices[0], &streamed.choices[0]);
        assert_eq!(b.content, a.content, "step {step}");
        assert_eq!(b.finish_reason, a.finish_reason, "step {step}");
        assert_eq!(
            streamed.usage.output_tokens, plain.usage.output_tokens,
            "step {step}"
        );
        match (&a.tool_calls, &b.tool_calls) {
            (None, None) => assert_eq!(fragments, 0),
            (Some(plain_calls), Some(streamed_calls)) => {
                let (plain_shape, _) = split_ids(plain_calls);
                let (streamed_shape, ids) = split_ids(streamed_calls);
                assert_eq!(streamed_shape, plain_shape, "step {step}");
                assert!(ids.iter().all(|id| id.starts_with("call_")));
                // The arguments arrived in pieces, not whole.
                assert!(
                    fragments > plain_shape.as_array().unwrap().len(),
                    "step {step}"
                );
            }
            other => panic!("step {step}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_turn_function_drives_an_agent_from_the_tool_results() {
    // Answers from what the conversation holds: the question calls `search`,
    // the search result calls `finish`, and finish's result ends with text.
    let lm = ScriptedLm::from_turn_fn(|request| {
        let last = request.messages.last().ok_or("no messages")?;
        Ok(match (last.role, last.content.as_str()) {
            (Role::User, _) => ScriptedTurn::tool_call("search", json!({"q": last.content})),
            (Role::Tool, "found: 42") => ScriptedTurn::tool_call("finish", json!({"answer": "42"})),
            (Role::Tool, result) => ScriptedTurn::text(format!("final: {result}")),
            _ => return Err(format!("unexpected turn {last:?}")),
        })
    });
    let client = scripted(lm.clone()).await;
    let mut messages = vec![Message::system("agent"), Message::user("the answer?")];
    let mut observations = ["found: 42", "finished"].into_iter();
    let mut steps = Vec::new();
    for streamed in [false, true, false] {
        let response = if streamed {
            stream(
                &client,
                "dummy",
                messages.clone(),
                with_tools(openai_tools()),
            )
            .await
            .0
        } else {
            client
                .request("dummy", messages.clone(), with_tools(openai_tools()))
                .await
                .unwrap()
        };
        let choice = response.choices[0].clone();
        let Some(calls) = choice.tool_calls.clone() else {
            steps.push(response.text().to_owned());
            break;
        };
        let call = &calls[0];
        steps.push(format!(
            "{}({})",
            call["function"]["name"].as_str().unwrap(),
            call["function"]["arguments"].as_str().unwrap()
        ));
        let mut assistant = Message::assistant(choice.content.unwrap_or_default());
        assistant.tool_calls = Some(std::sync::Arc::new(calls.clone()));
        let mut result = Message::new(Role::Tool, observations.next().unwrap());
        result.tool_call_id = call["id"].as_str().map(str::to_owned);
        messages.extend([assistant, result]);
    }
    assert_eq!(
        steps,
        [
            r#"search({"q":"the answer?"})"#,
            r#"finish({"answer":"42"})"#,
            "final: finished"
        ]
    );
    assert_eq!(lm.calls(), 3);
    // The earlier calls count as input: more than their texts alone.
    let text_only = tokens::estimate_chat_tokens_heuristic(&messages);
    let last = client
        .request("dummy", messages, with_tools(openai_tools()))
        .await
        .unwrap();
    assert!(last.usage.input_tokens > text_only, "{:?}", last.usage);
}

#[tokio::test]
async fn several_choices_raw_arguments_and_errors() {
    let lm = ScriptedLm::turns([ScriptedTurn::tool_calls([ScriptedToolCall::raw(
        "search",
        "{\"q\": oops",
    )])]);
    let client = scripted(lm).await;
    let response = client
        .request(
            "dummy",
            vec![Message::user("go")],
            RequestOptions::new().params(ChatParams {
                n: Some(2),
                tools: Some(std::sync::Arc::new(openai_tools())),
                ..ChatParams::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(response.choices.len(), 2);
    let mut ids = BTreeSet::new();
    for choice in &response.choices {
        let call = &choice.tool_calls.as_ref().unwrap()[0];
        // Sent verbatim, malformed as scripted.
        assert_eq!(call["function"]["arguments"], "{\"q\": oops");
        ids.insert(call["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 2);

    let failing = scripted(ScriptedLm::from_turn_fn(|_| Err("no turn".into()))).await;
    let error = failing
        .request("dummy", vec![Message::user("x")], RequestOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ClientErrorKind::InvalidRequest),
        "{error}"
    );
    assert!(error.message().contains("no turn"), "{error}");
    let empty = scripted(ScriptedLm::turns(Vec::<ScriptedTurn>::new())).await;
    assert!(
        empty
            .request("dummy", vec![Message::user("x")], RequestOptions::new())
            .await
            .is_err()
    );
}

// ------------------------------------------------- the mock upstream, over HTTP

fn provider(id: &str, kind: &str, base_url: &str) -> ProviderConfig {
    let raw = RawProvider {
        kind: Some(kind.into()),
        base_url: Some(base_url.into()),
        model: Some("mock-model".into()),
        retry_base_ms: Some(5),
        retry_max_ms: Some(50),
        ..RawProvider::default()
    };
    ProviderConfig::validate(id, &raw, None, &|_| None).unwrap()
}

/// The mock scripted as a three-step agent (see `dspex-mock`'s `Script`):
/// the question makes it search and look up in parallel, the search result
/// makes it call `finish`, and finish's result makes it answer.
async fn agent_mock() -> MockServer {
    let script = Script::default()
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
                    ScriptToolCall::new("search", json!({"q": "meaning of life"})),
                    ScriptToolCall::new("lookup", json!({})),
                ],
            )
            .last_turn(),
        );
    MockServer::start(MockConfig {
        chunk_chars: 4,
        ..MockConfig::default().with_script(script)
    })
    .await
    .unwrap()
}

/// The tools' results, by name.
fn observe(name: &str) -> &'static str {
    match name {
        "search" => "search says 42",
        "lookup" => "nothing found",
        "finish" => "finished: ok",
        other => panic!("unknown tool {other}"),
    }
}

/// The name and arguments of a call in either provider's shape.
fn name_and_arguments(call: &Value) -> (String, Value) {
    match call.get("function") {
        Some(function) => (
            function["name"].as_str().unwrap().to_owned(),
            serde_json::from_str(function["arguments"].as_str().unwrap()).unwrap(),
        ),
        None => (
            call["name"].as_str().unwrap().to_owned(),
            call["input"].clone(),
        ),
    }
}

/// Runs the agent loop against provider `id`, streaming on the steps
/// `streamed` says, and returns each step as `name(arguments)` or the text.
async fn run_agent(client: &Client, id: &str, tools: &Value, streamed: [bool; 3]) -> Vec<String> {
    let mut messages = vec![
        Message::system("You are an agent."),
        Message::user("What is the meaning of life?"),
    ];
    let mut steps = Vec::new();
    for stream_it in streamed {
        let options = with_tools(tools.clone());
        let response = if stream_it {
            let (response, fragments) = stream(client, id, messages.clone(), options).await;
            if response.choices[0].tool_calls.is_some() {
                assert!(fragments >= 2, "{id}: {fragments} tool-call deltas");
            }
            response
        } else {
            client.request(id, messages.clone(), options).await.unwrap()
        };
        let choice = response.choices[0].clone();
        let Some(calls) = choice.tool_calls.clone() else {
            assert_eq!(choice.finish_reason, Some(FinishReason::Stop), "{id}");
            steps.push(response.text().to_owned());
            break;
        };
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls), "{id}");
        let mut step = Vec::new();
        let mut results = Vec::new();
        for call in calls.as_array().unwrap() {
            let (name, arguments) = name_and_arguments(call);
            step.push(format!("{name}({arguments})"));
            let mut result = Message::new(Role::Tool, observe(&name));
            result.tool_call_id = call["id"].as_str().map(str::to_owned);
            results.push(result);
        }
        if let Some(text) = &choice.content {
            step.insert(0, text.clone());
        }
        steps.push(step.join(" "));
        let mut assistant = Message::assistant(choice.content.unwrap_or_default());
        assistant.tool_calls = Some(std::sync::Arc::new(calls));
        messages.push(assistant);
        messages.extend(results);
    }
    steps
}

#[tokio::test]
async fn an_agent_loop_against_the_mock_in_both_wire_formats() {
    let upstream = agent_mock().await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url()))
        .await
        .unwrap();
    client
        .add_provider(provider(
            "claude",
            "anthropic",
            &upstream.anthropic_base_url(),
        ))
        .await
        .unwrap();
    let expected = [
        r#"search({"q":"meaning of life"}) lookup({})"#,
        r#"I have it. finish({"answer":"42"})"#,
        "The answer is 42.",
    ];
    for (id, tools) in [("oa", openai_tools()), ("claude", anthropic_tools())] {
        for streamed in [[false; 3], [true; 3], [true, false, true]] {
            let steps = run_agent(&client, id, &tools, streamed).await;
            assert_eq!(steps, expected, "{id} streamed {streamed:?}");
        }
    }
    // Every request was answered 200: the tool turns sent back paired up.
    let stats = upstream.stats();
    assert_eq!(stats.by_status.get(&200), Some(&stats.requests));
    assert_eq!(stats.requests, 18);
}

#[tokio::test]
async fn streamed_mock_tool_calls_match_the_plain_ones() {
    let upstream = agent_mock().await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url()))
        .await
        .unwrap();
    client
        .add_provider(provider(
            "claude",
            "anthropic",
            &upstream.anthropic_base_url(),
        ))
        .await
        .unwrap();
    for (id, tools) in [("oa", openai_tools()), ("claude", anthropic_tools())] {
        let messages = vec![Message::user("What is the meaning of life?")];
        let plain = client
            .request(id, messages.clone(), with_tools(tools.clone()))
            .await
            .unwrap();
        let (streamed, _) = stream(&client, id, messages, with_tools(tools)).await;
        let (a, b) = (&plain.choices[0], &streamed.choices[0]);
        assert_eq!(b.content, a.content, "{id}");
        assert_eq!(a.content, None, "{id}");
        assert_eq!(b.finish_reason, Some(FinishReason::ToolCalls), "{id}");
        let (plain_shape, plain_ids) = split_ids(a.tool_calls.as_ref().unwrap());
        let (streamed_shape, streamed_ids) = split_ids(b.tool_calls.as_ref().unwrap());
        assert_eq!(streamed_shape, plain_shape, "{id}");
        assert_eq!(plain_shape.as_array().unwrap().len(), 2, "{id}");
        let all: BTreeSet<&String> = plain_ids.iter().chain(&streamed_ids).collect();
        assert_eq!(all.len(), 4, "{id}: ids are unique per call");
        assert_eq!(streamed.usage, plain.usage, "{id}");
    }
}

#[tokio::test]
async fn unpaired_tool_turns_are_refused_by_the_mock_as_invalid() {
    let upstream = agent_mock().await;
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url()))
        .await
        .unwrap();
    let mut assistant = Message::assistant("");
    assistant.tool_calls = Some(std::sync::Arc::new(
        json!([{"id": "call_a", "type": "function",
        "function": {"name": "search", "arguments": "{}"}}]),
    ));
    let mut result = Message::new(Role::Tool, "r");
    result.tool_call_id = Some("call_b".into());
    let error = client
        .request(
            "oa",
            vec![Message::user("q"), assistant, result],
            with_tools(openai_tools()),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.message().contains("'call_b' not found"), "{error}");
}
