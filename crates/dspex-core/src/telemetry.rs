//! Metrics with a Prometheus text rendering.
//!
//! Crates record with the [`metrics`] macros (`counter!`, `histogram!`), which cost
//! almost nothing when no recorder is installed. A process that wants numbers
//! calls [`install_prometheus`] once and renders the text format whenever asked
//! (the CLI's `--metrics` flag, a `/metrics` route).
//!
//! ```
//! let metrics = dspex_core::telemetry::install_prometheus().unwrap();
//! metrics::counter!("doc_example_total").increment(1);
//! assert!(metrics.render().contains("doc_example_total 1"));
//! ```

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{CoreError, Result};

/// Histogram buckets for durations in seconds: 1 ms to 2 minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Histogram buckets for token counts (the OpenTelemetry GenAI advice: powers of 4).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

/// The process-wide Prometheus recorder.
#[derive(Clone, Debug)]
pub struct PrometheusMetrics {
    handle: PrometheusHandle,
}

impl PrometheusMetrics {
    /// Everything recorded so far, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

static INSTALLED: OnceLock<PrometheusMetrics> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter keeps every histogram sample until a render or an upkeep
/// folds it into the buckets: a long-running process that nobody scrapes
/// (a gateway without Prometheus) would grow by every sample it ever
/// recorded, eight bytes per sample of every histogram of every call. A
/// thread runs the upkeep every few seconds, as the exporter's own
/// `install` does.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("dspex-metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(error = %error, "metrics upkeep thread not started: histograms grow until rendered");
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder, once per
/// process; later calls return the same handle.
///
/// Fails if another crate installed a different global recorder first.
pub fn install_prometheus() -> Result<PrometheusMetrics> {
    if let Some(installed) = INSTALLED.get() {
        return Ok(installed.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("duration".to_owned()), DURATION_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("token_usage".to_owned()), TOKEN_BUCKETS)
        })
        .map_err(|e| CoreError::Telemetry {
            message: e.to_string(),
        })?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Install first, remember after: a handle is only ever returned for a
    // recorder that really is the global one. A racing second caller fails to
    // install and then finds the winner's handle.
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            spawn_upkeep(handle.clone());
            Ok(INSTALLED
                .get_or_init(|| PrometheusMetrics { handle })
                .clone())
        }
        Err(e) => INSTALLED
            .get()
            .cloned()
            .ok_or_else(|| CoreError::Telemetry {
                message: format!("another metrics recorder is already installed: {e}"),
            }),
    }
}
