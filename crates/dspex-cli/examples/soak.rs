//! The soak test (`scripts/soak`): a fixed number of calls through the
//! protected client, then through `dspex serve`, against the mock upstream
//! with every fault at once, and the checks a long-running process must pass.
//!
//! ```text
//! cargo run --release -p dspex-cli --no-default-features --example soak -- 5000 --concurrency 32
//! ```
//!
//! The mock runs in a child process (this program again, with
//! `--serve-mock`), so neither leg's memory includes it. Its fraction faults
//! (429 with `Retry-After: 0`, 500, hangs, garbled and truncated bodies and
//! streams) are drawn per request; on top of them it queues one fault every
//! `--queued-every` requests, in turn: a stream garbled at its first event
//! (`MalformedStart`), a delay, a 503, a 529 and a 400; and a 429 with
//! `Retry-After: 1` every `--pause-every` requests (such a 429 pauses its
//! whole provider, so a steady rate of them would measure only pauses).
//!
//! Two legs, each `--warmup` calls and then `CALLS` calls, rotating through
//! OpenAI and Anthropic, plain and streamed:
//!
//! - client: `Runtime` (the one every `dspex` command builds) in this
//!   process, analytics recorded to SQLite; this process's RSS and fds.
//! - gateway: `dspex serve` as a child process with a virtual key (rpm, tpm
//!   and a budget) and its SQLite store, driven over HTTP with reqwest in
//!   both wire formats, to both providers (so half the calls are
//!   translated); the gateway's RSS and fds.
//!
//! Checks, per leg (any failure: exit 1, each failure named):
//! - no panic (a panic hook here; `panicked at` in the children's stderr);
//! - every call succeeded with the exact expected reply (the mock echoes
//!   the prompt, so a reply delivered to the wrong caller or cut short shows)
//!   or failed with a typed error: a `ClientError` kind, or a gateway error
//!   body or error event carrying its `type`; never a dropped connection or a
//!   stream that just stops;
//! - analytics rows (counted in the SQLite file) equal the calls made;
//! - RSS after the run within `--rss-tolerance` (10%) of RSS after the
//!   warm-up;
//! - no descriptor growth: after the run, no more files, pipes or event
//!   fds than after the warm-up, and no more sockets than after the warm-up
//!   plus `--fd-slack` (default: twice the concurrency, what the two
//!   providers' connection pools may still grow by without leaking).
//!
//! Timeouts are set so a hang costs one attempt's `timeout_ms` (1 s), not
//! the mock's hour.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use dspex::mock::{Fault, MockConfig, MockServer};
use dspex::{Client, Message, RequestOptions, Runtime, StreamEvent};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Panics anywhere in this process (a worker, a spawned task of the client).
static PANICS: AtomicU64 = AtomicU64::new(0);

const UPSTREAM_KEY: &str = "sk-soak-upstream-0123456789";
const ADMIN_KEY: &str = "soak-admin-key-0123456789";
const OPENAI_MODEL: &str = "gpt-4o-mini";
const ANTHROPIC_MODEL: &str = "claude-3-5-haiku-latest";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Soak the client and the gateway against the faulty mock",
    args_override_self = true
)]
struct Args {
    /// Calls per leg after the warm-up.
    #[arg(default_value_t = 5_000)]
    calls: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Calls per leg before the first RSS and fd sample. Both processes'
    /// RSS rises for the first 5,000-10,000 calls (allocator pools, SQLite's
    /// page cache, connection buffers) and is flat after: measured from an
    /// earlier sample, that rise would read as a leak.
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// Which legs to run.
    #[arg(long, value_enum, default_value_t = Leg::Both)]
    leg: Leg,
    /// The `dspex` binary for the gateway leg (default: `../dspex` next to
    /// this example's binary, i.e. the same `target/<profile>`).
    #[arg(long)]
    dspex: Option<PathBuf>,
    /// Print the report as JSON (stdout) instead of text.
    #[arg(long)]
    json: bool,
    /// Keep the work directory (configs, stores, logs) here instead of a
    /// temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Largest allowed RSS growth from after the warm-up to after the run.
    #[arg(long, default_value_t = 0.10)]
    rss_tolerance: f64,
    /// Sockets the run may end with beyond the warm-up's count (default:
    /// twice the concurrency, one pool per provider). Pooled connections are not a leak: each provider's
    /// pool holds at most as many as calls were once in flight to it, which
    /// the warm-up need not have reached; a leak grows with the calls.
    /// Other descriptors (files, pipes, event fds) may not grow at all.
    #[arg(long)]
    fd_slack: Option<u64>,
    /// Each attempt's timeout in ms (cuts the mock's hangs).
    #[arg(long, default_value_t = 1_000)]
    timeout_ms: u64,
    /// Fraction of upstream requests answered 429 with `Retry-After`.
    #[arg(long, default_value_t = 0.08)]
    fail_429: f64,
    /// The 429s' `Retry-After`, in seconds. An upstream 429 pauses the whole
    /// provider for that long (by design: every caller backs off), so a
    /// steady rate of 1 s pauses would measure the pauses, not the stack.
    #[arg(long, default_value_t = 0)]
    retry_after: u64,
    /// Fraction answered 500.
    #[arg(long, default_value_t = 0.08)]
    fail_500: f64,
    /// Fraction that hang (for `--hang-ms`, past the attempt timeout).
    #[arg(long, default_value_t = 0.02)]
    hang: f64,
    /// How long a hang lasts, in ms.
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
    /// Fraction answered 200 with a garbled body (or a garbled stream event).
    #[arg(long, default_value_t = 0.05)]
    malformed: f64,
    /// Fraction whose body or stream stops halfway.
    #[arg(long, default_value_t = 0.05)]
    truncate: f64,
    /// The mock's base latency, in ms.
    #[arg(long, default_value_t = 2)]
    latency_ms: u64,
    /// The mock's extra latency, uniform in `0..=jitter_ms`.
    #[arg(long, default_value_t = 20)]
    jitter_ms: u64,
    /// One queued fault (garbled first stream event, 300 ms delay, 503, 529,
    /// 400, in turn) every this many upstream requests; 0 for none.
    #[arg(long, default_value_t = 25)]
    queued_every: u64,
    /// One 429 with `Retry-After: 1` (a one-second pause of its provider)
    /// every this many upstream requests; 0 for none.
    #[arg(long, default_value_t = 2_000)]
    pause_every: u64,
    /// The mock's fault seed.
    #[arg(long, default_value_t = 17)]
    seed: u64,
    /// Internal: serve the mock (this process is the child).
    #[arg(long, hide = true)]
    serve_mock: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Client,
    Gateway,
    Both,
}

