//! Embeddings over real loopback HTTP: shape, normalisation, determinism, similarity.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{client, server};
use dspex_mock::{MockConfig, MockServer, approx_tokens};
use serde_json::{Value, json};

async fn embed(server: &MockServer, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/embeddings", server.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn vectors(body: &Value) -> Vec<Vec<f64>> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn shape_norm_and_usage() {
    let server = server(MockConfig::default()).await;
    let inputs = ["The cat sat on the mat.", "Un chat était assis", ""];
    let response = embed(
        &server,
        json!({"model": "text-embedding-3-small", "input": inputs}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req_1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    let tokens: u64 = inputs.iter().map(|text| approx_tokens(text)).sum();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": tokens, "total_tokens": tokens})
    );
    for (i, item) in body["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
    }
    for vector in vectors(&body) {
        assert_eq!(vector.len(), 256);
        assert!((dot(&vector, &vector) - 1.0).abs() < 1e-4);
    }

    let body: Value = embed(
        &server,
        json!({"model": "m", "input": "one string", "dimensions": 64}),
    )
    .await
    .json()
    .await
    .unwrap();
    let vectors = vectors(&body);
    assert_eq!(vectors.len(), 1);
    assert_eq!(vectors[0].len(), 64);
    assert_eq!(server.stats().by_route.get("embeddings"), Some(&2));
}

#[tokio::test]
async fn deterministic_and_somewhat_semantic() {
    let server = server(MockConfig::default()).await;
    let texts = [
        "How do I reset my password?",
        "How can I reset the password for my account?",
        "The quarterly revenue grew by ten percent.",
    ];
    let first: Value = embed(&server, json!({"model": "m", "input": texts}))
        .await
        .json()
        .await
        .unwrap();
    let again: Value = embed(&server, json!({"model": "m", "input": texts}))
        .await
        .json()
        .await
        .unwrap();
    let (a, b) = (vectors(&first), vectors(&again));
    assert_eq!(a, b);
    let other = common::server(MockConfig::default()).await;
    let third: Value = embed(&other, json!({"model": "m", "input": texts}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a, vectors(&third));
    let paraphrase = dot(&a[0], &a[1]);
    let unrelated = dot(&a[0], &a[2]);
    assert!(
        paraphrase > unrelated + 0.2,
        "paraphrase {paraphrase} vs unrelated {unrelated}"
    );
}

#[tokio::test]
async fn base64_and_bad_inputs() {
    let server = server(MockConfig::default()).await;
    let body: Value = embed(
        &server,
        json!({"model": "m", "input": "hello", "dimensions": 8, "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded.len(), 44); // 32 bytes

    for bad in [
        json!({"model": "m"}),
        json!({"model": "m", "input": 5}),
        json!({"model": "m", "input": []}),
        json!({"model": "m", "input": "x", "dimensions": 0}),
    ] {
        let response = embed(&server, bad.clone()).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
