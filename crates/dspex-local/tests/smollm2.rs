//! Tests on SmolLM2-135M-Instruct (Q4_1). Set DSPEX_TEST_GGUF_SMOLLM2.
//! `cargo test --release -- --ignored`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use dspex_local::{ChatTurn, Finish, GenerateParams, LocalError, LocalModel};

static MODEL: OnceLock<LocalModel> = OnceLock::new();

fn model() -> &'static LocalModel {
    common::model("DSPEX_TEST_GGUF_SMOLLM2", &MODEL)
}

fn chat(question: &str) -> Vec<u32> {
    let m = model();
    let text = m.render_chat(&[ChatTurn::new("user", question)]).unwrap();
    m.tokenize_prompt(&text).unwrap()
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn info_matches_the_file() {
    let info = model().info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab_size, 49_152);
    assert_eq!(info.train_context_length, 8192);
    assert_eq!(info.context_length, 2048);
    assert_eq!(
        info.end_of_turn.as_ref().map(|t| (t.id, t.text.as_str())),
        Some((2, "<|im_end|>"))
    );
    assert!(info.end_of_generation.contains(&2));
    assert!(
        info.chat_template
            .as_deref()
            .unwrap_or_default()
            .contains("<|im_start|>")
    );
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn tokenizer_matches_reference_ids() {
    let m = model();
    let cases = common::reference("smollm2");
    assert!(cases.len() >= 5);
    for (text, ids) in cases {
        assert_eq!(m.tokenize(&text).unwrap(), ids, "tokenizing {text:?}");
        // Decoding gives the text back (no normalisation in this vocab).
        assert_eq!(m.detokenize(&ids).unwrap(), text);
    }
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn chatml_markers_are_single_tokens() {
    let m = model();
    let ids = m.tokenize("<|im_start|>user\nHi<|im_end|>\n").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.contains(&2));
    let text = m
        .render_chat(&[ChatTurn::new("system", "S"), ChatTurn::new("user", "U")])
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn capital_of_france_is_paris() {
    // With a system prompt, as the demo and DSPy's adapters send one: the
    // model's built-in default system text sends this 135M model off topic.
    let m = model();
    let text = m
        .render_chat(&[
            ChatTurn::new(
                "system",
                "You are a helpful assistant. Answer in one sentence.",
            ),
            ChatTurn::new("user", "What is the capital of France?"),
        ])
        .unwrap();
    let g = common::run(m, &m.tokenize_prompt(&text).unwrap(), &common::greedy(48));
    assert!(g.text.contains("Paris"), "{:?}", g.text);
    assert_eq!(g.finish, Finish::Stop, "ends at <|im_end|>: {:?}", g.text);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn greedy_is_deterministic() {
    let m = model();
    let _cache = common::prefix_cache_lock();
    m.clear_prefix_cache();
    let p = chat("Write a haiku about rust.");
    let a = common::run(m, &p, &common::greedy(40));
    m.clear_prefix_cache();
    let b = common::run(m, &p, &common::greedy(40));
    assert_eq!(a.text, b.text);
    assert!(!a.text.is_empty());
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn seeded_sampling_repeats() {
    let m = model();
    let p = chat("Tell me a story about a cat.");
    let params = |seed| GenerateParams {
        max_tokens: 40,
        temperature: 0.9,
        top_p: Some(0.95),
        seed: Some(seed),
        stop: vec![],
    };
    let a = common::run(m, &p, &params(7));
    let b = common::run(m, &p, &params(7));
    assert_eq!(a.text, b.text);
    let c = common::run(m, &p, &params(8));
    let d = common::run(m, &p, &params(9));
    assert!(
        a.text != c.text || a.text != d.text,
        "different seeds should differ"
    );
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn max_tokens_gives_length() {
    let g = common::run(
        model(),
        &chat("Count from one to one hundred in words."),
        &common::greedy(7),
    );
    assert_eq!(g.finish, Finish::Length);
    assert_eq!(g.completion_tokens, 7);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn stop_string_truncates() {
    let m = model();
    let p = chat("Count from one to ten.");
    let full = common::run(m, &p, &common::greedy(40));
    // A stop string taken from the middle of the greedy text: it spans
    // token boundaries wherever they fall.
    let mid = (full.text.len() / 2..full.text.len())
        .find(|&i| full.text.is_char_boundary(i))
        .unwrap();
    let end = (mid + 4..=full.text.len())
        .find(|&i| full.text.is_char_boundary(i))
        .unwrap();
    let stop = full.text[mid..end].to_owned();
    let cut = full.text.find(&stop).unwrap();
    let params = GenerateParams {
        stop: vec!["never-appears".into(), stop.clone()],
        ..common::greedy(40)
    };
    let g = common::run(m, &p, &params);
    assert_eq!(g.finish, Finish::Stop, "stop {stop:?} in {:?}", full.text);
    assert_eq!(g.text, full.text[..cut]);
    assert!(g.completion_tokens < full.completion_tokens);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn cached_prefix_gives_the_cold_text() {
    let m = model();
    let _cache = common::prefix_cache_lock();
    let system = "You are a careful assistant. Answer in one sentence. ".repeat(8);
    let prompt = |q: &str| {
        let text = m
            .render_chat(&[
                ChatTurn::new("system", system.clone()),
                ChatTurn::new("user", q),
            ])
            .unwrap();
        m.tokenize(&text).unwrap()
    };
    let first = prompt("What is the capital of Italy?");
    let second = prompt("What is the capital of Spain?");

    m.clear_prefix_cache();
    let cold = common::run(m, &second, &common::greedy(24));
    assert_eq!(cold.cached_prompt_tokens, 0);

    m.clear_prefix_cache();
    let before = m.prefix_cache_stats();
    common::run(m, &first, &common::greedy(4));
    let warm = common::run(m, &second, &common::greedy(24));
    let after = m.prefix_cache_stats();
    assert!(
        warm.cached_prompt_tokens > 60,
        "cached {}",
        warm.cached_prompt_tokens
    );
    assert!(warm.cached_prompt_tokens < second.len());
    assert_eq!(
        warm.text, cold.text,
        "KV reuse must not change the greedy text"
    );
    assert!(after.hits > before.hits);
    assert!(after.reused_tokens >= before.reused_tokens + warm.cached_prompt_tokens as u64);

    // The exact same prompt again: all but its last token come from the
    // cache.
    let again = common::run(m, &second, &common::greedy(24));
    assert_eq!(again.cached_prompt_tokens, second.len() - 1);
    assert_eq!(again.text, cold.text);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn cancel_stops_generation() {
    let m = model();
    let cancel = AtomicBool::new(false);
    let mut pieces = 0;
    let g = m
        .generate(
            &chat("Write a long essay about the sea."),
            &common::greedy(200),
            &cancel,
            &mut |_| {
                pieces += 1;
                if pieces == 3 {
                    cancel.store(true, Ordering::Relaxed);
                }
            },
        )
        .unwrap();
    assert_eq!(g.finish, Finish::Cancelled);
    assert!(g.completion_tokens < 10, "{}", g.completion_tokens);

    let already = AtomicBool::new(true);
    let g = m
        .generate(&chat("Hi"), &common::greedy(10), &already, &mut |_| {})
        .unwrap();
    assert_eq!((g.finish, g.completion_tokens), (Finish::Cancelled, 0));
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn too_long_prompt_is_a_typed_error() {
    let m = model();
    let ctx = m.info().context_length;
    let prompt = vec![42u32; ctx];
    let err = m
        .generate(
            &prompt,
            &common::greedy(1),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, LocalError::PromptTooLong { prompt_tokens, context_length } if prompt_tokens == ctx && context_length == ctx),
        "{err:?}"
    );
    // ctx - 1 tokens fit and leave exactly one token: Length after 1.
    let prompt = vec![42u32; ctx - 1];
    let g = common::run(m, &prompt, &common::greedy(50));
    assert_eq!((g.finish, g.completion_tokens), (Finish::Length, 1));

    let err = m
        .generate(
            &[],
            &common::greedy(1),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, LocalError::EmptyPrompt));
    let err = m
        .generate(
            &[99_999_999],
            &common::greedy(1),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, LocalError::InvalidToken { .. }));
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn concurrent_generations_are_independent() {
    let m = model();
    let _cache = common::prefix_cache_lock();
    let p1 = chat("What is the capital of France?");
    let p2 = chat("Name three colours.");
    m.clear_prefix_cache();
    let solo1 = common::run(m, &p1, &common::greedy(20)).text;
    let solo2 = common::run(m, &p2, &common::greedy(20)).text;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| common::run(m, &p1, &common::greedy(20)).text);
        let b = s.spawn(|| common::run(m, &p2, &common::greedy(20)).text);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a, solo1);
    assert_eq!(b, solo2);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_SMOLLM2"]
fn forward_pass_matches_llamacpp() {
    // Q4_1 kept as stored, like llama.cpp, on the VNNI prompt kernel (where
    // the CPU has it) and on the portable path; and requantized to Q8_0.
    common::check_against_llamacpp(
        "DSPEX_TEST_GGUF_SMOLLM2",
        "smollm2",
        dspex_local::Requantize::Keep,
        false,
        0.3,
        true,
    );
    common::check_against_llamacpp(
        "DSPEX_TEST_GGUF_SMOLLM2",
        "smollm2",
        dspex_local::Requantize::Keep,
        true,
        0.3,
        true,
    );
    common::check_against_llamacpp(
        "DSPEX_TEST_GGUF_SMOLLM2",
        "smollm2",
        dspex_local::Requantize::SlowTypes,
        true,
        0.5,
        false,
    );
}
