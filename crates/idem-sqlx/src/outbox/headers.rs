//! The headers a message is delivered with: the same names, each with one meaning, on
//! every sink.

use crate::OutboxMessage;

/// The message id (the outbox row's UUIDv7): the downstream dedupe key. JetStream also
/// gets it as `Nats-Msg-Id`, its own dedupe header.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The message's topic (the NATS subject, the webhook's event name).
pub const TOPIC: &str = "Idem-Topic";
/// The tenant of the request that enqueued the message, when recorded.
pub const TENANT_ID: &str = "Idem-Tenant-Id";
/// The client's raw idempotency key of that request: sent only when a sink is told to
/// (it is the client's identifier, which the layer itself never logs).
pub const REQUEST_KEY: &str = "Idem-Request-Key";
/// The W3C trace context of the request, when it carried one.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace state that came with it.
pub const TRACESTATE: &str = "tracestate";
/// The request's correlation id, when it carried one.
pub const CORRELATION_ID: &str = "X-Correlation-Id";

/// The names a message's own headers cannot take: the sink sets them.
const RESERVED: [&str; 5] = [
    IDEMPOTENCY_KEY,
    TOPIC,
    TENANT_ID,
    REQUEST_KEY,
    "Nats-Msg-Id",
];

/// The headers of one delivery, in order: the message's own headers (those with a
/// reserved name dropped), then [`IDEMPOTENCY_KEY`], [`TOPIC`], [`TENANT_ID`] and,
/// when asked for, [`REQUEST_KEY`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryHeaders {
    include_request_key: bool,
}

impl DeliveryHeaders {
    /// Headers without the client's raw key.
    pub fn new() -> Self {
        DeliveryHeaders::default()
    }

    /// Whether to send the client's raw idempotency key as [`REQUEST_KEY`] (default
    /// no: it goes to third parties, and the message id is the dedupe key).
    pub fn include_request_key(mut self, include: bool) -> Self {
        self.include_request_key = include;
        self
    }

    /// The `(name, value)` pairs for `message`.
    ///
    /// ```
    /// # fn headers(message: &idem_sqlx::OutboxMessage) {
    /// use idem_sqlx::outbox::headers::DeliveryHeaders;
    ///
    /// for (name, value) in DeliveryHeaders::new().for_message(message) {
    ///     println!("{name}: {value}");
    /// }
    /// # }
    /// ```
    pub fn for_message<'m>(&self, message: &'m OutboxMessage) -> Vec<(&'m str, String)> {
        let reserved = |name: &str| RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name));
        let mut headers: Vec<(&'m str, String)> = message
            .headers
            .iter()
            .filter(|(name, _)| !reserved(name))
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        headers.push((IDEMPOTENCY_KEY, message.id.to_string()));
        headers.push((TOPIC, message.topic.clone()));
        if let Some(tenant) = &message.tenant_id {
            headers.push((TENANT_ID, tenant.clone()));
        }
        if self.include_request_key
            && let Some(key) = &message.idempotency_key
        {
            headers.push((REQUEST_KEY, key.clone()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> OutboxMessage {
        OutboxMessage {
            id: uuid::Uuid::now_v7(),
            topic: "payments.created".into(),
            payload: vec![],
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("idempotency-key".into(), "spoofed".into()),
            ],
            tenant_id: Some("t1".into()),
            idempotency_key: Some("client-key".into()),
            attempts: 0,
            last_error: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_message_id_is_the_key_and_the_raw_key_stays_home_by_default() {
        let m = message();
        let headers = DeliveryHeaders::new().for_message(&m);
        let get = |name: &str| {
            headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get(IDEMPOTENCY_KEY), vec![m.id.to_string()]);
        assert_eq!(get(TOPIC), vec!["payments.created"]);
        assert_eq!(get(TENANT_ID), vec!["t1"]);
        assert!(get(REQUEST_KEY).is_empty());
        assert_eq!(get("content-type"), vec!["application/json"]);
        let with_key = DeliveryHeaders::new()
            .include_request_key(true)
            .for_message(&m);
        assert!(with_key.contains(&(REQUEST_KEY, "client-key".to_owned())));
    }
}
