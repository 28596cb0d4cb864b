//! Prints the calibration curves of the lexical embedder, and of a local model
//! when `--model-dir DIR` is given (feature `local-embeddings`), on labelled
//! pairs. The same report as `dspex cache calibrate`, without the CLI.
//!
//! `cargo run --release -p dspex-cache --features local-embeddings --example calibrate -- \
//!     --pairs ../shared/data/qqp-dev.jsonl --model-dir "$(scripts/fetch-minilm)"`
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

use dspex_cache::semantic::calibrate::{CalibrationReport, calibrate, read_pairs};
use dspex_cache::{CacheConfig, EmbedderKind};

fn print(report: &CalibrationReport, default: f32) {
    println!(
        "== {} ({} pairs, {} duplicates, {:.1} µs/text) default threshold {default}",
        report.embedder, report.pairs, report.duplicates, report.embed_micros_per_text
    );
    println!(
        "threshold  pair-precision  recall  hit-rate |  retr-precision  retr-hit-rate  correct  wrong"
    );
    for (p, r) in report.pairwise.iter().zip(&report.retrieval) {
        println!(
            "{:>9.3}  {:>14.3}  {:>6.3}  {:>8.3} |  {:>14.3}  {:>13.3}  {:>7}  {:>5}",
            p.threshold,
            p.precision,
            p.recall,
            p.hit_rate,
            r.precision,
            r.hit_rate,
            r.correct,
            r.wrong
        );
    }
    println!("suggested: {:?}", report.suggested);
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut pairs, mut model_dir) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pairs" => pairs = args.next().map(PathBuf::from),
            "--model-dir" => model_dir = args.next().map(PathBuf::from),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let pairs = read_pairs(&pairs.ok_or("--pairs FILE.jsonl is required")?)?;
    let mut config = CacheConfig::default();
    let lexical = dspex_cache::embedder_from_config(&config)?;
    print(
        &calibrate(lexical.as_ref(), &pairs, None).await?,
        lexical.default_threshold(),
    );
    if let Some(dir) = model_dir {
        config.embedder = EmbedderKind::Local;
        config.model_dir = Some(dir);
        let local = dspex_cache::embedder_from_config(&config)?;
        let started = std::time::Instant::now();
        let report = calibrate(local.as_ref(), &pairs, None).await?;
        eprintln!("local: {:.1?}", started.elapsed());
        print(&report, local.default_threshold());
    }
    Ok(())
}
