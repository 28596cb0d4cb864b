//! Framework overhead of `Predict` (format, call, parse) with the scripted
//! in-process LM; parsing a 2 KB chat-adapter reply; and `Predict` against the
//! mock on loopback next to a bare HTTP call to the same mock.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

// Only the mock and client set-up is used here.
#[path = "support/evaluate_workload.rs"]
#[allow(dead_code)]
mod workload;
use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig, ScriptedLm};
use dspex_prompt::adapter::Adapter;
use dspex_prompt::{Lm, Module, Predict, Signature};
use serde_json::json;

fn predict(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let signature = Signature::parse("question -> answer").unwrap();
    let inputs = json!({"question": "What is the capital of France?"});
    let inputs = inputs.as_object().unwrap().clone();

    // 1. Scripted LM: no HTTP, so this is the framework's own cost.
    let client = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_scripted(
                "dummy",
                ScriptedLm::replies(["[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"]),
            )
            .await
            .unwrap();
        client
    });
    let scripted = Predict::new(signature.clone(), Lm::new(&client, "dummy"));
    c.bench_function("predict/scripted_lm_no_demos", |b| {
        b.to_async(&runtime)
            .iter(|| async { scripted.forward(&inputs).await.unwrap() });
    });

    // 2. Parsing a 2 KB reply with three typed fields.
    let parse_signature =
        Signature::parse("question -> reasoning, answer: int, confidence: float").unwrap();
    let reasoning =
        "The question asks for a count, so I list the items and add them up. ".repeat(29);
    let reply = format!(
        "[[ ## reasoning ## ]]\n{reasoning}\n\n[[ ## answer ## ]]\n42\n\n[[ ## confidence ## ]]\n0.87\n\n[[ ## completed ## ]]"
    );
    assert!(
        reply.len() >= 2_000 && reply.len() < 2_200,
        "{}",
        reply.len()
    );
    c.bench_function("adapter/parse_chat_2kb", |b| {
        b.iter(|| Adapter::Chat.parse(&parse_signature, &reply));
    });

    // 3. Against the mock on loopback, next to a bare HTTP call.
    let (upstream, mock_client) = runtime.block_on(workload::mock_and_client());
    let over_http = Predict::new(signature, Lm::new(&mock_client, "mock"));
    let bare = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", upstream.base_url());
    let body = serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "messages": over_http.messages(&inputs),
    }))
    .unwrap();
    let mut group = c.benchmark_group("loopback");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare_http_same_prompt", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = bare
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let _ = response.bytes().await.unwrap();
        });
    });
    group.bench_function("predict", |b| {
        b.to_async(&runtime)
            .iter(|| async { over_http.forward(&inputs).await.unwrap() });
    });
    group.finish();

    // 4. A fully cached Predict: the same call answered from the memory tier,
    // end to end (format, key, L1 hit, recorded completion, parse).
    let cached = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        let raw = RawProvider {
            kind: Some("openai".into()),
            base_url: Some(upstream.base_url()),
            ..RawProvider::default()
        };
        client
            .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
            .await
            .unwrap();
        let cache = dspex_client::ResponseCache::builder()
            .l1(10_000, 64 << 20)
            .build()
            .await
            .unwrap();
        client.set_cache(cache).unwrap();
        let predict = Predict::new(
            Signature::parse("question -> answer").unwrap(),
            Lm::new(&client, "mock"),
        );
        let first = predict.forward(&inputs).await.unwrap();
        assert!(!first.trace[0].cached);
        let second = predict.forward(&inputs).await.unwrap();
        assert!(second.trace[0].cached, "the second call is a hit");
        predict
    });
    let before = upstream.stats().requests;
    c.bench_function("predict/fully_cached", |b| {
        b.to_async(&runtime)
            .iter(|| async { cached.forward(&inputs).await.unwrap() });
    });
    assert_eq!(
        upstream.stats().requests,
        before,
        "no cached call reached the mock"
    );
}

criterion_group!(benches, predict);
criterion_main!(benches);