/// How one call ended.
enum Outcome {
    /// The exact expected reply.
    Ok,
    /// A typed error (its kind; `stream:` for one after the stream started).
    Typed(String),
    /// Neither: a wrong reply, an untyped failure. A check fails.
    Bad(String, String),
}

/// What a set of calls came to.
#[derive(Default, Serialize)]
struct Tally {
    successes: u64,
    /// Each call's latency, in microseconds (success or not).
    #[serde(rename = "latency_ms", serialize_with = "percentiles")]
    latency: Option<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    untyped: BTreeMap<String, u64>,
    /// The first few untyped failures, in full.
    examples: Vec<String>,
    /// Worker tasks that panicked (their calls are lost from the tally).
    worker_panics: u64,
}

impl Tally {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.successes += 1,
            Outcome::Typed(kind) => *self.errors.entry(kind).or_default() += 1,
            Outcome::Bad(kind, detail) => {
                *self.untyped.entry(kind).or_default() += 1;
                if self.examples.len() < 5 {
                    self.examples.push(detail);
                }
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.successes += other.successes;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, n) in other.untyped {
            *self.untyped.entry(kind).or_default() += n;
        }
        for example in other.examples {
            if self.examples.len() < 5 {
                self.examples.push(example);
            }
        }
        self.worker_panics += other.worker_panics;
    }

    fn calls(&self) -> u64 {
        self.successes + self.errors.values().sum::<u64>() + self.untyped.values().sum::<u64>()
    }
}

/// A latency histogram (microseconds) as milliseconds at a few quantiles.
fn percentiles<S: serde::Serializer>(
    histogram: &Option<Histogram<u64>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let ms = |us: u64| us as f64 / 1_000.0;
    let value = histogram.as_ref().map(|h| {
        json!({
            "p50": ms(h.value_at_quantile(0.50)),
            "p90": ms(h.value_at_quantile(0.90)),
            "p99": ms(h.value_at_quantile(0.99)),
            "max": ms(h.max()),
            "mean": h.mean() / 1_000.0,
        })
    });
    value.serialize(serializer)
}

/// A process's resident memory and open descriptors.
#[derive(Clone, Copy, Default, Serialize)]
struct Sample {
    rss_kb: u64,
    fds: u64,
    sockets: u64,
}

