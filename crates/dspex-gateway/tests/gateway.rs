//! The gateway over real HTTP: a reqwest client talks to `Gateway::serve`
//! on loopback, which talks to the project's mock upstream on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig, ResponseCache};
use dspex_core::config::ConfigLoader;
use dspex_gateway::{CONFIG_KEYS, Gateway, GatewayConfig};
use dspex_mock::{Fault, MockConfig, MockServer};
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn provider(
    id: &str,
    kind: &str,
    base_url: &str,
    tweak: impl FnOnce(&mut RawProvider),
) -> ProviderConfig {
    let mut raw = RawProvider {
        kind: Some(kind.into()),
        base_url: Some(base_url.into()),
        model: Some(
            if kind == "openai" {
                "gpt-4o-mini"
            } else {
                "claude-3-5-haiku-latest"
            }
            .into(),
        ),
        retry_base_ms: Some(5),
        retry_max_ms: Some(50),
        ..RawProvider::default()
    };
    tweak(&mut raw);
    ProviderConfig::validate(id, &raw, None, &|_| {
        Some("sk-upstream-SECRET-0123456789".to_owned())
    })
    .unwrap()
}

struct Running {
    base: String,
    http: reqwest::Client,
    upstream: MockServer,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<Result<(), dspex_gateway::GatewayError>>,
}

const CONFIG: &str = r#"
[gateway]
listen = "127.0.0.1:0"
auth = "none"
max_body_bytes = 65536
shutdown_grace_ms = 5000

[gateway.models.fast]
provider = "oa"
model = "gpt-4o-mini"
fallbacks = ["claude/claude-3-5-haiku-latest"]
"#;

async fn start_with(
    mock: MockConfig,
    cache: bool,
    tweak_oa: impl FnOnce(&mut RawProvider),
) -> Running {
    let upstream = MockServer::start(mock).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url(), tweak_oa))
        .await
        .unwrap();
    client
        .add_provider(provider(
            "claude",
            "anthropic",
            &upstream.anthropic_base_url(),
            |_| {},
        ))
        .await
        .unwrap();
    if cache {
        let cache = ResponseCache::builder()
            .l1(1_000, 1 << 24)
            .build()
            .await
            .unwrap();
        client.set_cache(cache).unwrap();
    }
    let loader = ConfigLoader::builder(CONFIG_KEYS)
        .toml_str(CONFIG)
        .without_env()
        .build()
        .unwrap();
    let gateway = Gateway::builder(client, GatewayConfig::load(&loader).unwrap())
        .build()
        .await
        .unwrap();
    let listener = gateway.bind().await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        base,
        http: reqwest::Client::new(),
        upstream,
        stop: Some(stop),
        served,
    }
}

async fn start() -> Running {
    start_with(MockConfig::default(), false, |_| {}).await
}

