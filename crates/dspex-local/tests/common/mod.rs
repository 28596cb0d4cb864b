//! Helpers for the tests that need a real model file.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stderr
)]

use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use dspex_local::{GenerateParams, Generation, LoadOptions, LocalModel};

/// Held by every test that clears the prompt-prefix cache or asserts on
/// what it reused: the tests of one binary share one model (and so one
/// cache) and run in parallel, so one test's clear must not land between
/// another's warm-up and its cached run.
pub static PREFIX_CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`PREFIX_CACHE`] (a test that panicked while holding it does not
/// matter: the cache has no invariant a panic breaks).
pub fn prefix_cache_lock() -> std::sync::MutexGuard<'static, ()> {
    PREFIX_CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Loads the model named by `env` once per test binary.
pub fn model(env: &str, cell: &'static OnceLock<LocalModel>) -> &'static LocalModel {
    cell.get_or_init(|| {
        let path = std::env::var(env).unwrap_or_else(|_| panic!("set {env} to the GGUF file"));
        let options = LoadOptions {
            context_length: Some(2048),
            ..LoadOptions::default()
        };
        LocalModel::load(path.as_ref(), &options).expect("load")
    })
}

/// Generates and checks that the streamed pieces add up to the text.
pub fn run(model: &LocalModel, prompt: &[u32], params: &GenerateParams) -> Generation {
    let mut streamed = String::new();
    let g = model
        .generate(prompt, params, &AtomicBool::new(false), &mut |p| {
            streamed.push_str(p);
        })
        .expect("generate");
    assert_eq!(streamed, g.text, "streamed pieces must add up to the text");
    g
}

pub fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..GenerateParams::default()
    }
}

/// Reference token ids: `{"smollm2": [{"text":..., "ids": [...]}], "gemma3": [...]}`.
pub fn reference(model_key: &str) -> Vec<(String, Vec<u32>)> {
    let path = std::env::var("DSPEX_TEST_TOKEN_REFERENCE").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/token_ids.json").to_owned()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("reference json");
    json[model_key]
        .as_array()
        .unwrap_or_else(|| panic!("no {model_key} in {path}"))
        .iter()
        .map(|c| {
            let text = c["text"].as_str().expect("text").to_owned();
            let ids = c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|i| i.as_u64().expect("id") as u32)
                .collect();
            (text, ids)
        })
        .collect()
}

/// Checks greedy continuations against llama.cpp's (tests/data/llamacpp_greedy.json,
/// made with tests/data/llamacpp_ref_logits.py): same ids for 10 steps and
/// the first step's top logit within `tol`. With `exact = false` (weights
/// requantized, so not the arithmetic llama.cpp does) only the first token
/// must agree; the rest may drift.
pub fn check_against_llamacpp(
    path_env: &str,
    key: &str,
    requantize: dspex_local::Requantize,
    vnni: bool,
    tol: f32,
    exact: bool,
) {
    let path = std::env::var(path_env).unwrap_or_else(|_| panic!("set {path_env}"));
    let options = LoadOptions {
        context_length: Some(512),
        requantize,
        vnni,
        ..LoadOptions::default()
    };
    let m = LocalModel::load(path.as_ref(), &options).expect("load");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/llamacpp_greedy.json"
    ))
    .unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    let mut n = 0;
    for case in cases
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["model"] == key)
    {
        let mut prompt = ids(&case["prompt_ids"]);
        assert_eq!(
            m.tokenize_prompt(case["text"].as_str().unwrap()).unwrap(),
            prompt
        );
        let want = ids(&case["llamacpp_greedy_ids"]);
        let want_top = case["llamacpp_top10"][0][1].as_f64().unwrap() as f32;
        let mut got = Vec::new();
        for step in 0..want.len() {
            let logits = m.next_token_logits(&prompt).unwrap();
            let (best, &top) = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            if step == 0 {
                assert!(
                    (top - want_top).abs() < tol,
                    "{key} {:?}: top logit {top} vs llama.cpp {want_top}",
                    case["text"]
                );
            }
            got.push(best as u32);
            prompt.push(best as u32);
        }
        if exact {
            assert_eq!(got, want, "{key} {:?}", case["text"]);
        } else {
            assert_eq!(got.first(), want.first(), "{key} {:?}", case["text"]);
            let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!(
                "{key} {requantize:?} {:?}: {agree}/{} greedy tokens as llama.cpp",
                case["text"],
                want.len()
            );
        }
        n += 1;
    }
    assert!(n >= 3);
}
