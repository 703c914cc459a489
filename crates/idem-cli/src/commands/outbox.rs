//! `idem outbox status | dead-letters | redrive | purge`.

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{Failure, report};
use crate::args::OutboxCommand;

pub(super) async fn run(pool: &PgPool, command: &OutboxCommand) -> Result<Value, Failure> {
    match command {
        OutboxCommand::Status => status(pool).await,
        OutboxCommand::DeadLetters { limit } => dead_letters(pool, *limit).await,
        OutboxCommand::Redrive { id } => {
            changed(id, idem_sqlx::outbox::redrive(pool, *id).await?, "redriven")
        }
        OutboxCommand::Purge { id } => {
            changed(id, idem_sqlx::outbox::purge(pool, *id).await?, "purged")
        }
    }
}

fn changed(id: &Uuid, done: bool, what: &str) -> Result<Value, Failure> {
    if done {
        Ok(json!({ "id": id, what: true }))
    } else {
        Err(Failure::NotFound(
            json!({ "id": id, what: false, "dead_letter": false }),
        ))
    }
}

/// One topic's messages, as `outbox status` reports them.
#[derive(Debug, Serialize, FromRow)]
struct TopicStatus {
    topic: String,
    pending: i64,
    delivered: i64,
    dead: i64,
    oldest_pending_seconds: Option<f64>,
}

async fn status(pool: &PgPool) -> Result<Value, Failure> {
    let query = sqlx::query_as::<_, TopicStatus>(
        "SELECT topic, \
           count(*) FILTER (WHERE delivered_at IS NULL AND dead_lettered_at IS NULL) AS pending, \
           count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered, \
           count(*) FILTER (WHERE dead_lettered_at IS NOT NULL) AS dead, \
           extract(epoch FROM now() - min(created_at) \
             FILTER (WHERE delivered_at IS NULL AND dead_lettered_at IS NULL))::float8 \
             AS oldest_pending_seconds \
         FROM idem.outbox GROUP BY topic ORDER BY topic",
    );
    report(pool, query).await
}

async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Value, Failure> {
    let dead = idem_sqlx::outbox::dead_letters(pool, limit).await?;
    Ok(Value::Array(
        dead.into_iter()
            .map(|dead| {
                let m = dead.message;
                json!({
                    "id": m.id,
                    "tenant": m.tenant_id,
                    "topic": m.topic,
                    "attempts": m.attempts,
                    "last_error": m.last_error,
                    "created_at": m.created_at,
                    "dead_lettered_at": dead.dead_lettered_at,
                })
            })
            .collect(),
    ))
}
