//! `dspex-gateway`: OpenAI- and Anthropic-compatible HTTP endpoints in front
//! of a DSPex [`Client`](dspex_client::Client), so a program in any language
//! (the `openai` and `anthropic` SDKs, DSPy, LangChain, curl) gets the
//! client's protection (breaker, limits, pool, retries, timeouts), its
//! response cache and its analytics by changing only its base URL and key;
//! plus virtual keys with their own model lists, rate limits and budgets,
//! an admin API and a dashboard.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions, plain or SSE (`stream_options.include_usage`) |
//! | `POST /v1/messages` | Anthropic Messages, plain or its streaming events |
//! | `POST /v1/embeddings` | OpenAI embeddings |
//! | `GET /v1/models` | the aliases and `provider/model` names the caller's key may use |
//! | `GET /healthz`, `GET /readyz` | the process is up; the config is loaded and the stores answer |
//! | `GET /metrics` | Prometheus text: the client's metrics and `dspex_gateway_*` |
//! | `/admin/keys` | create, list, rotate, revoke keys (the admin key) |
//! | `GET /dashboard` | spend, tokens, cache, latency, errors, provider state (the admin key) |
//!
//! A request's `model` is an alias from `[gateway.models]` (with
//! fallbacks), `provider/model`, a provider's configured model, or any
//! model when only one provider is configured. Every response carries
//! `x-dspex-correlation-id`, `x-dspex-cache` (`miss`, `l1`, `l2`, `l3`,
//! `inflight`), `x-dspex-provider` and `x-dspex-model`.
//!
//! ```no_run
//! # async fn demo(client: dspex_client::Client, store: dspex_analytics::Store) -> Result<(), dspex_gateway::GatewayError> {
//! use dspex_gateway::{Gateway, GatewayConfig};
//!
//! let gateway = Gateway::builder(client, GatewayConfig::default())
//!     .store(store) // the virtual keys live in the analytics store
//!     .build()
//!     .await?;
//! let listener = gateway.bind().await?;
//! // Serves until Ctrl-C, then lets in-flight requests finish.
//! gateway.serve(listener, async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```

// A `RequestError` (136 bytes) is made once per failed request and turned
// into a response right away; boxing it buys nothing on that cold path.
#![allow(clippy::result_large_err)]

mod admin;
mod anthropic;
mod chat;
pub mod config;
mod dashboard;
mod embeddings;
mod error;
mod keys;
mod openai;
mod server;
mod spend;

pub use config::{
    Alias, Auth, CONFIG_KEYS, CacheNamespace, GatewayConfig, RawGatewayConfig, Target,
};
pub use error::{GatewayError, RequestError};
pub use server::{Gateway, GatewayBuilder};
