//! Criterion benches of a real GGUF model (SmolLM2 by default): a cold
//! 300-token prompt, the full 393-token DSPy prompt cold and after its
//! first 320 tokens are in the prefix cache, and 32 decode steps.
//!
//! ```text
//! DSPEX_TEST_GGUF_SMOLLM2=$(scripts/fetch-model smollm2) cargo bench -p dspex-local --bench local
//! ```
//!
//! Without the variable the bench prints that it did not run and exits.
#![allow(clippy::print_stderr, clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_local::{ChatTurn, GenerateParams, LoadOptions, LocalModel};

#[path = "support/dspy_prompt.rs"]
mod dspy_prompt;
use dspy_prompt::{system_prompt, user_turn};

fn prompt(model: &LocalModel, question: &str) -> Vec<u32> {
    let chat = model
        .render_chat(&[
            ChatTurn::new("system", system_prompt()),
            ChatTurn::new("user", user_turn(question)),
        ])
        .expect("render");
    model.tokenize(&chat).expect("tokenize")
}

fn local(c: &mut Criterion) {
    let Ok(path) = std::env::var("DSPEX_TEST_GGUF_SMOLLM2") else {
        eprintln!("local bench NOT RUN: set DSPEX_TEST_GGUF_SMOLLM2 (scripts/fetch-model smollm2)");
        return;
    };
    let options = LoadOptions {
        context_length: Some(4096),
        ..LoadOptions::default()
    };
    let model = LocalModel::load(path.as_ref(), &options).expect("load");
    let cancel = AtomicBool::new(false);
    let one = GenerateParams {
        max_tokens: 1,
        ..GenerateParams::default()
    };
    let full = prompt(&model, "What is the capital of France?");
    let other = prompt(&model, "Which city is the capital of France?");
    let first_300 = full.get(..300).expect("the prompt has 300 tokens").to_vec();

    let mut g = c.benchmark_group("local_smollm2");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    // Time to first token is the prompt pass (the first token is sampled
    // from its logits), so each iteration times `prompt_time`.
    let mut ttft = |name: &str, tokens: &[u32], warm: Option<&[u32]>| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    model.clear_prefix_cache();
                    if let Some(w) = warm {
                        model.generate(w, &one, &cancel, &mut |_| {}).expect("warm");
                    }
                    let out = model
                        .generate(tokens, &one, &cancel, &mut |_| {})
                        .expect("generate");
                    assert_eq!(out.cached_prompt_tokens > 0, warm.is_some());
                    total += out.prompt_time;
                }
                total
            });
        });
    };
    ttft("ttft_cold_300_tokens", &first_300, None);
    ttft("ttft_cold_393_tokens", &full, None);
    ttft("ttft_cached_prefix_393_tokens", &other, Some(&full));

    let story = model
        .tokenize_prompt("Write a long story about a dragon who learns to bake bread.")
        .expect("tokenize");
    // The first seed whose story runs the full 32 tokens (a reply that ends
    // early would time fewer steps); the search is deterministic.
    let decode = (1..100)
        .map(|seed| GenerateParams {
            max_tokens: 32,
            temperature: 0.7,
            seed: Some(seed),
            ..GenerateParams::default()
        })
        .find(|params| {
            model
                .generate(&story, params, &cancel, &mut |_| {})
                .is_ok_and(|out| out.completion_tokens == 32)
        })
        .expect("a seed that decodes 32 tokens");
    g.bench_function("decode_32_tokens", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let out = model
                    .generate(&story, &decode, &cancel, &mut |_| {})
                    .expect("generate");
                assert_eq!(out.completion_tokens, 32);
                total += out.decode_time;
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, local);
criterion_main!(benches);
