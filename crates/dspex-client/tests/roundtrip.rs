//! Property round-trip of the provider config: generated settings, encoded
//! as TOML by the `toml` crate and read back through the config loader and
//! validation, come out as the validated values that were written.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::time::Duration;

use dspex_client::config::CONFIG_KEYS;
use dspex_client::{ClientConfig, ProviderKind};
use dspex_core::config::ConfigLoader;
use proptest::collection::btree_map;
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Generated {
    id: String,
    anthropic: bool,
    base_url: String,
    model: String,
    key_env: Option<String>,
    pool_size: u32,
    timeout_ms: u64,
    connect_timeout_ms: u64,
    max_wait_ms: u64,
    default_max_tokens: u32,
    stream_usage: bool,
    retry_malformed: bool,
    headers: BTreeMap<String, String>,
}

/// Milliseconds TOML can hold (its integers are signed 64-bit).
fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..100_000, 1u64..=i64::MAX as u64]
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        "[a-zA-Z0-9_-]{1,16}",
        any::<bool>(),
        (
            "(http|https)",
            "[a-z][a-z0-9-]{0,12}(\\.[a-z]{2,6})?",
            proptest::option::of(1u16..),
        ),
        "\\PC{1,24}",
        proptest::option::of("[A-Z][A-Z0-9_]{0,16}"),
        1u32..=4096,
        (millis(), millis(), millis()),
        1u32..,
        (any::<bool>(), any::<bool>()),
        btree_map("[a-z][a-z0-9-]{0,12}", "[ -~]{0,24}", 0..4),
    )
        .prop_filter("a model is not blank", |g| !g.3.trim().is_empty())
        .prop_map(
            |(
                id,
                anthropic,
                (scheme, host, port),
                model,
                key_env,
                pool_size,
                (timeout_ms, connect_timeout_ms, max_wait_ms),
                default_max_tokens,
                (stream_usage, retry_malformed),
                headers,
            )| Generated {
                id,
                anthropic,
                base_url: match port {
                    Some(port) => format!("{scheme}://{host}:{port}/v1"),
                    None => format!("{scheme}://{host}/v1"),
                },
                model,
                key_env,
                pool_size,
                timeout_ms,
                connect_timeout_ms,
                max_wait_ms,
                default_max_tokens,
                stream_usage,
                retry_malformed,
                headers,
            },
        )
}

/// The config file of `g`, written by the `toml` crate's encoder.
fn encode(g: &Generated) -> String {
    let mut provider = toml::Table::new();
    let kind = if g.anthropic { "anthropic" } else { "openai" };
    provider.insert("kind".into(), kind.into());
    provider.insert("base_url".into(), g.base_url.clone().into());
    provider.insert("model".into(), g.model.clone().into());
    if let Some(env) = &g.key_env {
        provider.insert("api_key_env".into(), env.clone().into());
    }
    provider.insert("pool_size".into(), i64::from(g.pool_size).into());
    for (name, ms) in [
        ("timeout_ms", g.timeout_ms),
        ("connect_timeout_ms", g.connect_timeout_ms),
        ("max_wait_ms", g.max_wait_ms),
    ] {
        provider.insert(name.into(), i64::try_from(ms).unwrap().into());
    }
    provider.insert(
        "default_max_tokens".into(),
        i64::from(g.default_max_tokens).into(),
    );
    provider.insert("stream_usage".into(), g.stream_usage.into());
    provider.insert("retry_malformed".into(), g.retry_malformed.into());
    let headers: toml::Table = g
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), toml::Value::from(v.clone())))
        .collect();
    provider.insert("headers".into(), headers.into());
    let mut providers = toml::Table::new();
    providers.insert(g.id.clone(), provider.into());
    let mut root = toml::Table::new();
    root.insert("default_provider".into(), g.id.clone().into());
    root.insert("providers".into(), providers.into());
    toml::to_string(&root).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn provider_settings_round_trip_through_toml(g in generated()) {
        let text = encode(&g);
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(text.clone())
            .without_env()
            .build()
            .unwrap();
        let secret = "sk-roundtrip-secret";
        let config = ClientConfig::load_with_env(&loader, &|_| Some(secret.to_owned()))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        prop_assert_eq!(config.default_provider.as_deref(), Some(g.id.as_str()));
        let p = &config.providers[&g.id];
        prop_assert_eq!(&p.id, &g.id);
        let kind = if g.anthropic { ProviderKind::Anthropic } else { ProviderKind::OpenAi };
        prop_assert_eq!(p.kind, kind);
        prop_assert_eq!(&p.base_url, &g.base_url);
        prop_assert_eq!(&p.model, &g.model);
        prop_assert_eq!(p.api_key.as_ref().map(|k| k.env.clone()), g.key_env.clone());
        prop_assert!(p.api_key.as_ref().is_none_or(|k| k.secret.expose() == secret));
        prop_assert_eq!(p.pool_size, g.pool_size as usize);
        prop_assert_eq!(p.timeouts.total, Duration::from_millis(g.timeout_ms));
        prop_assert_eq!(p.timeouts.connect, Duration::from_millis(g.connect_timeout_ms));
        prop_assert_eq!(p.max_wait, Duration::from_millis(g.max_wait_ms));
        prop_assert_eq!(p.default_max_tokens, g.default_max_tokens);
        prop_assert_eq!(p.stream_usage, g.stream_usage);
        prop_assert_eq!(p.retry_malformed, g.retry_malformed);
        prop_assert_eq!(&p.headers, &g.headers);
        // What `config check` prints never holds the key.
        let printed = format!("{p:?}");
        prop_assert!(!printed.contains(secret), "{}", printed);
    }
}
