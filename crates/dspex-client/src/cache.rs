//! The response cache in front of the providers: which calls it may answer,
//! their keys and semantic scopes, and how a hit is reported.
//!
//! Keys hash the canonical request (sorted JSON): provider id, model, messages
//! and every sampling parameter, never an API key or a base URL. A semantic
//! (L3) match is allowed only between requests that agree exactly on
//! everything but the final user message (its *scope*), so a paraphrase in
//! another conversation or under another system prompt never matches.
//!
//! Calls with a temperature above 0 sample on purpose: they are cached only
//! when the caller opts in ([`CacheMode::Always`]) or passes a rollout id,
//! which enters the key (DSPy's `rollout_id`).

use std::collections::BTreeMap;
use std::time::Duration;

use dspex_cache::semantic::normalize;
use dspex_cache::{CacheKey, Embedder, LookupOptions, SemanticQuery, SemanticScope};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::client::Client;
use serde::Serialize;

use crate::types::{
    ChatParams, ChatResponse, EmbeddingRequest, Message, RequestOptions, ResponseFormat, Role,
};

/// The response cache the client uses: `dspex_cache::Cache` over chat responses.
pub type ResponseCache = dspex_cache::Cache<ChatResponse>;

/// How one call uses the response cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Look up and store, except for calls sampled above temperature 0 without
    /// a rollout id.
    #[default]
    Auto,
    /// Look up and store even above temperature 0 (the caller accepts reusing
    /// one sample).
    Always,
    /// Neither look up nor store.
    Skip,
    /// Do not look up; store the fresh response (refresh an entry).
    Refresh,
    /// Look up, but do not store a fresh response.
    NoStore,
}

/// Per-call cache options ([`RequestOptions::cache`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachePolicy {
    /// Whether to look up and store.
    pub mode: CacheMode,
    /// Time to live of a stored response (default: the cache's).
    pub ttl: Option<Duration>,
    /// The namespace (a tenant or program) to look up and store in.
    pub namespace: Option<String>,
    /// A rollout or seed id: enters the key, so calls with different ids get
    /// different samples, and makes sampled calls cacheable.
    pub rollout: Option<String>,
}

/// What a cached call looks up.
pub(crate) struct Plan {
    pub(crate) key: CacheKey,
    pub(crate) semantic: Option<SemanticQuery>,
    pub(crate) lookup: LookupOptions,
}

/// The cache plan for a chat call, or `None` when the call must not use the
/// cache.
pub(crate) fn plan(
    cache: &ResponseCache,
    provider: &str,
    model: &str,
    messages: &[Message],
    options: &RequestOptions,
) -> Option<Plan> {
    let policy = &options.cache;
    let sampled = options.params.temperature.is_some_and(|t| t > 0.0);
    match policy.mode {
        CacheMode::Skip => return None,
        CacheMode::Auto if sampled && policy.rollout.is_none() => return None,
        _ => {}
    }
    // Everything that changes the answer, nothing that identifies the caller:
    // the model is named once, whether it came from the options or the
    // provider's default.
    let params = ParamsWithoutModel::of(&options.params);
    let key = cache
        .key_of(&KeyParts {
            op: "chat",
            provider,
            model,
            params: &params,
            rollout: policy.rollout.as_deref(),
            messages,
        })
        .ok()?;
    // The scope: the same request without the final user message's text.
    let semantic = match messages.split_last() {
        Some((last, earlier)) if last.role == Role::User && cache.has_semantic_tier() => {
            let params = serde_json::to_value(&params).ok()?;
            let rest = json!({
                "op": "chat",
                "provider": provider,
                "model": model,
                "params": params,
                "rollout": policy.rollout,
                "earlier": earlier,
                "final_name": last.name,
            });
            Some(SemanticQuery::new(
                SemanticScope::from_canonical_json(&rest),
                last.content.clone(),
            ))
        }
        _ => None,
    };
    let mut lookup = LookupOptions::new();
    match policy.mode {
        CacheMode::Refresh => lookup = lookup.no_cache(),
        CacheMode::NoStore => lookup = lookup.no_store(),
        CacheMode::Auto | CacheMode::Always | CacheMode::Skip => {}
    }
    if let Some(ttl) = policy.ttl {
        lookup = lookup.ttl(ttl);
    }
    if let Some(namespace) = &policy.namespace {
        lookup = lookup.namespace(namespace.clone());
    }
    Some(Plan {
        key,
        semantic,
        lookup,
    })
}

