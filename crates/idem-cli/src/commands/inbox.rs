//! `idem inbox status | dead`.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool};

use super::{Failure, report};
use crate::args::InboxCommand;

pub(super) async fn run(pool: &PgPool, command: &InboxCommand) -> Result<Value, Failure> {
    match command {
        InboxCommand::Status => status(pool).await,
        InboxCommand::Dead { consumer, limit } => dead(pool, consumer, *limit).await,
    }
}

/// One consumer's messages, as `inbox status` reports them.
#[derive(Debug, Serialize, FromRow)]
struct ConsumerStatus {
    consumer: String,
    processed: i64,
    failing: i64,
    dead: i64,
}

async fn status(pool: &PgPool) -> Result<Value, Failure> {
    let query = sqlx::query_as::<_, ConsumerStatus>(
        "SELECT consumer, \
           count(*) FILTER (WHERE processed_at IS NOT NULL) AS processed, \
           count(*) FILTER (WHERE processed_at IS NULL AND dead_at IS NULL) AS failing, \
           count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead \
         FROM idem.inbox GROUP BY consumer ORDER BY consumer",
    );
    report(pool, query).await
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
