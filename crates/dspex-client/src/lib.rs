//! The protected LM provider client of DSPex.
//!
//! One [`Client`] holds named providers (OpenAI, Anthropic, or any
//! OpenAI-compatible server such as vLLM, Ollama, llama.cpp or LiteLLM). Every
//! call goes through the provider's protection stack, outside in: retries with
//! full-jitter backoff, then for every attempt a circuit breaker, multi-bucket
//! rate-limit admission (in process, or shared through Redis), a connection
//! pool slot, and timeouts. Every
//! call, whatever its outcome, publishes exactly one completion event with its
//! usage, records a tracing span with the OpenTelemetry GenAI attributes, and
//! updates metrics.
//!
//! Applications build it with `dspex::Runtime`, which reads the whole
//! `dspex.toml` (cache, analytics and budgets too). On its own, this crate
//! reads only its keys ([`config::CONFIG_KEYS`]):
//!
//! ```no_run
//! use dspex_client::{Client, ClientConfig, Message, RequestOptions};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Providers from dspex.toml, or from OPENAI_API_KEY / ANTHROPIC_API_KEY.
//! let loader = dspex_core::config::ConfigLoader::builder(dspex_client::config::CONFIG_KEYS)
//!     .discover(None)
//!     .build()?;
//! let client = Client::from_config(&ClientConfig::load(&loader)?).await?;
//! let response = client
//!     .request("openai", vec![Message::user("Say hi")], RequestOptions::new().max_tokens(20))
//!     .await?;
//! println!("{} ({} tokens)", response.text(), response.usage.total_tokens());
//! # Ok(()) }
//! ```

mod cache;
mod call;
mod client;
pub mod config;
mod error;
pub mod events;
mod guard;
mod journal;
mod provider;
mod scripted;
mod stream;
mod telemetry;
pub mod tokens;
mod types;

pub use cache::{ApiEmbedder, CacheMode, CachePolicy, ResponseCache};
pub use client::{Client, Provider};
pub use config::{ClientConfig, LocalSettings, ProviderConfig, ProviderKind};
pub use error::{ApiErrorKind, ClientError, ClientErrorKind, TimeoutPhase};
pub use events::{Event, EventBus, EventKind};
pub use guard::CallGuard;
pub use journal::{CompletionJournal, JournalTicket};
pub use provider::{Capabilities, LOCAL_SYSTEM, PrefixCacheStats, WireFormat};
pub use scripted::{ScriptedLm, ScriptedToolCall, ScriptedTurn};
pub use stream::ChatStream;
pub use types::{
    ChatDelta, ChatParams, ChatRequest, ChatResponse, Choice, EmbeddingRequest, EmbeddingResponse,
    FinishReason, Message, RequestOptions, ResponseFormat, Role, StreamEvent, Usage, duration_ms,
};
