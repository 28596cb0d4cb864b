//! The composition root against a `dspex.toml` with every section: the one
//! the README's blocks make up, and `examples/dspex.toml`. Providers point at
//! the mock upstream over loopback; the cache and the analytics store live in
//! a temporary directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::Path;

use dspex::core::config::ConfigLoader;
use dspex::mock::{MockConfig, MockServer};
use dspex::{Message, RequestOptions, Runtime, RuntimeError, config_keys};

/// Every ```toml block of the README that belongs in a `dspex.toml` (not the
/// workflow file, and not the local model, which its own tests cover), in
/// one file. Blocks that open with top-level keys go first: after a table
/// header they would belong to that table.
fn readme_dspex_toml() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let mut blocks: Vec<String> = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match &mut block {
            None if line.trim() == "```toml" => block = Some(String::new()),
            Some(text) if line.trim() == "```" => {
                if !text.contains("[[steps]]") && !text.contains("kind = \"local\"") {
                    blocks.push(std::mem::take(text));
                }
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    let opens_with_keys = |text: &String| {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .is_some_and(|l| !l.starts_with('['))
    };
    blocks.sort_by_key(|b| !opens_with_keys(b));
    blocks.join("\n")
}

fn fake_keys(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test-openai".into()),
        "ANTHROPIC_API_KEY" => Some("sk-ant-test".into()),
        _ => None,
    }
}

/// A loader of `file`, with the providers pointed at `upstream` and the
/// cache and store put in `dir`.
fn loader(
    file: &Path,
    upstream: &MockServer,
    dir: &Path,
    providers: &[(&str, bool)],
) -> ConfigLoader {
    let mut overrides = String::new();
    for (id, anthropic) in providers {
        let url = if *anthropic {
            upstream.anthropic_base_url()
        } else {
            upstream.base_url()
        };
        overrides.push_str(&format!("[providers.{id}]\nbase_url = \"{url}\"\n"));
    }
    overrides.push_str(&format!(
        "[cache]\ndir = \"{}\"\n[analytics]\nstore = \"{}\"\n",
        dir.join("cache").display(),
        dir.join("calls.sqlite").display()
    ));
    ConfigLoader::builder(&config_keys())
        .file(file)
        .toml_str(overrides)
        .without_env()
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_readme_config_builds_a_runtime_with_every_section() {
    let text = readme_dspex_toml();
    for section in [
        "[providers.openai]",
        "[providers.claude]",
        "[cache]",
        "[analytics]",
        "[[analytics.budgets]]",
    ] {
        assert!(
            text.contains(section),
            "the README's dspex.toml lacks {section}:\n{text}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dspex.toml");
    std::fs::write(&file, &text).unwrap();
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let loader = loader(
        &file,
        &upstream,
        dir.path(),
        &[("openai", false), ("claude", true)],
    );
    let runtime = Runtime::from_config_with_env(&loader, &fake_keys)
        .await
        .unwrap();
    assert!(runtime.client().cache().is_some(), "[cache] is in force");
    assert_eq!(
        runtime.provider(None).unwrap(),
        "openai",
        "default_provider"
    );
    let ask = || {
        runtime.client().request(
            "openai",
            vec![Message::user("Name a prime.")],
            RequestOptions::new().max_tokens(20),
        )
    };
    let first = ask().await.unwrap();
    let second = ask().await.unwrap();
    assert!(first.cache.is_none());
    assert!(
        second.cache.is_some(),
        "the repeat is answered by the cache"
    );
    let claude = runtime
        .client()
        .request("claude", vec![Message::user("hi")], RequestOptions::new())
        .await
        .unwrap();
    assert!(!claude.text().is_empty());
    assert_eq!(
        upstream.stats().requests,
        2,
        "two upstream calls, one cache hit"
    );
    let report = runtime.shutdown().await.unwrap();
    let recorded = report.recorded.expect("[analytics] records calls");
    assert_eq!(
        recorded.rows_written, 3,
        "every call is written on shutdown"
    );
    assert_eq!(recorded.rows_lost, 0);
    assert!(dir.path().join("calls.sqlite").is_file());
}

#[tokio::test]
async fn the_example_config_builds_a_runtime() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dspex.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    for section in ["[providers.openai]", "[cache]", "[analytics]"] {
        assert!(
            text.contains(section),
            "examples/dspex.toml lacks {section}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let loader = loader(
        &file,
        &upstream,
        dir.path(),
        &[("openai", false), ("claude", true)],
    );
    let runtime = Runtime::from_config_with_env(&loader, &fake_keys)
        .await
        .unwrap();
    let mut ids = runtime.client().provider_ids();
    ids.sort();
    assert_eq!(ids, ["claude", "local", "openai"]);
    runtime
        .client()
        .request("openai", vec![Message::user("ping")], RequestOptions::new())
        .await
        .unwrap();
    let recorded = runtime.shutdown().await.unwrap().recorded.unwrap();
    assert_eq!(recorded.rows_written, 1);
}

#[tokio::test]
async fn a_missing_key_and_an_unknown_section_are_config_errors_naming_them() {
    let upstream = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dspex.toml");
    std::fs::write(&file, readme_dspex_toml()).unwrap();
    let loader = loader(
        &file,
        &upstream,
        dir.path(),
        &[("openai", false), ("claude", true)],
    );
    let error = Runtime::from_config_with_env(&loader, &|_| None)
        .await
        .unwrap_err();
    assert!(matches!(error, RuntimeError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("api_key_env"), "{error}");
    let unknown = ConfigLoader::builder(&config_keys())
        .toml_str("[caches]\nl1 = true\n")
        .without_env()
        .build()
        .unwrap_err();
    assert!(unknown.to_string().contains("caches"), "{unknown}");
}

#[tokio::test]
async fn choosing_a_provider_names_what_is_missing() {
    let loader = ConfigLoader::builder(&config_keys())
        .toml_str("[providers.a]\nkind = \"openai\"\n[providers.b]\nkind = \"openai\"\n")
        .without_env()
        .build()
        .unwrap();
    let runtime = Runtime::from_config_with_env(&loader, &|_| None)
        .await
        .unwrap();
    let several = runtime.provider(None).unwrap_err();
    assert!(several.to_string().contains("a, b"), "{several}");
    assert_eq!(runtime.provider(Some("b")).unwrap(), "b");
    let unknown = runtime.provider(Some("c")).unwrap_err();
    assert!(
        unknown.to_string().contains("no provider named `c`"),
        "{unknown}"
    );
    assert!(runtime.shutdown().await.unwrap().recorded.is_none());
}
