//! The inbox's dead letters: messages that failed a consumer's maximum attempts, kept
//! with their payload until redriven or purged.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{Inbox, InboxMessage};
use crate::{StoreError, json_headers};

/// A dead letter of a consumer's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadMessage {
    /// The tenant the message named (`""` for none): see [`InboxMessage::tenant`].
    pub tenant_id: String,
    /// The message id.
    pub id: Uuid,
    /// The subject it came on.
    pub subject: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Failed attempts.
    pub attempts: i32,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it became a dead letter.
    pub dead_at: DateTime<Utc>,
}

impl DeadMessage {
    /// The message, to [`process`](Inbox::process) again after [`Inbox::redrive`].
    pub fn as_message(&self) -> InboxMessage<'_> {
        InboxMessage {
            id: self.id,
            subject: &self.subject,
            payload: &self.payload,
            headers: &self.headers,
        }
    }
}

fn decode(row: &PgRow) -> Result<DeadMessage, StoreError> {
    let headers = json_headers::from_json(row.try_get("headers")?);
    Ok(DeadMessage {
        tenant_id: row.try_get("tenant_id")?,
        id: row.try_get("message_id")?,
        subject: row
            .try_get::<Option<String>, _>("subject")?
            .unwrap_or_default(),
        payload: row
            .try_get::<Option<Vec<u8>>, _>("payload")?
            .unwrap_or_default(),
        headers,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        dead_at: row.try_get("dead_at")?,
    })
}

pub(super) async fn mark(
    pool: &PgPool,
    tenant: &str,
    consumer: &str,
    id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.inbox SET dead_at = now() \
         WHERE tenant_id = $3 AND consumer = $1 AND message_id = $2 AND processed_at IS NULL",
    )
    .bind(consumer)
    .bind(id)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(())
}

/// The columns a [`DeadMessage`] is read from.
macro_rules! dead_columns {
    () => {
        "tenant_id, message_id, subject, payload, headers, attempts, last_error, dead_at"
    };
}

impl Inbox {
    /// This consumer's dead letters, oldest first.
    pub async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadMessage>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            dead_columns!(),
            " FROM idem.inbox WHERE consumer = $1 AND dead_at IS NOT NULL \
             ORDER BY dead_at, message_id LIMIT $2"
        ))
        .bind(&self.consumer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Makes a dead letter processable again and hands it back: its row is removed, so
    /// [`process`](Inbox::process) (called with [`DeadMessage::as_message`], once the
    /// cause is fixed) runs the work with fresh attempts. `None` when it is not a dead
    /// letter of this consumer. The message is found by its id whatever tenant it
    /// named (on Citus the statement asks every shard).
    pub async fn redrive(&self, id: Uuid) -> Result<Option<DeadMessage>, StoreError> {
        let row = sqlx::query(concat!(
            "DELETE FROM idem.inbox WHERE consumer = $1 AND message_id = $2 \
             AND dead_at IS NOT NULL RETURNING ",
            dead_columns!()
        ))
        .bind(&self.consumer)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Deletes a dead letter for good. A later redelivery of the message would be
    /// processed as new. Returns whether there was such a dead letter. Found by its id
    /// whatever tenant it named, as [`redrive`](Self::redrive).
    pub async fn purge(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idem.inbox WHERE consumer = $1 AND message_id = $2 AND dead_at IS NOT NULL",
        )
        .bind(&self.consumer)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records `message` as a dead letter at once, without running any work: for a
    /// message the consumer knows it can never process (a payload it cannot decode).
    /// A message already processed is left alone. Acknowledge it afterwards.
    pub async fn dead_letter(
        &self,
        message: &InboxMessage<'_>,
        reason: &str,
    ) -> Result<(), StoreError> {
        // EXCLUDED's clock, not now() in DO UPDATE: Citus takes no function there.
        sqlx::query(
            "INSERT INTO idem.inbox (tenant_id, consumer, message_id, attempts, last_error, \
               subject, payload, headers, dead_at) \
             VALUES ($7, $1, $2, 1, $3, $4, $5, $6, now()) \
             ON CONFLICT (tenant_id, consumer, message_id) DO UPDATE SET \
               attempts = inbox.attempts + 1, \
               last_error = EXCLUDED.last_error, dead_at = EXCLUDED.dead_at, \
               subject = EXCLUDED.subject, \
               payload = EXCLUDED.payload, headers = EXCLUDED.headers \
             WHERE inbox.processed_at IS NULL",
        )
        .bind(&self.consumer)
        .bind(message.id)
        .bind(reason)
        .bind(message.subject)
        .bind(message.payload)
        .bind(json_headers::to_json(message.headers))
        .bind(message.tenant())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
