//! [`McpClient`]: one session with one MCP server, and its tools as
//! [`dspex_prompt::Tool`]s.
//!
//! The protocol (framing, the `initialize` handshake, request ids,
//! cancellation, pagination, the streamable HTTP session) is rmcp's; this
//! module decides what a DSPex caller sees: which tools, under which names,
//! what a result or a failure looks like, and that every failure names the
//! server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::error::Error as _;
use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dspex_core::config::Secret;
use dspex_prompt::Tool;
use parking_lot::Mutex;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock,
    Implementation, ProtocolVersion, ResourceContents,
};
use rmcp::service::{ClientInitializeError, RunningService};
use rmcp::transport::common::client_side_sse::ExponentialBackoff;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{Peer, RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::config::{McpServerConfig, McpTransport};
use crate::error::McpError;

/// How much longer than the configured `timeout` a [`Tool`] waits before its
/// own timer fires. The call gives up at `timeout` with an error naming the
/// server and cancels the request; the tool's timer is only a backstop, and
/// this margin keeps it from winning the race with the better message.
const TOOL_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// How many of the server's last stderr lines an error quotes.
const STDERR_TAIL_LINES: usize = 8;

/// The longest stderr line kept; longer ones are cut into pieces of this
/// size, so a server that writes without newlines cannot grow the buffer.
const STDERR_MAX_LINE: u64 = 1024;

/// A session with one MCP server, and its tools.
///
/// The tools share the session with the client: it stays open while the
/// client or any of its tools is alive, and [`shutdown`](Self::shutdown)
/// closes it for all of them. Dropping the last of them closes it in the
/// background (a child process is told to exit and then killed and reaped,
/// as by `shutdown`); nothing blocks in `drop`.
pub struct McpClient {
    session: Arc<Session>,
    tools: Vec<Tool>,
    process_id: Option<u32>,
}

impl fmt::Debug for McpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.session.server)
            .field(
                "tools",
                &self.tools.iter().map(Tool::name).collect::<Vec<_>>(),
            )
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// Starts the server's process (`command`) or connects to its endpoint
    /// (`url`), performs the MCP `initialize` handshake and lists its tools
    /// (every page), all within the config's `startup_timeout`. `name` is the
    /// server's name in errors and logs.
    ///
    /// Fails if the command cannot start, the server exits or does not
    /// answer, an allow-listed tool does not exist, or an offered tool cannot
    /// be a DSPex tool (see [`McpError::InvalidTool`]). Tool names that
    /// contain characters a tool name may not have (`files.read`) are exposed
    /// with `_` in their place (`files_read`), after the `prefix`.
    pub async fn connect(name: &str, config: &McpServerConfig) -> Result<Self, McpError> {
        let server: Arc<str> = Arc::from(name);
        let secrets = config.secrets();
        let startup = config.startup_timeout();
        let deadline = tokio::time::Instant::now() + startup;
        let (handshake, process_id, stderr, is_stdio) = match config.transport() {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut process = tokio::process::Command::new(command);
                process.args(args);
                process.envs(env.iter().map(|(key, value)| (key, value.expose())));
                if let Some(cwd) = cwd {
                    process.current_dir(cwd);
                }
                // rmcp kills and reaps the child when the session ends, even
                // when the session is dropped (from a task on the runtime).
                // When the runtime itself is going away, that task never runs:
                // tokio's own kill-on-drop then kills the child, so it never
                // outlives us.
                process.kill_on_drop(true);
                let (transport, stderr) = TokioChildProcess::builder(process)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|source| McpError::Spawn {
                        server: name.to_owned(),
                        command: command.clone(),
                        source,
                    })?;
                let process_id = transport.id();
                let tail = StderrTail::start(&server, stderr, secrets.clone());
                let handshake =
                    tokio::time::timeout_at(deadline, client_config().serve(transport)).await;
                (handshake, process_id, tail, true)
            }
            McpTransport::Http { url, headers } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(header_map(name, headers)?);
                config.retry_config = Arc::new(sse_reconnects());
                let transport = StreamableHttpClientTransport::from_config(config);
                let handshake =
                    tokio::time::timeout_at(deadline, client_config().serve(transport)).await;
                (handshake, None, None, false)
            }
        };
        let scrub = |message: String| Session::scrub_with(&secrets, &message);
        let mut running = match handshake {
            Ok(Ok(running)) => running,
            Ok(Err(error)) => {
                let tail = match &stderr {
                    Some(tail) => tail.finished_text().await,
                    None => String::new(),
                };
                return Err(init_error(name, error, is_stdio, &tail, scrub));
            }
            Err(_) => {
                return Err(McpError::Timeout {
                    server: name.to_owned(),
                    operation: "the `initialize` handshake".to_owned(),
                    after: startup,
                });
            }
        };
        let session = Arc::new(Session {
            server,
            peer: running.peer().clone(),
            running: tokio::sync::Mutex::new(None),
            stderr,
            secrets,
            timeout: config.timeout(),
            shut_down: AtomicBool::new(false),
        });
        let offers_tools = running
            .peer()
            .peer_info()
            .is_some_and(|info| info.capabilities.tools.is_some());
        let listed = if offers_tools {
            match tokio::time::timeout_at(deadline, running.peer().list_all_tools()).await {
                Ok(Ok(listed)) => Ok(listed),
                Ok(Err(error)) => Err(session.service_error("`tools/list`", error)),
                Err(_) => Err(McpError::Timeout {
                    server: name.to_owned(),
                    operation: "the handshake and `tools/list`".to_owned(),
                    after: startup,
                }),
            }
        } else {
            Ok(Vec::new())
        };
        let tools = listed.and_then(|listed| build_tools(&session, config, listed));
        match tools {
            Ok(tools) => {
                *session.running.lock().await = Some(running);
                tracing::debug!(
                    mcp_server = name,
                    tools = tools.len(),
                    "connected to the MCP server"
                );
                Ok(Self {
                    session,
                    tools,
                    process_id,
                })
            }
            Err(error) => {
                // Close before returning, so a failed connect leaves no process.
                let _ = running.close().await;
                Err(error)
            }
        }
    }

    /// The server's name, as given to [`connect`](Self::connect).
    pub fn name(&self) -> &str {
        &self.session.server
    }

    /// The server's tools as DSPex tools (clones share the session): the
    /// allow-listed ones, named with the prefix, each with the server's
    /// description and input schema and the config's timeout (plus a one
    /// second margin: the call itself gives up at the configured timeout,
    /// with an error naming the server, and cancels the request).
    ///
    /// A tool's result is the call's `structuredContent` when the server sends
    /// one, otherwise its text content (parts joined by newlines). A result
    /// with `isError: true` is an error whose message is the server's text;
    /// a broken connection, a JSON-RPC error or a timeout is an error naming
    /// the server.
    pub fn tools(&self) -> Vec<Tool> {
        self.tools.clone()
    }

    /// Calls the tool the server names `tool` (its name on the server, not
    /// the exposed one), within the config's timeout, with the same result
    /// as a [`tools`](Self::tools) tool. A result with `isError: true` is
    /// [`McpError::ToolFailed`].
    pub async fn call_tool(
        &self,
        tool: &str,
        arguments: Map<String, Value>,
    ) -> Result<Value, McpError> {
        self.session.call(tool, arguments).await
    }

    /// The server's name for itself (`serverInfo.name`), when it gave one.
    pub fn server_name(&self) -> Option<String> {
        let info = self.session.peer.peer_info()?;
        info.server_info.as_ref().map(|s| s.name.clone())
    }

    /// The server's version (`serverInfo.version`), when it gave one.
    pub fn server_version(&self) -> Option<String> {
        let info = self.session.peer.peer_info()?;
        info.server_info.as_ref().map(|s| s.version.clone())
    }

    /// The server's instructions for using it, when it gave any.
    pub fn instructions(&self) -> Option<String> {
        self.session.peer.peer_info()?.instructions.clone()
    }

    /// The server process's id (stdio servers only).
    pub fn process_id(&self) -> Option<u32> {
        self.process_id
    }

    /// Whether the session is over: shut down, or the server went away.
    pub fn is_closed(&self) -> bool {
        self.session.peer.is_transport_closed()
    }

    /// Ends the session for the client and all its tools (their later calls
    /// are [`McpError::Closed`]). A stdio server has its stdin closed and is
    /// given a few seconds to exit, then SIGTERM, then SIGKILL, and is
    /// reaped before this returns; an HTTP session is ended.
    pub async fn shutdown(self) -> Result<(), McpError> {
        self.session.shut_down.store(true, Ordering::SeqCst);
        let running = self.session.running.lock().await.take();
        if let Some(mut running) = running {
            running.close().await.map_err(|e| McpError::Protocol {
                server: self.session.server.to_string(),
                message: format!("the session task failed while closing: {e}"),
            })?;
        }
        Ok(())
    }
}

