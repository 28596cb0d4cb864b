//! `dspex serve`: the OpenAI-compatible gateway in front of the runtime the
//! config describes.

use std::net::SocketAddr;
use std::path::Path;

use dspex::gateway::{Gateway, GatewayConfig};

use crate::common::{self, Failure};

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default: `[gateway] listen`, else 127.0.0.1:4000).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
}

/// Resolves on SIGINT or SIGTERM (SIGINT only off Unix).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) async fn run(
    path: Option<&Path>,
    args: ServeArgs,
    metrics: Option<dspex::core::telemetry::PrometheusMetrics>,
) -> Result<(), Failure> {
    let loader = common::loader(path)?;
    let mut config = GatewayConfig::load(&loader).map_err(Failure::usage)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    // The gateway records by default: keys, per-key budgets and the
    // dashboard read the analytics store (`[analytics] enabled = false`
    // still turns it off, and then only `auth = "none"` can serve).
    let runtime = dspex::Runtime::from_config_with(
        &loader,
        &|name| std::env::var(name).ok(),
        dspex::RuntimeOptions::default().analytics_by_default(),
    )
    .await?;
    let mut builder = Gateway::builder(runtime.client().clone(), config);
    if let Some(store) = runtime.store() {
        builder = builder.store(store.clone());
    }
    if let Some(prices) = runtime.prices() {
        builder = builder.prices(std::sync::Arc::clone(prices));
    }
    if let Some(metrics) = metrics {
        builder = builder.metrics(metrics);
    }
    let gateway = builder.build().await.map_err(Failure::usage)?;
    let listener = gateway.bind().await.map_err(Failure::usage)?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| gateway.config().listen.to_string(), |a| a.to_string());
    common::err(&format!(
        "dspex gateway listening on http://{addr}/v1 (providers: {}); Ctrl-C or SIGTERM stops it",
        runtime.client().provider_ids().join(", ")
    ));
    gateway
        .serve(listener, stop_signal())
        .await
        .map_err(Failure::usage)?;
    let report = runtime.shutdown().await?;
    if let Some(recorded) = report.recorded {
        common::err(&format!(
            "gateway stopped; analytics flushed ({recorded:?})"
        ));
    } else {
        common::err("gateway stopped");
    }
    Ok(())
}
