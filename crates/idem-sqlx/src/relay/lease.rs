//! The relay's statements: claim a batch under a lease (short statements, no
//! transaction held across deliveries), then record each message's outcome in a
//! statement of its own.
//!
//! On plain Postgres one statement claims the batch across the whole outbox (`FOR
//! UPDATE SKIP LOCKED`). On a Citus coordinator, where `FOR UPDATE` may only touch one
//! shard, the batch is read first across the shards without locks (the oldest due
//! messages' tenants, grouped by shard), then claimed shard by shard, each by a
//! statement routed to that shard by those tenants, with `SKIP LOCKED` inside it. The
//! per-message statements name the message's tenant, so each reaches one shard.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::time::Instant;
use uuid::Uuid;

use crate::OutboxMessage;
use crate::outbox::message::decode_message;
use crate::{Backend, StoreError};

/// Opens a transaction of the relay's own connection on a Citus coordinator that
/// carries `synchronous_commit = off` to the worker that commits it (the connection's
/// session `SET` stays on the coordinator, where the relay writes nothing). The `SET
/// LOCAL`s go in a query of their own: Citus replays a propagated `SET`'s whole query
/// text on the workers.
async fn begin_citus(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(
        "SET LOCAL citus.propagate_set_commands = 'local'; \
         SET LOCAL synchronous_commit = off",
    )
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// A claimed message's row: what its outcome's statement names to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    /// The message id.
    pub(super) id: Uuid,
    /// Its tenant as stored (`''` for none): on Citus, what routes a statement to its
    /// shard.
    pub(super) tenant: String,
    /// Its shard on Citus; 0 on plain Postgres.
    pub(super) shard: i64,
}

/// A claimed batch and the end of its lease on this process's clock.
pub(super) struct Claimed {
    /// The messages, oldest first, with their rows.
    pub(super) messages: Vec<(OutboxMessage, Held)>,
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
    backend: Backend,
    relay: Uuid,
    limit: i64,
    lease: Duration,
) -> Result<Claimed, StoreError> {
    let mut claimed = match backend {
        Backend::Postgres => claim_postgres(conn, relay, limit, lease).await?,
        Backend::Citus => claim_citus(conn, relay, limit, lease).await?,
    };
    claimed.messages.sort_by_key(|(m, _)| m.id); // UUIDv7: enqueue order
    Ok(claimed)
}

/// The claim on plain Postgres: one statement across the outbox.
async fn claim_postgres(
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
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let lease_end: DateTime<Utc> = row.try_get("lease_end")?;
        let db_now: DateTime<Utc> = row.try_get("db_now")?;
        let left = (lease_end - db_now).to_std().unwrap_or_default();
        let ends = sent + left;
        lease_ends = Some(lease_ends.map_or(ends, |earliest| earliest.min(ends)));
        messages.push(held(row, 0)?);
    }
    Ok(Claimed {
        messages,
        lease_ends,
    })
}

/// The claim on a Citus coordinator. The oldest `limit` due messages are read across
/// the shards without locks, as their tenants and count per shard; then each such shard,
/// the one with the oldest message first, is claimed in a transaction of its own on its
/// worker: up to its count (plus what the shards before it fell short of, taken
/// meanwhile by other relays) of its due messages of those tenants, oldest first,
/// `SKIP LOCKED`. The read is a hint; the claim checks again, so no message is claimed
/// twice and the batch stays within `limit`, oldest first across the whole outbox.
///
/// The lease ends `lease` after the transaction's start on the coordinator's clock
/// (`now()`, evaluated there); it is counted here from the instant before that
/// transaction began.
async fn claim_citus(
    conn: &mut PgConnection,
    relay: Uuid,
    limit: i64,
    lease: Duration,
) -> Result<Claimed, StoreError> {
    let due: Vec<(i64, Vec<String>, i64)> = sqlx::query_as(
        "SELECT get_shard_id_for_distribution_column('idem.outbox', c.tenant_id) AS shard, \
                array_agg(DISTINCT c.tenant_id) AS tenants, count(*) AS due \
         FROM (SELECT tenant_id, available_at, id FROM idem.outbox \
               WHERE delivered_at IS NULL AND dead_lettered_at IS NULL \
                 AND available_at <= now() \
               ORDER BY available_at, id LIMIT $1) c \
         GROUP BY 1 ORDER BY min(c.available_at), 1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut messages = Vec::new();
    let mut lease_ends: Option<Instant> = None;
    let mut budget = 0_i64;
    let mut failed = None;
    for (shard, tenants, count) in due {
        budget = (budget + count).min(limit - messages.len() as i64);
        if budget <= 0 {
            continue;
        }
        let sent = Instant::now();
        // A shard whose claim fails is left to the next round; the others' messages
        // are claimed and delivered now (those already claimed are leased to this
        // relay: an error here would strand them until their lease ends).
        let claimed = match claim_shard(conn, relay, shard, &tenants, budget, lease).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, shard, "outbox relay: claiming a shard failed");
                failed.get_or_insert(e);
                continue;
            }
        };
        budget -= claimed.len() as i64;
        if !claimed.is_empty() {
            let ends = sent + lease;
            lease_ends = Some(lease_ends.map_or(ends, |earliest| earliest.min(ends)));
        }
        messages.extend(claimed);
    }
    match failed {
        Some(e) if messages.is_empty() => Err(e),
        _ => Ok(Claimed {
            messages,
            lease_ends,
        }),
    }
}

