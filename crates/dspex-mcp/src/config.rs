//! One MCP server's config: [`RawMcpServer`] as written in a
//! `[mcp.servers.NAME]` table (phase one, serde), checked into an
//! [`McpServerConfig`] (phase two) whose errors name the key.
//!
//! ```toml
//! [mcp.servers.fs]                  # a process speaking MCP on stdin/stdout
//! command = "npx"
//! args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]
//! env = { LOG_LEVEL = "warn" }      # added to the inherited environment
//! cwd = "/srv"
//! timeout = "30s"                   # per tool call (default 30s)
//! tools = ["read_file", "list_directory"]   # allow-list (default: every tool)
//! prefix = "fs_"                    # exposed as fs_read_file, fs_list_directory
//!
//! [mcp.servers.search]              # a streamable HTTP endpoint
//! url = "https://mcp.example.com/mcp"
//! headers = { Authorization = "Bearer sk-..." }
//! startup_timeout = "10s"           # connect, handshake and tool list (default 30s)
//! ```
//!
//! Header and environment values are held as [`Secret`]s: no `Debug` output
//! or error message shows them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use dspex_core::config::{Secret, redacted_url};
use serde::Deserialize;

use crate::error::McpError;

/// How long a tool call may take unless `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = dspex_prompt::Tool::DEFAULT_TIMEOUT;

/// How long starting or connecting, the handshake and listing the tools may
/// take together unless `startup_timeout` says otherwise. Generous because
/// `npx -y` may install the server on its first start.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers the streamable HTTP transport sets itself; a config may not
/// override them.
const RESERVED_HEADERS: [&str; 5] = [
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// A `[mcp.servers.NAME]` table as written: either `command` (stdio) or
/// `url` (streamable HTTP), plus the keys every server takes. Read through
/// `ConfigLoader::section` (as [`McpServers::load`](crate::McpServers::load)
/// does), which refuses every unknown key of the file at once; so no
/// `deny_unknown_fields` here, which would stop at the first. `Debug` shows
/// the names of `env` and `headers`, never their values.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RawMcpServer {
    /// The program to start; it speaks MCP on its stdin and stdout.
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables set for it, on top of the inherited ones.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The directory it starts in (default: the current one).
    pub cwd: Option<PathBuf>,
    /// The streamable HTTP endpoint, `http://` or `https://`.
    pub url: Option<String>,
    /// Headers sent with every HTTP request (such as `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest tool call, as `30s`, `2m` or `500ms` (default 30s).
    pub timeout: Option<String>,
    /// Longest start: spawn or connect, handshake and tool list (default 30s).
    pub startup_timeout: Option<String>,
    /// Only these tools (by their names on the server) are exposed.
    pub tools: Option<Vec<String>>,
    /// Put before every exposed tool name, as is (`fs_` makes `read` into
    /// `fs_read`), to keep the tools of several servers apart.
    pub prefix: Option<String>,
}

impl fmt::Debug for RawMcpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawMcpServer")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &RedactedMap(self.env.keys()))
            .field("cwd", &self.cwd)
            .field("url", &self.url.as_deref().map(redacted_url))
            .field("headers", &RedactedMap(self.headers.keys()))
            .field("timeout", &self.timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("tools", &self.tools)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A map shown with its keys and `[redacted]` for every value.
struct RedactedMap<I>(I);

impl<'a, I: Iterator<Item = &'a String> + Clone> fmt::Debug for RedactedMap<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .clone()
                    .map(|key| (key, dspex_core::config::REDACTED)),
            )
            .finish()
    }
}

/// How to reach a server. `Debug` shows the URL without its credentials.
#[derive(Clone)]
#[non_exhaustive]
pub enum McpTransport {
    /// A child process speaking MCP on its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Variables set on top of the inherited environment.
        env: BTreeMap<String, Secret>,
        /// Its working directory.
        cwd: Option<PathBuf>,
    },
    /// A streamable HTTP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Headers sent with every request, checked to be valid.
        headers: BTreeMap<String, Secret>,
    },
}

impl fmt::Debug for McpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdio {
                command,
                args,
                env,
                cwd,
            } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("args", args)
                .field("env", env)
                .field("cwd", cwd)
                .finish(),
            Self::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &redacted_url(url))
                .field("headers", headers)
                .finish(),
        }
    }
}

