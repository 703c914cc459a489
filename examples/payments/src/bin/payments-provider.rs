//! The example's card provider, as its own service with its own database: see
//! `payments::provider`. The payments service calls it from `POST /payments/charged`
//! (set `PROVIDER_URL` there to this service's address).
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway Postgres container, as
//! the payments service does. Listens on `BIND` (default `127.0.0.1:3100`).
//! `PROVIDER_DELAY_MS` makes every charge take that long (a slow provider). Stops
//! gracefully on Ctrl-C or SIGTERM.

use std::error::Error;
use std::time::Duration;

use payments::provider::{self, ChargeDelay};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let database = payments::DevDatabase::from_env().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&database.url)
        .await?;
    provider::migrate(&pool).await?;
    let delay = std::env::var("PROVIDER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3100".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(address = %listener.local_addr()?, "provider listening");
    axum::serve(listener, provider::app(pool.clone(), ChargeDelay(delay)))
        .with_graceful_shutdown(payments::shutdown_signal())
        .await?;
    pool.close().await;
    database.shutdown().await?;
    Ok(())
}