impl Running {
    async fn post(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

fn hi(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi there"}]})
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_chat_through_an_alias_answers_in_openai_format_with_dspex_headers() {
    let gw = start().await;
    let response = gw.post(&hi("fast")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-dspex-provider"), "oa");
    assert_eq!(header(&response, "x-dspex-cache"), "miss");
    assert!(header(&response, "x-dspex-correlation-id").len() >= 16);
    assert!(header(&response, "x-dspex-model").starts_with("gpt-4o-mini"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(gw.upstream.stats().requests, 1);
}

#[tokio::test]
async fn provider_slash_model_and_anthropic_translation_work() {
    let gw = start().await;
    let response = gw.post(&hi("claude/claude-3-5-haiku-latest")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-dspex-provider"), "claude");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

/// The SSE body's `data:` payloads, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn streams_chunks_then_usage_then_done() {
    let gw = start().await;
    let mut body = hi("fast");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = gw.post(&body).await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("text/event-stream"));
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["content"].as_str())
        })
        .collect();
    assert_eq!(text, "echo: hi there");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert!(chunks.iter().any(|c| {
        c["choices"]
            .get(0)
            .is_some_and(|ch| ch["finish_reason"] == "stop")
    }));

    // Without include_usage there is no usage chunk.
    body["stream_options"] = json!({"include_usage": false});
    let data = sse_data(&gw.post(&body).await.text().await.unwrap());
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{data:?}");
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let gw = start().await;
    let cases = [
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model",
        ),
        (
            json!({"model": "fast", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (json!({"model": "fast", "messages": []}), 400, "messages"),
        (
            json!({"model": "claude/claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}}),
            400,
            "logit_bias",
        ),
    ];
    for (body, status, param) in cases {
        let response = gw.post(&body).await;
        assert_eq!(response.status(), status, "{body}");
        assert!(!header(&response, "x-dspex-correlation-id").is_empty());
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(
        gw.upstream.stats().requests,
        0,
        "no invalid request reached the upstream"
    );

    // An alias whose fallback cannot take a field is refused up front too.
    let mut body = hi("fast");
    body["user"] = json!("u-1");
    assert_eq!(gw.post(&body).await.status(), 400);
    // Straight to the OpenAI provider, the unknown field passes.
    let mut body = hi("oa/gpt-4o-mini");
    body["user"] = json!("u-1");
    assert_eq!(gw.post(&body).await.status(), 200);

    let big =
        json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(70_000)}]});
    let response = gw.post(&big).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gateway.max_body_bytes")
    );

    let response = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
}

#[tokio::test]
async fn a_failing_provider_falls_back_and_upstream_limits_keep_their_status() {
    let gw = start_with(MockConfig::default(), false, |raw| {
        raw.max_retries = Some(0);
    })
    .await;
    gw.upstream.enqueue([Fault::server_error()]);
    let response = gw.post(&hi("fast")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-dspex-provider"), "claude");

    // No fallback for provider/model: the upstream's 429 reaches the caller
    // with its Retry-After.
    gw.upstream.enqueue([Fault::rate_limited(7)]);
    let response = gw.post(&hi("oa/gpt-4o-mini")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "7");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error");

    // The upstream refusing the gateway's own key is not the caller's 401.
    gw.upstream.enqueue([Fault::status(401)]);
    let response = gw.post(&hi("oa/gpt-4o-mini")).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn the_cache_answers_repeats_and_cache_headers_control_it() {
    let gw = start_with(MockConfig::default(), true, |_| {}).await;
    let first = gw.post(&hi("fast")).await;
    assert_eq!(header(&first, "x-dspex-cache"), "miss");
    let second = gw.post(&hi("fast")).await;
    assert_eq!(header(&second, "x-dspex-cache"), "l1");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
    assert_eq!(gw.upstream.stats().requests, 1);

    let refreshed = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("cache-control", "no-cache")
        .json(&hi("fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&refreshed, "x-dspex-cache"), "miss");
    let skipped = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("x-dspex-cache", "skip")
        .json(&hi("fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&skipped, "x-dspex-cache"), "miss");
    assert_eq!(gw.upstream.stats().requests, 3);
}

#[tokio::test]
async fn models_health_and_readiness() {
    let gw = start().await;
    let models: Value = gw
        .http
        .get(format!("{}/v1/models", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["fast", "claude/claude-3-5-haiku-latest", "oa/gpt-4o-mini"]
    );
    let health = gw
        .http
        .get(format!("{}/healthz", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = gw
        .http
        .get(format!("{}/readyz", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["providers"]["oa"]["circuit"], "closed");
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let mut gw = start_with(
        MockConfig {
            latency_ms: 300,
            ..MockConfig::default()
        },
        false,
        |_| {},
    )
    .await;
    let http = gw.http.clone();
    let url = format!("{}/v1/chat/completions", gw.base);
    let in_flight = tokio::spawn(async move { http.post(url).json(&hi("fast")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.stop.take().unwrap().send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi there");
    tokio::time::timeout(Duration::from_secs(5), &mut gw.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // And nothing new is accepted.
    assert!(
        gw.http
            .get(format!("{}/healthz", gw.base))
            .send()
            .await
            .is_err()
    );
}
