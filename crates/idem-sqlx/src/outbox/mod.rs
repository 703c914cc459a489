//! The transactional outbox: [`Message`]s enqueued on a request's
//! transaction, delivered after commit by an [`OutboxRelay`](crate::OutboxRelay); the
//! dead letters it gave up on, redriven or purged by an operator.

pub mod headers;
pub(crate) mod message;
pub(crate) mod waker;

use std::cell::Cell;
use std::future::Future;

use chrono::{DateTime, Utc};
use idem_core::{IdempotencyKey, TenantId};
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

pub use waker::NOTIFY_SPACING;

use crate::{Message, OutboxMessage, StoreError};
use message::decode_message;

/// The channel relays LISTEN on. An [`OutboxWaker`](crate::OutboxWaker) made with
/// [`notifying`](crate::OutboxWaker::notifying) sends `NOTIFY idem_outbox` on it, from its own
/// connection, never from a request's transaction.
pub const OUTBOX_CHANNEL: &str = "idem_outbox";

tokio::task_local! {
    static ENQUEUED: Cell<bool>;
}

/// Runs `future` and reports whether it [`enqueue`]d a message (in this task). The
/// idempotency layer runs each handler in it, and wakes the relay after the commit of a
/// request that enqueued; code that commits its own transactions can do the same.
///
/// ```
/// # async fn run() {
/// let (answer, enqueued) = idem_sqlx::outbox::track_enqueues(async { 42 }).await;
/// assert_eq!((answer, enqueued), (42, false));
/// # }
/// ```
pub async fn track_enqueues<F: Future>(future: F) -> (F::Output, bool) {
    ENQUEUED
        .scope(Cell::new(false), async move {
            let output = future.await;
            (output, ENQUEUED.with(Cell::get))
        })
        .await
}

/// Enqueues `message` on the caller's transaction and returns its id. It commits or
/// rolls back with everything else on that transaction.
///
/// It sends no `NOTIFY`: Postgres serializes the commits of transactions that notify.
/// Relays find the message on their next poll, or at once when an [`OutboxWaker`](crate::OutboxWaker) is
/// woken after the commit (the idempotency layer does that for its handlers).
pub async fn enqueue(conn: &mut PgConnection, message: Message) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO idem.outbox (id, topic, payload, headers, tenant_id, idempotency_key) \
         VALUES ($1, $2, $3, $4, coalesce($5, ''), $6)",
    )
    .bind(id)
    .bind(&message.topic)
    .bind(&message.payload)
    .bind(serde_json::Value::Object(message.headers))
    .bind(message.tenant.as_ref().map(TenantId::as_str))
    .bind(message.idempotency_key.as_ref().map(IdempotencyKey::as_str))
    .execute(conn)
    .await?;
    // Outside `track_enqueues` there is nobody to tell.
    let _ = ENQUEUED.try_with(|enqueued| enqueued.set(true));
    Ok(id)
}

/// A message the relay gave up on, as [`dead_letters`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message, with its attempts and last error.
    pub message: OutboxMessage,
    /// When it became a dead letter.
    pub dead_lettered_at: DateTime<Utc>,
}

/// Dead-lettered messages, oldest first.
pub async fn dead_letters<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, topic, payload, headers, tenant_id, idempotency_key, attempts, last_error, \
           created_at, dead_lettered_at \
         FROM idem.outbox WHERE dead_lettered_at IS NOT NULL ORDER BY dead_lettered_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                message: decode_message(row)?,
                dead_lettered_at: row.try_get("dead_lettered_at")?,
            })
        })
        .collect()
}

/// Puts a dead-lettered message back in the queue with its attempts reset. Returns
/// whether there was such a message. Relays take it on their next poll (an operator's
/// action, so it also sends one `NOTIFY`, from the connection given: on a Citus
/// coordinator, where relays listen).
///
/// The message's tenant is read first and the change names it, so on a Citus
/// coordinator it runs on the one shard that holds the message; the same two
/// statements on plain Postgres.
pub async fn redrive<'e>(
    conn: impl sqlx::Acquire<'e, Database = sqlx::Postgres>,
    id: Uuid,
) -> Result<bool, StoreError> {
    let mut conn = conn.acquire().await?;
    let redriven = on_dead_letter(
        &mut conn,
        id,
        "UPDATE idem.outbox SET dead_lettered_at = NULL, attempts = 0, \
           available_at = now(), leased_by = NULL \
         WHERE tenant_id = $1 AND id = $2 AND dead_lettered_at IS NOT NULL",
    )
    .await?;
    if !redriven {
        return Ok(false);
    }
    sqlx::query("SELECT pg_notify('idem_outbox', '')")
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Deletes a dead-lettered message for good. Returns whether there was such a message.
/// Like [`redrive`], the delete names the message's tenant (one shard on Citus).
pub async fn purge<'e>(
    conn: impl sqlx::Acquire<'e, Database = sqlx::Postgres>,
    id: Uuid,
) -> Result<bool, StoreError> {
    let mut conn = conn.acquire().await?;
    on_dead_letter(
        &mut conn,
        id,
        "DELETE FROM idem.outbox \
         WHERE tenant_id = $1 AND id = $2 AND dead_lettered_at IS NOT NULL",
    )
    .await
}

/// Runs `statement` (`$1` the tenant, `$2` the id) on dead letter `id`; whether it
/// changed a row. The dead letter's tenant (`''` for a message of no tenant) is read
/// first, without locks (on Citus, across the shards through each shard's index on
/// `id`); no dead letter with that id changes nothing.
async fn on_dead_letter(
    conn: &mut PgConnection,
    id: Uuid,
    statement: &'static str,
) -> Result<bool, StoreError> {
    let tenant: Option<String> = sqlx::query_scalar(
        "SELECT tenant_id FROM idem.outbox WHERE id = $1 AND dead_lettered_at IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(tenant) = tenant else {
        return Ok(false);
    };
    let done = sqlx::query(statement)
        .bind(&tenant)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
