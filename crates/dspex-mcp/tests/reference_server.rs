//! `McpClient` against a reference MCP server written by others: the npm
//! package `@modelcontextprotocol/server-everything` over stdio, installed
//! into `target/mcp-reference` by `scripts/mcp-reference-server`, which
//! prints the command this test reads from `DSPEX_TEST_MCP_REFERENCE`:
//!
//! ```sh
//! DSPEX_TEST_MCP_REFERENCE=$(scripts/mcp-reference-server) \
//!   cargo test -p dspex-mcp --test reference_server -- --ignored
//! ```
//!
//! Without the variable the test is ignored by a plain `cargo test`, and
//! under `--ignored` it says on stderr that it did not run and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    missing_docs
)]

use std::time::Duration;

use dspex_mcp::{McpClient, McpServerConfig, RawMcpServer};
use serde_json::json;

const VARIABLE: &str = "DSPEX_TEST_MCP_REFERENCE";

#[tokio::test]
#[ignore = "needs the reference MCP server: DSPEX_TEST_MCP_REFERENCE=$(scripts/mcp-reference-server)"]
async fn reference_server_everything() {
    let Some(command) = std::env::var(VARIABLE)
        .ok()
        .filter(|command| !command.trim().is_empty())
    else {
        eprintln!(
            "NOT RUN: reference_server_everything needs {VARIABLE}, the command of the \
             reference MCP server; run it with \
             {VARIABLE}=$(scripts/mcp-reference-server) cargo test -p dspex-mcp \
             --test reference_server -- --ignored"
        );
        return;
    };
    // The script prints `node /path/to/dist/index.js stdio` (it refuses paths
    // with spaces).
    let mut words = command.split_whitespace().map(str::to_owned);
    let raw = RawMcpServer {
        command: words.next(),
        args: words.collect(),
        env: [("DSPEX_MCP_PROBE".to_owned(), "probe-value-7".to_owned())].into(),
        tools: Some(vec![
            "echo".into(),
            "get-sum".into(),
            "get-structured-content".into(),
            "get-env".into(),
        ]),
        prefix: Some("ref_".into()),
        timeout: Some("30s".into()),
        // `node` loading the package is quick, but leave room on a busy machine.
        startup_timeout: Some("60s".into()),
        ..RawMcpServer::default()
    };
    let config = McpServerConfig::from_raw("everything", raw).unwrap();
    let client = McpClient::connect("everything", &config).await.unwrap();
    assert!(client.server_name().is_some());
    let pid = client.process_id().unwrap();

    let mut names: Vec<String> = client.tools().iter().map(|t| t.name().to_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ref_echo",
            "ref_get-env",
            "ref_get-structured-content",
            "ref_get-sum"
        ]
    );
    let tool = |name: &str| {
        client
            .tools()
            .into_iter()
            .find(|tool| tool.name() == name)
            .unwrap()
    };
    let sum = tool("ref_get-sum");
    assert_eq!(sum.parameters()["required"], json!(["a", "b"]));
    assert!(sum.parameters().get("$schema").is_none());
    assert!(!sum.description().is_empty());

    let reply = tool("ref_echo")
        .call(json!({"message": "hello from dspex"}))
        .await
        .unwrap();
    let text = reply.as_str().unwrap();
    assert!(text.contains("hello from dspex"), "{reply}");

    let reply = sum.call(json!({"a": 2, "b": 40})).await.unwrap();
    assert!(reply.as_str().unwrap().contains("42"), "{reply}");

    let reply = tool("ref_get-structured-content")
        .call(json!({"location": "Chicago"}))
        .await
        .unwrap();
    for key in ["temperature", "conditions", "humidity"] {
        assert!(reply.get(key).is_some(), "no `{key}` in {reply}");
    }

    // The configured environment reaches the server process.
    let reply = tool("ref_get-env").call(json!({})).await.unwrap();
    assert!(reply.to_string().contains("probe-value-7"), "{reply}");

    // Arguments the server's schema refuses come back as an error naming
    // the tool, not a crash.
    let error = sum
        .call(json!({"a": "two", "b": 40}))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("tool `ref_get-sum` failed: "), "{error}");

    client.shutdown().await.unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(gone, "the reference server {pid} outlived shutdown");
}
