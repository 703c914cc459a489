//! `idem inbox status | dead`.

use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use super::Failure;
use crate::args::InboxCommand;

pub(super) async fn run(pool: &PgPool, command: &InboxCommand) -> Result<Value, Failure> {
    match command {
        InboxCommand::Status => status(pool).await,
        InboxCommand::Dead { consumer, limit } => dead(pool, consumer, *limit).await,
    }
}

async fn status(pool: &PgPool) -> Result<Value, Failure> {
    let rows = sqlx::query(
        "SELECT consumer, \
           count(*) FILTER (WHERE processed_at IS NOT NULL) AS processed, \
           count(*) FILTER (WHERE processed_at IS NULL AND dead_at IS NULL) AS failing, \
           count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead \
         FROM idem.inbox GROUP BY consumer ORDER BY consumer",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(json!({
            "consumer": row.try_get::<String, _>("consumer")?,
            "processed": row.try_get::<i64, _>("processed")?,
            "failing": row.try_get::<i64, _>("failing")?,
            "dead": row.try_get::<i64, _>("dead")?,
        }));
    }
    Ok(Value::Array(out))
}

async fn dead(pool: &PgPool, consumer: &str, limit: i64) -> Result<Value, Failure> {
    let inbox = idem_sqlx::Inbox::new(pool.clone(), consumer);
    let dead = inbox.dead_letters(limit).await?;
    Ok(Value::Array(
        dead.into_iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "subject": m.subject,
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                    "dead_at": m.dead_at,
                    "payload_bytes": m.payload.len(),
                })
            })
            .collect(),
    ))
}
