//! The streaming field parser: a reply pushed in arbitrary pieces must give
//! each field the same text as the whole reply pushed at once (it promises
//! this however the reply is split).
#![no_main]

mod common;

use dspex_prompt::Adapter;
use dspex_prompt::adapter::{FieldDelta, FieldStream};
use libfuzzer_sys::fuzz_target;

fn texts(stream: &mut FieldStream, pieces: &[&str], fields: usize) -> Vec<String> {
    let mut deltas: Vec<FieldDelta> = Vec::new();
    for piece in pieces {
        stream.push(piece, &mut deltas);
    }
    stream.finish(&mut deltas);
    let mut texts = vec![String::new(); fields];
    for delta in deltas {
        texts[delta.field].push_str(&delta.text);
    }
    texts
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: the adapter; byte 1: the split stride; the rest: the reply.
    let [mode, stride, rest @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let adapter = if mode & 1 == 0 {
        Adapter::Chat
    } else {
        Adapter::Json
    };
    let (signature, reply) = common::signature_and_text(text);
    let fields = signature.outputs().to_vec();
    // Pieces of 1..=16 bytes (varying with the stride), cut at char boundaries.
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut step = usize::from(stride % 16) + 1;
    while at < reply.len() {
        let mut end = (at + step).min(reply.len());
        while !reply.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&reply[at..end]);
        at = end;
        step = step % 16 + 1;
    }
    let mut whole = FieldStream::new(adapter, fields.clone());
    let expected = texts(&mut whole, &[reply], fields.len());
    let mut split = FieldStream::new(adapter, fields.clone());
    let got = texts(&mut split, &pieces, fields.len());
    assert_eq!(expected, got, "pieces {pieces:?}");
    assert_eq!(split.reply(), reply);
    assert_eq!(whole.completed(), split.completed());
});
