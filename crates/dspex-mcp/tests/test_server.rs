//! `McpClient` against `dspex-mcp-test-server`, over stdio (the client
//! spawns it) and over streamable HTTP (a separate process on loopback):
//! every check runs on both transports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::{Fixture, Kind, kill, process_exists, process_gone};
use dspex_mcp::{McpClient, McpError};
use dspex_prompt::Tool;
use serde_json::{Map, Value, json};

/// Runs an async check once per transport, as two tests.
macro_rules! both_transports {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test]
                async fn stdio() {
                    super::$check(super::Kind::Stdio).await;
                }

                #[tokio::test]
                async fn http() {
                    super::$check(super::Kind::Http).await;
                }
            }
        )*
    };
}

both_transports!(
    lists_tools_across_pages,
    calls_tools,
    error_results_are_errors_naming_the_tool,
    calls_time_out_and_the_session_survives,
    a_dead_server_gives_typed_errors,
    a_server_dying_during_a_call_ends_the_call,
    allow_list_and_prefix,
    an_unknown_allow_listed_tool_is_a_config_error,
    shutdown_ends_the_session_for_every_tool,
);

async fn connect(fixture: &Fixture, extra: &str) -> McpClient {
    McpClient::connect(&fixture.name, &fixture.config(extra))
        .await
        .unwrap()
}

fn tool(client: &McpClient, name: &str) -> Tool {
    client
        .tools()
        .into_iter()
        .find(|tool| tool.name() == name)
        .unwrap_or_else(|| panic!("no tool `{name}` in {client:?}"))
}

async fn lists_tools_across_pages(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(&fixture, "").await;
    // The server serves two tools a page, sorted by name (`text.upper` before
    // `text_stats`): eight tools means four pages.
    let names: Vec<String> = client.tools().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(
        names,
        [
            "add",
            "cancellations",
            "echo",
            "fail",
            "http_header",
            "slow",
            "text_upper",
            "text_stats"
        ]
    );
    let add = tool(&client, "add");
    assert_eq!(add.description(), "Adds two integers.");
    let schema = add.parameters();
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["a", "b"]));
    assert_eq!(schema["properties"]["a"]["type"], "integer");
    assert_eq!(schema["properties"]["b"]["description"], "The second term.");
    assert!(schema.get("$schema").is_none(), "{schema}");
    assert_eq!(
        tool(&client, "text_upper").description(),
        "Upper-cases a text."
    );
    assert_eq!(
        tool(&client, "slow").parameters()["required"],
        json!(["ms"])
    );
    assert_eq!(client.name(), fixture.name);
    assert_eq!(
        client.server_name().as_deref(),
        Some("dspex-mcp-test-server")
    );
    assert!(client.server_version().is_some());
    assert_eq!(
        client.instructions().as_deref(),
        Some("A test server for dspex-mcp.")
    );
    assert_eq!(client.process_id().is_some(), kind == Kind::Stdio);
    client.shutdown().await.unwrap();
}

async fn calls_tools(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(&fixture, "").await;
    let add = tool(&client, "add");
    assert_eq!(
        add.call(json!({"a": 2, "b": 40})).await.unwrap(),
        json!("42")
    );
    assert_eq!(
        tool(&client, "echo")
            .call(json!({"text": "héllo\nworld"}))
            .await
            .unwrap(),
        json!("héllo\nworld")
    );
    // Structured content comes back as JSON, not as its text rendering.
    assert_eq!(
        tool(&client, "text_stats")
            .call(json!({"text": "one two\nthree"}))
            .await
            .unwrap(),
        json!({"words": 3, "characters": 13, "lines": 2})
    );
    // The exposed name has `_` for the `.`; the server still gets `text.upper`.
    assert_eq!(
        tool(&client, "text_upper")
            .call(json!({"text": "shout"}))
            .await
            .unwrap(),
        json!("SHOUT")
    );
    let args: Map<String, Value> = json!({"text": "direct"}).as_object().unwrap().clone();
    assert_eq!(
        client.call_tool("text.upper", args).await.unwrap(),
        json!("DIRECT")
    );
    // Concurrent calls on one session each get their own answer.
    let calls = (0..8).map(|i| {
        let add = add.clone();
        async move { add.call(json!({"a": i, "b": 1000})).await.unwrap() }
    });
    let sums = futures::future::join_all(calls).await;
    assert_eq!(
        sums,
        (0..8)
            .map(|i| json!((i + 1000).to_string()))
            .collect::<Vec<_>>()
    );
    // Arguments of the wrong type: the server says so as the tool's error.
    let error = add.call(json!({"a": "two", "b": 1})).await.unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("tool `add` failed: "), "{message}");
    assert!(
        message.contains("invalid type: string \"two\""),
        "{message}"
    );
    let error = client
        .call_tool("no_such_tool", Map::new())
        .await
        .unwrap_err();
    assert!(matches!(error, McpError::Rpc { .. }), "{error:?}");
    assert!(!error.is_retryable());
    client.shutdown().await.unwrap();
}

