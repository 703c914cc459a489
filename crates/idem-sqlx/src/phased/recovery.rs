//! What finishes phased keys nobody came back for, and what their status URLs read:
//! the keys whose lease passed with the request that claimed them, and a key's state
//! by its operation id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_core::{Fingerprint, IdempotencyKey, Record, TenantId};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::secs;
use crate::StoreError;
use crate::keys::decode_record;
use crate::sql::expiry;

/// A phased key in progress whose lease passed: the request as its claim received it,
/// for the completer to run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// The key's tenant.
    pub tenant: TenantId,
    /// The key (as stored).
    pub key: IdempotencyKey,
    /// What its derived keys and kept request body are bound to (see
    /// [`Lease::binding`](super::Lease::binding)).
    pub binding: IdempotencyKey,
    /// The fingerprint of the request that claimed it.
    pub fingerprint: Fingerprint,
    /// The request's method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// The request's query string, without `?`.
    pub query: Option<String>,
    /// The request's body.
    pub body: Vec<u8>,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
}

/// Up to `limit` phased keys in progress whose lease passed at least `after` ago and
/// that were taken over at most `max_owners - 1` times (a key whose every run ends
/// unfinished is left to an operator), the longest abandoned first (through the
/// partial index on in-progress leases).
pub async fn abandoned(
    pool: &PgPool,
    limit: i64,
    after: Duration,
    max_owners: i64,
) -> Result<Vec<Abandoned>, StoreError> {
    let rows = sqlx::query(
        "SELECT tenant_id, key, coalesce(binding, key) AS binding, fingerprint, method, path, \
           request_query, request_body, request_content_type \
         FROM idem.keys \
         WHERE completed_at IS NULL AND fence IS NOT NULL \
           AND locked_until <= now() - make_interval(secs => $2) AND coalesce(owners, 1) < $3 \
         ORDER BY locked_until LIMIT $1",
    )
    .bind(limit)
    .bind(secs(after))
    .bind(max_owners)
    .fetch_all(pool)
    .await?;
    rows.iter().map(decode_abandoned).collect()
}

fn decode_abandoned(row: &PgRow) -> Result<Abandoned, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
    Ok(Abandoned {
        tenant: TenantId::new(row.try_get::<String, _>("tenant_id")?).map_err(|e| corrupt(&e))?,
        key: IdempotencyKey::parse(&row.try_get::<String, _>("key")?).map_err(|e| corrupt(&e))?,
        binding: IdempotencyKey::parse(&row.try_get::<String, _>("binding")?)
            .map_err(|e| corrupt(&e))?,
        fingerprint: Fingerprint::from_slice(&fingerprint).map_err(|e| corrupt(&e))?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        query: row.try_get("request_query")?,
        body: row
            .try_get::<Option<Vec<u8>>, _>("request_body")?
            .unwrap_or_default(),
        content_type: row.try_get("request_content_type")?,
    })
}

/// Where a phased key's operation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationState {
    /// Its phases are still running (or waiting for a retry or the completer).
    InProgress {
        /// The last phase that committed.
        recovery_point: Option<String>,
        /// When the owner's lease passes.
        lease_until: Option<DateTime<Utc>>,
    },
    /// Finished: its stored answer.
    Finished(Record),
}

/// A phased key's operation, found by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The key (as stored).
    pub key: IdempotencyKey,
    /// Where it stands.
    pub state: OperationState,
    /// The store's time of the read.
    pub now: DateTime<Utc>,
}

/// The operation `id` of `tenant`'s phased keys; `None` when the tenant has no such
/// operation (another tenant's id reads as unknown).
pub async fn operation(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
) -> Result<Option<Operation>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT key, fingerprint, response_status, response_header_names, \
           response_header_values, response_body, completed_at, ",
        expiry!(),
        " AS expires_at, now() AS db_now, NULL::timestamptz AS tombstone_until, \
           recovery_point, locked_until \
         FROM idem.keys WHERE operation_id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (record, now) = decode_record(&row)?;
    let key = IdempotencyKey::parse(&row.try_get::<String, _>("key")?)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let state = if record.is_finished() {
        OperationState::Finished(record)
    } else {
        OperationState::InProgress {
            recovery_point: row.try_get("recovery_point")?,
            lease_until: row.try_get("locked_until")?,
        }
    };
    Ok(Some(Operation { key, state, now }))
}
