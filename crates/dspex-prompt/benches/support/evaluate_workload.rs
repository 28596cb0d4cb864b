//! The workloads the `evaluate` bench compares, shared with the
//! `profile_evaluate` example (included by `#[path]` in both): the mock and a
//! client pointed at it, the labelled examples, and what `dspex load` does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, Message, ProviderConfig, RequestOptions};
use dspex_mock::{MockConfig, MockServer};
use dspex_prompt::Example;
use serde_json::json;

/// Calls in flight, for both workloads.
pub(crate) const CONCURRENCY: usize = 32;

/// The in-process mock and a client with it as provider `mock`.
pub(crate) async fn mock_and_client() -> (MockServer, Client) {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        pool_size: Some(64),
        ..RawProvider::default()
    };
    client
        .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
        .await
        .unwrap();
    (upstream, client)
}

/// `count` questions labelled with the mock's replies, so every example also
/// runs the metric on a real answer.
pub(crate) fn examples(count: u64) -> Vec<Example> {
    (0..count)
        .map(|i| {
            let question = format!("What is item {i}?");
            Example {
                inputs: json!({"question": question}).as_object().unwrap().clone(),
                outputs: json!({"answer": format!("mock answer for: {question}")})
                    .as_object()
                    .unwrap()
                    .clone(),
            }
        })
        .collect()
}

/// What `dspex load --requests CALLS --concurrency 32` does, against
/// `client`: 32 spawned workers making plain protected calls.
pub(crate) async fn load(client: &Client, calls: u64) {
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let client = client.clone();
            let issued = Arc::clone(&issued);
            tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::Relaxed) < calls {
                    client
                        .request(
                            "mock",
                            vec![Message::user("Say something short.")],
                            RequestOptions::new().max_tokens(64),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}
