//! One protected call against the mock on loopback, next to a bare reqwest call
//! to the same mock with the same body: the difference is what the stack costs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, Message, ProviderConfig, RequestOptions, tokens};
use dspex_mock::{MockConfig, MockServer};

fn provider(id: &str, base_url: &str, limited: bool) -> ProviderConfig {
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(base_url.into()),
        model: Some("gpt-4o-mini".into()),
        // Limits far above what the bench sends, so admission runs but never waits.
        rpm: limited.then_some(100_000_000),
        tpm: limited.then_some(100_000_000_000),
        ..RawProvider::default()
    };
    ProviderConfig::validate(id, &raw, None, &|_| None).unwrap()
}

fn calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, client, bare) = runtime.block_on(async {
        let upstream = MockServer::start(MockConfig::default()).await.unwrap();
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_provider(provider("plain", &upstream.base_url(), false))
            .await
            .unwrap();
        client
            .add_provider(provider("limited", &upstream.base_url(), true))
            .await
            .unwrap();
        let bare = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap();
        (upstream, client, bare)
    });
    let prompt = "Summarise the plot of Hamlet in one sentence.";
    let url = format!("{}/chat/completions", upstream.base_url());
    let body = serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
    }))
    .unwrap();

    let mut group = c.benchmark_group("loopback_call");
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("bare_reqwest", |b| {
        b.to_async(&runtime).iter(|| async {
            let response = bare
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let bytes = response.bytes().await.unwrap();
            let _: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        });
    });
    for id in ["plain", "limited"] {
        group.bench_function(format!("protected_{id}"), |b| {
            b.to_async(&runtime).iter(|| async {
                client
                    .request(
                        id,
                        vec![Message::user(prompt)],
                        RequestOptions::new().max_tokens(64),
                    )
                    .await
                    .unwrap()
            });
        });
    }
    group.finish();

    let messages = [Message::system("You are terse."), Message::user(prompt)];
    c.bench_function("estimate_chat_tokens/gpt-4o-mini", |b| {
        b.iter(|| tokens::estimate_chat_tokens("gpt-4o-mini", &messages));
    });
    c.bench_function("estimate_chat_tokens/heuristic", |b| {
        b.iter(|| tokens::estimate_chat_tokens("llama3", &messages));
    });
    drop(runtime);
}

criterion_group!(benches, calls);
criterion_main!(benches);
