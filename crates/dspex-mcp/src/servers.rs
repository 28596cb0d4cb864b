//! Every MCP server a config names: `[mcp.servers.NAME]` tables read,
//! checked, connected, and their tools gathered into one list.

use std::collections::BTreeMap;

use dspex_core::config::ConfigLoader;
use dspex_prompt::Tool;
use serde::Deserialize;

use crate::{McpClient, McpError, McpServerConfig, RawMcpServer};

/// The top-level config keys this crate reads.
pub const CONFIG_KEYS: &[&str] = &["mcp"];

/// The `[mcp]` section as written.
#[derive(Debug, Default, Deserialize)]
struct RawMcp {
    #[serde(default)]
    servers: BTreeMap<String, RawMcpServer>,
}

/// The MCP servers of a config, checked (phase two of the config).
#[derive(Debug, Default)]
pub struct McpServers {
    servers: Vec<(String, McpServerConfig)>,
}

impl McpServers {
    /// Reads and checks every `[mcp.servers.NAME]` table; none is fine.
    /// Errors name the key.
    pub fn load(loader: &ConfigLoader) -> Result<Self, McpError> {
        let raw: RawMcp = loader
            .section("mcp")
            .map_err(McpError::Config)?
            .unwrap_or_default();
        let servers = raw
            .servers
            .into_iter()
            .map(|(name, raw)| McpServerConfig::from_raw(&name, raw).map(|config| (name, config)))
            .collect::<Result<_, _>>()?;
        Ok(Self { servers })
    }

    /// Whether the config names no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The servers' names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.servers.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Connects to every server (concurrently) and gathers their tools. A
    /// server that cannot be reached fails the whole connect, naming it;
    /// the ones already connected are shut down. Two servers offering a
    /// tool of the same name are an error (give one a `prefix`).
    pub async fn connect(&self) -> Result<McpToolset, McpError> {
        let connected = futures::future::join_all(
            self.servers
                .iter()
                .map(|(name, config)| McpClient::connect(name, config)),
        )
        .await;
        let mut clients = Vec::with_capacity(connected.len());
        let mut failure = None;
        for result in connected {
            match result {
                Ok(client) => clients.push(client),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        let toolset = McpToolset { clients };
        if let Some(error) = failure {
            toolset.shutdown().await;
            return Err(error);
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for client in &toolset.clients {
            for tool in client.tools() {
                if let Some(other) = seen.insert(tool.name().to_owned(), client.name()) {
                    let message = format!(
                        "MCP servers `{other}` and `{}` both offer a tool named `{}`; give one a `prefix`",
                        client.name(),
                        tool.name()
                    );
                    toolset.shutdown().await;
                    return Err(McpError::Config(dspex_core::CoreError::config(
                        "mcp.servers",
                        message,
                    )));
                }
            }
        }
        Ok(toolset)
    }
}

/// Connected MCP servers and their tools.
#[derive(Debug)]
pub struct McpToolset {
    clients: Vec<McpClient>,
}

impl McpToolset {
    /// Every server's tools, by server name order.
    pub fn tools(&self) -> Vec<Tool> {
        self.clients.iter().flat_map(McpClient::tools).collect()
    }

    /// The connected clients.
    pub fn clients(&self) -> &[McpClient] {
        &self.clients
    }

    /// Closes every session (stopping spawned servers). Failures to close
    /// are logged: the process is exiting or moving on either way.
    pub async fn shutdown(self) {
        for client in self.clients {
            let name = client.name().to_owned();
            if let Err(error) = client.shutdown().await {
                tracing::warn!(server = %name, %error, "MCP server did not shut down cleanly");
            }
        }
    }
}
