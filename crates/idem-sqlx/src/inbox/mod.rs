//! The inbox: a consumer records each message id in the same transaction as its work,
//! so a redelivered message is skipped; failed attempts are counted, and a message that
//! keeps failing becomes a dead letter the broker stops redelivering.

mod dead;

use std::time::Duration;

use futures_util::future::BoxFuture;
use idem_core::delivery::{AfterFailure, Failure, after_failure};
use idem_core::observe::names;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use dead::DeadMessage;

use crate::StoreError;
use crate::backoff::full_jitter;
use crate::json_headers;
use crate::observe;
use crate::outbox::headers::TENANT_ID;

/// What [`Inbox::process`] did with a message. Acknowledge it in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The work ran and committed with the message id.
    Done(T),
    /// The message was processed before; the work did not run.
    Duplicate,
    /// The message is a dead letter (it failed `max_attempts` times); the work did not
    /// run. Acknowledge it so the broker stops redelivering it (JetStream: `Term`).
    Dead,
}

/// Why [`Inbox::process`] failed. The work's writes were rolled back.
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E> {
    /// The consumer's work failed; the attempt is counted. Do not acknowledge: let the
    /// broker redeliver the message, after `retry_in` where it allows a delay.
    #[error("the consumer's work failed (attempt {attempts}): {error}")]
    Work {
        /// The work's error.
        error: E,
        /// Failed attempts so far, this one included.
        attempts: i32,
        /// A suggested redelivery delay (exponential backoff with full jitter).
        retry_in: Duration,
    },
    /// The work failed for the last allowed time: the message is now a dead letter
    /// (kept with its payload, listed by [`Inbox::dead_letters`]). Acknowledge it so the
    /// broker stops redelivering it.
    #[error("the consumer's work failed {attempts} times; dead-lettered: {error}")]
    DeadLettered {
        /// The work's error.
        error: E,
        /// Failed attempts, this one included.
        attempts: i32,
    },
    /// The store failed; nothing was recorded. Do not acknowledge.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E> From<sqlx::Error> for InboxError<E> {
    fn from(e: sqlx::Error) -> Self {
        InboxError::Store(StoreError::Database(e))
    }
}

/// A message as a consumer received it: its id (the outbox id, from `Idempotency-Key`
/// or `Nats-Msg-Id`) and what is kept of it if it becomes a dead letter. Its tenant is
/// the one its headers name (`Idem-Tenant-Id`, as the relay sends it; see
/// [`tenant`](Self::tenant)).
#[derive(Debug, Clone, Copy)]
pub struct InboxMessage<'a> {
    /// The message id: the dedupe key.
    pub id: Uuid,
    /// The subject or topic it came on.
    pub subject: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// Its headers.
    pub headers: &'a [(String, String)],
}

impl InboxMessage<'_> {
    /// The tenant the message belongs to: its [`TENANT_ID`] header (`Idem-Tenant-Id`,
    /// any case), which the relay sets from the request that enqueued it; `""` for a
    /// message without one. The inbox records the message under this tenant, so on
    /// Citus its row lives on the worker of the tenant the consumer's work is for.
    pub fn tenant(&self) -> &str {
        self.headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(TENANT_ID))
            .map_or("", |(_, value)| value.as_str())
    }
}

