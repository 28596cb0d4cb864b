//! `[analytics] durability = "wal"` under kill -9: a process making calls
//! is killed 50 times at random moments; every call it saw complete is in
//! the store afterwards, once, and the calls the upstream answered but no
//! row records are only those in flight at a kill.
//!
//! The calling processes are this test binary run again
//! (`DSPEX_KILL_WORKER` set); the mock upstream runs in the parent, so it
//! survives the kills and counts every request it received.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dspex::analytics::TimeRange;
use dspex::core::CorrelationId;
use dspex::core::config::ConfigLoader;
use dspex::mock::{MockConfig, MockServer};
use dspex::{Message, RequestOptions, Runtime, config_keys};

/// Calls in flight at once in a worker.
const CONCURRENCY: usize = 4;
const KILLS: usize = 50;

fn config(upstream_url: &str, dir: &Path, durability: &str) -> String {
    format!(
        "[providers.openai]\nkind = \"openai\"\nbase_url = \"{upstream_url}\"\n\
         [analytics]\nstore = \"{}\"\ndurability = \"{durability}\"\n",
        dir.join("calls.sqlite").display()
    )
}

async fn runtime(text: &str) -> Runtime {
    let loader = ConfigLoader::builder(&config_keys())
        .toml_str(text)
        .without_env()
        .build()
        .unwrap();
    Runtime::from_config_with_env(&loader, &|name| {
        (name == "OPENAI_API_KEY").then(|| "sk-kill-test".to_owned())
    })
    .await
    .unwrap()
}

/// The worker: calls until killed, printing each call's correlation id once
/// the call has returned (success or failure: both are recorded calls).
fn worker(text: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = runtime(text).await;
        let tasks = (0..CONCURRENCY).map(|_| {
            let client = runtime.client().clone();
            tokio::spawn(async move {
                loop {
                    let id = CorrelationId::generate();
                    let options = RequestOptions::new().correlation_id(id.clone());
                    // Failures are calls too; what matters is that it returned.
                    let _ = client
                        .request("openai", vec![Message::user("Name a prime.")], options)
                        .await;
                    println!("done {}", id.as_str());
                }
            })
        });
        // The callers never end: the process runs until it is killed.
        wait_for_callers(tasks.collect()).await;
    });
}

async fn wait_for_callers(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        // A caller ends only by panicking; that fails the parent's checks.
        let _ = task.await;
    }
}

/// Runs a worker, kills it with SIGKILL after `after`, and returns the
/// correlation ids of the calls it saw complete.
fn run_and_kill(text: &str, after: Duration) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill_9_during_calls_loses_no_completed_call",
            "--nocapture",
            "--ignored",
        ])
        .env("DSPEX_KILL_WORKER", text)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(after);
    // Child::kill sends SIGKILL on Unix: no destructor, no flush runs.
    child.kill().unwrap();
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("done ").map(str::to_owned))
        .collect()
}

#[test]
#[ignore = "starts 50 processes and kills them (about a minute); run with --ignored"]
fn kill_9_during_calls_loses_no_completed_call() {
    if let Ok(text) = std::env::var("DSPEX_KILL_WORKER") {
        worker(&text);
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt
        .block_on(MockServer::start(MockConfig {
            latency_ms: 5,
            jitter_ms: 10,
            ..MockConfig::default()
        }))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(&upstream.base_url(), dir.path(), "wal");

    // Kill times spread over 0.3-1.2 s, from a fixed sequence so a failure
    // can be re-run the same way.
    let mut completed: Vec<String> = Vec::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..KILLS {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let after = Duration::from_millis(300 + (state >> 33) % 900);
        completed.extend(run_and_kill(&text, after));
    }
    // One clean start replays the last process's journal and shuts down.
    let (rows, store_count) = rt.block_on(async {
        let runtime = runtime(&text).await;
        let replayed = runtime.recorder_stats().unwrap().rows_replayed;
        assert!(replayed > 0, "the last killed process left calls to replay");
        let store = runtime.store().unwrap().clone();
        runtime.shutdown().await.unwrap();
        let rows = store.rows(TimeRange::parse("1h").unwrap()).await.unwrap();
        (rows, store.count().await.unwrap())
    });
    assert_eq!(rows.len() as u64, store_count);
    let journal = dir.path().join("calls.sqlite.journal");
    let left: Vec<_> = std::fs::read_dir(&journal).unwrap().collect();
    assert!(left.is_empty(), "a clean shutdown leaves no journal");

    let mut per_call: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *per_call
            .entry(row.correlation_id.as_deref().unwrap())
            .or_default() += 1;
    }
    let duplicated = per_call.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated, 0, "no call is stored twice");
    let stored: HashSet<&str> = per_call.keys().copied().collect();
    let missing: Vec<&String> = completed
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed calls are missing from the store, e.g. {:?}",
        missing.len(),
        completed.len(),
        missing.first()
    );
    // The upstream's count: every stored call reached it (no retries are
    // configured to fail here), and what it answered beyond the rows are
    // calls in flight when a process was killed, at most CONCURRENCY each.
    let upstream_calls = upstream.stats().requests;
    let rows_n = rows.len() as u64;
    assert!(
        rows_n <= upstream_calls,
        "{rows_n} rows for {upstream_calls} calls"
    );
    assert!(
        upstream_calls - rows_n <= (KILLS * CONCURRENCY) as u64,
        "{upstream_calls} upstream calls but {rows_n} rows"
    );
    eprintln!(
        "{KILLS} kills: {} calls completed for their callers, {rows_n} rows, {upstream_calls} upstream calls ({} in flight at a kill)",
        completed.len(),
        upstream_calls - rows_n
    );
}
