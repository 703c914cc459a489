//! A JetStream sink for the outbox relay (feature `nats`).

use std::str::FromStr;

use async_nats::jetstream::Context;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::outbox::headers::DeliveryHeaders;
use crate::{OutboxMessage, Sink, SinkError};

/// Publishes outbox messages to NATS JetStream, subject = the message's topic.
///
/// Every message carries `Nats-Msg-Id` = its outbox id, so JetStream drops a message
/// that a relay delivers again within the stream's duplicate window (a relay killed
/// between the publish and the "delivered" mark), and the headers of
/// [`DeliveryHeaders`]: `Idempotency-Key` = the same id (what consumers deduplicate
/// on), `Idem-Topic`, `Idem-Tenant-Id`, the message's own headers (`traceparent`,
/// `tracestate` and `X-Correlation-Id` among them when the request carried them), and
/// the client's raw key as `Idem-Request-Key` only when
/// [`include_request_key`](Self::include_request_key) says so. Delivery counts only
/// once JetStream acknowledges the message. A header NATS cannot carry dead-letters
/// the message at once.
#[derive(Debug, Clone)]
pub struct JetStreamSink {
    jetstream: Context,
    headers: DeliveryHeaders,
}

impl JetStreamSink {
    /// A sink publishing through `jetstream`.
    pub fn new(jetstream: Context) -> Self {
        JetStreamSink {
            jetstream,
            headers: DeliveryHeaders::new(),
        }
    }

    /// Whether to send the client's raw idempotency key (default no).
    pub fn include_request_key(mut self, include: bool) -> Self {
        self.headers = self.headers.include_request_key(include);
        self
    }

    /// The headers a message is published with.
    pub fn headers(&self, message: &OutboxMessage) -> Result<HeaderMap, SinkError> {
        let mut headers = HeaderMap::new();
        let mut put = |name: &str, value: &str| -> Result<(), SinkError> {
            let name = HeaderName::from_str(name).map_err(SinkError::permanent)?;
            let value = HeaderValue::from_str(value).map_err(SinkError::permanent)?;
            headers.insert(name, value);
            Ok(())
        };
        for (name, value) in self.headers.for_message(message) {
            put(name, &value)?;
        }
        put("Nats-Msg-Id", &message.id.to_string())?;
        Ok(headers)
    }
}

impl Sink for JetStreamSink {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let headers = self.headers(message)?;
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