/// One shard's part of [`claim_citus`]: up to `limit` due messages of `tenants` (all
/// on `shard`), in a transaction of their own on its worker.
async fn claim_shard(
    conn: &mut PgConnection,
    relay: Uuid,
    shard: i64,
    tenants: &[String],
    limit: i64,
    lease: Duration,
) -> Result<Vec<(OutboxMessage, Held)>, StoreError> {
    let mut tx = begin_citus(conn).await?;
    let rows = sqlx::query(
        "WITH due AS ( \
           SELECT tenant_id, id FROM idem.outbox \
           WHERE tenant_id = ANY($1) AND delivered_at IS NULL \
             AND dead_lettered_at IS NULL AND available_at <= now() \
           ORDER BY available_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE idem.outbox o \
         SET available_at = now() + make_interval(secs => $3), leased_by = $4, \
             attempts = o.attempts + 1 \
         FROM due \
         WHERE o.tenant_id = ANY($1) AND o.tenant_id = due.tenant_id AND o.id = due.id \
         RETURNING o.id, o.topic, o.payload, o.headers, o.tenant_id, o.idempotency_key, \
                   o.attempts, o.last_error, o.created_at",
    )
    .bind(tenants)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(relay)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter().map(|row| held(row, shard)).collect()
}

/// A claimed row, decoded, with what its outcome's statement names.
fn held(row: &sqlx::postgres::PgRow, shard: i64) -> Result<(OutboxMessage, Held), StoreError> {
    let message = decode_message(row)?;
    let held = Held {
        id: message.id,
        tenant: row.try_get("tenant_id")?,
        shard,
    };
    Ok((message, held))
}

/// Marks messages delivered: one statement per shard (every message of a batch on
/// plain Postgres), each routed by the messages' tenants. Not guarded by `leased_by`: a
/// message another relay took meanwhile is delivered all the same, and its holder's
/// own outcome, guarded, then changes nothing.
pub(super) async fn delivered(
    conn: &mut PgConnection,
    backend: Backend,
    messages: &[Held],
) -> Result<(), StoreError> {
    let mut shards: BTreeMap<i64, (Vec<&str>, Vec<Uuid>)> = BTreeMap::new();
    for held in messages {
        let (tenants, ids) = shards.entry(held.shard).or_default();
        if !tenants.contains(&held.tenant.as_str()) {
            tenants.push(&held.tenant);
        }
        ids.push(held.id);
    }
    for (tenants, ids) in shards.values() {
        let query = sqlx::query(
            "UPDATE idem.outbox SET delivered_at = now(), leased_by = NULL, last_error = NULL \
             WHERE tenant_id = ANY($1) AND id = ANY($2) AND delivered_at IS NULL",
        )
        .bind(tenants)
        .bind(ids);
        match backend {
            Backend::Postgres => {
                query.execute(&mut *conn).await?;
            }
            Backend::Citus => {
                let mut tx = begin_citus(conn).await?;
                query.execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

/// Schedules another attempt after `delay`, if `relay` still holds the lease.
pub(super) async fn retry(
    pool: &PgPool,
    relay: Uuid,
    held: &Held,
    error: &str,
    delay: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET last_error = $4, leased_by = NULL, \
           available_at = now() + make_interval(secs => $5) \
         WHERE tenant_id = $1 AND id = $2 AND leased_by = $3 AND delivered_at IS NULL",
    )
    .bind(&held.tenant)
    .bind(held.id)
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
    held: &Held,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET last_error = $4, leased_by = NULL, dead_lettered_at = now() \
         WHERE tenant_id = $1 AND id = $2 AND leased_by = $3 AND delivered_at IS NULL",
    )
    .bind(&held.tenant)
    .bind(held.id)
    .bind(relay)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives a message back unattempted (its lease would end before a delivery could):
/// due now, for any relay, the claim's attempt uncounted.
pub(super) async fn release(pool: &PgPool, relay: Uuid, held: &Held) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idem.outbox SET leased_by = NULL, available_at = now(), attempts = attempts - 1 \
         WHERE tenant_id = $1 AND id = $2 AND leased_by = $3 AND delivered_at IS NULL",
    )
    .bind(&held.tenant)
    .bind(held.id)
    .bind(relay)
    .execute(pool)
    .await?;
    Ok(())
}
