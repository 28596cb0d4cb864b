//! The config loader: any TOML text, through the loader and every section's
//! validation the CLI runs (providers, cache, analytics, optimize).
#![no_main]

use dspex_core::config::ConfigLoader;
use libfuzzer_sys::fuzz_target;

fn keys() -> Vec<&'static str> {
    [
        dspex_client::config::CONFIG_KEYS,
        dspex_cache::CONFIG_KEYS,
        dspex_analytics::CONFIG_KEYS,
        dspex_prompt::optimize::config::CONFIG_KEYS,
    ]
    .concat()
}

fuzz_target!(|data: &str| {
    let loader = match ConfigLoader::builder(&keys())
        .toml_str(data)
        .without_env()
        .build()
    {
        Ok(loader) => loader,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    // Every API key variable is "set", so validation goes past the key check
    // (and other variables, such as OPENAI_BASE_URL, are not).
    let env = |name: &str| name.contains("KEY").then(|| "sk-fuzz-secret".to_owned());
    match dspex_client::ClientConfig::load_with_env(&loader, &env) {
        Ok(config) => {
            // Secrets never show in Debug.
            assert!(!format!("{config:?}").contains("sk-fuzz-secret"));
        }
        Err(error) => assert!(!error.to_string().contains("sk-fuzz-secret")),
    }
    if let Err(error) = dspex_cache::CacheConfig::load(&loader) {
        assert!(!error.to_string().is_empty());
    }
    if let Err(error) = dspex_analytics::AnalyticsConfig::load(&loader) {
        assert!(!error.to_string().is_empty());
    }
    if let Err(error) = dspex_prompt::optimize::config::OptimizeConfig::load(&loader) {
        assert!(!error.to_string().is_empty());
    }
});
