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

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::{Backend, StoreError};

pub(super) struct OwnConnection {
    pool: PgPool,
    /// The connection, and the backend its statements are worded for.
    conn: Mutex<Option<(PgConnection, Backend)>>,
}

impl OwnConnection {
    pub(super) fn new(pool: PgPool) -> Self {
        OwnConnection {
            pool,
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection, connecting first when there is none, with the
    /// backend it reaches. After an error the connection is dropped, and the next call
    /// connects again (and looks at the backend again).
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection, Backend) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut guard = self.conn.lock().await;
        let (conn, backend) = match guard.as_mut() {
            Some(connected) => connected,
            None => guard.insert(self.connect().await?),
        };
        let result = f(conn, *backend).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn connect(&self) -> Result<(PgConnection, Backend), StoreError> {
        let options = self.pool.connect_options();
        let mut conn = PgConnection::connect_with(&options).await?;
        sqlx::raw_sql("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        let backend = detect(&mut conn).await?;
        Ok((conn, backend))
    }
}

/// The wording the relay's statements need on `conn`: Citus's on a Citus coordinator
/// (as [`Backend::detect`] finds it, on this connection, so the relay never waits for
/// the pool) whose `idem.outbox` is distributed; plain Postgres's otherwise, a local
/// outbox on a coordinator included (then, once it is distributed, the plain claim
/// fails, the connection is dropped, and the next one finds the distributed outbox).
async fn detect(conn: &mut PgConnection) -> Result<Backend, StoreError> {
    if Backend::detect(&mut *conn).await? == Backend::Postgres {
        return Ok(Backend::Postgres);
    }
    Ok(
        match crate::citus::is_distributed(&mut *conn, "idem.outbox").await? {
            true => Backend::Citus,
            false => Backend::Postgres,
        },
    )
}
