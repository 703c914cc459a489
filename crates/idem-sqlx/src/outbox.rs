//! The transactional outbox: messages enqueued on a request's transaction, delivered
//! after commit by an [`OutboxRelay`](crate::OutboxRelay).

use chrono::{DateTime, Utc};
use idem_core::{IdempotencyKey, TenantId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::StoreError;

/// The channel the outbox notifies on when a message commits.
pub const OUTBOX_CHANNEL: &str = "idem_outbox";

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
    let headers: serde_json::Value = row.try_get("headers")?;
    let headers = match headers {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(OutboxMessage {
        id: row.try_get("id")?,
        topic: row.try_get("topic")?,
        payload: row.try_get("payload")?,
        headers,
        tenant_id: row.try_get("tenant_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Enqueues `message` on the caller's transaction and returns its id. It commits or
/// rolls back with everything else on that transaction; relays are notified on commit.
pub async fn enqueue(conn: &mut PgConnection, message: Message) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query(
        "WITH ins AS ( \
           INSERT INTO idem.outbox (id, topic, payload, headers, tenant_id, idempotency_key) \
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) \
         SELECT pg_notify('idem_outbox', '') FROM ins",
    )
    .bind(id)
    .bind(&message.topic)
    .bind(&message.payload)
    .bind(serde_json::Value::Object(message.headers))
    .bind(message.tenant.as_ref().map(TenantId::as_str))
    .bind(message.idempotency_key.as_ref().map(IdempotencyKey::as_str))
    .execute(conn)
    .await?;
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
/// whether there was such a message.
pub async fn redrive<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "WITH upd AS ( \
           UPDATE idem.outbox SET dead_lettered_at = NULL, attempts = 0, available_at = now() \
           WHERE id = $1 AND dead_lettered_at IS NOT NULL RETURNING id) \
         SELECT pg_notify('idem_outbox', '') FROM upd",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(done.is_some())
}
