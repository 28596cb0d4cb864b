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
    let loader = dspex::Runtime::loader(path)?;
    let mut config = GatewayConfig::load(&loader).map_err(Failure::usage)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = dspex::Runtime::from_config(&loader).await?;
    let mut gateway = Gateway::new(runtime.client().clone(), config).map_err(Failure::usage)?;
    if let Some(metrics) = metrics {
        gateway = gateway.with_metrics(metrics);
    }
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
