//! A process killed (SIGKILL) in the middle of writing leaves an L2 store that
//! opens and holds no partial entry. The test re-executes this test binary as
//! a child that writes in a loop, kills it at random moments, reopens the
//! store and checks every entry, 20 times.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::Path;
use std::time::Duration;

use dspex_cache::{Cache, CacheKey, Tier};
use rand::Rng;
use serde::{Deserialize, Serialize};

const CHILD_ENV: &str = "DSPEX_CACHE_KILL_CHILD_DIR";

/// A record that refuses to decode unless its checksum matches: a torn or
/// mixed-up value fails `verify_store`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "RawRecord")]
struct Record {
    i: u64,
    data: String,
    sum: u64,
}

#[derive(Deserialize)]
struct RawRecord {
    i: u64,
    data: String,
    sum: u64,
}

fn checksum(i: u64, data: &str) -> u64 {
    data.bytes().fold(i.wrapping_mul(0x9e37_79b9), |acc, b| {
        acc.rotate_left(5) ^ u64::from(b)
    })
}

impl TryFrom<RawRecord> for Record {
    type Error = String;
    fn try_from(raw: RawRecord) -> Result<Self, String> {
        if checksum(raw.i, &raw.data) == raw.sum {
            Ok(Self {
                i: raw.i,
                data: raw.data,
                sum: raw.sum,
            })
        } else {
            Err(format!("record {} is torn", raw.i))
        }
    }
}

async fn open(dir: &Path) -> Cache<Record> {
    Cache::builder()
        .l2_redb(dir, 512 * 1024)
        .build()
        .await
        .unwrap()
}

async fn write_records(dir: &Path, start: u64, count: Option<u64>) {
    let cache = open(dir).await;
    let mut rng = rand::rng();
    let mut i = start;
    loop {
        if count.is_some_and(|c| i >= start + c) {
            return;
        }
        let len = rng.random_range(10..20_000);
        let data: String = (0..len)
            .map(|n| char::from(b'a' + ((i + n) % 26) as u8))
            .collect();
        let record = Record {
            i,
            sum: checksum(i, &data),
            data,
        };
        let key = CacheKey::from_bytes("kill", &(i % 300).to_le_bytes()).unwrap();
        cache.insert(&key, record, None, None).await.unwrap();
        i += 1;
    }
}

/// In the child (env set): writes until killed. Otherwise: a bounded run whose
/// store must check out, the same check the parent makes after each kill.
#[tokio::test]
async fn child_writer() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let start = rand::rng().random_range(0..1_000_000);
        write_records(Path::new(&dir), start, None).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 0, Some(100)).await;
    let cache = open(dir.path()).await;
    let check = cache.verify_store().await.unwrap().unwrap();
    assert!(check.is_consistent(), "{check:?}");
    assert!(check.entries > 0);
    assert!(check.recorded_bytes <= 512 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_write_the_store_reopens_with_no_partial_entry() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut saw_entries = 0;
    for round in 0..20 {
        let mut child = tokio::process::Command::new(&exe)
            .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        // SIGKILL: no destructor, no flush, no chance to finish the transaction.
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert!(!status.success(), "round {round}: the child was killed");

        let cache = open(dir.path()).await;
        let check = cache.verify_store().await.unwrap().unwrap();
        assert!(check.is_consistent(), "round {round}: {check:?}");
        let stats = cache.stats().await;
        assert_eq!(stats.tier(Tier::L2).unwrap().entries, check.entries);
        saw_entries += u64::from(check.entries > 0);
        // Reading an entry back works too.
        for i in 0..300u64 {
            let key = CacheKey::from_bytes("kill", &i.to_le_bytes()).unwrap();
            if let Some(hit) = cache.get(&key, None).await {
                assert_eq!(hit.value.i % 300, i);
                break;
            }
        }
        drop(cache);
    }
    assert!(
        saw_entries >= 10,
        "the children wrote before being killed: {saw_entries}"
    );
}
