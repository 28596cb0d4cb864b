//! Providers: the [`ProviderApi`] trait every provider implements, the HTTP
//! transport with the [`Dialect`] trait of the wire formats it speaks, and the
//! OpenAI and Anthropic implementations.
//!
//! Everything that differs between providers lives behind these two traits,
//! in each provider's own module; the client, the stream assembler and the
//! modules above ask [`ProviderApi::capabilities`] instead of matching on a
//! provider kind.
//!
//! - [`ProviderApi`]: what every provider has — its OpenTelemetry system name,
//!   defaults, [`Capabilities`], the checks a request must pass before it may
//!   take rate-limit room, how streamed tool-call fragments merge, and the
//!   [`Transport`] that carries one attempt. OpenAI, Anthropic, the scripted
//!   LM and the local GGUF model implement it.
//! - [`Dialect`]: what an HTTP provider adds — headers, endpoints, request
//!   encoding, response, error and stream decoding. OpenAI and Anthropic
//!   implement it, and [`HttpTransport`] speaks any of them.

pub(crate) mod anthropic;
mod json_text;
#[cfg(feature = "local-lm")]
pub(crate) mod local;
pub(crate) mod openai;
mod tool_calls;
mod transport;

pub(crate) use tool_calls::ToolCalls;
pub(crate) use transport::{HttpTransport, endpoint, request_headers};

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::future::BoxFuture;
use http::HeaderMap;
use serde::Serialize;

use crate::call::{Call, Payload, Reply};
use crate::client::ProviderShared;
use crate::config::{ProviderConfig, ProviderKind};
use crate::error::ClientError;
use crate::types::{ChatDelta, ChatRequest, Choice, Usage};

/// What a provider can do. Modules and the gateway ask this instead of
/// checking which provider they talk to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Native tool calling (`tools`, `tool_choice`, tool-call replies).
    pub tool_calling: bool,
    /// Structured output constrained by a JSON Schema (`response_format`).
    pub json_schema: bool,
    /// Streamed replies.
    pub streaming: bool,
    /// Exact usage at the end of a stream.
    pub streaming_usage: bool,
    /// An embeddings endpoint.
    pub embeddings: bool,
    /// Several completions per call (`n` > 1).
    pub multiple_choices: bool,
    /// Reproducible sampling from a `seed`.
    pub seed: bool,
    /// The public wire format the provider's API speaks, in which
    /// [`ChatParams::extra`](crate::ChatParams::extra) fields are passed
    /// through; `None` for in-process providers, which refuse extra fields.
    pub wire_format: Option<WireFormat>,
}

/// A provider API's request and response format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WireFormat {
    /// OpenAI Chat Completions (and the compatible servers).
    OpenAiChat,
    /// Anthropic Messages.
    AnthropicMessages,
}

/// One provider: what the client needs to know about it beyond its config.
///
/// Implementations are stateless (`&'static`): per-provider state (an HTTP
/// pool, a loaded model) lives in the [`Transport`] that
/// [`ProviderApi::transport`] builds.
pub(crate) trait ProviderApi: Send + Sync + 'static {
    /// The OpenTelemetry `gen_ai.system` value.
    fn system(&self) -> &'static str;

    /// The base URL when the config sets none.
    fn default_base_url(&self) -> &'static str;

    /// The chat model when the config sets none.
    fn default_model(&self) -> &'static str;

    /// What the provider can do with `config`.
    fn capabilities(&self, config: &ProviderConfig) -> Capabilities;

    /// Refuses what the provider cannot express, before the call takes any
    /// rate-limit room or pool slot.
    fn validate(&self, _request: &ChatRequest) -> Result<(), String> {
        Ok(())
    }

    /// Folds one streamed delta's tool-call fragments into `calls`.
    fn merge_tool_calls(&self, calls: &mut ToolCalls, fragments: &serde_json::Value) {
        calls.merge_openai(fragments);
    }

    /// The wire format, for providers reached over HTTP.
    fn dialect(&self) -> Option<&'static dyn Dialect> {
        None
    }

    /// The transport of one provider instance: HTTP in the provider's dialect
    /// unless the provider runs in process. A future, because building one
    /// may be slow (loading a model file) and must not block the runtime.
    fn transport(
        &self,
        shared: &Arc<ProviderShared>,
    ) -> BoxFuture<'static, Result<Arc<dyn Transport>, ClientError>> {
        let built: Result<Arc<dyn Transport>, ClientError> = match self.dialect() {
            Some(dialect) => HttpTransport::new(Arc::clone(shared), dialect)
                .map(|transport| Arc::new(transport) as Arc<dyn Transport>),
            None => Err(ClientError::config(dspex_core::CoreError::config(
                format!("providers.{}.kind", shared.config.id),
                format!("`{}` providers cannot be built from config", self.system()),
            ))),
        };
        Box::pin(std::future::ready(built))
    }
}

