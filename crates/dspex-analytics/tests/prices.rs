#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use dspex_analytics::prices::{Price, PriceTable, TokenUsage, format_usd};
use dspex_analytics::{CallRecord, config::AnalyticsConfig};
use dspex_core::config::ConfigLoader;

use common::{Spec, prices, usage};

// Prices from data/prices.json (pico-USD per token):
// openai/gpt-4o-mini: input 150_000, output 600_000, cached 75_000
// anthropic/claude-sonnet-4-20250514: input 3_000_000, output 15_000_000,
//   cached 300_000, cache write 3_750_000

#[test]
fn gpt_4o_mini_cost_with_cached_tokens_matches_the_table_exactly() {
    let table = prices();
    // 12,345 input tokens of which 2,345 cached, 678 output:
    // 10,000 × $0.15/M + 2,345 × $0.075/M + 678 × $0.60/M
    // = $0.0015 + $0.000175875 + $0.0004068 = $0.002082675
    let usage = TokenUsage {
        input: 12_345,
        output: 678,
        cached_input: 2_345,
        cache_write: 0,
    };
    let cost = table
        .cost("openai", "gpt-4o-mini", None, 0, &usage)
        .unwrap();
    assert_eq!(cost.nanos, 2_082_675);
    assert_eq!(cost.key, "openai/gpt-4o-mini");
    assert!(cost.version.starts_with("bundled@"), "{}", cost.version);
    // A thousand such calls: $2.082675, to the cent $2.08.
    assert_eq!(cost.nanos * 1000, 2_082_675_000);
    assert_eq!(format_usd(cost.nanos * 1000), "$2.082675");
}

#[test]
fn anthropic_cost_prices_cache_reads_and_writes() {
    let table = prices();
    // 10,000 input = 4,000 uncached + 4,000 cache reads + 2,000 cache writes; 500 output:
    // 4,000 × $3/M + 4,000 × $0.30/M + 2,000 × $3.75/M + 500 × $15/M
    // = $0.012 + $0.0012 + $0.0075 + $0.0075 = $0.0282
    let usage = TokenUsage {
        input: 10_000,
        output: 500,
        cached_input: 4_000,
        cache_write: 2_000,
    };
    let cost = table
        .cost("anthropic", "claude-sonnet-4-20250514", None, 0, &usage)
        .unwrap();
    assert_eq!(cost.nanos, 28_200_000);
}

#[test]
fn lookup_is_tolerant_of_naming() {
    let table = prices();
    let one_m_in = TokenUsage {
        input: 1_000_000,
        ..TokenUsage::default()
    };
    // provider/model in the model name, with an unrelated provider id.
    assert_eq!(
        table
            .cost("proxy", "openai/gpt-4o-mini", None, 0, &one_m_in)
            .unwrap()
            .nanos,
        150_000_000
    );
    // A bare model name listed by exactly one provider.
    assert_eq!(
        table
            .cost("my-openai", "gpt-4o-mini", None, 0, &one_m_in)
            .unwrap()
            .nanos,
        150_000_000
    );
    // Case and provider aliases.
    assert_eq!(
        table.resolve("OpenAI", "GPT-4o-mini"),
        Some("openai/gpt-4o-mini")
    );
    assert!(table.resolve("together_ai", "nonexistent").is_none());
    // The response model is used when the requested one is unknown (an alias).
    assert_eq!(
        table
            .cost("openai", "my-alias", Some("gpt-4o-mini"), 0, &one_m_in)
            .unwrap()
            .nanos,
        150_000_000
    );
    // Embeddings are priced too: text-embedding-3-small is $0.02 per million.
    assert_eq!(
        table
            .cost("openai", "text-embedding-3-small", None, 0, &one_m_in)
            .unwrap()
            .nanos,
        20_000_000
    );
}

#[test]
fn unknown_models_are_unpriced_never_zero() {
    let table = prices();
    let record = Spec::new("local", "my-finetune", usage(1000, 200, 0, 0))
        .record("2026-11-24T10:00:00Z", &table);
    assert!(record.is_unpriced());
    assert_eq!(record.cost_nanos, None);
    assert_eq!(record.price_version, None);
    // Its tokens are still recorded.
    assert_eq!(record.usage.input, 1000);
    assert_eq!(record.usage.output, 200);
    // With an empty table everything is unpriced.
    let empty = PriceTable::empty();
    assert!(
        CallRecord::from_completion(
            0,
            None,
            &Spec::new("openai", "gpt-4o", usage(1, 1, 0, 0)).completion(),
            &empty
        )
        .is_unpriced()
    );
}

