//! Two clients (two processes' worth of state) share one provider limit through
//! Redis. Run with `--ignored`; needs Redis at `DSPEX_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use dspex_client::config::{RawLimit, RawProvider};
use dspex_client::{
    Client, ClientConfig, ClientErrorKind, Message, ProviderConfig, RequestOptions,
};
use dspex_mock::{MockConfig, MockServer};

fn redis_url() -> String {
    std::env::var("DSPEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis at DSPEX_TEST_REDIS_URL (default redis://127.0.0.1:6379); run with --ignored"]
async fn redis_backed_clients_share_one_limit() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    // A fresh provider id, so earlier runs' buckets do not count.
    let id = format!("shared-{}", uuid::Uuid::new_v4().simple());
    let config = ProviderConfig::validate(
        &id,
        &RawProvider {
            kind: Some("openai".into()),
            base_url: Some(upstream.base_url()),
            limits: vec![RawLimit {
                kind: "requests".into(),
                limit: 10,
                window: "1m".into(),
            }],
            max_wait_ms: Some(1),
            rate_limit_backend: Some(redis_url()),
            ..RawProvider::default()
        },
        None,
        &|_| None,
    )
    .unwrap();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let client = Client::from_config(&ClientConfig::default()).await.unwrap();
        client
            .add_provider(config.clone())
            .await
            .expect("Redis reachable");
        clients.push(client);
    }
    let calls = (0..40).map(|i| {
        let client = clients[i % 2].clone();
        let id = id.clone();
        async move {
            client
                .request(&id, vec![Message::user("x")], RequestOptions::new())
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 10, "exactly the shared limit got through");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(
        |e| matches!(e.kind(), ClientErrorKind::RateLimited { bucket } if bucket == "requests/1m")
    ));
    assert_eq!(upstream.stats().requests, 10);
}

#[tokio::test]
async fn an_unreachable_backend_is_a_config_error_naming_the_key() {
    let config = ProviderConfig::validate(
        "p",
        &RawProvider {
            kind: Some("openai".into()),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            rate_limit_backend: Some("redis://127.0.0.1:1/".into()),
            ..RawProvider::default()
        },
        None,
        &|_| None,
    )
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    let error = client.add_provider(config).await.unwrap_err();
    assert!(
        error.to_string().contains("providers.p.rate_limit_backend"),
        "{error}"
    );
}
