//! Per-delta cost of `FieldStream`: a ChainOfThought reply (reasoning of about
//! 400 chars, then the answer) streamed in deltas of 3 to 5 bytes, as LM tokens
//! arrive, in the chat and the JSON format. Throughput is in deltas, so
//! criterion's time per element is the cost per delta.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dspex_prompt::adapter::{Adapter, FieldDelta, FieldStream};
use dspex_prompt::signature::{Field, FieldType};
use serde_json::json;

const REASONING: &str = "The question asks how many apples are left. Alice starts with 12 \
apples and gives 3 to Bob, leaving 9. She then buys a bag of 6 more, so she has 15. \
Finally she eats 2 of them [one at lunch, one after dinner], which leaves 13. \
Checking: 12 - 3 = 9, 9 + 6 = 15, 15 - 2 = 13. The \"bag\" holds exactly 6 apples, \
so no rounding is involved, and nothing else changes.\nThe answer is therefore 13 apples.";
const ANSWER: &str = "13 apples";

/// `text` cut into deltas of 3, 4, 5, 4, ... bytes (about 4 on average),
/// at char boundaries.
fn deltas(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    for size in [3, 4, 5, 4].into_iter().cycle() {
        if from >= text.len() {
            break;
        }
        let mut to = (from + size).min(text.len());
        while !text.is_char_boundary(to) {
            to += 1;
        }
        out.push(&text[from..to]);
        from = to;
    }
    out
}

fn fields() -> Vec<Field> {
    vec![
        Field::new("reasoning", FieldType::Str),
        Field::new("answer", FieldType::Str),
    ]
}

/// Streams `pieces`, checking that the fields come out whole.
fn check(adapter: Adapter, pieces: &[&str]) {
    let mut stream = FieldStream::new(adapter, fields());
    let mut out = Vec::new();
    for piece in pieces {
        stream.push(piece, &mut out);
    }
    stream.finish(&mut out);
    let text = |field| {
        out.iter()
            .filter(|d| d.field == field)
            .map(|d| d.text.as_str())
            .collect::<String>()
    };
    assert_eq!(text(0), REASONING);
    assert_eq!(text(1), ANSWER);
    assert!(stream.completed());
}

fn stream(c: &mut Criterion) {
    assert!(
        (380..=420).contains(&REASONING.len()),
        "{}",
        REASONING.len()
    );
    let chat = format!(
        "[[ ## reasoning ## ]]\n{REASONING}\n\n[[ ## answer ## ]]\n{ANSWER}\n\n[[ ## completed ## ]]"
    );
    let json = json!({"reasoning": REASONING, "answer": ANSWER}).to_string();

    let mut group = c.benchmark_group("stream");
    for (name, adapter, reply) in [
        ("chat_per_delta", Adapter::Chat, chat),
        ("json_per_delta", Adapter::Json, json),
    ] {
        let pieces = deltas(&reply);
        check(adapter, &pieces);
        group.throughput(Throughput::Elements(pieces.len() as u64));
        let mut out: Vec<FieldDelta> = Vec::with_capacity(pieces.len());
        // A fresh stream per reply, built outside the timing: what is
        // measured is the pushes (and the deltas they allocate).
        group.bench_function(name, |b| {
            b.iter_batched(
                || FieldStream::new(adapter, fields()),
                |mut stream| {
                    out.clear();
                    for piece in &pieces {
                        stream.push(piece, &mut out);
                    }
                    stream.finish(&mut out);
                    stream
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, stream);
criterion_main!(benches);