/// What a chat call's cache key hashes, serialised in this field order.
#[derive(Serialize)]
struct KeyParts<'a> {
    op: &'static str,
    provider: &'a str,
    model: &'a str,
    params: &'a ParamsWithoutModel<'a>,
    rollout: Option<&'a str>,
    messages: &'a [Message],
}

/// Chat parameters without the model (the key names it separately),
/// borrowed: serialises exactly as `ChatParams` with `model: None` does (a
/// test checks it, and lists every field so a new one cannot be missed).
#[derive(Serialize)]
struct ParamsWithoutModel<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a ResponseFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a Value>,
    #[serde(flatten)]
    extra: &'a BTreeMap<String, Value>,
}

impl<'a> ParamsWithoutModel<'a> {
    fn of(params: &'a ChatParams) -> Self {
        let ChatParams {
            model: _,
            temperature,
            top_p,
            max_tokens,
            stop,
            n,
            seed,
            response_format,
            tools,
            tool_choice,
            extra,
        } = params;
        Self {
            temperature: *temperature,
            top_p: *top_p,
            max_tokens: *max_tokens,
            stop,
            n: *n,
            seed: *seed,
            response_format: response_format.as_ref(),
            tools: tools.as_deref(),
            tool_choice: tool_choice.as_ref(),
            extra,
        }
    }
}

/// Embeddings from any OpenAI-compatible `/v1/embeddings`, through the
/// client's protected stack (limits, retries, telemetry): the `api` embedder
/// of the semantic cache.
pub struct ApiEmbedder {
    client: Client,
    provider: String,
    model: Option<String>,
    dimension: usize,
    threshold: f32,
}

impl std::fmt::Debug for ApiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiEmbedder")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

impl ApiEmbedder {
    /// Embeds with `provider`'s embedding model (or `model`). Asks for one
    /// embedding now to learn the dimension. `threshold` is the similarity for
    /// a semantic hit: calibrate it for the model with `dspex cache calibrate`.
    pub async fn new(
        client: &Client,
        provider: &str,
        model: Option<&str>,
        threshold: f32,
    ) -> Result<Self, crate::ClientError> {
        let mut embedder = Self {
            client: client.clone(),
            provider: provider.to_owned(),
            model: model.map(str::to_owned),
            dimension: 0,
            threshold,
        };
        let probe = embedder.request(&["dimension probe"]).await?;
        embedder.dimension = probe.first().map_or(0, Vec::len);
        Ok(embedder)
    }

    async fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, crate::ClientError> {
        let request = EmbeddingRequest {
            model: self.model.clone(),
            input: texts.iter().map(|t| (*t).to_owned()).collect(),
            ..EmbeddingRequest::default()
        };
        let response = self
            .client
            .embed(&self.provider, request, RequestOptions::default())
            .await?;
        Ok(response
            .vectors
            .into_iter()
            .map(|mut v| {
                normalize(&mut v);
                v
            })
            .collect())
    }
}

impl Embedder for ApiEmbedder {
    fn name(&self) -> &str {
        "api"
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn fingerprint(&self) -> String {
        format!(
            "api:{}/{}/{}",
            self.provider,
            self.model.as_deref().unwrap_or("default"),
            self.dimension
        )
    }

    fn default_threshold(&self) -> f32 {
        self.threshold
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [&'a str],
    ) -> BoxFuture<'a, dspex_cache::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            self.request(texts)
                .await
                .map_err(|e| dspex_cache::CacheError::embedding("api", e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_params_serialise_like_the_params_without_their_model() {
        let params = ChatParams {
            model: Some("m".into()),
            temperature: Some(0.5),
            top_p: Some(0.9),
            max_tokens: Some(10),
            stop: vec!["x".into()],
            n: Some(2),
            seed: Some(7),
            response_format: None,
            tools: Some(std::sync::Arc::new(json!([{"type": "function"}]))),
            tool_choice: Some(json!("auto")),
            extra: [("user".to_owned(), json!("u-1"))].into(),
        };
        let without = ChatParams {
            model: None,
            ..params.clone()
        };
        assert_eq!(
            serde_json::to_value(ParamsWithoutModel::of(&params)).unwrap(),
            serde_json::to_value(&without).unwrap()
        );
    }
}