#[test]
fn effective_dates_select_the_price_in_force() {
    let mut table = PriceTable::empty();
    let old = Price {
        input: 1_000_000,
        output: 2_000_000,
        cached_input: None,
        cache_write: None,
    };
    let new = Price {
        input: 500_000,
        ..old
    };
    table.insert("acme/m1", old, Some("2026-01-01")).unwrap();
    table.insert("acme/m1", new, Some("2026-06-01")).unwrap();
    let u = TokenUsage {
        input: 1_000_000,
        cached_input: 1_000,
        ..TokenUsage::default()
    };
    let before = table
        .cost("acme", "m1", None, common::ms("2026-03-01T00:00:00Z"), &u)
        .unwrap();
    let after = table
        .cost("acme", "m1", None, common::ms("2026-07-01T00:00:00Z"), &u)
        .unwrap();
    // Cached reads fall back to the input price when the table has none.
    assert_eq!(before.nanos, 1_000_000_000);
    assert_eq!(after.nanos, 500_000_000);
    assert_eq!(before.version, "override@2026-01-01");
    assert_eq!(after.version, "override@2026-06-01");
    // Before every effective date: the earliest price.
    let early = table
        .cost("acme", "m1", None, common::ms("2025-01-01T00:00:00Z"), &u)
        .unwrap();
    assert_eq!(early.nanos, 1_000_000_000);
    assert!(table.insert("no-slash", old, None).is_err());
    assert!(table.insert("acme/m2", old, Some("2026-13-01")).is_err());
}

#[test]
fn config_overrides_and_adds_prices() {
    let loader = ConfigLoader::builder(dspex_analytics::CONFIG_KEYS)
        .toml_str(
            r#"
[analytics.prices."openai/gpt-4o-mini"]
input_per_million = 1.0
output_per_million = 2.0
cached_input_per_million = 0.5

[analytics.prices."acme/house-model"]
input_per_million = 0.3
"#,
        )
        .without_env()
        .build()
        .unwrap();
    let config = AnalyticsConfig::load(&loader).unwrap();
    let u = TokenUsage {
        input: 2_000_000,
        output: 1_000_000,
        cached_input: 1_000_000,
        cache_write: 0,
    };
    // 1M × $1 + 1M × $0.5 + 1M × $2 = $3.50
    assert_eq!(
        config
            .prices
            .cost("openai", "gpt-4o-mini", None, 0, &u)
            .unwrap()
            .nanos,
        3_500_000_000
    );
    let house = config
        .prices
        .cost("acme", "house-model", None, 0, &u)
        .unwrap();
    // 2M input (1M cached at the input price) × $0.3 = $0.60
    assert_eq!(house.nanos, 600_000_000);
    assert_eq!(house.version, "override");
    // The rest of the bundled table is still there.
    assert!(
        config
            .prices
            .resolve("anthropic", "claude-sonnet-4-20250514")
            .is_some()
    );
}

#[test]
fn bundled_table_has_the_main_providers() {
    let table = prices();
    assert!(table.len() >= 100 && table.len() <= 500, "{}", table.len());
    for provider in [
        "openai/",
        "anthropic/",
        "gemini/",
        "mistral/",
        "deepseek/",
        "groq/",
    ] {
        assert!(
            table.entries().iter().any(|(k, _)| k.starts_with(provider)),
            "no {provider} prices"
        );
    }
}

#[test]
fn local_models_cost_zero_and_are_priced() {
    // A call to a GGUF model run in process (`gen_ai.system` "local") is
    // free: priced at zero, its tokens real, never flagged unpriced.
    let table = prices();
    let mut completion =
        Spec::new("smol", "SmolLM2-135M-Instruct", usage(300, 20, 280, 0)).completion();
    completion.call.system = dspex_analytics::prices::LOCAL_SYSTEM;
    let record = CallRecord::from_completion(0, None, &completion, &table);
    assert!(!record.is_unpriced());
    assert_eq!(record.cost_nanos, Some(0));
    assert_eq!(record.price_version.as_deref(), Some("local"));
    assert_eq!(record.usage.input, 300);
    assert_eq!(record.usage.output, 20);
    // The same model name under another system is unpriced, not free.
    let remote = Spec::new("smol", "SmolLM2-135M-Instruct", usage(300, 20, 0, 0))
        .record("2026-11-24T10:00:00Z", &table);
    assert!(remote.is_unpriced());
}

/// The model a hosted provider uses when its config names none is one the
/// bundled table prices, so a budget can weigh the default's calls (an
/// unpriced call is let through unweighed).
#[test]
fn every_hosted_providers_default_model_is_priced() {
    use dspex_client::config::{CONFIG_KEYS, ClientConfig, RawClientConfig};
    let table = PriceTable::bundled().unwrap();
    for kind in ["openai", "anthropic"] {
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(format!(
                "[providers.p]\nkind = \"{kind}\"\napi_key_env = \"KEY\""
            ))
            .without_env()
            .build()
            .unwrap();
        let raw = RawClientConfig::from_loader(&loader).unwrap();
        let config = ClientConfig::validate(&raw, &|_| Some("sk-test".into())).unwrap();
        let provider = &config.providers["p"];
        let now = dspex_analytics::time::unix_ms(std::time::SystemTime::now());
        let price = table.lookup(provider.kind.system(), &provider.model, now);
        assert!(
            price.is_some(),
            "{kind}'s default model `{}` has no bundled price",
            provider.model
        );
    }
}