/// One server's checked config. Build it with [`McpServerConfig::from_raw`].
#[derive(Clone, Debug)]
pub struct McpServerConfig {
    transport: McpTransport,
    timeout: Duration,
    startup_timeout: Duration,
    tools: Option<Vec<String>>,
    prefix: String,
}

impl McpServerConfig {
    /// Checks the `[mcp.servers.NAME]` table `raw`. Errors are
    /// [`McpError::Config`] naming the key (`mcp.servers.NAME.timeout`).
    pub fn from_raw(name: &str, raw: RawMcpServer) -> Result<Self, McpError> {
        let key = |field: &str| format!("mcp.servers.{name}.{field}");
        if name.is_empty() {
            return Err(McpError::config(
                "mcp.servers",
                "a server name must not be empty",
            ));
        }
        let transport = match (raw.command, raw.url) {
            (Some(_), Some(_)) => {
                return Err(McpError::config(
                    format!("mcp.servers.{name}"),
                    "set either `command` (a program speaking MCP on stdio) or `url` \
                     (a streamable HTTP endpoint), not both",
                ));
            }
            (None, None) => {
                return Err(McpError::config(
                    format!("mcp.servers.{name}"),
                    "set `command` (a program speaking MCP on stdio) or `url` \
                     (a streamable HTTP endpoint)",
                ));
            }
            (Some(command), None) => {
                if !raw.headers.is_empty() {
                    return Err(McpError::config(
                        key("headers"),
                        "`headers` apply to `url` servers only",
                    ));
                }
                if command.trim().is_empty() {
                    return Err(McpError::config(key("command"), "must not be empty"));
                }
                let mut env = BTreeMap::new();
                for (variable, value) in raw.env {
                    if variable.is_empty() || variable.contains(['=', '\0']) {
                        return Err(McpError::config(
                            key("env"),
                            format!("`{variable}` is not a valid environment variable name"),
                        ));
                    }
                    if value.contains('\0') {
                        return Err(McpError::config(
                            format!("{}.{variable}", key("env")),
                            "the value contains a NUL byte",
                        ));
                    }
                    env.insert(variable, Secret::new(value));
                }
                McpTransport::Stdio {
                    command,
                    args: raw.args,
                    env,
                    cwd: raw.cwd,
                }
            }
            (None, Some(url)) => {
                for (field, unused) in [
                    ("args", raw.args.is_empty()),
                    ("env", raw.env.is_empty()),
                    ("cwd", raw.cwd.is_none()),
                ] {
                    if !unused {
                        return Err(McpError::config(
                            key(field),
                            format!("`{field}` applies to `command` servers only"),
                        ));
                    }
                }
                check_url(&key("url"), &url)?;
                let mut headers = BTreeMap::new();
                for (header, value) in raw.headers {
                    let header_key = format!("{}.{header}", key("headers"));
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(McpError::config(header_key, "not a valid HTTP header name"));
                    }
                    if RESERVED_HEADERS
                        .iter()
                        .any(|reserved| header.eq_ignore_ascii_case(reserved))
                    {
                        return Err(McpError::config(
                            header_key,
                            "the MCP transport sets this header itself",
                        ));
                    }
                    // The value is a secret: say what is wrong, never what it is.
                    if http::HeaderValue::from_str(&value).is_err() {
                        return Err(McpError::config(
                            header_key,
                            "the value is not a valid HTTP header value (visible ASCII only)",
                        ));
                    }
                    headers.insert(header, Secret::new(value));
                }
                McpTransport::Http { url, headers }
            }
        };
        let timeout = duration(&key("timeout"), raw.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        let startup_timeout = duration(
            &key("startup_timeout"),
            raw.startup_timeout.as_deref(),
            DEFAULT_STARTUP_TIMEOUT,
        )?;
        if let Some(tools) = &raw.tools {
            if tools.is_empty() {
                return Err(McpError::config(
                    key("tools"),
                    "an empty allow-list exposes no tool; remove `tools` to expose every tool",
                ));
            }
            for (i, tool) in tools.iter().enumerate() {
                if tool.is_empty() {
                    return Err(McpError::config(
                        key("tools"),
                        "a tool name must not be empty",
                    ));
                }
                if tools.get(..i).is_some_and(|before| before.contains(tool)) {
                    return Err(McpError::config(
                        key("tools"),
                        format!("`{tool}` is listed twice"),
                    ));
                }
            }
        }
        if let Some(prefix) = raw.prefix.as_deref().filter(|p| prefix_is_invalid(p)) {
            return Err(McpError::config(
                key("prefix"),
                format!(
                    "`{prefix}` must be 1-63 ASCII letters, digits, `_` or `-` (it is put \
                     before each tool name as is, such as `fs_`)"
                ),
            ));
        }
        Ok(Self {
            transport,
            timeout,
            startup_timeout,
            tools: raw.tools,
            prefix: raw.prefix.unwrap_or_default(),
        })
    }

