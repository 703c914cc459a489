//! Runs the payments example: `cargo run -p payments`.
//!
//! Uses `DATABASE_URL` when set; otherwise starts a throwaway Postgres container
//! (image from `IDEM_PG_IMAGE`, default `postgres:17`). Listens on `BIND` (default
//! `127.0.0.1:3000`) and shuts down gracefully on Ctrl-C or SIGTERM.

use std::error::Error;

use sqlx::postgres::PgPoolOptions;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::ImageExt;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,idem_axum=debug")),
        )
        .init();

    let (url, container) = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            tracing::info!("using the database at DATABASE_URL");
            (url, None)
        }
        Err(_) => {
            let (url, container) = start_container().await?;
            (url, Some(container))
        }
    };

    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await?;
    payments::migrate(&pool).await?;

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(address = %listener.local_addr()?, "payments listening");
    axum::serve(listener, payments::app(pool.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    tracing::info!("shutting down");
    pool.close().await;
    if let Some(container) = container {
        container.rm().await?;
        tracing::info!("throwaway Postgres container removed");
    }
    Ok(())
}

async fn start_container() -> Result<(String, ContainerAsync<Postgres>), Box<dyn Error>> {
    let image = std::env::var("IDEM_PG_IMAGE").unwrap_or_else(|_| "postgres:17".to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((image.as_str(), "latest"));
    tracing::info!(%image, "DATABASE_URL not set: starting a throwaway Postgres container");
    let container = Postgres::default()
        .with_name(name)
        .with_tag(tag)
        .start()
        .await?;
    let host = container.get_host().await?;
    let port = container.get_host_port_ipv4(5432).await?;
    let url = format!("postgres://postgres:postgres@{host}:{port}/postgres");
    tracing::info!(%host, %port, "throwaway Postgres container ready (removed on shutdown)");
    Ok((url, container))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
