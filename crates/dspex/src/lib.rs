//! DSPex: a Rust foundation for *programming* language models, in the spirit of
//! Stanford's DSPy.
//!
//! This crate re-exports the public API of the workspace:
//!
//! - the protected provider client ([`Client`], [`Message`], [`RequestOptions`],
//!   [`ChatResponse`], [`ChatStream`], [`ClientError`]...), from `dspex-client`;
//! - prompts and modules ([`Signature`], [`Predict`], [`ChainOfThought`],
//!   adapters, templates), from `dspex-prompt`, also as [`prompt`];
//! - the composition root [`Runtime`]: the client, response cache, analytics
//!   recorder and budgets built from one `dspex.toml`, flushed on shutdown;
//! - cost analytics and budgets as [`analytics`], from `dspex-analytics`;
//! - the generic layer as [`core`]: config, registry, events, telemetry, error
//!   context and protection, from `dspex-core`;
//! - with the default `mock` feature, the deterministic mock upstream as
//!   [`mock`], for tests that must not reach a real provider;
//! - with the `mcp` feature, the tools of MCP servers as `mcp` (and
//!   [`Runtime::tools`] connects the config's `[mcp.servers]`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dspex::{Client, ClientConfig, Message, ProviderConfig, RequestOptions};
//!
//! let upstream = dspex::mock::MockServer::start(Default::default()).await?;
//! let client = Client::from_config(&ClientConfig::default()).await?;
//! client
//!     .add_provider(ProviderConfig::openai_compatible("local", &upstream.base_url(), "mock-model")?)
//!     .await?;
//! let reply = client
//!     .request("local", vec![Message::user("ping")], RequestOptions::new())
//!     .await?;
//! assert_eq!(reply.text(), "echo: ping");
//! # Ok(()) }
//! ```

mod runtime;

pub use dspex_analytics as analytics;
pub use dspex_cache as cache;
pub use dspex_client::*;
pub use dspex_core as core;
#[cfg(feature = "gateway")]
pub use dspex_gateway as gateway;
#[cfg(feature = "mcp")]
pub use dspex_mcp as mcp;
#[cfg(feature = "mock")]
pub use dspex_mock as mock;
pub use dspex_prompt as prompt;
pub use dspex_prompt::{
    Adapter, AgentMode, BestOfN, ChainOfThought, Example, Lm, Module, ModuleEvent,
    MultiChainComparison, Parallel, Predict, Prediction, PromptError, ReAct, Refine, Signature,
    Tool, batch,
};
pub use dspex_workflow as workflow;
pub use runtime::{Runtime, RuntimeError, RuntimeOptions, ShutdownReport, config_keys};

/// The README's Rust examples, compiled as doc tests so they stay true to
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;
