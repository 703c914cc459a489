//! An HTTP webhook sink for the outbox relay (feature `http`).

use std::time::SystemTime;

use idem_core::delivery::classify_http;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::outbox::headers::DeliveryHeaders;
use crate::{OutboxMessage, Sink, SinkError};

/// POSTs each outbox message's payload to a URL.
///
/// The request carries the headers of [`DeliveryHeaders`]: `Idempotency-Key` = the
/// message id (stable across redeliveries, so a receiver behind an idempotency layer
/// runs it once), `Idem-Topic`, `Idem-Tenant-Id`, the message's own headers
/// (`traceparent`, `tracestate`, `X-Correlation-Id` among them when the request carried
/// them), and the client's raw key as `Idem-Request-Key` only when
/// [`include_request_key`](Self::include_request_key) says so.
///
/// Only a 2xx answer counts as delivered. A permanent 4xx (any but 408, 409, 425 and
/// 429) dead-letters the message at once; other answers are retried, not before the
/// answer's `Retry-After`. The relay bounds each delivery with its own timeout.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    headers: DeliveryHeaders,
}

impl WebhookSink {
    /// A sink posting to `url` with `client`.
    pub fn new(client: reqwest::Client, url: impl Into<String>) -> Self {
        WebhookSink {
            client,
            url: url.into(),
            headers: DeliveryHeaders::new(),
        }
    }

    /// Whether to send the client's raw idempotency key (default no).
    pub fn include_request_key(mut self, include: bool) -> Self {
        self.headers = self.headers.include_request_key(include);
        self
    }

    fn header_map(&self, message: &OutboxMessage) -> Result<HeaderMap, SinkError> {
        let mut map = HeaderMap::new();
        for (name, value) in self.headers.for_message(message) {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(SinkError::permanent)?;
            let value = HeaderValue::from_str(&value).map_err(SinkError::permanent)?;
            map.insert(name, value);
        }
        Ok(map)
    }
}

impl Sink for WebhookSink {
    async fn deliver(&self, message: &OutboxMessage) -> Result<(), SinkError> {
        let response = self
            .client
            .post(&self.url)
            .headers(self.header_map(message)?)
            .body(message.payload.clone())
            .send()
            .await
            .map_err(SinkError::new)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        let failure = classify_http(status.as_u16(), retry_after, SystemTime::now());
        Err(SinkError::with_failure(
            format!("webhook answered {status}"),
            failure,
        ))
    }
}