fn sample(pid: &str) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let (mut fds, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .flatten()
    {
        fds += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Ok(Sample {
        rss_kb,
        fds,
        sockets,
    })
}

/// One leg's report.
#[derive(Serialize)]
struct LegReport {
    leg: &'static str,
    warmup_calls: u64,
    calls: u64,
    concurrency: u64,
    #[serde(flatten)]
    tally: Tally,
    panics: u64,
    rows_expected: u64,
    rows: u64,
    warm: Sample,
    after: Sample,
    rss_kb_peak: u64,
    /// RSS every 10 s from the start of the leg.
    rss_kb_every_10s: Vec<u64>,
    rss_growth_pct: f64,
    wall_s: f64,
    calls_per_s: f64,
    /// What the mock injected during the leg (its `/stats`).
    upstream_requests: u64,
    upstream_injected: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl LegReport {
    /// A leg's report before its checks: what it measured, the panics seen,
    /// the rows in its store and what the mock injected.
    fn new(
        leg: &'static str,
        args: &Args,
        measured: Measured,
        panics: u64,
        rows: u64,
        (upstream_requests, upstream_injected): (u64, BTreeMap<String, u64>),
    ) -> Self {
        let Measured {
            tally,
            warm,
            after,
            rss_kb_peak,
            rss_kb_every_10s,
            wall,
            run_wall,
        } = measured;
        Self {
            leg,
            warmup_calls: args.warmup,
            calls: args.calls,
            concurrency: args.concurrency,
            tally,
            panics,
            rows_expected: args.warmup + args.calls,
            rows,
            warm,
            after,
            rss_kb_peak,
            rss_kb_every_10s,
            rss_growth_pct: growth(warm.rss_kb, after.rss_kb),
            wall_s: wall.as_secs_f64(),
            calls_per_s: args.calls as f64 / run_wall.as_secs_f64().max(f64::EPSILON),
            upstream_requests,
            upstream_injected,
            failures: Vec::new(),
        }
    }

    /// Fills in the checks' verdicts.
    fn check(&mut self, args: &Args) {
        let mut failures = Vec::new();
        if self.panics > 0 || self.tally.worker_panics > 0 {
            failures.push(format!(
                "{} panic(s) (see the log above)",
                self.panics + self.tally.worker_panics
            ));
        }
        let made = self.tally.calls();
        if made != self.rows_expected {
            failures.push(format!(
                "{made} calls ended, {} were made",
                self.rows_expected
            ));
        }
        if !self.tally.untyped.is_empty() {
            failures.push(format!(
                "calls that neither succeeded nor failed with a typed error: {:?}; first: {:?}",
                self.tally.untyped, self.tally.examples
            ));
        }
        if self.rows != self.rows_expected {
            failures.push(format!(
                "analytics rows {} != calls {}",
                self.rows, self.rows_expected
            ));
        }
        let allowed = self.warm.rss_kb as f64 * (1.0 + args.rss_tolerance);
        if self.after.rss_kb as f64 > allowed {
            failures.push(format!(
                "RSS grew from {} kB after the warm-up to {} kB after the run ({:+.1}%, more than {:.0}%)",
                self.warm.rss_kb,
                self.after.rss_kb,
                self.rss_growth_pct,
                args.rss_tolerance * 100.0
            ));
        }
        // Two providers, each pool up to `concurrency` connections.
        let slack = args.fd_slack.unwrap_or(args.concurrency.saturating_mul(2));
        let (warm_other, after_other) = (
            self.warm.fds.saturating_sub(self.warm.sockets),
            self.after.fds.saturating_sub(self.after.sockets),
        );
        if after_other > warm_other {
            failures.push(format!(
                "open descriptors other than sockets grew from {warm_other} after the warm-up to {after_other} after the run"
            ));
        }
        if self.after.sockets > self.warm.sockets + slack {
            failures.push(format!(
                "open sockets grew from {} after the warm-up to {} after the run (more than {slack}, the pools' possible growth)",
                self.warm.sockets, self.after.sockets
            ));
        }
        self.failures = failures;
    }

    fn print(&self) {
        let t = &self.tally;
        out(&format!(
            "{} leg: {} warm-up + {} calls, concurrency {}, {:.1} s, {:.0} calls/s",
            self.leg,
            self.warmup_calls,
            self.calls,
            self.concurrency,
            self.wall_s,
            self.calls_per_s
        ));
        out(&format!(
            "  succeeded {}, typed errors {}, untyped {}, panics {}",
            t.successes,
            t.errors.values().sum::<u64>(),
            t.untyped.values().sum::<u64>(),
            self.panics + t.worker_panics
        ));
        if let Some(h) = &t.latency {
            out(&format!(
                "  latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.9) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.max() as f64 / 1e3
            ));
        }
        for (kind, n) in &t.errors {
            out(&format!("    {kind}: {n}"));
        }
        for (kind, n) in &t.untyped {
            out(&format!("    UNTYPED {kind}: {n}"));
        }
        out(&format!(
            "  upstream: {} requests, injected {:?}",
            self.upstream_requests, self.upstream_injected
        ));
        out(&format!(
            "  analytics rows {} of {} calls",
            self.rows, self.rows_expected
        ));
        out(&format!(
            "  RSS {} kB after warm-up, {} kB after the run ({:+.1}%), peak {} kB",
            self.warm.rss_kb, self.after.rss_kb, self.rss_growth_pct, self.rss_kb_peak
        ));
        out(&format!("  RSS kB every 10 s: {:?}", self.rss_kb_every_10s));
        out(&format!(
            "  fds {} after warm-up ({} sockets), {} after the run ({} sockets)",
            self.warm.fds, self.warm.sockets, self.after.fds, self.after.sockets
        ));
        if self.failures.is_empty() {
            out("  checks: all passed");
        } else {
            for failure in &self.failures {
                out(&format!("  FAILED: {failure}"));
            }
        }
    }
}

fn out(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The prompt of call `i` (unique, of varying length) and the reply the mock
/// must give: it echoes the last user message.
fn prompt(leg: &str, i: u64) -> (String, String) {
    let filler = "lorem ipsum dolor sit amet ".repeat(usize::try_from(i % 9).unwrap_or(0));
    let prompt = format!("soak {leg} call {i}: {filler}end");
    let expected = format!("echo: {prompt}");
    (prompt, expected)
}

/// Every call's latency in microseconds, up to an hour, to 1%: one small
/// histogram per leg, made before the warm-up, so the soak's own
/// bookkeeping does not grow between the two RSS samples.
type Latencies = Arc<parking_lot::Mutex<Histogram<u64>>>;

fn latencies() -> anyhow::Result<Latencies> {
    Ok(Arc::new(parking_lot::Mutex::new(
        Histogram::new_with_bounds(1, 3_600_000_000, 2)?,
    )))
}

/// Runs calls `from..to` with `concurrency` workers, each pulling the next
/// call number, and tallies them.
async fn drive<F, Fut>(from: u64, to: u64, concurrency: u64, latency: &Latencies, call: F) -> Tally
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(from));
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(to.saturating_sub(from)).max(1) {
        let next = Arc::clone(&next);
        let call = call.clone();
        let latency = Arc::clone(latency);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let start = Instant::now();
                let outcome = call(i).await;
                let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = latency.lock().record(micros.clamp(1, 3_600_000_000));
                tally.add(outcome);
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(_) => total.worker_panics += 1,
        }
    }
    total
}

