//! The events of LM traffic, published on the [`EventBus`](dspex_core::events::EventBus).
//!
//! Every call publishes one [`EventKind::RequestStarted`] and exactly one
//! [`EventKind::RequestCompleted`], whether it succeeds, fails or is cancelled;
//! waits for rate-limit room, upstream 429s, retries and circuit changes publish
//! their own events. The enum is `#[non_exhaustive]`: cache, workflow and cost
//! events join it as those components land.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dspex_core::CorrelationId;
use dspex_core::protect::CircuitState;
use serde::Serialize;

use crate::types::{FinishReason, Usage};

/// The bus type the client publishes on.
pub type EventBus = dspex_core::events::EventBus<Event>;

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// When it happened.
    #[serde(with = "dspex_core::serde_time")]
    pub at: SystemTime,
    /// The run it belongs to, when it belongs to one.
    pub correlation_id: Option<CorrelationId>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event stamped now.
    pub fn now(correlation_id: Option<CorrelationId>, kind: EventKind) -> Self {
        Self {
            at: SystemTime::now(),
            correlation_id,
            kind,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A call entered the client.
    RequestStarted(CallInfo),
    /// A call ended: success, failure or cancellation. Exactly one per call.
    RequestCompleted(Completion),
    /// A call waited for rate-limit room, or the upstream answered 429.
    RateLimited(RateLimitEvent),
    /// An attempt failed and will be retried.
    Retrying(RetryEvent),
    /// A provider's circuit breaker changed state.
    CircuitChanged(CircuitEvent),
}

/// The operation a call performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// A chat completion.
    Chat,
    /// A streamed chat completion.
    ChatStream,
    /// Embeddings.
    Embeddings,
}

impl Operation {
    /// The OpenTelemetry `gen_ai.operation.name`.
    pub fn otel_name(self) -> &'static str {
        match self {
            Self::Chat | Self::ChatStream => "chat",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Who a call went to.
#[derive(Clone, Debug, Serialize)]
pub struct CallInfo {
    /// The provider id.
    pub provider: Arc<str>,
    /// The `gen_ai.system` (`openai`, `anthropic`).
    pub system: &'static str,
    /// The requested model.
    pub model: Arc<str>,
    /// The operation.
    pub operation: Operation,
    /// Estimated prompt tokens (when token buckets needed an estimate).
    pub estimated_input_tokens: Option<u64>,
    /// Tags from the call's options.
    pub tags: Arc<BTreeMap<String, String>>,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed.
    Failed {
        /// The error kind ([`ClientError::kind`](crate::ClientError::kind)).
        error_kind: &'static str,
        /// The HTTP status, for upstream errors.
        http_status: Option<u16>,
    },
    /// The caller dropped it (or its stream) before the end.
    Cancelled,
}

impl Outcome {
    /// `success`, `failed` or `cancelled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The record of one finished call: what analytics stores.
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    /// This call's own id, a UUID v7 (ids sort by time). Stored with the
    /// call's analytics row, so a row written twice (a journal replayed
    /// after a crash) is kept once.
    pub call_id: uuid::Uuid,
    /// Who it went to.
    #[serde(flatten)]
    pub call: CallInfo,
    /// The model that answered, when it answered.
    pub response_model: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Tokens used (zero when unknown, such as a failure before any reply).
    pub usage: Usage,
    /// Time from entering the client to the end.
    #[serde(rename = "latency_ms", with = "crate::types::duration_ms")]
    pub latency: Duration,
    /// HTTP attempts made.
    pub attempts: u32,
    /// The first choice's finish reason.
    pub finish_reason: Option<FinishReason>,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// Set when the response came from the response cache: then `usage` is
    /// zero (nothing was billed) and this holds what the call would have cost.
    /// (Boxed: it is rare, and completions travel through the event bus.)
    pub cache: Option<Box<CacheServed>>,
}

/// How a cached response was served.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CacheServed {
    /// The tier that answered: `l1`, `l2` or `l3`.
    pub tier: &'static str,
    /// Cosine similarity of a semantic (`l3`) hit.
    pub similarity: Option<f32>,
    /// The usage of the original call, which this hit did not pay for.
    pub saved: Usage,
}

/// Where a rate limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitSource {
    /// A local (or Redis) bucket made the call wait.
    Local,
    /// The upstream answered 429.
    Upstream,
}

/// A call was slowed by a rate limit.
#[derive(Clone, Debug, Serialize)]
pub struct RateLimitEvent {
    /// The provider id.
    pub provider: Arc<str>,
    /// The bucket (`tokens/1m`) or `upstream`.
    pub bucket: String,
    /// The wait.
    #[serde(rename = "wait_ms", with = "crate::types::duration_ms")]
    pub wait: Duration,
    /// Where it came from.
    pub source: LimitSource,
}

/// An attempt failed and the call will try again.
#[derive(Clone, Debug, Serialize)]
pub struct RetryEvent {
    /// The provider id.
    pub provider: Arc<str>,
    /// The attempt that failed (from 1).
    pub attempt: u32,
    /// The wait before the next attempt.
    #[serde(rename = "delay_ms", with = "crate::types::duration_ms")]
    pub delay: Duration,
}

/// A circuit breaker changed state.
#[derive(Clone, Debug, Serialize)]
pub struct CircuitEvent {
    /// The provider id.
    pub provider: Arc<str>,
    /// The old state.
    pub from: CircuitState,
    /// The new state.
    pub to: CircuitState,
}
