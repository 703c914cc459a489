//! The kind of Postgres the store runs on: plain Postgres or a Citus coordinator.

use sqlx::PgExecutor;

use crate::StoreError;

/// The kind of Postgres a pool reaches: the request path words a few statements
/// differently on a Citus coordinator (a wait bound the workers see, no functions
/// Citus refuses on distributed tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// Plain Postgres.
    #[default]
    Postgres,
    /// A Citus coordinator (its `citus` extension is installed in the database).
    Citus,
}

impl Backend {
    /// The backend `executor` (a pool or a connection) reaches: [`Backend::Citus`] when
    /// the database has the `citus` extension.
    pub async fn detect<'e>(executor: impl PgExecutor<'e>) -> Result<Backend, StoreError> {
        let citus: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
        )
        .fetch_one(executor)
        .await?;
        Ok(if citus {
            Backend::Citus
        } else {
            Backend::Postgres
        })
    }
}
