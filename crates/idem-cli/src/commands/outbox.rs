//! `idem outbox status | dead-letters | redrive | purge`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::Failure;
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

async fn status(pool: &PgPool) -> Result<Value, Failure> {
    let rows = sqlx::query(
        "SELECT topic, \
           count(*) FILTER (WHERE delivered_at IS NULL AND dead_lettered_at IS NULL) AS pending, \
           count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered, \
           count(*) FILTER (WHERE dead_lettered_at IS NOT NULL) AS dead, \
           extract(epoch FROM now() - min(created_at) \
             FILTER (WHERE delivered_at IS NULL AND dead_lettered_at IS NULL))::float8 \
             AS oldest_pending_seconds \
         FROM idem.outbox GROUP BY topic ORDER BY topic",
    )
    .fetch_all(pool)
    .await?;
    let mut topics = Vec::with_capacity(rows.len());
    for row in rows {
        topics.push(json!({
            "topic": row.try_get::<String, _>("topic")?,
            "pending": row.try_get::<i64, _>("pending")?,
            "delivered": row.try_get::<i64, _>("delivered")?,
            "dead": row.try_get::<i64, _>("dead")?,
            "oldest_pending_seconds": row.try_get::<Option<f64>, _>("oldest_pending_seconds")?,
        }));
    }
    Ok(Value::Array(topics))
}

async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Value, Failure> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, topic, attempts, last_error, created_at, dead_lettered_at \
         FROM idem.outbox WHERE dead_lettered_at IS NOT NULL \
         ORDER BY dead_lettered_at, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(json!({
            "id": row.try_get::<Uuid, _>("id")?,
            // '' is how the table says "no tenant".
            "tenant": Some(row.try_get::<String, _>("tenant_id")?).filter(|t| !t.is_empty()),
            "topic": row.try_get::<String, _>("topic")?,
            "attempts": row.try_get::<i32, _>("attempts")?,
            "last_error": row.try_get::<Option<String>, _>("last_error")?,
            "created_at": row.try_get::<DateTime<Utc>, _>("created_at")?,
            "dead_lettered_at": row.try_get::<DateTime<Utc>, _>("dead_lettered_at")?,
        }));
    }
    Ok(Value::Array(out))
}
