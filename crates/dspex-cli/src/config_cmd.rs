//! `dspex config check`: validate and print the effective config.
//!
//! Every section is checked with its own crate's phase-two validation (the
//! same code the commands run at start), every problem is reported at once,
//! and a config that gives no provider is refused: no command could call
//! anything. The printed config is the validated one, secrets redacted
//! (API keys, URL passwords, header values).

use std::fmt::Debug;
use std::path::Path;

use dspex::analytics::AnalyticsConfig;
use dspex::cache::CacheConfig;
use dspex::core::config::ConfigLoader;
use dspex::gateway::GatewayConfig;
use dspex::mcp::McpServers;
use dspex::prompt::optimize::config::OptimizeConfig;
use dspex::{ClientConfig, Runtime};

use crate::common::{self, Failure};

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub(crate) enum ConfigCommand {
    /// Validate every section of the config and print the effective values
    /// (secrets redacted); refuse a config with no provider.
    Check,
}

pub(crate) fn run(path: Option<&Path>, command: ConfigCommand) -> Result<(), Failure> {
    match command {
        ConfigCommand::Check => check(path),
    }
}

/// One validated section, ready to print.
enum Printed {
    /// TOML of the validated (redacting) `Serialize` value.
    Toml(String),
    /// The validated value's (redacting) `Debug`, for types without
    /// `Serialize`; printed as TOML comments so the output stays TOML.
    Debug(String),
    /// The section is absent; a comment says what that means.
    Absent(&'static str),
}

fn check(path: Option<&Path>) -> Result<(), Failure> {
    // Not `common::loader`: this command reports the problems itself, all
    // of them, with what it could validate.
    let loader = Runtime::loader(path)?;
    let mut problems: Vec<String> = Vec::new();
    let mut printed: Vec<Printed> = Vec::new();

    match ClientConfig::load(&loader) {
        Ok(config) if config.providers.is_empty() => problems.push(
            "no provider: add a [providers.NAME] table (kind, model, api_key_env), \
             or set OPENAI_API_KEY or ANTHROPIC_API_KEY"
                .to_owned(),
        ),
        Ok(config) => printed.push(toml_of(None, &config, &mut problems)),
        Err(error) => problems.push(common::located(&loader, &error.into())),
    }
    section(
        &loader,
        "cache",
        CacheConfig::load,
        Some("# [cache] not set: caching is off"),
        &mut problems,
        &mut printed,
        |c| toml_of(Some("cache"), c, &mut Vec::new()),
    );
    section(
        &loader,
        "analytics",
        AnalyticsConfig::load,
        Some(
            "# [analytics] not set: calls are not recorded (`dspex serve` records to dspex-analytics.sqlite)",
        ),
        &mut problems,
        &mut printed,
        |c| toml_of(Some("analytics"), c, &mut Vec::new()),
    );
    section(
        &loader,
        "optimize",
        OptimizeConfig::load,
        None,
        &mut problems,
        &mut printed,
        |c| debug_of("optimize", c),
    );
    section(
        &loader,
        "gateway",
        GatewayConfig::load,
        None,
        &mut problems,
        &mut printed,
        |c| debug_of("gateway", c),
    );
    section(
        &loader,
        "mcp",
        McpServers::load,
        None,
        &mut problems,
        &mut printed,
        |c| debug_of("mcp", c),
    );

    let source = match loader.file() {
        Some(file) => file.display().to_string(),
        None => "no file; providers from the environment".to_owned(),
    };
    if !problems.is_empty() {
        let count = problems.len();
        let list = problems
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Failure::usage(anyhow::anyhow!(
            "the config ({source}) has {count} problem{}:\n{list}",
            if count == 1 { "" } else { "s" }
        )));
    }
    common::err(&format!("config OK ({source})"));
    for part in printed {
        match part {
            Printed::Toml(text) => common::out(text.trim_end()),
            Printed::Debug(text) => common::out(&text),
            Printed::Absent(text) => common::out(text),
        }
        common::out("");
    }
    Ok(())
}

/// Validates section `key` with `load` when the file has it; records a
/// problem or what to print.
fn section<T, E: Into<anyhow::Error>>(
    loader: &ConfigLoader,
    key: &'static str,
    load: impl FnOnce(&ConfigLoader) -> Result<T, E>,
    absent: Option<&'static str>,
    problems: &mut Vec<String>,
    printed: &mut Vec<Printed>,
    print: impl FnOnce(&T) -> Printed,
) {
    if !loader.contains(key) {
        if let Some(text) = absent {
            printed.push(Printed::Absent(text));
        }
        return;
    }
    match load(loader) {
        Ok(config) => printed.push(print(&config)),
        Err(error) => problems.push(common::located(loader, &error.into())),
    }
}

/// The validated value as TOML under `[key]` (at the top level with
/// `None`). The types' `Serialize` redacts their secrets.
fn toml_of<T: serde::Serialize>(
    key: Option<&str>,
    value: &T,
    problems: &mut Vec<String>,
) -> Printed {
    let text = match key {
        None => toml::to_string_pretty(value),
        Some(key) => {
            let mut table = std::collections::BTreeMap::new();
            table.insert(key, value);
            toml::to_string_pretty(&table)
        }
    };
    match text {
        Ok(text) => Printed::Toml(text),
        Err(error) => {
            problems.push(format!("cannot print the validated config: {error}"));
            Printed::Toml(String::new())
        }
    }
}

/// The validated value's `Debug` (which redacts its secrets) as comment
/// lines under a `[key]` heading.
fn debug_of<T: Debug>(key: &str, value: &T) -> Printed {
    let body = format!("{value:#?}")
        .lines()
        .map(|line| format!("#   {line}"))
        .collect::<Vec<_>>()
        .join("\n");
    Printed::Debug(format!("# [{key}] OK, as validated:\n{body}"))
}
