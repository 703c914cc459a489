//! Where a relay delivers: the [`Sink`] trait and how a delivery fails.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idem_core::delivery::Failure;

use crate::OutboxMessage;

/// Why a sink could not deliver a message, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    failure: Failure,
}

impl SinkError {
    /// A failure that may pass (the broker is down, a 5xx): retried with backoff.
    pub fn new(e: impl std::fmt::Display) -> Self {
        SinkError {
            message: e.to_string(),
            failure: Failure::TRANSIENT,
        }
    }

    /// A failure that will not pass (a permanent 4xx, a header the broker rejects):
    /// the message is dead-lettered at once.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        SinkError {
            message: e.to_string(),
            failure: Failure::Permanent,
        }
    }

    /// A failure classified by the caller (a webhook's answer through
    /// [`classify_http`](idem_core::delivery::classify_http)).
    pub fn with_failure(e: impl std::fmt::Display, failure: Failure) -> Self {
        SinkError {
            message: e.to_string(),
            failure,
        }
    }

    /// A transient failure after which the destination asked to wait `after`.
    pub fn retry_after(e: impl std::fmt::Display, after: Duration) -> Self {
        Self::with_failure(
            e,
            Failure::Transient {
                retry_after: Some(after),
            },
        )
    }

    /// What kind of failure it is.
    pub fn failure(&self) -> Failure {
        self.failure
    }

    /// The message, as stored in the outbox row's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Where a relay delivers messages: a broker, a webhook.
///
/// A sink must be idempotent on [`OutboxMessage::id`]: a message whose delivery
/// succeeded but whose "delivered" mark was lost (a relay killed between the two, a
/// lease that ran out) is delivered again. Brokers do this with the id as their dedupe
/// key (JetStream's `Nats-Msg-Id`, a webhook receiver's `Idempotency-Key`).
pub trait Sink: Send + Sync + 'static {
    /// Delivers one message; `Ok` only once the destination has it. The relay bounds
    /// each call with its delivery timeout.
    fn deliver(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// A shared sink: several relays (or a relay and the code that inspects the sink) can
/// hold one.
impl<S: Sink> Sink for Arc<S> {
    fn deliver(
        &self,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        S::deliver(self, message)
    }
}
