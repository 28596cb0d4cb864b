#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::Duration;

use dspex_analytics::budget::BudgetPeriod;
use dspex_analytics::config::{AnalyticsConfig, DEFAULT_STORE};
use dspex_core::config::ConfigLoader;

fn load(toml: &str) -> Result<AnalyticsConfig, dspex_analytics::AnalyticsError> {
    let loader = ConfigLoader::builder(dspex_analytics::CONFIG_KEYS)
        .toml_str(toml)
        .without_env()
        .build()?;
    AnalyticsConfig::load(&loader)
}

#[test]
fn defaults_without_a_section() {
    let config = load("").unwrap();
    assert!(config.enabled);
    assert_eq!(config.store, DEFAULT_STORE);
    assert_eq!(config.recorder.batch_size, 1000);
    assert_eq!(config.recorder.flush_interval, Duration::from_millis(50));
    assert!(config.budgets.is_empty());
}

#[test]
fn full_section() {
    let config = load(
        r#"
[analytics]
store = "postgres://dspex:hunter2@db.internal/analytics"
schema = "dspex"
batch_size = 500
flush_interval_ms = 20

[[analytics.budgets]]
name = "openai-daily"
provider = "openai"
period = "day"
limit_usd = 25.0

[[analytics.budgets]]
tag = "team=search"
period = "month"
limit_usd = 100
warn_at = 0.5
hard = false
"#,
    )
    .unwrap();
    assert_eq!(config.recorder.batch_size, 500);
    assert_eq!(config.recorder.flush_interval, Duration::from_millis(20));
    assert_eq!(config.schema.as_deref(), Some("dspex"));
    assert_eq!(config.budgets.len(), 2);
    let daily = &config.budgets[0];
    assert_eq!(daily.name, "openai-daily");
    assert_eq!(daily.limit_nanos, 25_000_000_000);
    assert_eq!(daily.period, BudgetPeriod::Day);
    assert_eq!(daily.warn_at, Some(0.8));
    assert!(daily.hard);
    let team = &config.budgets[1];
    assert_eq!(team.name, "team=search/month");
    assert_eq!(
        team.scope.tag,
        Some(("team".to_owned(), "search".to_owned()))
    );
    assert!(!team.hard);
    // The password never shows.
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    let json = serde_json::to_string(&config).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[analytics]\nbatch_size = 0", "analytics.batch_size"),
        (
            "[analytics]\nflush_interval_ms = 0",
            "analytics.flush_interval_ms",
        ),
        ("[analytics]\nmax_pending = 10", "analytics.max_pending"),
        ("[analytics]\nstor = \"x\"", "stor"),
        (
            "[[analytics.budgets]]\nperiod = \"week\"\nlimit_usd = 1",
            "analytics.budgets[0].period",
        ),
        (
            "[[analytics.budgets]]\nperiod = \"day\"\nlimit_usd = -1",
            "analytics.budgets[0].limit_usd",
        ),
        (
            "[[analytics.budgets]]\nperiod = \"day\"\nlimit_usd = 1\nwarn_at = 2",
            "analytics.budgets[0].warn_at",
        ),
        (
            "[[analytics.budgets]]\nperiod = \"day\"\nlimit_usd = 1\ntag = \"team\"",
            "analytics.budgets[0].tag",
        ),
        (
            "[analytics.prices.\"openai/gpt-4o\"]\ninput_per_million = -2",
            "analytics.prices.\"openai/gpt-4o\".input_per_million",
        ),
        (
            "[analytics.prices.\"nomodel\"]\ninput_per_million = 2",
            "analytics.prices.\"nomodel\"",
        ),
        (
            "[analytics.prices.\"a/b\"]\ninput_per_million = 2\neffective = \"soon\"",
            "analytics.prices.\"a/b\"",
        ),
    ];
    for (toml, key) in cases {
        let error = load(toml).expect_err(toml).to_string();
        assert!(
            error.contains(key),
            "`{toml}` gave `{error}`, expected key {key}"
        );
    }
}

#[test]
fn duplicate_budget_names_are_refused() {
    let error = load(
        "[[analytics.budgets]]\nname = \"x\"\nperiod = \"day\"\nlimit_usd = 1\n[[analytics.budgets]]\nname = \"x\"\nperiod = \"month\"\nlimit_usd = 1",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("analytics.budgets[1].name"), "{error}");
}
