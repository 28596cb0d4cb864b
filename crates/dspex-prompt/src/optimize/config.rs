//! The `[optimize]` section of `dspex.toml`: the settings `dspex optimize`
//! takes as flags (a flag wins over the file). Raw serde structs, then a
//! validated [`OptimizeConfig`] whose errors name the key.
//!
//! ```toml
//! [optimize]
//! optimizer = "mipro"            # bootstrap, random-search, knn, copro, mipro, gepa
//! auto = "light"                 # light, medium, heavy (mipro, gepa)
//! seed = 0
//! concurrency = 8                # LM work in flight: rollouts, proposals, reflections
//! prompt_model = "openai/gpt-4o" # a provider, or provider/model, for proposals
//! reflection_model = "openai"    # for GEPA's reflections
//! max_usd = 5.0                  # budgets: the first one reached stops the run
//! max_calls = 20000
//! max_tokens = 5000000
//! max_duration = "2h"
//! checkpoint = "optimize.ckpt"   # written after every trial; --resume continues it
//! ```

use std::path::PathBuf;
use std::time::Duration;

use dspex_core::CoreError;
use dspex_core::config::ConfigLoader;
use serde::Deserialize;

use super::engine::Budget;
use super::gepa::AutoLevel;
use crate::error::{PromptError, Result};

/// The top-level keys this module reads.
pub const CONFIG_KEYS: &[&str] = &["optimize"];

/// Which optimiser to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// BootstrapFewShot (LabeledFewShot with `--labeled-only`).
    Bootstrap,
    /// BootstrapFewShotWithRandomSearch.
    RandomSearch,
    /// KNNFewShot.
    Knn,
    /// COPRO.
    Copro,
    /// MIPROv2.
    Mipro,
    /// GEPA.
    Gepa,
}

impl OptimizerKind {
    /// Parses a name as the CLI and `[optimize] optimizer` write it.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "bootstrap" | "bootstrap-few-shot" => Some(Self::Bootstrap),
            "random-search" | "random" => Some(Self::RandomSearch),
            "knn" | "knn-few-shot" => Some(Self::Knn),
            "copro" => Some(Self::Copro),
            "mipro" | "miprov2" | "mipro-v2" => Some(Self::Mipro),
            "gepa" => Some(Self::Gepa),
            _ => None,
        }
    }

    /// The names, for errors.
    pub const NAMES: &'static str = "bootstrap, random-search, knn, copro, mipro, gepa";
}

/// `[optimize]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawOptimizeConfig {
    /// The optimiser.
    pub optimizer: Option<String>,
    /// `light`, `medium` or `heavy`.
    pub auto: Option<String>,
    /// The seed.
    pub seed: Option<u64>,
    /// LM work in flight at once.
    pub concurrency: Option<usize>,
    /// The prompt model: a provider id, or `provider/model`.
    pub prompt_model: Option<String>,
    /// The reflection model: a provider id, or `provider/model`.
    pub reflection_model: Option<String>,
    /// The most to spend, in dollars.
    pub max_usd: Option<f64>,
    /// The most LM calls.
    pub max_calls: Option<u64>,
    /// The most tokens.
    pub max_tokens: Option<u64>,
    /// The longest run (`90m`, `2h`).
    pub max_duration: Option<String>,
    /// The checkpoint file.
    pub checkpoint: Option<PathBuf>,
}

/// The validated `[optimize]` section.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OptimizeConfig {
    /// The optimiser (default `bootstrap`).
    pub optimizer: Option<OptimizerKind>,
    /// The preset.
    pub auto: Option<AutoLevel>,
    /// The seed.
    pub seed: Option<u64>,
    /// LM work in flight at once.
    pub concurrency: Option<usize>,
    /// The prompt model.
    pub prompt_model: Option<String>,
    /// The reflection model.
    pub reflection_model: Option<String>,
    /// The budgets.
    pub budget: Budget,
    /// The checkpoint file.
    pub checkpoint: Option<PathBuf>,
}

fn invalid(key: &str, message: String) -> PromptError {
    PromptError::Config(CoreError::config(key, message))
}

/// Dollars as nano-dollars, checked (`key` names the setting in errors).
pub fn usd_to_nanos(key: &str, usd: f64) -> Result<i64> {
    if !usd.is_finite() || usd <= 0.0 || usd > 1e9 {
        return Err(invalid(
            key,
            format!("`{usd}` is not an amount in dollars above 0"),
        ));
    }
    #[allow(clippy::cast_possible_truncation)] // at most 1e18
    Ok((usd * 1e9).round() as i64)
}

