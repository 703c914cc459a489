//! Runs the payments example: `cargo run -p payments`.
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway Postgres container
//! (image from `IDEM_PG_IMAGE`, default `postgres:17`). On a Citus coordinator it
//! distributes its tables and idem's by tenant at start (see [`payments::distribute`]). Listens on `BIND` (default
//! `127.0.0.1:3000`) and shuts down gracefully on Ctrl-C or SIGTERM.
//! `PAYMENTS_HANDLER_DELAY_MS` (failure tests only) pauses every payment inside its
//! handler, with its transaction open; `IN_FLIGHT_WAIT_MS` sets how long a duplicate
//! waits for it (the layer's `Timeouts::in_flight_wait`, 5 s by default).
//!
//! After each commit that enqueued a message it wakes the outbox relays (a `NOTIFY`
//! from its own connection, never from the request's transaction), and it runs the
//! [`Sweeper`](idem_sqlx::Sweeper) over idem's tables.
//!
//! `GET /metrics` serves the Prometheus text format (no authentication: keep the port
//! private). The store's gauges are read every `GAUGES_INTERVAL_MS` (default 15000).
//! Each tenant may hold `KEY_QUOTA` live keys (default 1,000,000; 0 for no quota), so
//! the dashboard's quota panel and its alert have a usage to show.
//!
//! With `PROVIDER_URL` (the address of `payments-provider`) it also serves
//! `POST /payments/charged` in phased mode and `GET /operations/{id}`, and runs the
//! completer every `COMPLETER_INTERVAL_MS` (default 5000; 0 runs none).
//! `PHASED_LEASE_MS` (default 30000) is the lease, `ACCEPT_AFTER_MS` (default 5000)
//! when a charge still running is answered 202; `CHARGE_PAUSE_AFTER_PROVIDER_MS`
//! (crash tests only) pauses every charge right after the provider answered.

use std::error::Error;

use idem_axum::{Limits, Storage, Timeouts};
use sqlx::postgres::PgPoolOptions;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,idem_axum=debug")),
        )
        .init();

    let metrics = payments::metrics::install()?;
    let database = payments::DevDatabase::from_env().await?;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&database.url)
        .await?;
    payments::migrate(&pool).await?;
    if let idem_sqlx::citus::Distribution::Distributed { newly } =
        payments::distribute(&pool).await?
    {
        tracing::info!(?newly, "Citus: tables distributed by tenant, co-located");
    }

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(address = %listener.local_addr()?, "payments listening");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sweeper = tokio::spawn(idem_sqlx::Sweeper::new(pool.clone()).run(shutdown.clone()));
    let gauges_every = env_ms("GAUGES_INTERVAL_MS").map_or(
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis,
    );
    let gauges = tokio::spawn(
        idem_sqlx::StoreGauges::new(pool.clone())
            .interval(gauges_every)
            .run(shutdown.clone()),
    );
    let upkeep = tokio::spawn(payments::metrics::upkeep(metrics.clone(), shutdown.clone()));
    let waker = idem_sqlx::OutboxWaker::notifying(pool.clone());
    let mut idempotency =
        payments::idempotency(pool.clone()).storage(Storage::default().outbox_waker(waker));
    let quota = env_number("KEY_QUOTA").unwrap_or(DEFAULT_KEY_QUOTA);
    let new_keys = env_number("NEW_KEY_RATE").unwrap_or(0);
    let new_keys = u32::try_from(new_keys).unwrap_or(u32::MAX);
    idempotency = idempotency.limits(
        Limits::default()
            .key_quota(quota)
            .new_key_rate(new_keys, new_keys.saturating_mul(2)),
    );
    if let Some(ms) = env_ms("IN_FLIGHT_WAIT_MS") {
        idempotency = idempotency
            .timeouts(Timeouts::default().in_flight_wait(std::time::Duration::from_millis(ms)));
    }
    let mut app = payments::app_with(pool.clone(), idempotency);
    if let Some(ms) = env_ms("PAYMENTS_HANDLER_DELAY_MS") {
        tracing::warn!(
            ms,
            "PAYMENTS_HANDLER_DELAY_MS: every payment waits inside its handler"
        );
        app = app.layer(axum::Extension(payments::HandlerDelay(
            std::time::Duration::from_millis(ms),
        )));
    }
    let completer = match charging() {
        Some(charging) => {
            let layer = payments::charged::idempotency(pool.clone()).storage(
                Storage::default().outbox_waker(idem_sqlx::OutboxWaker::notifying(pool.clone())),
            );
            let mut routes = payments::charged::routes(layer, &charging);
            if let Some(ms) = env_ms("CHARGE_PAUSE_AFTER_PROVIDER_MS") {
                tracing::warn!(ms, "CHARGE_PAUSE_AFTER_PROVIDER_MS: every charge pauses");
                routes = routes.layer(axum::Extension(payments::charged::PauseAfterProvider(
                    std::time::Duration::from_millis(ms),
                )));
            }
            app = app.merge(
                routes
                    .clone()
                    .layer(axum::middleware::from_fn(payments::auth)),
            );
            match env_ms("COMPLETER_INTERVAL_MS").unwrap_or(5000) {
                0 => None,
                every => {
                    let completer = idem_axum::Completer::new(pool.clone(), routes)
                        .interval(std::time::Duration::from_millis(every));
                    Some(tokio::spawn(completer.run(shutdown.clone())))
                }
            }
        }
        None => None,
    };
    let app = app.merge(payments::metrics::router(metrics));
    axum::serve(listener, app)
        .with_graceful_shutdown(payments::shutdown_signal())
        .await?;

    tracing::info!("shutting down");
    shutdown.cancel();
    sweeper.await?;
    gauges.await?;
    upkeep.await?;
    if let Some(completer) = completer {
        completer.await?;
    }
    pool.close().await;
    database.shutdown().await?;
    Ok(())
}

/// `POST /payments/charged`'s settings, when `PROVIDER_URL` names the card provider:
/// `PHASED_LEASE_MS` (default 30000, longer than the provider client's 10 s timeout,
/// so an owner waiting on the provider keeps its key) and `ACCEPT_AFTER_MS` (default
/// 5000).
fn charging() -> Option<payments::charged::Charging> {
    let provider = std::env::var("PROVIDER_URL").ok()?;
    Some(payments::charged::Charging {
        provider: payments::provider::ProviderClient::new(provider),
        lease: std::time::Duration::from_millis(env_ms("PHASED_LEASE_MS").unwrap_or(30_000)),
        accept_after: std::time::Duration::from_millis(env_ms("ACCEPT_AFTER_MS").unwrap_or(5_000)),
    })
}

/// The live keys each tenant may hold, unless `KEY_QUOTA` says otherwise.
const DEFAULT_KEY_QUOTA: u64 = 1_000_000;

/// A number of milliseconds from the environment, when set and valid.
fn env_ms(name: &str) -> Option<u64> {
    env_number(name)
}

/// A whole number from the environment, when set and valid.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok())
}