/// The inbox of one consumer: exactly-once processing per message id, with poison
/// messages counted and dead-lettered.
///
/// Each message is recorded under the tenant it names ([`InboxMessage::tenant`]), so
/// pass the message's headers as received. On Citus `idem.inbox` is distributed by
/// that tenant beside the consumer's own tables: a consumer whose work writes that
/// tenant's rows commits on one worker. Every statement of [`process`](Self::process)
/// names the tenant, so each is routed to one shard.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool, id: uuid::Uuid, payload: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
/// use idem_sqlx::{Inbox, InboxError, InboxMessage, Processed};
///
/// let inbox = Inbox::new(pool, "ledger").max_attempts(5);
/// let message = InboxMessage { id, subject: "payments.created", payload, headers: &[] };
/// match inbox
///     .process(&message, |tx| {
///         Box::pin(async move {
///             sqlx::query("INSERT INTO ledger_entries (message_id) VALUES ($1)")
///                 .bind(id)
///                 .execute(&mut *tx)
///                 .await
///         })
///     })
///     .await
/// {
///     Ok(Processed::Done(_) | Processed::Duplicate | Processed::Dead)
///     | Err(InboxError::DeadLettered { .. }) => { /* acknowledge */ }
///     Err(InboxError::Work { retry_in, .. }) => { /* redeliver after retry_in */ }
///     Err(InboxError::Store(_)) => { /* redeliver */ }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    consumer: String,
    max_attempts: i32,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Inbox {
    /// The inbox of `consumer`: 10 attempts, redelivery backoff from 1 s up to 5 minutes.
    pub fn new(pool: PgPool, consumer: impl Into<String>) -> Self {
        Inbox {
            pool,
            consumer: consumer.into(),
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }

    /// Failed attempts before a message becomes a dead letter.
    pub fn max_attempts(mut self, n: i32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The suggested redelivery delay after attempt `n`: a random time up to
    /// `min(max, base * 2^(n-1))`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Runs `work` for `message` exactly once: in one transaction it records the id
    /// (under the message's [`tenant`](InboxMessage::tenant)) and runs the work on the
    /// same connection. A message processed before is skipped
    /// ([`Processed::Duplicate`]); a concurrent duplicate waits for the first and is then
    /// skipped; a dead letter is skipped ([`Processed::Dead`]). If the work fails, it
    /// rolls back, and the failure is counted in a statement of its own; the last
    /// allowed failure makes the message a dead letter.
    pub async fn process<T, E, F>(
        &self,
        message: &InboxMessage<'_>,
        work: F,
    ) -> Result<Processed<T>, InboxError<E>>
    where
        E: std::fmt::Display,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>>,
    {
        let processed = async {
            let mut tx = self.pool.begin().await?;
            if let Some(skipped) = self.recorded_before(&mut tx, message).await? {
                tx.rollback().await?;
                return Ok(skipped);
            }
            match work(&mut tx).await {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(Processed::Done(value))
                }
                Err(error) => {
                    tx.rollback().await?;
                    self.failed(message, error).await
                }
            }
        }
        .await;
        self.count(&processed);
        processed
    }

    /// Records `message`'s id on `conn` (a transaction the work then runs in), or, when
    /// it was recorded before, what the message is: [`Processed::Dead`] or
    /// [`Processed::Duplicate`].
    async fn recorded_before<T>(
        &self,
        conn: &mut PgConnection,
        message: &InboxMessage<'_>,
    ) -> Result<Option<Processed<T>>, StoreError> {
        // EXCLUDED's clock, not now() in DO UPDATE: Citus takes no function there.
        let claimed = sqlx::query(
            "INSERT INTO idem.inbox (tenant_id, consumer, message_id, processed_at) \
             VALUES ($1, $2, $3, now()) \
             ON CONFLICT (tenant_id, consumer, message_id) \
             DO UPDATE SET processed_at = EXCLUDED.processed_at \
             WHERE inbox.processed_at IS NULL AND inbox.dead_at IS NULL \
             RETURNING 1",
        )
        .bind(message.tenant())
        .bind(&self.consumer)
        .bind(message.id)
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let dead: Option<bool> = sqlx::query_scalar(
            "SELECT dead_at IS NOT NULL FROM idem.inbox \
             WHERE tenant_id = $1 AND consumer = $2 AND message_id = $3",
        )
        .bind(message.tenant())
        .bind(&self.consumer)
        .bind(message.id)
        .fetch_optional(conn)
        .await?;
        Ok(Some(if dead == Some(true) {
            Processed::Dead
        } else {
            Processed::Duplicate
        }))
    }

    /// Counts what [`process`](Self::process) did in the inbox's metrics.
    fn count<T, E>(&self, processed: &Result<Processed<T>, InboxError<E>>) {
        let counted: &[&'static str] = match processed {
            Ok(Processed::Done(_)) => &[names::INBOX_PROCESSED],
            Ok(Processed::Duplicate) => &[names::INBOX_DUPLICATES],
            Err(InboxError::Work { .. }) => &[names::INBOX_FAILURES],
            Err(InboxError::DeadLettered { .. }) => {
                &[names::INBOX_FAILURES, names::INBOX_DEAD_LETTERED]
            }
            Ok(Processed::Dead) | Err(InboxError::Store(_)) => &[],
        };
        for name in counted {
            observe::count(name, names::CONSUMER, &self.consumer, 1);
        }
    }

    /// Counts a failed attempt outside the rolled-back work, and dead-letters the
    /// message when it was the last one allowed.
    async fn failed<T, E: std::fmt::Display>(
        &self,
        message: &InboxMessage<'_>,
        error: E,
    ) -> Result<Processed<T>, InboxError<E>> {
        let headers = json_headers::to_json(message.headers);
        let attempts: Option<i32> = sqlx::query_scalar(
            "INSERT INTO idem.inbox (tenant_id, consumer, message_id, attempts, last_error, \
               subject, payload, headers) \
             VALUES ($7, $1, $2, 1, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, consumer, message_id) DO UPDATE SET \
               attempts = inbox.attempts + 1, \
               last_error = EXCLUDED.last_error, subject = EXCLUDED.subject, \
               payload = EXCLUDED.payload, headers = EXCLUDED.headers \
             WHERE inbox.processed_at IS NULL AND inbox.dead_at IS NULL \
             RETURNING attempts",
        )
        .bind(&self.consumer)
        .bind(message.id)
        .bind(error.to_string())
        .bind(message.subject)
        .bind(message.payload)
        .bind(headers)
        .bind(message.tenant())
        .fetch_optional(&self.pool)
        .await?;
        let Some(attempts) = attempts else {
            // A concurrent delivery processed it (or dead-lettered it) meanwhile.
            return Ok(Processed::Duplicate);
        };
        let backoff = self.backoff_for(attempts);
        match after_failure(attempts, self.max_attempts, Failure::TRANSIENT, backoff) {
            AfterFailure::RetryIn(retry_in) => Err(InboxError::Work {
                error,
                attempts,
                retry_in,
            }),
            AfterFailure::DeadLetter => {
                dead::mark(&self.pool, message.tenant(), &self.consumer, message.id).await?;
                tracing::error!(
                    consumer = %self.consumer,
                    message_id = %message.id,
                    attempts,
                    error = %error,
                    "inbox message dead-lettered"
                );
                Err(InboxError::DeadLettered { error, attempts })
            }
        }
    }

    /// Exponential backoff with full jitter.
    fn backoff_for(&self, attempts: i32) -> Duration {
        full_jitter(self.backoff_base, self.backoff_max, attempts - 1)
    }
}
