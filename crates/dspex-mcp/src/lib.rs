//! MCP (Model Context Protocol) servers as DSPex tools.
//!
//! [`McpClient::connect`] starts a server's process (a `command` speaking
//! MCP on stdin/stdout) or connects to its streamable HTTP endpoint (a
//! `url`), performs the `initialize` handshake and lists its tools;
//! [`McpClient::tools`] gives each as a [`dspex_prompt::Tool`] whose function
//! calls `tools/call` on the server, so an agent uses MCP tools like any
//! other. The protocol itself is the official Rust SDK's (`rmcp`); this crate
//! adds the config ([`RawMcpServer`] → [`McpServerConfig`], read from a
//! `[mcp.servers.NAME]` table), the allow-list and name prefix, the mapping
//! of results and failures, and one error type, [`McpError`], that names the
//! server and never shows a header or environment value.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex_mcp::{McpClient, McpServerConfig, RawMcpServer};
//! use serde_json::json;
//!
//! let raw = RawMcpServer {
//!     command: Some("npx".into()),
//!     args: vec!["-y".into(), "@modelcontextprotocol/server-everything".into()],
//!     tools: Some(vec!["echo".into()]),
//!     prefix: Some("everything_".into()),
//!     ..RawMcpServer::default()
//! };
//! let config = McpServerConfig::from_raw("everything", raw)?;
//! let client = McpClient::connect("everything", &config).await?;
//! let tools = client.tools();
//! assert_eq!(tools[0].name(), "everything_echo");
//! let reply = tools[0].call(json!({"message": "hi"})).await?;
//! println!("{reply}");
//! client.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The crate also holds [`test_server`], a small MCP server on the same SDK
//! (stdio, or streamable HTTP) that its tests run against, built as the
//! `dspex-mcp-test-server` program and served by `dspex mcp-test-server`.

pub mod client;
pub mod config;
pub mod error;
mod servers;
pub mod test_server;

pub use client::McpClient;
pub use config::{McpServerConfig, McpTransport, RawMcpServer};
pub use error::McpError;
pub use servers::{CONFIG_KEYS, McpServers, McpToolset};
