//! The agent features through the `dspex` binary: a ReAct workflow (the
//! shipped example) whose tools come from an MCP server in the config,
//! streamed fields (`predict --stream`) and a conversation
//! (`predict --interactive`), against the mock upstream over loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::process::Stdio;

use dspex::mock::{MockConfig, MockServer, Script, ScriptRule, ScriptToolCall};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn dspex(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dspex"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DSPEX_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("DSPEX_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A config with the mock as the provider and, when `mcp`, the `dspex
/// mcp-test-server` of this build as an MCP server.
fn write_config(dir: &Path, base_url: &str, mcp: bool) -> String {
    let mut text = format!(
        "default_provider = \"mock\"\n\n[providers.mock]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"gpt-4o-mini\"\nmax_retries = 0\n"
    );
    if mcp {
        text.push_str(&format!(
            "\n[mcp.servers.demo]\ncommand = \"{}\"\nargs = [\"mcp-test-server\"]\n",
            env!("CARGO_BIN_EXE_dspex")
        ));
    }
    let path = dir.join("dspex.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_react_example_workflow_uses_the_tools_of_an_mcp_server() {
    // Step 1: both tools at once on the question; step 2: finish on their
    // observations (the sum, and the word count in `text_stats`' JSON).
    let script = Script::default()
        .with_rule(
            ScriptRule::tool_calls(
                "What is 1234 + 5678",
                [
                    ScriptToolCall::new("add", json!({"a": 1234, "b": 5678})),
                    ScriptToolCall::new("text_stats", json!({"text": "the quick brown fox"})),
                ],
            )
            .last_turn(),
        )
        .with_rule(
            ScriptRule::tool_calls(
                "6912",
                [ScriptToolCall::new(
                    "finish",
                    json!({"answer": "6912, and 4 words"}),
                )],
            )
            .last_turn(),
        );
    let upstream = MockServer::start(
        MockConfig {
            record_requests: 10,
            ..MockConfig::default()
        }
        .with_script(script),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), true);
    let workflow = example("calculator_agent.toml");
    let run = dspex(
        dir.path(),
        &[
            "--config",
            &config,
            "run",
            &workflow,
            "--json",
            "-i",
            "question=What is 1234 + 5678, and how many words are in 'the quick brown fox'?",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let output: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(output["outputs"]["answer"], "6912, and 4 words", "{output}");
    let recorded = upstream.recorded();
    assert_eq!(recorded.len(), 2);
    let tools: Vec<&str> = recorded[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        ["add", "text_stats", "finish"],
        "only the tools the step names"
    );
    // The second request carries both observations from the MCP server.
    let results: Vec<&str> = recorded[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(results[0], "6912");
    let stats: Value = serde_json::from_str(results[1]).unwrap();
    assert_eq!(stats["words"], 4);

    // A tool the config does not provide is named, with the ones it does.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&workflow).unwrap().replace(
            "tools = [\"add\", \"text_stats\"]",
            "tools = [\"add\", \"search\"]",
        ),
    )
    .unwrap();
    let run = dspex(
        dir.path(),
        &[
            "--config",
            &config,
            "run",
            broken.to_str().unwrap(),
            "-i",
            "question=q",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("steps[0] (solve).tools")
            && run.stderr.contains("unknown tool `search`")
            && run.stderr.contains("registered: add, cancellations, echo"),
        "{}",
        run.stderr
    );
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_stream_prints_the_fields_as_they_come() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), false);
    let args = [
        "--config",
        &config,
        "predict",
        "--cot",
        "question -> answer",
        "-i",
        "question=Why?",
    ];
    let plain = dspex(dir.path(), &args, None).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let mut streamed_args = args.to_vec();
    streamed_args.insert(3, "--stream");
    let streamed = dspex(dir.path(), &streamed_args, None).await;
    assert_eq!(streamed.code, 0, "{}", streamed.stderr);
    // The same lines, written field by field as the stream arrives.
    assert_eq!(streamed.stdout, plain.stdout);
    assert!(
        streamed.stdout.starts_with("reasoning: "),
        "{}",
        streamed.stdout
    );
    assert!(streamed.stdout.contains("\nanswer: mock answer for: Why?"));
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_interactive_keeps_the_conversation_as_history() {
    let upstream = MockServer::start(MockConfig {
        record_requests: 10,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream.base_url(), false);
    let run = dspex(
        dir.path(),
        &[
            "--config",
            &config,
            "predict",
            "--interactive",
            "question -> answer",
        ],
        Some("Capital of France?\nAnd of Italy?\n/reset\nAnd of Spain?\n\n"),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let answers: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        answers,
        [
            "answer: mock answer for: Capital of France?",
            "answer: mock answer for: And of Italy?",
            "answer: mock answer for: And of Spain?"
        ]
    );
    let turns = |i: usize| -> Vec<(String, String)> {
        upstream.recorded()[i].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let second = turns(1);
    let roles: Vec<&str> = second.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(second[1].1, "[[ ## question ## ]]\nCapital of France?");
    assert!(second[2].1.contains("mock answer for: Capital of France?"));
    // After /reset the conversation starts again.
    assert_eq!(turns(2).len(), 2);
    upstream.shutdown().await;
}
