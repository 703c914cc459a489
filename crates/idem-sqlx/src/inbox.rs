//! The inbox: a consumer records each message id in the same transaction as its work,
//! so a redelivered message is skipped.

use futures_util::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::StoreError;

/// What [`process`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The work ran and committed with the message id.
    Done(T),
    /// The message was processed before; the work did not run. Acknowledge it.
    Duplicate,
}

/// Why [`process`] failed. Nothing was recorded: a redelivery retries the message.
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E> {
    /// The consumer's work failed; its writes were rolled back.
    #[error("the consumer's work failed: {0}")]
    Work(E),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E> From<sqlx::Error> for InboxError<E> {
    fn from(e: sqlx::Error) -> Self {
        InboxError::Store(StoreError::Database(e))
    }
}

/// Runs `work` for `message_id` exactly once per `consumer`: in one transaction it
/// records the id and runs the work on the same connection. A message already recorded
/// is skipped ([`Processed::Duplicate`]); a concurrent duplicate waits for the first
/// and is then skipped. If the work fails, both roll back.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool, id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// use idem_sqlx::{Processed, process};
///
/// let outcome = process(&pool, "ledger", id, |tx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO ledger_entries (message_id) VALUES ($1)")
///             .bind(id)
///             .execute(&mut *tx)
///             .await
///     })
/// })
/// .await?;
/// // Acknowledge the message in both cases.
/// assert!(matches!(outcome, Processed::Done(_) | Processed::Duplicate));
/// # Ok(())
/// # }
/// ```
pub async fn process<T, E, F>(
    pool: &PgPool,
    consumer: &str,
    message_id: Uuid,
    work: F,
) -> Result<Processed<T>, InboxError<E>>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>>,
{
    let mut tx = pool.begin().await?;
    let recorded = sqlx::query(
        "INSERT INTO idem.inbox (consumer, message_id) VALUES ($1, $2) \
         ON CONFLICT (consumer, message_id) DO NOTHING RETURNING 1",
    )
    .bind(consumer)
    .bind(message_id)
    .fetch_optional(&mut *tx)
    .await?;
    if recorded.is_none() {
        tx.rollback().await?;
        return Ok(Processed::Duplicate);
    }
    match work(&mut tx).await {
        Ok(value) => {
            tx.commit().await?;
            Ok(Processed::Done(value))
        }
        Err(e) => {
            tx.rollback().await?;
            Err(InboxError::Work(e))
        }
    }
}