/// Samples `pid`'s RSS every 250 ms until stopped; returns the peak and
/// one sample every 10 s (the trend a leak would show).
fn watch_rss(
    pid: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<(u64, Vec<u64>)>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (mut peak, mut series, mut tick) = (0, Vec::new(), 0u64);
        loop {
            if let Ok(s) = sample(&pid) {
                peak = peak.max(s.rss_kb);
                if tick.is_multiple_of(40) {
                    series.push(s.rss_kb);
                }
            }
            tick += 1;
            tokio::select! {
                _ = &mut stopped => return (peak, series),
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
    (stop, task)
}

// ---------------------------------------------------------------- the mock

/// The child process: the mock with the fraction faults, plus one queued
/// fault every `queued_every` requests; prints its address, serves until
/// its stdin closes (the parent exiting closes it too).
async fn serve_mock(args: &Args) -> anyhow::Result<()> {
    let config = MockConfig {
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        fail_429: args.fail_429,
        retry_after_secs: args.retry_after,
        fail_500: args.fail_500,
        hang: args.hang,
        hang_ms: args.hang_ms,
        malformed: args.malformed,
        truncate: args.truncate,
        seed: args.seed,
        ..MockConfig::default()
    };
    let server = Arc::new(MockServer::start(config).await?);
    out(&format!("mock {}", server.addr()));
    let (queued_every, pause_every) = (args.queued_every, args.pause_every);
    let feeder = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if queued_every == 0 && pause_every == 0 {
                return;
            }
            let turns = [
                Fault::MalformedStart,
                Fault::Delay(Duration::from_millis(300)),
                Fault::status(503),
                Fault::status(529),
                Fault::status(400),
            ];
            // Request counts at which the next fault of each kind is due
            // (never, for a kind turned off).
            let due = |every: u64, seen: u64| {
                if every == 0 { u64::MAX } else { seen + every }
            };
            let (mut next_at, mut pause_at, mut turn) =
                (due(queued_every, 0), due(pause_every, 0), 0usize);
            let mut last_seen = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let seen = server.stats().requests;
                if seen < last_seen {
                    // The stats were reset between legs.
                    next_at = due(queued_every, seen);
                    pause_at = due(pause_every, seen);
                }
                last_seen = seen;
                while seen >= next_at {
                    if let Some(fault) = turns.get(turn % turns.len()) {
                        server.enqueue([fault.clone()]);
                    }
                    turn += 1;
                    next_at = next_at.saturating_add(queued_every);
                }
                while seen >= pause_at {
                    server.enqueue([Fault::rate_limited(1)]);
                    pause_at = pause_at.saturating_add(pause_every);
                }
            }
        })
    };
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    feeder.abort();
    let _ = feeder.await;
    match Arc::try_unwrap(server) {
        Ok(server) => server.shutdown().await,
        Err(_) => bail!("the mock is still shared at shutdown"),
    }
    Ok(())
}