/// A duration such as `90m`, `2h`, `1h30m` (`key` names the setting), at
/// most a year ([`dspex_core::config::MAX_WINDOW`]).
pub fn parse_duration(key: &str, text: &str) -> Result<Duration> {
    let duration = humantime::parse_duration(text.trim())
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(key, format!("`{text}` is not a duration such as 90m or 2h")))?;
    if duration > dspex_core::config::MAX_WINDOW {
        return Err(invalid(
            key,
            format!("`{text}` is longer than a year (366d)"),
        ));
    }
    Ok(duration)
}

impl OptimizeConfig {
    /// Reads and validates `[optimize]` (all unset when it is absent).
    pub fn load(loader: &ConfigLoader) -> Result<Self> {
        let raw: RawOptimizeConfig = loader
            .section("optimize")
            .map_err(PromptError::Config)?
            .unwrap_or_default();
        Self::validate(&raw)
    }

    /// Phase two: checks every value; errors name the key.
    pub fn validate(raw: &RawOptimizeConfig) -> Result<Self> {
        let optimizer = match &raw.optimizer {
            None => None,
            Some(text) => Some(OptimizerKind::parse(text).ok_or_else(|| {
                invalid(
                    "optimize.optimizer",
                    format!("`{text}` is not one of {}", OptimizerKind::NAMES),
                )
            })?),
        };
        let auto = match &raw.auto {
            None => None,
            Some(text) => Some(AutoLevel::parse(text).ok_or_else(|| {
                invalid(
                    "optimize.auto",
                    format!("`{text}` is not light, medium or heavy"),
                )
            })?),
        };
        if raw.concurrency == Some(0) {
            return Err(invalid("optimize.concurrency", "must be at least 1".into()));
        }
        let budget = Budget {
            max_calls: raw.max_calls,
            max_tokens: raw.max_tokens,
            max_cost_nanos: raw
                .max_usd
                .map(|usd| usd_to_nanos("optimize.max_usd", usd))
                .transpose()?,
            max_duration: raw
                .max_duration
                .as_deref()
                .map(|text| parse_duration("optimize.max_duration", text))
                .transpose()?,
        };
        for (key, value) in [
            ("optimize.prompt_model", &raw.prompt_model),
            ("optimize.reflection_model", &raw.reflection_model),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(key, "empty".into()));
            }
        }
        Ok(Self {
            optimizer,
            auto,
            seed: raw.seed,
            concurrency: raw.concurrency,
            prompt_model: raw.prompt_model.clone(),
            reflection_model: raw.reflection_model.clone(),
            budget,
            checkpoint: raw.checkpoint.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(toml: &str) -> Result<OptimizeConfig> {
        let loader = ConfigLoader::builder(CONFIG_KEYS)
            .toml_str(toml)
            .without_env()
            .build()
            .map_err(PromptError::Config)?;
        OptimizeConfig::load(&loader)
    }

    #[test]
    fn the_section_parses_and_errors_name_the_key() {
        let config = load(
            "[optimize]\noptimizer = \"MIPROv2\"\nauto = \"medium\"\nmax_usd = 2.5\nmax_duration = \"90m\"\n",
        )
        .unwrap();
        assert_eq!(config.optimizer, Some(OptimizerKind::Mipro));
        assert_eq!(config.auto, Some(AutoLevel::Medium));
        assert_eq!(config.budget.max_cost_nanos, Some(2_500_000_000));
        assert_eq!(config.budget.max_duration, Some(Duration::from_secs(5400)));
        assert_eq!(load("").unwrap().optimizer, None);
        for (toml, key) in [
            ("[optimize]\noptimizer = \"adam\"\n", "optimize.optimizer"),
            ("[optimize]\nauto = \"max\"\n", "optimize.auto"),
            ("[optimize]\nmax_usd = -1.0\n", "optimize.max_usd"),
            (
                "[optimize]\nmax_duration = \"soon\"\n",
                "optimize.max_duration",
            ),
            (
                "[optimize]\nmax_duration = \"100000000000d\"\n",
                "optimize.max_duration",
            ),
            ("[optimize]\nconcurrency = 0\n", "optimize.concurrency"),
            ("[optimize]\nlearning_rate = 0.1\n", "learning_rate"),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }
}
