//! Tests on Gemma 3 270M (pretrained, Q4_K_M). Set DSPEX_TEST_GGUF_GEMMA3.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::sync::OnceLock;

use dspex_local::{ChatTurn, Finish, GenerateParams, LocalModel};

static MODEL: OnceLock<LocalModel> = OnceLock::new();

fn model() -> &'static LocalModel {
    common::model("DSPEX_TEST_GGUF_GEMMA3", &MODEL)
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn info_matches_the_file() {
    let info = model().info();
    assert_eq!(info.architecture, "gemma3");
    assert_eq!(info.vocab_size, 262_144);
    assert!(info.chat_template.is_none());
    assert!(info.add_bos);
    assert_eq!(info.bos.as_ref().map(|t| t.id), Some(2));
    assert_eq!(
        info.end_of_turn.as_ref().map(|t| t.text.as_str()),
        Some("<end_of_turn>")
    );
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn tokenizer_matches_reference_ids() {
    let m = model();
    let cases = common::reference("gemma3");
    assert!(cases.len() >= 5);
    for (text, ids) in cases {
        assert_eq!(m.tokenize(&text).unwrap(), ids, "tokenizing {text:?}");
    }
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn plain_template_starts_with_bos() {
    let m = model();
    let text = m
        .render_chat(&[
            ChatTurn::new("system", "Be brief."),
            ChatTurn::new("user", "Hi"),
        ])
        .unwrap();
    assert_eq!(text, "<bos>Be brief.\n\nUser: Hi\nAssistant:");
    let ids = m.tokenize(&text).unwrap();
    assert_eq!(ids.first(), Some(&2));
    assert_eq!(m.tokenize_prompt("Hello").unwrap().first(), Some(&2));
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn completes_a_fact_and_is_deterministic() {
    let m = model();
    // (" the capital of the country of France." is this base model's -
    // and llama.cpp's - greedy answer to "The capital of France is".)
    let p = m.tokenize_prompt("Paris is the capital of").unwrap();
    let a = common::run(m, &p, &common::greedy(8));
    assert!(a.text.starts_with(" France"), "{:?}", a.text);
    let b = common::run(m, &p, &common::greedy(8));
    assert_eq!(a.text, b.text);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn cached_prefix_gives_the_cold_text() {
    let m = model();
    let _cache = common::prefix_cache_lock();
    let base =
        "Facts: The Nile is in Africa. The Seine flows through Paris. Mount Fuji is in Japan. "
            .repeat(4);
    let p1 = m
        .tokenize_prompt(&format!("{base}Question: Where is Mount Fuji?\nAnswer:"))
        .unwrap();
    let p2 = m
        .tokenize_prompt(&format!(
            "{base}Question: Which river flows through Paris?\nAnswer:"
        ))
        .unwrap();
    m.clear_prefix_cache();
    let cold = common::run(m, &p2, &common::greedy(12));
    m.clear_prefix_cache();
    common::run(m, &p1, &common::greedy(2));
    let warm = common::run(m, &p2, &common::greedy(12));
    assert!(
        warm.cached_prompt_tokens > 40,
        "{}",
        warm.cached_prompt_tokens
    );
    assert_eq!(warm.text, cold.text);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn sliding_window_prompt_beyond_512_tokens() {
    // Longer than the local layers' 512-token window, processed cold and
    // from a cached prefix: both must agree (exercises the window mask
    // with an offset and the decode-time window).
    let m = model();
    let _cache = common::prefix_cache_lock();
    let base = "One two three four five six seven eight nine ten. ".repeat(60);
    let p = m
        .tokenize_prompt(&format!("{base}After ten comes"))
        .unwrap();
    assert!(p.len() > 600, "{}", p.len());
    m.clear_prefix_cache();
    let cold = common::run(m, &p, &common::greedy(6));
    let again = common::run(m, &p, &common::greedy(6));
    assert_eq!(again.cached_prompt_tokens, p.len() - 1);
    assert_eq!(cold.text, again.text);
    let g = common::run(
        m,
        &p,
        &GenerateParams {
            max_tokens: 3,
            ..common::greedy(3)
        },
    );
    assert_eq!(g.finish, Finish::Length);
}

#[test]
#[ignore = "needs DSPEX_TEST_GGUF_GEMMA3"]
fn forward_pass_matches_llamacpp() {
    common::check_against_llamacpp(
        "DSPEX_TEST_GGUF_GEMMA3",
        "gemma3",
        dspex_local::Requantize::Keep,
        true,
        0.5,
        true,
    );
    common::check_against_llamacpp(
        "DSPEX_TEST_GGUF_GEMMA3",
        "gemma3",
        dspex_local::Requantize::SlowTypes,
        true,
        0.6,
        false,
    );
}
