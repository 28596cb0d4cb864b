//! The write-ahead journal of `durability = "wal"`: appends are on disk when
//! their ticket resolves, a dead process's folder is replayed (a torn last
//! line skipped, anything else bad named), a live one is left alone, and a
//! checkpoint deletes only sealed segments.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::io::Write;
use std::sync::Arc;

use dspex_analytics::{AnalyticsError, CallRecord, Journal, PriceTable};

use common::Spec;

fn prices() -> Arc<PriceTable> {
    Arc::new(PriceTable::bundled().unwrap())
}

/// A row told apart by its latency.
fn record(n: i64) -> CallRecord {
    let mut record = Spec::new("openai", "gpt-4o-mini", common::usage(100, 20, 0, 0))
        .record_ms(1_700_000_000_000, &prices());
    record.latency_us = n;
    record
}

fn latencies(records: &[CallRecord]) -> Vec<i64> {
    records.iter().map(|r| r.latency_us).collect()
}

fn segment_files(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn an_append_is_on_disk_when_its_ticket_resolves() {
    let root = tempfile::tempdir().unwrap();
    let (journal, leftovers) = Journal::open(root.path(), prices()).unwrap();
    assert_eq!(leftovers.folders(), 0);
    let tickets: Vec<_> = (0..100)
        .map(|n| journal.append_record(&record(n)))
        .collect();
    for ticket in tickets {
        ticket.await;
    }
    let text = std::fs::read_to_string(&segment_files(journal.folder())[0]).unwrap();
    let lines: Vec<CallRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(latencies(&lines), (0..100).collect::<Vec<_>>());
    let stats = journal.stats();
    assert_eq!(stats.appended, 100);
    assert!(
        stats.syncs >= 1 && stats.syncs <= 100,
        "grouped syncs: {stats:?}"
    );
    assert_eq!(stats.errors, 0);
}

#[tokio::test]
async fn a_dead_process_is_replayed_and_a_live_one_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let (live, _) = Journal::open(root.path(), prices()).unwrap();
    live.append_record(&record(1)).await;
    // A second journal on the same root while the first lives: it must not
    // take the live folder.
    let (second, leftovers) = Journal::open(root.path(), prices()).unwrap();
    assert_eq!(
        leftovers.folders(),
        0,
        "a live process's folder is not replayed"
    );
    second.append_record(&record(2)).await;
    let dead_folder = second.folder().to_path_buf();
    // The second process "dies": its lock goes with it, its folder stays.
    drop(second);
    // The dead process's last write was torn mid-line.
    let segment = segment_files(&dead_folder)[0].clone();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    file.write_all(b"{\"at_ms\":17").unwrap();
    drop(file);

    let (third, leftovers) = Journal::open(root.path(), prices()).unwrap();
    assert_eq!(leftovers.folders(), 1);
    let (records, torn) = leftovers.read().unwrap();
    assert_eq!(latencies(&records), vec![2]);
    assert_eq!(torn, 1, "the torn last line is skipped and counted");
    leftovers.remove().unwrap();
    assert!(!dead_folder.exists());
    assert!(live.folder().exists() && third.folder().exists());
}

#[tokio::test]
async fn a_bad_line_before_the_end_is_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(root.path(), prices()).unwrap();
    journal.append_record(&record(1)).await;
    let folder = journal.folder().to_path_buf();
    drop(journal);
    let segment = segment_files(&folder)[0].clone();
    let good = std::fs::read_to_string(&segment).unwrap();
    std::fs::write(&segment, format!("{good}not json\n{good}")).unwrap();
    let (_journal, leftovers) = Journal::open(root.path(), prices()).unwrap();
    let error = leftovers.read().unwrap_err();
    assert!(
        matches!(&error, AnalyticsError::Journal { message, .. } if message.starts_with("line 2:")),
        "{error}"
    );
}

#[tokio::test]
async fn a_checkpoint_removes_only_sealed_segments() {
    let root = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(root.path(), prices()).unwrap();
    journal.append_record(&record(1)).await;
    let sealed = journal.seal().await;
    assert_eq!(sealed.len(), 1);
    journal.append_record(&record(2)).await;
    journal.remove(&sealed).unwrap();
    let left = segment_files(journal.folder());
    assert_eq!(left.len(), 1, "the live segment stays");
    let text = std::fs::read_to_string(&left[0]).unwrap();
    let only: CallRecord = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(only.latency_us, 2);
    // A clean close deletes the folder.
    let folder = journal.folder().to_path_buf();
    journal.close().unwrap();
    assert!(!folder.exists());
}

#[tokio::test]
async fn a_row_written_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.sqlite");
    let store = match dspex_analytics::Store::open(path.to_str().unwrap(), None)
        .await
        .unwrap()
    {
        dspex_analytics::Store::Sqlite(s) => dspex_analytics::Store::Sqlite(s.with_exact_limit(0)),
        dspex_analytics::Store::Postgres(_) => unreachable!(),
    };
    common::rows_written_twice_are_stored_once(&store).await;
}