/// The implementation of `kind`: the one place that maps kinds to providers.
pub(crate) fn api_for(kind: ProviderKind) -> &'static dyn ProviderApi {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAi,
        ProviderKind::Anthropic => &anthropic::Anthropic,
        ProviderKind::Scripted => &crate::scripted::Scripted,
        ProviderKind::Local => local_api(),
    }
}

#[cfg(feature = "local-lm")]
fn local_api() -> &'static dyn ProviderApi {
    &local::Local
}

#[cfg(not(feature = "local-lm"))]
fn local_api() -> &'static dyn ProviderApi {
    &NotBuilt
}

/// `kind = "local"` in a build without the `local-lm` feature: the config
/// is valid, building the provider says what is missing.
#[cfg(not(feature = "local-lm"))]
struct NotBuilt;

#[cfg(not(feature = "local-lm"))]
impl ProviderApi for NotBuilt {
    fn system(&self) -> &'static str {
        LOCAL_SYSTEM
    }

    fn default_base_url(&self) -> &'static str {
        "local://in-process"
    }

    fn default_model(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self, _config: &ProviderConfig) -> Capabilities {
        Capabilities::default()
    }

    fn transport(
        &self,
        shared: &Arc<ProviderShared>,
    ) -> BoxFuture<'static, Result<Arc<dyn Transport>, ClientError>> {
        let error = ClientError::config(dspex_core::CoreError::config(
            format!("providers.{}.kind", shared.config.id),
            "`local` needs dspex built with the `local-lm` feature (cargo build --features local-lm)",
        ));
        Box::pin(std::future::ready(Err(error)))
    }
}

/// An HTTP wire format: how a call becomes bytes and the bytes a reply.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// Adds the authentication and version headers of `config`.
    fn headers(&self, config: &ProviderConfig, headers: &mut HeaderMap) -> Result<(), ClientError>;

    /// The chat endpoint, appended to the base URL.
    fn chat_path(&self) -> &'static str;

    /// The embeddings endpoint, appended to the base URL.
    fn embeddings_path(&self) -> &'static str;

    /// The request body of `payload`.
    fn encode(
        &self,
        payload: &Payload,
        model: &str,
        stream: bool,
        config: &ProviderConfig,
    ) -> Result<Vec<u8>, WireError>;

    /// A complete chat response.
    fn parse_chat(&self, body: &[u8]) -> Result<ParsedChat, WireError>;

    /// A complete embeddings response of `inputs` vectors.
    fn parse_embeddings(
        &self,
        _body: &[u8],
        _inputs: usize,
    ) -> Result<ParsedEmbeddings, WireError> {
        Err(WireError::Invalid(
            "this provider has no embeddings endpoint".into(),
        ))
    }

    /// The message and code of an error body, when it has the provider's shape.
    fn parse_error(&self, body: &[u8]) -> Option<(String, Option<String>)>;

    /// A decoder for one stream's events.
    fn stream_decoder(&self) -> Box<dyn StreamDecoder>;
}

/// Turns one provider's server-sent events into [`Chunk`]s.
pub(crate) trait StreamDecoder: Send {
    /// Decodes one event (`event` is its name, often empty) into `out`.
    fn decode(&mut self, event: &str, data: &str, out: &mut Vec<Chunk>) -> Result<(), WireError>;
}

/// Why a body could not be encoded or decoded.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The request cannot be expressed for this provider.
    Invalid(String),
    /// The response is not what the API promises.
    Malformed(String),
    /// The stream carried an error event.
    Upstream {
        status: u16,
        message: String,
        code: Option<String>,
    },
}

impl WireError {
    /// What is wrong, as text.
    pub(crate) fn into_message(self) -> String {
        match self {
            Self::Invalid(message) | Self::Malformed(message) => message,
            Self::Upstream {
                status, message, ..
            } => format!("HTTP {status}: {message}"),
        }
    }