/// The mock child process and its address.
struct Mock {
    child: Child,
    addr: String,
    http: reqwest::Client,
}

impl Mock {
    async fn start(args: &Args, work: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(work.join("mock.log"))?;
        let mut command = Command::new(exe);
        command.arg("--serve-mock").args([
            format!("--fail-429={}", args.fail_429),
            format!("--fail-500={}", args.fail_500),
            format!("--retry-after={}", args.retry_after),
            format!("--hang={}", args.hang),
            format!("--hang-ms={}", args.hang_ms),
            format!("--malformed={}", args.malformed),
            format!("--truncate={}", args.truncate),
            format!("--latency-ms={}", args.latency_ms),
            format!("--jitter-ms={}", args.jitter_ms),
            format!("--queued-every={}", args.queued_every),
            format!("--pause-every={}", args.pause_every),
            format!("--seed={}", args.seed),
        ]);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the mock child process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the mock's stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the mock did not start within 30 s")??
            .ok_or_else(|| anyhow!("the mock exited before listening (see mock.log)"))?;
        let addr = line
            .strip_prefix("mock ")
            .ok_or_else(|| anyhow!("unexpected first line from the mock: {line}"))?
            .to_owned();
        Ok(Self {
            child,
            addr,
            http: reqwest::Client::new(),
        })
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("http://{}/stats", self.addr))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn reset(&self) -> anyhow::Result<()> {
        self.http
            .post(format!("http://{}/stats/reset", self.addr))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Closes its stdin and waits for it to exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the mock did not exit within 30 s")??;
        if !status.success() {
            bail!("the mock exited with {status}");
        }
        Ok(())
    }
}

fn injected(stats: &Value) -> (u64, BTreeMap<String, u64>) {
    let requests = stats.get("requests").and_then(Value::as_u64).unwrap_or(0);
    let injected = stats
        .get("injected")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    (requests, injected)
}

/// The providers, pointed at the mock, with timeouts that cut its hangs and
/// short backoffs; a circuit breaker that opens now and then.
fn providers_toml(args: &Args, mock: &Mock) -> String {
    let common = format!(
        r#"api_key_env = "SOAK_UPSTREAM_KEY"
pool_size = {pool}
timeout_ms = {timeout}
connect_timeout_ms = 1000
max_retries = 3
retry_base_ms = 20
retry_max_ms = 200
max_retry_after_ms = 2000
default_max_tokens = 512
circuit_breaker = {{ failure_threshold = 8, open_ms = 200 }}"#,
        pool = args.concurrency.max(1),
        timeout = args.timeout_ms,
    );
    format!(
        r#"default_provider = "openai"

[providers.openai]
kind = "openai"
base_url = "http://{addr}/v1"
model = "{OPENAI_MODEL}"
{common}

[providers.anthropic]
kind = "anthropic"
base_url = "http://{addr}"
model = "{ANTHROPIC_MODEL}"
{common}
"#,
        addr = mock.addr
    )
}

/// The SQLite analytics store at `path`.
async fn open_store(path: &Path) -> anyhow::Result<dspex::analytics::Store> {
    let location = path
        .to_str()
        .ok_or_else(|| anyhow!("the work directory's path is not UTF-8"))?;
    Ok(dspex::analytics::Store::open(location, None).await?)
}

/// Counts the rows of the SQLite analytics store at `path`.
async fn count_rows(path: &Path) -> anyhow::Result<u64> {
    Ok(open_store(path).await?.count().await?)
}

// ---------------------------------------------------------- the client leg

async fn client_call(client: Client, i: u64) -> Outcome {
    let (prompt, expected) = prompt("client", i);
    let provider = if i.is_multiple_of(2) {
        "openai"
    } else {
        "anthropic"
    };
    let stream = (i / 2) % 2 == 1;
    let messages = vec![Message::user(prompt)];
    let options = RequestOptions::new().max_tokens(512);
    if !stream {
        return match client.request(provider, messages, options).await {
            Ok(response) if response.text() == expected => Outcome::Ok,
            Ok(response) => Outcome::Bad(
                "wrong_reply".into(),
                format!("call {i}: expected {expected:?}, got {:?}", response.text()),
            ),
            Err(error) => Outcome::Typed(error.kind().as_str().to_owned()),
        };
    }
    let mut stream = match client.request_stream(provider, messages, options).await {
        Ok(stream) => stream,
        Err(error) => return Outcome::Typed(error.kind().as_str().to_owned()),
    };
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(StreamEvent::Delta(delta)) => text.push_str(&delta.content),
            Ok(StreamEvent::Done(response)) => {
                return if text == expected && response.text() == expected {
                    Outcome::Ok
                } else {
                    Outcome::Bad(
                        "wrong_stream_reply".into(),
                        format!(
                            "call {i}: expected {expected:?}, deltas {text:?}, final {:?}",
                            response.text()
                        ),
                    )
                };
            }
            Err(error) => return Outcome::Typed(format!("stream:{}", error.kind().as_str())),
        }
    }
    Outcome::Bad(
        "stream_without_end".into(),
        format!("call {i}: the stream ended with neither a final response nor an error"),
    )
}