/// What this client says about itself in the handshake. The version is
/// pinned to the newest that has the `initialize` handshake, which every
/// server speaks.
fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("dspex", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// How a broken SSE stream is reconnected: three tries, 0.5, 1 and 2 seconds
/// apart (or the server's own `retry` interval when it asks for longer),
/// then the calls waiting on it fail as closed. rmcp's default retries
/// forever, so a call in flight when the server died would only end at its
/// timeout.
fn sse_reconnects() -> ExponentialBackoff {
    let mut backoff = ExponentialBackoff::default();
    backoff.max_times = Some(3);
    backoff.base_duration = Duration::from_millis(500);
    backoff.max_delay = Some(Duration::from_secs(2));
    backoff
}

fn header_map(
    server: &str,
    headers: &BTreeMap<String, Secret>,
) -> Result<HashMap<http::HeaderName, http::HeaderValue>, McpError> {
    let mut map = HashMap::with_capacity(headers.len());
    for (name, value) in headers {
        // Checked by `McpServerConfig::from_raw`; an error here names the key
        // like one there, never the value.
        let key = format!("mcp.servers.{server}.headers.{name}");
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| McpError::config(&key, "not a valid HTTP header name"))?;
        let mut value = http::HeaderValue::from_str(value.expose())
            .map_err(|_| McpError::config(&key, "not a valid HTTP header value"))?;
        // Marked sensitive so the HTTP stack neither prints nor indexes it.
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

fn init_error(
    server: &str,
    error: ClientInitializeError,
    is_stdio: bool,
    stderr: &str,
    scrub: impl Fn(String) -> String,
) -> McpError {
    let server = server.to_owned();
    match error {
        ClientInitializeError::JsonRpcError(data) => McpError::Rpc {
            server,
            operation: "the `initialize` handshake".to_owned(),
            code: data.code.0,
            message: scrub(data.message.into_owned()),
        },
        ClientInitializeError::ConnectionClosed(_) | ClientInitializeError::Cancelled => {
            McpError::Closed {
                server,
                message: format!("closed the connection during the handshake{stderr}"),
            }
        }
        // A stdio transport fails to send only when the process is gone.
        ClientInitializeError::TransportError { error, context } if is_stdio => McpError::Closed {
            server,
            message: scrub(format!(
                "exited during the handshake ({context}: {}){stderr}",
                error_chain(&*error.error)
            )),
        },
        ClientInitializeError::TransportError { error, context } => McpError::Transport {
            server,
            message: scrub(format!("{context}: {}", error_chain(&*error.error))),
        },
        other => McpError::Protocol {
            server,
            message: scrub(format!("the handshake failed: {other}{stderr}")),
        },
    }
}

/// An error and its sources, as `outer: inner: innermost`.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    // rmcp's HTTP error holds reqwest's without naming it as its source, and
    // the reason worth showing ("Connection refused") is at the end of
    // reqwest's chain.
    if let Some(StreamableHttpError::Client(client)) =
        error.downcast_ref::<StreamableHttpError<reqwest::Error>>()
    {
        source = client.source();
    }
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // Some errors repeat their source in their own message.
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Turns the server's tool list into DSPex tools: the allow-list, the
/// prefix, valid and distinct names, object schemas.
fn build_tools(
    session: &Arc<Session>,
    config: &McpServerConfig,
    listed: Vec<rmcp::model::Tool>,
) -> Result<Vec<Tool>, McpError> {
    let server = &*session.server;
    if let Some(allowed) = config.tools() {
        let missing: Vec<&str> = allowed
            .iter()
            .filter(|name| !listed.iter().any(|tool| tool.name == name.as_str()))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let offered: Vec<&str> = listed.iter().map(|tool| &*tool.name).collect();
            return Err(McpError::config(
                format!("mcp.servers.{server}.tools"),
                format!(
                    "the server offers no tool {} (it offers: {})",
                    missing
                        .iter()
                        .map(|name| format!("`{name}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if offered.is_empty() {
                        "none".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ),
            ));
        }
    }
    let mut exposed_names: HashMap<String, String> = HashMap::new();
    let mut tools = Vec::new();
    for listed_tool in listed {
        let mcp_name = listed_tool.name.to_string();
        if config
            .tools()
            .is_some_and(|allowed| !allowed.contains(&mcp_name))
        {
            continue;
        }
        let invalid = |message: String| McpError::InvalidTool {
            server: server.to_owned(),
            tool: mcp_name.clone(),
            message,
        };
        let exposed = format!("{}{}", config.prefix(), sanitize(&mcp_name));
        if exposed.len() > 64 {
            return Err(invalid(format!(
                "`{exposed}` is longer than the 64 characters a tool name may have; \
                 leave it out with `tools` or use a shorter `prefix`"
            )));
        }
        if let Some(other) = exposed_names.insert(exposed.clone(), mcp_name.clone()) {
            return Err(invalid(format!(
                "it and `{other}` would both be exposed as `{exposed}`; leave one out with `tools`"
            )));
        }
        let description = listed_tool
            .description
            .as_deref()
            .or(listed_tool.title.as_deref())
            .unwrap_or_default()
            .to_owned();
        let schema = Value::Object((*listed_tool.input_schema).clone());
        let call_session = Arc::clone(session);
        let call_name: Arc<str> = Arc::from(mcp_name.as_str());
        let tool = Tool::new(exposed, description, schema, move |args: Value| {
            let session = Arc::clone(&call_session);
            let name = Arc::clone(&call_name);
            async move {
                // `Tool::call` has checked that the arguments are an object.
                let arguments = match args {
                    Value::Object(arguments) => arguments,
                    _ => Map::new(),
                };
                match session.call(&name, arguments).await {
                    Ok(value) => Ok(value),
                    // The tool's own words; `Tool` adds its name.
                    Err(McpError::ToolFailed { message, .. }) => Err(message),
                    Err(error) => Err(error.to_string()),
                }
            }
        })
        .map_err(|e| invalid(e.to_string()))?
        .with_timeout(config.timeout() + TOOL_TIMEOUT_MARGIN);
        tools.push(tool);
    }
    Ok(tools)
}

/// A tool name with every character a DSPex tool name may not have
/// replaced by `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What the client and its tools share.
struct Session {
    server: Arc<str>,
    peer: Peer<RoleClient>,
    /// Held until `shutdown` takes it; dropping it (with the last handle)
    /// ends the session in the background.
    running: tokio::sync::Mutex<Option<RunningService<RoleClient, ClientConfig>>>,
    stderr: Option<StderrTail>,
    secrets: Vec<Secret>,
    timeout: Duration,
    shut_down: AtomicBool,
}

impl Session {
    async fn call(&self, tool: &str, arguments: Map<String, Value>) -> Result<Value, McpError> {
        let operation = format!("`tools/call` of `{tool}`");
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        // Dropping the call on timeout makes rmcp send `notifications/cancelled`.
        let result = match tokio::time::timeout(self.timeout, self.peer.call_tool(params)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => return Err(self.service_error(&operation, error)),
            Err(_) => {
                return Err(McpError::Timeout {
                    server: self.server.to_string(),
                    operation,
                    after: self.timeout,
                });
            }
        };
        result_value(result).map_err(|message| McpError::ToolFailed {
            server: self.server.to_string(),
            tool: tool.to_owned(),
            message: self.scrub(&message),
        })
    }

    fn service_error(&self, operation: &str, error: ServiceError) -> McpError {
        let server = self.server.to_string();
        match error {
            ServiceError::McpError(data) => McpError::Rpc {
                server,
                operation: operation.to_owned(),
                code: data.code.0,
                message: self.scrub(&data.message),
            },
            ServiceError::TransportSend(error) => McpError::Transport {
                server,
                message: self.scrub(&format!(
                    "cannot send {operation}: {}",
                    error_chain(&*error.error)
                )),
            },
            ServiceError::TransportClosed | ServiceError::Cancelled { .. } => {
                let message = if self.shut_down.load(Ordering::SeqCst) {
                    format!("was shut down; {operation} was not sent")
                } else {
                    let tail = self
                        .stderr
                        .as_ref()
                        .map(StderrTail::text)
                        .unwrap_or_default();
                    format!("closed the session during {operation}{tail}")
                };
                McpError::Closed { server, message }
            }
            ServiceError::Timeout { timeout } => McpError::Timeout {
                server,
                operation: operation.to_owned(),
                after: timeout,
            },
            other => McpError::Protocol {
                server,
                message: self.scrub(&format!("{operation}: {other}")),
            },
        }
    }

    fn scrub(&self, text: &str) -> String {
        Self::scrub_with(&self.secrets, text)
    }

    fn scrub_with(secrets: &[Secret], text: &str) -> String {
        secrets
            .iter()
            .fold(text.to_owned(), |text, secret| secret.scrub(&text))
    }
}

/// A tool result as the tool's value: structured content when there is
/// some, otherwise the text parts joined; `Err` with the text for an
/// `isError` result.
fn result_value(result: CallToolResult) -> Result<Value, String> {
    let text = result
        .content
        .iter()
        .map(content_text)
        .collect::<Vec<_>>()
        .join("\n");
    if result.is_error == Some(true) {
        return Err(match (text.is_empty(), result.structured_content) {
            (false, _) => text,
            (true, Some(structured)) => structured.to_string(),
            (true, None) => "the tool reported an error without a message".to_owned(),
        });
    }
    Ok(result.structured_content.unwrap_or(Value::String(text)))
}

/// One content block as text: text as is, an embedded text resource as its
/// text, anything else (an image, audio, a blob, a link) as a short note the
/// model can read.
fn content_text(content: &ContentBlock) -> String {
    match content {
        ContentBlock::Text(text) => text.text.clone(),
        ContentBlock::Resource(embedded) => match &embedded.resource {
            ResourceContents::TextResourceContents { text, .. } => text.clone(),
            ResourceContents::BlobResourceContents { uri, mime_type, .. } => format!(
                "[binary resource {uri}{}]",
                mime_type
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
            _ => "[a resource of a kind this client does not show]".to_owned(),
        },
        ContentBlock::ResourceLink(link) => format!("[resource {} ({})]", link.uri, link.name),
        ContentBlock::Image(image) => format!("[image ({})]", image.mime_type),
        ContentBlock::Audio(audio) => format!("[audio ({})]", audio.mime_type),
        _ => "[content of a kind this client does not show]".to_owned(),
    }
}

/// The last lines a stdio server wrote on stderr, for error messages. Every
/// line is also logged at `debug`. Reading continuously matters: a server
/// whose stderr pipe fills up blocks.
#[derive(Clone)]
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    finished: tokio::sync::watch::Receiver<bool>,
}

impl StderrTail {
    fn start(
        server: &Arc<str>,
        stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
        secrets: Vec<Secret>,
    ) -> Option<Self> {
        let stderr = stderr?;
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (done, finished) = tokio::sync::watch::channel(false);
        let tail = Self {
            lines: Arc::clone(&lines),
            finished,
        };
        let server = Arc::clone(server);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(STDERR_MAX_LINE)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = Session::scrub_with(&secrets, String::from_utf8_lossy(&line).trim_end());
                if text.is_empty() {
                    continue;
                }
                tracing::debug!(mcp_server = %server, "stderr: {text}");
                let mut lines = lines.lock();
                if lines.len() == STDERR_TAIL_LINES {
                    lines.pop_front();
                }
                lines.push_back(text);
            }
            let _ = done.send(true);
        });
        Some(tail)
    }

    /// The tail for an error message: empty, or `; its stderr ends with: ...`.
    fn text(&self) -> String {
        let lines = self.lines.lock();
        if lines.is_empty() {
            String::new()
        } else {
            format!(
                "; its stderr ends with: {}",
                lines.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }

    /// The tail once the server has closed stderr (it exited), or after a
    /// short wait if it has not: an error then quotes everything it said.
    async fn finished_text(&self) -> String {
        let mut finished = self.finished.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            finished.wait_for(|finished| *finished),
        )
        .await;
        self.text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{EmbeddedResource, TextContent};
    use serde_json::json;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(sanitize("files.read/all"), "files_read_all");
        assert_eq!(sanitize("ok_name-2"), "ok_name-2");
        assert_eq!(sanitize("é"), "_");
    }

    #[test]
    fn results_become_values() {
        let text = CallToolResult::success(vec![
            ContentBlock::text("one"),
            ContentBlock::Text(TextContent::new("two")),
        ]);
        assert_eq!(result_value(text), Ok(json!("one\ntwo")));
        let structured = CallToolResult::structured(json!({"sum": 3}));
        assert_eq!(result_value(structured), Ok(json!({"sum": 3})));
        let failed = CallToolResult::error(vec![ContentBlock::text("no such file")]);
        assert_eq!(result_value(failed), Err("no such file".to_owned()));
        let empty = CallToolResult::error(vec![]);
        assert!(
            result_value(empty)
                .unwrap_err()
                .contains("without a message")
        );
        let resource = CallToolResult::success(vec![
            ContentBlock::Resource(EmbeddedResource::new(ResourceContents::text(
                "file body",
                "file:///a",
            ))),
            ContentBlock::image("aGk=", "image/png"),
        ]);
        assert_eq!(
            result_value(resource),
            Ok(json!("file body\n[image (image/png)]"))
        );
    }
}
