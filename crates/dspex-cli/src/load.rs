//! `dspex load`: drive many calls through the full stack (or, with `--bare`,
//! through a bare HTTP client against the same upstream, for comparison) and
//! report successes, errors by kind, latency percentiles and throughput.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dspex::{ChatParams, ChatRequest, Client, Message, Provider, RequestOptions};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::common::{self, Failure};

#[derive(clap::Args, Debug)]
pub(crate) struct LoadArgs {
    /// The provider id (default: the config's default provider).
    #[arg(long)]
    provider: Option<String>,
    /// Calls to make.
    #[arg(long, default_value_t = 1_000)]
    requests: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// The prompt of every call.
    #[arg(long, default_value = "Say something short.")]
    prompt: String,
    /// `max_tokens` of every call.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Bypass DSPex: plain HTTP requests with the same body to the same
    /// upstream, to measure the upstream's own ceiling side by side.
    #[arg(long)]
    bare: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    provider: String,
    requests: u64,
    concurrency: u64,
    successes: u64,
    errors: BTreeMap<String, u64>,
    latency_ms: Percentiles,
    throughput_per_s: f64,
    wall_s: f64,
}

enum Driver {
    Client(Client, String),
    Bare(Bare),
}

/// A plain reqwest client sending the same request the provider would.
struct Bare {
    http: reqwest::Client,
    url: reqwest::Url,
    body: bytes::Bytes,
}

impl Bare {
    /// A bare client sending the very request `provider` would send: the
    /// provider builds it (endpoint, headers, body), so the baseline never
    /// drifts from what the client puts on the wire.
    fn new(provider: &Provider, prompt: &str, max_tokens: u32) -> Result<Self, Failure> {
        let request = ChatRequest {
            messages: vec![Message::user(prompt)],
            params: ChatParams {
                max_tokens: Some(max_tokens),
                ..ChatParams::default()
            },
        };
        let request = provider.http_request(&request).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "--bare needs an HTTP provider; `{}` has none ({e})",
                provider.id()
            ))
        })?;
        let (parts, body) = request.into_parts();
        let http = reqwest::Client::builder()
            .default_headers(parts.headers)
            .pool_max_idle_per_host(provider.config().pool_size)
            .tcp_nodelay(true)
            .build()
            .map_err(Failure::usage)?;
        let url = reqwest::Url::parse(&parts.uri.to_string()).map_err(Failure::usage)?;
        Ok(Self { http, url, body })
    }

    async fn call(&self) -> Result<(), String> {
        let response = self
            .http
            .post(self.url.clone())
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    "connect".to_owned()
                }
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|_| "truncated".to_owned())?;
        if !status.is_success() {
            return Err(format!("http_{}", status.as_u16()));
        }
        if body.is_empty() {
            return Err("empty_body".to_owned());
        }
        Ok(())
    }
}

pub(crate) async fn run(config: Option<&Path>, args: LoadArgs) -> Result<(), Failure> {
    if args.requests == 0 || args.concurrency == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--requests and --concurrency must be at least 1"
        )));
    }
    let (runtime, provider) = common::runtime_for(config, args.provider.as_deref()).await?;
    let client = runtime.client().clone();
    let result: Result<(), Failure> = async {
        let driver = if args.bare {
            Driver::Bare(Bare::new(
                &*client.provider(&provider)?,
                &args.prompt,
                args.max_tokens,
            )?)
        } else {
            Driver::Client(client, provider.clone())
        };
        let driver = Arc::new(driver);
        let issued = Arc::new(AtomicU64::new(0));
        let bar = if std::io::stderr().is_terminal() && !args.json {
            let bar = ProgressBar::new(args.requests);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} calls  {per_sec}  eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..args.concurrency.min(args.requests) {
            let driver = Arc::clone(&driver);
            let issued = Arc::clone(&issued);
            let bar = bar.clone();
            let (requests, prompt, max_tokens) =
                (args.requests, args.prompt.clone(), args.max_tokens);
            workers.push(tokio::spawn(async move {
                // Latencies in microseconds, up to an hour.
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut successes = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < requests {
                    let start = Instant::now();
                    let outcome = match &*driver {
                        Driver::Client(client, provider) => client
                            .request(
                                provider,
                                vec![Message::user(prompt.as_str())],
                                RequestOptions::new().max_tokens(max_tokens),
                            )
                            .await
                            .map(|_| ())
                            .map_err(|e| e.kind().as_str().to_owned()),
                        Driver::Bare(bare) => bare.call().await,
                    };
                    let micros = u64::try_from(start.elapsed().as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    if let Some(h) = histogram.as_mut() {
                        let _ = h.record(micros);
                    }
                    match outcome {
                        Ok(()) => successes += 1,
                        Err(kind) => *errors.entry(kind).or_default() += 1,
                    }
                    bar.inc(1);
                }
                (histogram, successes, errors)
            }));
        }
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(Failure::usage)?;
        let mut successes = 0;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for worker in workers {
            let (h, s, e) = worker.await.map_err(Failure::usage)?;
            if let Some(h) = h {
                histogram.add(h).map_err(Failure::usage)?;
            }
            successes += s;
            for (kind, n) in e {
                *errors.entry(kind).or_default() += n;
            }
        }
        let wall = started.elapsed();
        bar.finish_and_clear();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        let report = Report {
            mode: if args.bare { "bare" } else { "client" },
            provider,
            requests: args.requests,
            concurrency: args.concurrency,
            successes,
            errors,
            latency_ms: Percentiles {
                p50: ms(0.50),
                p90: ms(0.90),
                p99: ms(0.99),
                max: histogram.max() as f64 / 1_000.0,
                mean: histogram.mean() / 1_000.0,
            },
            throughput_per_s: args.requests as f64 / wall.as_secs_f64().max(f64::EPSILON),
            wall_s: wall.as_secs_f64(),
        };
        if args.json {
            common::out(&serde_json::to_string_pretty(&report).map_err(Failure::usage)?);
        } else {
            print_report(&report);
        }
        Ok(())
    }
    .await;
    common::finish(runtime, result).await
}

fn print_report(report: &Report) {
    common::out(&format!(
        "{} calls to `{}` ({}), concurrency {}: {} ok, {} failed in {:.2}s",
        report.requests,
        report.provider,
        report.mode,
        report.concurrency,
        report.successes,
        report.requests - report.successes,
        report.wall_s
    ));
    for (kind, n) in &report.errors {
        common::out(&format!("  {kind}: {n}"));
    }
    let l = &report.latency_ms;
    common::out(&format!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
        l.p50, l.p90, l.p99, l.max, l.mean
    ));
    common::out(&format!(
        "throughput: {:.0} calls/s",
        report.throughput_per_s
    ));
}