/// What a leg measured: its warm-up, then its calls, each followed by
/// waiting until every call so far has its analytics row, so the RSS samples
/// hold no rows still queued.
struct Measured {
    tally: Tally,
    warm: Sample,
    after: Sample,
    rss_kb_peak: u64,
    rss_kb_every_10s: Vec<u64>,
    /// From the first warm-up call to the last row.
    wall: Duration,
    /// The measured calls alone.
    run_wall: Duration,
}

/// The sequence both legs run against the process `pid`: `--warmup` calls,
/// a sample, `CALLS` calls, a sample, with RSS watched throughout.
/// `recorded(n)` returns once `n` calls have their rows.
async fn warm_then_measure<F, Fut>(
    args: &Args,
    pid: &str,
    call: F,
    recorded: impl AsyncFn(u64) -> anyhow::Result<()>,
) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let (stop_watch, watcher) = watch_rss(pid.to_owned());
    let started = Instant::now();
    let latency = latencies()?;
    let mut tally = drive(0, args.warmup, args.concurrency, &latency, call.clone()).await;
    recorded(args.warmup).await?;
    let warm = sample(pid)?;
    let measured = Instant::now();
    let total = args.warmup + args.calls;
    tally.merge(drive(args.warmup, total, args.concurrency, &latency, call).await);
    let run_wall = measured.elapsed();
    tally.latency = Some(latency.lock().clone());
    recorded(total).await?;
    let after = sample(pid)?;
    let _ = stop_watch.send(());
    let (peak, rss_kb_every_10s) = watcher.await.unwrap_or_default();
    Ok(Measured {
        tally,
        warm,
        after,
        rss_kb_peak: peak.max(after.rss_kb),
        rss_kb_every_10s,
        wall: started.elapsed(),
        run_wall,
    })
}

/// Waits until the recorder has written (or given up on) `calls` rows.
async fn wait_recorded(runtime: &Runtime, calls: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = runtime
            .recorder_stats()
            .ok_or_else(|| anyhow!("the runtime records no analytics"))?;
        if stats.rows_written + stats.rows_lost >= calls {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "after 60 s the recorder has written {} of {calls} rows ({stats:?})",
                stats.rows_written
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client_leg(args: &Args, work: &Path, mock: &Mock) -> anyhow::Result<LegReport> {
    let store = work.join("client.sqlite");
    let config = work.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[analytics]\nstore = {:?}\n",
            providers_toml(args, mock),
            store.to_string_lossy()
        ),
    )?;
    mock.reset().await?;
    // The upstream key reaches the providers through the runtime's
    // environment hook (the process environment is left alone).
    let loader = Runtime::loader(Some(&config))?;
    let runtime = Runtime::from_config_with_env(&loader, &|name| {
        if name == "SOAK_UPSTREAM_KEY" {
            Some(UPSTREAM_KEY.to_owned())
        } else {
            std::env::var(name).ok()
        }
    })
    .await?;
    let client = runtime.client().clone();
    let pid = std::process::id().to_string();
    let call = move |i| client_call(client.clone(), i);
    let measured =
        warm_then_measure(args, &pid, call, async |n| wait_recorded(&runtime, n).await).await?;
    let report = runtime.shutdown().await?;
    let lost = report.recorded.map_or(0, |r| r.rows_lost);
    if lost > 0 {
        err(&format!("client leg: the recorder gave up on {lost} rows"));
    }
    let upstream = injected(&mock.stats().await?);
    let rows = count_rows(&store).await?;
    Ok(LegReport::new(
        "client",
        args,
        measured,
        PANICS.load(Ordering::Relaxed),
        rows,
        upstream,
    ))
}

fn growth(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.0;
    }
    (to as f64 - from as f64) * 100.0 / from as f64
}

// --------------------------------------------------------- the gateway leg

/// A running `dspex serve`, its stderr in a file.
struct Gateway {
    child: Child,
    pid: String,
    base: String,
    log: PathBuf,
}