async fn error_results_are_errors_naming_the_tool(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(&fixture, "").await;
    let fail = tool(&client, "fail");
    let error = fail
        .call(json!({"message": "disk full"}))
        .await
        .unwrap_err();
    // The model sees the server's own words, under the tool's name.
    assert_eq!(error.to_string(), "tool `fail` failed: disk full");
    let error = fail.call(json!({})).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "tool `fail` failed: this tool always fails"
    );
    let error = client.call_tool("fail", Map::new()).await.unwrap_err();
    let McpError::ToolFailed {
        server,
        tool: failed_tool,
        message,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(
        (server.as_str(), failed_tool.as_str(), message.as_str()),
        (fixture.name.as_str(), "fail", "this tool always fails")
    );
    assert!(!error.is_retryable());
    // An overflow is the tool's error too, not a crash of the server.
    let error = tool(&client, "add")
        .call(json!({"a": i64::MAX, "b": 1}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("overflows"), "{error}");
    assert_eq!(
        tool(&client, "add")
            .call(json!({"a": 1, "b": 1}))
            .await
            .unwrap(),
        json!("2")
    );
    client.shutdown().await.unwrap();
}

async fn calls_time_out_and_the_session_survives(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(&fixture, "timeout = \"300ms\"").await;
    let slow = tool(&client, "slow");
    // The tool's own limit is a backstop beyond the configured timeout.
    assert_eq!(slow.timeout(), Duration::from_millis(1300));
    let error = slow.call(json!({"ms": 60_000})).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "MCP server `{}` did not answer `tools/call` of `slow`",
            fixture.name
        )) && message.contains("within 300ms"),
        "{message}"
    );
    let error = client
        .call_tool("slow", json!({"ms": 60_000}).as_object().unwrap().clone())
        .await
        .unwrap_err();
    assert!(matches!(error, McpError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    // Each timed-out call was cancelled on the server (the notification is
    // sent as the call gives up, so it may arrive just after).
    let cancellations = tool(&client, "cancellations");
    let mut cancelled = json!("0");
    for _ in 0..200 {
        cancelled = cancellations.call(json!({})).await.unwrap();
        if cancelled == json!("2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(cancelled, json!("2"));
    // The session is still usable, and a quick call is answered.
    assert_eq!(
        slow.call(json!({"ms": 1})).await.unwrap(),
        json!("slept 1 ms")
    );
    assert!(!client.is_closed());
    client.shutdown().await.unwrap();
}

async fn a_dead_server_gives_typed_errors(kind: Kind) {
    let mut fixture = Fixture::start(kind);
    let client = connect(&fixture, "").await;
    let add = tool(&client, "add");
    assert_eq!(add.call(json!({"a": 1, "b": 2})).await.unwrap(), json!("3"));
    match kind {
        Kind::Stdio => kill(client.process_id().unwrap()),
        Kind::Http => fixture.kill_http_server(),
    }
    for _ in 0..2 {
        let error = client
            .call_tool("add", json!({"a": 1, "b": 2}).as_object().unwrap().clone())
            .await
            .unwrap_err();
        assert_eq!(error.server(), Some(fixture.name.as_str()), "{error:?}");
        assert!(
            matches!(error, McpError::Closed { .. } | McpError::Transport { .. }),
            "{error:?}"
        );
        assert!(error.is_retryable(), "{error:?}");
        let message = add
            .call(json!({"a": 1, "b": 2}))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!("MCP server `{}`", fixture.name)),
            "{message}"
        );
        assert!(
            !message.contains("timed out") && !message.contains("did not answer"),
            "{message}"
        );
    }
    if kind == Kind::Stdio {
        let pid = client.process_id().unwrap();
        assert!(client.is_closed());
        client.shutdown().await.unwrap();
        assert!(
            process_gone(pid).await,
            "the killed server {pid} was not reaped"
        );
    } else {
        client.shutdown().await.unwrap();
    }
}

async fn a_server_dying_during_a_call_ends_the_call(kind: Kind) {
    let mut fixture = Fixture::start(kind);
    // A timeout far beyond the test: the call must end because the server
    // died, not because it gave up.
    let client = connect(&fixture, "timeout = \"10m\"").await;
    let slow = tool(&client, "slow");
    let call = tokio::spawn(async move { slow.call(json!({"ms": 600_000})).await });
    // Let the call reach the server before it dies.
    let echo = tool(&client, "echo");
    assert_eq!(echo.call(json!({"text": "x"})).await.unwrap(), json!("x"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    match kind {
        Kind::Stdio => kill(client.process_id().unwrap()),
        Kind::Http => fixture.kill_http_server(),
    }
    let error = call.await.unwrap().unwrap_err().to_string();
    assert!(
        error.starts_with("tool `slow` failed: MCP server `")
            && error.contains(&fixture.name)
            && !error.contains("did not answer"),
        "{error}"
    );
    client.shutdown().await.unwrap();
}

async fn allow_list_and_prefix(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(
        &fixture,
        "tools = [\"text.upper\", \"add\"]\nprefix = \"t-\"",
    )
    .await;
    let names: Vec<String> = client.tools().iter().map(|t| t.name().to_owned()).collect();
    assert_eq!(names, ["t-add", "t-text_upper"]);
    assert_eq!(
        tool(&client, "t-add")
            .call(json!({"a": 2, "b": 2}))
            .await
            .unwrap(),
        json!("4")
    );
    assert_eq!(
        tool(&client, "t-text_upper")
            .call(json!({"text": "a"}))
            .await
            .unwrap(),
        json!("A")
    );
    client.shutdown().await.unwrap();

    // A prefix that makes a name too long is refused, naming the tool; only
    // allow-listed tools are checked (`add` fits, `text_upper` does not).
    let long = "p".repeat(60);
    let error = McpClient::connect(
        &fixture.name,
        &fixture.config(&format!(
            "prefix = {long:?}\ntools = [\"add\", \"text.upper\"]"
        )),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, McpError::InvalidTool { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("offers tool `text.upper`"), "{message}");
    assert!(
        message.contains("longer than the 64 characters"),
        "{message}"
    );
}

async fn an_unknown_allow_listed_tool_is_a_config_error(kind: Kind) {
    let fixture = Fixture::start(kind);
    let error = McpClient::connect(&fixture.name, &fixture.config("tools = [\"add\", \"mul\"]"))
        .await
        .unwrap_err();
    assert!(matches!(error, McpError::Config(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "config error at `mcp.servers.{}.tools`: the server offers no tool `mul` \
             (it offers: add, cancellations, echo, fail, http_header, slow, text.upper, text_stats)",
            fixture.name
        )
    );
}

async fn shutdown_ends_the_session_for_every_tool(kind: Kind) {
    let fixture = Fixture::start(kind);
    let client = connect(&fixture, "").await;
    let add = tool(&client, "add");
    let pid = client.process_id();
    client.shutdown().await.unwrap();
    if let Some(pid) = pid {
        // Reaped before `shutdown` returned.
        assert!(
            !process_exists(pid),
            "server process {pid} outlived shutdown"
        );
    }
    let message = add
        .call(json!({"a": 1, "b": 2}))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "tool `add` failed: MCP server `{}` was shut down; `tools/call` of `add` was not sent",
            fixture.name
        )
    );
}

#[tokio::test]
async fn dropping_the_client_and_its_tools_ends_the_process() {
    let fixture = Fixture::start(Kind::Stdio);
    let client = connect(&fixture, "").await;
    let pid = client.process_id().unwrap();
    let add = tool(&client, "add");
    drop(client);
    // The tools keep the session open.
    assert_eq!(add.call(json!({"a": 1, "b": 2})).await.unwrap(), json!("3"));
    assert!(process_exists(pid));
    drop(add);
    assert!(
        process_gone(pid).await,
        "server process {pid} outlived its client"
    );
}

#[test]
fn a_runtime_shut_down_under_a_client_leaves_no_process() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fixture = Fixture::start(Kind::Stdio);
    let client = runtime.block_on(connect(&fixture, ""));
    let pid = client.process_id().unwrap();
    // The runtime goes first: no task is left to close the session.
    drop(runtime);
    drop(client);
    // Killed by tokio's kill-on-drop; this test process is its parent and
    // reaps it below (a fresh runtime's reaper would too).
    let mut gone = false;
    for _ in 0..400 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent (us) to reap it.
        if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gone,
        "server process {pid} still runs after its runtime and client are gone"
    );
}

#[tokio::test]
async fn a_command_that_cannot_start_is_a_spawn_error() {
    let raw = toml::from_str("command = \"/nonexistent/mcp-server\"").unwrap();
    let config = dspex_mcp::McpServerConfig::from_raw("ghost", raw).unwrap();
    let error = McpClient::connect("ghost", &config).await.unwrap_err();
    assert!(matches!(error, McpError::Spawn { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("MCP server `ghost`: cannot start `/nonexistent/mcp-server`: "),
        "{message}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_server_that_exits_at_once_is_reported_with_its_stderr_and_no_secret() {
    let raw = toml::from_str(
        r#"
        command = "sh"
        args = ["-c", "echo \"starting with token $API_TOKEN\" >&2; echo 'fatal: no config' >&2; exit 3"]
        env = { API_TOKEN = "tok-s3cret-123" }
        "#,
    )
    .unwrap();
    let config = dspex_mcp::McpServerConfig::from_raw("broken", raw).unwrap();
    assert!(!format!("{config:?}").contains("tok-s3cret-123"));
    let error = McpClient::connect("broken", &config).await.unwrap_err();
    assert!(matches!(error, McpError::Closed { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with("MCP server `broken` "), "{message}");
    assert!(message.contains("fatal: no config"), "{message}");
    assert!(
        message.contains("starting with token [redacted]"),
        "{message}"
    );
    assert!(!message.contains("tok-s3cret-123"), "{message}");
    assert!(!format!("{error:?}").contains("tok-s3cret-123"));
}

#[tokio::test]
async fn a_silent_server_times_out_at_startup() {
    let raw = toml::from_str("command = \"sleep\"\nargs = [\"600\"]\nstartup_timeout = \"300ms\"")
        .unwrap();
    let config = dspex_mcp::McpServerConfig::from_raw("mute", raw).unwrap();
    let error = McpClient::connect("mute", &config).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "MCP server `mute` did not answer the `initialize` handshake within 300ms"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error_without_the_header() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let raw = toml::from_str(&format!(
        "url = \"http://127.0.0.1:{port}/mcp\"\nheaders = {{ Authorization = \"Bearer hdr-s3cret-456\" }}"
    ))
    .unwrap();
    let config = dspex_mcp::McpServerConfig::from_raw("offline", raw).unwrap();
    assert!(!format!("{config:?}").contains("hdr-s3cret-456"));
    let error = McpClient::connect("offline", &config).await.unwrap_err();
    assert!(matches!(error, McpError::Transport { .. }), "{error:?}");
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(message.starts_with("MCP server `offline`: "), "{message}");
    assert!(
        !message.contains("hdr-s3cret-456") && !format!("{error:?}").contains("hdr-s3cret-456")
    );
}

#[tokio::test]
async fn headers_reach_the_server_and_never_print() {
    let fixture = Fixture::start(Kind::Http);
    let client = connect(
        &fixture,
        "headers = { Authorization = \"Bearer hdr-s3cret-789\", X-Trace = \"t1\" }",
    )
    .await;
    assert!(!format!("{client:?}").contains("hdr-s3cret-789"));
    let header = tool(&client, "http_header");
    // What the server received, as the tool's result (not something the
    // client prints).
    assert_eq!(
        header.call(json!({"name": "authorization"})).await.unwrap(),
        json!("Bearer hdr-s3cret-789")
    );
    assert_eq!(
        header.call(json!({"name": "x-trace"})).await.unwrap(),
        json!("t1")
    );
    client.shutdown().await.unwrap();
}
