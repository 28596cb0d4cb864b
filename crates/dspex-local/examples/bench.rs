//! Measures a model: load time, prompt and decode speed, time to first
//! token for a ~300-token DSPy-style prompt cold and with a cached prefix,
//! and peak RSS.
//!
//! ```text
//! cargo run --release --example bench -- MODEL.gguf [--requantize keep|slow|all] [--threads N] [--no-vnni]
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::cast_precision_loss
)]

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use dspex_local::{ChatTurn, GenerateParams, LoadOptions, LocalModel, Requantize};

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[path = "../benches/support/dspy_prompt.rs"]
mod dspy_prompt;
use dspy_prompt::{system_prompt, user_turn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: bench MODEL.gguf [--requantize keep|slow|all] [--threads N] [--no-vnni]")?;
    let mut options = LoadOptions {
        context_length: Some(4096),
        ..LoadOptions::default()
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requantize" => {
                options.requantize = match args.next().as_deref() {
                    Some("keep") => Requantize::Keep,
                    Some("all") => Requantize::AllToQ8_0,
                    _ => Requantize::SlowTypes,
                }
            }
            "--threads" => options.threads = args.next().and_then(|t| t.parse().ok()),
            // The portable prompt path, for comparison on a VNNI CPU.
            "--no-vnni" => options.vnni = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let rss_before = vm_hwm_kib().unwrap_or(0);
    let t = Instant::now();
    let model = LocalModel::load(path.as_ref(), &options)?;
    let load = t.elapsed();
    let info = model.info();
    println!(
        "model {} ({}), requantize {:?}, threads {}, weights {:.1} MB, load {:.2} s",
        info.name.as_deref().unwrap_or("?"),
        info.architecture,
        options.requantize,
        info.threads,
        info.weight_bytes as f64 / 1e6,
        load.as_secs_f64()
    );
    println!(
        "rss after load (VmHWM) {:.1} MB (process start {:.1} MB)",
        vm_hwm_kib().unwrap_or(0) as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );

    let cancel = AtomicBool::new(false);
    let system = system_prompt();
    let render = |q: &str| -> Result<Vec<u32>, dspex_local::LocalError> {
        // The GGUF's template, or the plain one when it has none.
        let chat = model.render_chat(&[
            ChatTurn::new("system", system.clone()),
            ChatTurn::new("user", user_turn(q)),
        ])?;
        model.tokenize(&chat)
    };

    // Warm-up (page in, thread pool start), not cached.
    let warm = model.tokenize_prompt("Hello")?;
    model.generate(
        &warm,
        &GenerateParams {
            max_tokens: 2,
            ..GenerateParams::default()
        },
        &cancel,
        &mut |_| {},
    )?;
    model.clear_prefix_cache();

    // Cold: a ~300-token prompt, nothing cached.
    let p1 = render("What is the capital of France?")?;
    let params = GenerateParams {
        max_tokens: 1,
        ..GenerateParams::default()
    };
    let mut best_cold = Duration::MAX;
    for _ in 0..3 {
        model.clear_prefix_cache();
        let g = model.generate(&p1, &params, &cancel, &mut |_| {})?;
        assert_eq!(g.cached_prompt_tokens, 0);
        best_cold = best_cold.min(g.prompt_time);
    }
    println!(
        "cold TTFT, {} prompt tokens: {:.1} ms ({:.0} prompt tok/s)",
        p1.len(),
        best_cold.as_secs_f64() * 1e3,
        p1.len() as f64 / best_cold.as_secs_f64()
    );

    // Cached prefix: same system prompt, a different last user turn.
    let mut best_warm = Duration::MAX;
    let mut cached = 0;
    let mut p2_len = 0;
    for (i, q) in [
        "Which city is the capital of France?",
        "Name the capital of France.",
        "What is France's capital city?",
    ]
    .iter()
    .enumerate()
    {
        model.clear_prefix_cache();
        model.generate(&p1, &params, &cancel, &mut |_| {})?;
        let p2 = render(q)?;
        p2_len = p2.len();
        let g = model.generate(&p2, &params, &cancel, &mut |_| {})?;
        if i == 0 || g.prompt_time < best_warm {
            best_warm = g.prompt_time;
            cached = g.cached_prompt_tokens;
        }
    }
    println!(
        "cached-prefix TTFT, {} prompt tokens ({} cached): {:.1} ms = {:.0}% of cold",
        p2_len,
        cached,
        best_warm.as_secs_f64() * 1e3,
        100.0 * best_warm.as_secs_f64() / best_cold.as_secs_f64()
    );

    // Decode speed at batch 1: 128 greedy tokens, no stop.
    let long =
        model.tokenize_prompt("Write a long story about a dragon who learns to bake bread.")?;
    let mut best = 0f64;
    let mut text = String::new();
    for _ in 0..2 {
        let g = model.generate(
            &long,
            &GenerateParams {
                max_tokens: 128,
                temperature: 0.7,
                seed: Some(1),
                ..GenerateParams::default()
            },
            &cancel,
            &mut |_| {},
        )?;
        let tps = g.completion_tokens as f64 / g.decode_time.as_secs_f64();
        if tps > best {
            best = tps;
            text = format!("{} tokens, {:?}", g.completion_tokens, g.finish);
        }
    }
    println!("decode: {best:.1} tok/s ({text})");
    let s = model.prefix_cache_stats();
    println!(
        "prefix cache: {} hits, {} misses, {} reused tokens, {} entries, {:.1} MB",
        s.hits,
        s.misses,
        s.reused_tokens,
        s.entries,
        s.bytes as f64 / 1e6
    );
    println!(
        "peak RSS (VmHWM) {:.1} MB",
        vm_hwm_kib().unwrap_or(0) as f64 / 1024.0
    );
    Ok(())
}
