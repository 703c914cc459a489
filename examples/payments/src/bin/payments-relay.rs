//! A relay of the payments service's outbox to NATS JetStream, on its own: run as many
//! as you like beside `payments-ledger` (which runs one too). Each claims batches under
//! a lease, so relays share the outbox, and the messages of a relay that dies are taken
//! by the others once its lease ends; JetStream drops the copies a second relay
//! publishes again (`Nats-Msg-Id`), within the stream's duplicate window.
//!
//! `DATABASE_URL` (required) and `NATS_URL` (default `nats://127.0.0.1:4222`). The
//! stream for the messages' subjects must exist (`payments-ledger` creates
//! `PAYMENTS`). Stops gracefully on Ctrl-C or SIGTERM.

use std::error::Error;
use std::time::Duration;

use async_nats::jetstream;
use clap::Parser;
use idem_sqlx::{JetStreamSink, OutboxRelay};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(about = "Relays the payments outbox to NATS JetStream")]
struct Args {
    /// Messages claimed per round.
    #[arg(long, default_value_t = 100)]
    batch_size: i64,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Milliseconds a claimed batch stays with this relay.
    #[arg(long, default_value_t = 60_000)]
    lease_ms: u64,
    /// Milliseconds one delivery may take.
    #[arg(long, default_value_t = 10_000)]
    delivery_timeout_ms: u64,
    /// Milliseconds between polls when nothing wakes the relay.
    #[arg(long, default_value_t = 1_000)]
    poll_ms: u64,
    /// Serve the relay's metrics on `GET /metrics` at this address (for example
    /// 127.0.0.1:9102).
    #[arg(long)]
    metrics_bind: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let database_url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL must name the payments service's database")?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());

    let pool = sqlx::PgPool::connect(&database_url).await?;
    payments::migrate(&pool).await?;
    let js = jetstream::new(async_nats::connect(&nats_url).await?);
    let relay = OutboxRelay::builder(pool, JetStreamSink::new(js))
        .batch_size(args.batch_size)
        .concurrency(args.concurrency)
        .lease(Duration::from_millis(args.lease_ms))
        .delivery_timeout(Duration::from_millis(args.delivery_timeout_ms))
        .poll_interval(Duration::from_millis(args.poll_ms))
        .build()?;
    tracing::info!(relay = %relay.id(), %nats_url, "relaying the outbox to JetStream");

    let shutdown = CancellationToken::new();
    let metrics = payments::metrics::spawn_server(args.metrics_bind, &shutdown)?;
    let task = tokio::spawn(relay.run(shutdown.clone()));
    payments::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    task.await??;
    if let Some(metrics) = metrics {
        metrics.await??;
    }
    Ok(())
}
