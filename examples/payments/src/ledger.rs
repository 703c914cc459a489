//! The ledger: a consumer of `payment.created` messages that writes one ledger entry
//! per payment, through the inbox, acknowledging only after its transaction commits.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt;
use idem_sqlx::{InboxError, Processed};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Payment;

/// The subject payments are announced on, unless an [`EventSubject`](crate::EventSubject)
/// says otherwise.
pub const PAYMENT_CREATED: &str = "payments.created";

/// The inbox name of the ledger consumer.
pub const CONSUMER: &str = "ledger";

/// Why a message could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The message has no `Nats-Msg-Id` (the outbox id) to deduplicate on.
    #[error("message without a valid Nats-Msg-Id")]
    NoMessageId,
    /// The payload is not a payment.
    #[error("payload is not a payment: {0}")]
    Payload(#[from] serde_json::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The inbox failed.
    #[error(transparent)]
    Store(#[from] idem_sqlx::StoreError),
    /// Acknowledging the message failed (it will be redelivered and skipped).
    #[error("ack failed: {0}")]
    Ack(String),
}

impl From<InboxError<LedgerError>> for LedgerError {
    fn from(e: InboxError<LedgerError>) -> Self {
        match e {
            InboxError::Work(e) => e,
            InboxError::Store(e) => LedgerError::Store(e),
        }
    }
}

/// Records the ledger entry of one `payment.created` message, once per message id.
pub async fn record(
    pool: &PgPool,
    message_id: Uuid,
    payload: &[u8],
    tenant: &str,
) -> Result<Processed<()>, LedgerError> {
    let payment: Payment = serde_json::from_slice(payload)?;
    let tenant = tenant.to_owned();
    let outcome = idem_sqlx::process(pool, CONSUMER, message_id, |tx| {
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
            .map_err(LedgerError::from)
        })
    })
    .await?;
    Ok(outcome)
}

/// Handles one JetStream message: records it (or recognises a duplicate), then acks.
pub async fn handle(
    pool: &PgPool,
    message: &jetstream::Message,
) -> Result<Processed<()>, LedgerError> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let id = header("Nats-Msg-Id")
        .and_then(|v| Uuid::parse_str(&v).ok())
        .ok_or(LedgerError::NoMessageId)?;
    let tenant = header("Idem-Tenant-Id").unwrap_or_default();
    let outcome = record(pool, id, &message.payload, &tenant).await?;
    message
        .ack()
        .await
        .map_err(|e| LedgerError::Ack(e.to_string()))?;
    Ok(outcome)
}

/// Consumes from `consumer` until `shutdown`: every message is recorded through the
/// inbox and acknowledged after commit. A message that fails is not acknowledged, so
/// JetStream redelivers it.
pub async fn consume(pool: PgPool, consumer: PullConsumer, shutdown: CancellationToken) {
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
            match handle(&pool, &message).await {
                Ok(Processed::Done(())) => tracing::info!("ledger entry written"),
                Ok(Processed::Duplicate) => tracing::info!("duplicate message skipped"),
                Err(e) => tracing::warn!(error = %e, "ledger entry failed; awaiting redelivery"),
            }
        }
    }
}
