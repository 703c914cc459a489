//! Opening a request's transaction at its [`Isolation`] level, and why a transaction
//! could not be opened.

use std::time::Duration;

use idem_core::policy::StoreUnreached;
use sqlx::{Connection, PgConnection, PgPool, PgTransaction};

use crate::{Isolation, StoreError};

/// Takes a pooled connection and begins a transaction at `isolation`, in one round
/// trip.
pub async fn begin(
    pool: &PgPool,
    isolation: Isolation,
) -> Result<PgTransaction<'static>, StoreError> {
    Ok(pool.begin_with(isolation.begin_statement()).await?)
}

/// Why `error` (from opening a transaction on `pool`) left the request without one,
/// as [`FailureMode::runs_without_store`](idem_core::policy::FailureMode::runs_without_store)
/// weighs it. Connection errors are ambiguous: the pool retries a refused connection
/// until its acquire timeout, and also times out when all its connections are in use;
/// a pooled connection breaks when its server restarted, or its backend was
/// terminated, while the database is up. So these open a connection of their own,
/// bounded by `probe`: refused or reset, the database cannot be reached; made, it is
/// up.
pub async fn unreached(pool: &PgPool, error: &StoreError, probe: Duration) -> StoreUnreached {
    match error {
        StoreError::Database(
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_),
        ) => {
            let options = pool.connect_options();
            match tokio::time::timeout(probe, PgConnection::connect_with(&options)).await {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    StoreUnreached::PoolExhausted
                }
                Ok(Err(sqlx::Error::Io(_) | sqlx::Error::Tls(_))) => StoreUnreached::Unreachable,
                Ok(Err(_)) => StoreUnreached::PoolExhausted,
                Err(_elapsed) => StoreUnreached::Silent,
            }
        }
        _ => StoreUnreached::PoolExhausted,
    }
}
