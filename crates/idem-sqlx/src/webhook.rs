//! An HTTP webhook sink for the outbox relay (feature `http`).

use crate::{OutboxMessage, Sink, SinkError};

/// POSTs each outbox message's payload to a URL.
///
/// The request carries `Idempotency-Key` = the message id (stable across
/// redeliveries, so a receiver behind an idempotency layer runs it once), `Idem-Topic`,
/// the message's own headers, and, when recorded, `Idem-Tenant-Id` and
/// `Idem-Request-Key` (the idempotency key of the request that produced the message).
/// Only a 2xx answer counts as delivered.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
}

impl WebhookSink {
    /// A sink posting to `url` with `client` (set its timeout: a delivery holds its
    /// batch's row locks until it returns).
    pub fn new(client: reqwest::Client, url: impl Into<String>) -> Self {
        WebhookSink {
            client,
            url: url.into(),
        }
    }
}

impl Sink for WebhookSink {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let mut request = self
            .client
            .post(&self.url)
            .header("idempotency-key", message.id.to_string())
            .header("idem-topic", &message.topic);
        for (name, value) in &message.headers {
            request = request.header(name, value);
        }
        if let Some(tenant) = &message.tenant_id {
            request = request.header("idem-tenant-id", tenant);
        }
        if let Some(key) = &message.idempotency_key {
            request = request.header("idem-request-key", key);
        }
        let response = request
            .body(message.payload.clone())
            .send()
            .await
            .map_err(SinkError::new)?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(SinkError(format!("webhook answered {}", response.status())))
        }
    }
}
