//! The payments example's back office: relays the outbox to NATS JetStream and runs the
//! ledger consumer, which writes one `ledger_entries` row per payment through the inbox.
//!
//! `DATABASE_URL` (required: the payments service's database) and `NATS_URL` (default
//! `nats://127.0.0.1:4222`). Creates the stream `PAYMENTS` (subjects `payments.>`,
//! two-minute duplicate window) and the durable consumer `ledger` when missing (30 s
//! ack wait, at most 20 deliveries: a redelivery horizon of minutes, far inside the
//! sweeper's 7-day inbox window). The relay wakes on the `NOTIFY` the payments service
//! sends after each commit that enqueued. Stops gracefully on Ctrl-C or SIGTERM.
//! With `METRICS_BIND` (for example `127.0.0.1:9101`) it serves the relay's and the
//! inbox's metrics on `GET /metrics` there.

use std::error::Error;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use idem_sqlx::{JetStreamSink, OutboxRelay};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL must name the payments service's database")?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());

    let pool = sqlx::PgPool::connect(&database_url).await?;
    payments::migrate(&pool).await?;
    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "PAYMENTS".to_owned(),
            subjects: vec!["payments.>".to_owned()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "ledger",
            consumer::pull::Config {
                durable_name: Some("ledger".to_owned()),
                ack_wait: Duration::from_secs(30),
                max_deliver: 20,
                ..Default::default()
            },
        )
        .await?;

    let shutdown = CancellationToken::new();
    let metrics = payments::metrics::spawn_server(std::env::var("METRICS_BIND").ok(), &shutdown)?;
    let relay = tokio::spawn(
        OutboxRelay::new(pool.clone(), JetStreamSink::new(js.clone())).run(shutdown.clone()),
    );
    let ledger = tokio::spawn(payments::ledger::consume(
        pool.clone(),
        consumer,
        shutdown.clone(),
    ));
    tracing::info!(%nats_url, "relaying the outbox to JetStream and consuming payments.created");

    payments::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    relay.await??;
    ledger.await?;
    if let Some(metrics) = metrics {
        metrics.await??;
    }
    Ok(())
}
