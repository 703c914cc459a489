//! The example's metrics exporter: `metrics-exporter-prometheus`, the exporter of the
//! `metrics` facade the idem crates emit through, rendered on the service's own
//! `GET /metrics` (no second listener, no HTTP server of the exporter's own).

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use idem_core::observe::names::{self, Kind};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Buckets for the request timings: the decision target is 50 ms at p99, so the
/// buckets are fine around it.
const REQUEST_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets for the outbox's commit-to-publish time: its lag target is 30 s.
const PUBLISH_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets for stored response sizes.
const STORED_BYTES: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

/// Installs the Prometheus recorder for this process, with histogram buckets for
/// idem's histograms (so quantiles aggregate across replicas) and every idem metric
/// described. Call once, before the first request.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::DECISION_SECONDS.into()),
            REQUEST_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::OVERHEAD_SECONDS.into()),
            REQUEST_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::OUTBOX_PUBLISH_SECONDS.into()),
            PUBLISH_SECONDS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::STORED_RESPONSE_BYTES.into()),
            STORED_BYTES,
        )?
        .install_recorder()?;
    for metric in names::ALL {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    Ok(handle)
}

/// `GET /metrics`: the Prometheus text format.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    )
}

/// Runs the exporter's upkeep (draining histogram samples) every 5 s until `shutdown`.
pub async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
        }
    }
}

/// For the worker binaries, which have no HTTP listener of their own: with a `bind`
/// address, installs the recorder and serves `GET /metrics` there until `shutdown`, in
/// a task of its own (join it at the end); without one, records nothing.
pub fn spawn_server(
    bind: Option<String>,
    shutdown: &CancellationToken,
) -> Result<Option<JoinHandle<std::io::Result<()>>>, BuildError> {
    let Some(bind) = bind else {
        return Ok(None);
    };
    let handle = install()?;
    let shutdown = shutdown.clone();
    Ok(Some(tokio::spawn(async move {
        serve(&bind, handle, shutdown).await
    })))
}

/// Serves `GET /metrics` on `bind` until `shutdown`.
pub async fn serve(
    bind: &str,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics on /metrics");
    tokio::spawn(upkeep(handle.clone(), shutdown.clone()));
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
