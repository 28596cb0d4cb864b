//! `dspex-mock`: a deterministic mock LM upstream over real HTTP.
//!
//! It speaks enough of OpenAI's and Anthropic's wire formats for DSPex's client to be
//! tested over loopback, for demos, and for load runs that measure the client's own
//! overhead (the per-request work is small: lock-free counters, no per-request
//! logging, pre-serialised constant bodies).
//!
//! Routes (HTTP/1.1 with keep-alive):
//!
//! | route | what |
//! | --- | --- |
//! | `POST /v1/chat/completions` | OpenAI Chat Completions, plain or SSE (`stream: true`), `n`, `max_tokens`, `stop`, tools, JSON modes |
//! | `POST /v1/messages` | Anthropic Messages, plain or SSE; requires `anthropic-version` and `max_tokens` |
//! | `POST /v1/embeddings` | OpenAI embeddings: hashed word and trigram features, L2-normalised |
//! | `GET /v1/models` | the configured model ids |
//! | `GET /stats`, `POST /stats/reset` | [`Stats`] as JSON, and resetting them |
//! | `GET /health` | `ok` |
//!
//! What a reply says, in order of precedence: a queued [`Fault::Reply`]; a
//! [`Script`] rule whose `contains` occurs in the prompt (or its last turn); the
//! script's next cycled reply; a tool call of the first tool with arguments `{}`
//! (if tools were given, the last user message mentions "weather" and the
//! conversation does not end with a tool result); a JSON object for
//! `response_format` `json_object` / `json_schema`; DSPy `ChatAdapter` output
//! fields (`[[ ## answer ## ]]` ...) when the last user message asks for them; and
//! otherwise `echo: <last user message>`. Usage is counted with [`approx_tokens`].
//!
//! Script rules and replies can answer with native tool calls (several at once
//! make parallel calls), shaped as each API sends them, plain and streamed, and
//! requests may carry tool turns (OpenAI assistant `tool_calls` and `tool`
//! messages; Anthropic `tool_use` and `tool_result` blocks), checked for pairing
//! as the real APIs do. A rule sees earlier tool calls and results in the prompt
//! text, which is what lets a script drive an agent through several tool steps:
//! see [`Script`].
//!
//! Per request, the mock decides: (1) the API key, if one is required; (2) a queued
//! [`Fault`]; (3) the server-side RPM/TPM limits; (4) a fraction-based fault drawn
//! deterministically from the seed and the request's sequence number; (5) latency and
//! jitter; (6) the reply.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use dspex_mock::{Fault, MockConfig, MockServer};
//!
//! let server = MockServer::start(MockConfig::default()).await?;
//! assert!(server.base_url().starts_with("http://127.0.0.1:"));
//! server.enqueue([Fault::rate_limited(2)]); // the next model request gets a 429
//! assert_eq!(server.stats().requests, 0);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod anthropic;
mod config;
mod content;
mod dspy;
mod embeddings;
mod faults;
mod limits;
mod openai;
mod script;
mod server;
mod stats;
mod tokens;
mod wire;

pub use config::{DEFAULT_MODELS, MockConfig};
pub use faults::Fault;
pub use script::{Script, ScriptError, ScriptReply, ScriptRule, ScriptToolCall};
pub use server::MockServer;
pub use stats::{RecordedRequest, Stats};
pub use tokens::approx_tokens;
