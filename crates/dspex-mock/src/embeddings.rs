//! `POST /v1/embeddings`: deterministic, somewhat semantic embeddings.
//!
//! A text's vector is a hashed bag of features: its lower-cased word unigrams and
//! the character trigrams of each word (padded with spaces). Each feature lands in
//! bucket `fnv1a(feature) % dimensions` with a sign taken from another bit of a
//! second hash, and the vector is L2-normalised. Texts that share words come out
//! closer than unrelated texts, which is enough for retrieval tests.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::faults::splitmix64;
use crate::openai::invalid_json;
use crate::server::{BodyMode, Shared, with_limits};
use crate::stats::Route;
use crate::tokens::approx_tokens;
use crate::wire::{ApiError, Flavor, json_response, truncated_json_response};

const FLAVOR: Flavor = Flavor::OpenAi;
const DEFAULT_DIMENSIONS: usize = 256;
const MAX_DIMENSIONS: usize = 4096;
const MAX_INPUTS: usize = 2048;
const WORD_WEIGHT: f32 = 1.0;
const TRIGRAM_WEIGHT: f32 = 0.5;

/// The handler.
pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = shared.stats.begin(Route::Embeddings);
    let seq = shared.next_seq();
    let response = match handle(&shared, seq, &headers, &body).await {
        Ok(response) | Err(response) => response,
    };
    shared.finish(response, seq, FLAVOR)
}

#[derive(Debug)]
struct EmbeddingRequest {
    model: String,
    inputs: Vec<String>,
    dimensions: usize,
    base64: bool,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, "invalid_value", message)
}

fn parse(body: &Value) -> Result<EmbeddingRequest, ApiError> {
    let model = match body.get("model") {
        Some(Value::String(model)) => model.clone(),
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("you must provide a model parameter"));
        }
        Some(_) => return Err(invalid("model", "'model' must be a string.")),
    };
    let inputs = match body.get("input") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid_param(
                "input",
                "missing_required_parameter",
                "Missing required parameter: 'input'.",
            ));
        }
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_INPUTS {
                return Err(invalid(
                    "input",
                    format!("'$.input' must be a non-empty array of at most {MAX_INPUTS} strings."),
                ));
            }
            items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid(
                            "input",
                            "'$.input' is invalid: expected a string or an array of strings.",
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(invalid(
                "input",
                "'$.input' is invalid: expected a string or an array of strings.",
            ));
        }
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d,
            _ => {
                return Err(invalid(
                    "dimensions",
                    format!("'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}."),
                ));
            }
        },
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!(
                    "Invalid value for 'encoding_format': '{other}'. Expected 'float' or 'base64'."
                ),
            ));
        }
    };
    Ok(EmbeddingRequest {
        model,
        inputs,
        dimensions,
        base64,
    })
}

async fn handle(
    shared: &Shared,
    seq: u64,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Response> {
    let json = shared.read_body(Route::Embeddings, headers, body);
    shared
        .check_auth(FLAVOR, headers)
        .map_err(|e| e.into_response(FLAVOR))?;
    let json = json.ok_or_else(|| invalid_json().into_response(FLAVOR))?;
    let request = parse(&json).map_err(|e| e.into_response(FLAVOR))?;
    let tokens: u64 = request
        .inputs
        .iter()
        .map(|input| approx_tokens(input))
        .sum();
    let plan = shared.plan(seq, FLAVOR, || tokens).await?;
    let data: Vec<EmbeddingItem> = request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embed(input, request.dimensions);
            EmbeddingItem {
                object: "embedding",
                index,
                embedding: if request.base64 {
                    EmbeddingData::Base64(base64_f32(&vector))
                } else {
                    EmbeddingData::Float(vector)
                },
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    let body = serde_json::to_vec(&list).unwrap_or_default();
    let response = match plan.mode {
        BodyMode::Normal => {
            shared.stats.tokens(tokens, 0);
            json_response(StatusCode::OK, body)
        }
        BodyMode::Truncate => truncated_json_response(&body),
        BodyMode::Malformed | BodyMode::MalformedStart => json_response(
            StatusCode::OK,
            "{\"object\":\"list\",\"data\": [ {\"object\": \"embedding\", \"embedding\": [0.1, ",
        ),
    };
    Ok(with_limits(response, &plan, FLAVOR))
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// 64-bit FNV-1a over a namespace tag and the bytes.
fn fnv1a(tag: u8, bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = (OFFSET ^ u64::from(tag)).wrapping_mul(PRIME);
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
    }
    hash
}

fn add_feature(vector: &mut [f32], tag: u8, bytes: &[u8], weight: f32) {
    let hash = fnv1a(tag, bytes);
    let len = vector.len() as u64;
    if len == 0 {
        return;
    }
    let bucket = usize::try_from(hash % len).unwrap_or(0);
    let sign = if splitmix64(hash) >> 63 == 0 {
        1.0
    } else {
        -1.0
    };
    if let Some(slot) = vector.get_mut(bucket) {
        *slot += sign * weight;
    }
}

/// The embedding of `text` with `dimensions` components, L2-normalised.
pub(crate) fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0f32; dimensions];
    let lower = text.to_lowercase();
    let mut padded = String::new();
    for word in lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        add_feature(&mut vector, b'w', word.as_bytes(), WORD_WEIGHT);
        padded.clear();
        padded.push(' ');
        padded.push_str(word);
        padded.push(' ');
        let boundaries: Vec<usize> = padded
            .char_indices()
            .map(|(at, _)| at)
            .chain(std::iter::once(padded.len()))
            .collect();
        for window in boundaries.windows(4) {
            if let [from, _, _, to] = *window
                && let Some(trigram) = padded.get(from..to)
            {
                add_feature(&mut vector, b't', trigram.as_bytes(), TRIGRAM_WEIGHT);
            }
        }
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x /= norm;
        }
    } else if let Some(first) = vector.first_mut() {
        // No features (empty or punctuation-only text): a fixed unit vector.
        *first = 1.0;
    }
    vector
}

/// Little-endian f32 bytes in standard base64, as OpenAI's `encoding_format: "base64"`.
fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    let symbol =
        |index: u32| char::from(ALPHABET.get((index & 63) as usize).copied().unwrap_or(b'A'));
    for group in bytes.chunks(3) {
        let b0 = u32::from(group.first().copied().unwrap_or(0));
        let b1 = u32::from(group.get(1).copied().unwrap_or(0));
        let b2 = u32::from(group.get(2).copied().unwrap_or(0));
        let triple = (b0 << 16) | (b1 << 8) | b2;
        out.push(symbol(triple >> 18));
        out.push(symbol(triple >> 12));
        out.push(if group.len() > 1 {
            symbol(triple >> 6)
        } else {
            '='
        });
        out.push(if group.len() > 2 { symbol(triple) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn normalised_and_semantic() {
        let a = embed("The cat sat on the mat.", 256);
        let b = embed("A cat was sitting on the mat", 256);
        let c = embed("Quarterly revenue grew by ten percent", 256);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2);
        assert_eq!(embed("", 8), vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(embed("héllo wörld", 64), embed("HÉLLO WÖRLD", 64));
    }

    #[test]
    fn base64_encoding() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
    }
}
