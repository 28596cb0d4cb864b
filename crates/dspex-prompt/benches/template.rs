//! Template rendering benchmarks.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_prompt::template::PromptTemplate;
use serde_json::json;

const PROMPT: &str = "\
You are {{ persona }}, helping {{ user_name }} with {{ task }}.
Answer in {{ language }} with a {{ tone }} tone, in at most {{ max_words }} words.
Use the context below; if it is not enough, say so instead of guessing.

Context ({{ source }}, retrieved {{ date }}):
{{ context }}

Question: {{ question }}
Answer:";

fn render_10_vars(c: &mut Criterion) {
    let template = PromptTemplate::create("qa", PROMPT).expect("template");
    assert_eq!(template.variables().len(), 10);
    let vars = json!({
        "persona": "a careful research assistant",
        "user_name": "Ada",
        "task": "a literature review",
        "language": "English",
        "tone": "neutral",
        "max_words": 120,
        "source": "the project wiki",
        "date": "2025-01-31",
        "context": "Transformers were introduced in 2017.",
        "question": "When were transformers introduced?",
    });
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_value(vars.clone()).expect("map");

    let mut group = c.benchmark_group("template");
    group.bench_function("render_10_vars", |b| {
        b.iter(|| template.render(black_box(&vars)).unwrap());
    });
    group.bench_function("render_10_vars_btreemap", |b| {
        b.iter(|| template.render(black_box(&map)).unwrap());
    });
    group.bench_function("missing_vars_error", |b| {
        let empty = json!({});
        b.iter(|| template.render(black_box(&empty)).unwrap_err());
    });
    group.finish();
}

fn create(c: &mut Criterion) {
    c.bench_function("template/create_10_vars", |b| {
        b.iter(|| PromptTemplate::create("qa", black_box(PROMPT)).unwrap());
    });
}

criterion_group!(benches, render_10_vars, create);
criterion_main!(benches);
