//! The relay's statements: claim a batch under a lease (one short transaction), then
//! record each message's outcome in its own statement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use tokio::time::Instant;
use uuid::Uuid;

use crate::StoreError;
use crate::outbox::{OutboxMessage, decode_message};

/// A claimed batch and the end of its lease on this process's clock.
pub(super) struct Claimed {
    /// The messages, oldest first.
    pub(super) messages: Vec<OutboxMessage>,
    /// When their lease ends, measured by the database's clock: the time the lease had
    /// left when the database took the claim, counted from the instant the claim was
    /// sent (earlier than the database's), so neither a slow round trip nor a local
    /// clock that disagrees with the database's moves it later. `None` when nothing
    /// was claimed.
    pub(super) lease_ends: Option<Instant>,
}

/// Claims up to `limit` messages that are due: moves their `available_at` to the end of
/// the lease, records `relay` as their holder and counts the attempt. Another relay
/// skips them (`SKIP LOCKED` while the claim runs, then `available_at`) until the lease
/// ends. Oldest first.
pub(super) async fn claim(
    conn: &mut PgConnection,
    relay: Uuid,
    limit: i64,
    lease: Duration,
) -> Result<Claimed, StoreError> {
    let query = sqlx::query(
        "WITH due AS ( \
           SELECT id FROM idem.outbox \
           WHERE delivered_at IS NULL AND dead_lettered_at IS NULL AND available_at <= now() \
           ORDER BY available_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE idem.outbox o \
         SET available_at = now() + make_interval(secs => $2), leased_by = $3, \
             attempts = o.attempts + 1 \
         FROM due WHERE o.id = due.id \
         RETURNING o.id, o.topic, o.payload, o.headers, o.tenant_id, o.idempotency_key, \
                   o.attempts, o.last_error, o.created_at, \
                   o.available_at AS lease_end, now() AS db_now",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(relay);
    let sent = Instant::now();
    let rows = query.fetch_all(conn).await?;
    let mut lease_ends: Option<Instant> = None;
    for row in &rows {
        let lease_end: DateTime<Utc> = row.try_get("lease_end")?;
        let db_now: DateTime<Utc> = row.try_get("db_now")?;
        let left = (lease_end - db_now).to_std().unwrap_or_default();
        let ends = sent + left;
        lease_ends = Some(lease_ends.map_or(ends, |earliest| earliest.min(ends)));
    }
    let mut messages = rows
        .iter()
        .map(decode_message)
        .collect::<Result<Vec<_>, _>>()?;
    messages.sort_by_key(|m| m.id); // UUIDv7: enqueue order
    Ok(Claimed {
        messages,
        lease_ends,
    })
}

/// Marks messages delivered, in one statement. Not guarded by `leased_by`: a message
/// another relay took meanwhile is delivered all the same, and its holder's own
/// outcome, guarded, then changes nothing.
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
