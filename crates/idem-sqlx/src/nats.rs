//! A JetStream sink for the outbox relay (feature `nats`).

use std::str::FromStr;

use async_nats::jetstream::Context;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::{OutboxMessage, Sink, SinkError};

/// Publishes outbox messages to NATS JetStream, subject = the message's topic.
///
/// Every message carries `Nats-Msg-Id` = its outbox id, so JetStream drops a message
/// that a relay delivers again within the stream's duplicate window (a crash between
/// the publish and the "delivered" mark). The request's tenant and idempotency key, when
/// recorded, travel as `Idem-Tenant-Id` and `Idempotency-Key`. Delivery counts only
/// once JetStream acknowledges the message.
#[derive(Debug, Clone)]
pub struct JetStreamSink {
    jetstream: Context,
}

impl JetStreamSink {
    /// A sink publishing through `jetstream`.
    pub fn new(jetstream: Context) -> Self {
        JetStreamSink { jetstream }
    }

    /// The headers a message is published with.
    pub fn headers(message: &OutboxMessage) -> Result<HeaderMap, SinkError> {
        let mut headers = HeaderMap::new();
        let mut put = |name: &str, value: &str| -> Result<(), SinkError> {
            let name = HeaderName::from_str(name).map_err(SinkError::new)?;
            let value = HeaderValue::from_str(value).map_err(SinkError::new)?;
            headers.insert(name, value);
            Ok(())
        };
        for (name, value) in &message.headers {
            put(name, value)?;
        }
        if let Some(tenant) = &message.tenant_id {
            put("Idem-Tenant-Id", tenant)?;
        }
        if let Some(key) = &message.idempotency_key {
            put("Idempotency-Key", key)?;
        }
        put("Nats-Msg-Id", &message.id.to_string())?;
        Ok(headers)
    }
}

impl Sink for JetStreamSink {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let headers = Self::headers(message)?;
        let ack = self
            .jetstream
            .publish_with_headers(
                message.topic.clone(),
                headers,
                Bytes::from(message.payload.clone()),
            )
            .await
            .map_err(SinkError::new)?;
        ack.await.map_err(SinkError::new)?;
        Ok(())
    }
}
