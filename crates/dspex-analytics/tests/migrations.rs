//! Schema migrations on SQLite: versioned, applied once when several openers
//! race on a new file, and an old database (from before migrations and
//! rollups) brought up to date with its rollups built. PostgreSQL's are in
//! `postgres.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::Arc;

use dspex_analytics::{GroupBy, SqliteStore, Store, TimeRange};

use common::traffic;

#[test]
fn concurrent_openers_of_a_new_file_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.sqlite");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || SqliteStore::open(path).map(|_| ()))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().expect("every opener succeeds");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("SELECT version, name FROM dspex_schema_migrations ORDER BY version")
        .unwrap();
    let versions: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        versions,
        vec![
            (1, "calls and api_keys".to_owned()),
            (2, "hourly rollups".to_owned()),
            (3, "call ids".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_database_from_before_migrations_is_brought_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    // Write rows, then make the file look like one from before migrations,
    // rollups and call ids existed.
    {
        let store = Store::open(path.to_str().unwrap(), None).await.unwrap();
        store.insert(Arc::new(traffic())).await.unwrap();
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE dspex_schema_migrations; DROP TABLE call_rollups; \
             DROP INDEX calls_call_id; ALTER TABLE calls DROP COLUMN call_id;",
        )
        .unwrap();
    }
    let store = match Store::open(path.to_str().unwrap(), None).await.unwrap() {
        Store::Sqlite(s) => Store::Sqlite(s.with_exact_limit(0)),
        Store::Postgres(_) => unreachable!(),
    };
    assert_eq!(store.schema_version().await.unwrap(), 3);
    assert_eq!(store.count().await.unwrap(), 9);
    // With an exact limit of 0 the whole hours come from the rebuilt rollups.
    let rows = store
        .get_cost_analysis(TimeRange::All, &[GroupBy::Provider])
        .await
        .unwrap();
    let requests: Vec<u64> = rows.iter().map(|r| r.requests).collect();
    assert_eq!(requests, vec![2, 1, 6]);
}

#[tokio::test]
async fn a_database_newer_than_this_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite");
    drop(Store::open(path.to_str().unwrap(), None).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO dspex_schema_migrations (version, name, applied_ms) VALUES (99, 'future', 0)",
            [],
        )
        .unwrap();
    }
    let error = Store::open(path.to_str().unwrap(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("version 99"), "{error}");
    assert!(error.contains("upgrade DSPex"), "{error}");
}
