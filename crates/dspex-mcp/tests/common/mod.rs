//! Helpers shared by the integration tests: the test server over stdio or
//! streamable HTTP, configs for it, and process checks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dspex_mcp::{McpServerConfig, RawMcpServer};

/// The test server binary, built by cargo for these tests.
pub const SERVER: &str = env!("CARGO_BIN_EXE_dspex-mcp-test-server");

/// The two ways to reach a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stdio,
    Http,
}

/// A test server and the config that reaches it. An HTTP server runs as a
/// separate process, killed when this is dropped; a stdio one is started
/// by the client itself.
pub struct Fixture {
    pub kind: Kind,
    pub name: String,
    http: Option<Child>,
    url: Option<String>,
}

impl Fixture {
    pub fn start(kind: Kind) -> Self {
        let name = format!("test-{kind:?}").to_lowercase();
        match kind {
            Kind::Stdio => Self {
                kind,
                name,
                http: None,
                url: None,
            },
            Kind::Http => {
                let (child, url) = start_http_server();
                Self {
                    kind,
                    name,
                    http: Some(child),
                    url: Some(url),
                }
            }
        }
    }

    /// A config for this server, with more keys from `extra` (TOML lines).
    pub fn config(&self, extra: &str) -> McpServerConfig {
        McpServerConfig::from_raw(&self.name, self.raw(extra)).unwrap()
    }

    /// The raw table for this server, with more keys from `extra`.
    pub fn raw(&self, extra: &str) -> RawMcpServer {
        let target = match self.kind {
            Kind::Stdio => format!("command = {SERVER:?}"),
            Kind::Http => format!("url = {:?}", self.url.as_deref().unwrap()),
        };
        toml::from_str(&format!("{target}\n{extra}")).unwrap()
    }

    /// Kills the HTTP server process (SIGKILL) and reaps it.
    pub fn kill_http_server(&mut self) {
        if let Some(mut child) = self.http.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_http_server();
    }
}

/// Starts `dspex-mcp-test-server --http 127.0.0.1:0` and reads the URL it
/// prints once it listens.
pub fn start_http_server() -> (Child, String) {
    let mut child = Command::new(SERVER)
        .args(["--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line.trim().to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "the server printed {line:?}"
    );
    (child, url)
}

/// Whether a process with this id still exists (a zombie counts: it has
/// not been reaped).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits, up to a generous bound, for a process to be gone; returns
/// whether it went. (A bound for the test not to hang, not a measurement.)
pub async fn process_gone(pid: u32) -> bool {
    for _ in 0..400 {
        if !process_exists(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Sends SIGKILL to a process.
pub fn kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
