//! Opening a request's transaction: its isolation level, set explicitly whatever the
//! server's default, and why a transaction could not be opened.

use std::time::Duration;

use idem_core::policy::StoreUnreached;
use sqlx::{Connection, PgConnection, PgPool, PgTransaction};

use crate::StoreError;

/// The isolation level a request's transaction begins with.
///
/// The claim is sound under READ COMMITTED: an `INSERT` that waited for another
/// transaction holding the same key then sees its committed row in a new statement.
/// A server (or database) whose `default_transaction_isolation` is stricter would
/// break that, so the level is always set explicitly in the `BEGIN` itself, at no
/// extra round trip. Under a stricter level, chosen for a route's own writes, a key
/// committed after the transaction's snapshot fails the claim with a serialization
/// failure instead; the layer then claims again in a new transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// READ COMMITTED, the default.
    #[default]
    ReadCommitted,
    /// REPEATABLE READ.
    RepeatableRead,
    /// SERIALIZABLE.
    Serializable,
}

impl Isolation {
    /// The `BEGIN` statement that opens a transaction at this level.
    pub fn begin_statement(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

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
