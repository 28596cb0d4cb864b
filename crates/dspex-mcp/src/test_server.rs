//! A small MCP server on the same SDK (rmcp) as the client: what the
//! crate's tests run against, and what `dspex mcp-test-server` serves for
//! trying agents without installing anything.
//!
//! Over stdio ([`serve_stdio`]) it exits when its stdin closes; over
//! streamable HTTP ([`serve_http`]) it prints its endpoint's URL
//! (`http://127.0.0.1:PORT/mcp`) once listening and serves until killed.
//!
//! Tools: `add` (two integers, their sum as text), `echo` (text back),
//! `fail` (always an `isError` result), `slow` (sleeps `ms` milliseconds,
//! unless the client cancels it), `cancellations` (how many `slow` calls were
//! cancelled), `text_stats` (structured content with an output schema),
//! `http_header` (the value of a header of the HTTP request that called it)
//! and `text.upper` (a name with a dot, which a DSPex tool name may not
//! have). The tool list is served two tools per page, so a client must
//! follow `nextCursor`.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ResultType, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Json, RoleServer, ServerHandler, ServiceExt, tool, tool_router};
use schemars::JsonSchema;

use crate::McpError;

/// The name the server gives itself.
const SERVER_NAME: &str = "dspex-mcp-test-server";
use serde::{Deserialize, Serialize};

/// `slow` calls cancelled by the client, over every session of the process.
static CANCELLED_CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many tools one `tools/list` page holds: small, so the client's
/// pagination is exercised.
const PAGE_SIZE: usize = 2;

#[derive(Deserialize, JsonSchema)]
struct AddArgs {
    /// The first term.
    a: i64,
    /// The second term.
    b: i64,
}

#[derive(Deserialize, JsonSchema)]
struct TextArgs {
    /// The text.
    text: String,
}

#[derive(Deserialize, JsonSchema)]
struct FailArgs {
    /// What the error says (default: "this tool always fails").
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct SlowArgs {
    /// How long to sleep, in milliseconds.
    ms: u64,
}

#[derive(Deserialize, JsonSchema)]
struct HeaderArgs {
    /// The header's name.
    name: String,
}

#[derive(Serialize, JsonSchema)]
struct TextStats {
    /// Whitespace-separated words.
    words: usize,
    /// Unicode scalar values.
    characters: usize,
    /// Lines.
    lines: usize,
}

#[derive(Clone)]
struct TestServer {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl TestServer {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Adds two integers.")]
    async fn add(&self, Parameters(args): Parameters<AddArgs>) -> Result<String, String> {
        args.a
            .checked_add(args.b)
            .map(|sum| sum.to_string())
            .ok_or_else(|| format!("{} + {} overflows a 64-bit integer", args.a, args.b))
    }

    #[tool(description = "Returns the text it is given.")]
    async fn echo(&self, Parameters(args): Parameters<TextArgs>) -> String {
        args.text
    }

    #[tool(description = "Always fails, with the given message.")]
    async fn fail(&self, Parameters(args): Parameters<FailArgs>) -> Result<String, String> {
        Err(args
            .message
            .unwrap_or_else(|| "this tool always fails".to_owned()))
    }

    #[tool(description = "Sleeps for `ms` milliseconds, then says so.")]
    async fn slow(
        &self,
        Parameters(args): Parameters<SlowArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.ms)) => {
                Ok(format!("slept {} ms", args.ms))
            }
            // The client's `notifications/cancelled` for this request.
            () = context.ct.cancelled() => {
                CANCELLED_CALLS.fetch_add(1, Ordering::SeqCst);
                Err("cancelled".to_owned())
            }
        }
    }

    #[tool(description = "How many `slow` calls the client cancelled (in this process).")]
    async fn cancellations(&self) -> String {
        CANCELLED_CALLS.load(Ordering::SeqCst).to_string()
    }

    #[tool(description = "Counts the words, characters and lines of a text.")]
    async fn text_stats(&self, Parameters(args): Parameters<TextArgs>) -> Json<TextStats> {
        Json(TextStats {
            words: args.text.split_whitespace().count(),
            characters: args.text.chars().count(),
            lines: args.text.lines().count(),
        })
    }

    #[tool(description = "The value of an HTTP header of this request (streamable HTTP only).")]
    async fn http_header(
        &self,
        Parameters(args): Parameters<HeaderArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<String, String> {
        let parts = context
            .extensions
            .get::<http::request::Parts>()
            .ok_or("this request did not come over HTTP")?;
        let value = parts
            .headers
            .get(args.name.as_str())
            .ok_or_else(|| format!("no `{}` header", args.name))?;
        value
            .to_str()
            .map(str::to_owned)
            .map_err(|_| "the header is not text".to_owned())
    }

    #[tool(name = "text.upper", description = "Upper-cases a text.")]
    async fn upper(&self, Parameters(args): Parameters<TextArgs>) -> String {
        args.text.to_uppercase()
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions("A test server for dspex-mcp.")
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.tool_router.list_all();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        let start = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .ok()
                .filter(|start| *start <= tools.len())
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("unknown cursor `{cursor}`"), None)
                })?,
        };
        let end = (start + PAGE_SIZE).min(tools.len());
        Ok(ListToolsResult {
            result_type: Some(ResultType::COMPLETE),
            meta: None,
            next_cursor: (end < tools.len()).then(|| end.to_string()),
            ttl_ms: None,
            cache_scope: None,
            tools: tools.drain(start..end).collect(),
        })
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tool_router.get(name).cloned()
    }
}

/// Serves the tools over stdin/stdout until stdin closes (the client ended
/// the session).
pub async fn serve_stdio() -> Result<(), McpError> {
    let running = TestServer::new()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(failed)?;
    running.waiting().await.map_err(failed)?;
    Ok(())
}

fn failed(error: impl std::fmt::Display) -> McpError {
    McpError::Transport {
        server: SERVER_NAME.to_owned(),
        message: error.to_string(),
    }
}

/// Serves the tools over streamable HTTP at `address` (`/mcp`), printing
/// the endpoint's URL as one line on stdout once it listens, until killed.
pub async fn serve_http(address: &str) -> Result<(), McpError> {
    let service: StreamableHttpService<TestServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(TestServer::new()),
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    // The one line a test waits for; stdout is not the protocol here.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "http://{bound}/mcp").map_err(failed)?;
    stdout.flush().map_err(failed)?;
    drop(stdout);
    axum::serve(listener, router).await.map_err(failed)?;
    Ok(())
}
