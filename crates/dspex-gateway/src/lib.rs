//! `dspex-gateway`: OpenAI-compatible HTTP endpoints in front of a DSPex
//! [`Client`], so a program in any language (the `openai` SDK, DSPy,
//! LangChain, curl) gets the client's protection (breaker, limits, pool,
//! retries, timeouts), its response cache and its analytics by changing
//! only its base URL.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions, plain or SSE (`stream_options.include_usage`) |
//! | `GET /v1/models` | the aliases and `provider/model` names this gateway routes |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | the config is loaded and a provider is registered; circuit states |
//! | `GET /metrics` | Prometheus text: the client's metrics and `dspex_gateway_*` |
//!
//! A request's `model` is an alias from `[gateway.models]` (with
//! fallbacks), `provider/model`, a provider's configured model, or any
//! model when only one provider is configured. Every response carries
//! `x-dspex-correlation-id`, `x-dspex-cache` (`miss`, `l1`, `l2`, `l3`,
//! `inflight`), `x-dspex-provider` and `x-dspex-model`.
//!
//! ```no_run
//! # async fn demo(client: dspex_client::Client) -> Result<(), dspex_gateway::GatewayError> {
//! use dspex_gateway::{Gateway, GatewayConfig};
//!
//! let gateway = Gateway::new(client, GatewayConfig::default())?;
//! let listener = gateway.bind().await?;
//! // Serves until Ctrl-C, then lets in-flight requests finish.
//! gateway.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

// A `RequestError` (136 bytes) is made once per failed request and turned
// into a response right away; boxing it buys nothing on that cold path.
#![allow(clippy::result_large_err)]

pub mod config;
mod error;
mod openai;
mod server;

pub use config::{Alias, CONFIG_KEYS, GatewayConfig, RawGatewayConfig, Target};
pub use error::{GatewayError, RequestError};
pub use server::Gateway;
