//! The test server of `dspex-mcp` as a program (see
//! [`dspex_mcp::test_server`]).
//!
//! ```text
//! dspex-mcp-test-server                        # MCP on stdin/stdout
//! dspex-mcp-test-server --http 127.0.0.1:0     # streamable HTTP; prints its URL
//! ```

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => Ok(dspex_mcp::test_server::serve_stdio().await?),
        (Some("--http"), Some(address), None) => {
            Ok(dspex_mcp::test_server::serve_http(&address).await?)
        }
        _ => Err("usage: dspex-mcp-test-server [--http ADDRESS]".into()),
    }
}
