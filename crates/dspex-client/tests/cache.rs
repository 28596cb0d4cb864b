#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;

use dspex_cache::LexicalEmbedder;
use dspex_client::config::RawProvider;
use dspex_client::{
    CacheMode, CachePolicy, Client, ClientConfig, EventKind, Message, ProviderConfig,
    RequestOptions, ResponseCache,
};
use dspex_core::events::Delivery;
use dspex_mock::{Fault, MockConfig, MockServer};

const KEY: &str = "sk-cache-test-secret-0123456789";

async fn setup(cache: ResponseCache) -> (MockServer, Client) {
    let upstream = MockServer::start(MockConfig {
        require_api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        api_key_env: Some("DSPEX_CACHE_TEST_KEY".into()),
        max_retries: Some(0),
        ..RawProvider::default()
    };
    let config = ProviderConfig::validate("mock", &raw, None, &|name| {
        (name == "DSPEX_CACHE_TEST_KEY").then(|| KEY.to_owned())
    })
    .unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client.add_provider(config).await.unwrap();
    client.set_cache(cache).unwrap();
    (upstream, client)
}

async fn memory_cache() -> ResponseCache {
    ResponseCache::builder()
        .l1(1_000, 1 << 24)
        .build()
        .await
        .unwrap()
}

fn ask(system: &str, question: &str) -> Vec<Message> {
    vec![Message::system(system), Message::user(question)]
}

#[tokio::test]
async fn a_repeated_call_is_served_from_memory_with_zero_billed_usage() {
    let (upstream, client) = setup(memory_cache().await).await;
    let mut events = client.events().subscribe("t", Delivery::Lossless);
    let first = client
        .request(
            "mock",
            ask("Be brief.", "What is Rust?"),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    assert!(first.cache.is_none());
    assert!(first.usage.total_tokens() > 0);
    let second = client
        .request(
            "mock",
            ask("Be brief.", "What is Rust?"),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(upstream.stats().requests, 1);
    assert_eq!(second.text(), first.text());
    assert_eq!(second.usage.total_tokens(), 0, "a hit bills nothing");
    let served = second.cache.clone().unwrap();
    assert_eq!(served.tier, "l1");
    assert_eq!(
        served.saved, first.usage,
        "the original usage stays available"
    );
    assert_ne!(second.correlation_id, first.correlation_id);
    let mut completions = Vec::new();
    while let Some(event) = events.try_recv() {
        if let EventKind::RequestCompleted(c) = &event.kind {
            completions.push((c.usage.total_tokens(), c.cache.as_ref().map(|s| s.tier)));
        }
    }
    assert_eq!(
        completions,
        vec![(first.usage.total_tokens(), None), (0, Some("l1"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_identical_calls_reach_the_upstream_once() {
    let (upstream, client) = setup(memory_cache().await).await;
    upstream.enqueue([Fault::Delay(std::time::Duration::from_millis(100))]);
    let calls = (0..100).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request("mock", ask("s", "the same question"), RequestOptions::new())
                .await
                .unwrap()
        })
    });
    let responses = futures::future::join_all(calls).await;
    assert_eq!(upstream.stats().requests, 1);
    let billed: u64 = responses
        .iter()
        .map(|r| r.as_ref().unwrap().usage.total_tokens())
        .sum();
    let one = responses
        .iter()
        .find(|r| r.as_ref().unwrap().cache.is_none())
        .unwrap()
        .as_ref()
        .unwrap();
    assert_eq!(
        billed,
        one.usage.total_tokens(),
        "only the call that went upstream is billed"
    );
}

#[tokio::test]
async fn sampled_calls_need_an_opt_in_and_errors_are_never_cached() {
    let (upstream, client) = setup(memory_cache().await).await;
    let hot = || RequestOptions::new().temperature(0.9);
    client.request("mock", ask("s", "q"), hot()).await.unwrap();
    client.request("mock", ask("s", "q"), hot()).await.unwrap();
    assert_eq!(
        upstream.stats().requests,
        2,
        "temperature > 0 is not cached by default"
    );
    let with = |rollout: &str| {
        let mut options = hot();
        options.cache = CachePolicy {
            rollout: Some(rollout.to_owned()),
            ..CachePolicy::default()
        };
        options
    };
    client
        .request("mock", ask("s", "q"), with("r1"))
        .await
        .unwrap();
    let again = client
        .request("mock", ask("s", "q"), with("r1"))
        .await
        .unwrap();
    assert!(again.cache.is_some());
    client
        .request("mock", ask("s", "q"), with("r2"))
        .await
        .unwrap();
    assert_eq!(upstream.stats().requests, 4, "a rollout id enters the key");
    let mut skip = RequestOptions::new();
    skip.cache.mode = CacheMode::Skip;
    client
        .request("mock", ask("s", "fresh"), skip.clone())
        .await
        .unwrap();
    client
        .request("mock", ask("s", "fresh"), skip)
        .await
        .unwrap();
    assert_eq!(upstream.stats().requests, 6);

    upstream.enqueue([Fault::Status {
        code: 500,
        retry_after_secs: None,
        message: "boom".into(),
    }]);
    client
        .request("mock", ask("s", "fails once"), RequestOptions::new())
        .await
        .unwrap_err();
    let ok = client
        .request("mock", ask("s", "fails once"), RequestOptions::new())
        .await
        .unwrap();
    assert!(ok.cache.is_none(), "the error was not cached");
    assert_eq!(upstream.stats().requests, 8);
}

#[tokio::test]
async fn semantic_hits_stay_within_their_conversation_scope() {
    let cache = ResponseCache::builder()
        .l1(1_000, 1 << 24)
        .l3(Arc::new(LexicalEmbedder::new()))
        .build()
        .await
        .unwrap();
    let (upstream, client) = setup(cache).await;
    client
        .request(
            "mock",
            ask(
                "You are a geographer.",
                "What is the capital city of France?",
            ),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    let paraphrase = client
        .request(
            "mock",
            ask(
                "You are a geographer.",
                "what is the capital city of france",
            ),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    let served = paraphrase
        .cache
        .expect("a near-identical question in the same scope hits L3");
    assert_eq!(served.tier, "l3");
    assert!(served.similarity.unwrap() > 0.8);
    assert_eq!(upstream.stats().requests, 1);
    // The same words under another system prompt, or after other turns, miss.
    let other_system = client
        .request(
            "mock",
            ask("You are a poet.", "what is the capital city of france"),
            RequestOptions::new(),
        )
        .await
        .unwrap();
    assert!(other_system.cache.is_none());
    let mut turns = ask("You are a geographer.", "Tell me about Italy.");
    turns.push(Message::assistant("Italy is in Europe."));
    turns.push(Message::user("what is the capital city of france"));
    let other_history = client
        .request("mock", turns, RequestOptions::new())
        .await
        .unwrap();
    assert!(other_history.cache.is_none());
    assert_eq!(upstream.stats().requests, 3);
}

#[tokio::test]
async fn no_api_key_reaches_the_disk_tier() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ResponseCache::builder()
        .l2_redb(dir.path(), 1 << 26)
        .build()
        .await
        .unwrap();
    let (upstream, client) = setup(cache).await;
    client
        .request("mock", ask("s", "store me"), RequestOptions::new())
        .await
        .unwrap();
    let hit = client
        .request("mock", ask("s", "store me"), RequestOptions::new())
        .await
        .unwrap();
    assert_eq!(hit.cache.unwrap().tier, "l2");
    assert_eq!(upstream.stats().requests, 1);
    drop(client);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(KEY), "the API key is in the cache file");
        assert!(
            !text.contains("127.0.0.1"),
            "the base URL is in the cache file"
        );
    }
}

#[tokio::test]
async fn the_api_embedder_embeds_through_the_protected_client_for_l3() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let raw = RawProvider {
        kind: Some("openai".into()),
        base_url: Some(upstream.base_url()),
        ..RawProvider::default()
    };
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(ProviderConfig::validate("mock", &raw, None, &|_| None).unwrap())
        .await
        .unwrap();
    let mut events = client.events().subscribe("t", Delivery::Lossless);
    let embedder = dspex_client::ApiEmbedder::new(&client, "mock", None, 0.95)
        .await
        .unwrap();
    use dspex_cache::Embedder;
    assert!(embedder.dimension() > 0);
    assert_eq!(embedder.name(), "api");
    let vectors = embedder
        .embed(&["a question", "a question", "something else"])
        .await
        .unwrap();
    assert_eq!(vectors.len(), 3);
    for v in &vectors {
        assert_eq!(v.len(), embedder.dimension());
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "L2-normalised: {norm}");
    }
    assert_eq!(vectors[0], vectors[1], "deterministic for the same text");
    // Both calls went through the client: each has a completion event.
    let mut embeddings = 0;
    while let Some(event) = events.try_recv() {
        if let EventKind::RequestCompleted(c) = &event.kind {
            assert_eq!(
                c.call.operation,
                dspex_client::events::Operation::Embeddings
            );
            embeddings += 1;
        }
    }
    assert_eq!(embeddings, 2, "the dimension probe and the embed call");
    // It serves as a cache's L3 embedder.
    let cache = ResponseCache::builder()
        .l3(Arc::new(embedder))
        .build()
        .await
        .unwrap();
    assert_eq!(cache.threshold(), Some(0.95));
}
