//! A message as the application enqueues it, and as the relay reads it back.

use chrono::{DateTime, Utc};
use idem_core::{IdempotencyKey, TenantId, TraceContext};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::headers::{CORRELATION_ID, TRACEPARENT, TRACESTATE};
use crate::{StoreError, json_headers};

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
    pub(super) topic: String,
    pub(super) payload: Vec<u8>,
    pub(super) headers: serde_json::Map<String, serde_json::Value>,
    pub(super) tenant: Option<TenantId>,
    pub(super) idempotency_key: Option<IdempotencyKey>,
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
