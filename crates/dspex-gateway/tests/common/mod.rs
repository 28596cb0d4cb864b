//! What the gateway's integration tests share: providers in front of the
//! project's mock upstream, and a gateway served on loopback with keys in a
//! real SQLite file.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unreachable_pub,
    missing_docs
)]

use std::sync::Arc;

use dspex_analytics::{PriceTable, Recorder, RecorderHandle, RecorderOptions, Store};
use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig, ResponseCache};
use dspex_core::config::{ConfigLoader, Secret};
use dspex_gateway::{CONFIG_KEYS, Gateway, GatewayConfig};
use dspex_mock::{MockConfig, MockServer};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The upstream key every test provider sends: it must never come back.
pub const UPSTREAM_KEY: &str = "sk-upstream-SECRET-0123456789";
/// The admin key of test gateways.
pub const ADMIN_KEY: &str = "admin-SECRET-key-4242";

pub fn provider(
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
    ProviderConfig::validate(id, &raw, None, &|_| Some(UPSTREAM_KEY.to_owned())).unwrap()
}

/// A gateway on loopback in front of a mock, with `oa` (OpenAI) and
/// `claude` (Anthropic) providers.
pub struct Served {
    pub base: String,
    pub http: reqwest::Client,
    pub upstream: MockServer,
    pub store: Store,
    pub recorder: Option<RecorderHandle>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), dspex_gateway::GatewayError>>>,
}

#[derive(Default)]
pub struct Options {
    /// Extra `[gateway]` TOML lines.
    pub gateway_toml: String,
    pub cache: bool,
    pub record: bool,
    pub mock: MockConfig,
}

pub async fn serve(options: Options) -> Served {
    let upstream = MockServer::start(options.mock).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url(), |raw| {
            raw.embedding_model = Some("text-embedding-3-small".into());
        }))
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
    if options.cache {
        let cache = ResponseCache::builder()
            .l1(1_000, 1 << 24)
            .build()
            .await
            .unwrap();
        client.set_cache(cache).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("analytics.sqlite").to_str().unwrap(), None)
        .await
        .unwrap();
    let prices = Arc::new(PriceTable::bundled().unwrap());
    let recorder = options.record.then(|| {
        Recorder::attach(
            client.events(),
            store.clone(),
            Arc::clone(&prices),
            RecorderOptions::default(),
        )
    });
    let toml = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n{}\n[gateway.models.fast]\nprovider = \"oa\"\nmodel = \"gpt-4o-mini\"\n",
        options.gateway_toml
    );
    let loader = ConfigLoader::builder(CONFIG_KEYS)
        .toml_str(&toml)
        .without_env()
        .build()
        .unwrap();
    let gateway = Gateway::builder(client, GatewayConfig::load(&loader).unwrap())
        .store(store.clone())
        .prices(prices)
        .admin_key(Secret::new(ADMIN_KEY))
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
    Served {
        base,
        http: reqwest::Client::new(),
        upstream,
        store,
        recorder,
        dir,
        stop: Some(stop),
        served: Some(served),
    }
}

impl Served {
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }

    pub async fn chat(&self, key: &str, model: &str, text: &str) -> reqwest::Response {
        self.post(
            "/v1/chat/completions",
            Some(key),
            &json!({"model": model, "messages": [{"role": "user", "content": text}]}),
        )
        .await
    }

    /// `POST /admin/keys` as the admin; returns the key's text.
    pub async fn create_key(&self, body: Value) -> String {
        let response = self.post("/admin/keys", Some(ADMIN_KEY), &body).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let body: Value = response.json().await.unwrap();
        body["key"].as_str().unwrap().to_owned()
    }

    /// Stops the gateway and flushes the recorder.
    pub async fn stop(&mut self) -> Store {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
        if let Some(recorder) = self.recorder.take() {
            recorder.shutdown().await.unwrap();
        }
        self.store.clone()
    }
}

pub fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
