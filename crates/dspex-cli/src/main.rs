//! The `dspex` command.
//!
//! ```text
//! dspex demo                                   # the main job on embedded defaults
//! dspex chat --provider openai "Say hi"        # one protected call
//! dspex predict --cot "question -> answer" -i question="Why is the sky blue?"
//! dspex run examples/multi_hop_qa.toml -i question="Who painted the chapel ceiling?"
//! dspex load --provider mock --requests 10000 --concurrency 64
//! dspex config check --config dspex.toml
//! dspex mock-server --port 8089 --fail-429 0.1
//! dspex mcp-test-server                        # MCP tools on stdio, for trying agents
//! dspex serve --listen 127.0.0.1:4000             # the gateway, for any OpenAI client
//! dspex keys create --name team-a --rpm 600       # a virtual key for the gateway
//! ```
//!
//! Exit codes: 0 success, 2 usage or config error, 3 provider error.

mod cache_cmd;
mod chat;
mod common;
mod config_cmd;
mod costs;
mod demo;
mod demo_local;
mod eval_cmd;
mod keys_cmd;
mod load;
mod optimize_cmd;
mod predict;
mod run_cmd;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::common::Failure;

// glibc's malloc took a sixth of the gateway's CPU at its ceiling, most of
// it in frees of buffers allocated on another worker thread; mimalloc's
// per-thread free lists make those cheap (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "dspex",
    version,
    about = "DSPex: programming language models, in Rust"
)]
struct Cli {
    /// Config file (default: $DSPEX_CONFIG, else ./dspex.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log filter, such as `info` or `dspex=debug` (default: $DSPEX_LOG, else `warn`).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    /// Print Prometheus metrics to stderr when the command ends.
    #[arg(long, global = true)]
    metrics: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One protected call to a provider.
    Chat(chat::ChatArgs),
    /// Run Predict (or ChainOfThought with --cot) once on a signature.
    Predict(predict::PredictCommand),
    /// Run a workflow file (TOML) and print its outputs (with --json, its run report).
    Run(run_cmd::RunArgs),
    /// Cache statistics, clearing, purging and threshold calibration.
    Cache(cache_cmd::CacheArgs),
    /// Cost, tokens, errors and latency of recorded LM calls, grouped.
    Costs(costs::CostsArgs),
    /// Score a program over a JSONL dataset with a metric.
    Eval(eval_cmd::EvalArgs),
    /// Compile a program's prompts (bootstrap, random-search, knn, copro, mipro, gepa) and save it.
    Optimize(Box<optimize_cmd::OptimizeArgs>),
    /// Drive many calls through the full stack and report latency and throughput.
    Load(load::LoadArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run the mock upstream (OpenAI- and Anthropic-compatible, with fault injection).
    MockServer(MockServerArgs),
    /// Serve a small MCP server (add, echo, text_stats, ...) on stdio, or on
    /// streamable HTTP with --http ADDR, for trying agents.
    McpTestServer(McpTestServerArgs),
    /// Start the mock upstream in process and make calls through the full client stack.
    Demo(demo::DemoArgs),
    /// Serve the gateway: OpenAI and Anthropic endpoints, keys, budgets, a dashboard.
    Serve(serve::ServeArgs),
    /// Create, list, rotate and revoke the gateway's virtual keys.
    Keys(keys_cmd::KeysArgs),
}

#[derive(clap::Args, Debug)]
struct MockServerArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[command(flatten)]
    mock: dspex::mock::MockConfig,
}

#[derive(clap::Args, Debug)]
struct McpTestServerArgs {
    /// Serve streamable HTTP at this address (`/mcp`) instead of stdio;
    /// prints the endpoint's URL once listening.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("DSPEX_LOG").ok())
        .unwrap_or_else(|| "warn".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // At `info` each call is one line (target `dspex::call`); from `debug`
    // on, every span's timing too (busy and idle time when it closes).
    let span_events = if filter
        .max_level_hint()
        .is_some_and(|level| level >= tracing::level_filters::LevelFilter::DEBUG)
    {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(span_events)
        // Colour codes only for a terminal, not for a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn run(
    cli: Cli,
    metrics: Option<dspex::core::telemetry::PrometheusMetrics>,
) -> Result<(), Failure> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Chat(args) => chat::run(config, args).await,
        Command::Load(args) => load::run(config, args).await,
        Command::Predict(args) => predict::run(config, args).await,
        Command::Run(args) => run_cmd::run(config, args).await,
        Command::Cache(args) => cache_cmd::run(args, config).await.map_err(Failure::usage),
        Command::Costs(args) => costs::run(args, config).await.map_err(Failure::Usage),
        Command::Eval(args) => eval_cmd::run(config, args).await,
        Command::Optimize(args) => optimize_cmd::run(config, *args).await,
        Command::Config(command) => config_cmd::run(config, command),
        Command::MockServer(args) => {
            let addr = std::net::SocketAddr::new(args.host, args.port);
            let server = dspex::mock::MockServer::bind(addr, args.mock)
                .await
                .map_err(|e| {
                    Failure::usage(anyhow::anyhow!(
                        "cannot start the mock upstream on {addr}: {e}"
                    ))
                })?;
            common::out(&format!(
                "mock upstream listening on {} (Anthropic: {}); Ctrl-C stops it",
                server.base_url(),
                server.anthropic_base_url()
            ));
            server.run_until_ctrl_c().await;
            Ok(())
        }
        Command::McpTestServer(args) => match args.http {
            Some(address) => dspex::mcp::test_server::serve_http(&address).await,
            None => dspex::mcp::test_server::serve_stdio().await,
        }
        .map_err(Failure::usage),
        Command::Demo(args) => demo::run(args).await,
        Command::Serve(args) => serve::run(config, args, metrics).await,
        Command::Keys(args) => keys_cmd::run(args, config).await.map_err(Failure::Usage),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    // The gateway serves metrics at /metrics, so it always records them.
    let wants_metrics = cli.metrics || matches!(cli.command, Command::Serve(_));
    let metrics = if wants_metrics {
        match dspex::core::telemetry::install_prometheus() {
            Ok(metrics) => Some(metrics),
            Err(error) => {
                common::err(&format!("error: {error}"));
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            common::err(&format!("error: cannot start the async runtime: {error}"));
            return ExitCode::from(2);
        }
    };
    let print_metrics = cli.metrics;
    let result = runtime.block_on(run(cli, metrics.clone()));
    if let (true, Some(metrics)) = (print_metrics, metrics) {
        common::err(&metrics.render());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
