//! Property round-trips of the cache's persisted records: a value written
//! through one cache (an L2 entry in redb, and with L3 its vector record) is
//! read back unchanged by a new cache on the same directory (a new process),
//! and a key does not depend on the order of a request's object keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::Arc;
use std::time::Duration;

use dspex_cache::{Cache, CacheKey, LexicalEmbedder, SemanticQuery, SemanticScope, Source};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A value shaped like a cached response: text of any characters, numbers
/// at their limits, nested JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    text: String,
    tokens: u64,
    delta: i64,
    tags: Vec<String>,
    extra: Value,
}

/// JSON whose floats have exact binary forms, so equality after a text
/// round-trip is a property of the cache, not of float printing.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i32..1_000_000).prop_map(|q| Value::from(f64::from(q) / 8.0)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn record() -> impl Strategy<Value = Record> {
    (
        "\\PC{0,200}",
        any::<u64>(),
        any::<i64>(),
        vec("\\PC{0,10}", 0..4),
        json_value(),
    )
        .prop_map(|(text, tokens, delta, tags, extra)| Record {
            text,
            tokens,
            delta,
            tags,
            extra,
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &std::path::Path) -> Cache<Record> {
    Cache::builder()
        .l1(100, 1 << 20)
        .l2_redb(dir, 1 << 30)
        .l3(Arc::new(LexicalEmbedder::new()))
        .build()
        .await
        .unwrap()
}

/// The same object with its keys in reverse order, at every depth.
fn reversed(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.reverse();
            // serde_json's map keeps insertion order only with
            // `preserve_order`; either way the key must not change.
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), reversed(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// An entry written by one cache is read back unchanged by a new cache
    /// on the same directory, from L2 by its key and from the persisted L3
    /// vector by the same prompt under another key.
    #[test]
    fn persisted_entries_read_back_unchanged(
        value in record(),
        prompt in "[a-zA-Z ]{1,12}[a-zA-Z]{3,12}",
        namespace in "[a-z0-9_-]{1,12}",
        ttl_s in 60u64..10_000_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let scope = SemanticScope::from_canonical_json(&json!({"model": "m"}));
        let query = SemanticQuery::new(scope, prompt.clone());
        let key = CacheKey::from_canonical_json(&namespace, &json!({"prompt": prompt})).unwrap();
        let other = CacheKey::from_canonical_json(&namespace, &json!({"prompt": prompt, "n": 2})).unwrap();
        runtime().block_on(async {
            let writer = open(dir.path()).await;
            writer
                .insert(&key, value.clone(), Some(&query), Some(Duration::from_secs(ttl_s)))
                .await
                .unwrap();
        });
        let (by_key, by_meaning) = runtime().block_on(async {
            let reader = open(dir.path()).await;
            let by_key = reader.get(&key, None).await.unwrap();
            let by_meaning = reader.get(&other, Some(&query)).await;
            (by_key, by_meaning)
        });
        prop_assert_eq!(by_key.source, Source::L2);
        prop_assert_eq!(&*by_key.value, &value);
        let by_meaning = by_meaning.expect("the persisted vector answers the same prompt");
        prop_assert!(matches!(by_meaning.source, Source::L3 { .. }), "{:?}", by_meaning.source);
        prop_assert_eq!(&*by_meaning.value, &value);
    }

    /// A request's key depends on its content, not on the order of its
    /// object keys.
    #[test]
    fn keys_ignore_object_key_order(request in json_value(), namespace in "[a-z]{1,8}") {
        let a = CacheKey::from_canonical_json(&namespace, &request).unwrap();
        let b = CacheKey::from_canonical_json(&namespace, &reversed(&request)).unwrap();
        prop_assert_eq!(a, b);
    }
}
