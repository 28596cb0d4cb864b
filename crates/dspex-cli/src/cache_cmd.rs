//! `dspex cache`: statistics, clearing, purging and threshold calibration.
//!
//! ```text
//! dspex cache stats [--json]
//! dspex cache clear [--namespace N] [--tier l1|l2|l3]
//! dspex cache purge-expired
//! dspex cache calibrate --embedder lexical|local [--model-dir DIR] --pairs FILE.jsonl [--json]
//! ```
//!
//! The commands open the cache `[cache]` describes in this process: L1 lives
//! in memory, so a fresh process sees it empty; L2 (redb or Redis) and the L3
//! vectors redb keeps beside its entries are the persistent state they report
//! on and act on. Without a `[cache]` section (or with `enabled = false`)
//! caching is off: they say so and create nothing. Hit and miss counters
//! are kept per process (a fresh one has none); the calls each tier answered
//! are recorded in the analytics store (`dspex costs --group-by cache_tier`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dspex::cache::semantic::calibrate::{
    CalibrationReport, TARGET_PRECISION, calibrate, read_pairs,
};
use dspex::cache::{Cache, CacheConfig, EmbedderKind, Tier};

use crate::common;

/// `dspex cache ...`.
#[derive(clap::Args, Debug)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CacheCommand {
    /// Entries, bytes, hits and misses per tier.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries: all, or one namespace's, from every tier or one.
    Clear {
        /// Only this namespace (tenant or program).
        #[arg(long, value_name = "N")]
        namespace: Option<String>,
        /// Only this tier.
        #[arg(long, value_parser = ["l1", "l2", "l3"])]
        tier: Option<String>,
    },
    /// Delete expired entries from the on-disk tier.
    PurgeExpired,
    /// Measure an embedder on labelled pairs ({"a","b","duplicate"} per line):
    /// precision, recall and hit rate per threshold, and a suggested threshold.
    Calibrate {
        /// `lexical` (built in) or `local` (a model directory; needs the
        /// `local-embeddings` build).
        #[arg(long, default_value = "lexical", value_parser = ["lexical", "local"])]
        embedder: String,
        /// The model directory for `--embedder local` (default: `cache.model_dir`).
        #[arg(long, value_name = "DIR")]
        model_dir: Option<PathBuf>,
        /// The labelled pairs.
        #[arg(long, value_name = "FILE.jsonl")]
        pairs: PathBuf,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The `[cache]` config, and whether caching is on: as the runtime decides
/// it, only with a `[cache]` section whose `enabled` is not false.
fn load(config: Option<&Path>) -> anyhow::Result<(CacheConfig, bool)> {
    let loader = common::loader(config).map_err(common::Failure::into_error)?;
    let cfg = CacheConfig::load(&loader)?;
    let on = loader.contains("cache") && cfg.enabled;
    Ok((cfg, on))
}

/// What the commands say when caching is off.
const OFF: &str = "caching is off: the config has no [cache] section (or it sets enabled = false); nothing to report or change";

/// Runs a `dspex cache` command.
pub(crate) async fn run(args: CacheArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let (cfg, on) = load(config)?;
    let off = !on && !matches!(args.command, CacheCommand::Calibrate { .. });
    if off {
        if matches!(args.command, CacheCommand::Stats { json: true }) {
            common::out(&serde_json::to_string_pretty(
                &serde_json::json!({ "enabled": false, "tiers": [] }),
            )?);
        } else {
            common::out(OFF);
        }
        return Ok(());
    }
    match args.command {
        CacheCommand::Stats { json } => {
            let cache = open(&cfg).await?;
            let stats = cache.stats().await;
            if json {
                common::out(&serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            common::out(&format!(
                "{:<4} {:<8} {:>10} {:>14} {:>8} {:>8} {:>8} {:>12}",
                "tier", "backend", "entries", "bytes", "hits", "misses", "evicted", "tokens saved"
            ));
            for t in &stats.tiers {
                let name = t.tier.map_or("?", Tier::as_str);
                if !t.enabled {
                    common::out(&format!("{name:<4} off"));
                    continue;
                }
                common::out(&format!(
                    "{:<4} {:<8} {:>10} {:>14} {:>8} {:>8} {:>8} {:>12}",
                    name,
                    t.backend,
                    t.entries,
                    t.bytes,
                    t.hits,
                    t.misses,
                    t.evictions,
                    t.tokens_saved
                ));
            }
            common::out(
                "hits, misses, evictions and tokens saved count this process's lookups only; \
                 the calls each tier answered are in the analytics store: \
                 dspex costs --group-by cache_tier",
            );
            Ok(())
        }
        CacheCommand::Clear { namespace, tier } => {
            let cache = open(&cfg).await?;
            let tier = tier.as_deref().and_then(Tier::parse);
            let cleared = cache.clear(namespace.as_deref(), tier).await?;
            for (tier, n) in cleared {
                common::out(&format!("{tier}: {n} entries removed"));
            }
            Ok(())
        }
        CacheCommand::PurgeExpired => {
            let cache = open(&cfg).await?;
            let n = cache.purge_expired().await?;
            common::out(&format!("{n} expired entries removed"));
            Ok(())
        }
        CacheCommand::Calibrate {
            embedder,
            model_dir,
            pairs,
            json,
        } => {
            let mut embed_cfg = cfg.clone();
            embed_cfg.embedder = if embedder == "local" {
                EmbedderKind::Local
            } else {
                EmbedderKind::Lexical
            };
            if model_dir.is_some() {
                embed_cfg.model_dir = model_dir;
            }
            let embedder = dspex::cache::embedder_from_config(&embed_cfg)?;
            let pairs = read_pairs(&pairs)?;
            anyhow::ensure!(!pairs.is_empty(), "the pairs file holds no pairs");
            let report = calibrate(embedder.as_ref(), &pairs, None).await?;
            if json {
                common::out(&serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report, embedder.default_threshold());
            }
            Ok(())
        }
    }
}

async fn open(cfg: &CacheConfig) -> anyhow::Result<Cache<serde_json::Value>> {
    // Only the lexical embedder needs no model files or provider: other
    // embedders' L3 is opened as L2 alone, whose store still holds (and
    // clears) their persisted vectors.
    let mut cfg = cfg.clone();
    cfg.l3 = cfg.l3 && cfg.embedder == EmbedderKind::Lexical;
    Cache::from_config(&cfg, None)
        .await
        .with_context(|| format!("cannot open the cache in {}", cfg.dir.display()))
}

fn print_report(report: &CalibrationReport, default: f32) {
    common::out(&format!(
        "embedder {}: {} pairs ({} duplicates), {:.1} µs per text",
        report.embedder, report.pairs, report.duplicates, report.embed_micros_per_text
    ));
    common::out("");
    common::out("pairwise (a prediction per pair: cos(a, b) >= threshold)");
    common::out(&format!(
        "{:>9} {:>9} {:>7} {:>8} {:>6} {:>6}",
        "threshold", "precision", "recall", "hit rate", "tp", "fp"
    ));
    let shown = |t: f32| ((t * 100.0).round() as i64) % 2 == 0 || t > 0.99;
    for p in report.pairwise.iter().filter(|p| shown(p.threshold)) {
        common::out(&format!(
            "{:>9.3} {:>9.3} {:>7.3} {:>8.3} {:>6} {:>6}",
            p.threshold, p.precision, p.recall, p.hit_rate, p.true_positives, p.false_positives
        ));
    }
    common::out("");
    common::out("retrieval (GPTCache protocol: store every a, query every b)");
    common::out(&format!(
        "{:>9} {:>9} {:>8} {:>7} {:>6} {:>6}",
        "threshold", "precision", "hit rate", "correct", "wrong", "miss"
    ));
    for p in report.retrieval.iter().filter(|p| shown(p.threshold)) {
        common::out(&format!(
            "{:>9.3} {:>9.3} {:>8.3} {:>7} {:>6} {:>6}",
            p.threshold, p.precision, p.hit_rate, p.correct, p.wrong, p.misses
        ));
    }
    common::out("");
    match report.suggested {
        Some(t) => common::out(&format!(
            "suggested threshold: {t:.3} (highest recall with pairwise precision >= {TARGET_PRECISION:.2}); the embedder's default is {default:.3}"
        )),
        None => common::out(&format!(
            "no threshold reaches pairwise precision {TARGET_PRECISION:.2}; the embedder's default is {default:.3}"
        )),
    }
}