fn dspex_command(bin: &Path, work: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .current_dir(work)
        .env_remove("DSPEX_CONFIG")
        .env_remove("DSPEX_LOG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env("SOAK_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("DSPEX_ADMIN_KEY", ADMIN_KEY);
    command
}

impl Gateway {
    async fn start(bin: &Path, work: &Path, config: &Path) -> anyhow::Result<Self> {
        let log = work.join("gateway.log");
        let file = std::fs::File::create(&log)?;
        let child = dspex_command(bin, work)
            .arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("dspex serve exited at once"))?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .split("listening on http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
            {
                return Ok(Self {
                    child,
                    pid,
                    base: format!("http://{addr}"),
                    log,
                });
            }
            if Instant::now() > deadline {
                bail!("dspex serve did not start within 60 s:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM; its exit status and its log.
    async fn stop(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid])
            .status()
            .await?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let exit = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("dspex serve did not exit within 60 s of SIGTERM")??;
        Ok((exit, std::fs::read_to_string(&self.log).unwrap_or_default()))
    }
}

/// One gateway call: OpenAI or Anthropic wire format, to the OpenAI or the
/// Anthropic provider (so half are translated), plain or streamed.
async fn gateway_call(http: reqwest::Client, base: Arc<str>, key: Arc<str>, i: u64) -> Outcome {
    let (prompt, expected) = prompt("gateway", i);
    let anthropic_wire = i % 2 == 1;
    let model = if (i / 2).is_multiple_of(2) {
        format!("openai/{OPENAI_MODEL}")
    } else {
        format!("anthropic/{ANTHROPIC_MODEL}")
    };
    let stream = (i / 4) % 2 == 1;
    let body = json!({
        "model": model,
        "max_tokens": 512,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    });
    let request = if anthropic_wire {
        http.post(format!("{base}/v1/messages"))
            .header("x-api-key", &*key)
            .header("anthropic-version", "2023-06-01")
    } else {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&*key)
    };
    let response = match request.json(&body).send().await {
        Ok(response) => response,
        Err(error) => {
            return Outcome::Bad(
                "transport".into(),
                format!("call {i}: no answer from the gateway: {error}"),
            );
        }
    };
    let status = response.status().as_u16();
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => {
            return Outcome::Bad(
                "body_cut".into(),
                format!("call {i}: the gateway's body (status {status}) broke off: {error}"),
            );
        }
    };
    if status != 200 {
        return match error_type(&text, anthropic_wire) {
            Some(kind) => Outcome::Typed(format!("{status}:{kind}")),
            None => Outcome::Bad(
                format!("untyped_{status}"),
                format!("call {i}: status {status} without a typed error body: {text:?}"),
            ),
        };
    }
    let reply = if stream {
        match read_sse(&text, anthropic_wire) {
            Ok(reply) => reply,
            Err(outcome) => return outcome,
        }
    } else {
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reply = if anthropic_wire {
            value.pointer("/content/0/text").and_then(Value::as_str)
        } else {
            value
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
        };
        reply.unwrap_or_default().to_owned()
    };
    if reply == expected {
        Outcome::Ok
    } else {
        Outcome::Bad(
            "wrong_reply".into(),
            format!(
                "call {i} (stream {stream}): expected {expected:?}, got {reply:?} from {text:?}"
            ),
        )
    }
}

/// The error `type` of an error body in either wire format.
fn error_type(body: &str, anthropic_wire: bool) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    if anthropic_wire && value.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    value
        .pointer("/error/type")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A gateway stream's text, or its typed error event (`Err(Typed)`), or
/// `Err(Bad)` when it just stops.
fn read_sse(body: &str, anthropic_wire: bool) -> Result<String, Outcome> {
    let mut text = String::new();
    let mut event_name = "";
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event_name = name.trim();
            continue;
        }
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim_start();
        if !anthropic_wire && data == "[DONE]" {
            return Ok(text);
        }
        let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if anthropic_wire {
            match event_name {
                "error" => {
                    let kind = value
                        .pointer("/error/type")
                        .and_then(Value::as_str)
                        .unwrap_or("untyped");
                    return Err(Outcome::Typed(format!("stream:{kind}")));
                }
                "content_block_delta" => {
                    text.push_str(
                        value
                            .pointer("/delta/text")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    );
                }
                "message_stop" => return Ok(text),
                _ => {}
            }
        } else if let Some(error) = value.get("error") {
            return match error.get("type").and_then(Value::as_str) {
                Some(kind) => Err(Outcome::Typed(format!("stream:{kind}"))),
                None => Err(Outcome::Bad(
                    "stream_untyped_error".into(),
                    format!("an error event without a type: {data}"),
                )),
            };
        } else if let Some(delta) = value
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            text.push_str(delta);
        }
    }
    Err(Outcome::Bad(
        "stream_without_end".into(),
        format!("a stream ended with neither its end event nor an error: {body:?}"),
    ))
}

