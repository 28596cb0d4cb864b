//! `POST /v1/embeddings`: OpenAI's embeddings API in front of the client's
//! embedding calls, with the same keys, limits, budgets and analytics as a
//! chat.
//!
//! The `model` routes like a chat's (an alias, `provider/model`), and also
//! by a provider's configured `embedding_model`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use dspex_analytics::record::KEY_TAG;
use dspex_client::{EmbeddingRequest, RequestOptions};
use dspex_core::CorrelationId;

use crate::chat::{
    Answered, KeyCharge, Outcome, Resolved, correlation_of, read_body, record, reserve_for_key,
    set_headers,
};
use crate::config::Target;
use crate::error::RequestError;
use crate::openai::{self, EmbeddingsRequest};
use crate::server::Shared;

/// The target of an embeddings `model`.
fn route(shared: &Shared, model: &str) -> Result<Target, RequestError> {
    for id in shared.client.provider_ids() {
        if let Ok(provider) = shared.client.provider(&id)
            && provider.capabilities().embeddings
            && provider.config().embedding_model == model
        {
            return Ok(Target {
                provider: id,
                model: Some(model.to_owned()),
            });
        }
    }
    let mut targets = shared.route(model)?;
    if targets.is_empty() {
        return Err(RequestError::model_not_found(model, &[]));
    }
    Ok(targets.swap_remove(0))
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let correlation_id = correlation_of(&headers);
    let mut outcome = Outcome {
        resolved: None,
        cache: "miss",
        key: None,
    };
    let mut response = match answer(&shared, &headers, body, &correlation_id, &mut outcome).await {
        Ok(response) => response,
        Err(error) => {
            if error.status >= 500 {
                tracing::warn!(status = error.status, message = %error.message, "gateway embeddings request failed");
            }
            error.into_response()
        }
    };
    set_headers(&mut response, &correlation_id, &outcome);
    let status = response.status().as_u16();
    record(&shared, "embeddings", outcome, status, started);
    response
}

async fn answer(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    correlation_id: &CorrelationId,
    outcome: &mut Outcome,
) -> Result<Response, RequestError> {
    let caller = shared.caller(headers).await?;
    outcome.key = caller.as_ref().map(|t| Arc::from(t.key.name.as_str()));
    let bytes = read_body(shared, body).await?;
    let request: EmbeddingsRequest = openai::decode_json(&bytes)?;
    let requested = request.model.clone();
    let (input, dimensions, encoding) = request.into_parts()?;
    let target = route(shared, &requested)?;
    let model = target.model.clone().unwrap_or_else(|| {
        shared
            .client
            .provider(&target.provider)
            .map(|p| p.config().embedding_model.clone())
            .unwrap_or_default()
    });
    outcome.resolved = Some(Resolved {
        provider: target.provider.clone(),
        model: model.clone(),
    });
    let mut options = RequestOptions::new()
        .correlation_id(correlation_id.clone())
        .tag("via", "gateway");
    let charge = match &caller {
        Some(tenant) => {
            if !tenant
                .key
                .allows_model(&requested, &target.provider, &model)
            {
                return Err(RequestError::forbidden(
                    "model_not_allowed",
                    Some("model"),
                    format!(
                        "key `{}` may not use `{requested}` (it may use: {})",
                        tenant.key.name,
                        tenant.key.limits.models.join(", ")
                    ),
                ));
            }
            options = options.tag(KEY_TAG, tenant.key.name.clone());
            let tokens = input
                .iter()
                .map(|text| dspex_client::tokens::count_text_tokens(&model, text))
                .sum();
            reserve_for_key(shared, tenant, &target.provider, &model, tokens, 0).await?
        }
        None => KeyCharge::none(shared),
    };
    let request = EmbeddingRequest {
        input,
        model: Some(model.clone()),
        dimensions,
    };
    match shared
        .client
        .embed(&target.provider, request, options)
        .await
    {
        Ok(response) => {
            charge.settle(Some(Answered {
                provider: &target.provider,
                model: &model,
                response_model: &response.model,
                usage: &response.usage,
            }));
            outcome.resolved = Some(Resolved {
                provider: target.provider.clone(),
                model: response.model.clone(),
            });
            let body = openai::embeddings_json(
                &response.vectors,
                &response.model,
                &response.usage,
                encoding,
            );
            Ok(axum::Json(body).into_response())
        }
        Err(error) => {
            charge.settle(None);
            Err(RequestError::from_client(&error))
        }
    }
}
