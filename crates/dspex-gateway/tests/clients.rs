//! Real client libraries against the gateway over loopback: the official
//! `openai` Python SDK (tests/python/openai_sdk.py).
//!
//! Needs a Python with the SDK installed, named by `DSPEX_TEST_PYTHON`
//! (`.ci/run` makes one with `scripts/python-clients`); marked `#[ignore]`
//! so a plain `cargo test` reports it as not run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, ProviderConfig};
use dspex_core::config::ConfigLoader;
use dspex_gateway::{CONFIG_KEYS, Gateway, GatewayConfig};
use dspex_mock::{MockConfig, MockServer};

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
        ..RawProvider::default()
    };
    tweak(&mut raw);
    ProviderConfig::validate(id, &raw, None, &|_| {
        Some("sk-upstream-SECRET-0123456789".to_owned())
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs DSPEX_TEST_PYTHON: a Python with the openai SDK (scripts/python-clients)"]
async fn the_openai_python_sdk_works_against_the_gateway() {
    let python = std::env::var("DSPEX_TEST_PYTHON").expect("DSPEX_TEST_PYTHON");
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let client = Client::from_config(&ClientConfig::default()).await.unwrap();
    client
        .add_provider(provider("oa", "openai", &upstream.base_url(), |_| {}))
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
    client
        .add_provider(provider("limited", "openai", &upstream.base_url(), |raw| {
            raw.rpm = Some(1);
            raw.max_wait_ms = Some(1);
        }))
        .await
        .unwrap();
    let loader = ConfigLoader::builder(CONFIG_KEYS)
        .toml_str("[gateway]\nlisten = \"127.0.0.1:0\"\nauth = \"none\"\n[gateway.models.fast]\nprovider = \"oa\"\n")
        .without_env()
        .build()
        .unwrap();
    let gateway = Gateway::builder(client, GatewayConfig::load(&loader).unwrap())
        .build()
        .await
        .unwrap();
    let listener = gateway.bind().await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        gateway
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&base)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains("SECRET") && !stderr.contains("SECRET"));
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}
