//! One stored row per LM call, built from the client's completion event.

use std::collections::BTreeMap;

use dspex_client::events::{Completion, Outcome};
use dspex_client::{Event, EventKind};
use serde::{Deserialize, Serialize};

use crate::prices::{PriceTable, TokenUsage};
use crate::time::unix_ms;

/// The tag that names a call's workflow; stored in its own column.
pub const WORKFLOW_TAG: &str = "workflow";
/// The tag that names a call's workflow step; stored in its own column.
pub const STEP_TAG: &str = "step";
/// The tag the gateway puts on a call: the name of the virtual key that made
/// it (`dspex costs --group-by key`).
pub const KEY_TAG: &str = "key";

/// One LM call as stored: raw usage (so it can be re-priced), its cost when
/// the model is priced, and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's own id (the completion event's UUID v7). A store ignores a
    /// row whose id it already holds, so a journal replayed after a crash
    /// never stores a call twice. `None` in rows written before ids existed.
    #[serde(default)]
    pub call_id: Option<String>,
    /// When the call ended, Unix milliseconds.
    pub at_ms: i64,
    /// The run it belongs to.
    pub correlation_id: Option<String>,
    /// The provider id.
    pub provider: String,
    /// The requested model.
    pub model: String,
    /// The model that answered, as the provider named it.
    pub response_model: Option<String>,
    /// `chat`, `chat_stream` or `embeddings`.
    pub operation: String,
    /// Tokens used (zero for a cache hit: nothing was billed).
    pub usage: TokenUsage,
    /// The cost in nano-USD; `None` when the model is unpriced.
    pub cost_nanos: Option<i64>,
    /// The price version used (`bundled@2026-11-24`); `None` when unpriced.
    pub price_version: Option<String>,
    /// Time from entering the client to the end, in microseconds.
    pub latency_us: i64,
    /// HTTP attempts made.
    pub attempts: i64,
    /// `success`, `failed` or `cancelled`.
    pub status: String,
    /// The error kind of a failed call.
    pub error_kind: Option<String>,
    /// The HTTP status of an upstream error.
    pub http_status: Option<i64>,
    /// The cache tier that served the call (`l1`, `l2`, `l3`), if any.
    pub cache_tier: Option<String>,
    /// The usage a cache hit did not pay for.
    pub saved_usage: TokenUsage,
    /// What a cache hit saved, in nano-USD; `None` when not a hit or unpriced.
    pub saved_cost_nanos: Option<i64>,
    /// The `workflow` tag.
    pub workflow: Option<String>,
    /// The `step` tag.
    pub step: Option<String>,
    /// The other tags, as a JSON object.
    pub tags: String,
}

impl CallRecord {
    /// The row for a completion event, priced with `prices`; `None` for any
    /// other event.
    pub fn from_event(event: &Event, prices: &PriceTable) -> Option<Self> {
        match &event.kind {
            EventKind::RequestCompleted(completion) => Some(Self::from_completion(
                unix_ms(event.at),
                event.correlation_id.as_ref().map(|c| c.as_str().to_owned()),
                completion,
                prices,
            )),
            _ => None,
        }
    }

    /// The row for a completion at `at_ms`.
    pub fn from_completion(
        at_ms: i64,
        correlation_id: Option<String>,
        completion: &Completion,
        prices: &PriceTable,
    ) -> Self {
        let call = &completion.call;
        let usage = TokenUsage::from(&completion.usage);
        let response_model = completion.response_model.as_deref();
        let cost = prices.cost_of_call(
            call.system,
            &call.provider,
            &call.model,
            response_model,
            at_ms,
            &usage,
        );
        let (error_kind, http_status) = match &completion.outcome {
            Outcome::Failed {
                error_kind,
                http_status,
            } => (Some((*error_kind).to_owned()), http_status.map(i64::from)),
            _ => (None, None),
        };
        let (cache_tier, saved_usage) = match &completion.cache {
            Some(served) => (
                Some(served.tier.to_owned()),
                TokenUsage::from(&served.saved),
            ),
            None => (None, TokenUsage::default()),
        };
        let saved_cost_nanos = if cache_tier.is_some() {
            prices
                .cost_of_call(
                    call.system,
                    &call.provider,
                    &call.model,
                    response_model,
                    at_ms,
                    &saved_usage,
                )
                .map(|c| c.nanos)
        } else {
            None
        };
        let mut workflow = None;
        let mut step = None;
        let mut tags = BTreeMap::new();
        for (key, value) in call.tags.iter() {
            match key.as_str() {
                WORKFLOW_TAG => workflow = Some(value.clone()),
                STEP_TAG => step = Some(value.clone()),
                _ => {
                    tags.insert(key.as_str(), value.as_str());
                }
            }
        }
        Self {
            call_id: Some(completion.call_id.to_string()),
            at_ms,
            correlation_id,
            provider: call.provider.to_string(),
            model: call.model.to_string(),
            response_model: completion.response_model.clone(),
            operation: operation_name(call.operation).to_owned(),
            usage,
            price_version: cost.as_ref().map(|c| c.version.clone()),
            cost_nanos: cost.map(|c| c.nanos),
            latency_us: i64::try_from(completion.latency.as_micros()).unwrap_or(i64::MAX),
            attempts: i64::from(completion.attempts),
            status: completion.outcome.as_str().to_owned(),
            error_kind,
            http_status,
            cache_tier,
            saved_usage,
            saved_cost_nanos,
            workflow,
            step,
            tags: serde_json::to_string(&tags).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    /// Whether the call's model had no price.
    pub fn is_unpriced(&self) -> bool {
        self.cost_nanos.is_none()
    }
}

fn operation_name(operation: dspex_client::events::Operation) -> &'static str {
    use dspex_client::events::Operation;
    match operation {
        Operation::Chat => "chat",
        Operation::ChatStream => "chat_stream",
        Operation::Embeddings => "embeddings",
    }
}
