//! The ledger: a consumer of `payment.created` messages that writes one ledger entry
//! per payment, through the inbox, acknowledging only after its transaction commits.
//! A message that keeps failing becomes a dead letter of the inbox and is terminated,
//! so JetStream stops redelivering it.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use idem_sqlx::{Inbox, InboxError, InboxMessage, Processed};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::Payment;

/// The subject payments are announced on, unless an [`EventSubject`](crate::EventSubject)
/// says otherwise.
pub const PAYMENT_CREATED: &str = "payments.created";

/// The inbox name of the ledger consumer.
pub const CONSUMER: &str = "ledger";

/// Failed attempts before a message becomes a dead letter of the ledger's inbox.
pub const MAX_ATTEMPTS: i32 = 5;

/// Why a message could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The message has no `Idempotency-Key` (nor `Nats-Msg-Id`) holding its outbox id;
    /// it was terminated.
    #[error("message without a valid Idempotency-Key or Nats-Msg-Id (terminated)")]
    NoMessageId,
    /// The payload is not a payment.
    #[error("payload is not a payment: {0}")]
    Payload(#[from] serde_json::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The inbox failed, or the work failed and the message will be redelivered.
    #[error(transparent)]
    Inbox(#[from] InboxError<sqlx::Error>),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] idem_sqlx::StoreError),
    /// Acknowledging the message failed (it will be redelivered and skipped).
    #[error("ack failed: {0}")]
    Ack(String),
}

/// The ledger's inbox over `pool`.
pub fn inbox(pool: PgPool) -> Inbox {
    Inbox::new(pool, CONSUMER).max_attempts(MAX_ATTEMPTS)
}

/// Records the ledger entry of one `payment.created` message, once per message id. A
/// payload that is not a payment is dead-lettered at once ([`Processed::Dead`]).
pub async fn record(
    inbox: &Inbox,
    message: &InboxMessage<'_>,
    tenant: &str,
) -> Result<Processed<()>, InboxError<sqlx::Error>> {
    let payment: Payment = match serde_json::from_slice(message.payload) {
        Ok(payment) => payment,
        Err(e) => {
            inbox
                .dead_letter(message, &format!("payload is not a payment: {e}"))
                .await?;
            return Ok(Processed::Dead);
        }
    };
    let tenant = tenant.to_owned();
    let message_id = message.id;
    inbox
        .process(message, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO ledger_entries (payment_id, tenant_id, amount, currency, message_id) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(payment.id)
                .bind(&tenant)
                .bind(payment.amount)
                .bind(&payment.currency)
                .bind(message_id)
                .execute(&mut *tx)
                .await
                .map(|_| ())
            })
        })
        .await
}

/// The headers of a JetStream message as pairs.
pub fn headers_of(message: &jetstream::Message) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            for value in values {
                pairs.push((name.to_string(), value.as_str().to_owned()));
            }
        }
    }
    pairs
}

/// The value of header `name` (case-insensitive).
fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Handles one JetStream message, in a span carrying the request's trace id and
/// correlation id: records it (or recognises a duplicate), then acknowledges it; a dead
/// letter is terminated; a failure is negatively acknowledged with the inbox's backoff.
pub async fn handle(
    inbox: &Inbox,
    message: &jetstream::Message,
) -> Result<Processed<()>, LedgerError> {
    let headers = headers_of(message);
    let id = header(&headers, idem_sqlx::outbox::headers::IDEMPOTENCY_KEY)
        .or_else(|| header(&headers, "Nats-Msg-Id"))
        .and_then(|v| Uuid::parse_str(v).ok());
    let Some(id) = id else {
        // Without an id the inbox cannot keep it: terminate it rather than have it
        // redelivered forever, and say so.
        tracing::error!(subject = %message.subject, "message without an id terminated");
        message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| LedgerError::Ack(e.to_string()))?;
        return Err(LedgerError::NoMessageId);
    };
    let trace_id = header(&headers, idem_sqlx::outbox::headers::TRACEPARENT)
        .and_then(|t| idem_axum::TraceContext::from_headers(Some(t), None, None))
        .and_then(|t| t.trace_id().map(str::to_owned));
    let span = tracing::info_span!(
        "ledger.message",
        message_id = %id,
        trace_id = trace_id.as_deref(),
        correlation_id = header(&headers, idem_sqlx::outbox::headers::CORRELATION_ID),
    );
    let tenant = header(&headers, idem_sqlx::outbox::headers::TENANT_ID).unwrap_or_default();
    let incoming = InboxMessage {
        id,
        subject: message.subject.as_str(),
        payload: &message.payload,
        headers: &headers,
    };
    let outcome = record(inbox, &incoming, tenant).instrument(span).await;
    let (ack, result) = match outcome {
        Ok(processed) => {
            let ack = if processed == Processed::Dead {
                AckKind::Term
            } else {
                AckKind::Ack
            };
            (ack, Ok(processed))
        }
        Err(InboxError::DeadLettered { .. }) => (AckKind::Term, Ok(Processed::Dead)),
        Err(e @ InboxError::Work { retry_in, .. }) => (AckKind::Nak(Some(retry_in)), Err(e.into())),
        Err(e) => (AckKind::Nak(None), Err(e.into())),
    };
    message
        .ack_with(ack)
        .await
        .map_err(|e| LedgerError::Ack(e.to_string()))?;
    result
}

/// Consumes from `consumer` until `shutdown`: every message is recorded through the
/// inbox and acknowledged after commit. A message that fails is negatively
/// acknowledged, so JetStream redelivers it, until the inbox dead-letters it.
pub async fn consume(pool: PgPool, consumer: PullConsumer, shutdown: CancellationToken) {
    let inbox = inbox(pool);
    while !shutdown.is_cancelled() {
        let batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "fetching from JetStream failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "JetStream message error");
                    continue;
                }
            };
            match handle(&inbox, &message).await {
                Ok(Processed::Done(())) => tracing::info!("ledger entry written"),
                Ok(Processed::Duplicate) => tracing::info!("duplicate message skipped"),
                Ok(Processed::Dead) => tracing::warn!("dead letter terminated"),
                Err(e) => tracing::warn!(error = %e, "ledger entry failed; awaiting redelivery"),
            }
        }
    }
}
