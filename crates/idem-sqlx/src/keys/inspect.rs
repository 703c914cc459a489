//! One key as an operator reads it (the `idem keys show` and `evict` commands):
//! everything stored of it ([`details`]), or of its [`tombstone`], and its eviction
//! ([`evict`]), through the store's own rules.

use chrono::{DateTime, Utc};
use idem_core::{IdempotencyKey, TenantId};
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::StoreError;
use crate::keys::stored_headers;
use crate::sql::expiry;

/// Everything stored of one key, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDetails {
    /// The request's method.
    pub method: String,
    /// The request's path, as the client sent it.
    pub path: String,
    /// The route template, when the layer knew it.
    pub route: Option<String>,
    /// The stored answer's status, once the key completed.
    pub response_status: Option<i16>,
    /// The stored answer's headers, in order.
    pub response_headers: Vec<(String, Vec<u8>)>,
    /// The stored answer's body (sealed, when the layer seals bodies); `None` when the
    /// answer was too large to store, or the key is in flight.
    pub response_body: Option<Vec<u8>>,
    /// When the key was claimed.
    pub created_at: DateTime<Utc>,
    /// When it completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When it expires (its retention counts from its completion).
    pub expires_at: DateTime<Utc>,
    /// Whether it has expired on the database's clock (the sweeper may remove it; a
    /// request with the key runs as new).
    pub expired: bool,
    /// Replays counted on it.
    pub replays: i32,
    /// Mismatched reuses counted on it.
    pub mismatches: i32,
    /// For a key of a phased route, its owner's state.
    pub phased: Option<PhasedDetails>,
}

/// A phased key's owner state.
#[derive(Debug, Clone, PartialEq)]
pub struct PhasedDetails {
    /// The current owner's fencing token.
    pub fence: i64,
    /// The last phase committed.
    pub recovery_point: Option<String>,
    /// When the owner's lease ends.
    pub lease_until: Option<DateTime<Utc>>,
    /// The phases' journal.
    pub journal: Option<serde_json::Value>,
    /// The operation id its status URL names.
    pub operation: Option<Uuid>,
}

impl KeyDetails {
    /// The key's state as one word: `expired`, `in_flight`, `completed`, or
    /// `completed_unstored` (the answer was final but too large to store).
    pub fn status(&self) -> &'static str {
        match (
            self.expired,
            self.completed_at.is_some(),
            self.response_body.is_some(),
        ) {
            (true, _, _) => "expired",
            (false, false, _) => "in_flight",
            (false, true, true) => "completed",
            (false, true, false) => "completed_unstored",
        }
    }
}

/// The stored row of (`tenant`, `key`), as the store keeps the key (protected, when the
/// layer protects keys), or `None` when there is none.
pub async fn details<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<KeyDetails>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT method, path, route, response_status, response_header_names, \
           response_header_values, response_body, created_at, completed_at, ",
        expiry!(),
        " AS expires_at, ",
        expiry!(),
        " <= now() AS expired, replays, mismatches, fence, recovery_point, locked_until, \
           phases, operation_id \
         FROM idem.keys WHERE tenant_id = $1 AND key = $2"
    ))
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(executor)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let phased = match row.try_get::<Option<i64>, _>("fence")? {
        None => None,
        Some(fence) => Some(PhasedDetails {
            fence,
            recovery_point: row.try_get("recovery_point")?,
            lease_until: row.try_get("locked_until")?,
            journal: row.try_get("phases")?,
            operation: row.try_get("operation_id")?,
        }),
    };
    Ok(Some(KeyDetails {
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        route: row.try_get("route")?,
        response_status: row.try_get("response_status")?,
        response_headers: stored_headers(&row)?,
        response_body: row.try_get("response_body")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        expires_at: row.try_get("expires_at")?,
        expired: row.try_get("expired")?,
        replays: row.try_get("replays")?,
        mismatches: row.try_get("mismatches")?,
        phased,
    }))
}

/// Deletes (`tenant`, `key`) and its tombstone, in one statement: its next request runs
/// as new. Answers whether there was such a key or tombstone. A process that keeps the
/// finished record in its replay cache answers from it until it expires there.
pub async fn evict<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<bool, StoreError> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH k AS (DELETE FROM idem.keys WHERE tenant_id = $1 AND key = $2 RETURNING 1), \
           t AS (DELETE FROM idem.tombstones WHERE tenant_id = $1 AND key = $2 RETURNING 1) \
         SELECT (SELECT count(*) FROM k) + (SELECT count(*) FROM t)",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_one(executor)
    .await?;
    Ok(deleted > 0)
}

/// What is left of a key past its retention on a route that keeps tombstones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneDetails {
    /// When the original request completed.
    pub completed_at: DateTime<Utc>,
    /// The status it answered with.
    pub response_status: i16,
    /// The end of the tombstone's window.
    pub until: DateTime<Utc>,
    /// Whether the window still runs (a retry of the same request is answered 410
    /// `key-expired`); past it the sweeper removes the tombstone.
    pub standing: bool,
}

/// The tombstone of (`tenant`, `key`), if it has one.
pub async fn tombstone<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<TombstoneDetails>, StoreError> {
    let row = sqlx::query(
        "SELECT completed_at, response_status, expires_at, expires_at > now() AS standing \
         FROM idem.tombstones WHERE tenant_id = $1 AND key = $2",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(executor)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(TombstoneDetails {
        completed_at: row.try_get("completed_at")?,
        response_status: row.try_get("response_status")?,
        until: row.try_get("expires_at")?,
        standing: row.try_get("standing")?,
    }))
}
