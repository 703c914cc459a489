//! The relay's own connection for its claims and delivered marks.
//!
//! It is outside the pool, so a relay never waits behind requests for a connection (nor
//! takes one from them), and it commits with `synchronous_commit = off`: a claim or a
//! mark lost in a database crash only means the message is delivered again, which the
//! downstream dedupe on its id makes harmless, so neither needs to wait for the WAL
//! flush. Failures, retries and dead letters are written through the pool, durably.

use futures_util::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use crate::StoreError;

pub(super) struct OwnConnection {
    pool: PgPool,
    conn: Mutex<Option<PgConnection>>,
}

impl OwnConnection {
    pub(super) fn new(pool: PgPool) -> Self {
        OwnConnection {
            pool,
            conn: Mutex::new(None),
        }
    }

    /// Runs `f` on the connection, connecting first when there is none. After an error
    /// the connection is dropped, and the next call connects again.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>,
    {
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(self.connect().await?),
        };
        let result = f(conn).await;
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