    pub(crate) fn malformed(error: &serde_json::Error, body: &[u8]) -> Self {
        Self::Malformed(format!("{error}; body starts: {}", excerpt(body)))
    }
}

/// The first 120 characters of a body, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// A complete chat response, before the client adds latency and attempts.
pub(crate) struct ParsedChat {
    pub(crate) id: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) choices: Vec<Choice>,
    pub(crate) usage: Option<Usage>,
}

/// A complete embeddings response.
pub(crate) struct ParsedEmbeddings {
    pub(crate) model: Option<String>,
    pub(crate) vectors: Vec<Vec<f32>>,
    pub(crate) usage: Usage,
}

/// Usage numbers as they arrive in a stream: each field, when present, is the
/// running total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UsageUpdate {
    pub(crate) input_tokens: Option<u64>,
    pub(crate) output_tokens: Option<u64>,
    pub(crate) cached_input_tokens: Option<u64>,
    pub(crate) cache_write_tokens: Option<u64>,
}

impl UsageUpdate {
    pub(crate) fn apply(&self, usage: &mut Usage) {
        if let Some(v) = self.input_tokens {
            usage.input_tokens = v;
        }
        if let Some(v) = self.output_tokens {
            usage.output_tokens = v;
        }
        if let Some(v) = self.cached_input_tokens {
            usage.cached_input_tokens = v;
        }
        if let Some(v) = self.cache_write_tokens {
            usage.cache_write_tokens = v;
        }
    }
}

/// One decoded piece of a stream, the same for every provider.
#[derive(Debug)]
pub(crate) enum Chunk {
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    Delta(ChatDelta),
    Usage(UsageUpdate),
    End,
}

/// A started stream's chunks, each item what one upstream event decoded to.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Result<Vec<Chunk>, ClientError>> + Send>>;

/// Sends one attempt of a call: over HTTP, or answered in process.
pub(crate) trait Transport: Send + Sync + 'static {
    fn send(&self, call: Call) -> Sent;

    /// The prompt-prefix cache's counters, for a local model.
    fn prefix_cache(&self) -> Option<PrefixCacheStats> {
        None
    }
}

/// The `gen_ai.system` of in-process models (`kind = "local"`, built or
/// not): analytics prices their calls at zero by it.
pub const LOCAL_SYSTEM: &str = "local";

/// How a local model's prompt-prefix cache has done: calls whose prompt
/// began with tokens an earlier call had processed reuse their KV cache and
/// process only the rest. A mirror of `dspex_local::PrefixCacheStats`, so
/// the type exists (and serialises) in builds without `local-lm`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PrefixCacheStats {
    /// Generations that reused a cached prefix.
    pub hits: u64,
    /// Generations that found none.
    pub misses: u64,
    /// Prompt tokens not processed again thanks to the cache.
    pub reused_tokens: u64,
    /// Prefixes held.
    pub entries: usize,
    /// Memory they hold, in bytes.
    pub bytes: usize,
    /// The memory bound, in bytes.
    pub capacity_bytes: usize,
}

impl PrefixCacheStats {
    /// Hits over all generations (0 before the first).
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// An attempt's future: already answered (an in-process transport, which then
/// costs no boxed future) or on its way.
#[allow(
    clippy::large_enum_variant,
    reason = "the inline reply is the point: an in-process answer costs no allocation"
)]
pub(crate) enum Sent {
    Ready(Option<Result<Reply, ClientError>>),
    Later(BoxFuture<'static, Result<Reply, ClientError>>),
}

impl Future for Sent {
    type Output = Result<Reply, ClientError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut *self {
            // Polled again after it finished: never resolves a second time.
            Self::Ready(result) => result
                .take()
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready),
            Self::Later(future) => future.as_mut().poll(cx),
        }
    }
}

impl ProviderShared {
    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) => key.secret.scrub(text),
            None => text.to_owned(),
        }
    }
}

/// [`ChatParams::extra`](crate::ChatParams::extra) as body fields, leaving
/// out the keys the encoder writes itself (a duplicate key is invalid JSON
/// to some servers, and the typed field must win).
pub(crate) struct PassThrough<'a> {
    pub(crate) fields: &'a std::collections::BTreeMap<String, serde_json::Value>,
    pub(crate) written: &'static [&'static str],
}

impl Serialize for PassThrough<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.fields {
            if !self.written.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}
