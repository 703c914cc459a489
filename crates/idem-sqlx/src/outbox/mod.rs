//! The transactional outbox: messages enqueued on a request's transaction, delivered
//! after commit by an [`OutboxRelay`](crate::OutboxRelay).

mod headers;
mod waker;

use std::cell::Cell;
use std::future::Future;

use chrono::{DateTime, Utc};
use idem_core::{IdempotencyKey, TenantId, TraceContext};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::{StoreError, json_headers};

pub use headers::{
    CORRELATION_ID, DeliveryHeaders, IDEMPOTENCY_KEY, REQUEST_KEY, TENANT_ID, TOPIC, TRACEPARENT,
    TRACESTATE,
};
pub use waker::{NOTIFY_SPACING, OutboxWaker};

/// The channel relays LISTEN on. An [`OutboxWaker`] made with
/// [`notifying`](OutboxWaker::notifying) sends `NOTIFY idem_outbox` on it, from its own
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
/// let (answer, enqueued) = idem_sqlx::track_enqueues(async { 42 }).await;
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

/// A message to enqueue.
///
/// ```
/// use idem_sqlx::Message;
///
/// let message = Message::new("payment.created", br#"{"id":"..."}"#.to_vec())
///     .header("content-type", "application/json");
/// assert_eq!(message.topic(), "payment.created");
/// ```
#[derive(Debug, Clone)]
pub struct Message {
    topic: String,
    payload: Vec<u8>,
    headers: serde_json::Map<String, serde_json::Value>,
    tenant: Option<TenantId>,
    idempotency_key: Option<IdempotencyKey>,
}

impl Message {
    /// A message for `topic` with `payload`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            headers: serde_json::Map::new(),
            tenant: None,
            idempotency_key: None,
        }
    }

    /// Adds a header, delivered with the message.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.into(), serde_json::Value::String(value.into()));
        self
    }

    /// Records the tenant and idempotency key of the request that produced the message,
    /// so they propagate downstream.
    pub fn from_request(mut self, tenant: &TenantId, key: &IdempotencyKey) -> Self {
        self.tenant = Some(tenant.clone());
        self.idempotency_key = Some(key.clone());
        self
    }

    /// Carries the request's trace context on: `traceparent`, `tracestate` and
    /// `X-Correlation-Id` become headers of the message, delivered with it, so the
    /// consumer's span joins the request's trace.
    pub fn trace(mut self, context: &TraceContext) -> Self {
        let fields = [
            (TRACEPARENT, context.traceparent()),
            (TRACESTATE, context.tracestate()),
            (CORRELATION_ID, context.correlation_id()),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                self = self.header(name, value);
            }
        }
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// A message as the relay reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The message id (UUIDv7): stable across redeliveries, the downstream dedupe key.
    pub id: Uuid,
    /// The topic (a NATS subject, a webhook event name).
    pub topic: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// Headers, in name order.
    pub headers: Vec<(String, String)>,
    /// The tenant of the request that enqueued it, if any.
    pub tenant_id: Option<String>,
    /// The idempotency key of that request, if any.
    pub idempotency_key: Option<String>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}

pub(crate) fn decode_message(row: &PgRow) -> Result<OutboxMessage, StoreError> {
    let headers = json_headers::from_json(row.try_get("headers")?);
    Ok(OutboxMessage {
        id: row.try_get("id")?,
        topic: row.try_get("topic")?,
        payload: row.try_get("payload")?,
        headers,
        // '' is how the table says "no tenant" (its tenant_id is NOT NULL).
        tenant_id: row
            .try_get::<Option<String>, _>("tenant_id")?
            .filter(|tenant| !tenant.is_empty()),
        idempotency_key: row.try_get("idempotency_key")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Enqueues `message` on the caller's transaction and returns its id. It commits or
/// rolls back with everything else on that transaction.
///
/// It sends no `NOTIFY`: Postgres serializes the commits of transactions that notify.
/// Relays find the message on their next poll, or at once when an [`OutboxWaker`] is
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

/// Dead-lettered messages, oldest first.
pub async fn dead_letters<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, topic, payload, headers, tenant_id, idempotency_key, attempts, last_error, created_at \
         FROM idem.outbox WHERE dead_lettered_at IS NOT NULL ORDER BY dead_lettered_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await?;
    rows.iter().map(decode_message).collect()
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
    let Some(tenant) = dead_letter_tenant(&mut conn, id).await? else {
        return Ok(false);
    };
    let done = sqlx::query(
        "UPDATE idem.outbox SET dead_lettered_at = NULL, attempts = 0, \
           available_at = now(), leased_by = NULL \
         WHERE tenant_id = $1 AND id = $2 AND dead_lettered_at IS NOT NULL",
    )
    .bind(&tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
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
    let Some(tenant) = dead_letter_tenant(&mut conn, id).await? else {
        return Ok(false);
    };
    let done = sqlx::query(
        "DELETE FROM idem.outbox \
         WHERE tenant_id = $1 AND id = $2 AND dead_lettered_at IS NOT NULL",
    )
    .bind(&tenant)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The tenant of dead letter `id` (`''` for a message of no tenant); `None` when no
/// dead letter has that id. A read without locks (on Citus, across the shards through
/// each shard's index on `id`).
async fn dead_letter_tenant(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT tenant_id FROM idem.outbox WHERE id = $1 AND dead_lettered_at IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}
