//! The error type of the crate.

use std::time::Duration;

/// Everything connecting to an MCP server, listing its tools and calling
/// them can fail with. Every variant but [`Config`](Self::Config) names the
/// server (the `NAME` of its `[mcp.servers.NAME]` table); none contains a
/// header or environment value from the config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server's config is invalid; the message names the key, such as
    /// `mcp.servers.fs.timeout`.
    #[error(transparent)]
    Config(dspex_core::CoreError),

    /// The server's command could not be started.
    #[error("MCP server `{server}`: cannot start `{command}`: {source}")]
    Spawn {
        /// The server's name.
        server: String,
        /// The program that failed to start.
        command: String,
        /// Why (not found, not executable, a bad `cwd`).
        #[source]
        source: std::io::Error,
    },

    /// The connection or the session broke: the HTTP endpoint is unreachable
    /// or answered with an error status, or a message could not be sent.
    #[error("MCP server `{server}`: {message}")]
    Transport {
        /// The server's name.
        server: String,
        /// What failed, with the transport's reason.
        message: String,
    },

    /// The session is over: the server process exited or closed its output,
    /// the connection was closed, or [`McpClient::shutdown`](crate::McpClient::shutdown)
    /// was called. The message ends with the last lines the process wrote on
    /// stderr, when it wrote any.
    #[error("MCP server `{server}` {message}")]
    Closed {
        /// The server's name.
        server: String,
        /// What happened ("exited during the handshake", "closed the session").
        message: String,
    },

    /// The server did not answer in time. A `tools/call` that timed out was
    /// cancelled (`notifications/cancelled`); the session stays usable.
    #[error("MCP server `{server}` did not answer {operation} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The server's name.
        server: String,
        /// What was asked (`the handshake`, `tools/call \`add\``).
        operation: String,
        /// How long it was given.
        after: Duration,
    },

    /// The server answered a request with a JSON-RPC error (an unknown tool,
    /// invalid arguments, an internal error).
    #[error("MCP server `{server}` refused {operation}: {message} (JSON-RPC error {code})")]
    Rpc {
        /// The server's name.
        server: String,
        /// What was asked.
        operation: String,
        /// The JSON-RPC error code.
        code: i32,
        /// The server's message.
        message: String,
    },

    /// The server broke the protocol: a reply of the wrong kind, a failed
    /// handshake.
    #[error("MCP server `{server}`: protocol error: {message}")]
    Protocol {
        /// The server's name.
        server: String,
        /// What was wrong.
        message: String,
    },

    /// A tool ran and reported failure (`isError: true`); the message is the
    /// server's text.
    #[error("MCP tool `{tool}` of server `{server}` failed: {message}")]
    ToolFailed {
        /// The server's name.
        server: String,
        /// The tool's name on the server.
        tool: String,
        /// The text the tool returned.
        message: String,
    },

    /// A tool the server offers cannot be used as a DSPex tool: its name
    /// (after the prefix) is not a valid tool name, two tools end up with one
    /// name, or its input schema is not an object schema.
    #[error("MCP server `{server}` offers tool `{tool}`, which cannot be used: {message}")]
    InvalidTool {
        /// The server's name.
        server: String,
        /// The tool's name on the server.
        tool: String,
        /// What is wrong, and how to avoid it.
        message: String,
    },
}

impl McpError {
    /// Whether trying again may succeed: a timeout, a transport failure, or
    /// a closed session (on a new connection: a closed [`McpClient`](crate::McpClient)
    /// stays closed). Config errors, a command that cannot start, JSON-RPC
    /// errors, protocol errors and tool failures are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Transport { .. } | Self::Closed { .. }
        )
    }

    /// The server the error is about, when it is about one (config errors
    /// name their key instead).
    pub fn server(&self) -> Option<&str> {
        match self {
            Self::Config(_) => None,
            Self::Spawn { server, .. }
            | Self::Transport { server, .. }
            | Self::Closed { server, .. }
            | Self::Timeout { server, .. }
            | Self::Rpc { server, .. }
            | Self::Protocol { server, .. }
            | Self::ToolFailed { server, .. }
            | Self::InvalidTool { server, .. } => Some(server),
        }
    }

    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config(dspex_core::CoreError::config(key, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_and_server() {
        let timeout = McpError::Timeout {
            server: "fs".into(),
            operation: "`tools/call` of `read`".into(),
            after: Duration::from_millis(1500),
        };
        assert!(timeout.is_retryable());
        assert_eq!(timeout.server(), Some("fs"));
        assert_eq!(
            timeout.to_string(),
            "MCP server `fs` did not answer `tools/call` of `read` within 1s 500ms"
        );
        let failed = McpError::ToolFailed {
            server: "fs".into(),
            tool: "read".into(),
            message: "no such file".into(),
        };
        assert!(!failed.is_retryable());
        let config = McpError::config("mcp.servers.fs.timeout", "bad");
        assert!(!config.is_retryable());
        assert_eq!(config.server(), None);
        assert_eq!(
            config.to_string(),
            "config error at `mcp.servers.fs.timeout`: bad"
        );
    }
}