/// Waits until the gateway's store holds `calls` rows.
async fn wait_rows(store: &dspex::analytics::Store, calls: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = store.count().await?;
        if rows >= calls || Instant::now() > deadline {
            return Ok(rows);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gateway_leg(args: &Args, work: &Path, mock: &Mock) -> anyhow::Result<LegReport> {
    let bin = match &args.dspex {
        // The children run in `work`: a relative path would not resolve there.
        Some(bin) => std::path::absolute(bin)?,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("dspex"))
            .ok_or_else(|| anyhow!("cannot locate the dspex binary; pass --dspex"))?,
    };
    let store = work.join("gateway.sqlite");
    let config = work.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[gateway]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 10000\n\n[analytics]\nstore = {:?}\n",
            providers_toml(args, mock),
            store.to_string_lossy()
        ),
    )?;
    let output = dspex_command(&bin, work)
        .arg("--config")
        .arg(&config)
        .args([
            "keys",
            "create",
            "--name",
            "soak",
            "--rpm",
            "100000000",
            "--tpm",
            "100000000000",
            "--budget-usd",
            "1000000",
        ])
        .output()
        .await
        .with_context(|| format!("running {} keys create", bin.display()))?;
    if !output.status.success() {
        bail!(
            "dspex keys create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let key: Arc<str> = String::from_utf8_lossy(&output.stdout).trim().into();
    let gateway = Gateway::start(&bin, work, &config).await?;
    mock.reset().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(usize::try_from(args.concurrency).unwrap_or(usize::MAX))
        .build()?;
    let base: Arc<str> = gateway.base.as_str().into();
    // Read while the gateway writes (SQLite in WAL mode allows it).
    let reader = open_store(&store).await?;
    let call = move |i| gateway_call(http.clone(), Arc::clone(&base), Arc::clone(&key), i);
    let measured = warm_then_measure(args, &gateway.pid, call, async |n| {
        wait_rows(&reader, n).await.map(drop)
    })
    .await?;
    drop(reader);
    let upstream = injected(&mock.stats().await?);
    let (exit, log) = gateway.stop().await?;
    let rows = count_rows(&store).await?;
    let panics = log.matches("panicked at").count() as u64;
    let mut report = LegReport::new("gateway", args, measured, panics, rows, upstream);
    report.check(args);
    if !exit.success() {
        report
            .failures
            .push(format!("dspex serve exited with {exit} after SIGTERM"));
    }
    if report.panics > 0 {
        err(&format!("gateway log:\n{log}"));
    }
    Ok(report)
}

// ------------------------------------------------------------------ main

#[derive(Serialize)]
struct Report {
    machine: String,
    legs: Vec<LegReport>,
    passed: bool,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores, {cpu}")
}

async fn soak(args: Args) -> anyhow::Result<Report> {
    if args.calls == 0 || args.concurrency == 0 || args.warmup == 0 {
        bail!("calls, --concurrency and --warmup must be at least 1");
    }
    let temp;
    let work = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mock = Mock::start(&args, &work).await?;
    let mut legs = Vec::new();
    if matches!(args.leg, Leg::Client | Leg::Both) {
        let mut report = client_leg(&args, &work, &mock).await?;
        report.check(&args);
        if !args.json {
            report.print();
        }
        legs.push(report);
    }
    if matches!(args.leg, Leg::Gateway | Leg::Both) {
        let report = gateway_leg(&args, &work, &mock).await?;
        if !args.json {
            report.print();
        }
        legs.push(report);
    }
    mock.stop().await?;
    let mock_log = std::fs::read_to_string(work.join("mock.log")).unwrap_or_default();
    if mock_log.contains("panicked at") {
        err(&format!("the mock panicked:\n{mock_log}"));
        if let Some(last) = legs.last_mut() {
            last.failures.push("the mock panicked".into());
        }
    }
    let passed = legs.iter().all(|leg| leg.failures.is_empty());
    Ok(Report {
        machine: machine(),
        legs,
        passed,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            err(&format!("soak: cannot start the async runtime: {error}"));
            return ExitCode::from(2);
        }
    };
    if args.serve_mock {
        return match runtime.block_on(serve_mock(&args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                err(&format!("soak mock: {error:#}"));
                ExitCode::from(2)
            }
        };
    }
    // What an application would do: metrics on (the client records into
    // them on every call), so their cost and memory are part of the soak.
    if let Err(error) = dspex::core::telemetry::install_prometheus() {
        err(&format!(
            "soak: cannot install the metrics recorder: {error}"
        ));
        return ExitCode::from(2);
    }
    let json = args.json;
    match runtime.block_on(soak(args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => out(&text),
                    Err(error) => err(&format!("soak: {error}")),
                }
            } else {
                out(&format!("machine: {}", report.machine));
            }
            // With --json, stdout holds only the report.
            let say = if json { err } else { out };
            if report.passed {
                say("soak: PASSED");
                ExitCode::SUCCESS
            } else {
                say("soak: FAILED");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            err(&format!("soak: could not run: {error:#}"));
            ExitCode::from(2)
        }
    }
}
