//! The relay's own connection for its claims and delivered marks.
//!
//! It is outside the pool, so a relay never waits behind requests for a connection (nor
//! takes one from them), and it commits with `synchronous_commit = off`: a claim or a
//! mark lost in a database crash only means the message is delivered again, which the
//! downstream dedupe on its id makes harmless, so neither needs to wait for the WAL
//! flush. Failures, retries and dead letters are written through the pool, durably.
//!
//! On a Citus coordinator the session's setting stays on the coordinator: the claims
//! and marks commit on the workers, in transactions that carry the setting there (see
//! `lease`).

use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::{Backend, StoreError};

pub(super) struct OwnConnection {
    pool: PgPool,
    conn: Mutex<Option<PgConnection>>,
    /// Detected on the first connection, once: the statements are worded for it.
    backend: OnceLock<Backend>,
}

impl OwnConnection {
    pub(super) fn new(pool: PgPool) -> Self {
        OwnConnection {
            pool,
            conn: Mutex::new(None),
            backend: OnceLock::new(),
        }
    }

    /// Runs `f` on the connection, connecting first when there is none, with the
    /// backend it reaches. After an error the connection is dropped, and the next call
    /// connects again.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection, Backend) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(self.connect().await?),
        };
        let backend = match self.backend.get() {
            Some(backend) => *backend,
            None => {
                let detected = detect(conn).await;
                let backend = match detected {
                    Ok(backend) => backend,
                    Err(e) => {
                        *guard = None;
                        return Err(e);
                    }
                };
                *self.backend.get_or_init(|| backend)
            }
        };
        let result = f(conn, backend).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        let options = self.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::raw_sql("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }
}

/// The backend `conn` reaches, as [`Backend::detect`] finds it, on this connection (so
/// the relay never waits for the pool).
async fn detect(conn: &mut PgConnection) -> Result<Backend, StoreError> {
    let citus: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(conn)
            .await?;
    Ok(if citus {
        Backend::Citus
    } else {
        Backend::Postgres
    })
}
