//! Two processes whose clocks disagree by three minutes share one limit
//! through Redis, and no window of the limit's length ever admits more than
//! the limit.
//!
//! The worker processes are this test binary run again (`DSPEX_SKEW_WORKER`
//! set), each under `faketime` with its own offset (Debian's `faketime`
//! package: it shifts the wall clock and the monotonic clock of the process).
//! Each admitted request is sent at once to a judge, a TCP listener in the
//! parent, which records the arrival and the admission's Redis time.
//!
//! Run with `--ignored`; needs Redis at `DSPEX_TEST_REDIS_URL` and `faketime`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dspex_core::protect::{Admission, BucketSpec, Cost, RedisLimiter, Unit};

const LIMIT: u64 = 50;
const WINDOW: Duration = Duration::from_secs(1);
const RUN_FOR: Duration = Duration::from_secs(4);
/// Concurrent callers in each worker process.
const CALLERS: usize = 8;
/// The clock offsets of the two workers: three minutes apart.
const OFFSETS: [&str; 2] = ["+90s", "-90s"];

fn redis_url() -> String {
    std::env::var("DSPEX_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The worker's body: admits as fast as the shared limit allows for
/// `RUN_FOR`, reporting each admission to the judge.
fn worker(judge: &str, name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stream = Arc::new(Mutex::new(TcpStream::connect(judge).unwrap()));
    // The first line tells the judge this process's wall clock.
    writeln!(stream.lock().unwrap(), "clock {}", unix_micros()).unwrap();
    runtime.block_on(async {
        let limiter = RedisLimiter::connect(
            &redis_url(),
            name,
            vec![BucketSpec::new(Unit::Requests, LIMIT, WINDOW)],
        )
        .await
        .expect("Redis reachable");
        let end = tokio::time::Instant::now() + RUN_FOR;
        let callers = (0..CALLERS).map(|_| {
            let limiter = limiter.clone();
            let stream = Arc::clone(&stream);
            tokio::spawn(async move {
                while tokio::time::Instant::now() < end {
                    let reservation = limiter
                        .reserve(Cost::call(0, 0), Duration::from_secs(5))
                        .await
                        .unwrap();
                    let line = format!("admitted {}\n", reservation.admitted_at_micros());
                    stream.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            })
        });
        for caller in join_in_order(callers).await {
            caller.unwrap();
        }
    });
}

async fn join_in_order<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await);
    }
    out
}

/// The most stamps that fall in any half-open window of length `window`.
fn busiest_window(stamps: &mut [u128], window: u128) -> usize {
    stamps.sort_unstable();
    let mut start = 0;
    let mut most = 0;
    for end in 0..stamps.len() {
        while stamps[end] - stamps[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[test]
#[ignore = "needs Redis at DSPEX_TEST_REDIS_URL (default redis://127.0.0.1:6379) and faketime; run with --ignored"]
fn processes_with_skewed_clocks_share_one_limit() {
    if let (Ok(judge), Ok(name)) = (
        std::env::var("DSPEX_SKEW_WORKER"),
        std::env::var("DSPEX_SKEW_NAME"),
    ) {
        worker(&judge, &name);
        return;
    }
    let faketime = Command::new("faketime").arg("--version").output();
    assert!(
        faketime.is_ok(),
        "this test needs faketime (Debian package `faketime`) to skew the workers' clocks"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let judge = listener.local_addr().unwrap().to_string();
    let name = format!("skew-{}", uuid::Uuid::new_v4().simple());
    let me = std::env::current_exe().unwrap();
    let mut children: Vec<_> = OFFSETS
        .iter()
        .map(|offset| {
            Command::new("faketime")
                .arg("-f")
                .arg(offset)
                .arg(&me)
                .args([
                    "--exact",
                    "processes_with_skewed_clocks_share_one_limit",
                    "--ignored",
                    "--nocapture",
                ])
                .env("DSPEX_SKEW_WORKER", &judge)
                .env("DSPEX_SKEW_NAME", &name)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();

    // The judge: one reader thread per worker connection.
    let start = Instant::now();
    let readers: Vec<_> = (0..OFFSETS.len())
        .map(|_| {
            let (connection, _) = listener.accept().unwrap();
            std::thread::spawn(move || {
                let mut clock_offset = None;
                let mut admissions = Vec::new();
                let mut arrivals = Vec::new();
                for line in BufReader::new(connection).lines() {
                    let line = line.unwrap();
                    let (what, value) = line.split_once(' ').unwrap();
                    let value: u128 = value.parse().unwrap();
                    match what {
                        "clock" => {
                            clock_offset = Some(
                                i128::try_from(value).unwrap()
                                    - i128::try_from(unix_micros()).unwrap(),
                            );
                        }
                        "admitted" => {
                            admissions.push(value);
                            arrivals.push(start.elapsed().as_micros());
                        }
                        other => panic!("unexpected line from a worker: {other}"),
                    }
                }
                (clock_offset.unwrap(), admissions, arrivals)
            })
        })
        .collect();
    for child in &mut children {
        assert!(child.wait().unwrap().success(), "a worker failed");
    }
    let mut offsets = Vec::new();
    let mut admissions = Vec::new();
    let mut arrivals = Vec::new();
    let mut per_worker = Vec::new();
    for reader in readers {
        let (offset, stamps, arrived) = reader.join().unwrap();
        offsets.push(offset);
        per_worker.push(stamps.len());
        admissions.extend(stamps);
        arrivals.extend(arrived);
    }
    // The skew was real: the workers' clocks were three minutes apart.
    offsets.sort_unstable();
    let skew = offsets[1] - offsets[0];
    assert!(
        (170_000_000..=190_000_000).contains(&skew),
        "the workers' clocks should differ by about 180 s, differed by {skew} us"
    );
    // Both processes got room, and together they used the limit.
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers were admitted: {per_worker:?}"
    );
    let total = admissions.len();
    assert!(
        total as u64 >= LIMIT * RUN_FOR.as_secs(),
        "the limit was used: {total} admissions in {RUN_FOR:?}"
    );
    // The judge: by the one clock that both processes share (Redis's), no
    // window of the limit's length ever held more than the limit.
    let busiest = busiest_window(&mut admissions, WINDOW.as_micros());
    assert!(
        busiest as u64 <= LIMIT,
        "{busiest} admissions within {WINDOW:?} (limit {LIMIT}); per worker {per_worker:?}"
    );
    // Arrival times at the judge add each request's own delay after its
    // admission (scheduling, the socket), which no limiter controls: shown,
    // not asserted (README, "Shared limits").
    let busiest_arrivals = busiest_window(&mut arrivals, WINDOW.as_micros());
    eprintln!(
        "skew {skew} us, {total} admissions ({per_worker:?}), busiest {WINDOW:?} window: \
         {busiest} by Redis time, {busiest_arrivals} by arrival at the judge"
    );
}

#[test]
fn busiest_window_counts_a_half_open_window() {
    // [0, 1 s) holds three; [10 us, 1 s + 10 us) holds three too (the
    // 1_000_011 falls just outside); no window holds four.
    let mut stamps = vec![1_000_011, 0, 10, 999_999, 1_000_000];
    assert_eq!(busiest_window(&mut stamps, 1_000_000), 3);
    let mut burst = vec![5, 5, 5, 2_000_000];
    assert_eq!(busiest_window(&mut burst, 1_000_000), 3);
    let mut none: Vec<u128> = Vec::new();
    assert_eq!(busiest_window(&mut none, 1_000_000), 0);
}
