//! The relay's statements: claim a batch under a lease (one short transaction), then
//! record each message's outcome in its own statement.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::StoreError;
use crate::outbox::{OutboxMessage, decode_message};

/// Claims up to `limit` messages that are due: moves their `available_at` to the end of
/// the lease, records `relay` as their holder and counts the attempt. Another relay
/// skips them (`SKIP LOCKED` while the claim runs, then `available_at`) until the lease
/// ends. Oldest first.
pub(super) async fn claim(
    conn: &mut PgConnection,
    relay: Uuid,
    limit: i64,
    lease: Duration,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let rows = sqlx::query(
        "WITH due AS ( \
           SELECT id FROM idem.outbox \
           WHERE delivered_at IS NULL AND dead_lettered_at IS NULL AND available_at <= now() \
           ORDER BY available_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE idem.outbox o \
         SET available_at = now() + make_interval(secs => $2), leased_by = $3, \
             attempts = o.attempts + 1 \
         FROM due WHERE o.id = due.id \
         RETURNING o.id, o.topic, o.payload, o.headers, o.tenant_id, o.idempotency_key, \
                   o.attempts, o.last_error, o.created_at",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(relay)
    .fetch_all(conn)
    .await?;
    let mut messages = rows
        .iter()
        .map(decode_message)
        .collect::<Result<Vec<_>, _>>()?;
    messages.sort_by_key(|m| m.id); // UUIDv7: enqueue order
    Ok(messages)
}

/// Marks messages delivered (whoever holds their lease now: they are delivered), in
/// one statement.
pub(super) async fn delivered(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE idem.outbox SET delivered_at = now(), leased_by = NULL, last_error = NULL \
         WHERE id = ANY($1) AND delivered_at IS NULL",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Schedules another attempt after `delay`, if `relay` still holds the lease.
pub(super) async fn retry(
    pool: &PgPool,
    relay: Uuid,
    id: Uuid,
    error: &str,
    delay: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET last_error = $3, leased_by = NULL, \
           available_at = now() + make_interval(secs => $4) \
         WHERE id = $1 AND leased_by = $2 AND delivered_at IS NULL",
    )
    .bind(id)
    .bind(relay)
    .bind(error)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Dead-letters a message, if `relay` still holds the lease.
pub(super) async fn dead_letter(
    pool: &PgPool,
    relay: Uuid,
    id: Uuid,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET last_error = $3, leased_by = NULL, dead_lettered_at = now() \
         WHERE id = $1 AND leased_by = $2 AND delivered_at IS NULL",
    )
    .bind(id)
    .bind(relay)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a message back unattempted (its lease would end before a delivery could):
/// due now, for any relay, the claim's attempt uncounted.
pub(super) async fn release(pool: &PgPool, relay: Uuid, id: Uuid) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET leased_by = NULL, available_at = now(), attempts = attempts - 1 \
         WHERE id = $1 AND leased_by = $2 AND delivered_at IS NULL",
    )
    .bind(id)
    .bind(relay)
    .execute(pool)
    .await?;
    Ok(())
}