    /// How the server is reached.
    pub fn transport(&self) -> &McpTransport {
        &self.transport
    }

    /// The longest tool call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The longest start: spawn or connect, handshake and tool list.
    pub fn startup_timeout(&self) -> Duration {
        self.startup_timeout
    }

    /// The allow-list, by the tools' names on the server (`None`: every tool).
    pub fn tools(&self) -> Option<&[String]> {
        self.tools.as_deref()
    }

    /// What is put before every exposed tool name (empty when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The secrets of this config (environment and header values), for
    /// scrubbing messages that might echo them.
    pub(crate) fn secrets(&self) -> Vec<Secret> {
        match &self.transport {
            McpTransport::Stdio { env, .. } => env.values().cloned().collect(),
            McpTransport::Http { headers, .. } => headers.values().cloned().collect(),
        }
    }
}

/// A prefix must itself be made of tool-name characters, and leave room for
/// at least one character of the tool's name.
fn prefix_is_invalid(prefix: &str) -> bool {
    prefix.is_empty()
        || prefix.len() > 63
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_url(key: &str, url: &str) -> Result<(), McpError> {
    let shown = redacted_url(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| McpError::config(key, format!("`{shown}` is not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(()),
        _ => Err(McpError::config(
            key,
            format!("`{shown}` must be an http:// or https:// URL with a host"),
        )),
    }
}

fn duration(key: &str, text: Option<&str>, default: Duration) -> Result<Duration, McpError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        McpError::config(
            key,
            format!("`{text}` is not a duration like 500ms, 30s or 2m ({e})"),
        )
    })?;
    if duration.is_zero() {
        return Err(McpError::config(key, "must be longer than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawMcpServer {
        toml::from_str(toml_text).unwrap()
    }

    fn error(toml_text: &str) -> String {
        McpServerConfig::from_raw("srv", raw(toml_text))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn stdio_and_http_tables() {
        let config = McpServerConfig::from_raw(
            "fs",
            raw(r#"
                command = "npx"
                args = ["-y", "server"]
                env = { TOKEN = "s3cret-env" }
                cwd = "/tmp"
                timeout = "2s"
                tools = ["read"]
                prefix = "fs_"
            "#),
        )
        .unwrap();
        assert_eq!(config.timeout(), Duration::from_secs(2));
        assert_eq!(config.startup_timeout(), DEFAULT_STARTUP_TIMEOUT);
        assert_eq!(config.tools(), Some(&["read".to_owned()][..]));
        assert_eq!(config.prefix(), "fs_");
        let McpTransport::Stdio { command, args, .. } = config.transport() else {
            panic!("{config:?}");
        };
        assert_eq!((command.as_str(), args.len()), ("npx", 2));

        let config = McpServerConfig::from_raw(
            "web",
            raw(r#"
                url = "https://mcp.example.com/mcp"
                headers = { Authorization = "Bearer s3cret-header" }
                startup_timeout = "5s"
            "#),
        )
        .unwrap();
        assert_eq!(config.timeout(), DEFAULT_TIMEOUT);
        assert_eq!(config.startup_timeout(), Duration::from_secs(5));
        assert_eq!(config.prefix(), "");
        assert!(matches!(config.transport(), McpTransport::Http { .. }));
    }

    #[test]
    fn errors_name_the_key() {
        for (table, expected) in [
            ("", "`mcp.servers.srv`: set `command`"),
            (
                "command = \"a\"\nurl = \"http://h\"",
                "`mcp.servers.srv`: set either",
            ),
            (
                "command = \" \"",
                "`mcp.servers.srv.command`: must not be empty",
            ),
            (
                "command = \"a\"\ntimeout = \"soon\"",
                "`mcp.servers.srv.timeout`: `soon` is not a duration",
            ),
            (
                "command = \"a\"\ntimeout = \"0s\"",
                "`mcp.servers.srv.timeout`: must be longer than zero",
            ),
            (
                "command = \"a\"\nstartup_timeout = \"x\"",
                "`mcp.servers.srv.startup_timeout`",
            ),
            (
                "command = \"a\"\ntools = []",
                "`mcp.servers.srv.tools`: an empty allow-list",
            ),
            (
                "command = \"a\"\ntools = [\"x\", \"x\"]",
                "`mcp.servers.srv.tools`: `x` is listed twice",
            ),
            (
                "command = \"a\"\nprefix = \"my.\"",
                "`mcp.servers.srv.prefix`: `my.` must be",
            ),
            ("command = \"a\"\nprefix = \"\"", "`mcp.servers.srv.prefix`"),
            (
                "command = \"a\"\nheaders = { A = \"b\" }",
                "`mcp.servers.srv.headers`: `headers` apply to `url`",
            ),
            (
                "command = \"a\"\nenv = { \"A=B\" = \"c\" }",
                "`mcp.servers.srv.env`: `A=B` is not",
            ),
            (
                "url = \"http://h\"\nargs = [\"x\"]",
                "`mcp.servers.srv.args`: `args` applies to `command`",
            ),
            ("url = \"http://h\"\ncwd = \"/\"", "`mcp.servers.srv.cwd`"),
            (
                "url = \"ftp://h/x\"",
                "`mcp.servers.srv.url`: `ftp://h/x` must be an http",
            ),
            (
                "url = \"not a url\"",
                "`mcp.servers.srv.url`: `not a url` is not a URL",
            ),
            (
                "url = \"http://h\"\nheaders = { \"bad header\" = \"x\" }",
                "`mcp.servers.srv.headers.bad header`: not a valid",
            ),
            (
                "url = \"http://h\"\nheaders = { Accept = \"x\" }",
                "`mcp.servers.srv.headers.Accept`: the MCP transport sets",
            ),
        ] {
            let message = error(table);
            assert!(message.contains(expected), "{table:?}: {message}");
        }
    }

    #[test]
    fn every_unknown_key_is_named_at_once() {
        let loader = dspex_core::config::ConfigLoader::builder(crate::CONFIG_KEYS)
            .toml_str(
                "[mcp.servers.a]\ncommand = \"x\"\ntimeout_ms = 3\nretries = 2\n\
                 [mcp.servers.b]\nurl = \"http://h\"\nheader = {}\n",
            )
            .without_env()
            .build()
            .unwrap();
        let message = crate::McpServers::load(&loader).unwrap_err().to_string();
        for key in [
            "mcp.servers.a.timeout_ms",
            "mcp.servers.a.retries",
            "mcp.servers.b.header",
        ] {
            assert!(message.contains(key), "{key} in {message}");
        }
        assert!(message.contains("<config>:3:1"), "{message}");
    }

    #[test]
    fn secrets_never_print() {
        let message =
            error("url = \"http://h\"\nheaders = { Authorization = \"Bearer s3cret\\n\" }");
        assert!(message.contains("headers.Authorization"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");

        let raw_stdio = raw("command = \"srv\"\nenv = { API_TOKEN = \"s3cret-env\" }");
        let raw_http = raw(
            "url = \"https://user:pw-s3cret@h/mcp\"\nheaders = { Authorization = \"Bearer s3cret-header\" }",
        );
        let shown = format!("{raw_stdio:?} {raw_http:?}");
        let stdio = McpServerConfig::from_raw("a", raw_stdio).unwrap();
        let http = McpServerConfig::from_raw("b", raw_http).unwrap();
        let shown = format!("{shown} {stdio:?} {http:?} {stdio:#?} {http:#?}");
        assert!(
            shown.contains("API_TOKEN") && shown.contains("Authorization"),
            "{shown}"
        );
        for secret in ["s3cret-env", "s3cret-header", "pw-s3cret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("[redacted]"), "{shown}");
    }
}
