//! Virtual keys in both stores: SQLite in a real file, and PostgreSQL
//! (`DSPEX_TEST_DATABASE_URL`, ignored without it) in a schema of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::SystemTime;

use dspex_analytics::keys::{KeyLimits, KeyState, hash_key};
use dspex_analytics::{AnalyticsError, BudgetPeriod, Store};

/// The whole life of a key, the same on each backend.
async fn life_of_a_key(store: &Store, location: &std::path::Path) {
    let limits = KeyLimits {
        budget_nanos: Some(50_000_000_000),
        budget_period: Some(BudgetPeriod::Month),
        rpm: Some(600),
        tpm: Some(200_000),
        models: vec!["openai/*".into(), "fast".into()],
        expires_ms: None,
    };
    let (key, secret) = store.create_key("team-a", &limits).await.unwrap();
    assert_eq!(key.name, "team-a");
    assert_eq!(key.limits, limits);
    assert_eq!(key.state(0), KeyState::Active);
    assert!(secret.expose().starts_with(&key.prefix));

    // Found by the hash of its text, never by anything else.
    let found = store.key_by_hash(&hash_key(secret.expose())).await.unwrap();
    assert_eq!(found.as_ref(), Some(&key));
    assert!(
        store
            .key_by_hash(&hash_key("sk-dspex-wrong"))
            .await
            .unwrap()
            .is_none()
    );

    // Names are unique.
    let again = store.create_key("team-a", &KeyLimits::default()).await;
    assert!(
        matches!(again, Err(AnalyticsError::KeyExists { .. })),
        "{again:?}"
    );
    // Bad limits name the field.
    let bad = store
        .create_key(
            "team-b",
            &KeyLimits {
                rpm: Some(0),
                ..KeyLimits::default()
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("rpm"), "{bad}");
    let bad = store
        .create_key("team b", &KeyLimits::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("team b"), "{bad}");

    // Rotation: the old text stops matching, the new one matches.
    let (rotated, new_secret) = store.rotate_key("team-a").await.unwrap();
    assert_ne!(new_secret, secret);
    assert!(
        store
            .key_by_hash(&hash_key(secret.expose()))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .key_by_hash(&new_secret.hash())
            .await
            .unwrap()
            .map(|k| k.name),
        Some("team-a".to_owned())
    );
    assert_eq!(rotated.limits, limits);

    // Revocation is kept, and a revoked key cannot be rotated back to life.
    let revoked = store.revoke_key("team-a").await.unwrap();
    let now = dspex_analytics::time::unix_ms(SystemTime::now());
    assert_eq!(revoked.state(now), KeyState::Revoked);
    assert!(store.rotate_key("team-a").await.is_err());
    assert!(matches!(
        store.revoke_key("nobody").await,
        Err(AnalyticsError::KeyNotFound { .. })
    ));

    let (_, other) = store
        .create_key("team-c", &KeyLimits::default())
        .await
        .unwrap();
    let names: Vec<_> = store
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["team-a", "team-c"]);

    // No key's text is stored anywhere in a file store.
    if location.exists() {
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(location.parent().unwrap()).unwrap() {
            stored.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
        }
        let stored = String::from_utf8_lossy(&stored);
        for text in [secret.expose(), new_secret.expose(), other.expose()] {
            assert!(!stored.contains(text), "a key's text is in the store");
        }
        assert!(stored.contains(&other.hash().to_string()));
    }
}

#[tokio::test]
async fn sqlite_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("analytics.sqlite");
    let store = Store::open(path.to_str().unwrap(), None).await.unwrap();
    life_of_a_key(&store, &path).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (DSPEX_TEST_DATABASE_URL)"]
async fn postgres_keys() {
    let url = std::env::var("DSPEX_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("dspex_test_keys_{}_{nanos}", std::process::id());
    let store = Store::open(&url, Some(&schema)).await.unwrap();
    life_of_a_key(&store, std::path::Path::new("/nonexistent/postgres")).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[test]
fn costs_group_by_key_is_the_key_tag() {
    assert_eq!(
        dspex_analytics::GroupBy::parse("key").unwrap(),
        dspex_analytics::GroupBy::Tag(dspex_analytics::record::KEY_TAG.to_owned())
    );
}
